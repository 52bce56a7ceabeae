/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the at-least-once settle ring: inputs settle in the order
 * they were tracked, a partition's stored offset never passes its first
 * failed input, the failed input is where the partition rewinds, and the
 * settled callback hears of each input exactly once, in order.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "kafka_ring.h"

typedef struct {
    bool told[64];
    size_t n;
} heard_t;

static void on_settled(void *ctx, bool committed)
{
    heard_t *h = ctx;
    ck_assert_uint_lt(h->n, 64);
    h->told[h->n++] = committed;
}

static const pg_kafka_ring_part_t *part_of(const pg_kafka_ring_t *r, pg_input_t in,
                                           int32_t partition)
{
    for (size_t j = 0; j < r->n_parts; j++)
        if (r->parts[j].input == in && r->parts[j].partition == partition)
            return &r->parts[j];
    return NULL;
}

/* Marks every planned store as accepted, as librdkafka would. */
static void accept_stores(pg_kafka_ring_t *r)
{
    for (size_t j = 0; j < r->n_parts; j++)
        r->parts[j].stored = r->parts[j].next >= 0;
}

START_TEST(room_and_full)
{
    pg_kafka_ring_t r;
    ck_assert_int_eq(pg_kafka_ring_init(&r, 3), 0);
    ck_assert_uint_eq(pg_kafka_ring_room(&r), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_ptr_nonnull(pg_kafka_ring_add(&r, PG_IN_ADVICE, 0, i));
    ck_assert_uint_eq(pg_kafka_ring_room(&r), 0);
    ck_assert_ptr_null(pg_kafka_ring_add(&r, PG_IN_ADVICE, 0, 3));
    pg_kafka_ring_free(&r);
    pg_kafka_ring_free(&r); /* leaves it empty: a second free is harmless */
    pg_kafka_ring_free(NULL);
}
END_TEST

START_TEST(answered_stops_at_the_first_pending)
{
    pg_kafka_ring_t r;
    ck_assert_int_eq(pg_kafka_ring_init(&r, 8), 0);
    pg_delivery_state_t *s[4];
    for (int i = 0; i < 4; i++)
        s[i] = pg_kafka_ring_add(&r, PG_IN_REQUESTS, 0, 10 + i);
    bool failed = true;
    ck_assert_uint_eq(pg_kafka_ring_answered(&r, &failed), 0);
    ck_assert(!failed);
    *s[0] = PG_DELIVERY_OK;
    *s[1] = PG_DELIVERY_FAILED;
    *s[3] = PG_DELIVERY_OK; /* after a pending one: not answered yet */
    ck_assert_uint_eq(pg_kafka_ring_answered(&r, &failed), 2);
    ck_assert(failed);
    pg_kafka_ring_free(&r);
}
END_TEST

START_TEST(all_acknowledged_store_after_the_last)
{
    pg_kafka_ring_t r;
    heard_t h = {0};
    ck_assert_int_eq(pg_kafka_ring_init(&r, 8), 0);
    for (int i = 0; i < 3; i++)
        *pg_kafka_ring_add(&r, PG_IN_ADVICE, 2, 100 + i) = PG_DELIVERY_OK;
    ck_assert_int_eq(pg_kafka_ring_plan(&r, 3), 0);
    ck_assert_uint_eq(r.n_parts, 1);
    const pg_kafka_ring_part_t *p = part_of(&r, PG_IN_ADVICE, 2);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(p->next, 103);
    ck_assert_int_eq(p->rewind, -1);
    accept_stores(&r);
    pg_kafka_ring_pop(&r, 3, true, on_settled, &h);
    ck_assert_uint_eq(h.n, 3);
    ck_assert(h.told[0] && h.told[1] && h.told[2]);
    ck_assert_uint_eq(pg_kafka_ring_room(&r), 8);
    pg_kafka_ring_free(&r);
}
END_TEST

START_TEST(store_never_past_a_failure)
{
    /* Partition 0: ok, FAILED, ok (the last must not be stored past the
     * failure); partition 1 of another input, interleaved: all ok. */
    pg_kafka_ring_t r;
    heard_t h = {0};
    ck_assert_int_eq(pg_kafka_ring_init(&r, 8), 0);
    *pg_kafka_ring_add(&r, PG_IN_RESULTS, 0, 5) = PG_DELIVERY_OK;
    *pg_kafka_ring_add(&r, PG_IN_ADVICE, 1, 40) = PG_DELIVERY_OK;
    *pg_kafka_ring_add(&r, PG_IN_RESULTS, 0, 6) = PG_DELIVERY_FAILED;
    *pg_kafka_ring_add(&r, PG_IN_ADVICE, 1, 41) = PG_DELIVERY_OK;
    *pg_kafka_ring_add(&r, PG_IN_RESULTS, 0, 7) = PG_DELIVERY_OK;
    ck_assert_int_eq(pg_kafka_ring_plan(&r, 5), 0);
    ck_assert_uint_eq(r.n_parts, 2);
    /* Parts in order of first appearance. */
    ck_assert_int_eq(r.parts[0].input, PG_IN_RESULTS);
    ck_assert_int_eq(r.parts[1].input, PG_IN_ADVICE);
    const pg_kafka_ring_part_t *bad = part_of(&r, PG_IN_RESULTS, 0);
    const pg_kafka_ring_part_t *good = part_of(&r, PG_IN_ADVICE, 1);
    ck_assert_int_eq(bad->next, 6);   /* after offset 5, not after 7 */
    ck_assert_int_eq(bad->rewind, 6); /* consumed again from the failure */
    ck_assert_int_eq(good->next, 42);
    ck_assert_int_eq(good->rewind, -1);
    accept_stores(&r);
    pg_kafka_ring_pop(&r, 5, true, on_settled, &h);
    ck_assert_uint_eq(h.n, 5);
    const bool want[5] = {true, true, false, true, false};
    for (int i = 0; i < 5; i++)
        ck_assert_msg(h.told[i] == want[i], "input %d told %d", i, h.told[i]);
    pg_kafka_ring_free(&r);
}
END_TEST

START_TEST(first_input_failed_stores_nothing)
{
    pg_kafka_ring_t r;
    heard_t h = {0};
    ck_assert_int_eq(pg_kafka_ring_init(&r, 4), 0);
    *pg_kafka_ring_add(&r, PG_IN_REQUESTS, 3, 9) = PG_DELIVERY_FAILED;
    *pg_kafka_ring_add(&r, PG_IN_REQUESTS, 3, 10) = PG_DELIVERY_OK;
    ck_assert_int_eq(pg_kafka_ring_plan(&r, 2), 0);
    ck_assert_int_eq(r.parts[0].next, -1);
    ck_assert_int_eq(r.parts[0].rewind, 9);
    accept_stores(&r);
    pg_kafka_ring_pop(&r, 2, true, on_settled, &h);
    ck_assert_uint_eq(h.n, 2);
    ck_assert(!h.told[0] && !h.told[1]);
    pg_kafka_ring_free(&r);
}
END_TEST

START_TEST(refused_store_or_unknown_stores_commit_nothing)
{
    pg_kafka_ring_t r;
    heard_t h = {0};
    ck_assert_int_eq(pg_kafka_ring_init(&r, 4), 0);
    *pg_kafka_ring_add(&r, PG_IN_ADVICE, 0, 1) = PG_DELIVERY_OK;
    *pg_kafka_ring_add(&r, PG_IN_ADVICE, 1, 1) = PG_DELIVERY_OK;
    ck_assert_int_eq(pg_kafka_ring_plan(&r, 2), 0);
    accept_stores(&r);
    r.parts[1].stored = false; /* e.g. the partition was revoked meanwhile */
    pg_kafka_ring_pop(&r, 2, true, on_settled, &h);
    ck_assert(h.told[0] && !h.told[1]);
    /* The plan not carried out: every input is told false. */
    *pg_kafka_ring_add(&r, PG_IN_ADVICE, 0, 2) = PG_DELIVERY_OK;
    pg_kafka_ring_pop(&r, 1, false, on_settled, &h);
    ck_assert_uint_eq(h.n, 3);
    ck_assert(!h.told[2]);
    pg_kafka_ring_free(&r);
}
END_TEST

START_TEST(wraps_around_in_order)
{
    /* Many rounds through a small ring: the head wraps, and the callback
     * still hears each input once, in the order it was tracked. */
    pg_kafka_ring_t r;
    heard_t h = {0};
    ck_assert_int_eq(pg_kafka_ring_init(&r, 3), 0);
    int64_t offset = 0;
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 2; i++) {
            pg_delivery_state_t *s = pg_kafka_ring_add(&r, PG_IN_ADVICE, 0, offset++);
            ck_assert_ptr_nonnull(s);
            *s = (offset % 4 == 0) ? PG_DELIVERY_FAILED : PG_DELIVERY_OK;
        }
        ck_assert_int_eq(pg_kafka_ring_plan(&r, 2), 0);
        const pg_kafka_ring_part_t *p = &r.parts[0];
        int64_t first = offset - 2;
        bool first_ok = (first + 1) % 4 != 0, second_ok = offset % 4 != 0;
        int64_t want_next = first_ok ? (second_ok ? offset : first + 1) : -1;
        ck_assert_int_eq(p->next, want_next);
        accept_stores(&r);
        h.n = 0;
        pg_kafka_ring_pop(&r, 2, true, on_settled, &h);
        ck_assert_uint_eq(h.n, 2);
        ck_assert(h.told[0] == first_ok);
        ck_assert(h.told[1] == (first_ok && second_ok));
    }
    ck_assert_uint_eq(pg_kafka_ring_room(&r), 3);
    pg_kafka_ring_free(&r);
}
END_TEST

START_TEST(many_partitions_grow_the_plan)
{
    enum { N = 200 };
    pg_kafka_ring_t r;
    heard_t h = {0};
    ck_assert_int_eq(pg_kafka_ring_init(&r, N), 0);
    for (int i = 0; i < N; i++)
        *pg_kafka_ring_add(&r, PG_IN_REQUESTS, i, 1000 + i) = PG_DELIVERY_OK;
    ck_assert_int_eq(pg_kafka_ring_plan(&r, N), 0);
    ck_assert_uint_eq(r.n_parts, N);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(part_of(&r, PG_IN_REQUESTS, i)->next, 1001 + i);
    pg_kafka_ring_pop(&r, N, false, NULL, &h); /* no callback: nothing told */
    ck_assert_uint_eq(h.n, 0);
    ck_assert_uint_eq(pg_kafka_ring_room(&r), N);
    pg_kafka_ring_free(&r);
}
END_TEST

static Suite *ring_suite(void)
{
    Suite *s = suite_create("kafka_ring");
    TCase *t = tcase_create("ring");
    tcase_add_test(t, room_and_full);
    tcase_add_test(t, answered_stops_at_the_first_pending);
    tcase_add_test(t, all_acknowledged_store_after_the_last);
    tcase_add_test(t, store_never_past_a_failure);
    tcase_add_test(t, first_input_failed_stores_nothing);
    tcase_add_test(t, refused_store_or_unknown_stores_commit_nothing);
    tcase_add_test(t, wraps_around_in_order);
    tcase_add_test(t, many_partitions_grow_the_plan);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(ring_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

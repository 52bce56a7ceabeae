/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The at-least-once settle ring (see kafka_ring.h).
 */
#include "kafka_ring.h"

#include <stdlib.h>
#include <string.h>

enum { PARTS_INITIAL = 64 };

int pg_kafka_ring_init(pg_kafka_ring_t *r, size_t cap)
{
    memset(r, 0, sizeof(*r));
    r->entries = calloc(cap ? cap : 1, sizeof(*r->entries));
    r->parts = calloc(PARTS_INITIAL, sizeof(*r->parts));
    if (r->entries == NULL || r->parts == NULL) {
        pg_kafka_ring_free(r);
        return PG_FATAL;
    }
    r->cap = cap;
    r->parts_cap = PARTS_INITIAL;
    return 0;
}

void pg_kafka_ring_free(pg_kafka_ring_t *r)
{
    if (r == NULL)
        return;
    free(r->entries);
    free(r->parts);
    memset(r, 0, sizeof(*r));
}

static pg_kafka_ring_entry_t *entry_at(const pg_kafka_ring_t *r, size_t i)
{
    return &r->entries[(r->head + i) % r->cap];
}

size_t pg_kafka_ring_room(const pg_kafka_ring_t *r)
{
    return r->cap - r->len;
}

pg_delivery_state_t *pg_kafka_ring_add(pg_kafka_ring_t *r, pg_input_t input,
                                       int32_t partition, int64_t offset)
{
    if (r->len == r->cap)
        return NULL;
    pg_kafka_ring_entry_t *e = entry_at(r, r->len++);
    *e = (pg_kafka_ring_entry_t){.input = input,
                                 .partition = partition,
                                 .offset = offset,
                                 .state = PG_DELIVERY_PENDING};
    return &e->state;
}

size_t pg_kafka_ring_answered(const pg_kafka_ring_t *r, bool *failed)
{
    size_t n = 0;
    bool any = false;
    while (n < r->len && entry_at(r, n)->state != PG_DELIVERY_PENDING)
        any |= entry_at(r, n++)->state == PG_DELIVERY_FAILED;
    if (failed != NULL)
        *failed = any;
    return n;
}

int pg_kafka_ring_plan(pg_kafka_ring_t *r, size_t n)
{
    r->n_parts = 0;
    for (size_t i = 0; i < n && i < r->len; i++) {
        pg_kafka_ring_entry_t *e = entry_at(r, i);
        size_t j = 0;
        while (j < r->n_parts && !(r->parts[j].partition == e->partition &&
                                   r->parts[j].input == e->input))
            j++;
        if (j == r->n_parts) {
            if (r->n_parts == r->parts_cap) {
                pg_kafka_ring_part_t *grown =
                    realloc(r->parts, 2 * r->parts_cap * sizeof(*grown));
                if (grown == NULL)
                    return PG_FATAL;
                r->parts = grown;
                r->parts_cap *= 2;
            }
            r->parts[r->n_parts++] = (pg_kafka_ring_part_t){
                .input = e->input, .partition = e->partition, .next = -1, .rewind = -1};
        }
        pg_kafka_ring_part_t *p = &r->parts[j];
        e->part = (uint32_t)j;
        e->before_failure = p->rewind < 0;
        if (p->rewind >= 0)
            continue;
        if (e->state == PG_DELIVERY_OK)
            p->next = e->offset + 1;
        else
            p->rewind = e->offset;
    }
    return 0;
}

void pg_kafka_ring_pop(pg_kafka_ring_t *r, size_t n, bool stores_known,
                       pg_kafka_settled_fn fn, void *ctx)
{
    if (n > r->len)
        n = r->len;
    for (size_t i = 0; fn != NULL && i < n; i++) {
        const pg_kafka_ring_entry_t *e = entry_at(r, i);
        fn(ctx, stores_known && e->before_failure && e->state == PG_DELIVERY_OK &&
                    r->parts[e->part].stored);
    }
    if (r->cap > 0)
        r->head = (r->head + n) % r->cap;
    r->len -= n;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Allocation proof of the codec: every avro-c allocation goes through a
 * counting allocator (avro_set_allocator, installed before avro-c allocates
 * anything), and the arena reports what the reader copied out. avro-c parses
 * the schemas when the codec is built and holds nothing afterwards; no
 * message, valid or hostile, makes it allocate a byte. A hostile message
 * leaves the arena exactly where it was; a valid one grows it by at most a
 * small bound related to its size. A canary shows what the reader's
 * discipline (every length checked against the bytes left before allocating)
 * protects from: fed the same bytes, avro-c 1.11.1 allocates a string's
 * declared length and loses it when the read then fails. tests/valgrind.sh
 * runs this file under valgrind too.
 */
#include <avro.h>
#include <check.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

/* ---- Counting allocator ------------------------------------------------- */

/* A header in front of every block keeps its size and a list of live blocks,
 * so that the canary can free what avro-c lost. */
typedef struct block {
    struct block *prev, *next;
    size_t size;
    unsigned long long seq; /* allocation number, to tell old from new */
} block_t;
_Static_assert(sizeof(block_t) % alignof(max_align_t) == 0, "header keeps alignment");

static struct {
    block_t live_list; /* sentinel of a circular list */
    size_t live;       /* bytes avro-c holds now */
    size_t peak;       /* most bytes held since the last mark */
    unsigned long long seq;
} ac;

static void block_link(block_t *b)
{
    b->next = ac.live_list.next;
    b->prev = &ac.live_list;
    b->next->prev = b;
    ac.live_list.next = b;
}

static void block_unlink(block_t *b)
{
    b->prev->next = b->next;
    b->next->prev = b->prev;
}

/* avro-c's allocator contract: realloc when nsize > 0, free when 0. osize is
 * not trusted (the header knows the size). */
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    block_t *old = ptr != NULL ? (block_t *)ptr - 1 : NULL;
    size_t old_size = old != NULL ? old->size : 0;
    if (old != NULL)
        block_unlink(old);
    ac.live -= old_size;
    if (nsize == 0) {
        free(old);
        return NULL;
    }
    if (nsize > SIZE_MAX - sizeof(block_t)) {
        if (old != NULL) {
            block_link(old);
            ac.live += old_size;
        }
        return NULL;
    }
    block_t *b = realloc(old, sizeof(block_t) + nsize);
    if (b == NULL) {
        if (old != NULL) { /* realloc failed: the old block is still valid */
            block_link(old);
            ac.live += old_size;
        }
        return NULL;
    }
    b->size = nsize;
    b->seq = ++ac.seq;
    block_link(b);
    ac.live += nsize;
    if (ac.live > ac.peak)
        ac.peak = ac.live;
    return b + 1;
}

/* Starts a measurement: the peak is counted from here. */
static size_t ac_mark(void)
{
    ac.peak = ac.live;
    return ac.live;
}

/* Frees every block allocated after seq that is still live (a leak). */
static size_t ac_free_since(unsigned long long seq)
{
    size_t freed = 0;
    block_t *b = ac.live_list.next;
    while (b != &ac.live_list) {
        block_t *next = b->next;
        if (b->seq > seq) {
            freed += b->size;
            counting_alloc(NULL, b + 1, b->size, 0);
        }
        b = next;
    }
    return freed;
}

/* ---- Fixture ------------------------------------------------------------- */

static pg_codec_t *codec;
static pg_arena_t *arena;
static char err[512];
static size_t baseline; /* avro-c bytes held before the codec existed */

static void setup(void)
{
    char e[256] = "";
    baseline = ac.live;
    unsigned long long seq = ac.seq;
    codec = pg_codec_new(e, sizeof(e));
    ck_assert_msg(codec != NULL, "pg_codec_new: %s", e);
    ck_assert_uint_gt(ac.seq, seq);       /* avro-c parsed the schemas ... */
    ck_assert_uint_eq(ac.live, baseline); /* ... and holds nothing of them */
    arena = pg_arena_new(64 * 1024);
    ck_assert_ptr_nonnull(arena);
}

static void teardown(void)
{
    pg_codec_destroy(codec);
    pg_arena_destroy(arena);
    codec = NULL;
    arena = NULL;
    /* Nothing of the codec's stays behind in avro-c. */
    ck_assert_uint_eq(ac.live, baseline);
}

/* ---- Messages ------------------------------------------------------------ */

typedef struct {
    uint8_t b[64 * 1024];
    size_t n;
} msg_t;

static void m_raw(msg_t *m, const void *p, size_t n)
{
    ck_assert_uint_le(m->n + n, sizeof(m->b));
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

static void m_long(msg_t *m, int64_t v)
{
    uint64_t raw = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    while (raw >= 0x80) {
        uint8_t b = (uint8_t)(raw | 0x80);
        m_raw(m, &b, 1);
        raw >>= 7;
    }
    uint8_t b = (uint8_t)raw;
    m_raw(m, &b, 1);
}

static void m_strn(msg_t *m, const char *s, size_t n)
{
    m_long(m, (int64_t)n);
    m_raw(m, s, n);
}

static void m_str(msg_t *m, const char *s)
{
    m_strn(m, s, strlen(s));
}

static void m_header(msg_t *m, pg_record_type_t t)
{
    uint64_t fp = pg_codec_fingerprint(codec, 1, t); /* the bodies below are v1 */
    m->n = 0;
    uint8_t h[10] = {0xc3, 0x01};
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(fp >> (8 * i));
    m_raw(m, h, sizeof(h));
}

#define UUID_A "0b7e2c4e-94c1-4c55-9a43-2f0e4f3f8a11"
#define UUID_B "5d1f0a8e-3b7c-4e2d-8f6a-9c0b1d2e3f40"

/* A MigrateVmRequest whose vmUuid is the given bytes. */
static void request_with_vm(msg_t *m, const char *vm, size_t vm_len)
{
    m_header(m, PG_REC_MIGRATE_REQUEST);
    m_str(m, "req-" UUID_A);
    m_strn(m, vm, vm_len);
    m_str(m, UUID_A);
    m_long(m, 1);
    m_str(m, UUID_B);
    m_long(m, 2);
    m_long(m, INT64_C(1790000000000));
}

static void advice_prefix(msg_t *m)
{
    m_header(m, PG_REC_DRS_ADVICE);
    m_str(m, "adv-1");
    m_str(m, UUID_A);
    m_long(m, INT64_C(1790000000000));
}

static void advice_item(msg_t *m)
{
    static const uint8_t half[8] = {0, 0, 0, 0, 0, 0, 0xe0, 0x3f}; /* 0.5 */
    m_str(m, UUID_A);
    m_str(m, UUID_B);
    m_str(m, UUID_A);
    m_long(m, 1);
    m_raw(m, half, sizeof(half));
}

/* A valid DrsAdvice with n migrations. */
static void advice(msg_t *m, int n)
{
    advice_prefix(m);
    m_long(m, n);
    for (int i = 0; i < n; i++)
        advice_item(m);
    m_long(m, 0);
}

/* ---- The hostile inputs of tests/integration/test_hostile.py ------------- */

typedef struct {
    const char *name;
    void (*build)(msg_t *m);
    int code;
    size_t max_string, max_items; /* the worker's defaults, lowered where tested */
} hostile_t;

/* The worker's defaults: input.max.string.length and advice.max.migrations. */
static const pg_codec_limits_t lim_default = {.max_string = 1024, .max_items = 1000};

static void h_empty(msg_t *m)
{
    m->n = 0;
}

static void h_magic_alone(msg_t *m)
{
    m->n = 0;
    m_raw(m, "\xc3\x01", 2);
}

static void h_header_alone(msg_t *m)
{
    m_header(m, PG_REC_MIGRATE_REQUEST);
}

static void h_unknown_fingerprint(msg_t *m)
{
    request_with_vm(m, UUID_A, 36);
    m->b[9] ^= 0x80;
}

static void h_cut_in_varint(msg_t *m)
{
    request_with_vm(m, UUID_A, 36);
    m->n -= 1;
}

static void h_cut_in_string(msg_t *m)
{
    request_with_vm(m, UUID_A, 36);
    m->n = 60;
}

static void h_cut_in_array(msg_t *m)
{
    advice(m, 20);
    m->n -= 100;
}

static void h_string_2_31(msg_t *m)
{
    m_header(m, PG_REC_MIGRATE_REQUEST);
    m_long(m, INT64_C(1) << 31);
    m_raw(m, "abcdef", 6);
}

/* A big message whose last string still claims more than is left. */
static void h_string_past_big_body(msg_t *m)
{
    advice_prefix(m);
    m_long(m, 500);
    for (int i = 0; i < 499; i++)
        advice_item(m);
    m_long(m, 60000);
    m_raw(m, UUID_A, 36);
}

static void h_string_max(msg_t *m)
{
    m_header(m, PG_REC_MIGRATE_REQUEST);
    m_long(m, INT64_MAX);
    m_raw(m, "abcdef", 6);
}

static void h_string_negative(msg_t *m)
{
    m_header(m, PG_REC_MIGRATE_REQUEST);
    m_str(m, "req-1");
    m_long(m, -5);
    m_raw(m, "abcdef", 6);
}

static void h_array_2_31(msg_t *m)
{
    advice_prefix(m);
    m_long(m, INT64_C(1) << 31);
    advice_item(m);
    m_long(m, 0);
}

static void h_array_negative(msg_t *m)
{
    advice_prefix(m);
    m_long(m, -3);
    m_long(m, INT64_C(1) << 40);
    advice_item(m);
    m_long(m, 0);
}

static void h_array_most_negative(msg_t *m)
{
    advice_prefix(m);
    m_long(m, INT64_MIN);
    m_long(m, 1);
    m_long(m, 0);
}

static void h_too_many_migrations(msg_t *m)
{
    advice(m, 4);
}

static void h_invalid_utf8(msg_t *m)
{
    request_with_vm(m, "\xc0\xaf" UUID_A, 38);
}

static void h_surrogate(msg_t *m)
{
    request_with_vm(m, UUID_A "\xed\xa0\x80", 39);
}

static void h_overlong_uuid(msg_t *m)
{
    request_with_vm(m, UUID_A "-ffffffffffffffffffffffffffff", 65);
}

static const hostile_t hostile[] = {
    {"empty", h_empty, PG_CODEC_EEMPTY, 1024, 1000},
    {"magic alone", h_magic_alone, PG_CODEC_EMAGIC, 1024, 1000},
    {"header alone", h_header_alone, PG_CODEC_ETRUNCATED, 1024, 1000},
    {"unknown fingerprint", h_unknown_fingerprint, PG_CODEC_EFINGERPRINT, 1024, 1000},
    {"cut in a varint", h_cut_in_varint, PG_CODEC_ETRUNCATED, 1024, 1000},
    {"cut in a string", h_cut_in_string, PG_CODEC_ELENGTH, 1024, 1000},
    {"cut in an array", h_cut_in_array, PG_CODEC_ELENGTH, 1024, 1000},
    {"string of 2^31", h_string_2_31, PG_CODEC_ELENGTH, 1024, 1000},
    {"string past a big body", h_string_past_big_body, PG_CODEC_ELENGTH, 1024, 1000},
    {"string of 2^63-1", h_string_max, PG_CODEC_ELENGTH, 1024, 1000},
    {"negative string", h_string_negative, PG_CODEC_ELENGTH, 1024, 1000},
    {"array of 2^31", h_array_2_31, PG_CODEC_ELENGTH, 1024, 1000},
    {"negative array", h_array_negative, PG_CODEC_ELENGTH, 1024, 1000},
    {"most negative array", h_array_most_negative, PG_CODEC_ELENGTH, 1024, 1000},
    {"too many migrations", h_too_many_migrations, PG_CODEC_ELIMIT, 1024, 3},
    {"invalid UTF-8", h_invalid_utf8, PG_CODEC_EUTF8, 1024, 1000},
    {"surrogate", h_surrogate, PG_CODEC_EUTF8, 1024, 1000},
    {"over-long uuid", h_overlong_uuid, PG_CODEC_ELIMIT, 64, 1000},
};
#define N_HOSTILE ((int)(sizeof(hostile) / sizeof(hostile[0])))

/* What one decode may take from the arena: a fixed part and a few bytes per
 * message byte (strings are copied with a NUL and aligned; structs are wider
 * than their encoding). Measured on a 400-item advice: about 3 bytes per
 * byte. A hostile message gives back all it took. */
#define ALLOC_BOUND(len) (4096 + 8 * (len))

typedef struct {
    int rc;
    size_t avro_peak; /* avro-c bytes held at once, above the start */
    size_t avro_kept; /* avro-c bytes still held afterwards */
    size_t arena;     /* arena growth */
} usage_t;

static usage_t decode_measured(const msg_t *m, const pg_codec_limits_t *lim)
{
    pg_record_t r;
    usage_t u;
    size_t before = ac_mark(), arena_before = pg_arena_used(arena);
    err[0] = '\0';
    u.rc = pg_codec_decode(codec, m->b, m->n, lim, arena, &r, err, sizeof(err));
    u.avro_peak = ac.peak - before;
    u.avro_kept = ac.live - before;
    u.arena = pg_arena_used(arena) - arena_before;
    return u;
}

static usage_t to_json_measured(const msg_t *m, const pg_codec_limits_t *lim)
{
    char *json = NULL;
    usage_t u = {0};
    size_t before = ac_mark();
    u.rc = pg_codec_to_json(codec, 0, m->b, m->n, lim, &json, NULL, err, sizeof(err));
    u.avro_peak = ac.peak - before;
    u.avro_kept = ac.live - before;
    free(json);
    return u;
}

/* ---- Tests ----------------------------------------------------------------- */

/* Each hostile message: its exact code, within the bound, nothing kept; and
 * the valid request after it decodes within the bound too. */
START_TEST(hostile_allocates_within_bound)
{
    const hostile_t *h = &hostile[_i];
    const pg_codec_limits_t lim = {.max_string = h->max_string,
                                   .max_items = h->max_items};
    static msg_t m, good;
    h->build(&m);
    /* A valid message before it, as on a partition. */
    request_with_vm(&good, UUID_B, 36);
    usage_t g = decode_measured(&good, &lim);
    ck_assert_int_eq(g.rc, 0);

    usage_t u = decode_measured(&m, &lim);
    ck_assert_msg(u.rc == h->code, "%s: got %s (%s), want %s", h->name,
                  pg_codec_err_name(u.rc), err, pg_codec_err_name(h->code));
    ck_assert_msg(u.avro_peak == 0, "%s: avro-c held %zu bytes for a %zu-byte message",
                  h->name, u.avro_peak, m.n);
    ck_assert_msg(u.avro_kept == 0, "%s: avro-c kept %zu bytes", h->name, u.avro_kept);
    ck_assert_msg(u.arena == 0, "%s: the arena grew by %zu bytes", h->name, u.arena);

    u = to_json_measured(&m, &lim);
    ck_assert_int_eq(u.rc, h->code);
    ck_assert_uint_eq(u.avro_peak, 0);
    ck_assert_uint_eq(u.avro_kept, 0);

    /* The next valid message on the partition still decodes, and what it
     * allocated is back (the codec resets its value after each message). */
    g = decode_measured(&good, &lim);
    ck_assert_int_eq(g.rc, 0);
    ck_assert_uint_le(g.arena, ALLOC_BOUND(good.n));
    ck_assert_uint_eq(g.avro_peak, 0);
}
END_TEST

/* Random bytes of every length up to 8 KiB, behind a bad and a good marker. */
START_TEST(random_bytes_within_bound)
{
    static msg_t m;
    uint64_t s = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < 3000; i++) {
        m.n = 1 + (size_t)(i * 7919) % 8192;
        for (size_t k = 0; k < m.n; k++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            m.b[k] = (uint8_t)s;
        }
        if (i % 2 == 0 && m.n >= 10) { /* a real fingerprint, random body */
            /* every record of both versions in turn */
            uint64_t fp = pg_codec_fingerprint(codec, 1 + (i / 2) % 2,
                                               (pg_record_type_t)(i % PG_REC_COUNT));
            if (fp == 0)
                fp = pg_codec_fingerprint(codec, 0,
                                          (pg_record_type_t)(i % PG_REC_COUNT));
            m.b[0] = 0xc3;
            m.b[1] = 0x01;
            for (int k = 0; k < 8; k++)
                m.b[2 + k] = (uint8_t)(fp >> (8 * k));
        }
        usage_t u = decode_measured(&m, &lim_default);
        ck_assert_msg(u.rc != PG_CODEC_ENOMEM && u.rc != PG_CODEC_EINTERNAL,
                      "%d bytes: %s (%s)", (int)m.n, pg_codec_err_name(u.rc), err);
        ck_assert_uint_le(u.arena, ALLOC_BOUND(m.n));
        ck_assert_uint_eq(u.avro_peak, 0);
        if (u.rc != 0)
            ck_assert_uint_eq(u.arena, 0);
        pg_arena_reset(arena);
    }
}
END_TEST

/* A valid message allocates in proportion to its size and keeps nothing; the
 * bound above is not so loose that a large advice escapes it. */
START_TEST(valid_advice_is_proportional)
{
    static msg_t m;
    const pg_codec_limits_t *lim = &lim_default;
    advice(&m, 1);
    usage_t small = decode_measured(&m, lim);
    ck_assert_int_eq(small.rc, 0);
    advice(&m, 400);
    usage_t first = decode_measured(&m, lim);
    ck_assert_int_eq(first.rc, 0);
    ck_assert_uint_le(first.avro_peak + first.arena, ALLOC_BOUND(m.n));
    pg_arena_reset(arena);
    usage_t again = decode_measured(&m, lim);
    ck_assert_int_eq(again.rc, 0);
    ck_assert_uint_eq(again.avro_kept, 0);
    ck_assert_uint_le(again.avro_peak + again.arena, ALLOC_BOUND(m.n));
    /* 400 migrations cost more than one: the counters see the decode at all,
     * and none of it is avro-c's. */
    ck_assert_uint_gt(again.arena, small.arena);
    ck_assert_uint_eq(again.avro_peak, 0);
    ck_assert_uint_eq(small.avro_peak, 0);
}
END_TEST

/* The upstream bug, shown with the same counter: avro-c reads a string that
 * claims 100000 bytes where 6 are left, allocates the 100001 and keeps them
 * when the read fails. pg_codec_decode, given the same bytes, allocates
 * nothing. */
START_TEST(canary_avro_c_leaks_unvalidated_lengths)
{
    static msg_t m;
    m.n = 0;
    m_long(&m, 100000);
    m_raw(&m, "abcdef", 6);

    size_t before = ac_mark();
    unsigned long long seq = ac.seq;
    avro_schema_t schema = avro_schema_string();
    avro_value_iface_t *iface = avro_generic_class_from_schema(schema);
    avro_value_t value;
    ck_assert_int_eq(avro_generic_value_new(iface, &value), 0);
    avro_reader_t reader = avro_reader_memory((const char *)m.b, (int64_t)m.n);
    ck_assert_int_ne(avro_value_read(reader, &value), 0);
    avro_reader_free(reader);
    avro_value_decref(&value);
    avro_value_iface_decref(iface);
    avro_schema_decref(schema);
    size_t leaked = ac.live - before;
    ck_assert_uint_ge(ac.peak - before, 100001);
    ck_assert_uint_ge(leaked, 100001);
    ck_assert_uint_eq(ac_free_since(seq), leaked); /* clean up after avro-c */
    ck_assert_uint_eq(ac.live, before);

    /* The same string as a request's requestId. */
    static msg_t req;
    m_header(&req, PG_REC_MIGRATE_REQUEST);
    m_raw(&req, m.b, m.n);
    usage_t u = decode_measured(&req, &lim_default);
    ck_assert_int_eq(u.rc, PG_CODEC_ELENGTH);
    ck_assert_uint_eq(u.avro_peak, 0);
    ck_assert_uint_eq(u.avro_kept, 0);
}
END_TEST

static Suite *alloc_suite(void)
{
    Suite *s = suite_create("codec_alloc");
    TCase *h = tcase_create("alloc");
    tcase_add_checked_fixture(h, setup, teardown);
    tcase_set_timeout(h, 300); /* valgrind */
    tcase_add_loop_test(h, hostile_allocates_within_bound, 0, N_HOSTILE);
    tcase_add_test(h, random_bytes_within_bound);
    tcase_add_test(h, valid_advice_is_proportional);
    tcase_add_test(h, canary_avro_c_leaks_unvalidated_lengths);
    suite_add_tcase(s, h);
    return s;
}

int main(void)
{
    /* Before anything allocates through avro-c: a block from the default
     * allocator would reach counting_alloc without its header. */
    ac.live_list.next = ac.live_list.prev = &ac.live_list;
    avro_set_allocator(counting_alloc, NULL);
    SRunner *sr = srunner_create(alloc_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

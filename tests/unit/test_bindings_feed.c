/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the binding feed's pure half: pg_bindings_check_feed (which
 * records may be applied; whatever it accepts the worker's lookup must read
 * as a valid entry, shown by feeding the lookup reply of the entry a record
 * becomes to the worker's own parser and check), the apply script's replies
 * given as RESP bytes to hiredis's reader, and the host index commands that
 * follow each reply.
 */
#include <check.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings_internal.h"
#include "mem.h"

static const pg_bindings_limits_t lim = {.max_devices = 4, .max_len = 64};

static pg_bytes_t B(const char *s)
{
    return (pg_bytes_t){s, strlen(s)};
}

/* Feeds n bytes of RESP to a reader and returns the one reply they hold. */
static redisReply *reply_of(const char *resp, size_t n)
{
    redisReader *rd = redisReaderCreate();
    ck_assert_ptr_nonnull(rd);
    ck_assert_int_eq(redisReaderFeed(rd, resp, n), REDIS_OK);
    void *r = NULL;
    ck_assert_int_eq(redisReaderGetReply(rd, &r), REDIS_OK);
    ck_assert_ptr_nonnull(r);
    redisReaderFree(rd);
    return r;
}

#define REPLY(lit) reply_of(lit, sizeof(lit) - 1)

static const pg_device_ref_t two_devices[] = {{"d1", "dgpu"}, {"d2", "pci+vf"}};

static pg_vm_bindings_t record(void)
{
    return (pg_vm_bindings_t){.vm_uuid = "vm-1",
                              .host_uuid = "h1",
                              .n_devices = 2,
                              .devices = two_devices,
                              .generation = 7,
                              .updated_at_ms = 1};
}

/* Appends a RESP bulk string. */
static void bulk(pg_buf_t *b, const char *s)
{
    char head[32];
    int n = snprintf(head, sizeof(head), "$%zu\r\n", strlen(s));
    ck_assert_int_eq(pg_buf_append(b, head, (size_t)n), 0);
    ck_assert_int_eq(pg_buf_append(b, s, strlen(s)), 0);
    ck_assert_int_eq(pg_buf_append(b, "\r\n", 2), 0);
}

static void text(pg_buf_t *b, const char *s)
{
    ck_assert_int_eq(pg_buf_append(b, s, strlen(s)), 0);
}

/* The entry an applied record leaves, as the worker's lookup script would
 * return it, read by the worker's parser and check: never malformed. */
static void assert_worker_reads_it_valid(const pg_vm_bindings_t *rec)
{
    pg_buf_t resp = {0};
    char num[64];
    text(&resp, "*7\r\n:0\r\n");
    if (rec->host_uuid != NULL)
        bulk(&resp, rec->host_uuid);
    else
        text(&resp, "$-1\r\n");
    snprintf(num, sizeof(num), "$-1\r\n:%zu\r\n*%zu\r\n", rec->n_devices,
             2 * rec->n_devices);
    text(&resp, num);
    for (size_t i = 0; i < rec->n_devices; i++) {
        bulk(&resp, rec->devices[i].device_uuid);
        bulk(&resp, rec->devices[i].kind);
    }
    snprintf(num, sizeof(num), "%" PRId64, rec->generation);
    bulk(&resp, num);
    text(&resp, "$-1\r\n"); /* no :quarantine */
    redisReply *r = reply_of((const char *)resp.data, resp.len);
    pg_arena_t *a = pg_arena_new(4096);
    pg_vm_raw_t raw;
    pg_vm_binding_t vb;
    char err[256];
    ck_assert_int_eq(pg_bindings_parse_lookup(r, a, &raw, err, sizeof(err)), 0);
    ck_assert_int_eq(pg_bindings_to_binding(&raw, &lim, a, &vb, err, sizeof(err)), 0);
    ck_assert_msg(!vb.malformed, "the worker calls it malformed: %s",
                  vb.why_malformed ? vb.why_malformed : "");
    ck_assert_int_eq(vb.known, rec->host_uuid != NULL);
    ck_assert(vb.generation.present);
    ck_assert_int_eq(vb.generation.value, rec->generation);
    ck_assert_uint_eq(vb.n_devices, rec->n_devices);
    pg_arena_destroy(a);
    freeReplyObject(r);
    pg_buf_free(&resp);
}

START_TEST(valid_records_and_tombstones)
{
    char why[256] = "";
    pg_vm_bindings_t rec = record();
    ck_assert_int_eq(pg_bindings_check_feed(&lim, B("vm-1"), &rec, why, sizeof(why)),
                     PG_OK);
    assert_worker_reads_it_valid(&rec);
    /* No host (the VM is known to the feed but unplaced), no devices,
     * generation 0 and the largest one. */
    rec.host_uuid = NULL;
    rec.n_devices = 0;
    rec.devices = NULL;
    rec.generation = 0;
    ck_assert_int_eq(pg_bindings_check_feed(&lim, B("vm-1"), &rec, why, sizeof(why)),
                     PG_OK);
    assert_worker_reads_it_valid(&rec);
    rec.generation = INT64_MAX;
    ck_assert_int_eq(pg_bindings_check_feed(&lim, B("vm-1"), &rec, why, sizeof(why)),
                     PG_OK);
    assert_worker_reads_it_valid(&rec);
    /* Values at the length limit, UTF-8 beyond ASCII, and an unknown kind
     * (it pins, but it is no malformation). */
    char at_limit[65];
    memset(at_limit, 'h', 64);
    at_limit[64] = '\0';
    const pg_device_ref_t odd[] = {{"d\xc3\xa9", "PCI"}, {at_limit, at_limit}};
    rec = record();
    rec.host_uuid = at_limit;
    rec.devices = odd;
    ck_assert_int_eq(pg_bindings_check_feed(&lim, B("vm-1"), &rec, why, sizeof(why)),
                     PG_OK);
    assert_worker_reads_it_valid(&rec);
    /* A tombstone is its key alone. */
    ck_assert_int_eq(pg_bindings_check_feed(&lim, B("vm-1"), NULL, why, sizeof(why)),
                     PG_OK);
}
END_TEST

START_TEST(many_devices_within_the_limit)
{
    /* More devices than the check keeps on its stack: the duplicate and the
     * worker's check take the allocated path. */
    enum { N = 40 };
    static char names[N][8];
    pg_device_ref_t devs[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "d%02d", N - i);
        devs[i] = (pg_device_ref_t){names[i], "pci"};
    }
    const pg_bindings_limits_t wide = {.max_devices = N, .max_len = 64};
    pg_vm_bindings_t rec = record();
    rec.n_devices = N;
    rec.devices = devs;
    char why[256];
    ck_assert_int_eq(pg_bindings_check_feed(&wide, B("vm-1"), &rec, why, sizeof(why)),
                     PG_OK);
    devs[N - 1].device_uuid = names[3]; /* one uuid twice, far apart */
    ck_assert_int_eq(pg_bindings_check_feed(&wide, B("vm-1"), &rec, why, sizeof(why)),
                     PG_INPUT);
    ck_assert_msg(strstr(why, "listed twice") != NULL, "%s", why);
    rec.n_devices = N - 1;
    const pg_bindings_limits_t narrow = {.max_devices = N - 2, .max_len = 64};
    ck_assert_int_eq(pg_bindings_check_feed(&narrow, B("vm-1"), &rec, why, sizeof(why)),
                     PG_INPUT);
    ck_assert_msg(strstr(why, "more than redis.max.devices.per.vm") != NULL, "%s", why);
}
END_TEST

/* Each case is one record (or key) the feed must refuse. */
static char too_long_vm[PG_BINDINGS_MAX_VM_LEN + 2];
static char too_long_value[66];

typedef struct {
    const char *what;
    pg_bytes_t key;
    bool tombstone;
    const char *host;
    const char *uuid, *kind; /* the first device's */
    int64_t generation;
    const char *why;
} bad_case_t;

static const bad_case_t bad_cases[] = {
    {"empty key", {"", 0}, true, NULL, NULL, NULL, 0, "is empty"},
    {"key over the VM uuid limit",
     {too_long_vm, PG_BINDINGS_MAX_VM_LEN + 1},
     true,
     NULL,
     NULL,
     NULL,
     0,
     "longer than"},
    {"key with a NUL", {"vm\0x", 4}, true, NULL, NULL, NULL, 0, "NUL"},
    {"key not UTF-8", {"vm\xff", 3}, true, NULL, NULL, NULL, 0, "not valid UTF-8"},
    {"key of a record not UTF-8 (overlong)",
     {"\xc0\xaf", 2},
     false,
     "h1",
     "d1",
     "pci",
     1,
     "not valid UTF-8"},
    {"key names another VM",
     {"vm-2", 4},
     false,
     "h1",
     "d1",
     "pci",
     1,
     "key names another VM"},
    {"key a prefix of the vmUuid",
     {"vm-", 3},
     false,
     "h1",
     "d1",
     "pci",
     1,
     "key names another VM"},
    {"empty host", {"vm-1", 4}, false, "", "d1", "pci", 1, "hostUuid is empty"},
    {"host over max_len",
     {"vm-1", 4},
     false,
     too_long_value,
     "d1",
     "pci",
     1,
     "hostUuid is too long"},
    {"host not UTF-8",
     {"vm-1", 4},
     false,
     "h\xed\xa0\x80",
     "d1",
     "pci",
     1,
     "hostUuid is not valid UTF-8"},
    {"empty device uuid",
     {"vm-1", 4},
     false,
     "h1",
     "",
     "pci",
     1,
     "deviceUuid is empty"},
    {"missing device uuid",
     {"vm-1", 4},
     false,
     "h1",
     NULL,
     "pci",
     1,
     "deviceUuid is empty"},
    {"device uuid over max_len",
     {"vm-1", 4},
     false,
     "h1",
     too_long_value,
     "pci",
     1,
     "deviceUuid is too long"},
    {"device uuid not UTF-8",
     {"vm-1", 4},
     false,
     "h1",
     "\xf8\x88\x80\x80\x80",
     "pci",
     1,
     "deviceUuid is not valid UTF-8"},
    {"empty kind", {"vm-1", 4}, false, "h1", "d1", "", 1, "kind is empty"},
    {"kind over max_len",
     {"vm-1", 4},
     false,
     "h1",
     "d1",
     too_long_value,
     1,
     "kind is too long"},
    {"kind not UTF-8",
     {"vm-1", 4},
     false,
     "h1",
     "d1",
     "pc\x80",
     1,
     "kind is not valid UTF-8"},
    {"duplicate device",
     {"vm-1", 4},
     false,
     "h1",
     "d2",
     "pci",
     1,
     "d2 is listed twice"},
    {"negative generation", {"vm-1", 4}, false, "h1", "d1", "pci", -1, "negative"},
    {"most negative generation",
     {"vm-1", 4},
     false,
     "h1",
     "d1",
     "pci",
     INT64_MIN,
     "negative"},
};

START_TEST(refused)
{
    const bad_case_t *c = &bad_cases[_i];
    memset(too_long_vm, 'v', sizeof(too_long_vm) - 1);
    memset(too_long_value, 'x', sizeof(too_long_value) - 1);
    pg_device_ref_t devs[2] = {{c->uuid, c->kind}, {"d2", "pci+vf"}};
    pg_vm_bindings_t rec = record();
    rec.host_uuid = c->host;
    rec.devices = devs;
    rec.generation = c->generation;
    char why[256] = "";
    int rc = pg_bindings_check_feed(&lim, c->key, c->tombstone ? NULL : &rec, why,
                                    sizeof(why));
    ck_assert_msg(rc == PG_INPUT, "%s: accepted", c->what);
    ck_assert_msg(strstr(why, c->why) != NULL, "%s: reason '%s'", c->what, why);
}
END_TEST

START_TEST(too_many_devices)
{
    pg_device_ref_t devs[5] = {
        {"d1", "pci"}, {"d2", "pci"}, {"d3", "pci"}, {"d4", "pci"}, {"d5", "pci"}};
    pg_vm_bindings_t rec = record();
    rec.devices = devs;
    rec.n_devices = 4;
    char why[256];
    ck_assert_int_eq(pg_bindings_check_feed(&lim, B("vm-1"), &rec, why, sizeof(why)),
                     PG_OK);
    rec.n_devices = 5;
    ck_assert_int_eq(pg_bindings_check_feed(&lim, B("vm-1"), &rec, why, sizeof(why)),
                     PG_INPUT);
    ck_assert_msg(strstr(why, "5 devices, more than redis.max.devices.per.vm (4)"),
                  "%s", why);
    rec.devices = NULL;
    rec.n_devices = 1;
    ck_assert_int_eq(pg_bindings_check_feed(&lim, B("vm-1"), &rec, why, sizeof(why)),
                     PG_INPUT);
}
END_TEST

/* --- the apply script's replies ----------------------------------------- */

typedef struct {
    const char *what;
    const char *resp;
    size_t len;
    bool tombstone;
    pg_apply_result_t result;
    bool generation_malformed;
    const char *host; /* NULL: none */
} reply_case_t;

#define RCASE(w, lit, t, res, gm, h)                                                   \
    {                                                                                  \
        w, lit, sizeof(lit) - 1, t, res, gm, h                                         \
    }
static const reply_case_t good_replies[] = {
    RCASE("applied over a host", "*2\r\n:0\r\n$2\r\nh0\r\n", false, PG_APPLY_APPLIED,
          false, "h0"),
    RCASE("applied to a new VM", "*2\r\n:0\r\n$-1\r\n", false, PG_APPLY_APPLIED, false,
          NULL),
    RCASE("stale, naming the host now", "*2\r\n:1\r\n$2\r\nh9\r\n", false,
          PG_APPLY_STALE, false, "h9"),
    RCASE("stale on an unplaced VM", "*2\r\n:1\r\n$-1\r\n", false, PG_APPLY_STALE,
          false, NULL),
    RCASE("refused: the stored generation is no integer", "*2\r\n:4\r\n$-1\r\n", false,
          PG_APPLY_STALE, true, NULL),
    RCASE("deleted", "*2\r\n:2\r\n$2\r\nh0\r\n", true, PG_APPLY_DELETED, false, "h0"),
    RCASE("deleted an unplaced entry", "*2\r\n:2\r\n$-1\r\n", true, PG_APPLY_DELETED,
          false, NULL),
    RCASE("absent", "*2\r\n:3\r\n$-1\r\n", true, PG_APPLY_ABSENT, false, NULL),
};

START_TEST(apply_replies)
{
    const reply_case_t *c = &good_replies[_i];
    redisReply *r = reply_of(c->resp, c->len);
    pg_apply_reply_t out;
    char err[160] = "";
    ck_assert_msg(pg_bindings_parse_apply(r, c->tombstone, &out, err, sizeof(err)) == 0,
                  "%s: %s", c->what, err);
    ck_assert_int_eq(out.result, c->result);
    ck_assert_int_eq(out.generation_malformed, c->generation_malformed);
    ck_assert_int_eq(out.has_host, c->host != NULL);
    if (c->host != NULL) {
        ck_assert_uint_eq(out.host.len, strlen(c->host));
        ck_assert_int_eq(memcmp(out.host.data, c->host, out.host.len), 0);
    }
    freeReplyObject(r);
}
END_TEST

START_TEST(apply_reply_keeps_the_host_bytes)
{
    /* A :host with a NUL comes back whole (the index then skips it). */
    redisReply *r = REPLY("*2\r\n:0\r\n$3\r\nh\0x\r\n");
    pg_apply_reply_t out;
    char err[160];
    ck_assert_int_eq(pg_bindings_parse_apply(r, false, &out, err, sizeof(err)), 0);
    ck_assert(out.has_host);
    ck_assert_uint_eq(out.host.len, 3);
    ck_assert_int_eq(memcmp(out.host.data, "h\0x", 3), 0);
    freeReplyObject(r);
}
END_TEST

static const reply_case_t bad_replies[] = {
    RCASE("a deletion for a record", "*2\r\n:2\r\n$2\r\nh0\r\n", false, 0, false, NULL),
    RCASE("absent for a record", "*2\r\n:3\r\n$-1\r\n", false, 0, false, NULL),
    RCASE("applied for a tombstone", "*2\r\n:0\r\n$-1\r\n", true, 0, false, NULL),
    RCASE("stale for a tombstone", "*2\r\n:1\r\n$-1\r\n", true, 0, false, NULL),
    RCASE("refused for a tombstone", "*2\r\n:4\r\n$-1\r\n", true, 0, false, NULL),
    RCASE("absent naming a host", "*2\r\n:3\r\n$2\r\nh0\r\n", true, 0, false, NULL),
    RCASE("refused naming a host", "*2\r\n:4\r\n$2\r\nh0\r\n", false, 0, false, NULL),
    RCASE("an unknown code", "*2\r\n:5\r\n$-1\r\n", false, 0, false, NULL),
    RCASE("a negative code", "*2\r\n:-1\r\n$-1\r\n", false, 0, false, NULL),
    RCASE("the lookup's reply", "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n",
          false, 0, false, NULL),
    RCASE("one element", "*1\r\n:0\r\n", false, 0, false, NULL),
    RCASE("three elements", "*3\r\n:0\r\n$-1\r\n$-1\r\n", false, 0, false, NULL),
    RCASE("the code as a string", "*2\r\n$1\r\n0\r\n$-1\r\n", false, 0, false, NULL),
    RCASE("the host as an integer", "*2\r\n:0\r\n:7\r\n", false, 0, false, NULL),
    RCASE("the host as an array", "*2\r\n:0\r\n*0\r\n", false, 0, false, NULL),
    RCASE("a bare integer", ":0\r\n", false, 0, false, NULL),
    RCASE("a status", "+OK\r\n", true, 0, false, NULL),
    RCASE("nil", "$-1\r\n", false, 0, false, NULL),
};
#undef RCASE

START_TEST(apply_replies_of_the_wrong_shape)
{
    const reply_case_t *c = &bad_replies[_i];
    redisReply *r = reply_of(c->resp, c->len);
    pg_apply_reply_t out;
    char err[160] = "";
    ck_assert_msg(pg_bindings_parse_apply(r, c->tombstone, &out, err, sizeof(err)) ==
                      PG_RETRY,
                  "%s: accepted", c->what);
    ck_assert_msg(strstr(err, "unexpected apply reply") != NULL, "%s: %s", c->what,
                  err);
    freeReplyObject(r);
}
END_TEST

/* --- the host index ----------------------------------------------------- */

static void assert_op(const pg_index_op_t *op, bool add, const char *host)
{
    ck_assert_int_eq(op->add, add);
    ck_assert_uint_eq(op->host.len, strlen(host));
    ck_assert_int_eq(memcmp(op->host.data, host, op->host.len), 0);
    ck_assert_uint_eq(op->vm.len, 4);
    ck_assert_int_eq(memcmp(op->vm.data, "vm-1", 4), 0);
}

static pg_apply_reply_t reply(pg_apply_result_t r, const char *host)
{
    return (pg_apply_reply_t){.result = r,
                              .has_host = host != NULL,
                              .host = host != NULL ? B(host) : (pg_bytes_t){NULL, 0}};
}

START_TEST(index_follows_each_result)
{
    pg_vm_bindings_t rec = record(); /* onto h1 */
    const pg_apply_t a = {B("vm-1"), &rec}, t = {B("vm-1"), NULL};
    pg_index_op_t ops[2];
    pg_apply_reply_t r;

    /* Moved from h0 to h1: out of h0's set, into h1's, in that order. */
    r = reply(PG_APPLY_APPLIED, "h0");
    ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 64, ops), 2);
    assert_op(&ops[0], false, "h0");
    assert_op(&ops[1], true, "h1");
    /* Same host (devices changed): only the (idempotent) SADD. */
    r = reply(PG_APPLY_APPLIED, "h1");
    ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 64, ops), 1);
    assert_op(&ops[0], true, "h1");
    /* A new VM. */
    r = reply(PG_APPLY_APPLIED, NULL);
    ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 64, ops), 1);
    assert_op(&ops[0], true, "h1");
    /* Unplaced by the record (hostUuid null): out of the old set only. */
    rec.host_uuid = NULL;
    r = reply(PG_APPLY_APPLIED, "h0");
    ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 64, ops), 1);
    assert_op(&ops[0], false, "h0");
    r = reply(PG_APPLY_APPLIED, NULL);
    ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 64, ops), 0);
    rec.host_uuid = "h1";
    /* Stale: into the set of the host the cache names now (repairs an index
     * round trip lost before a redo); nothing when it names none. */
    r = reply(PG_APPLY_STALE, "h7");
    ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 64, ops), 1);
    assert_op(&ops[0], true, "h7");
    r = reply(PG_APPLY_STALE, NULL);
    ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 64, ops), 0);
    /* Tombstones. */
    r = reply(PG_APPLY_DELETED, "h0");
    ck_assert_uint_eq(pg_bindings_index_ops(&t, &r, 64, ops), 1);
    assert_op(&ops[0], false, "h0");
    r = reply(PG_APPLY_DELETED, NULL);
    ck_assert_uint_eq(pg_bindings_index_ops(&t, &r, 64, ops), 0);
    r = reply(PG_APPLY_ABSENT, NULL);
    ck_assert_uint_eq(pg_bindings_index_ops(&t, &r, 64, ops), 0);
}
END_TEST

START_TEST(index_skips_hosts_that_name_no_set)
{
    pg_vm_bindings_t rec = record();
    const pg_apply_t a = {B("vm-1"), &rec}, t = {B("vm-1"), NULL};
    pg_index_op_t ops[2];
    /* An old :host written past the feed (with a NUL, not UTF-8, too long):
     * no SREM of a set it never was in; the new host still gets its SADD. */
    const pg_bytes_t odd[] = {{"h\0x", 3}, {"h\xff", 2}, {"hhhhh", 5}, {"", 0}};
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        pg_apply_reply_t r = {
            .result = PG_APPLY_APPLIED, .has_host = true, .host = odd[i]};
        ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 4, ops), 1);
        assert_op(&ops[0], true, "h1");
        r.result = PG_APPLY_DELETED;
        ck_assert_uint_eq(pg_bindings_index_ops(&t, &r, 4, ops), 0);
        r.result = PG_APPLY_STALE;
        ck_assert_uint_eq(pg_bindings_index_ops(&a, &r, 4, ops), 0);
    }
}
END_TEST

START_TEST(result_names)
{
    ck_assert_str_eq(pg_bindings_apply_result_name(PG_APPLY_APPLIED), "applied");
    ck_assert_str_eq(pg_bindings_apply_result_name(PG_APPLY_STALE), "stale");
    ck_assert_str_eq(pg_bindings_apply_result_name(PG_APPLY_DELETED), "deleted");
    ck_assert_str_eq(pg_bindings_apply_result_name(PG_APPLY_ABSENT), "absent");
    ck_assert_str_eq(pg_bindings_apply_result_name((pg_apply_result_t)9), "unknown");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("bindings_feed");
    TCase *c = tcase_create("check");
    tcase_add_test(c, valid_records_and_tombstones);
    tcase_add_test(c, many_devices_within_the_limit);
    tcase_add_loop_test(c, refused, 0, sizeof(bad_cases) / sizeof(bad_cases[0]));
    tcase_add_test(c, too_many_devices);
    suite_add_tcase(s, c);
    TCase *r = tcase_create("reply");
    tcase_add_loop_test(r, apply_replies, 0,
                        sizeof(good_replies) / sizeof(good_replies[0]));
    tcase_add_loop_test(r, apply_replies_of_the_wrong_shape, 0,
                        sizeof(bad_replies) / sizeof(bad_replies[0]));
    tcase_add_test(r, apply_reply_keeps_the_host_bytes);
    tcase_add_test(r, result_names);
    suite_add_tcase(s, r);
    TCase *i = tcase_create("index");
    tcase_add_test(i, index_follows_each_result);
    tcase_add_test(i, index_skips_hosts_that_name_no_set);
    suite_add_tcase(s, i);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

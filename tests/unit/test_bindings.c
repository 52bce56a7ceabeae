/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the binding cache's pure half: the lookup script's reply,
 * given as RESP bytes to hiredis's own reader, parsed into a raw entry and
 * checked against the SPEC's layout. Every malformed class the SPEC names
 * (wrong types, empty, NUL-holding or non-UTF-8 values, an empty :host, too
 * many devices, over-long values, a :generation that is no canonical decimal
 * int64) must come out malformed, never as a VM with fewer devices than
 * Redis holds; and a reply of the wrong shape is an error of the exchange,
 * not of the VM.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings_internal.h"
#include "mem.h"

static const pg_bindings_limits_t lim = {.max_devices = 4, .max_len = 64};

/* Feeds n bytes of RESP to a reader and returns the one reply they hold.
 * The lookup replies below are written with the six elements of an entry
 * without :quarantine; a seventh, nil (not quarantined), is added here unless
 * the reply already has seven. */
static redisReply *reply_of(const char *resp, size_t n)
{
    redisReader *rd = redisReaderCreate();
    ck_assert_ptr_nonnull(rd);
    bool six = n > 4 && memcmp(resp, "*6\r\n", 4) == 0;
    if (six) {
        ck_assert_int_eq(redisReaderFeed(rd, "*7\r\n", 4), REDIS_OK);
        ck_assert_int_eq(redisReaderFeed(rd, resp + 4, n - 4), REDIS_OK);
        ck_assert_int_eq(redisReaderFeed(rd, "$-1\r\n", 5), REDIS_OK);
    } else {
        ck_assert_int_eq(redisReaderFeed(rd, resp, n), REDIS_OK);
    }
    void *r = NULL;
    ck_assert_int_eq(redisReaderGetReply(rd, &r), REDIS_OK);
    ck_assert_ptr_nonnull(r);
    redisReaderFree(rd);
    return r;
}

#define REPLY(lit) reply_of(lit, sizeof(lit) - 1)

typedef struct {
    int parse_rc;
    pg_vm_binding_t b;
    char why[160];
} outcome_t;

static outcome_t run(redisReply *r, pg_arena_t *a)
{
    outcome_t o = {0};
    pg_vm_raw_t raw;
    char err[256] = "";
    o.parse_rc = pg_bindings_parse_lookup(r, a, &raw, err, sizeof(err));
    if (o.parse_rc == 0) {
        ck_assert_int_eq(pg_bindings_to_binding(&raw, &lim, a, &o.b, err, sizeof(err)),
                         0);
        if (!pg_bindings_check(&raw, &lim, o.why, sizeof(o.why)))
            ck_assert(o.b.malformed);
    }
    freeReplyObject(r);
    return o;
}

START_TEST(valid_entry)
{
    pg_arena_t *a = pg_arena_new(4096);
    outcome_t o = run(
        REPLY("*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:2\r\n"
              "*4\r\n$2\r\nd1\r\n$4\r\ndgpu\r\n$2\r\nd2\r\n$6\r\npci+vf\r\n$-1\r\n"),
        a);
    ck_assert_int_eq(o.parse_rc, 0);
    ck_assert(!o.b.malformed);
    ck_assert(o.b.known);
    ck_assert_str_eq(o.b.host, "h1");
    ck_assert_ptr_null(o.b.pin);
    ck_assert_uint_eq(o.b.n_devices, 2);
    ck_assert_str_eq(o.b.devices[0].device_uuid, "d1");
    ck_assert_str_eq(o.b.devices[0].kind, "dgpu");
    ck_assert_str_eq(o.b.devices[1].kind, "pci+vf");
    ck_assert(!o.b.generation.present); /* no :generation */
    pg_arena_destroy(a);
}
END_TEST

/* A valid entry with its :generation: the reply's sixth element. */
static const struct {
    const char *text;
    int64_t value;
} good_generations[] = {
    {"0", 0},
    {"5", 5},
    {"-5", -5},
    {"1000000", 1000000},
    {"9223372036854775807", INT64_MAX},
    {"-9223372036854775808", INT64_MIN},
};

/* The RESP of one VM's lookup entry: host h1, no pin, one dgpu, and the
 * given sixth element (the generation). */
static redisReply *entry_with_gen(const char *gen_resp, size_t len)
{
    static const char head[] = "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n"
                               "*2\r\n$2\r\nd1\r\n$4\r\ndgpu\r\n";
    char buf[256];
    ck_assert_uint_lt(sizeof(head) - 1 + len, sizeof(buf));
    memcpy(buf, head, sizeof(head) - 1);
    memcpy(buf + sizeof(head) - 1, gen_resp, len);
    return reply_of(buf, sizeof(head) - 1 + len);
}

/* A bulk string of n bytes as RESP. */
static size_t bulk(char *out, size_t cap, const char *v, size_t n)
{
    int h = snprintf(out, cap, "$%zu\r\n", n);
    ck_assert(h > 0 && (size_t)h + n + 2 < cap);
    memcpy(out + h, v, n);
    memcpy(out + h + n, "\r\n", 2);
    return (size_t)h + n + 2;
}

START_TEST(generation_present)
{
    pg_arena_t *a = pg_arena_new(4096);
    char resp[64];
    const char *t = good_generations[_i].text;
    size_t n = bulk(resp, sizeof(resp), t, strlen(t));
    outcome_t o = run(entry_with_gen(resp, n), a);
    ck_assert_int_eq(o.parse_rc, 0);
    ck_assert_msg(!o.b.malformed, "%s: %s", t, o.why);
    ck_assert(o.b.generation.present);
    ck_assert_msg(o.b.generation.value == good_generations[_i].value, "%s", t);
    /* The rest of the entry is read as before. */
    ck_assert(o.b.known);
    ck_assert_uint_eq(o.b.n_devices, 1);
    pg_arena_destroy(a);
}
END_TEST

START_TEST(generation_absent)
{
    /* No :generation: valid, and not present, with or without a host. */
    pg_arena_t *a = pg_arena_new(4096);
    outcome_t o = run(entry_with_gen("$-1\r\n", 5), a);
    ck_assert_int_eq(o.parse_rc, 0);
    ck_assert(!o.b.malformed);
    ck_assert(!o.b.generation.present);
    ck_assert(o.b.known);
    o = run(REPLY("*6\r\n:0\r\n$-1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n"), a);
    ck_assert(!o.b.malformed && !o.b.known && !o.b.generation.present);
    /* A generation on a VM the cache does not place is still read. */
    o = run(REPLY("*6\r\n:0\r\n$-1\r\n$-1\r\n:0\r\n*0\r\n$1\r\n7\r\n"), a);
    ck_assert(!o.b.malformed && !o.b.known);
    ck_assert(o.b.generation.present && o.b.generation.value == 7);
    pg_arena_destroy(a);
}
END_TEST

/* Each value of :generation that is not a canonical decimal int64. */
static const struct {
    const char *what, *value;
    size_t len;
    const char *why;
} bad_generations[] = {
#define GCASE(w, lit, why)                                                             \
    {                                                                                  \
        w, lit, sizeof(lit) - 1, why                                                   \
    }
    GCASE("empty", "", ":generation is empty"),
    GCASE("sign only", "-", "not a canonical decimal int64"),
    GCASE("leading +", "+5", "not a canonical decimal int64"),
    GCASE("leading space", " 5", "not a canonical decimal int64"),
    GCASE("trailing space", "5 ", "not a canonical decimal int64"),
    GCASE("inner space", "1 2", "not a canonical decimal int64"),
    GCASE("trailing newline", "5\n", "not a canonical decimal int64"),
    GCASE("leading zero", "05", "not a canonical decimal int64"),
    GCASE("zeros", "00", "not a canonical decimal int64"),
    GCASE("minus zero", "-0", "not a canonical decimal int64"),
    GCASE("negative leading zero", "-05", "not a canonical decimal int64"),
    GCASE("overflow by one", "9223372036854775808", "not a canonical decimal int64"),
    GCASE("underflow by one", "-9223372036854775809", "not a canonical decimal int64"),
    GCASE("20 digits", "99999999999999999999", "not a canonical decimal int64"),
    GCASE("NUL after digits", "5\0", ":generation holds a NUL"),
    GCASE("NUL alone", "\0", ":generation holds a NUL"),
    GCASE("hex", "0x10", "not a canonical decimal int64"),
    GCASE("exponent", "1e3", "not a canonical decimal int64"),
    GCASE("fraction", "1.0", "not a canonical decimal int64"),
    GCASE("letters", "abc", "not a canonical decimal int64"),
    GCASE("non-ASCII digit", "\xd9\xa1", "not a canonical decimal int64"),
    GCASE("not UTF-8", "\xff", "not a canonical decimal int64"),
    GCASE("double minus", "--5", "not a canonical decimal int64"),
#undef GCASE
};

START_TEST(generation_malformed_values)
{
    pg_arena_t *a = pg_arena_new(4096);
    char resp[64];
    size_t n =
        bulk(resp, sizeof(resp), bad_generations[_i].value, bad_generations[_i].len);
    outcome_t o = run(entry_with_gen(resp, n), a);
    ck_assert_msg(o.parse_rc == 0, "%s: parse failed", bad_generations[_i].what);
    ck_assert_msg(o.b.malformed, "%s: not malformed", bad_generations[_i].what);
    ck_assert_msg(strstr(o.why, bad_generations[_i].why) != NULL, "%s: reason '%s'",
                  bad_generations[_i].what, o.why);
    ck_assert_msg(strstr(o.b.why_malformed, ":generation") != NULL, "%s: '%s'",
                  bad_generations[_i].what, o.b.why_malformed);
    /* The malformed path: nothing of the entry reaches policy. */
    ck_assert(!o.b.known);
    ck_assert_ptr_null(o.b.host);
    ck_assert_uint_eq(o.b.n_devices, 0);
    ck_assert(!o.b.generation.present);
    /* And the parser alone agrees. */
    int64_t g = 42;
    ck_assert(!pg_bindings_parse_generation(
        (pg_bytes_t){bad_generations[_i].value, bad_generations[_i].len}, &g));
    ck_assert(g == 42);
    pg_arena_destroy(a);
}
END_TEST

START_TEST(generation_wrong_type_or_oversized)
{
    /* The script reports what it did not ship: flag 16, a :generation of
     * another type; flag 32, one longer than 20 bytes. Either is malformed
     * and names the generation; never a present generation. */
    pg_arena_t *a = pg_arena_new(4096);
    outcome_t o = run(REPLY("*6\r\n:16\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n"), a);
    ck_assert_int_eq(o.parse_rc, 0);
    ck_assert(o.b.malformed);
    ck_assert_msg(strstr(o.why, ":generation is a") != NULL, "%s", o.why);
    ck_assert(!o.b.known && !o.b.generation.present);
    o = run(REPLY("*6\r\n:32\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n"), a);
    ck_assert_int_eq(o.parse_rc, 0);
    ck_assert(o.b.malformed);
    ck_assert_msg(strstr(o.why, ":generation is longer than 20 bytes") != NULL, "%s",
                  o.why);
    ck_assert(!o.b.known && !o.b.generation.present);
    /* A malformed entry carries no generation, even a valid one. */
    o = run(REPLY("*6\r\n:2\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$1\r\n9\r\n"), a);
    ck_assert(o.b.malformed && !o.b.generation.present);
    pg_arena_destroy(a);
}
END_TEST

START_TEST(generation_parser)
{
    for (size_t i = 0; i < sizeof(good_generations) / sizeof(good_generations[0]);
         i++) {
        int64_t g = 42;
        const char *t = good_generations[i].text;
        ck_assert_msg(pg_bindings_parse_generation((pg_bytes_t){t, strlen(t)}, &g),
                      "%s", t);
        ck_assert_msg(g == good_generations[i].value, "%s", t);
    }
    /* Over 20 bytes is never one, even of digits; NULL data of no length is
     * empty. */
    int64_t g = 42;
    ck_assert(
        !pg_bindings_parse_generation((pg_bytes_t){"000000000000000000001", 21}, &g));
    ck_assert(!pg_bindings_parse_generation((pg_bytes_t){NULL, 0}, &g));
    /* Only the given length counts: the digits after it are not read. */
    ck_assert(pg_bindings_parse_generation((pg_bytes_t){"123", 2}, &g));
    ck_assert(g == 12);
}
END_TEST

START_TEST(entry_built_in_memory_has_no_generation)
{
    /* An entry an operator's import builds (key types "string"/"hash", no
     * generation type at all) checks as before. */
    pg_raw_device_t d = {{"d1", 2}, {"pci", 3}};
    pg_vm_raw_t raw = {
        .has_host = true, .host = {"h1", 2}, .n_devices = 1, .devices = &d};
    strcpy(raw.host_type, "string");
    strcpy(raw.pin_type, "none");
    strcpy(raw.devices_type, "hash");
    char why[160] = "";
    ck_assert_msg(pg_bindings_check(&raw, &lim, why, sizeof(why)), "%s", why);
    strcpy(raw.generation_type, "list");
    ck_assert(!pg_bindings_check(&raw, &lim, why, sizeof(why)));
    ck_assert_str_eq(why, ":generation is a list, not a string");
}
END_TEST

START_TEST(absent_vm_is_unknown_not_malformed)
{
    pg_arena_t *a = pg_arena_new(4096);
    outcome_t o = run(REPLY("*6\r\n:0\r\n$-1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n"), a);
    ck_assert_int_eq(o.parse_rc, 0);
    ck_assert(!o.b.malformed);
    ck_assert(!o.b.known);
    ck_assert_uint_eq(o.b.n_devices, 0);
    /* A pin on an unplaced VM is still a pin, even an empty one. */
    o = run(REPLY("*6\r\n:0\r\n$-1\r\n$0\r\n\r\n:0\r\n*0\r\n$-1\r\n"), a);
    ck_assert(!o.b.malformed);
    ck_assert_ptr_nonnull(o.b.pin);
    pg_arena_destroy(a);
}
END_TEST

/* Each reply is one VM whose entry breaks the layout in one way. */
static const struct {
    const char *what;
    const char *resp;
    size_t len;
    const char *why; /* a substring of the reason */
} malformed[] = {
#define CASE(w, lit, why)                                                              \
    {                                                                                  \
        w, lit, sizeof(lit) - 1, why                                                   \
    }
    CASE(":host of another type", "*6\r\n:1\r\n$-1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n",
         ":host is a"),
    CASE(":pin as a list", "*6\r\n:2\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n",
         ":pin is a"),
    CASE(":devices as a string", "*6\r\n:4\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n",
         ":devices is a"),
    CASE("empty :host", "*6\r\n:0\r\n$0\r\n\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n",
         ":host is empty"),
    CASE(":host with a NUL", "*6\r\n:0\r\n$5\r\ndst\0x\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n",
         ":host holds a NUL"),
    CASE("kind with a NUL",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*2\r\n$2\r\nd1\r\n$11\r\npci+"
         "vf\0dgpu\r\n$-1\r\n",
         "kind holds a NUL"),
    CASE("uuid with a NUL",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*2\r\n$3\r\nd\0a\r\n$4\r\ndgpu\r\n$-"
         "1\r\n",
         "uuid holds a NUL"),
    CASE("uuid not UTF-8",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*2\r\n$2\r\n\xff\xfe\r\n$4\r\ndgpu\r\n$-"
         "1\r\n",
         "not valid UTF-8"),
    CASE("kind not UTF-8 (overlong)",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*2\r\n$2\r\nd1\r\n$2\r\n\xc0\xaf\r\n$-"
         "1\r\n",
         "not valid UTF-8"),
    CASE("empty uuid",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*2\r\n$0\r\n\r\n$3\r\npci\r\n$-1\r\n",
         "uuid is empty"),
    CASE("empty kind",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*2\r\n$2\r\nd1\r\n$0\r\n\r\n$-1\r\n",
         "kind is empty"),
    CASE("more devices than the limit",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:10000\r\n*0\r\n$-1\r\n",
         "more than redis.max.devices.per.vm"),
    CASE("a value over the length limit",
         "*6\r\n:8\r\n$-1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n", "longer than"),
    CASE("uuid over the length limit (the script missed it)",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*2\r\n$65\r\n"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n$"
         "3\r\npci\r\n$-1\r\n",
         "too long"),
#undef CASE
};

START_TEST(malformed_entries)
{
    pg_arena_t *a = pg_arena_new(4096);
    outcome_t o = run(reply_of(malformed[_i].resp, malformed[_i].len), a);
    ck_assert_msg(o.parse_rc == 0, "%s: parse failed", malformed[_i].what);
    ck_assert_msg(o.b.malformed, "%s: not malformed", malformed[_i].what);
    ck_assert_msg(strstr(o.why, malformed[_i].why) != NULL, "%s: reason '%s'",
                  malformed[_i].what, o.why);
    ck_assert_str_eq(o.b.why_malformed, o.why);
    /* Nothing of a malformed entry reaches policy. */
    ck_assert(!o.b.known);
    ck_assert_ptr_null(o.b.host);
    ck_assert_ptr_null(o.b.pin);
    ck_assert_uint_eq(o.b.n_devices, 0);
    pg_arena_destroy(a);
}
END_TEST

START_TEST(values_keep_their_length)
{
    /* Multi-byte UTF-8 is valid and copied whole. */
    pg_arena_t *a = pg_arena_new(4096);
    outcome_t o = run(REPLY("*6\r\n:0\r\n$4\r\nh\xc3\xa9x\r\n$-1\r\n:1\r\n"
                            "*2\r\n$4\r\n\xe2\x82\xac"
                            "1\r\n$3\r\nusb\r\n$-1\r\n"),
                      a);
    ck_assert(!o.b.malformed);
    ck_assert_str_eq(o.b.host, "h\xc3\xa9x");
    ck_assert_str_eq(o.b.devices[0].device_uuid, "\xe2\x82\xac"
                                                 "1");
    pg_arena_destroy(a);
}
END_TEST

static const struct {
    const char *what;
    const char *resp;
    size_t len;
} bad_shapes[] = {
#define CASE(w, lit)                                                                   \
    {                                                                                  \
        w, lit, sizeof(lit) - 1                                                        \
    }
    CASE("not an array", "$2\r\nok\r\n"),
    CASE("four elements", "*4\r\n:0\r\n$-1\r\n$-1\r\n:0\r\n"),
    CASE("flags not an integer", "*6\r\n$1\r\n0\r\n$-1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n"),
    CASE("negative count", "*6\r\n:0\r\n$-1\r\n$-1\r\n:-1\r\n*0\r\n$-1\r\n"),
    CASE("odd device list",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*1\r\n$2\r\nd1\r\n$-1\r\n"),
    CASE("count and list disagree",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:2\r\n*2\r\n$2\r\nd1\r\n$3\r\npci\r\n$-1\r\n"),
    CASE("device field an integer",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:1\r\n*2\r\n:1\r\n$3\r\npci\r\n$-1\r\n"),
    CASE("five elements (no generation slot)",
         "*5\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n"),
    CASE("eight elements",
         "*8\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n$-1\r\n$-1\r\n"),
    CASE("quarantine an integer",
         "*7\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n:1\r\n"),
    CASE("generation an integer", "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n:5\r\n"),
    CASE("generation an array", "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n*0\r\n"),
    CASE("generation over 20 bytes (the script ships none)",
         "*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$21\r\n"
         "100000000000000000000\r\n"),
#undef CASE
};

/* :quarantine is the worker's key: present, it quarantines whatever it holds
 * (of another type too: fail closed), and never makes the entry malformed. */
START_TEST(quarantine_in_the_lookup)
{
    pg_arena_t *a = pg_arena_new(4096);
    outcome_t o = run(REPLY("*7\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n"
                            "$20\r\n1764800000000 600000\r\n"),
                      a);
    ck_assert_int_eq(o.parse_rc, 0);
    ck_assert(!o.b.malformed);
    ck_assert(o.b.quarantined);
    ck_assert_int_eq(o.b.quarantine_until_ms, 1764800000000LL);
    /* Another type at :quarantine (flag 64): quarantined, until unknown. */
    o = run(REPLY("*7\r\n:64\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n$-1\r\n"), a);
    ck_assert_int_eq(o.parse_rc, 0);
    ck_assert(!o.b.malformed);
    ck_assert(o.b.quarantined);
    ck_assert_int_eq(o.b.quarantine_until_ms, 0);
    /* A value it cannot read: still quarantined. */
    o = run(REPLY("*7\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n$3\r\nyes\r\n"),
            a);
    ck_assert(o.b.quarantined);
    ck_assert_int_eq(o.b.quarantine_until_ms, 0);
    /* Absent: not. */
    o = run(REPLY("*6\r\n:0\r\n$2\r\nh1\r\n$-1\r\n:0\r\n*0\r\n$-1\r\n"), a);
    ck_assert(!o.b.quarantined);
    int64_t until, dur;
    ck_assert(pg_bindings_parse_quarantine((pg_bytes_t){"5 7", 3}, &until, &dur));
    ck_assert(until == 5 && dur == 7);
    static const char *const bad[] = {"", "5", "5 7 9", "-5 7", "5 -7", "x y", "5 7x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!pg_bindings_parse_quarantine(
                          (pg_bytes_t){bad[i], strlen(bad[i])}, &until, &dur),
                      "accepted \"%s\"", bad[i]);
    pg_arena_destroy(a);
}
END_TEST

START_TEST(reply_of_the_wrong_shape_is_an_exchange_error)
{
    pg_arena_t *a = pg_arena_new(4096);
    outcome_t o = run(reply_of(bad_shapes[_i].resp, bad_shapes[_i].len), a);
    ck_assert_msg(o.parse_rc == PG_RETRY, "%s: rc %d", bad_shapes[_i].what, o.parse_rc);
    pg_arena_destroy(a);
}
END_TEST

/* hiredis's own formatting of one lookup call over vms[first..first+c). */
static void want_call(pg_buf_t *want, const char *sha, const char *const *vms,
                      size_t first, size_t c)
{
    static char keys[16][5][1100];
    const char *argv[3 + 5 * 16 + 3];
    char numkeys[8];
    snprintf(numkeys, sizeof(numkeys), "%zu", 5 * c);
    int argc = 0;
    argv[argc++] = "EVALSHA";
    argv[argc++] = sha;
    argv[argc++] = numkeys;
    const char *suffix[5] = {"host", "pin", "devices", "generation", "quarantine"};
    for (size_t i = 0; i < c; i++)
        for (int k = 0; k < 5; k++) {
            snprintf(keys[i][k], sizeof(keys[i][k]), "pinguard:vm:{%s}:%s",
                     vms[first + i], suffix[k]);
            argv[argc++] = keys[i][k];
        }
    argv[argc++] = "256";
    argv[argc++] = "1024";
    argv[argc++] = "0";
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, NULL);
    ck_assert_int_gt(len, 0);
    ck_assert_int_eq(pg_buf_append(want, cmd, (size_t)len), 0);
    redisFreeCommand(cmd);
}

START_TEST(lookup_request_matches_hiredis_formatting)
{
    /* The hand-written RESP of a batch's lookups equals, byte for byte, what
     * hiredis formats from the same arguments: VM uuids of every length
     * class (one to four digits of length), calls of several VMs and a last
     * short one, and one VM per call. */
    static const char sha[] = "0123456789abcdef0123456789abcdef01234567";
    char long_vm[1025];
    memset(long_vm, 'v', sizeof(long_vm) - 1);
    long_vm[sizeof(long_vm) - 1] = '\0';
    const char *vms[] = {"a", "6f1c2d3e-aaaa-bbbb-cccc-0123456789ab", "vm\xc3\xa9",
                         long_vm, "e"};
    const char args[] = "$3\r\n256\r\n$4\r\n1024\r\n$1\r\n0\r\n";
    const size_t chunks[] = {1, 2, 3, 16};
    char err[128];
    for (size_t k = 0; k < sizeof(chunks) / sizeof(chunks[0]); k++) {
        pg_buf_t got = {0}, want = {0};
        ck_assert_int_eq(pg_bindings_format_lookups(&got, sha, args, sizeof(args) - 1,
                                                    chunks[k], vms, 5, err,
                                                    sizeof(err)),
                         0);
        for (size_t first = 0; first < 5; first += chunks[k])
            want_call(&want, sha, vms, first,
                      5 - first < chunks[k] ? 5 - first : chunks[k]);
        ck_assert_uint_eq(got.len, want.len);
        ck_assert_int_eq(memcmp(got.data, want.data, got.len), 0);
        pg_buf_free(&got);
        pg_buf_free(&want);
    }
    /* An empty or over-long VM uuid names no key, and nothing is written. */
    char too_long[1026];
    memset(too_long, 'x', sizeof(too_long) - 1);
    too_long[sizeof(too_long) - 1] = '\0';
    const char *bad[2][2] = {{"a", ""}, {too_long, "b"}};
    for (int i = 0; i < 2; i++) {
        pg_buf_t got = {0};
        ck_assert_int_eq(pg_bindings_format_lookups(&got, sha, args, sizeof(args) - 1,
                                                    32, bad[i], 2, err, sizeof(err)),
                         PG_INPUT);
        ck_assert_uint_eq(got.len, 0);
        pg_buf_free(&got);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("bindings");
    TCase *t = tcase_create("reply");
    tcase_add_test(t, valid_entry);
    tcase_add_test(t, absent_vm_is_unknown_not_malformed);
    tcase_add_loop_test(t, malformed_entries, 0,
                        sizeof(malformed) / sizeof(malformed[0]));
    tcase_add_test(t, values_keep_their_length);
    tcase_add_loop_test(t, generation_present, 0,
                        sizeof(good_generations) / sizeof(good_generations[0]));
    tcase_add_test(t, generation_absent);
    tcase_add_loop_test(t, generation_malformed_values, 0,
                        sizeof(bad_generations) / sizeof(bad_generations[0]));
    tcase_add_test(t, generation_wrong_type_or_oversized);
    tcase_add_test(t, generation_parser);
    tcase_add_test(t, entry_built_in_memory_has_no_generation);
    tcase_add_test(t, quarantine_in_the_lookup);
    tcase_add_loop_test(t, reply_of_the_wrong_shape_is_an_exchange_error, 0,
                        sizeof(bad_shapes) / sizeof(bad_shapes[0]));
    suite_add_tcase(s, t);
    TCase *f = tcase_create("request");
    tcase_add_test(f, lookup_request_matches_hiredis_formatting);
    suite_add_tcase(s, f);
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

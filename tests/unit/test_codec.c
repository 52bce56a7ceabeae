/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the Avro codec: CRC-64-AVRO and canonical forms against
 * fastavro, decoding fastavro's bytes and encoding byte-identical ones, round
 * trips of every record, hostile input (each with its exact error code and a
 * bound on what it may allocate), a small mutation fuzz, and the JSON forms.
 * Reference vectors come from data/gen_vectors.py (fastavro), so the codec is
 * checked against an independent implementation, not against itself.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avro_pcf.h"
#include "codec.h"
#include "utf8.h"

#include "data/vectors.h"

#define N_SAMPLES (sizeof(tv_samples) / sizeof(tv_samples[0]))
#define N_V1_SAMPLES (sizeof(tv_v1_samples) / sizeof(tv_v1_samples[0]))
#define N_PCF_CASES (sizeof(tv_pcf_cases) / sizeof(tv_pcf_cases[0]))

static pg_codec_t *codec;
static pg_arena_t *arena;
static char err[512];

static void setup(void)
{
    char e[256] = "";
    codec = pg_codec_new(e, sizeof(e));
    ck_assert_msg(codec != NULL, "pg_codec_new: %s", e);
    arena = pg_arena_new(64 * 1024);
    ck_assert_ptr_nonnull(arena);
    err[0] = '\0';
}

static void teardown(void)
{
    pg_codec_destroy(codec);
    pg_arena_destroy(arena);
    codec = NULL;
    arena = NULL;
}

/* ---- Record comparison -------------------------------------------------- */

static void cmp_str(const char *what, const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        ck_assert_msg(a == b, "%s: %s vs %s", what, a ? a : "NULL", b ? b : "NULL");
    else
        ck_assert_msg(strcmp(a, b) == 0, "%s: \"%s\" vs \"%s\"", what, a, b);
}

static void cmp_devices(size_t na, const pg_device_ref_t *a, size_t nb,
                        const pg_device_ref_t *b)
{
    ck_assert_uint_eq(na, nb);
    for (size_t i = 0; i < na; i++) {
        cmp_str("deviceUuid", a[i].device_uuid, b[i].device_uuid);
        cmp_str("kind", a[i].kind, b[i].kind);
    }
}

static void cmp_gen(const char *what, pg_opt_long_t a, pg_opt_long_t b)
{
    ck_assert_msg(a.present == b.present, "%s: present %d vs %d", what, a.present,
                  b.present);
    if (a.present)
        ck_assert_msg(a.value == b.value, "%s: %lld vs %lld", what, (long long)a.value,
                      (long long)b.value);
}

static void cmp_advice(const pg_migration_advice_t *a, const pg_migration_advice_t *b)
{
    cmp_gen("bindingsGeneration", a->bindings_generation, b->bindings_generation);
    cmp_str("vmUuid", a->vm_uuid, b->vm_uuid);
    cmp_str("srcHostUuid", a->src_host_uuid, b->src_host_uuid);
    cmp_str("dstHostUuid", a->dst_host_uuid, b->dst_host_uuid);
    ck_assert_int_eq(a->has_score, b->has_score);
    if (a->has_score)
        ck_assert_msg(memcmp(&a->score, &b->score, sizeof(double)) == 0,
                      "score %.17g vs %.17g", a->score, b->score);
}

static void cmp_advices(size_t na, const pg_migration_advice_t *a, size_t nb,
                        const pg_migration_advice_t *b)
{
    ck_assert_uint_eq(na, nb);
    for (size_t i = 0; i < na; i++)
        cmp_advice(&a[i], &b[i]);
}

static void cmp_record(const pg_record_t *x, const pg_record_t *y)
{
    ck_assert_int_eq(x->type, y->type);
    switch (x->type) {
    case PG_REC_DRS_ADVICE: {
        const pg_drs_advice_t *a = &x->u.drs_advice, *b = &y->u.drs_advice;
        cmp_str("adviceId", a->advice_id, b->advice_id);
        cmp_str("clusterUuid", a->cluster_uuid, b->cluster_uuid);
        ck_assert_int_eq(a->generated_at_ms, b->generated_at_ms);
        cmp_advices(a->n_migrations, a->migrations, b->n_migrations, b->migrations);
        break;
    }
    case PG_REC_FILTERED_ADVICE: {
        const pg_filtered_advice_t *a = &x->u.filtered_advice,
                                   *b = &y->u.filtered_advice;
        cmp_str("adviceId", a->advice_id, b->advice_id);
        cmp_str("clusterUuid", a->cluster_uuid, b->cluster_uuid);
        ck_assert_int_eq(a->generated_at_ms, b->generated_at_ms);
        ck_assert_int_eq(a->decided_at_ms, b->decided_at_ms);
        cmp_advices(a->n_approved, a->approved, b->n_approved, b->approved);
        ck_assert_uint_eq(a->n_vetoed, b->n_vetoed);
        for (size_t i = 0; i < a->n_vetoed; i++) {
            cmp_advice(&a->vetoed[i].migration, &b->vetoed[i].migration);
            ck_assert_int_eq(a->vetoed[i].reason, b->vetoed[i].reason);
            cmp_devices(a->vetoed[i].n_devices, a->vetoed[i].devices,
                        b->vetoed[i].n_devices, b->vetoed[i].devices);
        }
        break;
    }
    case PG_REC_MIGRATE_REQUEST: {
        const pg_migrate_request_t *a = &x->u.migrate_request,
                                   *b = &y->u.migrate_request;
        cmp_str("requestId", a->request_id, b->request_id);
        cmp_str("vmUuid", a->vm_uuid, b->vm_uuid);
        cmp_str("srcHostUuid", a->src_host_uuid, b->src_host_uuid);
        cmp_str("dstHostUuid", a->dst_host_uuid, b->dst_host_uuid);
        ck_assert_int_eq(a->origin, b->origin);
        ck_assert_int_eq(a->requested_at_ms, b->requested_at_ms);
        cmp_gen("minGeneration", a->min_generation, b->min_generation);
        break;
    }
    case PG_REC_MIGRATE_DECISION: {
        const pg_migrate_decision_t *a = &x->u.migrate_decision,
                                    *b = &y->u.migrate_decision;
        cmp_str("requestId", a->request_id, b->request_id);
        cmp_str("vmUuid", a->vm_uuid, b->vm_uuid);
        cmp_str("srcHostUuid", a->src_host_uuid, b->src_host_uuid);
        cmp_str("dstHostUuid", a->dst_host_uuid, b->dst_host_uuid);
        ck_assert_int_eq(a->origin, b->origin);
        ck_assert_int_eq(a->verdict, b->verdict);
        ck_assert_int_eq(a->has_reason, b->has_reason);
        if (a->has_reason)
            ck_assert_int_eq(a->reason, b->reason);
        cmp_devices(a->n_devices, a->devices, b->n_devices, b->devices);
        ck_assert_int_eq(a->decided_at_ms, b->decided_at_ms);
        cmp_gen("bindingsGeneration", a->bindings_generation, b->bindings_generation);
        break;
    }
    case PG_REC_MIGRATION_RESULT: {
        const pg_migration_result_t *a = &x->u.migration_result,
                                    *b = &y->u.migration_result;
        cmp_str("requestId", a->request_id, b->request_id);
        cmp_str("vmUuid", a->vm_uuid, b->vm_uuid);
        cmp_str("srcHostUuid", a->src_host_uuid, b->src_host_uuid);
        cmp_str("dstHostUuid", a->dst_host_uuid, b->dst_host_uuid);
        ck_assert_int_eq(a->outcome, b->outcome);
        cmp_str("observedHostUuid", a->observed_host_uuid, b->observed_host_uuid);
        cmp_str("error", a->error, b->error);
        ck_assert_int_eq(a->finished_at_ms, b->finished_at_ms);
        break;
    }
    case PG_REC_RELEASE_DECISION: {
        const pg_release_decision_t *a = &x->u.release_decision,
                                    *b = &y->u.release_decision;
        cmp_str("requestId", a->request_id, b->request_id);
        cmp_str("vmUuid", a->vm_uuid, b->vm_uuid);
        ck_assert_int_eq(a->outcome, b->outcome);
        ck_assert_int_eq(a->action, b->action);
        ck_assert_int_eq(a->reason, b->reason);
        cmp_str("fromHostUuid", a->from_host_uuid, b->from_host_uuid);
        cmp_str("dstHostUuid", a->dst_host_uuid, b->dst_host_uuid);
        cmp_devices(a->n_devices, a->devices, b->n_devices, b->devices);
        ck_assert_int_eq(a->decided_at_ms, b->decided_at_ms);
        cmp_gen("bindingsGeneration", a->bindings_generation, b->bindings_generation);
        break;
    }
    case PG_REC_VM_BINDINGS: {
        const pg_vm_bindings_t *a = &x->u.vm_bindings, *b = &y->u.vm_bindings;
        cmp_str("vmUuid", a->vm_uuid, b->vm_uuid);
        cmp_str("hostUuid", a->host_uuid, b->host_uuid);
        cmp_devices(a->n_devices, a->devices, b->n_devices, b->devices);
        ck_assert_int_eq(a->generation, b->generation);
        ck_assert_int_eq(a->updated_at_ms, b->updated_at_ms);
        break;
    }
    case PG_REC_AUDIT_EVENT: {
        const pg_audit_event_t *a = &x->u.audit_event, *b = &y->u.audit_event;
        cmp_str("eventId", a->event_id, b->event_id);
        ck_assert_int_eq(a->at_ms, b->at_ms);
        cmp_str("actor", a->actor, b->actor);
        ck_assert_int_eq(a->action, b->action);
        cmp_str("vmUuid", a->vm_uuid, b->vm_uuid);
        cmp_str("detail", a->detail, b->detail);
        break;
    }
    default:
        ck_abort_msg("bad record type %d", (int)x->type);
    }
}

/* ---- Message builder ---------------------------------------------------- */

typedef struct {
    uint8_t b[8192];
    size_t n;
} msg_t;

static void m_raw(msg_t *m, const void *p, size_t n)
{
    ck_assert_uint_le(m->n + n, sizeof(m->b));
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

static void m_byte(msg_t *m, uint8_t b)
{
    m_raw(m, &b, 1);
}

static void m_varint(msg_t *m, uint64_t raw)
{
    while (raw >= 0x80) {
        m_byte(m, (uint8_t)(raw | 0x80));
        raw >>= 7;
    }
    m_byte(m, (uint8_t)raw);
}

static void m_long(msg_t *m, int64_t v)
{
    uint64_t u = (uint64_t)v << 1;
    m_varint(m, v < 0 ? ~u : u);
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

static void m_double(msg_t *m, double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    for (int i = 0; i < 8; i++)
        m_byte(m, (uint8_t)(u >> (8 * i)));
}

/* The hand-built bodies below are written in version 1 (the v2 reader fills
 * the fields it added); m_header2 starts a body of the current version. */
static void m_header_fp(msg_t *m, uint64_t fp)
{
    m->n = 0;
    m_byte(m, 0xc3);
    m_byte(m, 0x01);
    for (int i = 0; i < 8; i++)
        m_byte(m, (uint8_t)(fp >> (8 * i)));
}

static void m_header(msg_t *m, pg_record_type_t t)
{
    ck_assert_int_lt(t, TV_V1_RECORDS);
    m_header_fp(m, tv_schemas_v1[t].fingerprint);
}

static void m_header2(msg_t *m, pg_record_type_t t)
{
    m_header_fp(m, tv_schemas[t].fingerprint);
}

/* MigrateVmRequest with the given id, dst branch and origin index. */
static void request_msg(msg_t *m, const char *id, int64_t dst_branch, int64_t origin)
{
    m_header(m, PG_REC_MIGRATE_REQUEST);
    m_str(m, id);
    m_str(m, "vm-1");
    m_str(m, "host-a");
    m_long(m, dst_branch);
    if (dst_branch == 1)
        m_str(m, "host-b");
    m_long(m, origin);
    m_long(m, 1234);
}

/* DrsAdvice header fields, up to (not including) the migrations array. */
static void advice_prefix(msg_t *m)
{
    m_header(m, PG_REC_DRS_ADVICE);
    m_str(m, "adv-1");
    m_str(m, "cl-1");
    m_long(m, 99);
}

static void advice_item(msg_t *m, const char *vm)
{
    m_str(m, vm);
    m_str(m, "host-a");
    m_str(m, "host-b");
    m_long(m, 1);
    m_double(m, 0.5);
}

static int decode(const msg_t *m, const pg_codec_limits_t *lim, pg_record_t *r)
{
    err[0] = '\0';
    return pg_codec_decode(codec, m->b, m->n, lim, arena, r, err, sizeof(err));
}

/* A hostile message: the exact code, a detail, a bounded arena, and to_json
 * agreeing with decode. */
static void expect_bytes(const uint8_t *b, size_t n, const pg_codec_limits_t *lim,
                         int code)
{
    pg_record_t r;
    size_t before = pg_arena_used(arena);
    err[0] = '\0';
    int rc = pg_codec_decode(codec, b, n, lim, arena, &r, err, sizeof(err));
    ck_assert_msg(rc == code, "got %s (%s), want %s", pg_codec_err_name(rc), err,
                  pg_codec_err_name(code));
    ck_assert_msg(pg_arena_used(arena) - before <= 64 * 1024 + 8 * n,
                  "arena grew by %zu", pg_arena_used(arena) - before);
    if (code != 0) {
        ck_assert_msg(err[0] != '\0', "no detail for %s", pg_codec_err_name(code));
        ck_assert_ptr_null(strchr(err, '\n'));
    }
    char *json = (char *)"sentinel";
    rc = pg_codec_to_json(codec, 0, b, n, lim, &json, NULL, err, sizeof(err));
    ck_assert_msg(rc == code, "to_json got %s (%s), want %s", pg_codec_err_name(rc),
                  err, pg_codec_err_name(code));
    if (code != 0)
        ck_assert_ptr_null(json);
    free(json);
}

static void expect(const msg_t *m, const pg_codec_limits_t *lim, int code)
{
    expect_bytes(m->b, m->n, lim, code);
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ---- CRC and canonical form -------------------------------------------- */

START_TEST(crc64_check_values)
{
    ck_assert_uint_eq(pg_avro_crc64("", 0), UINT64_C(0xC15D213AA4D7A795));
    ck_assert_uint_eq(pg_avro_crc64("\"null\"", 6), UINT64_C(0x63DD24E7CC258F8A));
    ck_assert_uint_eq(pg_avro_crc64("\"string\"", 8), UINT64_C(0x8F014872634503C7));
}
END_TEST

/* The six message schemas, resolved across files, match fastavro's. */
START_TEST(schemas_match_fastavro)
{
    const pg_record_type_t t = (pg_record_type_t)_i;
    const char *pcf = pg_codec_canonical_form(codec, 0, t);
    ck_assert_ptr_nonnull(pcf);
    ck_assert_str_eq(pcf, tv_schemas[t].pcf);
    ck_assert_uint_eq(pg_codec_fingerprint(codec, 0, t), tv_schemas[t].fingerprint);
    ck_assert_uint_eq(pg_avro_crc64(pcf, strlen(pcf)), tv_schemas[t].fingerprint);
}
END_TEST

START_TEST(pcf_rules_match_fastavro)
{
    char e[256] = "";
    char *pcf = pg_avro_pcf(tv_pcf_cases[_i].schema, NULL, NULL, e, sizeof(e));
    ck_assert_msg(pcf != NULL, "%s", e);
    ck_assert_str_eq(pcf, tv_pcf_cases[_i].pcf);
    ck_assert_uint_eq(pg_avro_crc64(pcf, strlen(pcf)), tv_pcf_cases[_i].fingerprint);
    free(pcf);
}
END_TEST

static const char *test_lookup(const char *full_name, void *user)
{
    (void)user;
    if (strcmp(full_name, "t.B") == 0)
        return "{\"type\": \"enum\", \"name\": \"B\", \"namespace\": \"t\", \"doc\": "
               "\"d\", "
               "\"symbols\": [\"X\"]}";
    if (strcmp(full_name, "t.Liar") == 0)
        return "{\"type\": \"enum\", \"name\": \"Other\", \"namespace\": \"t\", "
               "\"symbols\": [\"X\"]}";
    return NULL;
}

START_TEST(pcf_lookup_inlines_first_use)
{
    char e[256] = "";
    char *pcf = pg_avro_pcf("{\"type\": \"record\", \"name\": \"t.Top\", \"fields\": ["
                            "{\"name\": \"a\", \"type\": \"t.B\"}, "
                            "{\"name\": \"b\", \"type\": [\"null\", \"B\"]}]}",
                            test_lookup, NULL, e, sizeof(e));
    ck_assert_msg(pcf != NULL, "%s", e);
    ck_assert_str_eq(
        pcf, "{\"name\":\"t.Top\",\"type\":\"record\",\"fields\":["
             "{\"name\":\"a\",\"type\":{\"name\":\"t.B\",\"type\":\"enum\","
             "\"symbols\":[\"X\"]}},{\"name\":\"b\",\"type\":[\"null\",\"t.B\"]}]}");
    free(pcf);

    char *inl = NULL;
    const char *src = "[\"null\", \"t.B\"]";
    ck_assert_int_eq(
        pg_avro_resolve(src, strlen(src), test_lookup, NULL, &inl, NULL, e, sizeof(e)),
        0);
    ck_assert_ptr_nonnull(
        strstr(inl, "\"doc\":\"d\"")); /* the inlined form keeps docs */
    free(inl);
}
END_TEST

START_TEST(pcf_errors)
{
    static const char *const bad[] = {
        "{\"type\": \"record\", \"name\": \"t.T\", \"fields\": [{\"name\": \"a\", "
        "\"type\": "
        "\"t.Missing\"}]}",
        "\"t.Liar\"",
        "{\"type\": \"record\", \"name\": \"t.T\", \"fields\": [{\"name\": \"a\", "
        "\"type\": "
        "\"t.T\"}, {\"name\": \"b\", \"type\": {\"type\": \"enum\", \"name\": \"T\", "
        "\"symbols\": []}}]}",
        "{\"type\": \"record\", \"name\": \"T\"}",
        "{\"type\": ",
        "42",
        "{\"type\": \"array\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char e[256] = "";
        char *pcf = pg_avro_pcf(bad[i], test_lookup, NULL, e, sizeof(e));
        ck_assert_msg(pcf == NULL, "accepted %s as %s", bad[i], pcf);
        ck_assert_msg(e[0] != '\0', "no detail for %s", bad[i]);
    }
    char e[256] = "";
    ck_assert_ptr_null(pg_avro_pcf("\"t.Missing\"", test_lookup, NULL, e, sizeof(e)));
    ck_assert_ptr_nonnull(strstr(e, "t.Missing"));
    ck_assert_ptr_null(pg_avro_pcf("\"t.B\"", NULL, NULL, e, sizeof(e)));
}
END_TEST

START_TEST(names)
{
    static const struct {
        int code;
        const char *name;
    } codes[] = {
        {PG_CODEC_OK, "OK"},
        {PG_CODEC_EEMPTY, "EMPTY_MESSAGE"},
        {PG_CODEC_EMAGIC, "BAD_MAGIC"},
        {PG_CODEC_EFINGERPRINT, "UNKNOWN_FINGERPRINT"},
        {PG_CODEC_ETYPE, "UNEXPECTED_RECORD"},
        {PG_CODEC_ETRUNCATED, "TRUNCATED_BODY"},
        {PG_CODEC_ELENGTH, "BAD_LENGTH"},
        {PG_CODEC_EVARINT, "BAD_VARINT"},
        {PG_CODEC_EUTF8, "INVALID_UTF8"},
        {PG_CODEC_EUNION, "BAD_UNION_BRANCH"},
        {PG_CODEC_EENUM, "BAD_ENUM_SYMBOL"},
        {PG_CODEC_ETRAILING, "TRAILING_BYTES"},
        {PG_CODEC_ELIMIT, "LIMIT_EXCEEDED"},
        {PG_CODEC_EFIELD, "INVALID_FIELD"},
        {PG_CODEC_ENOMEM, "OUT_OF_MEMORY"},
        {PG_CODEC_EINTERNAL, "INTERNAL_ERROR"},
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        ck_assert_str_eq(pg_codec_err_name(codes[i].code), codes[i].name);
    ck_assert_str_eq(pg_codec_err_name(-99), "UNKNOWN_ERROR");

    for (int t = 0; t < PG_REC_COUNT; t++) {
        pg_record_type_t got = PG_REC_COUNT;
        const char *name = pg_record_type_name((pg_record_type_t)t);
        ck_assert_ptr_nonnull(name);
        ck_assert_str_eq(tv_schemas[t].full_name + strlen("io.pinguard.v1."), name);
        ck_assert_int_eq(pg_record_type_from_name(name, &got), 0);
        ck_assert_int_eq(got, t);
        got = PG_REC_COUNT;
        ck_assert_int_eq(pg_record_type_from_name(tv_schemas[t].full_name, &got), 0);
        ck_assert_int_eq(got, t);
    }
    pg_record_type_t dummy;
    ck_assert_ptr_null(pg_record_type_name(PG_REC_COUNT));
    ck_assert_int_ne(pg_record_type_from_name("Veto", &dummy), 0);
    ck_assert_int_ne(pg_record_type_from_name("io.pinguard.v2.DrsAdvice", &dummy), 0);
    ck_assert_int_ne(pg_record_type_from_name(NULL, &dummy), 0);
    ck_assert_uint_eq(pg_codec_fingerprint(codec, 0, PG_REC_COUNT), 0);
    ck_assert_ptr_null(pg_codec_canonical_form(codec, 0, PG_REC_COUNT));
}
END_TEST

/* ---- fastavro vectors and round trips ---------------------------------- */

START_TEST(decode_fastavro_bytes)
{
    const tv_sample_t *s = &tv_samples[_i];
    pg_record_t r;
    int rc =
        pg_codec_decode(codec, s->bytes, s->len, NULL, arena, &r, err, sizeof(err));
    ck_assert_msg(rc == 0, "%s: %s (%s)", s->name, pg_codec_err_name(rc), err);
    cmp_record(&r, s->rec);
}
END_TEST

START_TEST(encode_matches_fastavro)
{
    const tv_sample_t *s = &tv_samples[_i];
    pg_buf_t b = {0};
    int rc = pg_codec_encode(codec, s->rec, &b, err, sizeof(err));
    ck_assert_msg(rc == 0, "%s: %s (%s)", s->name, pg_codec_err_name(rc), err);
    ck_assert_uint_eq(b.len, s->len);
    ck_assert_msg(memcmp(b.data, s->bytes, s->len) == 0, "%s: bytes differ", s->name);
    pg_buf_free(&b);
}
END_TEST

/* Encode, decode, compare every field: all six records, null and non-null
 * optionals, arrays of 0, 1 and many, extreme longs, non-ASCII strings. */
START_TEST(roundtrip_every_record)
{
    pg_buf_t b = {0};
    for (size_t i = 0; i < N_SAMPLES; i++) {
        pg_record_t r;
        b.len = 0;
        ck_assert_int_eq(
            pg_codec_encode(codec, tv_samples[i].rec, &b, err, sizeof(err)), 0);
        int rc =
            pg_codec_decode(codec, b.data, b.len, NULL, arena, &r, err, sizeof(err));
        ck_assert_msg(rc == 0, "%s: %s (%s)", tv_samples[i].name, pg_codec_err_name(rc),
                      err);
        cmp_record(&r, tv_samples[i].rec);
    }
    pg_buf_free(&b);
}
END_TEST

START_TEST(roundtrip_edge_values)
{
    static const pg_device_ref_t devs[] = {{"d1", ""}, {"d2", "\xe2\x82\xac"}};
    static const pg_migration_advice_t adv[] = {
        {"vm-a", "h1", "h", true, 0.0, {true, 0}},
        {"vm-b", "h1", "h2", true, -0.0, {true, INT64_MIN}},
        {"vm-c", "h1", "h2", true, 1e308, {true, INT64_MAX}},
        {"vm-d", "h1", "h2", false, 0, {false, 0}},
    };
    static const pg_veto_t vetoes[] = {{{"vm-e", "h1", "h2", false, 0, {true, 1}},
                                        PG_VETO_UNKNOWN_DEVICE_KIND,
                                        2,
                                        devs}};
    pg_record_t recs[] = {
        {.type = PG_REC_FILTERED_ADVICE,
         .u.filtered_advice = {"a", "c", INT64_MIN, INT64_MAX, 4, adv, 1, vetoes}},
        {.type = PG_REC_RELEASE_DECISION,
         .u.release_decision = {"r",
                                "v",
                                PG_OUTCOME_SUCCEEDED,
                                PG_ACTION_RELEASE,
                                PG_RELEASE_CONFIRMED_ON_DESTINATION,
                                "h",
                                "h2",
                                2,
                                devs,
                                0,
                                {true, 3}}},
        {.type = PG_REC_MIGRATE_DECISION,
         .u.migrate_decision = {"r",
                                "v",
                                "s",
                                NULL,
                                PG_ORIGIN_OTHER,
                                PG_VERDICT_VETOED,
                                true,
                                PG_VETO_HOST_BOUND_DEVICE,
                                1,
                                devs,
                                -1,
                                {false, 0}}},
    };
    pg_buf_t b = {0};
    for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
        pg_record_t r;
        b.len = 0;
        ck_assert_int_eq(pg_codec_encode(codec, &recs[i], &b, err, sizeof(err)), 0);
        ck_assert_int_eq(
            pg_codec_decode(codec, b.data, b.len, NULL, arena, &r, err, sizeof(err)),
            0);
        cmp_record(&r, &recs[i]);
    }
    pg_buf_free(&b);
}
END_TEST

START_TEST(encode_appends)
{
    pg_buf_t b = {0};
    const tv_sample_t *s1 = &tv_samples[0], *s2 = &tv_samples[N_SAMPLES - 1];
    ck_assert_int_eq(pg_codec_encode(codec, s1->rec, &b, err, sizeof(err)), 0);
    ck_assert_int_eq(pg_codec_encode(codec, s2->rec, &b, err, sizeof(err)), 0);
    ck_assert_uint_eq(b.len, s1->len + s2->len);
    ck_assert(memcmp(b.data, s1->bytes, s1->len) == 0);
    ck_assert(memcmp(b.data + s1->len, s2->bytes, s2->len) == 0);
    pg_buf_free(&b);
}
END_TEST

START_TEST(encode_rejects_bad_structs)
{
    static const pg_device_ref_t null_kind[] = {{"d1", NULL}};
    pg_record_t recs[] = {
        {.type = PG_REC_MIGRATE_REQUEST,
         .u.migrate_request = {NULL, "v", "s", NULL, PG_ORIGIN_DRS, 0, {false, 0}}},
        {.type = PG_REC_MIGRATE_REQUEST,
         .u.migrate_request = {"r", "v", "s", NULL, (pg_origin_t)5, 0, {false, 0}}},
        {.type = PG_REC_MIGRATE_DECISION,
         .u.migrate_decision = {"r",
                                "v",
                                "s",
                                NULL,
                                PG_ORIGIN_DRS,
                                PG_VERDICT_VETOED,
                                true,
                                (pg_veto_reason_t)PG_VETO_REASONS,
                                0,
                                NULL,
                                0,
                                {false, 0}}},
        {.type = PG_REC_RELEASE_DECISION,
         .u.release_decision = {"r",
                                "v",
                                PG_OUTCOME_FAILED,
                                PG_ACTION_KEEP,
                                PG_RELEASE_NO_DESTINATION,
                                "h",
                                NULL,
                                2,
                                NULL,
                                0,
                                {false, 0}}},
        {.type = PG_REC_RELEASE_DECISION,
         .u.release_decision = {"r",
                                "v",
                                PG_OUTCOME_FAILED,
                                PG_ACTION_KEEP,
                                PG_RELEASE_NO_DESTINATION,
                                "h",
                                NULL,
                                1,
                                null_kind,
                                0,
                                {false, 0}}},
        {.type = PG_REC_COUNT},
    };
    pg_buf_t b = {0};
    for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
        err[0] = '\0';
        int rc = pg_codec_encode(codec, &recs[i], &b, err, sizeof(err));
        ck_assert_msg(rc == PG_CODEC_EFIELD, "case %zu: %s", i, pg_codec_err_name(rc));
        ck_assert(err[0] != '\0');
        ck_assert_uint_eq(b.len, 0);
    }
    /* Strings from the cache are not trusted to be UTF-8 either. */
    pg_record_t bad = {.type = PG_REC_MIGRATE_REQUEST,
                       .u.migrate_request = {
                           "r", "v\xc0\xaf", "s", NULL, PG_ORIGIN_DRS, 0, {false, 0}}};
    ck_assert_int_eq(pg_codec_encode(codec, &bad, &b, err, sizeof(err)),
                     PG_CODEC_EUTF8);
    ck_assert_uint_eq(b.len, 0);
    /* A failure leaves nothing behind: the next encode is clean. */
    ck_assert_int_eq(pg_codec_encode(codec, tv_samples[0].rec, &b, err, sizeof(err)),
                     0);
    ck_assert_uint_eq(b.len, tv_samples[0].len);
    ck_assert(memcmp(b.data, tv_samples[0].bytes, b.len) == 0);
    pg_buf_free(&b);
}
END_TEST

/* Values are reused: interleaving types and sizes must not leak state. */
START_TEST(decode_reuses_values)
{
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < N_SAMPLES; i++) {
            size_t k = (i * 7 + (size_t)round) % N_SAMPLES;
            pg_record_t r;
            ck_assert_int_eq(pg_codec_decode(codec, tv_samples[k].bytes,
                                             tv_samples[k].len, NULL, arena, &r, err,
                                             sizeof(err)),
                             0);
            cmp_record(&r, tv_samples[k].rec);
        }
        pg_arena_reset(arena);
    }
}
END_TEST

/* Negative block counts carry a byte size (Avro spec); fastavro never writes
 * them, other writers may. */
START_TEST(decode_negative_block_count)
{
    msg_t m, item = {.n = 0};
    pg_record_t r;
    advice_item(&item, "vm-1");
    advice_prefix(&m);
    m_long(&m, -1);
    m_long(&m, (int64_t)item.n);
    m_raw(&m, item.b, item.n);
    m_long(&m, 2);
    advice_item(&m, "vm-2");
    advice_item(&m, "vm-3");
    m_long(&m, 0);
    ck_assert_int_eq(decode(&m, NULL, &r), 0);
    ck_assert_uint_eq(r.u.drs_advice.n_migrations, 3);
    ck_assert_str_eq(r.u.drs_advice.migrations[0].vm_uuid, "vm-1");
    ck_assert_str_eq(r.u.drs_advice.migrations[2].vm_uuid, "vm-3");
    ck_assert(r.u.drs_advice.migrations[1].has_score);

    /* A block whose size disagrees with its items. */
    advice_prefix(&m);
    m_long(&m, -1);
    m_long(&m, (int64_t)item.n - 1);
    m_raw(&m, item.b, item.n);
    m_long(&m, 0);
    expect(&m, NULL, PG_CODEC_ELENGTH);
}
END_TEST

/* Many one-item blocks: the walker grows the array geometrically, so what
 * the arena holds stays a small multiple of the items. */
START_TEST(decode_many_blocks)
{
    static msg_t m;
    pg_record_t r;
    advice_prefix(&m);
    for (int i = 0; i < 200; i++) {
        char vm[16];
        snprintf(vm, sizeof(vm), "vm-%d", i);
        m_long(&m, 1);
        advice_item(&m, vm);
    }
    m_long(&m, 0);
    size_t before = pg_arena_used(arena);
    ck_assert_int_eq(decode(&m, NULL, &r), 0);
    ck_assert_uint_eq(r.u.drs_advice.n_migrations, 200);
    for (int i = 0; i < 200; i++) {
        char vm[16];
        snprintf(vm, sizeof(vm), "vm-%d", i);
        ck_assert_str_eq(r.u.drs_advice.migrations[i].vm_uuid, vm);
    }
    size_t items = 200 * sizeof(pg_migration_advice_t);
    ck_assert_uint_le(pg_arena_used(arena) - before, 3 * items + 200 * 3 * 32);
}
END_TEST

/* ---- Versions ------------------------------------------------------------ */

/* Bytes fastavro wrote with a v1 writer are read into the current structs,
 * the fields v1 lacks at their defaults, and the writer's version is told. */
START_TEST(decode_v1_bytes)
{
    const tv_v1_sample_t *s = &tv_v1_samples[_i];
    pg_record_t r;
    pg_buf_t b = {0};
    ck_assert_int_eq(
        pg_codec_decode(codec, s->bytes, s->len, NULL, arena, &r, err, sizeof(err)), 0);
    /* A record v2 left unchanged (MigrationResult) has one fingerprint for
     * both: it is reported as the newest version that has it. */
    pg_record_type_t t = s->rec->type;
    ck_assert_int_eq(r.version,
                     tv_schemas_v1[t].fingerprint == tv_schemas[t].fingerprint ? 2 : 1);
    cmp_record(&r, s->rec);
    /* Written again it is a v2 record, as fastavro's v2 writer has it. */
    ck_assert_int_eq(pg_codec_encode(codec, &r, &b, err, sizeof(err)), 0);
    ck_assert_uint_eq(b.len, s->v2_len);
    ck_assert(memcmp(b.data, s->v2_bytes, b.len) == 0);
    pg_buf_free(&b);
    /* And in JSON, in either version's shape. */
    for (int v = 1; v <= 2; v++) {
        char *json = NULL;
        ck_assert_int_eq(pg_codec_to_json(codec, v, s->bytes, s->len, NULL, &json, NULL,
                                          err, sizeof(err)),
                         0);
        json_t *mine = json_loads(json, 0, NULL),
               *theirs = json_loads(v == 1 ? s->json_v1 : s->json, 0, NULL);
        ck_assert_msg(json_equal(mine, theirs), "v%d: %s\n vs %s", v, json,
                      v == 1 ? s->json_v1 : s->json);
        json_decref(mine);
        json_decref(theirs);
        free(json);
    }
}
END_TEST

/* Written in version 1, the same record is byte for byte what fastavro's v1
 * writer produced. */
START_TEST(encode_v1_matches_fastavro)
{
    const tv_v1_sample_t *s = &tv_v1_samples[_i];
    pg_buf_t b = {0};
    ck_assert_int_eq(pg_codec_encode_version(codec, 1, s->rec, &b, err, sizeof(err)),
                     0);
    ck_assert_uint_eq(b.len, s->len);
    ck_assert(memcmp(b.data, s->bytes, b.len) == 0);
    pg_buf_free(&b);
}
END_TEST

START_TEST(versions_and_fingerprints)
{
    for (int t = 0; t < PG_REC_COUNT; t++) {
        ck_assert_uint_eq(pg_codec_fingerprint(codec, PG_CODEC_VERSION, t),
                          tv_schemas[t].fingerprint);
        ck_assert_uint_eq(pg_codec_fingerprint(codec, 0, t), tv_schemas[t].fingerprint);
        if (t < TV_V1_RECORDS) {
            ck_assert_uint_eq(pg_codec_fingerprint(codec, 1, t),
                              tv_schemas_v1[t].fingerprint);
            ck_assert_str_eq(pg_codec_canonical_form(codec, 1, t),
                             tv_schemas_v1[t].pcf);
        } else { /* VmBindings and AuditEvent are new in v2 */
            ck_assert_uint_eq(pg_codec_fingerprint(codec, 1, t), 0);
            ck_assert_ptr_null(pg_codec_canonical_form(codec, 1, t));
        }
    }
    ck_assert_uint_eq(pg_codec_fingerprint(codec, 3, 0), 0);
    ck_assert_uint_eq(pg_codec_fingerprint(codec, -1, 0), 0);
}
END_TEST

/* What version 1 cannot hold is refused, never silently dropped: a reason
 * it lacks, a record it lacks. Fields it lacks are left out. */
START_TEST(encode_v1_refuses_v2_values)
{
    pg_buf_t b = {0};
    pg_record_t stale = {.type = PG_REC_MIGRATE_DECISION,
                         .u.migrate_decision = {.request_id = "r",
                                                .vm_uuid = "v",
                                                .src_host_uuid = "s",
                                                .verdict = PG_VERDICT_VETOED,
                                                .has_reason = true,
                                                .reason = PG_VETO_STALE_BINDINGS,
                                                .bindings_generation = {true, 9}}};
    ck_assert_int_eq(pg_codec_encode_version(codec, 1, &stale, &b, err, sizeof(err)),
                     PG_CODEC_EFIELD);
    ck_assert_ptr_nonnull(strstr(err, "reason"));
    ck_assert_uint_eq(b.len, 0);
    pg_record_t vb = {.type = PG_REC_VM_BINDINGS,
                      .u.vm_bindings = {.vm_uuid = "v", .generation = 1}};
    ck_assert_int_eq(pg_codec_encode_version(codec, 1, &vb, &b, err, sizeof(err)),
                     PG_CODEC_EFIELD);
    ck_assert_uint_eq(b.len, 0);

    /* A v2 decision with a generation, written as v1 and read back: the
     * generation is gone (v1 has no field for it), the rest is there. */
    stale.u.migrate_decision.reason = PG_VETO_HOST_BOUND_DEVICE;
    ck_assert_int_eq(pg_codec_encode_version(codec, 1, &stale, &b, err, sizeof(err)),
                     0);
    pg_record_t r;
    ck_assert_int_eq(
        pg_codec_decode(codec, b.data, b.len, NULL, arena, &r, err, sizeof(err)), 0);
    ck_assert_int_eq(r.version, 1);
    ck_assert(!r.u.migrate_decision.bindings_generation.present);
    ck_assert_int_eq(r.u.migrate_decision.reason, PG_VETO_HOST_BOUND_DEVICE);
    pg_buf_free(&b);
}
END_TEST

/* The fields v2 added are checked like every other: a bad branch, a body
 * that ends inside them; and a failure gives the arena back exactly. */
START_TEST(hostile_v2_fields)
{
    static msg_t m;
    pg_record_t r;
    m_header2(&m, PG_REC_MIGRATE_REQUEST);
    m_str(&m, "req-1");
    m_str(&m, "vm-1");
    m_str(&m, "host-a");
    m_long(&m, 0);
    m_long(&m, 1);
    m_long(&m, 1234);
    size_t body = m.n;
    m_long(&m, 1);
    m_long(&m, 42);
    ck_assert_int_eq(decode(&m, NULL, &r), 0);
    ck_assert_int_eq(r.version, 2);
    ck_assert(r.u.migrate_request.min_generation.present);
    ck_assert_int_eq(r.u.migrate_request.min_generation.value, 42);

    m.n = body;
    m_long(&m, 2); /* no third branch */
    size_t before = pg_arena_used(arena);
    expect(&m, NULL, PG_CODEC_EUNION);
    ck_assert_ptr_nonnull(strstr(err, "minGeneration"));
    m.n = body;
    m_long(&m, 1); /* the value is missing */
    expect(&m, NULL, PG_CODEC_ETRUNCATED);
    ck_assert_uint_eq(pg_arena_used(arena), before);
    m.n = body; /* a v2 body without its v2 field is truncated, not v1 */
    expect(&m, NULL, PG_CODEC_ETRUNCATED);

    /* A v1 body under the v2 fingerprint is not mistaken for one. */
    request_msg(&m, "req-2", 0, 1);
    ck_assert_int_eq(decode(&m, NULL, &r), 0);
    ck_assert_int_eq(r.version, 1);
    ck_assert(!r.u.migrate_request.min_generation.present);
}
END_TEST

/* ---- Hostile input ----------------------------------------------------- */

START_TEST(hostile_empty_and_magic)
{
    static const uint8_t magic[] = {0xc3, 0x01};
    static const uint8_t short_hdr[] = {0xc3, 0x01, 1, 2, 3, 4, 5, 6, 7};
    static const uint8_t wrong[] = {0xc3, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, 0};
    static const uint8_t one[] = {0xc3};
    expect_bytes(magic, 0, NULL, PG_CODEC_EEMPTY);
    expect_bytes(one, 1, NULL, PG_CODEC_EMAGIC);
    expect_bytes(magic, sizeof(magic), NULL, PG_CODEC_EMAGIC);
    expect_bytes(short_hdr, sizeof(short_hdr), NULL, PG_CODEC_EMAGIC);
    expect_bytes(wrong, sizeof(wrong), NULL, PG_CODEC_EMAGIC);
}
END_TEST

START_TEST(hostile_random_bytes)
{
    uint64_t seed = 0x9e3779b97f4a7c15u;
    uint8_t b[256];
    for (int i = 0; i < 2000; i++) {
        size_t n = 1 + rnd(&seed) % sizeof(b);
        for (size_t k = 0; k < n; k++)
            b[k] = (uint8_t)rnd(&seed);
        if (b[0] == 0xc3)
            b[0] = 0;
        expect_bytes(b, n, NULL, PG_CODEC_EMAGIC);
        /* The same bytes behind a good marker: a fingerprint nobody has. */
        if (n >= 10) {
            b[0] = 0xc3;
            b[1] = 0x01;
            expect_bytes(b, n, NULL, PG_CODEC_EFINGERPRINT);
        }
    }
}
END_TEST

START_TEST(hostile_unknown_fingerprint)
{
    msg_t m;
    request_msg(&m, "req-1", 0, 0);
    m.b[2] ^= 1;
    expect(&m, NULL, PG_CODEC_EFINGERPRINT);
    ck_assert_ptr_nonnull(strstr(err, "fingerprint"));
}
END_TEST

/* Every proper prefix of every sample: a cut inside a varint or between
 * values is TRUNCATED; a cut inside a string's bytes or an array's items
 * leaves a declared length past the end, BAD_LENGTH. */
START_TEST(hostile_truncated_everywhere)
{
    const tv_sample_t *s = &tv_samples[_i];
    int seen_trunc = 0;
    for (size_t cut = 0; cut < s->len; cut++) {
        pg_record_t r;
        size_t before = pg_arena_used(arena);
        int rc =
            pg_codec_decode(codec, s->bytes, cut, NULL, arena, &r, err, sizeof(err));
        int want = cut == 0 ? PG_CODEC_EEMPTY : cut < 10 ? PG_CODEC_EMAGIC : 0;
        if (want != 0)
            ck_assert_int_eq(rc, want);
        else
            ck_assert_msg(rc == PG_CODEC_ETRUNCATED || rc == PG_CODEC_ELENGTH,
                          "%s cut at %zu: %s (%s)", s->name, cut, pg_codec_err_name(rc),
                          err);
        seen_trunc += rc == PG_CODEC_ETRUNCATED;
        ck_assert_uint_eq(pg_arena_used(arena), before);
    }
    ck_assert_int_gt(seen_trunc, 0);
    expect_bytes(s->bytes, 10, NULL, PG_CODEC_ETRUNCATED); /* header, no body */
}
END_TEST

START_TEST(hostile_string_lengths)
{
    msg_t m;
    /* requestId claims 2^31 bytes, then a few. */
    m_header(&m, PG_REC_MIGRATE_REQUEST);
    m_long(&m, INT64_C(1) << 31);
    m_raw(&m, "abcdef", 6);
    expect(&m, NULL, PG_CODEC_ELENGTH);
    ck_assert_ptr_nonnull(strstr(err, "2147483648"));
    ck_assert_ptr_nonnull(strstr(err, "requestId"));

    m_header(&m, PG_REC_MIGRATE_REQUEST);
    m_long(&m, INT64_MAX);
    expect(&m, NULL, PG_CODEC_ELENGTH);

    m_header(&m, PG_REC_MIGRATE_REQUEST);
    m_long(&m, -5);
    m_raw(&m, "abcdef", 6);
    expect(&m, NULL, PG_CODEC_ELENGTH);

    /* One byte more than is left. */
    m_header(&m, PG_REC_MIGRATE_REQUEST);
    m_long(&m, 7);
    m_raw(&m, "abcdef", 6);
    expect(&m, NULL, PG_CODEC_ELENGTH);
}
END_TEST

START_TEST(hostile_array_counts)
{
    msg_t m;
    advice_prefix(&m);
    m_long(&m, INT64_C(1) << 31);
    advice_item(&m, "vm-1");
    m_long(&m, 0);
    expect(&m, NULL, PG_CODEC_ELENGTH);

    /* Negative count, then a byte size far past the end. */
    advice_prefix(&m);
    m_long(&m, -3);
    m_long(&m, INT64_C(1) << 40);
    advice_item(&m, "vm-1");
    m_long(&m, 0);
    expect(&m, NULL, PG_CODEC_ELENGTH);

    /* Negative count, negative size. */
    advice_prefix(&m);
    m_long(&m, -1);
    m_long(&m, -20);
    advice_item(&m, "vm-1");
    m_long(&m, 0);
    expect(&m, NULL, PG_CODEC_ELENGTH);

    /* The most negative count, whose negation overflows. */
    advice_prefix(&m);
    m_long(&m, INT64_MIN);
    m_long(&m, 1);
    m_long(&m, 0);
    expect(&m, NULL, PG_CODEC_ELENGTH);

    /* One item fewer than counted: the body ends where the second would
     * start. */
    advice_prefix(&m);
    m_long(&m, 2);
    advice_item(&m, "vm-1");
    expect(&m, NULL, PG_CODEC_ETRUNCATED);
}
END_TEST

START_TEST(hostile_too_many_items)
{
    const tv_sample_t *s = &tv_samples[0]; /* DrsAdvice with 3 migrations */
    pg_codec_limits_t lim = PG_CODEC_LIMITS_DEFAULT;
    ck_assert_int_eq(s->rec->u.drs_advice.n_migrations, 3);
    lim.max_items = 2;
    expect_bytes(s->bytes, s->len, &lim, PG_CODEC_ELIMIT);
    lim.max_items = 3;
    expect_bytes(s->bytes, s->len, &lim, 0);

    /* The limit counts items across blocks. */
    msg_t m;
    advice_prefix(&m);
    for (int blk = 0; blk < 2; blk++) {
        m_long(&m, 2);
        advice_item(&m, "vm-1");
        advice_item(&m, "vm-2");
    }
    m_long(&m, 0);
    expect(&m, &lim, PG_CODEC_ELIMIT);
    lim.max_items = 4;
    expect(&m, &lim, 0);
}
END_TEST

/* The byte-at-a-time reading of RFC 3629 (no overlongs, surrogates or past
 * U+10FFFF) and no NUL: where pg_utf8_check must stop. */
static size_t utf8_reference(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        size_t need = b >= 0x01 && b < 0x80    ? 0
                      : b >= 0xc2 && b <= 0xdf ? 1
                      : b >= 0xe0 && b <= 0xef ? 2
                      : b >= 0xf0 && b <= 0xf4 ? 3
                                               : 9;
        if (need == 9 || n - i <= need)
            return need == 0 ? n : i;
        uint32_t cp = need == 0 ? b : (uint32_t)(b & (0x3f >> need));
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += need + 1;
    }
    return n;
}

/* The eight-bytes-at-a-time ASCII run stops where the reference does: a
 * NUL, a high byte, every valid and invalid sequence, at every offset of
 * ASCII runs around the word size, and random bytes. */
START_TEST(utf8_check_matches_the_reference)
{
    static const char *const tails[] = {"",
                                        "\x00",
                                        "\x80",
                                        "\xc3\xa9",
                                        "\xc0\xaf",
                                        "\xe0\x9f\x80",
                                        "\xed\xa0\x80",
                                        "\xe2\x82\xac",
                                        "\xf0\x9f\x98\x80",
                                        "\xf4\x90\x80\x80",
                                        "\xf5",
                                        "\xff",
                                        "\xc3",
                                        "\xe2\x82",
                                        "\x7f"};
    uint8_t buf[64];
    for (size_t run = 0; run <= 24; run++)
        for (size_t t = 0; t < sizeof(tails) / sizeof(tails[0]); t++) {
            size_t tl = t == 1 ? 1 : strlen(tails[t]);
            memset(buf, 'a', run);
            memcpy(buf + run, tails[t], tl);
            memset(buf + run + tl, 'b', 5);
            for (size_t n = 0; n <= run + tl + 5; n++)
                ck_assert_msg(pg_utf8_check(buf, n) == utf8_reference(buf, n),
                              "run %zu tail %zu n %zu", run, t, n);
        }
    unsigned seed = 7;
    for (int round = 0; round < 20000; round++) {
        size_t n = (size_t)(rand_r(&seed) % 40);
        for (size_t i = 0; i < n; i++) { /* mostly ASCII, some of anything */
            unsigned r = (unsigned)rand_r(&seed);
            buf[i] = r % 4 ? (uint8_t)(0x20 + r % 0x5f) : (uint8_t)(r >> 8);
        }
        ck_assert_uint_eq(pg_utf8_check(buf, n), utf8_reference(buf, n));
    }
}
END_TEST

START_TEST(hostile_utf8)
{
    static const char *const bad[] = {
        "\xc0\xaf",         /* overlong '/' */
        "\xc1\xbf",         /* overlong */
        "\xe0\x80\xaf",     /* overlong, three bytes */
        "\xf0\x80\x80\xaf", /* overlong, four bytes */
        "\xed\xa0\x80",     /* surrogate U+D800 */
        "\xed\xbf\xbf",     /* surrogate U+DFFF */
        "\xf4\x90\x80\x80", /* U+110000 */
        "\xf5\x80\x80\x80", /* no such lead byte */
        "\xff",
        "\x80",         /* stray continuation */
        "ab\xe2\x82",   /* sequence cut short by the string's end */
        "\xe2\x28\xa1", /* bad continuation */
        "a\x00z",       /* NUL: a C string would end here */
    };
    static const size_t bad_len[] = {2, 2, 3, 4, 3, 3, 4, 4, 1, 1, 4, 3, 3};
    msg_t m;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        m_header(&m, PG_REC_MIGRATE_REQUEST);
        m_str(&m, "req-1");
        m_strn(&m, bad[i], bad_len[i]);
        m_str(&m, "host-a");
        m_long(&m, 0);
        m_long(&m, 0);
        m_long(&m, 0);
        expect(&m, NULL, PG_CODEC_EUTF8);
    }
    static const char *const good[] = {"\xc2\x80",         "\xe2\x82\xac",
                                       "\xef\xbf\xbf",     "\xf0\x9f\x98\x80",
                                       "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        m_header(&m, PG_REC_MIGRATE_REQUEST);
        m_str(&m, "req-1");
        m_str(&m, good[i]);
        m_str(&m, "host-a");
        m_long(&m, 0);
        m_long(&m, 0);
        m_long(&m, 0);
        expect(&m, NULL, 0);
    }
}
END_TEST

START_TEST(hostile_long_string)
{
    pg_codec_limits_t lim = {.max_string = 16, .max_items = 10};
    msg_t m;
    request_msg(&m, "0123456789abcdefX", 0, 0);
    expect(&m, &lim, PG_CODEC_ELIMIT);
    request_msg(&m, "0123456789abcdef", 0, 0);
    expect(&m, &lim, 0);
    /* The limit holds inside unions and arrays too. */
    m_header(&m, PG_REC_MIGRATION_RESULT);
    m_str(&m, "r");
    m_str(&m, "v");
    m_str(&m, "s");
    m_long(&m, 0);
    m_long(&m, 1);
    m_long(&m, 0);
    m_long(&m, 1);
    m_str(&m, "an error message that is far too long");
    m_long(&m, 5);
    expect(&m, &lim, PG_CODEC_ELIMIT);
    expect(&m, NULL, 0);
}
END_TEST

START_TEST(hostile_union_and_enum)
{
    msg_t m;
    request_msg(&m, "req-1", 5, 0);
    expect(&m, NULL, PG_CODEC_EUNION);
    request_msg(&m, "req-1", -1, 0);
    expect(&m, NULL, PG_CODEC_EUNION);
    request_msg(&m, "req-1", 2, 0);
    expect(&m, NULL, PG_CODEC_EUNION);
    request_msg(&m, "req-1", 0, 99);
    expect(&m, NULL, PG_CODEC_EENUM);
    request_msg(&m, "req-1", 0, 5);
    expect(&m, NULL, PG_CODEC_EENUM);
    request_msg(&m, "req-1", 0, -1);
    expect(&m, NULL, PG_CODEC_EENUM);
    request_msg(&m, "req-1", 1, 4);
    expect(&m, NULL, 0);
}
END_TEST

START_TEST(hostile_trailing)
{
    msg_t m;
    request_msg(&m, "req-1", 0, 0);
    expect(&m, NULL, 0);
    m_byte(&m, 0);
    expect(&m, NULL, PG_CODEC_ETRAILING);
    const tv_sample_t *s = &tv_samples[3];
    memcpy(m.b, s->bytes, s->len);
    m.n = s->len;
    m_raw(&m, "junk", 4);
    expect(&m, NULL, PG_CODEC_ETRAILING);
}
END_TEST

START_TEST(hostile_varints)
{
    msg_t m;
    /* Eleven bytes. */
    m_header(&m, PG_REC_MIGRATE_REQUEST);
    for (int i = 0; i < 10; i++)
        m_byte(&m, 0x80);
    m_byte(&m, 0x01);
    m_raw(&m, "abc", 3);
    expect(&m, NULL, PG_CODEC_EVARINT);
    /* Ten bytes, but the last one carries bits past 64. */
    m_header(&m, PG_REC_MIGRATE_REQUEST);
    for (int i = 0; i < 9; i++)
        m_byte(&m, 0xff);
    m_byte(&m, 0x02);
    m_raw(&m, "abc", 3);
    expect(&m, NULL, PG_CODEC_EVARINT);
    /* The longest valid varint: requestedAtMs = INT64_MIN. */
    request_msg(&m, "req-1", 0, 0);
    m.n -= 2; /* drop the 1234 */
    m_long(&m, INT64_MIN);
    expect(&m, NULL, 0);
    /* A varint cut off by the end of the message. */
    request_msg(&m, "req-1", 0, 0);
    m.n -= 1;
    expect(&m, NULL, PG_CODEC_ETRUNCATED);
    /* A double cut off. */
    advice_prefix(&m);
    m_long(&m, 1);
    m_str(&m, "vm-1");
    m_str(&m, "h1");
    m_str(&m, "h2");
    m_long(&m, 1);
    m_raw(&m, "\0\0\0\0", 4);
    expect(&m, NULL, PG_CODEC_ETRUNCATED);
}
END_TEST

START_TEST(hostile_empty_ids)
{
    msg_t m;
    request_msg(&m, "", 0, 0);
    expect(&m, NULL, PG_CODEC_EFIELD);
    ck_assert_ptr_nonnull(strstr(err, "requestId"));
    /* Nested: deviceUuid in a decision's devices. */
    m_header(&m, PG_REC_MIGRATE_DECISION);
    m_str(&m, "r");
    m_str(&m, "v");
    m_str(&m, "s");
    m_long(&m, 0);
    m_long(&m, 0);
    m_long(&m, 1);
    m_long(&m, 1);
    m_long(&m, 0);
    m_long(&m, 1);
    m_str(&m, "");
    m_str(&m, "pci");
    m_long(&m, 0);
    m_long(&m, 7);
    expect(&m, NULL, PG_CODEC_EFIELD);
    ck_assert_ptr_nonnull(strstr(err, "deviceUuid"));
    /* Non-id strings may be empty. */
    m.n -= 7;
    m_str(&m, "d");
    m_str(&m, "");
    m_long(&m, 0);
    m_long(&m, 7);
    expect(&m, NULL, 0);
}
END_TEST

/* Every id of every input: empty is INVALID_FIELD naming the field, wherever
 * it sits (top level, in a migration, behind a union); a null where the schema
 * allows one is no id to check. */
static void m_opt_str(msg_t *m, const char *s)
{
    m_long(m, s != NULL ? 1 : 0);
    if (s != NULL)
        m_str(m, s);
}

/* ids: adviceId, clusterUuid, then vmUuid, srcHostUuid, dstHostUuid of the
 * second of two migrations. */
static void advice_ids_msg(msg_t *m, const char *const ids[5])
{
    m_header(m, PG_REC_DRS_ADVICE);
    m_str(m, ids[0]);
    m_str(m, ids[1]);
    m_long(m, 99);
    m_long(m, 2);
    advice_item(m, "vm-0");
    m_str(m, ids[2]);
    m_str(m, ids[3]);
    m_str(m, ids[4]);
    m_long(m, 0);
    m_long(m, 0);
}

/* ids: requestId, vmUuid, srcHostUuid, dstHostUuid (NULL: null). */
static void request_ids_msg(msg_t *m, const char *const ids[5])
{
    m_header(m, PG_REC_MIGRATE_REQUEST);
    m_str(m, ids[0]);
    m_str(m, ids[1]);
    m_str(m, ids[2]);
    m_opt_str(m, ids[3]);
    m_long(m, 2);
    m_long(m, 1234);
}

/* ids: requestId, vmUuid, srcHostUuid, dstHostUuid, observedHostUuid (the
 * last two NULL: null). The error string is empty: it is no id. */
static void result_ids_msg(msg_t *m, const char *const ids[5])
{
    m_header(m, PG_REC_MIGRATION_RESULT);
    m_str(m, ids[0]);
    m_str(m, ids[1]);
    m_str(m, ids[2]);
    m_opt_str(m, ids[3]);
    m_long(m, 0);
    m_opt_str(m, ids[4]);
    m_opt_str(m, "");
    m_long(m, 1234);
}

static const struct {
    const char *record;
    void (*build)(msg_t *, const char *const[5]);
    size_t n_ids;
    const char *names[5];
    bool nullable[5];
} id_cases[] = {
    {"DrsAdvice",
     advice_ids_msg,
     5,
     {"adviceId", "clusterUuid", "vmUuid", "srcHostUuid", "dstHostUuid"},
     {false, false, false, false, false}},
    {"MigrateVmRequest",
     request_ids_msg,
     4,
     {"requestId", "vmUuid", "srcHostUuid", "dstHostUuid"},
     {false, false, false, true}},
    {"MigrationResult",
     result_ids_msg,
     5,
     {"requestId", "vmUuid", "srcHostUuid", "dstHostUuid", "observedHostUuid"},
     {false, false, false, true, true}},
};

START_TEST(hostile_empty_input_ids)
{
    const size_t c = (size_t)_i;
    msg_t m;
    pg_record_t r;
    const char *ids[5] = {"id-0", "id-1", "id-2", "id-3", "id-4"};
    id_cases[c].build(&m, ids);
    expect(&m, NULL, 0);
    for (size_t f = 0; f < id_cases[c].n_ids; f++) {
        const char *name = id_cases[c].names[f];
        char want[64];
        const char *blank[5] = {"id-0", "id-1", "id-2", "id-3", "id-4"};
        blank[f] = "";
        id_cases[c].build(&m, blank);
        expect(&m, NULL, PG_CODEC_EFIELD);
        /* expect() ends with to_json; decode's detail must say the same. */
        ck_assert_int_eq(decode(&m, NULL, &r), PG_CODEC_EFIELD);
        snprintf(want, sizeof(want), "%s is empty", name);
        ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s.%s: detail '%s'",
                      id_cases[c].record, name, err);
        if (!id_cases[c].nullable[f])
            continue;
        blank[f] = NULL;
        id_cases[c].build(&m, blank);
        expect(&m, NULL, 0);
    }
    /* Both nullable host ids null at once. */
    if (c == 2) {
        const char *both[5] = {"r", "v", "s", NULL, NULL};
        result_ids_msg(&m, both);
        ck_assert_int_eq(decode(&m, NULL, &r), 0);
        ck_assert_ptr_null(r.u.migration_result.dst_host_uuid);
        ck_assert_ptr_null(r.u.migration_result.observed_host_uuid);
        ck_assert_str_eq(r.u.migration_result.error, "");
    }
}
END_TEST

/* Mutations of valid messages: whatever comes out is a decode error code or
 * a record that survives a round trip; nothing crashes, leaks or balloons. */
START_TEST(hostile_mutation_fuzz)
{
    uint64_t seed = 0x2545f4914f6cdd1du + (uint64_t)_i;
    msg_t m;
    pg_buf_t b = {0};
    int ok = 0;
    for (int iter = 0; iter < 3000; iter++) {
        const tv_sample_t *s = &tv_samples[rnd(&seed) % N_SAMPLES];
        memcpy(m.b, s->bytes, s->len);
        m.n = s->len;
        int edits = 1 + (int)(rnd(&seed) % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = 10 + rnd(&seed) % (m.n - 10);
            switch (rnd(&seed) % 4) {
            case 0:
                m.b[at] = (uint8_t)rnd(&seed);
                break;
            case 1:
                m.b[at] ^= (uint8_t)(1u << (rnd(&seed) % 8));
                break;
            case 2:
                m.n = at > 10 ? at : 11;
                break;
            default:
                if (m.n < sizeof(m.b)) {
                    memmove(m.b + at + 1, m.b + at, m.n - at);
                    m.b[at] = (uint8_t)rnd(&seed);
                    m.n++;
                }
            }
        }
        pg_record_t r, r2;
        size_t before = pg_arena_used(arena);
        int rc = pg_codec_decode(codec, m.b, m.n, NULL, arena, &r, err, sizeof(err));
        ck_assert_msg(rc == 0 || (rc <= PG_CODEC_ETRUNCATED && rc >= PG_CODEC_EFIELD),
                      "unexpected %s (%s)", pg_codec_err_name(rc), err);
        ck_assert_uint_le(pg_arena_used(arena) - before, 64 * 1024 + 32 * m.n);
        if (rc == 0) {
            ok++;
            b.len = 0;
            ck_assert_int_eq(pg_codec_encode(codec, &r, &b, err, sizeof(err)), 0);
            ck_assert_int_eq(pg_codec_decode(codec, b.data, b.len, NULL, arena, &r2,
                                             err, sizeof(err)),
                             0);
            cmp_record(&r2, &r);
        }
        if (pg_arena_used(arena) > 1024 * 1024)
            pg_arena_reset(arena);
    }
    ck_assert_int_gt(ok, 0);
    pg_buf_free(&b);
}
END_TEST

/* ---- JSON ---------------------------------------------------------------- */

static int from_json(pg_record_type_t t, const char *json, pg_buf_t *out)
{
    err[0] = '\0';
    out->len = 0;
    return pg_codec_from_json(codec, 0, t, json, strlen(json), out, err, sizeof(err));
}

/* fastavro's JSON (branches tagged by full name) gives fastavro's bytes. */
START_TEST(json_from_fastavro)
{
    const tv_sample_t *s = &tv_samples[_i];
    pg_buf_t b = {0};
    int rc = from_json(s->rec->type, s->json, &b);
    ck_assert_msg(rc == 0, "%s: %s (%s)", s->name, pg_codec_err_name(rc), err);
    ck_assert_uint_eq(b.len, s->len);
    ck_assert(memcmp(b.data, s->bytes, s->len) == 0);
    pg_buf_free(&b);
}
END_TEST

/* bytes -> JSON -> bytes is the identity, and the JSON is fastavro's. */
START_TEST(json_roundtrip)
{
    const tv_sample_t *s = &tv_samples[_i];
    char *json = NULL;
    pg_record_type_t t = PG_REC_COUNT;
    pg_buf_t b = {0};
    ck_assert_int_eq(
        pg_codec_to_json(codec, 0, s->bytes, s->len, NULL, &json, &t, err, sizeof(err)),
        0);
    ck_assert_int_eq(t, s->rec->type);
    ck_assert_ptr_null(strchr(json, '\n'));
    ck_assert_int_eq(from_json(t, json, &b), 0);
    ck_assert_uint_eq(b.len, s->len);
    ck_assert(memcmp(b.data, s->bytes, s->len) == 0);

    json_t *mine = json_loads(json, 0, NULL), *theirs = json_loads(s->json, 0, NULL);
    ck_assert_ptr_nonnull(mine);
    ck_assert_ptr_nonnull(theirs);
    ck_assert_msg(json_equal(mine, theirs), "%s\n vs %s", json, s->json);
    json_decref(mine);
    json_decref(theirs);
    free(json);
    pg_buf_free(&b);
}
END_TEST

#define DECISION_JSON(dst, reason)                                                     \
    "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "               \
    "\"dstHostUuid\": " dst                                                            \
    ", \"origin\": \"API\", \"verdict\": \"VETOED\", \"reason\": " reason              \
    ", \"devices\": [{\"deviceUuid\": \"d\", \"kind\": \"pci\"}], \"decidedAtMs\": 5}"

START_TEST(json_untagged_unions)
{
    pg_buf_t tagged = {0}, b = {0};
    ck_assert_int_eq(
        from_json(PG_REC_MIGRATE_DECISION,
                  DECISION_JSON("{\"string\": \"h\"}",
                                "{\"io.pinguard.v1.VetoReason\": \"OPERATOR_PIN\"}"),
                  &tagged),
        0);
    static const char *const variants[] = {
        DECISION_JSON("\"h\"", "\"OPERATOR_PIN\""),
        DECISION_JSON("\"h\"", "{\"VetoReason\": \"OPERATOR_PIN\"}"),
        DECISION_JSON("{\"string\": \"h\"}", "\"OPERATOR_PIN\""),
    };
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        ck_assert_msg(from_json(PG_REC_MIGRATE_DECISION, variants[i], &b) == 0, "%s",
                      err);
        ck_assert_uint_eq(b.len, tagged.len);
        ck_assert(memcmp(b.data, tagged.data, b.len) == 0);
    }

    /* A double given as a JSON integer, tagged or not. */
#define ADVICE_JSON(score)                                                             \
    "{\"adviceId\": \"a\", \"clusterUuid\": \"c\", \"generatedAtMs\": 1, "             \
    "\"migrations\": [{\"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "                    \
    "\"dstHostUuid\": \"d\", \"score\": " score "}]}"
    static const char *const scores[] = {ADVICE_JSON("{\"double\": 2.0}"),
                                         ADVICE_JSON("2"), ADVICE_JSON("2.0"),
                                         ADVICE_JSON("{\"double\": 2}")};
    for (size_t i = 0; i < sizeof(scores) / sizeof(scores[0]); i++) {
        ck_assert_msg(from_json(PG_REC_DRS_ADVICE, scores[i], &b) == 0, "%s: %s",
                      scores[i], err);
        pg_record_t r;
        ck_assert_int_eq(
            pg_codec_decode(codec, b.data, b.len, NULL, arena, &r, err, sizeof(err)),
            0);
        ck_assert(r.u.drs_advice.migrations[0].has_score);
        ck_assert(r.u.drs_advice.migrations[0].score == 2.0);
    }
    pg_buf_free(&tagged);
    pg_buf_free(&b);
}
END_TEST

START_TEST(json_defaults)
{
    pg_buf_t b = {0};
    pg_record_t r;
    ck_assert_int_eq(
        from_json(PG_REC_MIGRATE_REQUEST,
                  "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
                  "\"origin\": \"HA\", \"requestedAtMs\": 3}",
                  &b),
        0);
    ck_assert_int_eq(
        pg_codec_decode(codec, b.data, b.len, NULL, arena, &r, err, sizeof(err)), 0);
    ck_assert_ptr_null(r.u.migrate_request.dst_host_uuid);
    ck_assert_int_eq(r.u.migrate_request.origin, PG_ORIGIN_HA);

    ck_assert_int_eq(
        from_json(PG_REC_MIGRATION_RESULT,
                  "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
                  "\"outcome\": \"FAILED\", \"finishedAtMs\": 3}",
                  &b),
        0);
    ck_assert_int_eq(
        pg_codec_decode(codec, b.data, b.len, NULL, arena, &r, err, sizeof(err)), 0);
    ck_assert_ptr_null(r.u.migration_result.dst_host_uuid);
    ck_assert_ptr_null(r.u.migration_result.observed_host_uuid);
    ck_assert_ptr_null(r.u.migration_result.error);

    ck_assert_int_eq(
        from_json(PG_REC_MIGRATE_DECISION,
                  "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
                  "\"dstHostUuid\": null, \"origin\": \"HA\", \"verdict\": "
                  "\"APPROVED\", \"devices\": [], \"decidedAtMs\": 3}",
                  &b),
        0);
    ck_assert_int_eq(
        pg_codec_decode(codec, b.data, b.len, NULL, arena, &r, err, sizeof(err)), 0);
    ck_assert(!r.u.migrate_decision.has_reason);

    ck_assert_int_eq(
        from_json(PG_REC_DRS_ADVICE,
                  "{\"adviceId\": \"a\", \"clusterUuid\": \"c\", \"generatedAtMs\": 1, "
                  "\"migrations\": [{\"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
                  "\"dstHostUuid\": \"d\"}]}",
                  &b),
        0);
    ck_assert_int_eq(
        pg_codec_decode(codec, b.data, b.len, NULL, arena, &r, err, sizeof(err)), 0);
    ck_assert(!r.u.drs_advice.migrations[0].has_score);
    pg_buf_free(&b);
}
END_TEST

START_TEST(json_errors)
{
    static const struct {
        pg_record_type_t t;
        const char *json;
        const char *mention; /* must appear in the detail */
    } cases[] = {
        {PG_REC_MIGRATE_REQUEST, "{\"requestId\": ", "line"},
        {PG_REC_MIGRATE_REQUEST, "[]", "object"},
        {PG_REC_MIGRATE_REQUEST, "{} x", "line"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"vmUuid\": \"v\", \"srcHostUuid\": \"s\", \"origin\": \"HA\", "
         "\"requestedAtMs\": 3}",
         "requestId"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
         "\"origin\": "
         "\"TELEPORT\", \"requestedAtMs\": 3}",
         "TELEPORT"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
         "\"origin\": 1, "
         "\"requestedAtMs\": 3}",
         "origin"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
         "\"dstHostUUID\": "
         "\"d\", \"origin\": \"HA\", \"requestedAtMs\": 3}",
         "dstHostUUID"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
         "\"origin\": \"HA\", "
         "\"requestedAtMs\": \"now\"}",
         "requestedAtMs"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
         "\"origin\": \"HA\", "
         "\"requestedAtMs\": 1.5}",
         "requestedAtMs"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": null, \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", \"origin\": "
         "\"HA\", "
         "\"requestedAtMs\": 1}",
         "requestId"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": \"r\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
         "\"dstHostUuid\": "
         "{\"long\": 5}, \"origin\": \"HA\", \"requestedAtMs\": 1}",
         "dstHostUuid"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": \"r\", \"requestId\": \"r\", \"vmUuid\": \"v\", "
         "\"srcHostUuid\": \"s\", "
         "\"origin\": \"HA\", \"requestedAtMs\": 1}",
         "line"},
        {PG_REC_MIGRATE_REQUEST,
         "{\"requestId\": \"r\\u0000x\", \"vmUuid\": \"v\", \"srcHostUuid\": \"s\", "
         "\"origin\": \"HA\", \"requestedAtMs\": 1}",
         "line"},
        {PG_REC_MIGRATE_DECISION,
         DECISION_JSON("\"h\"", "{\"io.pinguard.v1.VetoReason\": \"SHRUG\"}"), "SHRUG"},
        {PG_REC_MIGRATE_DECISION, DECISION_JSON("\"h\"", "\"SHRUG\""), "reason"},
        {PG_REC_DRS_ADVICE,
         "{\"adviceId\": \"a\", \"clusterUuid\": \"c\", \"generatedAtMs\": 1, "
         "\"migrations\": "
         "[{\"vmUuid\": \"v\", \"srcHostUuid\": \"s\", \"dstHostUuid\": \"d\"}, "
         "{\"srcHostUuid\": \"s\", \"dstHostUuid\": \"d\"}]}",
         "migrations[1]"},
        {PG_REC_COUNT, "{}", "type"},
    };
    pg_buf_t b = {0};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = from_json(cases[i].t, cases[i].json, &b);
        ck_assert_msg(rc == PG_CODEC_EFIELD, "case %zu: %s", i, pg_codec_err_name(rc));
        ck_assert_msg(strstr(err, cases[i].mention) != NULL, "case %zu: detail \"%s\"",
                      i, err);
        ck_assert_uint_eq(b.len, 0);
    }
    /* Nothing stays behind in the reused value after a failure. */
    ck_assert_int_eq(from_json(tv_samples[4].rec->type, tv_samples[4].json, &b), 0);
    ck_assert_uint_eq(b.len, tv_samples[4].len);
    ck_assert(memcmp(b.data, tv_samples[4].bytes, b.len) == 0);
    pg_buf_free(&b);
}
END_TEST

static Suite *codec_suite(void)
{
    Suite *s = suite_create("codec");

    TCase *p = tcase_create("pcf");
    tcase_add_checked_fixture(p, setup, teardown);
    tcase_add_test(p, crc64_check_values);
    tcase_add_loop_test(p, schemas_match_fastavro, 0, PG_REC_COUNT);
    tcase_add_loop_test(p, pcf_rules_match_fastavro, 0, (int)N_PCF_CASES);
    tcase_add_test(p, pcf_lookup_inlines_first_use);
    tcase_add_test(p, pcf_errors);
    tcase_add_test(p, names);
    suite_add_tcase(s, p);

    TCase *v = tcase_create("binary");
    tcase_add_checked_fixture(v, setup, teardown);
    tcase_add_loop_test(v, decode_fastavro_bytes, 0, (int)N_SAMPLES);
    tcase_add_loop_test(v, encode_matches_fastavro, 0, (int)N_SAMPLES);
    tcase_add_test(v, roundtrip_every_record);
    tcase_add_test(v, roundtrip_edge_values);
    tcase_add_test(v, encode_appends);
    tcase_add_test(v, encode_rejects_bad_structs);
    tcase_add_test(v, decode_reuses_values);
    tcase_add_test(v, decode_negative_block_count);
    tcase_add_test(v, decode_many_blocks);
    tcase_add_loop_test(v, decode_v1_bytes, 0, (int)N_V1_SAMPLES);
    tcase_add_loop_test(v, encode_v1_matches_fastavro, 0, (int)N_V1_SAMPLES);
    tcase_add_test(v, versions_and_fingerprints);
    tcase_add_test(v, encode_v1_refuses_v2_values);
    tcase_add_test(v, hostile_v2_fields);
    suite_add_tcase(s, v);

    TCase *h = tcase_create("hostile");
    tcase_add_checked_fixture(h, setup, teardown);
    tcase_set_timeout(h, 120); /* valgrind */
    tcase_add_test(h, hostile_empty_and_magic);
    tcase_add_test(h, hostile_random_bytes);
    tcase_add_test(h, hostile_unknown_fingerprint);
    tcase_add_loop_test(h, hostile_truncated_everywhere, 0, (int)N_SAMPLES);
    tcase_add_test(h, hostile_string_lengths);
    tcase_add_test(h, hostile_array_counts);
    tcase_add_test(h, hostile_too_many_items);
    tcase_add_test(h, hostile_utf8);
    tcase_add_test(h, utf8_check_matches_the_reference);
    tcase_add_test(h, hostile_long_string);
    tcase_add_test(h, hostile_union_and_enum);
    tcase_add_test(h, hostile_trailing);
    tcase_add_test(h, hostile_varints);
    tcase_add_test(h, hostile_empty_ids);
    tcase_add_loop_test(h, hostile_empty_input_ids, 0,
                        (int)(sizeof(id_cases) / sizeof(id_cases[0])));
    tcase_add_loop_test(h, hostile_mutation_fuzz, 0, 4);
    suite_add_tcase(s, h);

    TCase *j = tcase_create("json");
    tcase_add_checked_fixture(j, setup, teardown);
    tcase_add_loop_test(j, json_from_fastavro, 0, (int)N_SAMPLES);
    tcase_add_loop_test(j, json_roundtrip, 0, (int)N_SAMPLES);
    tcase_add_test(j, json_untagged_unions);
    tcase_add_test(j, json_defaults);
    tcase_add_test(j, json_errors);
    suite_add_tcase(s, j);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(codec_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

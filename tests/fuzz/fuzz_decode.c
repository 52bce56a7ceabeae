/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer targets for the codec, one per input record: compiled three
 * times with PG_FUZZ_RECORD set to PG_REC_DRS_ADVICE, PG_REC_MIGRATE_REQUEST
 * or PG_REC_MIGRATION_RESULT (tests/fuzz/CMakeLists.txt). An input is a Kafka
 * payload: the single-object message as it would arrive. Each is decoded as is
 * (so the marker and fingerprint checks are fuzzed too) and with each known
 * version's fingerprint of the target's record written over the header (so
 * that every mutation exercises the reader of that record in every version,
 * not just the first ten bytes). Whatever decodes must survive the round
 * trips: encoded in the current version and in the writer's, it decodes to
 * the same record; re-encoding is stable; and the JSON form (in either
 * version's shape) agrees with decode and turns back into the same bytes. A violated
 * property aborts, which libFuzzer reports as a crash; ASan, UBSan and LeakSanitizer
 * watch everything else.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#ifndef PG_FUZZ_RECORD
#error "PG_FUZZ_RECORD must name the target's record type"
#endif

/* Small limits, so that LIMIT_EXCEEDED is in reach of inputs of a few KiB;
 * the seed corpus stays within them. */
static const pg_codec_limits_t limits = {.max_string = 128, .max_items = 16};

static pg_codec_t *codec;
static pg_arena_t *arena;
static pg_buf_t enc1, enc2, from_json;
static char err[512];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

__attribute__((noreturn)) static void fail(const char *what, int rc)
{
    fprintf(stderr, "fuzz_decode: %s: %s (%s)\n", what, pg_codec_err_name(rc), err);
    abort();
}

#define REQUIRE(cond, what, rc)                                                        \
    do {                                                                               \
        if (!(cond))                                                                   \
            fail(what, rc);                                                            \
    } while (0)

/* ---- Record equality, field by field ----------------------------------- */

static int str_eq(const char *a, const char *b)
{
    return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0;
}

static int gen_eq(pg_opt_long_t a, pg_opt_long_t b)
{
    return a.present == b.present && (!a.present || a.value == b.value);
}

static int advice_eq(const pg_migration_advice_t *a, const pg_migration_advice_t *b)
{
    /* Bits, not ==: a NaN score must come back as the same NaN. */
    return str_eq(a->vm_uuid, b->vm_uuid) &&
           str_eq(a->src_host_uuid, b->src_host_uuid) &&
           str_eq(a->dst_host_uuid, b->dst_host_uuid) &&
           gen_eq(a->bindings_generation, b->bindings_generation) &&
           a->has_score == b->has_score &&
           (!a->has_score || memcmp(&a->score, &b->score, sizeof(double)) == 0);
}

static int record_eq(const pg_record_t *x, const pg_record_t *y)
{
    if (x->type != y->type)
        return 0;
    switch (x->type) {
    case PG_REC_DRS_ADVICE: {
        const pg_drs_advice_t *a = &x->u.drs_advice, *b = &y->u.drs_advice;
        if (!str_eq(a->advice_id, b->advice_id) ||
            !str_eq(a->cluster_uuid, b->cluster_uuid) ||
            a->generated_at_ms != b->generated_at_ms ||
            a->n_migrations != b->n_migrations)
            return 0;
        for (size_t i = 0; i < a->n_migrations; i++)
            if (!advice_eq(&a->migrations[i], &b->migrations[i]))
                return 0;
        return 1;
    }
    case PG_REC_MIGRATE_REQUEST: {
        const pg_migrate_request_t *a = &x->u.migrate_request,
                                   *b = &y->u.migrate_request;
        return str_eq(a->request_id, b->request_id) && str_eq(a->vm_uuid, b->vm_uuid) &&
               str_eq(a->src_host_uuid, b->src_host_uuid) &&
               str_eq(a->dst_host_uuid, b->dst_host_uuid) && a->origin == b->origin &&
               a->requested_at_ms == b->requested_at_ms &&
               gen_eq(a->min_generation, b->min_generation);
    }
    case PG_REC_MIGRATION_RESULT: {
        const pg_migration_result_t *a = &x->u.migration_result,
                                    *b = &y->u.migration_result;
        return str_eq(a->request_id, b->request_id) && str_eq(a->vm_uuid, b->vm_uuid) &&
               str_eq(a->src_host_uuid, b->src_host_uuid) &&
               str_eq(a->dst_host_uuid, b->dst_host_uuid) && a->outcome == b->outcome &&
               str_eq(a->observed_host_uuid, b->observed_host_uuid) &&
               str_eq(a->error, b->error) && a->finished_at_ms == b->finished_at_ms;
    }
    default:
        /* The output records: their bytes are compared below instead. */
        return 1;
    }
}

/* JSON has no NaN or infinity: such a score has no JSON form (EFIELD). */
static int has_non_finite(const pg_record_t *r)
{
    if (r->type != PG_REC_DRS_ADVICE && r->type != PG_REC_FILTERED_ADVICE)
        return 0;
    const pg_migration_advice_t *m = r->type == PG_REC_DRS_ADVICE
                                         ? r->u.drs_advice.migrations
                                         : r->u.filtered_advice.approved;
    size_t n = r->type == PG_REC_DRS_ADVICE ? r->u.drs_advice.n_migrations
                                            : r->u.filtered_advice.n_approved;
    for (size_t i = 0; i < n; i++)
        if (m[i].has_score && !isfinite(m[i].score))
            return 1;
    if (r->type == PG_REC_FILTERED_ADVICE)
        for (size_t i = 0; i < r->u.filtered_advice.n_vetoed; i++) {
            const pg_migration_advice_t *v = &r->u.filtered_advice.vetoed[i].migration;
            if (v->has_score && !isfinite(v->score))
                return 1;
        }
    return 0;
}

/* ---- One message ------------------------------------------------------- */

static void check_message(const uint8_t *data, size_t size)
{
    pg_record_t rec, again;
    int rc = pg_codec_decode(codec, data, size, &limits, arena, &rec, err, sizeof(err));
    REQUIRE(rc != 0 || (rec.version >= 1 && rec.version <= PG_CODEC_VERSION),
            "decode: no version", rc);
    /* Every failure is the message's, with a reason; never the process's. */
    REQUIRE(rc <= 0 && rc > PG_CODEC_ENOMEM, "decode: unexpected code", rc);
    REQUIRE(rc == 0 || err[0] != '\0', "decode: no detail", rc);

    char *json = NULL;
    pg_record_type_t jtype = PG_REC_COUNT;
    int jrc = pg_codec_to_json(codec, 0, data, size, &limits, &json, &jtype, err,
                               sizeof(err));
    if (rc != 0) {
        REQUIRE(jrc == rc, "to_json disagrees with decode", jrc);
        REQUIRE(json == NULL, "to_json: output on failure", jrc);
        return;
    }

    /* decode -> encode -> decode gives the same record and stable bytes. */
    enc1.len = enc2.len = 0;
    int erc = pg_codec_encode(codec, &rec, &enc1, err, sizeof(err));
    REQUIRE(erc == 0, "encode of a decoded record", erc);
    erc = pg_codec_decode(codec, enc1.data, enc1.len, &limits, arena, &again, err,
                          sizeof(err));
    REQUIRE(erc == 0, "decode of an encoded record", erc);
    REQUIRE(record_eq(&rec, &again), "round trip changed the record", 0);
    erc = pg_codec_encode(codec, &again, &enc2, err, sizeof(err));
    REQUIRE(erc == 0, "second encode", erc);
    REQUIRE(enc1.len == enc2.len && memcmp(enc1.data, enc2.data, enc1.len) == 0,
            "re-encoding is not stable", 0);

    /* In the writer's own version too: an older writer's record survives
     * being written back in its version. */
    enc2.len = 0;
    erc = pg_codec_encode_version(codec, rec.version, &rec, &enc2, err, sizeof(err));
    REQUIRE(erc == 0, "encode in the writer's version", erc);
    erc = pg_codec_decode(codec, enc2.data, enc2.len, &limits, arena, &again, err,
                          sizeof(err));
    REQUIRE(erc == 0 && record_eq(&rec, &again), "writer-version round trip", erc);
    char *json_w = NULL;
    erc = pg_codec_to_json(codec, rec.version, enc2.data, enc2.len, &limits, &json_w,
                           NULL, err, sizeof(err));
    if (erc == 0) {
        from_json.len = 0;
        erc = pg_codec_from_json(codec, rec.version, rec.type, json_w, strlen(json_w),
                                 &from_json, err, sizeof(err));
        free(json_w);
        REQUIRE(erc == 0 && from_json.len == enc2.len &&
                    memcmp(from_json.data, enc2.data, enc2.len) == 0,
                "writer-version JSON round trip", erc);
    } else {
        REQUIRE(erc == PG_CODEC_EFIELD && has_non_finite(&rec),
                "writer-version to_json failed", erc);
    }

    /* The JSON form says the same and converts back to the same bytes. */
    if (jrc != 0) {
        REQUIRE(jrc == PG_CODEC_EFIELD && has_non_finite(&rec),
                "to_json failed on a decodable message", jrc);
        return;
    }
    REQUIRE(jtype == rec.type, "to_json: another record type", 0);
    from_json.len = 0;
    int frc = pg_codec_from_json(codec, 0, jtype, json, strlen(json), &from_json, err,
                                 sizeof(err));
    free(json);
    REQUIRE(frc == 0, "from_json of to_json's output", frc);
    REQUIRE(from_json.len == enc1.len &&
                memcmp(from_json.data, enc1.data, enc1.len) == 0,
            "JSON round trip gives other bytes", 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    codec = pg_codec_new(err, sizeof(err));
    arena = pg_arena_new(64 * 1024);
    if (codec == NULL || arena == NULL) {
        fprintf(stderr, "fuzz_decode: setup failed: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_message(data, size);
    /* The same bytes as a body of the target's record, in a buffer of the
     * exact size so that ASan sees any read past the end. */
    if (size >= 10 && data[0] == 0xc3 && data[1] == 0x01) {
        uint8_t *copy = malloc(size);
        if (copy == NULL)
            abort();
        memcpy(copy, data, size);
        for (int v = 1; v <= PG_CODEC_VERSION; v++) {
            uint64_t fp = pg_codec_fingerprint(codec, v, PG_FUZZ_RECORD);
            for (int i = 0; i < 8; i++)
                copy[2 + i] = (uint8_t)(fp >> (8 * i));
            check_message(copy, size);
        }
        free(copy);
    }
    pg_arena_reset(arena);
    return 0;
}

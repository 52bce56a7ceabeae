/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The binary side of the codec: building a codec from the embedded schemas
 * (parsed by avro-c), the bounds-checking validator that every untrusted
 * message passes first, and the reading and writing of the C structs of
 * types.h straight from and to the Avro bytes. avro-c's generic values are
 * used only for what that direct path leaves to them: an array written in
 * several blocks, and the JSON tools (codec_json.c).
 *
 * The mapping is table-driven: one descriptor per record lists its Avro fields
 * in schema order with where each lives in the C struct. pg_codec_new checks
 * every descriptor against the parsed schema, so a schema edit that the structs
 * do not follow fails at start-up instead of misplacing fields at run time.
 */
#include "codec_internal.h"

#include "avro_pcf.h"
#include "schemas.h"
#include "utf8.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS "io.pinguard.v1."
/* The schemas nest four deep; anything near this is a broken schema. */
#define MAX_DEPTH PG_MAX_DEPTH
/* Every optional field is ["null", X]: pg_codec_new refuses anything else. */
#define BRANCH_NULL 0
#define BRANCH_VALUE 1

/* Enum members are read and written as int through memcpy. */
_Static_assert(sizeof(pg_veto_reason_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_origin_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_verdict_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_outcome_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_release_action_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_release_reason_t) == sizeof(int), "enum size");

/* ---- Struct layout of each record ------------------------------------- */

typedef enum {
    K_STR,        /* string                   -> const char * (never NULL) */
    K_OPT_STR,    /* ["null", "string"]       -> const char * (NULL = null) */
    K_LONG,       /* long                     -> int64_t */
    K_ENUM,       /* enum                     -> C enum */
    K_OPT_ENUM,   /* ["null", enum]           -> C enum + bool at aux */
    K_OPT_DOUBLE, /* ["null", "double"]       -> double + bool at aux */
    K_ARRAY,      /* array of records         -> pointer + size_t count at aux */
    K_RECORD,     /* record                   -> nested struct */
} kind_t;

typedef struct rec_desc rec_desc_t;

typedef struct {
    const char *name; /* Avro field name */
    kind_t kind;
    size_t off;
    size_t aux;
    const rec_desc_t *sub; /* K_ARRAY items, K_RECORD type */
    int n_symbols;         /* K_ENUM, K_OPT_ENUM: values the C enum knows */
} field_desc_t;

struct rec_desc {
    const char *full_name;
    size_t size;
    size_t n_fields;
    const field_desc_t *fields;
};

#define F_STR(T, m, n)                                                                 \
    {                                                                                  \
        n, K_STR, offsetof(T, m), 0, NULL, 0                                           \
    }
#define F_OPT_STR(T, m, n)                                                             \
    {                                                                                  \
        n, K_OPT_STR, offsetof(T, m), 0, NULL, 0                                       \
    }
#define F_LONG(T, m, n)                                                                \
    {                                                                                  \
        n, K_LONG, offsetof(T, m), 0, NULL, 0                                          \
    }
#define F_ENUM(T, m, n, k)                                                             \
    {                                                                                  \
        n, K_ENUM, offsetof(T, m), 0, NULL, k                                          \
    }
#define F_OPT_ENUM(T, m, has, n, k)                                                    \
    {                                                                                  \
        n, K_OPT_ENUM, offsetof(T, m), offsetof(T, has), NULL, k                       \
    }
#define F_OPT_DOUBLE(T, m, has, n)                                                     \
    {                                                                                  \
        n, K_OPT_DOUBLE, offsetof(T, m), offsetof(T, has), NULL, 0                     \
    }
#define F_ARRAY(T, m, cnt, n, d)                                                       \
    {                                                                                  \
        n, K_ARRAY, offsetof(T, m), offsetof(T, cnt), &d, 0                            \
    }
#define F_RECORD(T, m, n, d)                                                           \
    {                                                                                  \
        n, K_RECORD, offsetof(T, m), 0, &d, 0                                          \
    }
#define DESC(name, T, f)                                                               \
    {                                                                                  \
        NS name, sizeof(T), sizeof(f) / sizeof(f[0]), f                                \
    }

static const field_desc_t device_ref_fields[] = {
    F_STR(pg_device_ref_t, device_uuid, "deviceUuid"),
    F_STR(pg_device_ref_t, kind, "kind"),
};
static const rec_desc_t device_ref_desc =
    DESC("DeviceRef", pg_device_ref_t, device_ref_fields);

static const field_desc_t advice_fields[] = {
    F_STR(pg_migration_advice_t, vm_uuid, "vmUuid"),
    F_STR(pg_migration_advice_t, src_host_uuid, "srcHostUuid"),
    F_STR(pg_migration_advice_t, dst_host_uuid, "dstHostUuid"),
    F_OPT_DOUBLE(pg_migration_advice_t, score, has_score, "score"),
};
static const rec_desc_t advice_desc =
    DESC("MigrationAdvice", pg_migration_advice_t, advice_fields);

static const field_desc_t veto_fields[] = {
    F_RECORD(pg_veto_t, migration, "migration", advice_desc),
    F_ENUM(pg_veto_t, reason, "reason", 4),
    F_ARRAY(pg_veto_t, devices, n_devices, "devices", device_ref_desc),
};
static const rec_desc_t veto_desc = DESC("Veto", pg_veto_t, veto_fields);

static const field_desc_t drs_advice_fields[] = {
    F_STR(pg_drs_advice_t, advice_id, "adviceId"),
    F_STR(pg_drs_advice_t, cluster_uuid, "clusterUuid"),
    F_LONG(pg_drs_advice_t, generated_at_ms, "generatedAtMs"),
    F_ARRAY(pg_drs_advice_t, migrations, n_migrations, "migrations", advice_desc),
};

static const field_desc_t filtered_advice_fields[] = {
    F_STR(pg_filtered_advice_t, advice_id, "adviceId"),
    F_STR(pg_filtered_advice_t, cluster_uuid, "clusterUuid"),
    F_LONG(pg_filtered_advice_t, generated_at_ms, "generatedAtMs"),
    F_LONG(pg_filtered_advice_t, decided_at_ms, "decidedAtMs"),
    F_ARRAY(pg_filtered_advice_t, approved, n_approved, "approved", advice_desc),
    F_ARRAY(pg_filtered_advice_t, vetoed, n_vetoed, "vetoed", veto_desc),
};

static const field_desc_t request_fields[] = {
    F_STR(pg_migrate_request_t, request_id, "requestId"),
    F_STR(pg_migrate_request_t, vm_uuid, "vmUuid"),
    F_STR(pg_migrate_request_t, src_host_uuid, "srcHostUuid"),
    F_OPT_STR(pg_migrate_request_t, dst_host_uuid, "dstHostUuid"),
    F_ENUM(pg_migrate_request_t, origin, "origin", 5),
    F_LONG(pg_migrate_request_t, requested_at_ms, "requestedAtMs"),
};

static const field_desc_t decision_fields[] = {
    F_STR(pg_migrate_decision_t, request_id, "requestId"),
    F_STR(pg_migrate_decision_t, vm_uuid, "vmUuid"),
    F_STR(pg_migrate_decision_t, src_host_uuid, "srcHostUuid"),
    F_OPT_STR(pg_migrate_decision_t, dst_host_uuid, "dstHostUuid"),
    F_ENUM(pg_migrate_decision_t, origin, "origin", 5),
    F_ENUM(pg_migrate_decision_t, verdict, "verdict", 2),
    F_OPT_ENUM(pg_migrate_decision_t, reason, has_reason, "reason", 4),
    F_ARRAY(pg_migrate_decision_t, devices, n_devices, "devices", device_ref_desc),
    F_LONG(pg_migrate_decision_t, decided_at_ms, "decidedAtMs"),
};

static const field_desc_t result_fields[] = {
    F_STR(pg_migration_result_t, request_id, "requestId"),
    F_STR(pg_migration_result_t, vm_uuid, "vmUuid"),
    F_STR(pg_migration_result_t, src_host_uuid, "srcHostUuid"),
    F_OPT_STR(pg_migration_result_t, dst_host_uuid, "dstHostUuid"),
    F_ENUM(pg_migration_result_t, outcome, "outcome", 2),
    F_OPT_STR(pg_migration_result_t, observed_host_uuid, "observedHostUuid"),
    F_OPT_STR(pg_migration_result_t, error, "error"),
    F_LONG(pg_migration_result_t, finished_at_ms, "finishedAtMs"),
};

static const field_desc_t release_fields[] = {
    F_STR(pg_release_decision_t, request_id, "requestId"),
    F_STR(pg_release_decision_t, vm_uuid, "vmUuid"),
    F_ENUM(pg_release_decision_t, outcome, "outcome", 2),
    F_ENUM(pg_release_decision_t, action, "action", 2),
    F_ENUM(pg_release_decision_t, reason, "reason", 5),
    F_STR(pg_release_decision_t, from_host_uuid, "fromHostUuid"),
    F_OPT_STR(pg_release_decision_t, dst_host_uuid, "dstHostUuid"),
    F_ARRAY(pg_release_decision_t, devices, n_devices, "devices", device_ref_desc),
    F_LONG(pg_release_decision_t, decided_at_ms, "decidedAtMs"),
};

/* Indexed by pg_record_type_t; each struct is the union member of pg_record_t. */
static const rec_desc_t top_desc[PG_REC_COUNT] = {
    DESC("DrsAdvice", pg_drs_advice_t, drs_advice_fields),
    DESC("FilteredAdvice", pg_filtered_advice_t, filtered_advice_fields),
    DESC("MigrateVmRequest", pg_migrate_request_t, request_fields),
    DESC("MigrateVmDecision", pg_migrate_decision_t, decision_fields),
    DESC("MigrationResult", pg_migration_result_t, result_fields),
    DESC("DeviceReleaseDecision", pg_release_decision_t, release_fields),
};

static const char *const record_names[PG_REC_COUNT] = {
    "DrsAdvice",         "FilteredAdvice",  "MigrateVmRequest",
    "MigrateVmDecision", "MigrationResult", "DeviceReleaseDecision",
};

/* The id fields: a string, or a ["null", "string"] whose null means absent.
 * An empty id would make the policy look up, or answer for, nothing: every
 * record that carries one, input or output, must name it (SPEC, "Topics and
 * records"). id_check is the one place that enforces it. */
static const char *const id_fields[] = {
    "requestId",   "adviceId",   "vmUuid",           "clusterUuid",  "srcHostUuid",
    "dstHostUuid", "deviceUuid", "observedHostUuid", "fromHostUuid",
};

/* Struct members are reached by offset; memcpy keeps that free of aliasing
 * and alignment assumptions. */
static const void *get_ptr(const void *base, size_t off)
{
    const void *p;
    memcpy(&p, (const char *)base + off, sizeof(p));
    return p;
}

static void put_ptr(void *base, size_t off, const void *p)
{
    memcpy((char *)base + off, &p, sizeof(p));
}

/* ---- Names and small helpers ------------------------------------------ */

int pg_codec_fail(char *errbuf, size_t errlen, int code, const char *fmt, ...)
{
    if (errbuf != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        pg_verrf(errbuf, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

pg_status_t pg_codec_status(int code)
{
    if (code == PG_CODEC_OK)
        return PG_OK;
    return code == PG_CODEC_ENOMEM || code == PG_CODEC_EINTERNAL ? PG_FATAL : PG_INPUT;
}

const char *pg_record_type_name(pg_record_type_t t)
{
    return (unsigned)t < PG_REC_COUNT ? record_names[t] : NULL;
}

int pg_record_type_from_name(const char *name, pg_record_type_t *out)
{
    if (name == NULL)
        return PG_CODEC_EFIELD;
    if (strncmp(name, NS, strlen(NS)) == 0)
        name += strlen(NS);
    for (int t = 0; t < PG_REC_COUNT; t++) {
        if (strcmp(name, record_names[t]) == 0) {
            if (out != NULL)
                *out = (pg_record_type_t)t;
            return 0;
        }
    }
    return PG_CODEC_EFIELD;
}

uint64_t pg_codec_fingerprint(const pg_codec_t *c, pg_record_type_t t)
{
    return (c != NULL && (unsigned)t < PG_REC_COUNT) ? c->rec[t].fingerprint : 0;
}

const char *pg_codec_canonical_form(const pg_codec_t *c, pg_record_type_t t)
{
    return (c != NULL && (unsigned)t < PG_REC_COUNT) ? c->rec[t].pcf : NULL;
}

const char *pg_codec_err_name(int code)
{
    switch (code) {
    case PG_CODEC_OK:
        return "OK";
    case PG_CODEC_EEMPTY:
        return "EMPTY_MESSAGE";
    case PG_CODEC_EMAGIC:
        return "BAD_MAGIC";
    case PG_CODEC_EFINGERPRINT:
        return "UNKNOWN_FINGERPRINT";
    case PG_CODEC_ETYPE:
        return "UNEXPECTED_RECORD";
    case PG_CODEC_ETRUNCATED:
        return "TRUNCATED_BODY";
    case PG_CODEC_ELENGTH:
        return "BAD_LENGTH";
    case PG_CODEC_EVARINT:
        return "BAD_VARINT";
    case PG_CODEC_EUTF8:
        return "INVALID_UTF8";
    case PG_CODEC_EUNION:
        return "BAD_UNION_BRANCH";
    case PG_CODEC_EENUM:
        return "BAD_ENUM_SYMBOL";
    case PG_CODEC_ETRAILING:
        return "TRAILING_BYTES";
    case PG_CODEC_ELIMIT:
        return "LIMIT_EXCEEDED";
    case PG_CODEC_EFIELD:
        return "INVALID_FIELD";
    case PG_CODEC_ENOMEM:
        return "OUT_OF_MEMORY";
    case PG_CODEC_EINTERNAL:
        return "INTERNAL_ERROR";
    default:
        return "UNKNOWN_ERROR";
    }
}

/* ---- Validator ---------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
    const uint8_t *body; /* offsets in messages are relative to the body */
    const pg_codec_limits_t *lim;
    const char *field; /* innermost record field, for the detail */
    char *errbuf;
    size_t errlen;
} vcur_t;

__attribute__((format(printf, 3, 4))) static int vfail(vcur_t *v, int code,
                                                       const char *fmt, ...)
{
    if (v->errbuf == NULL || v->errlen == 0)
        return code;
    int k = snprintf(v->errbuf, v->errlen, "%s%s", v->field ? v->field : "",
                     v->field ? ": " : "");
    if (k >= 0 && (size_t)k < v->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->errbuf + k, v->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return code;
}

static size_t voff(const vcur_t *v, const uint8_t *p)
{
    return (size_t)(p - v->body);
}

static size_t vleft(const vcur_t *v)
{
    return (size_t)(v->end - v->p);
}

/* A zig-zag varint of at most max_bytes (10 for long, 5 for int); the last
 * byte may carry only the bits that still fit in 64 (32) bits. */
static int vvarint(vcur_t *v, int max_bytes, int64_t *out)
{
    const uint8_t *start = v->p;
    const uint8_t last_max = max_bytes == 10 ? 0x01 : 0x0f;
    uint64_t raw = 0;
    for (int i = 0;; i++) {
        if (v->p == v->end)
            return vfail(v, PG_CODEC_ETRUNCATED,
                         "body ends inside a varint at body offset %zu",
                         voff(v, start));
        uint8_t b = *v->p++;
        if (i == max_bytes - 1 && b > last_max)
            return vfail(
                v, PG_CODEC_EVARINT,
                "varint at body offset %zu is longer than %d bytes or overflows",
                voff(v, start), max_bytes);
        raw |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0)
            break;
    }
    *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
    return 0;
}

static int vneed(vcur_t *v, size_t n, const char *what)
{
    if (vleft(v) < n)
        return vfail(v, PG_CODEC_ETRUNCATED,
                     "body ends inside a %s at body offset %zu (%zu of %zu bytes)",
                     what, voff(v, v->p), vleft(v), n);
    v->p += n;
    return 0;
}

/* An id field's value (a null in its union never gets here): non-empty. The
 * detail starts with the field's name, as the DLQ's pinguard-error shows it. */
static int id_check(vcur_t *v, const uint8_t *start, int64_t len)
{
    if (len > 0)
        return 0;
    return pg_codec_fail(v->errbuf, v->errlen, PG_CODEC_EFIELD,
                         "%s is empty (body offset %zu)", v->field ? v->field : "id",
                         voff(v, start));
}

static int vstring(vcur_t *v, bool utf8, bool is_id)
{
    const uint8_t *start = v->p;
    int64_t len;
    int rc = vvarint(v, 10, &len);
    if (rc != 0)
        return rc;
    if (len < 0)
        return vfail(v, PG_CODEC_ELENGTH,
                     "length %" PRId64 " at body offset %zu is negative", len,
                     voff(v, start));
    if ((uint64_t)len > vleft(v))
        return vfail(v, PG_CODEC_ELENGTH,
                     "string length %" PRId64
                     " at body offset %zu exceeds the %zu bytes left",
                     len, voff(v, start), vleft(v));
    if ((uint64_t)len > v->lim->max_string)
        return vfail(v, PG_CODEC_ELIMIT,
                     "string length %" PRId64
                     " at body offset %zu is over the limit of %zu",
                     len, voff(v, start), v->lim->max_string);
    if (utf8) {
        size_t bad = pg_utf8_check(v->p, (size_t)len);
        if (bad != (size_t)len)
            return vfail(
                v, PG_CODEC_EUTF8,
                "string at body offset %zu has %s at body offset %zu", voff(v, start),
                v->p[bad] == 0 ? "a NUL byte" : "invalid UTF-8", voff(v, v->p + bad));
    }
    if (is_id && (rc = id_check(v, start, len)) != 0)
        return rc;
    v->p += len;
    return 0;
}

static int vvalue(vcur_t *v, const pg_codec_node_t *n, bool is_id, int depth);

/* Arrays and maps: blocks of items, ended by a zero count; a negative count
 * is followed by the block's size in bytes (Avro spec, "Complex Types"). */
static int vblocks(vcur_t *v, const pg_codec_node_t *n, int depth)
{
    const pg_codec_node_t *item = n->kids[0];
    const bool is_map = n->type == AVRO_MAP;
    const size_t item_min = item->min_size + (is_map ? 1 : 0);
    size_t total = 0;
    for (;;) {
        const uint8_t *start = v->p, *block_end = NULL;
        int64_t count, bytes = 0;
        int rc = vvarint(v, 10, &count);
        if (rc != 0)
            return rc;
        if (count == 0)
            return 0;
        if (count < 0) {
            if (count == INT64_MIN)
                return vfail(v, PG_CODEC_ELENGTH,
                             "block count at body offset %zu overflows",
                             voff(v, start));
            count = -count;
            if ((rc = vvarint(v, 10, &bytes)) != 0)
                return rc;
            if (bytes < 0 || (uint64_t)bytes > vleft(v))
                return vfail(v, PG_CODEC_ELENGTH,
                             "block size %" PRId64 " at body offset %zu is negative or "
                             "exceeds the %zu bytes left",
                             bytes, voff(v, start), vleft(v));
            block_end = v->p + bytes;
        }
        /* Every item takes at least item_min bytes, so a count the rest of
         * the message cannot hold is a lie, whatever the limits say. */
        if (item_min > 0 && (uint64_t)count > vleft(v) / item_min)
            return vfail(v, PG_CODEC_ELENGTH,
                         "block of %" PRId64
                         " items at body offset %zu cannot fit in the "
                         "%zu bytes left",
                         count, voff(v, start), vleft(v));
        if ((uint64_t)count > v->lim->max_items - total)
            return vfail(v, PG_CODEC_ELIMIT,
                         "more than %zu items in the array at body offset %zu",
                         v->lim->max_items, voff(v, start));
        total += (size_t)count;
        const char *field = v->field;
        for (int64_t i = 0; i < count; i++) {
            if (is_map && (rc = vstring(v, true, false)) != 0)
                return rc;
            if ((rc = vvalue(v, item, false, depth + 1)) != 0)
                return rc;
            v->field = field;
        }
        if (block_end != NULL && v->p != block_end)
            return vfail(v, PG_CODEC_ELENGTH,
                         "block at body offset %zu declares %" PRId64
                         " bytes but holds %zu",
                         voff(v, start), bytes, (size_t)(v->p - (block_end - bytes)));
    }
}

static int vvalue(vcur_t *v, const pg_codec_node_t *n, bool is_id, int depth)
{
    int64_t x;
    int rc;
    if (depth > MAX_DEPTH)
        return vfail(v, PG_CODEC_ELIMIT, "values nested deeper than %d", MAX_DEPTH);
    switch (n->type) {
    case AVRO_NULL:
        return 0;
    case AVRO_BOOLEAN:
        if ((rc = vneed(v, 1, "boolean")) != 0)
            return rc;
        if (v->p[-1] > 1)
            return vfail(v, PG_CODEC_EFIELD, "boolean byte %u at body offset %zu",
                         v->p[-1], voff(v, v->p - 1));
        return 0;
    case AVRO_INT32:
        return vvarint(v, 5, &x);
    case AVRO_INT64:
        return vvarint(v, 10, &x);
    case AVRO_FLOAT:
        return vneed(v, 4, "float");
    case AVRO_DOUBLE:
        return vneed(v, 8, "double");
    case AVRO_FIXED:
        return vneed(v, n->n, "fixed");
    case AVRO_STRING:
        return vstring(v, true, is_id);
    case AVRO_BYTES:
        return vstring(v, false, false);
    case AVRO_ENUM: {
        const uint8_t *start = v->p;
        if ((rc = vvarint(v, 10, &x)) != 0)
            return rc;
        if (x < 0 || (uint64_t)x >= n->n)
            return vfail(v, PG_CODEC_EENUM,
                         "enum index %" PRId64
                         " at body offset %zu, %s has %zu symbols",
                         x, voff(v, start), n->name, n->n);
        return 0;
    }
    case AVRO_UNION: {
        const uint8_t *start = v->p;
        if ((rc = vvarint(v, 10, &x)) != 0)
            return rc;
        if (x < 0 || (uint64_t)x >= n->n)
            return vfail(v, PG_CODEC_EUNION,
                         "union branch %" PRId64
                         " at body offset %zu, the union has %zu",
                         x, voff(v, start), n->n);
        return vvalue(v, n->kids[x], is_id, depth + 1);
    }
    case AVRO_ARRAY:
    case AVRO_MAP:
        return vblocks(v, n, depth);
    case AVRO_RECORD:
        for (size_t i = 0; i < n->n; i++) {
            v->field = n->names[i];
            if ((rc = vvalue(v, n->kids[i], n->is_id[i], depth + 1)) != 0)
                return rc;
        }
        return 0;
    default:
        return vfail(v, PG_CODEC_EINTERNAL, "schema type %d is not supported",
                     (int)n->type);
    }
}

int pg_codec_check(const pg_codec_t *c, const uint8_t *buf, size_t len,
                   const pg_codec_limits_t *lim, pg_record_type_t *type_out,
                   char *errbuf, size_t errlen)
{
    const pg_codec_limits_t dflt = PG_CODEC_LIMITS_DEFAULT;
    if (len == 0 || buf == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EEMPTY, "empty message");
    if (len < 2 || buf[0] != 0xc3 || buf[1] != 0x01)
        return pg_codec_fail(
            errbuf, errlen, PG_CODEC_EMAGIC,
            "message starts with %02X %02X, not the single-object marker "
            "C3 01",
            buf[0], len > 1 ? buf[1] : 0);
    if (len < PG_CODEC_HEADER_LEN)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EMAGIC,
                             "message of %zu bytes is shorter than the 10-byte header",
                             len);
    uint64_t fp = 0;
    for (int i = 7; i >= 0; i--)
        fp = (fp << 8) | buf[2 + i];
    int t = 0;
    while (t < PG_REC_COUNT && c->rec[t].fingerprint != fp)
        t++;
    if (t == PG_REC_COUNT)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFINGERPRINT,
                             "fingerprint 0x%016" PRIx64 " matches no known schema",
                             fp);

    vcur_t v = {.p = buf + PG_CODEC_HEADER_LEN,
                .end = buf + len,
                .body = buf + PG_CODEC_HEADER_LEN,
                .lim = lim != NULL ? lim : &dflt,
                .errbuf = errbuf,
                .errlen = errlen};
    int rc = vvalue(&v, c->rec[t].root, false, 0);
    if (rc != 0)
        return rc;
    if (v.p != v.end)
        return pg_codec_fail(
            errbuf, errlen, PG_CODEC_ETRAILING,
            "%zu bytes after the %s body, which ends at body offset %zu", vleft(&v),
            record_names[t], voff(&v, v.p));
    *type_out = (pg_record_type_t)t;
    return 0;
}

/* ---- avro-c values <-> structs ----------------------------------------- */

int pg_codec_read(pg_codec_t *c, pg_record_type_t t, const uint8_t *buf, size_t len,
                  char *errbuf, size_t errlen)
{
    pg_codec_schema_t *s = &c->rec[t];
    avro_reader_memory_set_source(c->reader, (const char *)buf + PG_CODEC_HEADER_LEN,
                                  (int64_t)(len - PG_CODEC_HEADER_LEN));
    if (avro_value_read(c->reader, &s->value) != 0) {
        int rc = pg_codec_fail(errbuf, errlen, PG_CODEC_EINTERNAL,
                               "avro-c rejected a validated %s body: %s",
                               record_names[t], avro_strerror());
        avro_value_reset(&s->value);
        return rc;
    }
    return 0;
}

static int get_string(avro_value_t *v, pg_arena_t *a, const char **out)
{
    const char *s;
    size_t size; /* avro-c counts the NUL */
    if (avro_value_get_string(v, &s, &size) != 0)
        return PG_CODEC_EINTERNAL;
    *out = pg_arena_strndup(a, s, size > 0 ? size - 1 : 0);
    return *out != NULL ? 0 : PG_CODEC_ENOMEM;
}

/* Takes the branch of an optional field; *present is false for null. */
static int get_optional(avro_value_t *v, avro_value_t *branch, bool *present)
{
    int disc;
    if (avro_value_get_discriminant(v, &disc) != 0 ||
        avro_value_get_current_branch(v, branch) != 0)
        return PG_CODEC_EINTERNAL;
    *present = disc == BRANCH_VALUE;
    return 0;
}

static int dec_record(const rec_desc_t *d, avro_value_t *rv, void *dst, pg_arena_t *a)
{
    for (size_t i = 0; i < d->n_fields; i++) {
        const field_desc_t *f = &d->fields[i];
        char *at = (char *)dst + f->off;
        avro_value_t fv, bv;
        const char *str = NULL;
        bool present;
        int e, rc = 0;
        if (avro_value_get_by_index(rv, i, &fv, NULL) != 0)
            return PG_CODEC_EINTERNAL;
        switch (f->kind) {
        case K_STR:
            if ((rc = get_string(&fv, a, &str)) == 0)
                put_ptr(dst, f->off, str);
            break;
        case K_OPT_STR:
            if ((rc = get_optional(&fv, &bv, &present)) == 0 && present)
                rc = get_string(&bv, a, &str);
            if (rc == 0)
                put_ptr(dst, f->off, str);
            break;
        case K_LONG: {
            int64_t x;
            if (avro_value_get_long(&fv, &x) != 0)
                return PG_CODEC_EINTERNAL;
            memcpy(at, &x, sizeof(x));
            break;
        }
        case K_ENUM:
            if (avro_value_get_enum(&fv, &e) != 0)
                return PG_CODEC_EINTERNAL;
            memcpy(at, &e, sizeof(e));
            break;
        case K_OPT_ENUM:
            if ((rc = get_optional(&fv, &bv, &present)) != 0)
                return rc;
            e = 0;
            if (present && avro_value_get_enum(&bv, &e) != 0)
                return PG_CODEC_EINTERNAL;
            memcpy(at, &e, sizeof(e));
            memcpy((char *)dst + f->aux, &present, sizeof(present));
            break;
        case K_OPT_DOUBLE: {
            double x = 0;
            if ((rc = get_optional(&fv, &bv, &present)) != 0)
                return rc;
            if (present && avro_value_get_double(&bv, &x) != 0)
                return PG_CODEC_EINTERNAL;
            memcpy(at, &x, sizeof(x));
            memcpy((char *)dst + f->aux, &present, sizeof(present));
            break;
        }
        case K_ARRAY: {
            size_t count;
            char *items = NULL;
            if (avro_value_get_size(&fv, &count) != 0)
                return PG_CODEC_EINTERNAL;
            if (count > 0 && (items = pg_arena_calloc(a, count, f->sub->size)) == NULL)
                return PG_CODEC_ENOMEM;
            for (size_t k = 0; k < count && rc == 0; k++) {
                avro_value_t ev;
                if (avro_value_get_by_index(&fv, k, &ev, NULL) != 0)
                    return PG_CODEC_EINTERNAL;
                rc = dec_record(f->sub, &ev, items + k * f->sub->size, a);
            }
            put_ptr(dst, f->off, items);
            memcpy((char *)dst + f->aux, &count, sizeof(count));
            break;
        }
        case K_RECORD:
            rc = dec_record(f->sub, &fv, at, a);
            break;
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- The hot path: straight between bytes and structs --------------------
 * Messages are read and written by walking the same field tables that
 * pg_codec_new verified against the schemas, with no avro-c value in between:
 * avro-c's generic values allocate every string and cost more than the rest
 * of a decision (tests/bench profile). Decoding runs only on bytes that
 * pg_codec_check accepted, and still checks every bound. The one shape it
 * leaves to avro-c is an array written in several blocks (fastavro and
 * pinguard write one), for which it answers DIRECT_FALLBACK. */
enum { DIRECT_FALLBACK = 1 };

typedef struct {
    const uint8_t *p, *end;
    pg_arena_t *arena;
} dcur_t;

static int dlong(dcur_t *d, int64_t *out)
{
    uint64_t u = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (d->p == d->end)
            return PG_CODEC_EINTERNAL;
        uint8_t byte = *d->p++;
        u |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
            return 0;
        }
    }
    return PG_CODEC_EINTERNAL;
}

static int dstring(dcur_t *d, const char **out)
{
    int64_t n;
    if (dlong(d, &n) != 0 || n < 0 || (uint64_t)n > (uint64_t)(d->end - d->p))
        return PG_CODEC_EINTERNAL;
    const char *s = pg_arena_strndup(d->arena, (const char *)d->p, (size_t)n);
    if (s == NULL)
        return PG_CODEC_ENOMEM;
    d->p += n;
    *out = s;
    return 0;
}

/* The branch of an optional: false for null. */
static int dbranch(dcur_t *d, bool *present)
{
    int64_t b;
    if (dlong(d, &b) != 0 || (b != BRANCH_NULL && b != BRANCH_VALUE))
        return PG_CODEC_EINTERNAL;
    *present = b == BRANCH_VALUE;
    return 0;
}

static int drecord(const rec_desc_t *desc, dcur_t *d, void *dst)
{
    for (size_t i = 0; i < desc->n_fields; i++) {
        const field_desc_t *f = &desc->fields[i];
        char *at = (char *)dst + f->off;
        const char *str = NULL;
        bool present = true;
        int64_t x = 0;
        int rc = 0;
        switch (f->kind) {
        case K_OPT_STR:
            if ((rc = dbranch(d, &present)) != 0 || !present)
                break;
            /* fall through */
        case K_STR:
            if ((rc = dstring(d, &str)) == 0)
                put_ptr(dst, f->off, str);
            break;
        case K_LONG:
            if ((rc = dlong(d, &x)) == 0)
                memcpy(at, &x, sizeof(x));
            break;
        case K_OPT_ENUM:
            if ((rc = dbranch(d, &present)) != 0)
                break;
            memcpy((char *)dst + f->aux, &present, sizeof(present));
            if (!present)
                break;
            /* fall through */
        case K_ENUM: {
            int e;
            if ((rc = dlong(d, &x)) == 0 && (x < 0 || x > INT32_MAX))
                rc = PG_CODEC_EINTERNAL;
            e = (int)x;
            if (rc == 0)
                memcpy(at, &e, sizeof(e));
            break;
        }
        case K_OPT_DOUBLE: {
            if ((rc = dbranch(d, &present)) != 0)
                break;
            memcpy((char *)dst + f->aux, &present, sizeof(present));
            if (!present)
                break;
            if (d->end - d->p < 8)
                return PG_CODEC_EINTERNAL;
            uint64_t bits = 0;
            for (int k = 7; k >= 0; k--) /* little-endian on the wire */
                bits = (bits << 8) | d->p[k];
            double v;
            memcpy(&v, &bits, sizeof(v));
            memcpy(at, &v, sizeof(v));
            d->p += 8;
            break;
        }
        case K_ARRAY: {
            int64_t count, size;
            char *items = NULL;
            if ((rc = dlong(d, &count)) != 0)
                break;
            if (count == INT64_MIN) {
                rc = PG_CODEC_EINTERNAL; /* the validator refuses it first */
                break;
            }
            if (count < 0) { /* a negative count is followed by the block's size */
                if ((rc = dlong(d, &size)) != 0)
                    break;
                count = -count;
            }
            /* Every item takes at least one byte: a bound before allocating. */
            if ((uint64_t)count > (uint64_t)(d->end - d->p))
                return PG_CODEC_EINTERNAL;
            if (count > 0 && (items = pg_arena_calloc(d->arena, (size_t)count,
                                                      f->sub->size)) == NULL)
                return PG_CODEC_ENOMEM;
            for (int64_t k = 0; k < count && rc == 0; k++)
                rc = drecord(f->sub, d, items + k * f->sub->size);
            int64_t next = 0;
            if (rc == 0 && count > 0 && (rc = dlong(d, &next)) == 0 && next != 0)
                return DIRECT_FALLBACK;
            size_t n = (size_t)count;
            put_ptr(dst, f->off, items);
            memcpy((char *)dst + f->aux, &n, sizeof(n));
            break;
        }
        case K_RECORD:
            rc = drecord(f->sub, d, at);
            break;
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int eput_long(pg_buf_t *b, int64_t v)
{
    uint8_t tmp[10];
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 0;
    while (u & ~(uint64_t)0x7f) {
        tmp[n++] = (uint8_t)((u & 0x7f) | 0x80);
        u >>= 7;
    }
    tmp[n++] = (uint8_t)u;
    return pg_buf_append(b, tmp, n);
}

static int eput_string(pg_buf_t *b, const field_desc_t *f, const char *s, char *errbuf,
                       size_t errlen)
{
    if (s == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "field %s is NULL but the schema has no null", f->name);
    size_t len = strlen(s);
    if (pg_utf8_check((const uint8_t *)s, len) != len)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EUTF8,
                             "field %s: invalid UTF-8, which no reader would accept",
                             f->name);
    return eput_long(b, (int64_t)len) || pg_buf_append(b, s, len) ? PG_CODEC_ENOMEM : 0;
}

static int eput_enum(pg_buf_t *b, const field_desc_t *f, const pg_codec_node_t *en,
                     int e, char *errbuf, size_t errlen)
{
    if (e < 0 || (size_t)e >= en->n)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "field %s: %d is not a symbol of %s", f->name, e,
                             en->name);
    return eput_long(b, e) ? PG_CODEC_ENOMEM : 0;
}

static int erecord(const rec_desc_t *d, const pg_codec_node_t *n, const void *src,
                   pg_buf_t *out, char *errbuf, size_t errlen)
{
    for (size_t i = 0; i < d->n_fields; i++) {
        const field_desc_t *f = &d->fields[i];
        const pg_codec_node_t *fn = n->kids[i];
        const char *at = (const char *)src + f->off;
        bool present = true;
        int e, rc = 0;
        if (f->kind == K_OPT_STR)
            present = get_ptr(src, f->off) != NULL;
        else if (f->kind == K_OPT_ENUM || f->kind == K_OPT_DOUBLE)
            memcpy(&present, (const char *)src + f->aux, sizeof(present));
        if (f->kind == K_OPT_STR || f->kind == K_OPT_ENUM || f->kind == K_OPT_DOUBLE) {
            if (eput_long(out, present ? BRANCH_VALUE : BRANCH_NULL) != 0)
                return PG_CODEC_ENOMEM;
            if (!present)
                continue;
        }
        switch (f->kind) {
        case K_STR:
        case K_OPT_STR:
            rc = eput_string(out, f, get_ptr(src, f->off), errbuf, errlen);
            break;
        case K_LONG: {
            int64_t x;
            memcpy(&x, at, sizeof(x));
            rc = eput_long(out, x) ? PG_CODEC_ENOMEM : 0;
            break;
        }
        case K_ENUM:
            memcpy(&e, at, sizeof(e));
            rc = eput_enum(out, f, fn, e, errbuf, errlen);
            break;
        case K_OPT_ENUM:
            memcpy(&e, at, sizeof(e));
            rc = eput_enum(out, f, fn->kids[BRANCH_VALUE], e, errbuf, errlen);
            break;
        case K_OPT_DOUBLE: {
            double x;
            uint64_t bits;
            uint8_t le[8];
            memcpy(&x, at, sizeof(x));
            memcpy(&bits, &x, sizeof(bits));
            for (int k = 0; k < 8; k++)
                le[k] = (uint8_t)(bits >> (8 * k));
            rc = pg_buf_append(out, le, sizeof(le)) ? PG_CODEC_ENOMEM : 0;
            break;
        }
        case K_ARRAY: {
            size_t count;
            const char *items = get_ptr(src, f->off);
            memcpy(&count, (const char *)src + f->aux, sizeof(count));
            if (count > 0 && items == NULL)
                return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                                     "field %s: %zu items but no array", f->name,
                                     count);
            /* One block of count items, then the empty block that ends it. */
            if (count > 0 && eput_long(out, (int64_t)count) != 0)
                return PG_CODEC_ENOMEM;
            for (size_t k = 0; k < count && rc == 0; k++)
                rc = erecord(f->sub, fn->kids[0], items + k * f->sub->size, out, errbuf,
                             errlen);
            if (rc == 0 && eput_long(out, 0) != 0)
                rc = PG_CODEC_ENOMEM;
            break;
        }
        case K_RECORD:
            rc = erecord(f->sub, fn, at, out, errbuf, errlen);
            break;
        }
        if (rc != 0) {
            if (rc == PG_CODEC_ENOMEM)
                pg_codec_fail(errbuf, errlen, rc, "field %s: out of memory", f->name);
            return rc;
        }
    }
    return 0;
}

int pg_codec_write(pg_codec_t *c, pg_record_type_t t, pg_buf_t *out, char *errbuf,
                   size_t errlen)
{
    pg_codec_schema_t *s = &c->rec[t];
    size_t size;
    if (avro_value_sizeof(&s->value, &size) != 0)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EINTERNAL, "avro-c sizeof: %s",
                             avro_strerror());
    if (pg_buf_reserve(out, PG_CODEC_HEADER_LEN + size) != 0)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM,
                             "no memory for a %zu-byte message",
                             PG_CODEC_HEADER_LEN + size);
    uint8_t *h = out->data + out->len;
    h[0] = 0xc3;
    h[1] = 0x01;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(s->fingerprint >> (8 * i));
    avro_writer_memory_set_dest(c->writer, (const char *)h + PG_CODEC_HEADER_LEN,
                                (int64_t)size);
    if (avro_value_write(c->writer, &s->value) != 0 ||
        avro_writer_tell(c->writer) != (int64_t)size)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EINTERNAL, "avro-c write: %s",
                             avro_strerror());
    out->len += PG_CODEC_HEADER_LEN + size;
    return 0;
}

int pg_codec_decode(pg_codec_t *c, const uint8_t *buf, size_t len,
                    const pg_codec_limits_t *lim, pg_arena_t *arena, pg_record_t *out,
                    char *errbuf, size_t errlen)
{
    pg_record_type_t t;
    memset(out, 0, sizeof(*out));
    int rc = pg_codec_check(c, buf, len, lim, &t, errbuf, errlen);
    if (rc != 0)
        return rc;
    out->type = t;
    dcur_t d = {.p = buf + PG_CODEC_HEADER_LEN, .end = buf + len, .arena = arena};
    rc = drecord(&top_desc[t], &d, &out->u);
    if (rc == 0 && d.p != d.end)
        rc = PG_CODEC_EINTERNAL; /* pg_codec_check saw the same end */
    if (rc != DIRECT_FALLBACK) {
        if (rc != 0)
            pg_codec_fail(errbuf, errlen, rc, "reading a validated %s failed",
                          record_names[t]);
        return rc;
    }
    memset(&out->u, 0, sizeof(out->u));
    if ((rc = pg_codec_read(c, t, buf, len, errbuf, errlen)) != 0)
        return rc;
    rc = dec_record(&top_desc[t], &c->rec[t].value, &out->u, arena);
    if (rc != 0)
        pg_codec_fail(errbuf, errlen, rc, "copying the %s into the arena failed",
                      record_names[t]);
    /* Let go of avro-c's copies of the strings now rather than next message. */
    avro_value_reset(&c->rec[t].value);
    return rc;
}

int pg_codec_encode(pg_codec_t *c, const pg_record_t *rec, pg_buf_t *out, char *errbuf,
                    size_t errlen)
{
    if ((unsigned)rec->type >= PG_REC_COUNT)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "record type %d is unknown", (int)rec->type);
    const pg_codec_schema_t *s = &c->rec[rec->type];
    size_t start = out->len;
    uint8_t h[PG_CODEC_HEADER_LEN] = {0xc3, 0x01};
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(s->fingerprint >> (8 * i));
    int rc = pg_buf_append(out, h, sizeof(h)) ? PG_CODEC_ENOMEM : 0;
    if (rc == 0)
        rc = erecord(&top_desc[rec->type], s->root, &rec->u, out, errbuf, errlen);
    else
        pg_codec_fail(errbuf, errlen, rc, "no memory for a message header");
    if (rc != 0)
        out->len = start; /* nothing half-written is left behind */
    return rc;
}

/* ---- Building the codec ----------------------------------------------- */

typedef struct {
    avro_schema_t schema;
    pg_codec_node_t *node;
} memo_t;

typedef struct {
    pg_codec_t *c;
    memo_t memo[64]; /* named types seen so far in one schema */
    size_t n_memo;
    char *errbuf;
    size_t errlen;
} build_t;

static void node_free(pg_codec_node_t *n)
{
    if (n == NULL)
        return;
    if (n->names != NULL)
        for (size_t i = 0; i < n->n; i++)
            free(n->names[i]);
    free(n->names);
    free(n->name);
    free(n->kids);
    free(n->is_id);
    free(n->defaults);
    free(n);
}

static pg_codec_node_t *node_new(build_t *b, avro_type_t type, size_t n_kids,
                                 bool with_names)
{
    pg_codec_t *c = b->c;
    if (c->n_nodes == c->cap_nodes) {
        size_t cap = c->cap_nodes ? c->cap_nodes * 2 : 64;
        pg_codec_node_t **nodes = realloc(c->nodes, cap * sizeof(*nodes));
        if (nodes == NULL)
            return NULL;
        c->nodes = nodes;
        c->cap_nodes = cap;
    }
    pg_codec_node_t *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    c->nodes[c->n_nodes++] = n; /* owned by the codec from here on */
    n->type = type;
    n->null_branch = -1;
    if (n_kids > 0 && (n->kids = calloc(n_kids, sizeof(*n->kids))) == NULL)
        return NULL;
    if (with_names &&
        (n->names = calloc(n_kids ? n_kids : 1, sizeof(*n->names))) == NULL)
        return NULL;
    return n;
}

static char *full_name_of(avro_schema_t s)
{
    const char *ns = avro_schema_namespace(s), *name = avro_schema_name(s);
    size_t nl = ns != NULL ? strlen(ns) : 0;
    char *full = malloc(nl + 1 + strlen(name) + 1);
    if (full != NULL)
        snprintf(full, nl + 1 + strlen(name) + 1, "%s%s%s", nl ? ns : "", nl ? "." : "",
                 name);
    return full;
}

static bool is_id_field(const char *name)
{
    for (size_t i = 0; i < sizeof(id_fields) / sizeof(id_fields[0]); i++)
        if (strcmp(name, id_fields[i]) == 0)
            return true;
    return false;
}

/* A string, or a union whose only non-null branch is a string: what an id
 * field may be. The validator hands is_id down to the union's branch. */
static bool is_string_field(const pg_codec_node_t *n)
{
    if (n->type == AVRO_STRING)
        return true;
    if (n->type != AVRO_UNION)
        return false;
    size_t strings = 0, others = 0;
    for (size_t i = 0; i < n->n; i++) {
        if (n->kids[i]->type == AVRO_STRING)
            strings++;
        else if (n->kids[i]->type != AVRO_NULL)
            others++;
    }
    return strings == 1 && others == 0;
}

/* Compiles avro-c's schema s, whose JSON is j (for the defaults), into the
 * node graph. Named types are compiled once; references share the node. */
static pg_codec_node_t *compile(build_t *b, avro_schema_t s, json_t *j, int depth)
{
    const avro_type_t type = avro_typeof(s);
    pg_codec_node_t *n = NULL;
    if (depth > MAX_DEPTH) {
        pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL, "schema too deep");
        return NULL;
    }
    if (type == AVRO_LINK)
        s = avro_schema_link_target(s);
    for (size_t i = 0; i < b->n_memo; i++)
        if (b->memo[i].schema == s)
            return b->memo[i].node;
    if (type == AVRO_LINK) {
        pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                      "reference to %s before its definition", avro_schema_name(s));
        return NULL;
    }

    switch (type) {
    case AVRO_RECORD:
    case AVRO_ENUM:
    case AVRO_FIXED: {
        size_t count = type == AVRO_RECORD ? avro_schema_record_size(s)
                       : type == AVRO_ENUM
                           ? (size_t)avro_schema_enum_number_of_symbols(s)
                           : 0;
        if (b->n_memo == sizeof(b->memo) / sizeof(b->memo[0]))
            goto oom;
        if ((n = node_new(b, type, count, type != AVRO_FIXED)) == NULL ||
            (n->name = full_name_of(s)) == NULL)
            goto oom;
        b->memo[b->n_memo++] = (memo_t){s, n};
        n->n = count;
        if (type == AVRO_FIXED) {
            n->n = (size_t)avro_schema_fixed_size(s);
            n->min_size = n->n;
        } else if (type == AVRO_ENUM) {
            n->min_size = 1;
            for (size_t i = 0; i < count; i++)
                if ((n->names[i] = strdup(avro_schema_enum_get(s, (int)i))) == NULL)
                    goto oom;
        } else {
            json_t *fields = json_object_get(j, "fields");
            if ((n->is_id = calloc(count ? count : 1, sizeof(*n->is_id))) == NULL ||
                (n->defaults = calloc(count ? count : 1, sizeof(*n->defaults))) == NULL)
                goto oom;
            for (size_t i = 0; i < count; i++) {
                json_t *fj = json_array_get(fields, i);
                if ((n->names[i] = strdup(avro_schema_record_field_name(s, (int)i))) ==
                    NULL)
                    goto oom;
                n->kids[i] =
                    compile(b, avro_schema_record_field_get_by_index(s, (int)i),
                            json_object_get(fj, "type"), depth + 1);
                if (n->kids[i] == NULL)
                    return NULL;
                n->defaults[i] = json_object_get(fj, "default");
                n->is_id[i] = is_id_field(n->names[i]) && is_string_field(n->kids[i]);
                n->min_size += n->kids[i]->min_size;
            }
        }
        return n;
    }
    case AVRO_ARRAY:
    case AVRO_MAP:
        if ((n = node_new(b, type, 1, false)) == NULL)
            goto oom;
        n->n = 1;
        n->min_size = 1; /* the terminating zero count */
        n->kids[0] = type == AVRO_ARRAY
                         ? compile(b, avro_schema_array_items(s),
                                   json_object_get(j, "items"), depth + 1)
                         : compile(b, avro_schema_map_values(s),
                                   json_object_get(j, "values"), depth + 1);
        return n->kids[0] != NULL ? n : NULL;
    case AVRO_UNION: {
        size_t count = avro_schema_union_size(s);
        if ((n = node_new(b, type, count, false)) == NULL)
            goto oom;
        n->n = count;
        size_t min = SIZE_MAX;
        for (size_t i = 0; i < count; i++) {
            n->kids[i] = compile(b, avro_schema_union_branch(s, (int)i),
                                 json_array_get(j, i), depth + 1);
            if (n->kids[i] == NULL)
                return NULL;
            if (n->kids[i]->type == AVRO_NULL && n->null_branch < 0)
                n->null_branch = (int)i;
            if (n->kids[i]->min_size < min)
                min = n->kids[i]->min_size;
        }
        n->min_size = 1 + (count > 0 ? min : 0);
        return n;
    }
    default:
        if ((n = node_new(b, type, 0, false)) == NULL)
            goto oom;
        n->min_size = type == AVRO_NULL     ? 0
                      : type == AVRO_FLOAT  ? 4
                      : type == AVRO_DOUBLE ? 8
                                            : 1;
        return n;
    }
oom:
    pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_ENOMEM,
                  "out of memory compiling schemas");
    return NULL;
}

static bool is_optional(const pg_codec_node_t *n, avro_type_t t)
{
    return n->type == AVRO_UNION && n->n == 2 &&
           n->kids[BRANCH_NULL]->type == AVRO_NULL && n->kids[BRANCH_VALUE]->type == t;
}

/* The schema and the C struct must agree field by field. */
static int verify(const rec_desc_t *d, const pg_codec_node_t *n, char *errbuf,
                  size_t errlen)
{
    if (n->type != AVRO_RECORD || strcmp(n->name, d->full_name) != 0 ||
        n->n != d->n_fields)
        return pg_codec_fail(
            errbuf, errlen, PG_CODEC_EINTERNAL,
            "schema %s does not match its C struct (%zu fields expected)", d->full_name,
            d->n_fields);
    for (size_t i = 0; i < d->n_fields; i++) {
        const field_desc_t *f = &d->fields[i];
        const pg_codec_node_t *k = n->kids[i];
        bool ok = strcmp(n->names[i], f->name) == 0;
        const pg_codec_node_t *en = NULL;
        switch (f->kind) {
        case K_STR:
            ok = ok && k->type == AVRO_STRING;
            break;
        case K_OPT_STR:
            ok = ok && is_optional(k, AVRO_STRING);
            break;
        case K_LONG:
            ok = ok && k->type == AVRO_INT64;
            break;
        case K_ENUM:
            ok = ok && k->type == AVRO_ENUM;
            en = k;
            break;
        case K_OPT_ENUM:
            ok = ok && is_optional(k, AVRO_ENUM);
            en = ok ? k->kids[BRANCH_VALUE] : NULL;
            break;
        case K_OPT_DOUBLE:
            ok = ok && is_optional(k, AVRO_DOUBLE);
            break;
        case K_ARRAY:
            ok = ok && k->type == AVRO_ARRAY &&
                 verify(f->sub, k->kids[0], errbuf, errlen) == 0;
            break;
        case K_RECORD:
            ok = ok && verify(f->sub, k, errbuf, errlen) == 0;
            break;
        }
        if (ok && en != NULL && en->n != (size_t)f->n_symbols)
            ok = false;
        if (!ok)
            return pg_codec_fail(
                errbuf, errlen, PG_CODEC_EINTERNAL,
                "schema %s, field %zu (%s expected) does not match its C "
                "struct",
                d->full_name, i, f->name);
    }
    return 0;
}

static const char *embedded_lookup(const char *full_name, void *user)
{
    (void)user;
    for (size_t i = 0; i < pg_schema_file_count; i++)
        if (strcmp(pg_schema_files[i].full_name, full_name) == 0)
            return pg_schema_files[i].json;
    return NULL;
}

static int load_schema(pg_codec_t *c, pg_record_type_t t, char *errbuf, size_t errlen)
{
    pg_codec_schema_t *s = &c->rec[t];
    char full[128], detail[256];
    char *inlined = NULL;
    int rc = PG_CODEC_EINTERNAL;
    json_error_t jerr;
    build_t b = {.c = c, .errbuf = errbuf, .errlen = errlen};

    snprintf(full, sizeof(full), NS "%s", record_names[t]);
    const char *text = embedded_lookup(full, NULL);
    if (text == NULL) {
        pg_codec_fail(errbuf, errlen, rc, "schema %s is not embedded", full);
        goto out;
    }
    if (pg_avro_resolve(text, strlen(text), embedded_lookup, NULL, &inlined, &s->pcf,
                        detail, sizeof(detail)) != 0) {
        pg_codec_fail(errbuf, errlen, rc, "schema %s: %s", full, detail);
        goto out;
    }
    s->fingerprint = pg_avro_crc64(s->pcf, strlen(s->pcf));
    if (avro_schema_from_json_length(inlined, strlen(inlined), &s->schema) != 0) {
        pg_codec_fail(errbuf, errlen, rc, "schema %s: avro-c: %s", full,
                      avro_strerror());
        goto out;
    }
    if ((s->json = json_loads(inlined, 0, &jerr)) == NULL) {
        pg_codec_fail(errbuf, errlen, rc, "schema %s: %s", full, jerr.text);
        goto out;
    }
    if ((s->root = compile(&b, s->schema, s->json, 0)) == NULL)
        goto out;
    if (verify(&top_desc[t], s->root, errbuf, errlen) != 0)
        goto out;
    if ((s->iface = avro_generic_class_from_schema(s->schema)) == NULL ||
        avro_generic_value_new(s->iface, &s->value) != 0) {
        pg_codec_fail(errbuf, errlen, rc, "schema %s: avro-c: %s", full,
                      avro_strerror());
        goto out;
    }
    s->has_value = true;
    rc = 0;
out:
    free(inlined);
    return rc;
}

pg_codec_t *pg_codec_new(char *errbuf, size_t errlen)
{
    static const char nothing[1];
    pg_codec_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM, "out of memory");
        return NULL;
    }
    for (int t = 0; t < PG_REC_COUNT; t++) {
        if (load_schema(c, (pg_record_type_t)t, errbuf, errlen) != 0)
            goto fail;
        for (int u = 0; u < t; u++) {
            if (c->rec[u].fingerprint == c->rec[t].fingerprint) {
                pg_codec_fail(errbuf, errlen, PG_CODEC_EINTERNAL,
                              "%s and %s share a fingerprint", record_names[u],
                              record_names[t]);
                goto fail;
            }
        }
    }
    c->reader = avro_reader_memory(nothing, 0);
    c->writer = avro_writer_memory(nothing, 0);
    if (c->reader == NULL || c->writer == NULL) {
        pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM, "out of memory");
        goto fail;
    }
    return c;
fail:
    pg_codec_destroy(c);
    return NULL;
}

void pg_codec_destroy(pg_codec_t *c)
{
    if (c == NULL)
        return;
    for (int t = 0; t < PG_REC_COUNT; t++) {
        pg_codec_schema_t *s = &c->rec[t];
        if (s->has_value)
            avro_value_decref(&s->value);
        if (s->iface != NULL)
            avro_value_iface_decref(s->iface);
        if (s->schema != NULL)
            avro_schema_decref(s->schema);
        json_decref(s->json);
        free(s->pcf);
    }
    for (size_t i = 0; i < c->n_nodes; i++)
        node_free(c->nodes[i]);
    free(c->nodes);
    if (c->reader != NULL)
        avro_reader_free(c->reader);
    if (c->writer != NULL)
        avro_writer_free(c->writer);
    free(c);
}

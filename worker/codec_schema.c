/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The codec's schemas: the layout of every C struct of types.h, the embedded
 * .avsc files of every version (parsed by avro-c, fingerprinted over their
 * Parsing Canonical Form), and the compilation of each version's records into
 * the tables the reader, the writer and the JSON tools walk.
 *
 * Compiling is where Avro's schema resolution happens, once: a field of an
 * older version is matched to its slot by name, an enum symbol to its C value
 * by name, and every slot an older version lacks must be an optional field
 * whose current default is null (the zero the reader leaves). Anything else,
 * and any disagreement between the current schema and the structs, fails
 * pg_codec_new, so a schema edit that the structs do not follow stops the
 * start instead of misplacing fields at run time.
 */
#include "codec_internal.h"

#include "avro_pcf.h"
#include "schemas.h"

#include <avro.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define NS "io.pinguard.v1."

/* Enum members are read and written as int through memcpy. */
_Static_assert(sizeof(pg_veto_reason_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_origin_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_verdict_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_outcome_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_release_action_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_release_reason_t) == sizeof(int), "enum size");
_Static_assert(sizeof(pg_audit_action_t) == sizeof(int), "enum size");

/* ---- Struct layout of each record ------------------------------------- */

/* The id fields: a string, or a ["null", "string"] whose null means absent.
 * An empty id would make the policy look up, or answer for, nothing: every
 * record that carries one, input or output, must name it (SPEC, "Topics and
 * records"). The reader is the one place that enforces it. */
#define ID true
#define S(T, m, n, id)                                                                 \
    {                                                                                  \
        n, PG_K_STR, offsetof(T, m), 0, NULL, 0, id                                    \
    }
#define OS(T, m, n, id)                                                                \
    {                                                                                  \
        n, PG_K_OPT_STR, offsetof(T, m), 0, NULL, 0, id                                \
    }
#define L(T, m, n)                                                                     \
    {                                                                                  \
        n, PG_K_LONG, offsetof(T, m), 0, NULL, 0, false                                \
    }
#define OL(T, m, n)                                                                    \
    {                                                                                  \
        n, PG_K_OPT_LONG, offsetof(T, m), 0, NULL, 0, false                            \
    }
#define E(T, m, n, k)                                                                  \
    {                                                                                  \
        n, PG_K_ENUM, offsetof(T, m), 0, NULL, k, false                                \
    }
#define OE(T, m, has, n, k)                                                            \
    {                                                                                  \
        n, PG_K_OPT_ENUM, offsetof(T, m), offsetof(T, has), NULL, k, false             \
    }
#define OD(T, m, has, n)                                                               \
    {                                                                                  \
        n, PG_K_OPT_DOUBLE, offsetof(T, m), offsetof(T, has), NULL, 0, false           \
    }
#define A(T, m, cnt, n, d)                                                             \
    {                                                                                  \
        n, PG_K_ARRAY, offsetof(T, m), offsetof(T, cnt), &d, 0, false                  \
    }
#define R(T, m, n, d)                                                                  \
    {                                                                                  \
        n, PG_K_RECORD, offsetof(T, m), 0, &d, 0, false                                \
    }
#define LAYOUT(name, T, f, i)                                                          \
    {                                                                                  \
        NS name, sizeof(T), sizeof(f) / sizeof(f[0]), f, i                             \
    }

enum {
    L_DEVICE_REF,
    L_ADVICE,
    L_VETO,
    L_DRS_ADVICE,
    L_FILTERED,
    L_REQUEST,
    L_DECISION,
    L_RESULT,
    L_RELEASE,
    L_BINDINGS,
    L_AUDIT,
    L_COUNT
};

static const pg_codec_slot_t device_ref_slots[] = {
    S(pg_device_ref_t, device_uuid, "deviceUuid", ID),
    S(pg_device_ref_t, kind, "kind", false),
};
static const pg_codec_layout_t device_ref =
    LAYOUT("DeviceRef", pg_device_ref_t, device_ref_slots, L_DEVICE_REF);

static const pg_codec_slot_t advice_slots[] = {
    S(pg_migration_advice_t, vm_uuid, "vmUuid", ID),
    S(pg_migration_advice_t, src_host_uuid, "srcHostUuid", ID),
    S(pg_migration_advice_t, dst_host_uuid, "dstHostUuid", ID),
    OD(pg_migration_advice_t, score, has_score, "score"),
    OL(pg_migration_advice_t, bindings_generation, "bindingsGeneration"),
};
static const pg_codec_layout_t advice =
    LAYOUT("MigrationAdvice", pg_migration_advice_t, advice_slots, L_ADVICE);

static const pg_codec_slot_t veto_slots[] = {
    R(pg_veto_t, migration, "migration", advice),
    E(pg_veto_t, reason, "reason", PG_VETO_REASONS),
    A(pg_veto_t, devices, n_devices, "devices", device_ref),
};
static const pg_codec_layout_t veto = LAYOUT("Veto", pg_veto_t, veto_slots, L_VETO);

static const pg_codec_slot_t drs_advice_slots[] = {
    S(pg_drs_advice_t, advice_id, "adviceId", ID),
    S(pg_drs_advice_t, cluster_uuid, "clusterUuid", ID),
    L(pg_drs_advice_t, generated_at_ms, "generatedAtMs"),
    A(pg_drs_advice_t, migrations, n_migrations, "migrations", advice),
};
static const pg_codec_layout_t drs_advice =
    LAYOUT("DrsAdvice", pg_drs_advice_t, drs_advice_slots, L_DRS_ADVICE);

static const pg_codec_slot_t filtered_slots[] = {
    S(pg_filtered_advice_t, advice_id, "adviceId", ID),
    S(pg_filtered_advice_t, cluster_uuid, "clusterUuid", ID),
    L(pg_filtered_advice_t, generated_at_ms, "generatedAtMs"),
    L(pg_filtered_advice_t, decided_at_ms, "decidedAtMs"),
    A(pg_filtered_advice_t, approved, n_approved, "approved", advice),
    A(pg_filtered_advice_t, vetoed, n_vetoed, "vetoed", veto),
};
static const pg_codec_layout_t filtered =
    LAYOUT("FilteredAdvice", pg_filtered_advice_t, filtered_slots, L_FILTERED);

static const pg_codec_slot_t request_slots[] = {
    S(pg_migrate_request_t, request_id, "requestId", ID),
    S(pg_migrate_request_t, vm_uuid, "vmUuid", ID),
    S(pg_migrate_request_t, src_host_uuid, "srcHostUuid", ID),
    OS(pg_migrate_request_t, dst_host_uuid, "dstHostUuid", ID),
    E(pg_migrate_request_t, origin, "origin", 5),
    L(pg_migrate_request_t, requested_at_ms, "requestedAtMs"),
    OL(pg_migrate_request_t, min_generation, "minGeneration"),
};
static const pg_codec_layout_t request =
    LAYOUT("MigrateVmRequest", pg_migrate_request_t, request_slots, L_REQUEST);

static const pg_codec_slot_t decision_slots[] = {
    S(pg_migrate_decision_t, request_id, "requestId", ID),
    S(pg_migrate_decision_t, vm_uuid, "vmUuid", ID),
    S(pg_migrate_decision_t, src_host_uuid, "srcHostUuid", ID),
    OS(pg_migrate_decision_t, dst_host_uuid, "dstHostUuid", ID),
    E(pg_migrate_decision_t, origin, "origin", 5),
    E(pg_migrate_decision_t, verdict, "verdict", 2),
    OE(pg_migrate_decision_t, reason, has_reason, "reason", PG_VETO_REASONS),
    A(pg_migrate_decision_t, devices, n_devices, "devices", device_ref),
    L(pg_migrate_decision_t, decided_at_ms, "decidedAtMs"),
    OL(pg_migrate_decision_t, bindings_generation, "bindingsGeneration"),
};
static const pg_codec_layout_t decision =
    LAYOUT("MigrateVmDecision", pg_migrate_decision_t, decision_slots, L_DECISION);

static const pg_codec_slot_t result_slots[] = {
    S(pg_migration_result_t, request_id, "requestId", ID),
    S(pg_migration_result_t, vm_uuid, "vmUuid", ID),
    S(pg_migration_result_t, src_host_uuid, "srcHostUuid", ID),
    OS(pg_migration_result_t, dst_host_uuid, "dstHostUuid", ID),
    E(pg_migration_result_t, outcome, "outcome", 2),
    OS(pg_migration_result_t, observed_host_uuid, "observedHostUuid", ID),
    OS(pg_migration_result_t, error, "error", false),
    L(pg_migration_result_t, finished_at_ms, "finishedAtMs"),
};
static const pg_codec_layout_t result =
    LAYOUT("MigrationResult", pg_migration_result_t, result_slots, L_RESULT);

static const pg_codec_slot_t release_slots[] = {
    S(pg_release_decision_t, request_id, "requestId", ID),
    S(pg_release_decision_t, vm_uuid, "vmUuid", ID),
    E(pg_release_decision_t, outcome, "outcome", 2),
    E(pg_release_decision_t, action, "action", 2),
    E(pg_release_decision_t, reason, "reason", PG_RELEASE_REASONS),
    S(pg_release_decision_t, from_host_uuid, "fromHostUuid", ID),
    OS(pg_release_decision_t, dst_host_uuid, "dstHostUuid", ID),
    A(pg_release_decision_t, devices, n_devices, "devices", device_ref),
    L(pg_release_decision_t, decided_at_ms, "decidedAtMs"),
    OL(pg_release_decision_t, bindings_generation, "bindingsGeneration"),
};
static const pg_codec_layout_t release =
    LAYOUT("DeviceReleaseDecision", pg_release_decision_t, release_slots, L_RELEASE);

static const pg_codec_slot_t bindings_slots[] = {
    S(pg_vm_bindings_t, vm_uuid, "vmUuid", ID),
    OS(pg_vm_bindings_t, host_uuid, "hostUuid", ID),
    A(pg_vm_bindings_t, devices, n_devices, "devices", device_ref),
    L(pg_vm_bindings_t, generation, "generation"),
    L(pg_vm_bindings_t, updated_at_ms, "updatedAtMs"),
};
static const pg_codec_layout_t bindings =
    LAYOUT("VmBindings", pg_vm_bindings_t, bindings_slots, L_BINDINGS);

static const pg_codec_slot_t audit_slots[] = {
    S(pg_audit_event_t, event_id, "eventId", ID),
    L(pg_audit_event_t, at_ms, "atMs"),
    S(pg_audit_event_t, actor, "actor", false),
    E(pg_audit_event_t, action, "action", PG_AUDIT_ACTIONS),
    OS(pg_audit_event_t, vm_uuid, "vmUuid", ID),
    S(pg_audit_event_t, detail, "detail", false),
};
static const pg_codec_layout_t audit =
    LAYOUT("AuditEvent", pg_audit_event_t, audit_slots, L_AUDIT);

const pg_codec_layout_t *const pg_codec_layouts[] = {
    &device_ref, &advice, &veto,    &drs_advice, &filtered, &request,
    &decision,   &result, &release, &bindings,   &audit,
};
const size_t pg_codec_layout_count = L_COUNT;
_Static_assert(sizeof(pg_codec_layouts) / sizeof(pg_codec_layouts[0]) == L_COUNT,
               "one entry per layout");

/* Indexed by pg_record_type_t; each struct is the union member of pg_record_t. */
const pg_codec_layout_t *const pg_codec_top[PG_REC_COUNT] = {
    &drs_advice, &filtered, &request, &decision, &result, &release, &bindings, &audit,
};

static const char *const record_names[PG_REC_COUNT] = {
    "DrsAdvice",       "FilteredAdvice",        "MigrateVmRequest", "MigrateVmDecision",
    "MigrationResult", "DeviceReleaseDecision", "VmBindings",       "AuditEvent",
};

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
        return -1;
    if (strncmp(name, NS, strlen(NS)) == 0)
        name += strlen(NS);
    for (int t = 0; t < PG_REC_COUNT; t++) {
        if (strcmp(name, record_names[t]) == 0) {
            *out = (pg_record_type_t)t;
            return 0;
        }
    }
    return -1;
}

const pg_codec_schema_t *pg_codec_schema(const pg_codec_t *c, int version,
                                         pg_record_type_t t)
{
    if (version == 0)
        version = PG_CODEC_VERSION;
    if (c == NULL || version < 1 || version > PG_CODEC_VERSION ||
        (unsigned)t >= PG_REC_COUNT || c->schemas[version - 1][t].root == NULL)
        return NULL;
    return &c->schemas[version - 1][t];
}

uint64_t pg_codec_fingerprint(const pg_codec_t *c, int version, pg_record_type_t t)
{
    const pg_codec_schema_t *s = pg_codec_schema(c, version, t);
    return s != NULL ? s->fingerprint : 0;
}

const char *pg_codec_canonical_form(const pg_codec_t *c, int version,
                                    pg_record_type_t t)
{
    const pg_codec_schema_t *s = pg_codec_schema(c, version, t);
    return s != NULL ? s->pcf : NULL;
}

const char *pg_codec_err_name(int code)
{
    static const char *const names[] = {
        "OK",
        "EMPTY_MESSAGE",
        "BAD_MAGIC",
        "UNKNOWN_FINGERPRINT",
        "UNEXPECTED_RECORD",
        "TRUNCATED_BODY",
        "BAD_LENGTH",
        "BAD_VARINT",
        "INVALID_UTF8",
        "BAD_UNION_BRANCH",
        "BAD_ENUM_SYMBOL",
        "TRAILING_BYTES",
        "LIMIT_EXCEEDED",
        "INVALID_FIELD",
        "OUT_OF_MEMORY",
        "INTERNAL_ERROR",
    };
    if (code > 0 || -code >= (int)(sizeof(names) / sizeof(names[0])))
        return "UNKNOWN_ERROR";
    return names[-code];
}

const pg_codec_schema_t *pg_codec_lookup(const pg_codec_t *c, const uint8_t *buf,
                                         size_t len, int *version_out,
                                         pg_record_type_t *type_out, int *rc_out,
                                         char *errbuf, size_t errlen)
{
    if (len == 0 || buf == NULL) {
        *rc_out = pg_codec_fail(errbuf, errlen, PG_CODEC_EEMPTY, "empty message");
        return NULL;
    }
    if (len < 2 || buf[0] != 0xc3 || buf[1] != 0x01) {
        *rc_out = pg_codec_fail(
            errbuf, errlen, PG_CODEC_EMAGIC,
            "message starts with %02X %02X, not the single-object marker C3 01", buf[0],
            len > 1 ? buf[1] : 0);
        return NULL;
    }
    if (len < PG_CODEC_HEADER_LEN) {
        *rc_out = pg_codec_fail(
            errbuf, errlen, PG_CODEC_EMAGIC,
            "message of %zu bytes is shorter than the 10-byte header", len);
        return NULL;
    }
    uint64_t fp = 0;
    for (int i = 7; i >= 0; i--)
        fp = (fp << 8) | buf[2 + i];
    /* The current version first: it is what upgraded producers write. */
    for (int v = PG_CODEC_VERSION; v >= 1; v--) {
        for (int t = 0; t < PG_REC_COUNT; t++) {
            const pg_codec_schema_t *s = &c->schemas[v - 1][t];
            if (s->root != NULL && s->fingerprint == fp) {
                *version_out = v;
                *type_out = (pg_record_type_t)t;
                *rc_out = 0;
                return s;
            }
        }
    }
    *rc_out = pg_codec_fail(errbuf, errlen, PG_CODEC_EFINGERPRINT,
                            "fingerprint 0x%016" PRIx64 " matches no known schema", fp);
    return NULL;
}

/* ---- Compiling one version's schemas ------------------------------------ */

typedef struct {
    pg_codec_t *c;
    int version;
    /* Named types already compiled in this version: one table each. */
    struct {
        avro_schema_t schema;
        const void *table;
    } memo[32];
    size_t n_memo;
    /* Per layout and slot: the current schema's field has "default": null. */
    bool (*null_default)[PG_CODEC_MAX_SLOTS];
    /* The current version's enums, by full name: their order is the C one. */
    const pg_codec_enum_t **current_enums;
    size_t *n_current_enums;
    char *errbuf;
    size_t errlen;
} build_t;

static int oom(build_t *b)
{
    return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_ENOMEM,
                         "out of memory compiling schemas");
}

static char *full_name_of(build_t *b, avro_schema_t s)
{
    const char *ns = avro_schema_namespace(s), *name = avro_schema_name(s);
    size_t n = (ns != NULL ? strlen(ns) + 1 : 0) + strlen(name) + 1;
    char *full = pg_arena_alloc(b->c->tables, n);
    if (full != NULL)
        snprintf(full, n, "%s%s%s", ns != NULL ? ns : "", ns != NULL ? "." : "", name);
    return full;
}

static const void *memo_get(build_t *b, avro_schema_t s)
{
    for (size_t i = 0; i < b->n_memo; i++)
        if (b->memo[i].schema == s)
            return b->memo[i].table;
    return NULL;
}

static int memo_put(build_t *b, avro_schema_t s, const void *table)
{
    if (b->n_memo == sizeof(b->memo) / sizeof(b->memo[0]))
        return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                             "too many named types in one schema");
    b->memo[b->n_memo].schema = s;
    b->memo[b->n_memo++].table = table;
    return 0;
}

static avro_schema_t deref(avro_schema_t s)
{
    return avro_typeof(s) == AVRO_LINK ? avro_schema_link_target(s) : s;
}

/* The value branch of ["null", X], or NULL when s is not of that shape. */
static avro_schema_t optional_of(avro_schema_t s, avro_type_t x)
{
    if (avro_typeof(s) != AVRO_UNION || avro_schema_union_size(s) != 2 ||
        avro_typeof(avro_schema_union_branch(s, PG_CODEC_BRANCH_NULL)) != AVRO_NULL)
        return NULL;
    avro_schema_t v = deref(avro_schema_union_branch(s, PG_CODEC_BRANCH_VALUE));
    return avro_typeof(v) == x ? v : NULL;
}

static int compile_enum(build_t *b, avro_schema_t s, const pg_codec_slot_t *slot,
                        const pg_codec_enum_t **out)
{
    if ((*out = memo_get(b, s)) != NULL)
        return 0;
    pg_arena_t *a = b->c->tables;
    pg_codec_enum_t *e = pg_arena_calloc(a, 1, sizeof(*e));
    if (e == NULL || (e->name = full_name_of(b, s)) == NULL)
        return oom(b);
    e->n = (size_t)avro_schema_enum_number_of_symbols(s);
    e->n_c = (size_t)slot->n_symbols;
    const char **symbols = pg_arena_calloc(a, e->n ? e->n : 1, sizeof(*symbols));
    int *to_c = pg_arena_calloc(a, e->n ? e->n : 1, sizeof(*to_c));
    int *from_c = pg_arena_calloc(a, e->n_c ? e->n_c : 1, sizeof(*from_c));
    if (symbols == NULL || to_c == NULL || from_c == NULL)
        return oom(b);
    for (size_t i = 0; i < e->n; i++)
        if ((symbols[i] = pg_arena_strdup(a, avro_schema_enum_get(s, (int)i))) == NULL)
            return oom(b);
    e->symbols = symbols;
    e->to_c = to_c;
    e->from_c = from_c;
    *out = e;

    /* The current version defines the C order; an older one maps onto it. */
    const pg_codec_enum_t *cur = NULL;
    for (size_t i = 0; i < *b->n_current_enums; i++)
        if (strcmp(b->current_enums[i]->name, e->name) == 0)
            cur = b->current_enums[i];
    if (b->version == PG_CODEC_VERSION) {
        if (e->n != e->n_c)
            return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                                 "enum %s has %zu symbols, its C enum %zu", e->name,
                                 e->n, e->n_c);
        if (*b->n_current_enums == L_COUNT * PG_CODEC_MAX_SLOTS)
            return oom(b);
        b->current_enums[(*b->n_current_enums)++] = e;
        cur = e;
    }
    if (cur == NULL)
        return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                             "enum %s of version %d is not in the current schemas",
                             e->name, b->version);
    for (size_t k = 0; k < e->n_c; k++)
        from_c[k] = -1;
    for (size_t i = 0; i < e->n; i++) {
        size_t k = 0;
        while (k < cur->n && strcmp(cur->symbols[k], symbols[i]) != 0)
            k++;
        if (k == cur->n)
            return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                                 "symbol %s of %s in version %d is not in the current "
                                 "schemas",
                                 symbols[i], e->name, b->version);
        to_c[i] = (int)k;
        from_c[k] = (int)i;
    }
    return memo_put(b, s, e);
}

static int compile_rec(build_t *b, avro_schema_t s, json_t *j,
                       const pg_codec_layout_t *layout, const pg_codec_rec_t **out,
                       int depth);

/* One field of a record: its schema must be what its slot's kind stores. */
static int compile_field(build_t *b, const pg_codec_rec_t *r, avro_schema_t fs,
                         json_t *fj, pg_codec_field_t *f, int depth)
{
    const pg_codec_slot_t *slot = f->slot;
    avro_schema_t v = NULL;
    fs = deref(fs);
    json_t *tj = json_object_get(fj, "type");
    bool ok = false;
    switch (slot->kind) {
    case PG_K_STR:
        ok = avro_typeof(fs) == AVRO_STRING;
        break;
    case PG_K_LONG:
        ok = avro_typeof(fs) == AVRO_INT64;
        break;
    case PG_K_OPT_STR:
        ok = optional_of(fs, AVRO_STRING) != NULL;
        break;
    case PG_K_OPT_LONG:
        ok = optional_of(fs, AVRO_INT64) != NULL;
        break;
    case PG_K_OPT_DOUBLE:
        ok = optional_of(fs, AVRO_DOUBLE) != NULL;
        break;
    case PG_K_ENUM:
        if ((ok = avro_typeof(fs) == AVRO_ENUM))
            return compile_enum(b, fs, slot, &f->en);
        break;
    case PG_K_OPT_ENUM:
        if ((ok = (v = optional_of(fs, AVRO_ENUM)) != NULL))
            return compile_enum(b, v, slot, &f->en);
        break;
    case PG_K_ARRAY:
        if ((ok = avro_typeof(fs) == AVRO_ARRAY))
            return compile_rec(b, deref(avro_schema_array_items(fs)),
                               json_object_get(tj, "items"), slot->sub, &f->sub,
                               depth + 1);
        break;
    case PG_K_RECORD:
        return compile_rec(b, fs, tj, slot->sub, &f->sub, depth + 1);
    }
    if (!ok)
        return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                             "field %s of %s in version %d does not have the type "
                             "its C struct stores",
                             f->name, r->name, b->version);
    return 0;
}

static size_t field_min_size(const pg_codec_field_t *f)
{
    /* Every kind takes at least one byte (a varint, a branch, a count); a
     * nested record takes what its fields take. */
    return f->slot->kind == PG_K_RECORD ? f->sub->min_size : 1;
}

static int compile_rec(build_t *b, avro_schema_t s, json_t *j,
                       const pg_codec_layout_t *layout, const pg_codec_rec_t **out,
                       int depth)
{
    s = deref(s);
    if ((*out = memo_get(b, s)) != NULL)
        return 0;
    if (depth > PG_MAX_DEPTH || avro_typeof(s) != AVRO_RECORD)
        return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                             "%s in version %d is not a record its C struct can hold",
                             layout->full_name, b->version);
    pg_arena_t *a = b->c->tables;
    pg_codec_rec_t *r = pg_arena_calloc(a, 1, sizeof(*r));
    if (r == NULL || (r->name = full_name_of(b, s)) == NULL)
        return oom(b);
    if (strcmp(r->name, layout->full_name) != 0)
        return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                             "version %d has %s where its C struct holds %s",
                             b->version, r->name, layout->full_name);
    r->layout = layout;
    r->n = avro_schema_record_size(s);
    pg_codec_field_t *fields = pg_arena_calloc(a, r->n ? r->n : 1, sizeof(*fields));
    if (fields == NULL)
        return oom(b);
    r->fields = fields;
    *out = r;
    int rc = memo_put(b, s, r);
    if (rc != 0)
        return rc;

    bool seen[PG_CODEC_MAX_SLOTS] = {false};
    json_t *fjs = json_object_get(j, "fields");
    for (size_t i = 0; i < r->n; i++) {
        pg_codec_field_t *f = &fields[i];
        json_t *fj = json_array_get(fjs, i);
        json_t *dflt = json_object_get(fj, "default");
        if ((f->name = pg_arena_strdup(a, avro_schema_record_field_name(s, (int)i))) ==
            NULL)
            return oom(b);
        size_t k = 0;
        while (k < layout->n_slots && strcmp(layout->slots[k].name, f->name) != 0)
            k++;
        if (k == layout->n_slots)
            return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                                 "field %s of %s in version %d has no place in its C "
                                 "struct",
                                 f->name, r->name, b->version);
        if (seen[k])
            return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                                 "field %s of %s appears twice", f->name, r->name);
        seen[k] = true;
        f->slot = &layout->slots[k];
        f->null_default = dflt != NULL && json_is_null(dflt);
        if (dflt != NULL && !f->null_default)
            return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                                 "field %s of %s: only null defaults are supported",
                                 f->name, r->name);
        if (b->version == PG_CODEC_VERSION)
            b->null_default[layout->index][k] = f->null_default;
        if ((rc = compile_field(b, r, avro_schema_record_field_get_by_index(s, (int)i),
                                fj, f, depth)) != 0)
            return rc;
        r->min_size += field_min_size(f);
    }
    /* Schema resolution: a slot this writer lacks is left zero, which must be
     * what the current schema gives it (an optional field, default null). The
     * current version itself covers every slot. */
    for (size_t k = 0; k < layout->n_slots; k++) {
        if (seen[k])
            continue;
        const pg_codec_slot_t *slot = &layout->slots[k];
        bool optional = slot->kind == PG_K_OPT_STR || slot->kind == PG_K_OPT_LONG ||
                        slot->kind == PG_K_OPT_ENUM || slot->kind == PG_K_OPT_DOUBLE;
        if (b->version == PG_CODEC_VERSION || !optional ||
            !b->null_default[layout->index][k])
            return pg_codec_fail(b->errbuf, b->errlen, PG_CODEC_EINTERNAL,
                                 "%s of version %d lacks field %s, which has no null "
                                 "default",
                                 r->name, b->version, slot->name);
    }
    return 0;
}

typedef struct {
    int version;
} lookup_ctx_t;

static const char *embedded_lookup(const char *full_name, void *user)
{
    const lookup_ctx_t *ctx = user;
    for (size_t i = 0; i < pg_schema_file_count; i++) {
        int v =
            pg_schema_files[i].version ? pg_schema_files[i].version : PG_CODEC_VERSION;
        if (v == ctx->version && strcmp(pg_schema_files[i].full_name, full_name) == 0)
            return pg_schema_files[i].json;
    }
    return NULL;
}

/* Loads one record of one version. Returns 0 when the version has no such
 * record (s->root stays NULL), or the first error. */
static int load_schema(build_t *b, pg_record_type_t t)
{
    pg_codec_t *c = b->c;
    pg_codec_schema_t *s = &c->schemas[b->version - 1][t];
    lookup_ctx_t ctx = {b->version};
    char full[128], detail[256];
    char *inlined = NULL, *pcf = NULL;
    avro_schema_t schema = NULL;
    json_t *json = NULL;
    json_error_t jerr;
    int rc = PG_CODEC_EINTERNAL;

    snprintf(full, sizeof(full), NS "%s", record_names[t]);
    const char *text = embedded_lookup(full, &ctx);
    if (text == NULL) /* a record that version did not have */
        return b->version == PG_CODEC_VERSION
                   ? pg_codec_fail(b->errbuf, b->errlen, rc,
                                   "schema %s is not embedded", full)
                   : 0;
    if (pg_avro_resolve(text, strlen(text), embedded_lookup, &ctx, &inlined, &pcf,
                        detail, sizeof(detail)) != 0) {
        pg_codec_fail(b->errbuf, b->errlen, rc, "schema %s (version %d): %s", full,
                      b->version, detail);
        goto out;
    }
    if (avro_schema_from_json_length(inlined, strlen(inlined), &schema) != 0) {
        pg_codec_fail(b->errbuf, b->errlen, rc, "schema %s (version %d): avro-c: %s",
                      full, b->version, avro_strerror());
        goto out;
    }
    if ((json = json_loads(inlined, 0, &jerr)) == NULL) {
        pg_codec_fail(b->errbuf, b->errlen, rc, "schema %s: %s", full, jerr.text);
        goto out;
    }
    s->fingerprint = pg_avro_crc64(pcf, strlen(pcf));
    s->version = b->version;
    if ((s->pcf = pg_arena_strdup(c->tables, pcf)) == NULL) {
        rc = oom(b);
        goto out;
    }
    b->n_memo = 0; /* avro-c schemas are per top-level record */
    rc = compile_rec(b, schema, json, pg_codec_top[t], &s->root, 0);
out:
    if (rc != 0)
        s->root = NULL;
    if (schema != NULL)
        avro_schema_decref(schema);
    json_decref(json);
    free(inlined);
    free(pcf);
    return rc;
}

pg_codec_t *pg_codec_new(char *errbuf, size_t errlen)
{
    const pg_codec_enum_t *current_enums[L_COUNT * PG_CODEC_MAX_SLOTS];
    size_t n_current_enums = 0;
    for (size_t i = 0; i < L_COUNT; i++)
        if (pg_codec_layouts[i]->n_slots > PG_CODEC_MAX_SLOTS) {
            pg_codec_fail(errbuf, errlen, PG_CODEC_EINTERNAL, "%s has too many fields",
                          pg_codec_layouts[i]->full_name);
            return NULL;
        }
    pg_codec_t *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->tables = pg_arena_new(1 << 15)) == NULL) {
        free(c);
        pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM, "out of memory");
        return NULL;
    }
    bool(*dflt)[PG_CODEC_MAX_SLOTS] = calloc(L_COUNT, sizeof(*dflt));
    if (dflt == NULL) {
        pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM, "out of memory");
        goto fail;
    }
    /* The current version first: it fixes the defaults and the enum order
     * that the older ones are resolved against. */
    for (int v = PG_CODEC_VERSION; v >= 1; v--) {
        build_t b = {.c = c,
                     .version = v,
                     .null_default = dflt,
                     .current_enums = current_enums,
                     .n_current_enums = &n_current_enums,
                     .errbuf = errbuf,
                     .errlen = errlen};
        for (int t = 0; t < PG_REC_COUNT; t++)
            if (load_schema(&b, (pg_record_type_t)t) != 0)
                goto fail;
    }
    /* A fingerprint must name one schema: the reader picks by it alone. */
    for (int i = 0; i < PG_CODEC_VERSION * PG_REC_COUNT; i++) {
        const pg_codec_schema_t *x = &c->schemas[i / PG_REC_COUNT][i % PG_REC_COUNT];
        for (int k = 0; k < i && x->root != NULL; k++) {
            const pg_codec_schema_t *y =
                &c->schemas[k / PG_REC_COUNT][k % PG_REC_COUNT];
            if (y->root != NULL && y->fingerprint == x->fingerprint &&
                strcmp(y->pcf, x->pcf) != 0) {
                pg_codec_fail(errbuf, errlen, PG_CODEC_EINTERNAL,
                              "%s and %s share a fingerprint", x->root->name,
                              y->root->name);
                goto fail;
            }
        }
    }
    free(dflt);
    return c;
fail:
    free(dflt);
    pg_codec_destroy(c);
    return NULL;
}

void pg_codec_destroy(pg_codec_t *c)
{
    if (c == NULL)
        return;
    pg_arena_destroy(c->tables);
    free(c);
}

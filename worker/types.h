/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The domain model shared by codec, policy and worker: the SPEC's records as
 * plain C structs. Enum values equal the Avro symbol index, so the codec maps
 * them without a table. Strings are NUL-terminated and never owned by the
 * struct: whoever fills one states who owns its storage (usually an arena).
 * A NULL pointer stands for an Avro null in a union{null,string}.
 */
#ifndef PG_TYPES_H
#define PG_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest string pinguard accepts anywhere: an id or string field of an
 * input (the ceiling of input.max.string.length and the codec's default), a
 * VM uuid naming cache keys, a host, device uuid or kind read from the cache.
 * One limit, so that whatever one module admits the next one takes. */
#define PG_MAX_STRING 1024
#define PG_MAX_STRING_TEXT "1024" /* the same, for the settings table's default */

/* The SPEC's three input streams, in the order of every per-input table
 * (topics, counters, expected record types). */
typedef enum {
    PG_IN_ADVICE = 0,
    PG_IN_REQUESTS,
    PG_IN_RESULTS,
    PG_IN_COUNT
} pg_input_t;

typedef enum {
    PG_VETO_HOST_BOUND_DEVICE = 0,
    PG_VETO_OPERATOR_PIN = 1,
    PG_VETO_UNKNOWN_VM = 2,
    PG_VETO_UNKNOWN_DEVICE_KIND = 3,
    PG_VETO_STALE_BINDINGS = 4, /* v2 */
    PG_VETO_QUARANTINED = 5,    /* v2 */
} pg_veto_reason_t;
#define PG_VETO_REASONS 6 /* symbols of pg_veto_reason_t */

typedef enum {
    PG_ORIGIN_DRS = 0,
    PG_ORIGIN_HA = 1,
    PG_ORIGIN_API = 2,
    PG_ORIGIN_MAINTENANCE = 3,
    PG_ORIGIN_OTHER = 4,
} pg_origin_t;

typedef enum { PG_VERDICT_APPROVED = 0, PG_VERDICT_VETOED = 1 } pg_verdict_t;

typedef enum { PG_OUTCOME_SUCCEEDED = 0, PG_OUTCOME_FAILED = 1 } pg_outcome_t;

typedef enum { PG_ACTION_RELEASE = 0, PG_ACTION_KEEP = 1 } pg_release_action_t;

typedef enum {
    PG_RELEASE_CONFIRMED_ON_DESTINATION = 0,
    PG_RELEASE_NO_DESTINATION = 1,
    PG_RELEASE_STILL_ON_SOURCE = 2,
    PG_RELEASE_PLACEMENT_UNCONFIRMED = 3,
    PG_RELEASE_PLACEMENT_CONFLICT = 4,
} pg_release_reason_t;
#define PG_RELEASE_REASONS 5 /* symbols of pg_release_reason_t */

/* v2: what an operator edit or a quarantine change was (AuditEvent). */
typedef enum {
    PG_AUDIT_BIND = 0,
    PG_AUDIT_UNBIND = 1,
    PG_AUDIT_PLACE = 2,
    PG_AUDIT_PIN = 3,
    PG_AUDIT_UNPIN = 4,
    PG_AUDIT_IMPORT = 5,
    PG_AUDIT_QUARANTINE = 6,
    PG_AUDIT_UNQUARANTINE = 7,
} pg_audit_action_t;
#define PG_AUDIT_ACTIONS 8 /* symbols of pg_audit_action_t */

/* A union{null,long}: present false is Avro null. The v2 binding generation
 * (bindingsGeneration, minGeneration) travels in one of these. */
typedef struct {
    bool present;
    int64_t value;
} pg_opt_long_t;

typedef struct {
    const char *device_uuid;
    const char *kind;
} pg_device_ref_t;

typedef struct {
    const char *vm_uuid;
    const char *src_host_uuid;
    const char *dst_host_uuid;
    bool has_score; /* false: score is Avro null */
    double score;
    pg_opt_long_t bindings_generation; /* v2; ignored in DrsAdvice input */
} pg_migration_advice_t;

typedef struct {
    const char *advice_id;
    const char *cluster_uuid;
    int64_t generated_at_ms;
    size_t n_migrations;
    const pg_migration_advice_t *migrations;
} pg_drs_advice_t;

typedef struct {
    pg_migration_advice_t migration;
    pg_veto_reason_t reason;
    size_t n_devices;
    const pg_device_ref_t *devices;
} pg_veto_t;

typedef struct {
    const char *advice_id;
    const char *cluster_uuid;
    int64_t generated_at_ms;
    int64_t decided_at_ms;
    size_t n_approved;
    const pg_migration_advice_t *approved;
    size_t n_vetoed;
    const pg_veto_t *vetoed;
} pg_filtered_advice_t;

typedef struct {
    const char *request_id;
    const char *vm_uuid;
    const char *src_host_uuid;
    const char *dst_host_uuid; /* nullable */
    pg_origin_t origin;
    int64_t requested_at_ms;
    pg_opt_long_t min_generation; /* v2: the dispatch fence */
} pg_migrate_request_t;

typedef struct {
    const char *request_id;
    const char *vm_uuid;
    const char *src_host_uuid;
    const char *dst_host_uuid; /* nullable */
    pg_origin_t origin;
    pg_verdict_t verdict;
    bool has_reason; /* false: reason is Avro null (approvals) */
    pg_veto_reason_t reason;
    size_t n_devices;
    const pg_device_ref_t *devices;
    int64_t decided_at_ms;
    pg_opt_long_t bindings_generation; /* v2 */
} pg_migrate_decision_t;

typedef struct {
    const char *request_id;
    const char *vm_uuid;
    const char *src_host_uuid;
    const char *dst_host_uuid; /* nullable */
    pg_outcome_t outcome;
    const char *observed_host_uuid; /* nullable */
    const char *error;              /* nullable */
    int64_t finished_at_ms;
} pg_migration_result_t;

typedef struct {
    const char *request_id;
    const char *vm_uuid;
    pg_outcome_t outcome;
    pg_release_action_t action;
    pg_release_reason_t reason;
    const char *from_host_uuid;
    const char *dst_host_uuid; /* nullable */
    size_t n_devices;
    const pg_device_ref_t *devices;
    int64_t decided_at_ms;
    pg_opt_long_t bindings_generation; /* v2 */
} pg_release_decision_t;

/* v2: the complete binding state of one VM on the feed (device.bindings). */
typedef struct {
    const char *vm_uuid;
    const char *host_uuid; /* nullable */
    size_t n_devices;
    const pg_device_ref_t *devices;
    int64_t generation;
    int64_t updated_at_ms;
} pg_vm_bindings_t;

/* v2: one entry of the audit trail (pinguard.audit). */
typedef struct {
    const char *event_id;
    int64_t at_ms;
    const char *actor;
    pg_audit_action_t action;
    const char *vm_uuid; /* nullable */
    const char *detail;
} pg_audit_event_t;

/* The top-level message records; the order is the schema table's. */
typedef enum {
    PG_REC_DRS_ADVICE = 0,
    PG_REC_FILTERED_ADVICE,
    PG_REC_MIGRATE_REQUEST,
    PG_REC_MIGRATE_DECISION,
    PG_REC_MIGRATION_RESULT,
    PG_REC_RELEASE_DECISION,
    PG_REC_VM_BINDINGS, /* v2 */
    PG_REC_AUDIT_EVENT, /* v2 */
    PG_REC_COUNT
} pg_record_type_t;

typedef struct {
    pg_record_type_t type;
    int version; /* schema version of the writer (decode sets it; encode ignores it) */
    union {
        pg_drs_advice_t drs_advice;
        pg_filtered_advice_t filtered_advice;
        pg_migrate_request_t migrate_request;
        pg_migrate_decision_t migrate_decision;
        pg_migration_result_t migration_result;
        pg_release_decision_t release_decision;
        pg_vm_bindings_t vm_bindings;
        pg_audit_event_t audit_event;
    } u;
} pg_record_t;

/* Avro symbol names, for logs and the CLI. Never NULL for a valid value. */
const char *pg_veto_reason_name(pg_veto_reason_t r);
const char *pg_origin_name(pg_origin_t o);
const char *pg_verdict_name(pg_verdict_t v);
const char *pg_outcome_name(pg_outcome_t o);
const char *pg_release_action_name(pg_release_action_t a);
const char *pg_release_reason_name(pg_release_reason_t r);
const char *pg_audit_action_name(pg_audit_action_t a);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Symbol names of the SPEC's enums, index-aligned with the Avro schemas.
 */
#include "types.h"

#define PG_NAME(table, v)                                                              \
    ((size_t)(v) < sizeof(table) / sizeof(table[0]) ? table[(size_t)(v)] : "INVALID")

static const char *const veto_reasons[] = {"HOST_BOUND_DEVICE", "OPERATOR_PIN",
                                           "UNKNOWN_VM",        "UNKNOWN_DEVICE_KIND",
                                           "STALE_BINDINGS",    "QUARANTINED"};
static const char *const origins[] = {"DRS", "HA", "API", "MAINTENANCE", "OTHER"};
static const char *const verdicts[] = {"APPROVED", "VETOED"};
static const char *const outcomes[] = {"SUCCEEDED", "FAILED"};
static const char *const actions[] = {"RELEASE", "KEEP"};
static const char *const release_reasons[] = {
    "CONFIRMED_ON_DESTINATION", "NO_DESTINATION", "STILL_ON_SOURCE",
    "PLACEMENT_UNCONFIRMED", "PLACEMENT_CONFLICT"};
static const char *const audit_actions[] = {
    "BIND", "UNBIND", "PLACE", "PIN", "UNPIN", "IMPORT", "QUARANTINE", "UNQUARANTINE"};

const char *pg_veto_reason_name(pg_veto_reason_t r)
{
    return PG_NAME(veto_reasons, r);
}

const char *pg_origin_name(pg_origin_t o)
{
    return PG_NAME(origins, o);
}

const char *pg_verdict_name(pg_verdict_t v)
{
    return PG_NAME(verdicts, v);
}

const char *pg_outcome_name(pg_outcome_t o)
{
    return PG_NAME(outcomes, o);
}

const char *pg_release_action_name(pg_release_action_t a)
{
    return PG_NAME(actions, a);
}

const char *pg_release_reason_name(pg_release_reason_t r)
{
    return PG_NAME(release_reasons, r);
}

const char *pg_audit_action_name(pg_audit_action_t a)
{
    return PG_NAME(audit_actions, a);
}

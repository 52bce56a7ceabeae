/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The decision rules of the SPEC, and nothing else: pure functions over values
 * the caller has already read. No I/O, no allocation, no clock. Only this
 * module decides; every other module gathers inputs or ships outputs.
 */
#ifndef PG_POLICY_H
#define PG_POLICY_H

#include "types.h"

typedef enum {
    PG_KIND_PCI = 0,
    PG_KIND_DGPU,
    PG_KIND_MDEV,
    PG_KIND_USB,
    PG_KIND_PCI_VF,
    PG_KIND_PCI_VF2,
    PG_KIND_PCI_VDPA,
    PG_KIND_UNKNOWN,
} pg_device_kind_t;

/* Exact, case-sensitive match on the SPEC's kind strings; anything else,
 * NULL included, is PG_KIND_UNKNOWN. */
pg_device_kind_t pg_policy_kind_parse(const char *kind);
/* Whether a kind pins its VM to the host. Unknown kinds pin (fail closed). */
bool pg_policy_kind_pins(pg_device_kind_t kind);

/* Kinds a site declares (device.kinds: "gpu-vf=pins, nvme-migratable=migrates"),
 * which extend the built-in table or redeclare one of its kinds. */
enum { PG_POLICY_MAX_SITE_KINDS = 64, PG_POLICY_MAX_KIND_LEN = 63 };
typedef struct {
    char kind[PG_POLICY_MAX_KIND_LEN + 1];
    bool pins;
} pg_site_kind_t;
typedef struct {
    pg_site_kind_t kinds[PG_POLICY_MAX_SITE_KINDS];
    size_t n;
} pg_site_kinds_t;

/* Parses a device.kinds value: comma-separated kind=pins|migrates entries,
 * blanks around each ignored, an empty value declaring nothing. A kind is
 * 1 to PG_POLICY_MAX_KIND_LEN printable ASCII bytes without '=', ',' or
 * blanks; it is matched exactly, as cache kinds are. A kind declared twice,
 * a class other than pins or migrates, an empty entry or more than
 * PG_POLICY_MAX_SITE_KINDS entries fail: PG_INPUT with errbuf naming the
 * entry; PG_OK otherwise. */
int pg_policy_parse_kinds(const char *spec, pg_site_kinds_t *out, char *errbuf,
                          size_t errlen);

/* Which rule classified a device kind. */
typedef enum {
    PG_KIND_RULE_BUILTIN = 0, /* the SPEC's table */
    PG_KIND_RULE_SITE,        /* device.kinds (which wins over the table) */
    PG_KIND_RULE_NONE,        /* declared nowhere: it pins (fail closed) */
} pg_kind_rule_t;
const char *pg_policy_kind_rule_name(pg_kind_rule_t r); /* "built-in", "site", "none" */

/* What the binding cache says of one VM. `known` is the presence of its
 * `:host` key; `pin` is the operator pin's reason or NULL; `generation` the
 * VM's binding generation (`:generation`), not present when the cache holds
 * none. `malformed`: the entry could not be read as the SPEC's layout says
 * (bindings checked it); then nothing else here may be trusted (the
 * generation is not present either), and the VM is unknown whatever
 * policy.allow.unknown.vm says. `quarantined`: the VM's migrations kept
 * failing (`:quarantine` exists); quarantine_until_ms is when it ends (wall
 * clock, 0 when unknown), for operators. */
typedef struct {
    bool known;
    bool malformed;
    const char *why_malformed; /* one line, when malformed */
    const char *host;
    const char *pin;
    size_t n_devices;
    const pg_device_ref_t *devices;
    pg_opt_long_t generation;
    bool quarantined;
    int64_t quarantine_until_ms;
} pg_vm_binding_t;

typedef struct {
    bool allow_unknown_vm; /* SPEC: unknown VMs are vetoed unless this is set */
    const pg_site_kinds_t *site_kinds; /* device.kinds; NULL: none */
    unsigned quarantine_origins;       /* bit (1 << pg_origin_t) per origin a quarantine
                                          blocks (quarantine.origins) */
} pg_policy_opts_t;

/* What is asked: a request's origin and its dispatch fence (minGeneration).
 * DRS advice asks as origin DRS with no fence. */
typedef struct {
    pg_origin_t origin;
    pg_opt_long_t min_generation;
} pg_policy_ask_t;

/* Classifies a device kind: *pins says whether it pins its VM (always for
 * PG_KIND_RULE_NONE). A site declaration wins over the built-in table. */
pg_kind_rule_t pg_policy_classify(const pg_policy_opts_t *opts, const char *kind,
                                  bool *pins);

typedef struct {
    pg_verdict_t verdict;
    pg_veto_reason_t reason; /* meaningful only for PG_VERDICT_VETOED */
    size_t n_devices;        /* entries written to the caller's array */
    size_t n_unknown_kinds;  /* devices of an unknown kind (for a metric) */
} pg_policy_verdict_t;

/* Decides whether a VM may migrate. `ask->min_generation` is the dispatch
 * fence of a MigrateVmRequest: when it is present and the cache's generation
 * is absent or lower, the VM's devices cannot be trusted yet
 * (STALE_BINDINGS). A quarantined VM is vetoed QUARANTINED when the ask's
 * origin is one of opts->quarantine_origins. ask NULL: DRS advice (origin
 * DRS, no fence). `devices_out` must hold b->n_devices entries; on a veto it
 * receives every pinning device (unknown kinds included), sorted by device
 * uuid; it stays empty on an approval and for UNKNOWN_VM and STALE_BINDINGS.
 * Reason precedence (SPEC v2): OPERATOR_PIN, UNKNOWN_VM, STALE_BINDINGS,
 * HOST_BOUND_DEVICE, UNKNOWN_DEVICE_KIND, QUARANTINED; a malformed entry is
 * UNKNOWN_VM before all of them. */
void pg_policy_judge(const pg_policy_opts_t *opts, const pg_vm_binding_t *b,
                     const pg_policy_ask_t *ask, pg_device_ref_t *devices_out,
                     pg_policy_verdict_t *out);

typedef struct {
    pg_release_action_t action;
    pg_release_reason_t reason;
} pg_release_verdict_t;

/* The release rule. Evidence is `observed_host` (the event's) and the cache's
 * :host; either may be NULL when absent. A malformed cache entry gives no
 * evidence and makes the release unconfirmable: KEEP, PLACEMENT_UNCONFIRMED,
 * whatever the event claims (its devices cannot be known either). */
pg_release_verdict_t pg_policy_release(const char *src_host, const char *dst_host,
                                       const char *observed_host,
                                       const pg_vm_binding_t *cache);

/* Sorts devices by uuid (strcmp order, ties by kind) in place. */
void pg_policy_sort_devices(pg_device_ref_t *devices, size_t n);

#endif

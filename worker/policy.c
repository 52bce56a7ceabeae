/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Host-bound rule, veto precedence and release rule of the SPEC. Kept free of
 * I/O so that every branch is covered by unit tests; a wrong answer here frees
 * a GPU that QEMU still holds, so the code favours plain branches over
 * cleverness.
 */
#include "policy.h"

#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    pg_device_kind_t kind;
    bool pins;
} kinds[] = {
    {"pci", PG_KIND_PCI, true},
    {"dgpu", PG_KIND_DGPU, true},
    {"mdev", PG_KIND_MDEV, true},
    {"usb", PG_KIND_USB, true},
    /* NIC-backing devices migrate with their VM (VF and vDPA live migration). */
    {"pci+vf", PG_KIND_PCI_VF, false},
    {"pci+vf2", PG_KIND_PCI_VF2, false},
    {"pci+vdpa", PG_KIND_PCI_VDPA, false},
};

pg_device_kind_t pg_policy_kind_parse(const char *kind)
{
    if (kind == NULL)
        return PG_KIND_UNKNOWN;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strcmp(kind, kinds[i].name) == 0)
            return kinds[i].kind;
    return PG_KIND_UNKNOWN;
}

bool pg_policy_kind_pins(pg_device_kind_t kind)
{
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (kinds[i].kind == kind)
            return kinds[i].pins;
    return true; /* unknown: fail closed */
}

static int device_cmp(const void *a, const void *b)
{
    const pg_device_ref_t *x = a, *y = b;
    int c = strcmp(x->device_uuid, y->device_uuid);
    if (c != 0)
        return c;
    return strcmp(x->kind ? x->kind : "", y->kind ? y->kind : "");
}

void pg_policy_sort_devices(pg_device_ref_t *devices, size_t n)
{
    if (n > 1)
        qsort(devices, n, sizeof(*devices), device_cmp);
}

/* Whether the fence demands a generation the cache has not reached: absent
 * counts as older than any. */
static bool stale(const pg_opt_long_t *min_generation, const pg_opt_long_t *have)
{
    if (min_generation == NULL || !min_generation->present)
        return false;
    return !have->present || have->value < min_generation->value;
}

void pg_policy_judge(const pg_policy_opts_t *opts, const pg_vm_binding_t *b,
                     const pg_opt_long_t *min_generation, pg_device_ref_t *devices_out,
                     pg_policy_verdict_t *out)
{
    size_t n_pinning = 0, n_unknown = 0;
    bool known_kind_pins = false;

    for (size_t i = 0; i < b->n_devices; i++) {
        pg_device_kind_t k = pg_policy_kind_parse(b->devices[i].kind);
        if (!pg_policy_kind_pins(k))
            continue;
        if (k == PG_KIND_UNKNOWN)
            n_unknown++;
        else
            known_kind_pins = true;
        devices_out[n_pinning++] = b->devices[i];
    }
    pg_policy_sort_devices(devices_out, n_pinning);

    out->n_unknown_kinds = n_unknown;
    out->verdict = PG_VERDICT_VETOED;
    out->n_devices = n_pinning;
    if (b->malformed) {
        /* The entry broke the cache's layout: neither its pin nor its devices
         * can be trusted, so the VM is unknown even where unknown VMs are
         * allowed (fail closed). */
        out->reason = PG_VETO_UNKNOWN_VM;
        out->n_devices = 0;
        out->n_unknown_kinds = 0;
    } else if (b->pin != NULL) {
        out->reason = PG_VETO_OPERATOR_PIN;
    } else if (!b->known && !opts->allow_unknown_vm) {
        /* The cache has never seen the VM: its devices cannot be trusted. */
        out->reason = PG_VETO_UNKNOWN_VM;
        out->n_devices = 0;
    } else if (stale(min_generation, &b->generation)) {
        /* The cache has not yet seen the sender's last change of the VM:
         * what it lists cannot be trusted. */
        out->reason = PG_VETO_STALE_BINDINGS;
        out->n_devices = 0;
    } else if (known_kind_pins) {
        out->reason = PG_VETO_HOST_BOUND_DEVICE;
    } else if (n_unknown > 0) {
        out->reason = PG_VETO_UNKNOWN_DEVICE_KIND;
    } else {
        out->verdict = PG_VERDICT_APPROVED;
        out->reason = PG_VETO_HOST_BOUND_DEVICE; /* unused for approvals */
        out->n_devices = 0;
    }
}

static bool same_host(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

pg_release_verdict_t pg_policy_release(const char *src_host, const char *dst_host,
                                       const char *observed_host,
                                       const pg_vm_binding_t *cache)
{
    const char *cache_host = cache->known && !cache->malformed ? cache->host : NULL;
    const char *evidence[2] = {observed_host, cache_host};
    size_t n_evidence = 0, n_dst = 0, n_src = 0;

    if (dst_host == NULL)
        return (pg_release_verdict_t){PG_ACTION_KEEP, PG_RELEASE_NO_DESTINATION};
    if (cache->malformed)
        return (pg_release_verdict_t){PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_UNCONFIRMED};
    /* A "migration" onto its own source host moved nothing: evidence naming
     * that host shows the VM still there, never a confirmed move. */
    if (same_host(src_host, dst_host))
        dst_host = NULL;

    for (size_t i = 0; i < 2; i++) {
        if (evidence[i] == NULL)
            continue;
        n_evidence++;
        if (same_host(evidence[i], dst_host))
            n_dst++;
        else if (same_host(evidence[i], src_host))
            n_src++;
    }
    if (n_evidence == 0)
        return (pg_release_verdict_t){PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_UNCONFIRMED};
    if (n_src > 0 && n_dst == 0)
        return (pg_release_verdict_t){PG_ACTION_KEEP, PG_RELEASE_STILL_ON_SOURCE};
    if (n_dst == n_evidence)
        return (pg_release_verdict_t){PG_ACTION_RELEASE,
                                      PG_RELEASE_CONFIRMED_ON_DESTINATION};
    return (pg_release_verdict_t){PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_CONFLICT};
}

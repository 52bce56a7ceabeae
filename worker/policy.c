/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Host-bound rule, veto precedence and release rule of the SPEC. Kept free of
 * I/O so that every branch is covered by unit tests; a wrong answer here frees
 * a GPU that QEMU still holds, so the code favours plain branches over
 * cleverness.
 */
#include "policy.h"

#include "status.h"
#include "util.h"

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

const char *pg_policy_kind_rule_name(pg_kind_rule_t r)
{
    switch (r) {
    case PG_KIND_RULE_BUILTIN:
        return "built-in";
    case PG_KIND_RULE_SITE:
        return "site";
    default:
        return "none";
    }
}

static bool kind_byte_ok(unsigned char c)
{
    return c > ' ' && c < 0x7f && c != '=' && c != ',';
}

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

int pg_policy_parse_kinds(const char *spec, pg_site_kinds_t *out, char *errbuf,
                          size_t errlen)
{
    out->n = 0;
    if (spec == NULL)
        return PG_OK;
    const char *p = spec, *end = spec + strlen(spec);
    if (skip_blanks(p, end) == end)
        return PG_OK; /* nothing declared */
    for (size_t entry = 1;; entry++) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e_end = comma != NULL ? comma : end;
        const char *k = skip_blanks(p, e_end), *k_end = k;
        while (k_end < e_end && kind_byte_ok((unsigned char)*k_end))
            k_end++;
        const char *q = skip_blanks(k_end, e_end);
        size_t klen = (size_t)(k_end - k);
        if (klen == 0 || q == e_end || *q != '=') {
            pg_errf(errbuf, errlen,
                    "device.kinds entry %zu (\"%.*s\") is not kind=pins or "
                    "kind=migrates",
                    entry, (int)(e_end - p), p);
            return PG_INPUT;
        }
        if (klen > PG_POLICY_MAX_KIND_LEN) {
            pg_errf(errbuf, errlen, "device.kinds entry %zu: kind longer than %d bytes",
                    entry, PG_POLICY_MAX_KIND_LEN);
            return PG_INPUT;
        }
        const char *c = skip_blanks(q + 1, e_end), *c_end = e_end;
        while (c_end > c && (c_end[-1] == ' ' || c_end[-1] == '\t'))
            c_end--;
        size_t clen = (size_t)(c_end - c);
        bool pins;
        if (clen == 4 && memcmp(c, "pins", 4) == 0)
            pins = true;
        else if (clen == 8 && memcmp(c, "migrates", 8) == 0)
            pins = false;
        else {
            pg_errf(errbuf, errlen,
                    "device.kinds entry %zu: \"%.*s\" is neither pins nor migrates",
                    entry, (int)clen, c);
            return PG_INPUT;
        }
        for (size_t i = 0; i < out->n; i++)
            if (strlen(out->kinds[i].kind) == klen &&
                memcmp(out->kinds[i].kind, k, klen) == 0) {
                pg_errf(errbuf, errlen, "device.kinds declares %.*s twice", (int)klen,
                        k);
                return PG_INPUT;
            }
        if (out->n == PG_POLICY_MAX_SITE_KINDS) {
            pg_errf(errbuf, errlen, "device.kinds declares more than %d kinds",
                    PG_POLICY_MAX_SITE_KINDS);
            return PG_INPUT;
        }
        memcpy(out->kinds[out->n].kind, k, klen);
        out->kinds[out->n].kind[klen] = '\0';
        out->kinds[out->n++].pins = pins;
        if (comma == NULL)
            return PG_OK;
        p = comma + 1;
    }
}

pg_kind_rule_t pg_policy_classify(const pg_policy_opts_t *opts, const char *kind,
                                  bool *pins)
{
    *pins = true;
    if (kind == NULL)
        return PG_KIND_RULE_NONE;
    const pg_site_kinds_t *site = opts != NULL ? opts->site_kinds : NULL;
    for (size_t i = 0; site != NULL && i < site->n; i++)
        if (strcmp(site->kinds[i].kind, kind) == 0) {
            *pins = site->kinds[i].pins;
            return PG_KIND_RULE_SITE;
        }
    pg_device_kind_t k = pg_policy_kind_parse(kind);
    if (k == PG_KIND_UNKNOWN)
        return PG_KIND_RULE_NONE;
    *pins = pg_policy_kind_pins(k);
    return PG_KIND_RULE_BUILTIN;
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
                     const pg_policy_ask_t *ask, pg_device_ref_t *devices_out,
                     pg_policy_verdict_t *out)
{
    const pg_opt_long_t *min_generation = ask != NULL ? &ask->min_generation : NULL;
    pg_origin_t origin = ask != NULL ? ask->origin : PG_ORIGIN_DRS;
    bool blocked_by_quarantine =
        b->quarantined && (unsigned)origin < 32 &&
        (opts->quarantine_origins & (1u << (unsigned)origin)) != 0;
    size_t n_pinning = 0, n_unknown = 0;
    bool known_kind_pins = false;

    for (size_t i = 0; i < b->n_devices; i++) {
        bool pins;
        pg_kind_rule_t rule = pg_policy_classify(opts, b->devices[i].kind, &pins);
        if (!pins)
            continue;
        if (rule == PG_KIND_RULE_NONE)
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
    } else if (blocked_by_quarantine) {
        /* Its migrations kept failing: not advised again until the back-off
         * ends; HA and operators may still move it (quarantine.origins). */
        out->reason = PG_VETO_QUARANTINED;
        out->n_devices = 0;
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

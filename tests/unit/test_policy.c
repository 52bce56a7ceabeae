/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the decision rules: every device kind, operator pins, unknown
 * VMs, the generation fence (STALE_BINDINGS), veto precedence, device lists,
 * and every branch of the release rule, including the production incidents
 * the SPEC was written after.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "status.h"

static const pg_policy_opts_t strict = {.allow_unknown_vm = false};
static const pg_policy_opts_t lenient = {.allow_unknown_vm = true};

#define HOST "11111111-1111-1111-1111-111111111111"

static pg_policy_verdict_t judge(const pg_policy_opts_t *o, bool known, const char *pin,
                                 const pg_device_ref_t *devs, size_t n,
                                 pg_device_ref_t *out)
{
    pg_vm_binding_t b = {.known = known,
                         .host = known ? HOST : NULL,
                         .pin = pin,
                         .n_devices = n,
                         .devices = devs};
    pg_policy_verdict_t v;
    memset(&v, 0xAB, sizeof(v)); /* catch fields left unset */
    pg_policy_judge(o, &b, NULL, out, &v);
    return v;
}

static const struct {
    const char *kind;
    pg_device_kind_t parsed;
    bool pins;
} kind_cases[] = {
    {"pci", PG_KIND_PCI, true},
    {"dgpu", PG_KIND_DGPU, true},
    {"mdev", PG_KIND_MDEV, true},
    {"usb", PG_KIND_USB, true},
    {"pci+vf", PG_KIND_PCI_VF, false},
    {"pci+vf2", PG_KIND_PCI_VF2, false},
    {"pci+vdpa", PG_KIND_PCI_VDPA, false},
    {"fpga", PG_KIND_UNKNOWN, true},
    {"PCI", PG_KIND_UNKNOWN, true},
    {"", PG_KIND_UNKNOWN, true},
    {"pci+vf ", PG_KIND_UNKNOWN, true},
    {"pci+vf3", PG_KIND_UNKNOWN, true},
};

START_TEST(kind_table)
{
    ck_assert_int_eq(pg_policy_kind_parse(kind_cases[_i].kind), kind_cases[_i].parsed);
    ck_assert_int_eq(pg_policy_kind_pins(pg_policy_kind_parse(kind_cases[_i].kind)),
                     kind_cases[_i].pins);
}
END_TEST

START_TEST(kind_null_is_unknown)
{
    ck_assert_int_eq(pg_policy_kind_parse(NULL), PG_KIND_UNKNOWN);
    ck_assert(pg_policy_kind_pins(PG_KIND_UNKNOWN));
}
END_TEST

/* One device of each kind alone on a known VM: the verdict follows the table. */
START_TEST(single_device_each_kind)
{
    pg_device_ref_t d = {"dev-1", kind_cases[_i].kind}, out[1];
    pg_policy_verdict_t v = judge(&strict, true, NULL, &d, 1, out);
    if (!kind_cases[_i].pins) {
        ck_assert_int_eq(v.verdict, PG_VERDICT_APPROVED);
        ck_assert_uint_eq(v.n_devices, 0);
        ck_assert_uint_eq(v.n_unknown_kinds, 0);
        return;
    }
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_uint_eq(v.n_devices, 1);
    ck_assert_str_eq(out[0].device_uuid, "dev-1");
    ck_assert_str_eq(out[0].kind, kind_cases[_i].kind);
    if (kind_cases[_i].parsed == PG_KIND_UNKNOWN) {
        ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_DEVICE_KIND);
        ck_assert_uint_eq(v.n_unknown_kinds, 1);
    } else {
        ck_assert_int_eq(v.reason, PG_VETO_HOST_BOUND_DEVICE);
        ck_assert_uint_eq(v.n_unknown_kinds, 0);
    }
}
END_TEST

START_TEST(no_devices_approved)
{
    pg_device_ref_t out[1];
    pg_policy_verdict_t v = judge(&strict, true, NULL, NULL, 0, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_APPROVED);
    ck_assert_uint_eq(v.n_devices, 0);
}
END_TEST

/* Production incident: a VF NIC's backing PCI devices must not block a move. */
START_TEST(vf_nic_backed_pci_approved)
{
    pg_device_ref_t d[] = {{"b", "pci+vf"}, {"a", "pci+vf2"}, {"c", "pci+vdpa"}},
                    out[3];
    pg_policy_verdict_t v = judge(&strict, true, NULL, d, 3, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_APPROVED);
    ck_assert_uint_eq(v.n_devices, 0);
}
END_TEST

/* Production incident: a vGPU slice alone pins the VM. */
START_TEST(mdev_only_vetoed)
{
    pg_device_ref_t d[] = {{"m1", "mdev"}}, out[1];
    pg_policy_verdict_t v = judge(&strict, true, NULL, d, 1, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_int_eq(v.reason, PG_VETO_HOST_BOUND_DEVICE);
    ck_assert_uint_eq(v.n_devices, 1);
    ck_assert_str_eq(out[0].device_uuid, "m1");
}
END_TEST

/* The veto lists only pinning devices, unknown kinds included, sorted. */
START_TEST(veto_lists_pinning_devices_sorted)
{
    pg_device_ref_t d[] = {{"d4", "pci+vf"}, {"d3", "usb"}, {"d1", "weird"},
                           {"d5", "dgpu"},   {"d2", "pci"}, {"d0", "pci+vdpa"}};
    pg_device_ref_t out[6];
    pg_policy_verdict_t v = judge(&strict, true, NULL, d, 6, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_int_eq(v.reason, PG_VETO_HOST_BOUND_DEVICE);
    ck_assert_uint_eq(v.n_devices, 4);
    ck_assert_str_eq(out[0].device_uuid, "d1");
    ck_assert_str_eq(out[0].kind, "weird");
    ck_assert_str_eq(out[1].device_uuid, "d2");
    ck_assert_str_eq(out[2].device_uuid, "d3");
    ck_assert_str_eq(out[3].device_uuid, "d5");
    ck_assert_uint_eq(v.n_unknown_kinds, 1);
}
END_TEST

START_TEST(unknown_kind_with_passthrough_nics)
{
    pg_device_ref_t d[] = {{"n1", "pci+vf"}, {"x1", "smartnic"}}, out[2];
    pg_policy_verdict_t v = judge(&strict, true, NULL, d, 2, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_DEVICE_KIND);
    ck_assert_uint_eq(v.n_devices, 1);
    ck_assert_str_eq(out[0].device_uuid, "x1");
}
END_TEST

START_TEST(pin_beats_everything)
{
    pg_device_ref_t d[] = {{"g", "dgpu"}, {"u", "unknown-kind"}}, out[2];
    pg_policy_verdict_t v = judge(&strict, true, "maintenance window", d, 2, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_int_eq(v.reason, PG_VETO_OPERATOR_PIN);
    ck_assert_uint_eq(v.n_devices, 2); /* still lists what pins it */
    ck_assert_str_eq(out[0].device_uuid, "g");
    /* Pins apply even to a VM the cache does not know. */
    v = judge(&strict, false, "why", NULL, 0, out);
    ck_assert_int_eq(v.reason, PG_VETO_OPERATOR_PIN);
    ck_assert_uint_eq(v.n_devices, 0);
}
END_TEST

START_TEST(pin_on_deviceless_vm)
{
    pg_device_ref_t out[1];
    pg_policy_verdict_t v = judge(&strict, true, "", NULL, 0, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED); /* an empty reason still pins */
    ck_assert_int_eq(v.reason, PG_VETO_OPERATOR_PIN);
    ck_assert_uint_eq(v.n_devices, 0);
}
END_TEST

START_TEST(unknown_vm_vetoed_by_default)
{
    pg_device_ref_t d[] = {{"g", "dgpu"}}, out[1];
    pg_policy_verdict_t v = judge(&strict, false, NULL, d, 1, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_VM);
    ck_assert_uint_eq(v.n_devices, 0); /* empty for UNKNOWN_VM */
    v = judge(&strict, false, NULL, NULL, 0, out);
    ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_VM);
}
END_TEST

START_TEST(unknown_vm_allowed_by_switch)
{
    pg_device_ref_t d[] = {{"g", "dgpu"}}, out[1];
    pg_policy_verdict_t v = judge(&lenient, false, NULL, NULL, 0, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_APPROVED);
    /* The switch never overrides what devices the cache does hold. */
    v = judge(&lenient, false, NULL, d, 1, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_int_eq(v.reason, PG_VETO_HOST_BOUND_DEVICE);
}
END_TEST

START_TEST(malformed_entry_is_unknown_whatever_it_holds)
{
    /* An entry bindings could not read as the layout says: whatever pin,
     * host or devices came with it, the VM is unknown, even where unknown
     * VMs are allowed, and no device is listed. */
    pg_device_ref_t d[] = {{"n", "pci+vf"}}, out[1];
    const pg_policy_opts_t *modes[2] = {&strict, &lenient};
    for (int m = 0; m < 2; m++) {
        pg_vm_binding_t b = {.known = true,
                             .malformed = true,
                             .why_malformed = ":pin is a list, not a string",
                             .host = HOST,
                             .pin = "x",
                             .n_devices = 1,
                             .devices = d};
        pg_policy_verdict_t v;
        memset(&v, 0xAB, sizeof(v));
        pg_policy_judge(modes[m], &b, NULL, out, &v);
        ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
        ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_VM);
        ck_assert_uint_eq(v.n_devices, 0);
        ck_assert_uint_eq(v.n_unknown_kinds, 0);
        b.pin = NULL;
        b.known = false;
        b.host = NULL;
        b.n_devices = 0;
        pg_policy_judge(modes[m], &b, NULL, out, &v);
        ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
        ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_VM);
    }
}
END_TEST

/* The dispatch fence: a request's minGeneration against the cache's
 * :generation. */
#define GEN(v) ((pg_opt_long_t){.present = true, .value = (v)})
#define NO_GEN ((pg_opt_long_t){.present = false})

static pg_policy_verdict_t judge_fenced(const pg_policy_opts_t *o, bool known,
                                        const char *pin, const pg_device_ref_t *devs,
                                        size_t n, pg_opt_long_t have,
                                        const pg_opt_long_t *fence,
                                        pg_device_ref_t *out)
{
    pg_vm_binding_t b = {.known = known,
                         .host = known ? HOST : NULL,
                         .pin = pin,
                         .n_devices = n,
                         .devices = devs,
                         .generation = have};
    pg_policy_verdict_t v;
    memset(&v, 0xAB, sizeof(v));
    pg_policy_ask_t ask = {.origin = PG_ORIGIN_DRS};
    if (fence != NULL)
        ask.min_generation = *fence;
    pg_policy_judge(o, &b, &ask, out, &v);
    return v;
}

static const struct {
    const char *what;
    pg_opt_long_t have;  /* the cache's generation */
    pg_opt_long_t fence; /* the request's minGeneration */
    bool stale;
} fence_cases[] = {
    {"absent generation, fence set", NO_GEN, GEN(5), true},
    {"absent generation, fence 0", NO_GEN, GEN(0), true},
    {"absent generation, negative fence", NO_GEN, GEN(-3), true},
    {"lower", GEN(4), GEN(5), true},
    {"lower by one at the bottom", GEN(INT64_MIN), GEN(INT64_MIN + 1), true},
    {"lower at the top", GEN(INT64_MAX - 1), GEN(INT64_MAX), true},
    {"negative, lower", GEN(-7), GEN(-6), true},
    {"equal", GEN(5), GEN(5), false},
    {"equal at the top", GEN(INT64_MAX), GEN(INT64_MAX), false},
    {"equal at the bottom", GEN(INT64_MIN), GEN(INT64_MIN), false},
    {"higher", GEN(6), GEN(5), false},
    {"much higher", GEN(INT64_MAX), GEN(INT64_MIN), false},
    {"no fence, no generation", NO_GEN, NO_GEN, false},
    {"no fence, a generation", GEN(1), NO_GEN, false},
};

START_TEST(fence_table)
{
    /* A deviceless known VM: the fence alone decides. The verdict is the
     * same through a NULL fence as through an absent one. */
    pg_device_ref_t out[1];
    pg_policy_verdict_t v =
        judge_fenced(&strict, true, NULL, NULL, 0, fence_cases[_i].have,
                     &fence_cases[_i].fence, out);
    if (fence_cases[_i].stale) {
        ck_assert_msg(v.verdict == PG_VERDICT_VETOED, "%s", fence_cases[_i].what);
        ck_assert_msg(v.reason == PG_VETO_STALE_BINDINGS, "%s: %s",
                      fence_cases[_i].what, pg_veto_reason_name(v.reason));
    } else {
        ck_assert_msg(v.verdict == PG_VERDICT_APPROVED, "%s: %s", fence_cases[_i].what,
                      pg_veto_reason_name(v.reason));
    }
    ck_assert_uint_eq(v.n_devices, 0);
    if (!fence_cases[_i].fence.present) {
        v = judge_fenced(&strict, true, NULL, NULL, 0, fence_cases[_i].have, NULL, out);
        ck_assert_int_eq(v.verdict, PG_VERDICT_APPROVED);
    }
}
END_TEST

START_TEST(stale_lists_no_devices)
{
    /* The cache's devices are not to be trusted: none is listed, not even a
     * pinning one, and the fence does not hide what the cache holds from
     * the unknown-kind metric. */
    pg_device_ref_t d[] = {{"g", "dgpu"}, {"x", "fpga"}, {"n", "pci+vf"}}, out[3];
    const pg_opt_long_t fence = GEN(5);
    pg_policy_verdict_t v =
        judge_fenced(&strict, true, NULL, d, 3, GEN(4), &fence, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_int_eq(v.reason, PG_VETO_STALE_BINDINGS);
    ck_assert_uint_eq(v.n_devices, 0);
    ck_assert_uint_eq(v.n_unknown_kinds, 1);
    /* Once the cache caught up, the devices decide as before. */
    v = judge_fenced(&strict, true, NULL, d, 3, GEN(5), &fence, out);
    ck_assert_int_eq(v.reason, PG_VETO_HOST_BOUND_DEVICE);
    ck_assert_uint_eq(v.n_devices, 2);
    ck_assert_str_eq(out[0].device_uuid, "g");
    ck_assert_str_eq(out[1].device_uuid, "x");
}
END_TEST

START_TEST(stale_precedence)
{
    pg_device_ref_t gpu[] = {{"g", "dgpu"}}, odd[] = {{"x", "fpga"}}, out[2];
    const pg_opt_long_t fence = GEN(10);
    const pg_opt_long_t stale_gens[2] = {NO_GEN, GEN(9)};
    for (int i = 0; i < 2; i++) {
        /* OPERATOR_PIN first, with its devices, known VM or not. */
        pg_policy_verdict_t v =
            judge_fenced(&strict, true, "held", gpu, 1, stale_gens[i], &fence, out);
        ck_assert_int_eq(v.reason, PG_VETO_OPERATOR_PIN);
        ck_assert_uint_eq(v.n_devices, 1);
        v = judge_fenced(&lenient, false, "held", NULL, 0, stale_gens[i], &fence, out);
        ck_assert_int_eq(v.reason, PG_VETO_OPERATOR_PIN);
        /* UNKNOWN_VM before STALE_BINDINGS. */
        v = judge_fenced(&strict, false, NULL, gpu, 1, stale_gens[i], &fence, out);
        ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_VM);
        ck_assert_uint_eq(v.n_devices, 0);
        /* An unknown VM allowed by the switch still meets the fence. */
        v = judge_fenced(&lenient, false, NULL, NULL, 0, stale_gens[i], &fence, out);
        ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
        ck_assert_int_eq(v.reason, PG_VETO_STALE_BINDINGS);
        /* STALE_BINDINGS before HOST_BOUND_DEVICE and UNKNOWN_DEVICE_KIND. */
        v = judge_fenced(&strict, true, NULL, gpu, 1, stale_gens[i], &fence, out);
        ck_assert_int_eq(v.reason, PG_VETO_STALE_BINDINGS);
        ck_assert_uint_eq(v.n_devices, 0);
        v = judge_fenced(&strict, true, NULL, odd, 1, stale_gens[i], &fence, out);
        ck_assert_int_eq(v.reason, PG_VETO_STALE_BINDINGS);
        ck_assert_uint_eq(v.n_devices, 0);
        /* A malformed entry is UNKNOWN_VM before all, fence or not (its
         * generation, whatever it says, is not to be trusted). */
        const pg_opt_long_t gens[3] = {stale_gens[i], GEN(10), GEN(11)};
        for (int g = 0; g < 3; g++) {
            pg_vm_binding_t b = {.known = true,
                                 .malformed = true,
                                 .why_malformed = ":generation is not a decimal int64",
                                 .host = HOST,
                                 .pin = "x",
                                 .n_devices = 1,
                                 .devices = gpu,
                                 .generation = gens[g]};
            memset(&v, 0xAB, sizeof(v));
            const pg_policy_ask_t ask = {.origin = PG_ORIGIN_DRS,
                                         .min_generation = fence};
            pg_policy_judge(&lenient, &b, &ask, out, &v);
            ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_VM);
            ck_assert_uint_eq(v.n_devices, 0);
        }
    }
    /* A fence that is met leaves every other reason as it was. */
    const pg_opt_long_t met = GEN(10);
    pg_policy_verdict_t v =
        judge_fenced(&strict, true, "held", gpu, 1, met, &fence, out);
    ck_assert_int_eq(v.reason, PG_VETO_OPERATOR_PIN);
    v = judge_fenced(&strict, false, NULL, NULL, 0, met, &fence, out);
    ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_VM);
    v = judge_fenced(&strict, true, NULL, gpu, 1, met, &fence, out);
    ck_assert_int_eq(v.reason, PG_VETO_HOST_BOUND_DEVICE);
    v = judge_fenced(&strict, true, NULL, odd, 1, met, &fence, out);
    ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_DEVICE_KIND);
    ck_assert_uint_eq(v.n_devices, 1);
    /* No fence at all (DRS advice): a missing generation never vetoes. */
    v = judge_fenced(&strict, true, NULL, NULL, 0, NO_GEN, NULL, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_APPROVED);
}
END_TEST

START_TEST(sort_devices_by_uuid)
{
    pg_device_ref_t d[] = {{"c", "pci"}, {"a", "usb"}, {"b", "mdev"}, {"a", "dgpu"}};
    pg_policy_sort_devices(d, 4);
    ck_assert_str_eq(d[0].device_uuid, "a");
    ck_assert_str_eq(d[0].kind, "dgpu");
    ck_assert_str_eq(d[1].kind, "usb");
    ck_assert_str_eq(d[2].device_uuid, "b");
    ck_assert_str_eq(d[3].device_uuid, "c");
}
END_TEST

/* Release rule. */
#define SRC "src"
#define DST "dst"
#define OTHER "third"

static const struct {
    const char *dst, *observed, *cache;
    pg_release_action_t action;
    pg_release_reason_t reason;
} release_cases[] = {
    /* null destination never releases, whatever the evidence */
    {NULL, DST, DST, PG_ACTION_KEEP, PG_RELEASE_NO_DESTINATION},
    {NULL, NULL, NULL, PG_ACTION_KEEP, PG_RELEASE_NO_DESTINATION},
    {NULL, SRC, NULL, PG_ACTION_KEEP, PG_RELEASE_NO_DESTINATION},
    /* no evidence */
    {DST, NULL, NULL, PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_UNCONFIRMED},
    /* still on source: production incident (FAILED migration, VM on source) */
    {DST, SRC, SRC, PG_ACTION_KEEP, PG_RELEASE_STILL_ON_SOURCE},
    {DST, SRC, NULL, PG_ACTION_KEEP, PG_RELEASE_STILL_ON_SOURCE},
    {DST, NULL, SRC, PG_ACTION_KEEP, PG_RELEASE_STILL_ON_SOURCE},
    {DST, SRC, OTHER, PG_ACTION_KEEP, PG_RELEASE_STILL_ON_SOURCE},
    /* confirmed */
    {DST, DST, DST, PG_ACTION_RELEASE, PG_RELEASE_CONFIRMED_ON_DESTINATION},
    {DST, DST, NULL, PG_ACTION_RELEASE, PG_RELEASE_CONFIRMED_ON_DESTINATION},
    {DST, NULL, DST, PG_ACTION_RELEASE, PG_RELEASE_CONFIRMED_ON_DESTINATION},
    /* conflicts */
    {DST, DST, SRC, PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_CONFLICT},
    {DST, SRC, DST, PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_CONFLICT},
    {DST, OTHER, NULL, PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_CONFLICT},
    {DST, NULL, OTHER, PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_CONFLICT},
    {DST, DST, OTHER, PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_CONFLICT},
    {DST, OTHER, OTHER, PG_ACTION_KEEP, PG_RELEASE_PLACEMENT_CONFLICT},
    /* a move onto the source host itself confirms nothing */
    {SRC, SRC, SRC, PG_ACTION_KEEP, PG_RELEASE_STILL_ON_SOURCE},
};

/* The cache as the release rule reads it: known with that host, or not. */
static pg_vm_binding_t cache_at(const char *host)
{
    return (pg_vm_binding_t){.known = host != NULL, .host = host};
}

START_TEST(release_table)
{
    pg_vm_binding_t c = cache_at(release_cases[_i].cache);
    pg_release_verdict_t v =
        pg_policy_release(SRC, release_cases[_i].dst, release_cases[_i].observed, &c);
    ck_assert_msg(v.action == release_cases[_i].action &&
                      v.reason == release_cases[_i].reason,
                  "case %d: got %s/%s", _i, pg_release_action_name(v.action),
                  pg_release_reason_name(v.reason));
}
END_TEST

/* The outcome does not enter the rule: a FAILED migration whose VM really is
 * on the destination may release, a SUCCEEDED one still on the source keeps. */
START_TEST(release_ignores_outcome_claims)
{
    pg_vm_binding_t none = cache_at(NULL), at_dst = cache_at(DST);
    pg_release_verdict_t v = pg_policy_release(SRC, DST, SRC, &none);
    ck_assert_int_eq(v.action, PG_ACTION_KEEP);
    v = pg_policy_release(SRC, DST, NULL, &at_dst);
    ck_assert_int_eq(v.action, PG_ACTION_RELEASE);
}
END_TEST

/* A malformed cache entry never lets a release through, even when the event
 * and the (untrustworthy) cache host both name the destination. */
START_TEST(release_never_on_a_malformed_entry)
{
    pg_vm_binding_t bad = {.malformed = true, .known = true, .host = DST};
    pg_release_verdict_t v = pg_policy_release(SRC, DST, DST, &bad);
    ck_assert_int_eq(v.action, PG_ACTION_KEEP);
    ck_assert_int_eq(v.reason, PG_RELEASE_PLACEMENT_UNCONFIRMED);
    bad = (pg_vm_binding_t){.malformed = true};
    v = pg_policy_release(SRC, DST, DST, &bad);
    ck_assert_int_eq(v.action, PG_ACTION_KEEP);
    v = pg_policy_release(SRC, NULL, DST, &bad);
    ck_assert_int_eq(v.reason, PG_RELEASE_NO_DESTINATION);
}
END_TEST

START_TEST(enum_names_match_schema)
{
    ck_assert_str_eq(pg_veto_reason_name(PG_VETO_UNKNOWN_DEVICE_KIND),
                     "UNKNOWN_DEVICE_KIND");
    ck_assert_str_eq(pg_veto_reason_name(PG_VETO_STALE_BINDINGS), "STALE_BINDINGS");
    ck_assert_str_eq(pg_veto_reason_name(PG_VETO_QUARANTINED), "QUARANTINED");
    ck_assert_str_eq(pg_veto_reason_name((pg_veto_reason_t)PG_VETO_REASONS), "INVALID");
    ck_assert_str_eq(pg_origin_name(PG_ORIGIN_MAINTENANCE), "MAINTENANCE");
    ck_assert_str_eq(pg_verdict_name(PG_VERDICT_VETOED), "VETOED");
    ck_assert_str_eq(pg_outcome_name(PG_OUTCOME_FAILED), "FAILED");
    ck_assert_str_eq(pg_release_action_name(PG_ACTION_KEEP), "KEEP");
    ck_assert_str_eq(pg_release_reason_name(PG_RELEASE_PLACEMENT_CONFLICT),
                     "PLACEMENT_CONFLICT");
    ck_assert_str_eq(pg_release_reason_name((pg_release_reason_t)99), "INVALID");
}
END_TEST

/* ---- Site device kinds (device.kinds) ------------------------------------ */

START_TEST(site_kinds_parse)
{
    pg_site_kinds_t k;
    char err[256];
    ck_assert_int_eq(pg_policy_parse_kinds("gpu-vf=pins, nvme-migratable=migrates", &k,
                                           err, sizeof(err)),
                     0);
    ck_assert_uint_eq(k.n, 2);
    ck_assert_str_eq(k.kinds[0].kind, "gpu-vf");
    ck_assert(k.kinds[0].pins);
    ck_assert_str_eq(k.kinds[1].kind, "nvme-migratable");
    ck_assert(!k.kinds[1].pins);
    ck_assert_int_eq(
        pg_policy_parse_kinds(" \t a = pins ,b=migrates\t", &k, err, sizeof(err)), 0);
    ck_assert_uint_eq(k.n, 2);
    ck_assert_str_eq(k.kinds[0].kind, "a");
    ck_assert_str_eq(k.kinds[1].kind, "b");
    for (size_t i = 0; i < 3; i++) {
        static const char *const empty[] = {"", "   ", NULL};
        ck_assert_int_eq(pg_policy_parse_kinds(empty[i], &k, err, sizeof(err)), 0);
        ck_assert_uint_eq(k.n, 0);
    }
    /* A redeclared built-in kind is allowed: the site wins. */
    ck_assert_int_eq(pg_policy_parse_kinds("pci+vf=pins", &k, err, sizeof(err)), 0);
}
END_TEST

START_TEST(site_kinds_malformed)
{
    static const char *const bad[] = {
        "x",
        "=pins",
        "x=",
        "x=PINS",
        "x=pins,",
        ",x=pins",
        "x=pins,,y=pins",
        "x=pins,x=migrates",
        "a b=pins",
        "x=pins y",
        "x==pins",
        "x=pins=migrates",
        "k\x01=pins",
        "\xc3\xa9=pins",
    };
    pg_site_kinds_t k;
    char err[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(pg_policy_parse_kinds(bad[i], &k, err, sizeof(err)) == PG_INPUT,
                      "accepted \"%s\"", bad[i]);
        ck_assert_msg(strstr(err, "device.kinds") != NULL, "%s: %s", bad[i], err);
    }
    /* Too long a kind, too many kinds. */
    char spec[8192];
    memset(spec, 'k', PG_POLICY_MAX_KIND_LEN + 1);
    strcpy(spec + PG_POLICY_MAX_KIND_LEN + 1, "=pins");
    ck_assert_int_eq(pg_policy_parse_kinds(spec, &k, err, sizeof(err)), PG_INPUT);
    spec[PG_POLICY_MAX_KIND_LEN] = '\0';
    strcat(spec, "=pins");
    ck_assert_int_eq(pg_policy_parse_kinds(spec, &k, err, sizeof(err)), 0);
    size_t off = 0;
    for (int i = 0; i <= PG_POLICY_MAX_SITE_KINDS; i++)
        off += (size_t)snprintf(spec + off, sizeof(spec) - off, "%sk%d=pins",
                                i ? "," : "", i);
    ck_assert_int_eq(pg_policy_parse_kinds(spec, &k, err, sizeof(err)), PG_INPUT);
    ck_assert_ptr_nonnull(strstr(err, "more than"));
}
END_TEST

START_TEST(site_kinds_classify)
{
    pg_site_kinds_t k;
    char err[256];
    ck_assert_int_eq(
        pg_policy_parse_kinds("gpu-vf=pins, nvme=migrates, pci+vf=pins, dgpu=migrates",
                              &k, err, sizeof(err)),
        0);
    const pg_policy_opts_t o = {.site_kinds = &k};
    bool pins;
    ck_assert_int_eq(pg_policy_classify(&o, "gpu-vf", &pins), PG_KIND_RULE_SITE);
    ck_assert(pins);
    ck_assert_int_eq(pg_policy_classify(&o, "nvme", &pins), PG_KIND_RULE_SITE);
    ck_assert(!pins);
    /* The site redeclares built-in kinds both ways. */
    ck_assert_int_eq(pg_policy_classify(&o, "pci+vf", &pins), PG_KIND_RULE_SITE);
    ck_assert(pins);
    ck_assert_int_eq(pg_policy_classify(&o, "dgpu", &pins), PG_KIND_RULE_SITE);
    ck_assert(!pins);
    ck_assert_int_eq(pg_policy_classify(&o, "mdev", &pins), PG_KIND_RULE_BUILTIN);
    ck_assert(pins);
    ck_assert_int_eq(pg_policy_classify(&o, "pci+vdpa", &pins), PG_KIND_RULE_BUILTIN);
    ck_assert(!pins);
    /* Exact matches only; declared nowhere pins. */
    ck_assert_int_eq(pg_policy_classify(&o, "GPU-VF", &pins), PG_KIND_RULE_NONE);
    ck_assert(pins);
    ck_assert_int_eq(pg_policy_classify(&o, NULL, &pins), PG_KIND_RULE_NONE);
    ck_assert(pins);
    ck_assert_int_eq(pg_policy_classify(NULL, "nvme", &pins), PG_KIND_RULE_NONE);
    ck_assert_str_eq(pg_policy_kind_rule_name(PG_KIND_RULE_SITE), "site");
    ck_assert_str_eq(pg_policy_kind_rule_name(PG_KIND_RULE_BUILTIN), "built-in");
    ck_assert_str_eq(pg_policy_kind_rule_name(PG_KIND_RULE_NONE), "none");
}
END_TEST

/* A site kind that migrates is approved; one that pins is a known pinning
 * kind (HOST_BOUND_DEVICE, not UNKNOWN_DEVICE_KIND); unknown kinds still pin. */
START_TEST(site_kinds_decide)
{
    pg_site_kinds_t k;
    char err[256];
    ck_assert_int_eq(pg_policy_parse_kinds("gpu-vf=pins, nvme=migrates, dgpu=migrates",
                                           &k, err, sizeof(err)),
                     0);
    const pg_policy_opts_t o = {.site_kinds = &k};
    pg_device_ref_t out[4];
    const pg_device_ref_t migrates[] = {
        {"d1", "nvme"}, {"d2", "pci+vf"}, {"d3", "dgpu"}};
    pg_policy_verdict_t v = judge(&o, true, NULL, migrates, 3, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_APPROVED);
    ck_assert_uint_eq(v.n_devices, 0);
    const pg_device_ref_t pins[] = {{"d2", "nvme"}, {"d1", "gpu-vf"}};
    v = judge(&o, true, NULL, pins, 2, out);
    ck_assert_int_eq(v.verdict, PG_VERDICT_VETOED);
    ck_assert_int_eq(v.reason, PG_VETO_HOST_BOUND_DEVICE);
    ck_assert_uint_eq(v.n_devices, 1);
    ck_assert_str_eq(out[0].device_uuid, "d1");
    ck_assert_uint_eq(v.n_unknown_kinds, 0);
    const pg_device_ref_t unknown[] = {{"d1", "nvme"}, {"d2", "fpga"}};
    v = judge(&o, true, NULL, unknown, 2, out);
    ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_DEVICE_KIND);
    ck_assert_uint_eq(v.n_unknown_kinds, 1);
    /* Without the site table, the same gpu-vf is an unknown kind. */
    v = judge(&strict, true, NULL, pins, 2, out);
    ck_assert_int_eq(v.reason, PG_VETO_UNKNOWN_DEVICE_KIND);
    ck_assert_uint_eq(v.n_devices, 2);
}
END_TEST

static Suite *policy_suite(void)
{
    Suite *s = suite_create("policy");
    TCase *k = tcase_create("kinds");
    tcase_add_loop_test(k, kind_table, 0, sizeof(kind_cases) / sizeof(kind_cases[0]));
    tcase_add_test(k, kind_null_is_unknown);
    tcase_add_test(k, site_kinds_parse);
    tcase_add_test(k, site_kinds_malformed);
    tcase_add_test(k, site_kinds_classify);
    tcase_add_test(k, site_kinds_decide);
    tcase_add_loop_test(k, single_device_each_kind, 0,
                        sizeof(kind_cases) / sizeof(kind_cases[0]));
    suite_add_tcase(s, k);

    TCase *j = tcase_create("judge");
    tcase_add_test(j, no_devices_approved);
    tcase_add_test(j, vf_nic_backed_pci_approved);
    tcase_add_test(j, mdev_only_vetoed);
    tcase_add_test(j, veto_lists_pinning_devices_sorted);
    tcase_add_test(j, unknown_kind_with_passthrough_nics);
    tcase_add_test(j, pin_beats_everything);
    tcase_add_test(j, pin_on_deviceless_vm);
    tcase_add_test(j, unknown_vm_vetoed_by_default);
    tcase_add_test(j, unknown_vm_allowed_by_switch);
    tcase_add_test(j, malformed_entry_is_unknown_whatever_it_holds);
    tcase_add_loop_test(j, fence_table, 0,
                        sizeof(fence_cases) / sizeof(fence_cases[0]));
    tcase_add_test(j, stale_lists_no_devices);
    tcase_add_test(j, stale_precedence);
    tcase_add_test(j, sort_devices_by_uuid);
    tcase_add_test(j, enum_names_match_schema);
    suite_add_tcase(s, j);

    TCase *r = tcase_create("release");
    tcase_add_loop_test(r, release_table, 0,
                        sizeof(release_cases) / sizeof(release_cases[0]));
    tcase_add_test(r, release_ignores_outcome_claims);
    tcase_add_test(r, release_never_on_a_malformed_entry);
    suite_add_tcase(s, r);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(policy_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the binding view's table (bindings_view.c): a stored
 * binding comes back byte for byte, a replaced one is the new one, the
 * least recently used entry is evicted first, an entry the batch holds is
 * never evicted, a batch's holds find what one-at-a-time holds find, drops
 * and flushes forget, and invalidated keys name their
 * VM whatever the uuid holds.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "bindings_view.h"

static pg_vm_binding_t binding(const char *host, const char *pin, size_t n,
                               const pg_device_ref_t *d, long gen)
{
    return (pg_vm_binding_t){.known = host != NULL,
                             .host = host,
                             .pin = pin,
                             .n_devices = n,
                             .devices = d,
                             .generation = {.present = gen >= 0, .value = gen}};
}

START_TEST(stored_binding_comes_back)
{
    pg_view_t *v = pg_view_new(4);
    pg_arena_t *a = pg_arena_new(4096);
    const pg_device_ref_t d[2] = {{"gpu-0", "dgpu"}, {"vf-1", "sriov-vf"}};
    pg_vm_binding_t in = binding("host-a", "maintenance", 2, d, 42), out;
    ck_assert_int_eq(pg_view_put(v, "vm-1", 4, &in), PG_OK);
    ck_assert_int_eq(pg_view_get(v, "vm-2", 4, a, &out), PG_RETRY);
    ck_assert_int_eq(pg_view_get(v, "vm-1", 4, a, &out), PG_OK);
    ck_assert(out.known && !out.malformed && !out.quarantined);
    ck_assert_str_eq(out.host, "host-a");
    ck_assert_str_eq(out.pin, "maintenance");
    ck_assert(out.generation.present && out.generation.value == 42);
    ck_assert_uint_eq(out.n_devices, 2);
    ck_assert_str_eq(out.devices[0].device_uuid, "gpu-0");
    ck_assert_str_eq(out.devices[0].kind, "dgpu");
    ck_assert_str_eq(out.devices[1].device_uuid, "vf-1");
    ck_assert_str_eq(out.devices[1].kind, "sriov-vf");
    /* An unknown VM (no host), unpinned, no generation, no devices. */
    pg_vm_binding_t none = binding(NULL, NULL, 0, NULL, -1);
    ck_assert_int_eq(pg_view_put(v, "vm-1", 4, &none), PG_OK);
    ck_assert_uint_eq(pg_view_size(v), 1);
    ck_assert_int_eq(pg_view_get(v, "vm-1", 4, a, &out), PG_OK);
    ck_assert(!out.known && out.host == NULL && out.pin == NULL);
    ck_assert(!out.generation.present && out.n_devices == 0 && out.devices == NULL);
    pg_arena_destroy(a);
    pg_view_destroy(v);
    pg_view_destroy(NULL);
}
END_TEST

START_TEST(large_entries_are_not_kept)
{
    /* The VM bound bounds memory only with a bound per entry. */
    pg_view_t *v = pg_view_new(4);
    static char host[PG_VIEW_MAX_ENTRY_BYTES];
    memset(host, 'h', sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    pg_vm_binding_t small = binding("h", NULL, 0, NULL, -1);
    pg_vm_binding_t large = binding(host, NULL, 0, NULL, -1);
    ck_assert_int_eq(pg_view_put(v, "vm-1", 4, &small), PG_OK);
    ck_assert_int_eq(pg_view_put(v, "vm-1", 4, &large), PG_RETRY);
    ck_assert(pg_view_hold(v, "vm-1", 4) == NULL); /* the older one is forgotten */
    ck_assert_uint_eq(pg_view_size(v), 0);
    pg_view_destroy(v);
}
END_TEST

START_TEST(least_recently_used_is_evicted)
{
    pg_view_t *v = pg_view_new(3);
    pg_vm_binding_t b = binding("h", NULL, 0, NULL, -1);
    char vm[16];
    for (int i = 0; i < 3; i++) {
        snprintf(vm, sizeof(vm), "vm-%d", i);
        ck_assert_int_eq(pg_view_put(v, vm, strlen(vm), &b), PG_OK);
    }
    pg_view_begin(v);
    ck_assert(pg_view_hold(v, "vm-0", 4)); /* now the most recently used */
    pg_view_begin(v);                      /* and no longer held */
    ck_assert_int_eq(pg_view_put(v, "vm-3", 4, &b), PG_OK);
    ck_assert_uint_eq(pg_view_size(v), 3);
    ck_assert(!pg_view_hold(v, "vm-1", 4)); /* the oldest untouched went */
    ck_assert(pg_view_hold(v, "vm-0", 4) != NULL &&
              pg_view_hold(v, "vm-2", 4) != NULL && pg_view_hold(v, "vm-3", 4));
    /* All three are held by this batch: nothing is evicted, nothing stored. */
    ck_assert_int_eq(pg_view_put(v, "vm-4", 4, &b), PG_RETRY);
    ck_assert(!pg_view_hold(v, "vm-4", 4));
    ck_assert_uint_eq(pg_view_size(v), 3);
    pg_view_begin(v);
    ck_assert_int_eq(pg_view_put(v, "vm-4", 4, &b), PG_OK);
    ck_assert_uint_eq(pg_view_size(v), 3);
    pg_view_destroy(v);
}
END_TEST

START_TEST(drop_and_flush_forget)
{
    pg_view_t *v = pg_view_new(1000);
    pg_vm_binding_t b = binding("h", NULL, 0, NULL, 1);
    char vm[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(vm, sizeof(vm), "vm-%d", i);
        ck_assert_int_eq(pg_view_put(v, vm, strlen(vm), &b), PG_OK);
    }
    ck_assert_uint_eq(pg_view_size(v), 1000);
    pg_view_begin(v);
    ck_assert(pg_view_hold(v, "vm-7", 4));
    bool held = false;
    ck_assert(pg_view_drop(v, "vm-7", 4, &held) && held);
    ck_assert(pg_view_drop(v, "vm-8", 4, &held) && !held);
    ck_assert(!pg_view_drop(v, "vm-8", 4, NULL));
    ck_assert(!pg_view_hold(v, "vm-7", 4));
    ck_assert_uint_eq(pg_view_size(v), 998);
    pg_view_flush(v);
    ck_assert_uint_eq(pg_view_size(v), 0);
    ck_assert(!pg_view_hold(v, "vm-9", 4));
    ck_assert_int_eq(pg_view_put(v, "vm-9", 4, &b), PG_OK);
    ck_assert(pg_view_hold(v, "vm-9", 4));
    pg_view_destroy(v);
}
END_TEST

START_TEST(batch_holds_as_one_at_a_time)
{
    /* More VMs than the look-ahead, half of them stored, some twice. */
    pg_view_t *v = pg_view_new(64);
    char names[100][16];
    const char *vms[100];
    for (int i = 0; i < 100; i++) {
        snprintf(names[i], sizeof(names[i]), "vm-%d", i % 90);
        vms[i] = names[i];
    }
    for (int i = 0; i < 90; i += 2) {
        char host[16];
        snprintf(host, sizeof(host), "h-%d", i);
        pg_vm_binding_t b = binding(host, NULL, 0, NULL, i);
        ck_assert_int_eq(pg_view_put(v, names[i], strlen(names[i]), &b), PG_OK);
    }
    pg_view_begin(v);
    const pg_view_entry_t *hit[100];
    pg_view_hold_batch(v, vms, 100, hit);
    pg_arena_t *arena = pg_arena_new(4096);
    for (int i = 0; i < 100; i++) {
        int k = i % 90;
        bool stored = k % 2 == 0;
        ck_assert_msg((hit[i] != NULL) == stored, "vm-%d", k);
        if (hit[i] == NULL)
            continue;
        pg_vm_binding_t out;
        ck_assert_int_eq(pg_view_copy(hit[i], arena, &out), PG_OK);
        ck_assert(out.generation.present && out.generation.value == k);
        pg_arena_reset(arena);
    }
    /* Every hit is held: a full view evicts none of them. */
    pg_vm_binding_t b = binding("h", NULL, 0, NULL, -1);
    for (int i = 0; i < 64; i++) {
        char vm[16];
        snprintf(vm, sizeof(vm), "new-%d", i);
        (void)pg_view_put(v, vm, strlen(vm), &b);
    }
    for (int i = 0; i < 100; i++)
        if (hit[i] != NULL)
            ck_assert(pg_view_hold(v, vms[i], strlen(vms[i])) == hit[i]);
    pg_arena_destroy(arena);
    pg_view_destroy(v);
}
END_TEST

START_TEST(keys_name_their_vm)
{
    pg_bytes_t vm;
    const struct {
        const char *key, *vm;
    } good[] = {
        {"pinguard:vm:{abc}:host", "abc"},
        {"pinguard:vm:{abc}:devices", "abc"},
        {"pinguard:vm:{a}:quarantine", "a"},
        /* a uuid holding "}:" is cut at the last one */
        {"pinguard:vm:{a}:host}:pin", "a}:host"},
        {"pinguard:vm:{{x}}:generation", "{x}"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ck_assert_msg(pg_view_key_vm(good[i].key, strlen(good[i].key), &vm), "%s",
                      good[i].key);
        ck_assert_uint_eq(vm.len, strlen(good[i].vm));
        ck_assert_int_eq(memcmp(vm.data, good[i].vm, vm.len), 0);
    }
    const char *bad[] = {"pinguard:host:{h}:vms",
                         "pinguard:vm:{}:host",
                         "pinguard:vm:{abc",
                         "other:vm:{abc}:host",
                         "pinguard:vm:{abc}:failures",
                         "pinguard:vm:{abc}:backoff",
                         "pinguard:vm:{abc}:hostx",
                         "pinguard:vm:",
                         ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!pg_view_key_vm(bad[i], strlen(bad[i]), &vm), "%s", bad[i]);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("view");
    TCase *t = tcase_create("table");
    tcase_add_test(t, stored_binding_comes_back);
    tcase_add_test(t, large_entries_are_not_kept);
    tcase_add_test(t, least_recently_used_is_evicted);
    tcase_add_test(t, drop_and_flush_forget);
    tcase_add_test(t, batch_holds_as_one_at_a_time);
    tcase_add_test(t, keys_name_their_vm);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed == 0 ? 0 : 1;
}

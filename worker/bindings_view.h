/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The binding view's table (bindings_view.c): VM uuid -> a copy of its
 * binding, bounded, least recently used evicted. Pure: no I/O, no clock;
 * the bindings module keeps it true (the invalidation connection and the
 * barrier live in bindings_view.c too, on struct pg_bindings). Internal to
 * the bindings module; unit-tested alone.
 */
#ifndef PG_BINDINGS_VIEW_H
#define PG_BINDINGS_VIEW_H

#include "bindings.h"
#include "mem.h"
#include "policy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pg_view pg_view_t;

/* The largest entry kept (its ids' bytes): with the VM bound, this bounds
 * the view's memory (about 70 MB at the default 65,536 VMs, whatever the
 * cache holds; about 10 MB for VMs of a host id and two devices). */
enum { PG_VIEW_MAX_ENTRY_BYTES = 1024 };
typedef struct pg_view_entry pg_view_entry_t; /* one VM's entry, owned by the view */

/* An empty view of at most max_vms (>= 1) VMs. Caller owns it; NULL when
 * out of memory. */
pg_view_t *pg_view_new(size_t max_vms);
void pg_view_destroy(pg_view_t *v); /* NULL-safe */

size_t pg_view_size(const pg_view_t *v);

/* Starts a batch: the entries pg_view_hold marks from now on are kept from
 * eviction until the next pg_view_begin (or a flush), so that a VM found at
 * the start of a batch is still there when the batch reads it. */
void pg_view_begin(pg_view_t *v);

/* vm's entry, or NULL when it is not in the view; a found entry becomes the
 * most recently used and is held for the batch (valid until the next
 * pg_view_begin, pg_view_drop of it or pg_view_flush). */
const pg_view_entry_t *pg_view_hold(pg_view_t *v, const char *vm, size_t len);

/* pg_view_hold of each of n VMs, hit[i] its entry or NULL; the same as n
 * calls, but each VM's bucket and entry are fetched from memory ahead of
 * its turn, so the cache misses of a batch overlap. */
void pg_view_hold_batch(pg_view_t *v, const char *const *vms, size_t n,
                        const pg_view_entry_t **hit);

/* Copies an entry's binding into out, its strings in arena. PG_OK, or
 * PG_FATAL when the arena is out of memory. */
int pg_view_copy(const pg_view_entry_t *e, pg_arena_t *arena, pg_vm_binding_t *out);

/* The hash the view files vm under (for telling a VM again cheaply). */
uint64_t pg_view_hash(const char *vm, size_t len);

/* Copies vm's binding into out, its strings in arena (the view's own copy
 * may be evicted once the batch ends). PG_OK; PG_RETRY when vm is not in
 * the view; PG_FATAL when the arena is out of memory. */
int pg_view_get(pg_view_t *v, const char *vm, size_t len, pg_arena_t *arena,
                pg_vm_binding_t *out);

/* Stores a copy of b (a well-formed, unquarantined binding: the caller
 * decides what may be cached) for vm, replacing an older one, evicting the
 * least recently used entry that is not held when full. PG_OK; PG_RETRY
 * when every entry is held or the entry is over PG_VIEW_MAX_ENTRY_BYTES
 * (nothing stored, an older one forgotten); PG_FATAL out of memory. */
int pg_view_put(pg_view_t *v, const char *vm, size_t len, const pg_vm_binding_t *b);

/* Forgets vm; true when it was there, *held (may be NULL) then saying
 * whether the current batch held it. */
bool pg_view_drop(pg_view_t *v, const char *vm, size_t len, bool *held);

/* Forgets every VM. */
void pg_view_flush(pg_view_t *v);

/* The VM whose lookup reads a cache key: pinguard:vm:{<vm>}:<suffix>, the
 * uuid being everything between the prefix and the last "}:", the suffix one
 * of the keys the lookup reads (host, pin, devices, generation,
 * quarantine). False for any other key (:failures, :backoff, the host
 * index, keys of other applications). */
bool pg_view_key_vm(const char *key, size_t len, pg_bytes_t *vm);

#endif

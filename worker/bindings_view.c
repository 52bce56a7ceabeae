/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The binding view (redis.view = on): the VMs the worker has read, kept in
 * memory and kept true by Redis's server-assisted client-side caching. The
 * lookup connection runs CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX
 * pinguard:vm:, <id> being a second connection subscribed to
 * __redis__:invalidate (RESP2, as hiredis 0.14 speaks it), so Redis names on
 * it every VM key that changes, in the event loop's turn that changed it.
 * Broadcast, not the default mode: the default mode remembers every key
 * each lookup reads in a table (tests/bench measured its radix-tree
 * inserts at three quarters of Redis's CPU, and the table grows with every
 * VM ever read), where broadcasting costs only the writes, and a write to a
 * key the lookup does not read (:failures, :backoff) is ignored.
 *
 * The barrier makes a VM served from the view as fresh as a read made after
 * its batch was polled. Once a batch is polled, a PING goes down the
 * invalidation connection and its pong is awaited before any VM is served
 * from the view. Redis writes to one connection in order, so the
 * invalidation of every write that was done before the PING arrived -- of
 * every write whose OK its writer saw before it produced an input of this
 * batch -- is read before the pong, and drops that VM, which is then read
 * again. The lookup connection must have been alive at those writes too
 * (Redis forgets the tracking of a connection that is gone and then says
 * nothing): a reply on it to a command sent after the batch was polled
 * proves that, the connection being the same one all along (the lookups of
 * the batch's VMs, ROLE with Sentinel, else one PING). So the lookups of the
 * VMs the view lacks are sent together with the PING, one round trip for
 * both; when the barrier drops a VM the view was to serve, those replies
 * are thrown away and the batch is split and read again (bindings.c).
 *
 * Not cached, so always read: malformed entries, quarantined VMs, and
 * entries whose :host, :pin or :generation has a TTL (a pin with --for): a
 * key past its expiry reads as gone at once but is announced only when
 * Redis's expiry cycle deletes it (a :devices that expires only vetoes
 * longer). The view is emptied when either connection is lost or
 * re-made (a Sentinel failover is a reconnect), and on a null invalidation
 * (FLUSHALL, FLUSHDB). Broadcasting keeps no tracking table, so
 * tracking-table-max-keys cannot overflow it. The view holds at most redis.view.max.vms
 * VMs, the least recently used evicted. If the view cannot be set up (an old Redis, an
 * ACL without CLIENT or SUBSCRIBE), the worker reads directly, logs it once
 * and tries again every VIEW_RETRY_MS.
 *
 * The table (pg_view_*) does no I/O and is unit-tested alone; the
 * connection half (pg_bindings_view_*) works on struct pg_bindings.
 */
#include "bindings_view.h"

#include "bindings_internal.h"
#include "log.h"
#include "util.h"

#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

/* ---- The table ----------------------------------------------------------- */

typedef struct pg_view_entry view_entry_t;
/* 49 bytes before the ids: an entry's ids are at most
 * PG_VIEW_MAX_ENTRY_BYTES, so 16-bit lengths hold them, and the view holds
 * fewer than 2^32 VMs, so 32 bits of the hash pick its bucket. */
struct pg_view_entry {
    view_entry_t *chain;       /* the next entry of the same bucket */
    view_entry_t *prev, *next; /* the LRU list, most recently used first */
    uint32_t hash;             /* the low half of the VM's FNV-1a hash */
    uint32_t mark;             /* == the view's epoch (mod 2^32): held */
    int64_t generation;        /* with flags & GEN */
    uint16_t vm_len, host_len, pin_len, n_devices;
    uint8_t flags; /* KNOWN, PIN, GEN */
    /* vm, host, pin, then each device's uuid and kind, each NUL-terminated
     * (a checked binding holds no NUL). */
    char data[];
};
enum { ENTRY_KNOWN = 1, ENTRY_PIN = 2, ENTRY_GEN = 4 };
_Static_assert(PG_VIEW_MAX_ENTRY_BYTES <= UINT16_MAX, "entry lengths are 16-bit");

struct pg_view {
    view_entry_t **buckets;
    size_t mask; /* buckets - 1, a power of two minus one */
    view_entry_t *head, *tail;
    size_t n, max;
    uint32_t epoch;   /* entries with mark == epoch are held (a wrap after 2^32
                         batches can only keep an entry one batch longer) */
    uint32_t *hashes; /* pg_view_hold_batch's, for cap VMs */
    size_t cap;
};

static uint64_t fnv1a(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint32_t fnv1a32(const char *s, size_t len)
{
    return (uint32_t)fnv1a(s, len);
}

pg_view_t *pg_view_new(size_t max_vms)
{
    if (max_vms == 0 || max_vms > UINT32_MAX)
        return NULL;
    pg_view_t *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return NULL;
    size_t nb = 16;
    while (nb < 2 * max_vms) /* chains of one entry or none, mostly */
        nb <<= 1;
    v->buckets = calloc(nb, sizeof(*v->buckets));
    if (v->buckets == NULL) {
        free(v);
        return NULL;
    }
    v->mask = nb - 1;
    v->max = max_vms;
    v->epoch = 1;
    return v;
}

size_t pg_view_size(const pg_view_t *v)
{
    return v ? v->n : 0;
}

void pg_view_begin(pg_view_t *v)
{
    v->epoch++;
}

static view_entry_t **find(pg_view_t *v, const char *vm, size_t len, uint32_t h)
{
    view_entry_t **p = &v->buckets[h & v->mask];
    while (*p != NULL && !((*p)->hash == h && (*p)->vm_len == len &&
                           memcmp((*p)->data, vm, len) == 0))
        p = &(*p)->chain;
    return p;
}

static void lru_unlink(pg_view_t *v, view_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        v->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        v->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(pg_view_t *v, view_entry_t *e)
{
    e->prev = NULL;
    e->next = v->head;
    if (v->head)
        v->head->prev = e;
    v->head = e;
    if (v->tail == NULL)
        v->tail = e;
}

/* Unlinks *p (found by find) from its bucket and the LRU list, frees it. */
static void remove_at(pg_view_t *v, view_entry_t **p)
{
    view_entry_t *e = *p;
    *p = e->chain;
    lru_unlink(v, e);
    free(e);
    v->n--;
}

uint64_t pg_view_hash(const char *vm, size_t len)
{
    return fnv1a(vm, len);
}

static const pg_view_entry_t *hold_hashed(pg_view_t *v, const char *vm, size_t len,
                                          uint32_t h)
{
    view_entry_t *e = *find(v, vm, len, h);
    if (e == NULL)
        return NULL;
    e->mark = v->epoch;
    if (v->head != e) {
        lru_unlink(v, e);
        lru_push_front(v, e);
    }
    return e;
}

const pg_view_entry_t *pg_view_hold(pg_view_t *v, const char *vm, size_t len)
{
    return hold_hashed(v, vm, len, fnv1a32(vm, len));
}

/* How far ahead of its turn a VM's bucket, then its first entry, is asked
 * for: a batch's VMs are scattered over the table, so each lookup is two
 * cache misses (perf: nine tenths of pg_view_hold) unless they overlap. */
enum { AHEAD_BUCKET = 16, AHEAD_ENTRY = 8 };

void pg_view_hold_batch(pg_view_t *v, const char *const *vms, size_t n,
                        const pg_view_entry_t **hit)
{
    if (n > v->cap) {
        uint32_t *h = realloc(v->hashes, n * sizeof(*h));
        if (h == NULL) { /* no room to look ahead: one at a time */
            for (size_t i = 0; i < n; i++)
                hit[i] = pg_view_hold(v, vms[i], strlen(vms[i]));
            return;
        }
        v->hashes = h;
        v->cap = n;
    }
    for (size_t i = 0; i < n; i++)
        v->hashes[i] = fnv1a32(vms[i], strlen(vms[i]));
    for (size_t i = 0; i < n; i++) {
        if (i + AHEAD_BUCKET < n)
            __builtin_prefetch(&v->buckets[v->hashes[i + AHEAD_BUCKET] & v->mask]);
        if (i + AHEAD_ENTRY < n) {
            const view_entry_t *e = v->buckets[v->hashes[i + AHEAD_ENTRY] & v->mask];
            if (e != NULL) { /* its header and uuid span two lines */
                __builtin_prefetch(e);
                __builtin_prefetch((const char *)e + 64);
            }
        }
        hit[i] = hold_hashed(v, vms[i], strlen(vms[i]), v->hashes[i]);
    }
}

int pg_view_get(pg_view_t *v, const char *vm, size_t len, pg_arena_t *arena,
                pg_vm_binding_t *out)
{
    const view_entry_t *e = *find(v, vm, len, fnv1a32(vm, len));
    return e == NULL ? PG_RETRY : pg_view_copy(e, arena, out);
}

int pg_view_copy(const pg_view_entry_t *e, pg_arena_t *arena, pg_vm_binding_t *out)
{
    memset(out, 0, sizeof(*out));
    const char *p = e->data + e->vm_len + 1;
    out->known = (e->flags & ENTRY_KNOWN) != 0;
    if (out->known && (out->host = pg_arena_strndup(arena, p, e->host_len)) == NULL)
        return PG_FATAL;
    p += e->host_len + 1;
    if ((e->flags & ENTRY_PIN) &&
        (out->pin = pg_arena_strndup(arena, p, e->pin_len)) == NULL)
        return PG_FATAL;
    p += e->pin_len + 1;
    out->generation = (pg_opt_long_t){(e->flags & ENTRY_GEN) != 0, e->generation};
    if (e->n_devices == 0)
        return PG_OK;
    pg_device_ref_t *d = pg_arena_calloc(arena, e->n_devices, sizeof(*d));
    if (d == NULL)
        return PG_FATAL;
    for (size_t i = 0; i < e->n_devices; i++) {
        size_t ul = strlen(p);
        d[i].device_uuid = pg_arena_strndup(arena, p, ul);
        p += ul + 1;
        size_t kl = strlen(p);
        d[i].kind = pg_arena_strndup(arena, p, kl);
        p += kl + 1;
        if (d[i].device_uuid == NULL || d[i].kind == NULL)
            return PG_FATAL;
    }
    out->devices = d;
    out->n_devices = e->n_devices;
    return PG_OK;
}

int pg_view_put(pg_view_t *v, const char *vm, size_t len, const pg_vm_binding_t *b)
{
    uint32_t h = fnv1a32(vm, len);
    view_entry_t **p = find(v, vm, len, h);
    if (*p != NULL)
        remove_at(v, p);
    size_t host_len = b->known && b->host ? strlen(b->host) : 0;
    size_t pin_len = b->pin ? strlen(b->pin) : 0;
    size_t size = len + 1 + host_len + 1 + pin_len + 1;
    for (size_t i = 0; i < b->n_devices; i++)
        size += strlen(b->devices[i].device_uuid) + 1 + strlen(b->devices[i].kind) + 1;
    /* The bound in VMs is a bound in bytes only if entries are: a large
     * entry (many or long ids, as a hostile cache may hold) is read
     * directly every time instead. */
    if (size > PG_VIEW_MAX_ENTRY_BYTES)
        return PG_RETRY;
    if (v->n >= v->max) {
        view_entry_t *t = v->tail;
        if (t == NULL || t->mark == v->epoch)
            return PG_RETRY; /* every entry is held by this batch */
        remove_at(v, find(v, t->data, t->vm_len, t->hash));
    }
    view_entry_t *e = malloc(sizeof(*e) + size);
    if (e == NULL)
        return PG_FATAL;
    memset(e, 0, sizeof(*e));
    e->hash = h;
    e->generation = b->generation.present ? b->generation.value : 0;
    bool known = b->known && b->host != NULL;
    e->flags = (uint8_t)((known ? ENTRY_KNOWN : 0) | (b->pin != NULL ? ENTRY_PIN : 0) |
                         (b->generation.present ? ENTRY_GEN : 0));
    /* Each below size <= PG_VIEW_MAX_ENTRY_BYTES, checked above. */
    e->vm_len = (uint16_t)len;
    e->host_len = (uint16_t)host_len;
    e->pin_len = (uint16_t)pin_len;
    e->n_devices = (uint16_t)b->n_devices;
    char *q = e->data;
    memcpy(q, vm, len);
    q[len] = '\0';
    q += len + 1;
    memcpy(q, known ? b->host : "", host_len + 1);
    q += host_len + 1;
    memcpy(q, b->pin ? b->pin : "", pin_len + 1);
    q += pin_len + 1;
    for (size_t i = 0; i < b->n_devices; i++) {
        size_t ul = strlen(b->devices[i].device_uuid) + 1;
        memcpy(q, b->devices[i].device_uuid, ul);
        q += ul;
        size_t kl = strlen(b->devices[i].kind) + 1;
        memcpy(q, b->devices[i].kind, kl);
        q += kl;
    }
    p = find(v, vm, len, h); /* the eviction may have changed the chain */
    e->chain = *p;
    *p = e;
    lru_push_front(v, e);
    v->n++;
    return PG_OK;
}

bool pg_view_drop(pg_view_t *v, const char *vm, size_t len, bool *held)
{
    view_entry_t **p = find(v, vm, len, fnv1a32(vm, len));
    if (*p == NULL)
        return false;
    if (held != NULL)
        *held = (*p)->mark == v->epoch;
    remove_at(v, p);
    return true;
}

void pg_view_flush(pg_view_t *v)
{
    if (v == NULL)
        return;
    view_entry_t *e = v->head;
    while (e != NULL) {
        view_entry_t *next = e->next;
        free(e);
        e = next;
    }
    memset(v->buckets, 0, (v->mask + 1) * sizeof(*v->buckets));
    v->head = v->tail = NULL;
    v->n = 0;
}

void pg_view_destroy(pg_view_t *v)
{
    if (v == NULL)
        return;
    pg_view_flush(v);
    free(v->buckets);
    free(v->hashes);
    free(v);
}

bool pg_view_key_vm(const char *key, size_t len, pg_bytes_t *vm)
{
    static const char prefix[] = "pinguard:vm:{";
    const size_t pl = sizeof(prefix) - 1;
    if (len < pl + 3 || memcmp(key, prefix, pl) != 0)
        return false;
    static const char *const read[] = {"host", "pin", "devices", "generation",
                                       "quarantine"};
    for (size_t i = len - 2; i > pl; i--)
        if (key[i] == '}' && key[i + 1] == ':') {
            const char *suffix = key + i + 2;
            size_t sl = len - i - 2;
            for (size_t k = 0; k < sizeof(read) / sizeof(read[0]); k++)
                if (strlen(read[k]) == sl && memcmp(suffix, read[k], sl) == 0) {
                    *vm = (pg_bytes_t){key + pl, i - pl};
                    return true;
                }
            return false;
        }
    return false;
}

/* ---- The invalidation connection and the barrier ------------------------- */

enum { VIEW_RETRY_MS = 10000 }; /* between two tries of a view that failed to set up */

static const char INVALIDATE[] = "__redis__:invalidate";
static const char VM_PREFIX[] = "pinguard:vm:";

static bool is_str(const redisReply *r, const char *s)
{
    size_t n = strlen(s);
    return r->type == REDIS_REPLY_STRING && (size_t)r->len == n &&
           memcmp(r->str, s, n) == 0;
}

static void close_inv(pg_bindings_t *b)
{
    if (b->inv != NULL)
        redisFree(b->inv);
    b->inv = NULL;
    b->view_live = false;
}

void pg_bindings_view_lost(pg_bindings_t *b, const char *why)
{
    if (b->view == NULL)
        return;
    if (b->view_live || pg_view_size(b->view) > 0) {
        b->view_stats.flushes++;
        if (why != NULL)
            pg_log_warn("redis_view_flushed", "why", why, "#vms",
                        (long long)pg_view_size(b->view), NULL);
    }
    pg_view_flush(b->view);
    close_inv(b);
}

/* One command on the invalidation connection, before it subscribes. */
static redisReply *inv_command(pg_bindings_t *b, int argc, const char **argv,
                               const char *what, char *errbuf, size_t errlen)
{
    redisReply *r = redisCommandArgv(b->inv, argc, argv, NULL);
    if (r == NULL) {
        pg_errf(errbuf, errlen, "redis %s:%d view %s: %s", b->host, b->port, what,
                b->inv->errstr);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        pg_errf(errbuf, errlen, "redis %s:%d view %s: %s", b->host, b->port, what,
                r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Connects the invalidation connection to the lookup connection's server,
 * subscribes it and points the lookup connection's tracking at it. */
static int setup(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    b->inv = redisConnectWithTimeout(b->host, b->port,
                                     pg_bindings_tv(b->connect_timeout_ms));
    if (b->inv == NULL || b->inv->err) {
        pg_errf(errbuf, errlen, "redis %s:%d view connect: %s", b->host, b->port,
                b->inv ? b->inv->errstr : "out of memory");
        return PG_RETRY;
    }
    redisSetTimeout(b->inv, pg_bindings_tv(b->timeout_ms));
    redisEnableKeepAlive(b->inv);
    redisReply *r;
    if (b->password[0] != '\0') {
        const char *argv[3] = {"AUTH", b->user, b->password};
        bool user = b->user[0] != '\0';
        if (!user)
            argv[1] = b->password;
        if ((r = inv_command(b, user ? 3 : 2, argv, "AUTH", errbuf, errlen)) == NULL)
            return PG_RETRY;
        freeReplyObject(r);
    }
    const char *id_argv[2] = {"CLIENT", "ID"};
    if ((r = inv_command(b, 2, id_argv, "CLIENT ID", errbuf, errlen)) == NULL)
        return PG_RETRY;
    long long id = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    const char *sub_argv[2] = {"SUBSCRIBE", INVALIDATE};
    if ((r = inv_command(b, 2, sub_argv, "SUBSCRIBE", errbuf, errlen)) == NULL)
        return PG_RETRY;
    bool subscribed = r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
                      is_str(r->element[0], "subscribe");
    freeReplyObject(r);
    if (id < 0 || !subscribed) {
        pg_errf(errbuf, errlen,
                "redis %s:%d view: unexpected CLIENT ID or SUBSCRIBE reply", b->host,
                b->port);
        return PG_RETRY;
    }
    /* Off first: after an invalidation connection was lost, the lookup
     * connection still has the prefix, and Redis refuses it twice. */
    char ids[24];
    snprintf(ids, sizeof(ids), "%lld", id);
    const char *off_argv[3] = {"CLIENT", "TRACKING", "off"};
    const char *on_argv[8] = {"CLIENT", "TRACKING", "on",     "REDIRECT",
                              ids,      "BCAST",    "PREFIX", VM_PREFIX};
    const char *const *cmds[2] = {off_argv, on_argv};
    const int argc[2] = {3, 8};
    for (int i = 0; i < 2; i++) {
        r = redisCommandArgv(b->ctx, argc[i], (const char **)cmds[i], NULL);
        if (r == NULL) {
            pg_errf(errbuf, errlen, "redis %s:%d CLIENT TRACKING: %s", b->host, b->port,
                    b->ctx->errstr);
            pg_bindings_drop(b);
            return PG_RETRY;
        }
        int rc = r->type == REDIS_REPLY_STATUS ? PG_OK : PG_RETRY;
        if (rc != PG_OK)
            pg_errf(errbuf, errlen, "redis %s:%d CLIENT TRACKING: %s", b->host, b->port,
                    r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        if (rc != PG_OK)
            return rc;
    }
    return PG_OK;
}

void pg_bindings_view_ready(pg_bindings_t *b)
{
    if (b->view == NULL || b->view_live || b->ctx == NULL ||
        pg_now_mono_ms() < b->view_retry_ms)
        return;
    char err[256];
    pg_view_flush(b->view); /* filled under tracking that may have lapsed */
    if (setup(b, err, sizeof(err)) == PG_OK) {
        b->view_live = true;
        if (b->view_warned) {
            pg_log_info("redis_view_ready", "server",
                        b->primary[0] ? b->primary : b->host, NULL);
            b->view_warned = false;
        }
        return;
    }
    close_inv(b);
    b->view_retry_ms = pg_now_mono_ms() + VIEW_RETRY_MS;
    if (!b->view_warned)
        pg_log_warn("redis_view_unavailable", "error", err, "then",
                    "VMs are read from Redis for every batch; retried every 10 s",
                    NULL);
    b->view_warned = true;
}

/* Applies one invalidation message's payload: a key or an array of keys, or
 * nil (a flush). */
static void apply_invalidation(pg_bindings_t *b, const redisReply *p)
{
    if (p->type == REDIS_REPLY_NIL) {
        if (pg_view_size(b->view) > 0)
            b->view_stats.flushes++;
        pg_view_flush(b->view);
        b->dropped_all = true;
        return;
    }
    size_t n = p->type == REDIS_REPLY_ARRAY ? p->elements : 1;
    for (size_t i = 0; i < n; i++) {
        const redisReply *k = p->type == REDIS_REPLY_ARRAY ? p->element[i] : p;
        pg_bytes_t vm;
        if (k->type == REDIS_REPLY_STRING &&
            pg_view_key_vm(k->str, (size_t)k->len, &vm) &&
            pg_view_drop(b->view, vm.data, vm.len, NULL)) {
            b->view_stats.invalidations++;
            /* Remembered to count the batch's VMs among them (plan_view). */
            if (b->n_dropped == b->cap_dropped) {
                size_t cap = b->cap_dropped ? 2 * b->cap_dropped : 64;
                uint64_t *d = realloc(b->dropped, cap * sizeof(*d));
                if (d == NULL) {
                    b->dropped_all = true; /* the batch's VMs are all read again */
                    continue;
                }
                b->dropped = d;
                b->cap_dropped = cap;
            }
            b->dropped[b->n_dropped++] = pg_view_hash(vm.data, vm.len);
        }
    }
}

bool pg_bindings_view_barrier_send(pg_bindings_t *b)
{
    if (!b->view_live)
        return false;
    if (redisAppendCommand(b->inv, "PING") != REDIS_OK) {
        pg_bindings_view_lost(b, "out of memory for the barrier");
        return false;
    }
    int done = 0;
    while (!done)
        if (redisBufferWrite(b->inv, &done) != REDIS_OK) {
            char msg[160];
            snprintf(msg, sizeof(msg), "invalidation connection: %s",
                     b->inv->errstr[0] ? b->inv->errstr : "write failed");
            pg_bindings_view_lost(b, msg);
            return false;
        }
    return true;
}

void pg_bindings_view_barrier_read(pg_bindings_t *b)
{
    if (!b->view_live)
        return;
    const char *why = NULL;
    for (;;) {
        void *v = NULL;
        if (redisGetReply(b->inv, &v) != REDIS_OK || v == NULL) {
            why = b->inv->errstr[0] ? b->inv->errstr : "no reply";
            break;
        }
        redisReply *r = v;
        bool ok = r->type == REDIS_REPLY_ARRAY;
        if (ok && r->elements == 2 && is_str(r->element[0], "pong")) {
            freeReplyObject(r);
            b->view_stats.barriers++;
            return;
        }
        ok = ok && r->elements == 3 && is_str(r->element[0], "message") &&
             is_str(r->element[1], INVALIDATE);
        if (ok)
            apply_invalidation(b, r->element[2]);
        freeReplyObject(r);
        if (!ok) {
            why = "unexpected message";
            break;
        }
    }
    char msg[160];
    snprintf(msg, sizeof(msg), "invalidation connection: %s", why);
    pg_bindings_view_lost(b, msg);
    b->dropped_all = true;
}

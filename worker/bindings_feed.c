/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The binding feed's side of the cache (SPEC "Binding feed"): applying
 * VmBindings records and tombstones, and the host index beside them.
 *   pinguard:vm:{<vm>}:host, :devices, :generation  replaced by a record whose
 *                                  generation is greater, deleted by a tombstone
 *   pinguard:host:{<host>}:vms     set of vm uuids, kept after each apply
 * A record is applied by one Lua script (APPLY_LUA) on its VM's three keys,
 * which share the VM's hash tag: the comparison of generations and the
 * replacement are one atomic step, so a reader (the lookup script) sees the
 * old entry or the new one, never a mix, and a replay of the topic, twice or
 * interleaved with the live feed, converges on the same state. The script
 * never names :pin or the quarantine keys. All scripts of a batch go out in
 * one pipelined write and their replies are read in order; the host index
 * (another slot) follows in a second round trip, for reports only. The
 * script is loaded once per connection (SCRIPT LOAD) and called by EVALSHA;
 * records answered NOSCRIPT (a SCRIPT FLUSH, a failover) are sent again once
 * after loading it again.
 */
#include "bindings.h"

#include "bindings_internal.h"
#include "log.h"
#include "utf8.h"
#include "util.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "pinguard:vm:{" + vm + "}:generation", "pinguard:host:{" + host + "}:vms" */
#define KEY_MAX (PG_BINDINGS_MAX_VM_LEN + PG_BINDINGS_MAX_LEN + 32)

/* Reply codes of APPLY_LUA beyond pg_apply_result_t. */
enum { CODE_GENERATION_MALFORMED = 4 };

/* KEYS: :host, :devices, :generation of one VM. ARGV[1] 'A' (a record) or 'D'
 * (a tombstone); ARGV[2] the longest host returned; for a record ARGV[3] its
 * generation (canonical decimal, >= 0), ARGV[4] '1' with the host in ARGV[5],
 * or '0' (hostUuid null), ARGV[6..] device uuid and kind pairs.
 * Reply {code, host}: 0 applied (host: the one before), 1 stale (host: the
 * one now), 2 deleted (host: the one before), 3 absent, 4 refused because
 * the stored :generation is no canonical decimal int64 or no string; host
 * nil when there is none or it is no string of 1 to ARGV[2] bytes. The
 * stored generation is compared as digits, not as a Lua number (a double
 * loses int64 precision). HSET takes the devices 500 at a time: unpack() of
 * a whole large entry would overflow Lua's C stack. */
_Static_assert(PG_BINDINGS_MAX_GEN_LEN == 20,
               "APPLY_LUA bounds :generation at 19 digits");
static const char APPLY_LUA[] =
    "local kh, kd, kg = KEYS[1], KEYS[2], KEYS[3]\n"
    "local max_len = tonumber(ARGV[2])\n"
    "local function host_now()\n"
    "  local h = redis.pcall('GET', kh)\n"
    "  if type(h) == 'string' and #h > 0 and #h <= max_len then return h end\n"
    "  return false\n"
    "end\n"
    "if ARGV[1] == 'D' then\n"
    "  local old = host_now()\n"
    "  if redis.call('DEL', kh, kd, kg) == 0 then return {3, false} end\n"
    "  return {2, old}\n"
    "end\n"
    "local function digits_gt(a, b)\n"
    "  if #a ~= #b then return #a > #b end\n"
    "  for i = 1, #a do\n"
    "    local x, y = string.byte(a, i), string.byte(b, i)\n"
    "    if x ~= y then return x > y end\n"
    "  end\n"
    "  return false\n"
    "end\n"
    "local gen, stored = ARGV[3], redis.pcall('GET', kg)\n"
    "if stored then\n"
    "  if type(stored) ~= 'string' then return {4, false} end\n"
    "  local neg = string.sub(stored, 1, 1) == '-'\n"
    "  local d = neg and string.sub(stored, 2) or stored\n"
    "  if not string.find(d, '^[0-9]+$') or #d > 19 or\n"
    "     (#d > 1 and string.byte(d, 1) == 48) or (neg and d == '0') or\n"
    "     (#d == 19 and digits_gt(d, neg and '9223372036854775808' or "
    "'9223372036854775807')) then\n"
    "    return {4, false}\n"
    "  end\n"
    "  if not neg and not digits_gt(gen, d) then return {1, host_now()} end\n"
    "end\n"
    "local old = host_now()\n"
    "if ARGV[4] == '1' then redis.call('SET', kh, ARGV[5]) else redis.call('DEL', kh) "
    "end\n"
    "redis.call('DEL', kd)\n"
    "for i = 6, #ARGV, 1000 do\n"
    "  redis.call('HSET', kd, unpack(ARGV, i, math.min(i + 999, #ARGV)))\n"
    "end\n"
    "redis.call('SET', kg, gen)\n"
    "return {0, old}\n";

const char *pg_bindings_apply_result_name(pg_apply_result_t r)
{
    static const char *const names[PG_APPLY_RESULTS] = {"applied", "stale", "deleted",
                                                        "absent"};
    return (unsigned)r < PG_APPLY_RESULTS ? names[r] : "unknown";
}

/* --- checking a record (pure) ------------------------------------------- */

static pg_bytes_t cstr_bytes(const char *s)
{
    return (pg_bytes_t){s, s != NULL ? strlen(s) : 0};
}

static int ptr_strcmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The device uuid listed twice, or NULL; *oom on allocation failure. */
static const char *duplicate_device(const pg_vm_bindings_t *rec, bool *oom)
{
    *oom = false;
    if (rec->n_devices < 2)
        return NULL;
    const char **u = malloc(rec->n_devices * sizeof(*u));
    if (u == NULL) {
        *oom = true;
        return NULL;
    }
    for (size_t i = 0; i < rec->n_devices; i++)
        u[i] = rec->devices[i].device_uuid;
    qsort(u, rec->n_devices, sizeof(*u), ptr_strcmp);
    const char *dup = NULL;
    for (size_t i = 1; i < rec->n_devices && dup == NULL; i++)
        if (strcmp(u[i - 1], u[i]) == 0)
            dup = u[i];
    free(u);
    return dup;
}

int pg_bindings_check_feed(const pg_bindings_limits_t *lim, pg_bytes_t key,
                           const pg_vm_bindings_t *rec, char *why, size_t why_len)
{
    const char *bad;
    if (key.len == 0) {
        pg_errf(why, why_len, "the key (vmUuid) is empty");
        return PG_INPUT;
    }
    if (key.len > PG_BINDINGS_MAX_VM_LEN) {
        pg_errf(why, why_len, "the key (vmUuid) is %zu bytes, longer than %d", key.len,
                PG_BINDINGS_MAX_VM_LEN);
        return PG_INPUT;
    }
    if (memchr(key.data, '\0', key.len) != NULL) {
        pg_errf(why, why_len, "the key (vmUuid) holds a NUL byte");
        return PG_INPUT;
    }
    if (pg_utf8_check((const uint8_t *)key.data, key.len) != key.len) {
        pg_errf(why, why_len, "the key (vmUuid) is not valid UTF-8");
        return PG_INPUT;
    }
    if (rec == NULL)
        return PG_OK; /* a tombstone names its VM by the key alone */
    pg_bytes_t vm = cstr_bytes(rec->vm_uuid);
    if (rec->vm_uuid == NULL || vm.len != key.len ||
        memcmp(vm.data, key.data, vm.len)) {
        pg_errf(why, why_len, "key names another VM");
        return PG_INPUT;
    }
    if (rec->host_uuid != NULL &&
        (bad = pg_bindings_value_fault(cstr_bytes(rec->host_uuid), lim->max_len))) {
        pg_errf(why, why_len, "hostUuid %s", bad);
        return PG_INPUT;
    }
    if (rec->n_devices > lim->max_devices) {
        pg_errf(why, why_len, "%zu devices, more than redis.max.devices.per.vm (%zu)",
                rec->n_devices, lim->max_devices);
        return PG_INPUT;
    }
    if (rec->n_devices > 0 && rec->devices == NULL) {
        pg_errf(why, why_len, "%zu devices announced, none given", rec->n_devices);
        return PG_INPUT;
    }
    for (size_t i = 0; i < rec->n_devices; i++) {
        const pg_device_ref_t *d = &rec->devices[i];
        if ((bad = pg_bindings_value_fault(cstr_bytes(d->device_uuid), lim->max_len))) {
            pg_errf(why, why_len, "devices[%zu].deviceUuid %s", i, bad);
            return PG_INPUT;
        }
        if ((bad = pg_bindings_value_fault(cstr_bytes(d->kind), lim->max_len))) {
            pg_errf(why, why_len, "devices[%zu].kind %s", i, bad);
            return PG_INPUT;
        }
    }
    if (rec->generation < 0) {
        pg_errf(why, why_len, "generation %" PRId64 " is negative", rec->generation);
        return PG_INPUT;
    }
    bool oom;
    const char *dup = duplicate_device(rec, &oom);
    if (oom) {
        pg_errf(why, why_len, "out of memory checking %zu devices", rec->n_devices);
        return PG_FATAL;
    }
    if (dup != NULL) {
        /* A hash holds one kind per uuid: which one would be left to chance. */
        pg_errf(why, why_len, "device %.128s is listed twice", dup);
        return PG_INPUT;
    }
    /* Last, the worker's own rule on the entry the record becomes (its pin,
     * which the feed never touches, aside). */
    pg_raw_device_t stack_devs[16], *devs = stack_devs;
    if (rec->n_devices > sizeof(stack_devs) / sizeof(stack_devs[0]) &&
        (devs = malloc(rec->n_devices * sizeof(*devs))) == NULL) {
        pg_errf(why, why_len, "out of memory checking %zu devices", rec->n_devices);
        return PG_FATAL;
    }
    for (size_t i = 0; i < rec->n_devices; i++)
        devs[i] = (pg_raw_device_t){cstr_bytes(rec->devices[i].device_uuid),
                                    cstr_bytes(rec->devices[i].kind)};
    char gen[24];
    int gl = snprintf(gen, sizeof(gen), "%" PRId64, rec->generation);
    pg_vm_raw_t raw = {.has_host = rec->host_uuid != NULL,
                       .host = cstr_bytes(rec->host_uuid),
                       .has_generation = true,
                       .generation = {gen, (size_t)gl},
                       .n_devices = rec->n_devices,
                       .devices = rec->n_devices > 0 ? devs : NULL};
    snprintf(raw.host_type, sizeof(raw.host_type), "%s",
             rec->host_uuid != NULL ? "string" : "none");
    snprintf(raw.pin_type, sizeof(raw.pin_type), "none");
    snprintf(raw.devices_type, sizeof(raw.devices_type), "%s",
             rec->n_devices > 0 ? "hash" : "none");
    snprintf(raw.generation_type, sizeof(raw.generation_type), "string");
    char inner[160];
    bool valid = pg_bindings_check(&raw, lim, inner, sizeof(inner));
    if (devs != stack_devs)
        free(devs);
    if (!valid) {
        pg_errf(why, why_len, "the entry would be malformed: %s", inner);
        return PG_INPUT;
    }
    return PG_OK;
}

/* --- the script's replies and the index they imply (pure) --------------- */

int pg_bindings_parse_apply(const redisReply *r, bool tombstone, pg_apply_reply_t *out,
                            char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        (r->element[1]->type != REDIS_REPLY_NIL &&
         r->element[1]->type != REDIS_REPLY_STRING)) {
        pg_errf(errbuf, errlen, "unexpected apply reply (type %d)", r->type);
        return PG_RETRY;
    }
    long long code = r->element[0]->integer;
    const redisReply *h = r->element[1];
    bool ok = tombstone ? code == PG_APPLY_DELETED || code == PG_APPLY_ABSENT
                        : code == PG_APPLY_APPLIED || code == PG_APPLY_STALE ||
                              code == CODE_GENERATION_MALFORMED;
    /* Absent and refused records name no host: the script sends nil. */
    if (ok && h->type == REDIS_REPLY_STRING &&
        (code == PG_APPLY_ABSENT || code == CODE_GENERATION_MALFORMED))
        ok = false;
    if (!ok) {
        pg_errf(errbuf, errlen, "unexpected apply reply code %lld for a %s", code,
                tombstone ? "tombstone" : "record");
        return PG_RETRY;
    }
    out->generation_malformed = code == CODE_GENERATION_MALFORMED;
    out->result = out->generation_malformed ? PG_APPLY_STALE : (pg_apply_result_t)code;
    if (h->type == REDIS_REPLY_STRING) {
        out->has_host = true;
        out->host = (pg_bytes_t){h->str, (size_t)h->len};
    }
    return 0;
}

static bool same_bytes(pg_bytes_t a, pg_bytes_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

size_t pg_bindings_index_ops(const pg_apply_t *rec, const pg_apply_reply_t *reply,
                             size_t max_len, pg_index_op_t out[2])
{
    size_t k = 0;
    bool old_ok =
        reply->has_host && pg_bindings_value_fault(reply->host, max_len) == NULL;
    const char *nh = rec->rec != NULL ? rec->rec->host_uuid : NULL;
    pg_bytes_t new_host = cstr_bytes(nh);
    bool new_ok = nh != NULL && pg_bindings_value_fault(new_host, max_len) == NULL;
    switch (reply->result) {
    case PG_APPLY_APPLIED:
        if (old_ok && (!new_ok || !same_bytes(reply->host, new_host)))
            out[k++] = (pg_index_op_t){false, reply->host, rec->vm};
        if (new_ok)
            out[k++] = (pg_index_op_t){true, new_host, rec->vm};
        break;
    case PG_APPLY_STALE:
        if (old_ok)
            out[k++] = (pg_index_op_t){true, reply->host, rec->vm};
        break;
    case PG_APPLY_DELETED:
        if (old_ok)
            out[k++] = (pg_index_op_t){false, reply->host, rec->vm};
        break;
    case PG_APPLY_ABSENT:
        break;
    }
    return k;
}

/* --- I/O ------------------------------------------------------------------ */

static int load_apply(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    const char *argv[3] = {"SCRIPT", "LOAD", APPLY_LUA};
    redisReply *r = redisCommandArgv(b->ctx, 3, argv, NULL);
    b->stats.round_trips++;
    b->stats.commands++;
    if (r == NULL) {
        pg_errf(errbuf, errlen, "redis %s:%d SCRIPT LOAD: %s", b->host, b->port,
                b->ctx->errstr);
        pg_bindings_drop(b);
        return PG_RETRY;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = pg_bindings_reply_error(b, r, " SCRIPT LOAD", errbuf, errlen);
        pg_bindings_drop(b);
    } else if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        pg_errf(errbuf, errlen, "redis %s:%d SCRIPT LOAD: unexpected reply", b->host,
                b->port);
        pg_bindings_drop(b);
        rc = PG_RETRY;
    } else {
        memcpy(b->apply_sha, r->str, 40);
        b->apply_sha[40] = '\0';
        b->apply_loaded = true;
    }
    freeReplyObject(r);
    return rc;
}

/* Writes "<prefix><middle><suffix>" into buf (KEY_MAX bytes); its length. */
static size_t make_key(char *buf, const char *prefix, pg_bytes_t middle,
                       const char *suffix)
{
    size_t p = strlen(prefix), s = strlen(suffix);
    memcpy(buf, prefix, p);
    memcpy(buf + p, middle.data, middle.len);
    memcpy(buf + p + middle.len, suffix, s);
    return p + middle.len + s;
}

/* The reusable argument vector of one EVALSHA. */
typedef struct {
    const char **argv;
    size_t *lens;
    size_t cap;
} argv_t;

static int argv_reserve(argv_t *a, size_t n)
{
    if (n <= a->cap)
        return 0;
    const char **v = realloc(a->argv, n * sizeof(*v));
    if (v == NULL)
        return -1;
    a->argv = v;
    size_t *l = realloc(a->lens, n * sizeof(*l));
    if (l == NULL)
        return -1;
    a->lens = l;
    a->cap = n;
    return 0;
}

static void argv_free(argv_t *a)
{
    free(a->argv);
    free(a->lens);
}

/* Appends record r's EVALSHA to the connection's output buffer. */
static int append_apply(pg_bindings_t *b, argv_t *a, const pg_apply_t *r)
{
    char kh[KEY_MAX], kd[KEY_MAX], kg[KEY_MAX], max_len[24], gen[24];
    const pg_vm_bindings_t *rec = r->rec;
    size_t need = 8 + (rec != NULL ? 3 + 2 * rec->n_devices : 0);
    if (argv_reserve(a, need) != 0)
        return PG_FATAL;
    size_t n = 0;
#define ARG(p, l) (a->argv[n] = (p), a->lens[n++] = (l))
    ARG("EVALSHA", 7);
    ARG(b->apply_sha, 40);
    ARG("3", 1);
    ARG(kh, make_key(kh, "pinguard:vm:{", r->vm, "}:host"));
    ARG(kd, make_key(kd, "pinguard:vm:{", r->vm, "}:devices"));
    ARG(kg, make_key(kg, "pinguard:vm:{", r->vm, "}:generation"));
    ARG(rec != NULL ? "A" : "D", 1);
    ARG(max_len, (size_t)snprintf(max_len, sizeof(max_len), "%zu", b->max_len));
    if (rec != NULL) {
        ARG(gen, (size_t)snprintf(gen, sizeof(gen), "%" PRId64, rec->generation));
        ARG(rec->host_uuid != NULL ? "1" : "0", 1);
        ARG(rec->host_uuid != NULL ? rec->host_uuid : "",
            cstr_bytes(rec->host_uuid).len);
        for (size_t i = 0; i < rec->n_devices; i++) {
            ARG(rec->devices[i].device_uuid, strlen(rec->devices[i].device_uuid));
            ARG(rec->devices[i].kind, strlen(rec->devices[i].kind));
        }
    }
#undef ARG
    return redisAppendCommandArgv(b->ctx, (int)n, a->argv, a->lens) == REDIS_OK
               ? 0
               : PG_FATAL;
}

/* Reads one reply; NULL on an I/O error or timeout (errbuf filled). */
static redisReply *get_reply(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    void *r = NULL;
    if (redisGetReply(b->ctx, &r) != REDIS_OK || r == NULL) {
        pg_errf(errbuf, errlen, "redis %s:%d: %s", b->host, b->port,
                b->ctx->errstr[0] ? b->ctx->errstr : "no reply");
        return NULL;
    }
    return r;
}

static void free_replies(redisReply **replies, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (replies[i] != NULL)
            freeReplyObject(replies[i]);
}

/* Sends the scripts of the records whose replies[i] is NULL and pending[i]
 * set, in order, and reads their replies into replies[i]; a NOSCRIPT answer
 * leaves replies[i] NULL and pending[i] set. *noscript counts those. */
static int run_scripts(pg_bindings_t *b, argv_t *a, const pg_apply_t *recs, size_t n,
                       redisReply **replies, bool *pending, size_t *noscript,
                       char *errbuf, size_t errlen)
{
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        if (!pending[i])
            continue;
        if (append_apply(b, a, &recs[i]) != 0) {
            pg_errf(errbuf, errlen, "redis: out of memory buffering %zu records", n);
            return PG_FATAL;
        }
        sent++;
    }
    double t0 = (double)pg_now_mono_us();
    b->stats.round_trips++;
    b->stats.commands += sent;
    *noscript = 0;
    for (size_t i = 0; i < n; i++) {
        if (!pending[i])
            continue;
        redisReply *r = get_reply(b, errbuf, errlen);
        if (r == NULL)
            return PG_RETRY;
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
            freeReplyObject(r);
            (*noscript)++;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            int rc = pg_bindings_reply_error(b, r, " apply", errbuf, errlen);
            freeReplyObject(r);
            return rc;
        }
        replies[i] = r;
        pending[i] = false;
    }
    b->stats.last_rtt_seconds = ((double)pg_now_mono_us() - t0) / 1e6;
    return 0;
}

/* A VM uuid for a log line (checked: UTF-8 without NUL). */
static void vm_text(pg_bytes_t vm, char *buf, size_t cap)
{
    size_t n = vm.len < cap - 1 ? vm.len : cap - 1;
    memcpy(buf, vm.data, n);
    buf[n] = '\0';
}

/* The host index after the scripts: one pipelined round trip of SADD/SREM.
 * A wrongly typed index key is a report's problem, not the feed's: skipped
 * with a warning, so that it cannot hold the feed. */
static int update_index(pg_bindings_t *b, const pg_apply_t *recs, size_t n,
                        const pg_apply_reply_t *parsed, char *errbuf, size_t errlen)
{
    size_t nops = 0;
    for (size_t i = 0; i < n; i++) {
        pg_index_op_t ops[2];
        size_t k = pg_bindings_index_ops(&recs[i], &parsed[i], b->max_len, ops);
        for (size_t j = 0; j < k; j++) {
            char key[KEY_MAX];
            size_t kl = make_key(key, "pinguard:host:{", ops[j].host, "}:vms");
            const char *argv[3] = {ops[j].add ? "SADD" : "SREM", key, ops[j].vm.data};
            const size_t lens[3] = {4, kl, ops[j].vm.len};
            if (redisAppendCommandArgv(b->ctx, 3, argv, lens) != REDIS_OK) {
                pg_errf(errbuf, errlen, "redis: out of memory buffering the index");
                return PG_FATAL;
            }
            nops++;
        }
    }
    if (nops == 0)
        return 0;
    b->stats.round_trips++;
    b->stats.commands += nops;
    size_t wrongtype = 0;
    int rc = 0;
    for (size_t i = 0; i < nops; i++) {
        redisReply *r = get_reply(b, errbuf, errlen);
        if (r == NULL)
            return PG_RETRY;
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "WRONGTYPE", 9) == 0)
            wrongtype++;
        else if (r->type == REDIS_REPLY_ERROR && rc == 0)
            rc = pg_bindings_reply_error(b, r, " host index", errbuf, errlen);
        freeReplyObject(r);
    }
    if (wrongtype > 0)
        pg_log_warn("host_index_wrongtype", "#commands", (long long)wrongtype, "detail",
                    "a pinguard:host:{...}:vms key is not a set; left as it is", NULL);
    return rc;
}

int pg_bindings_apply(pg_bindings_t *b, const pg_apply_t *recs, size_t n,
                      pg_apply_result_t *results, char *errbuf, size_t errlen)
{
    const pg_bindings_limits_t lim = {b->max_devices, b->max_len};
    for (size_t i = 0; i < n; i++) {
        char why[256];
        int crc =
            pg_bindings_check_feed(&lim, recs[i].vm, recs[i].rec, why, sizeof(why));
        if (crc != PG_OK) {
            pg_errf(errbuf, errlen, "record %zu of the batch: %s", i, why);
            return crc;
        }
    }
    pg_bindings_abandon(b); /* a lookup's replies would answer these scripts */
    if (n == 0)
        return PG_OK;
    int rc = pg_bindings_connect(b, errbuf, errlen);
    if (rc == 0 && !b->apply_loaded)
        rc = load_apply(b, errbuf, errlen);
    if (rc != 0)
        return rc;

    redisReply **replies = calloc(n, sizeof(*replies));
    bool *pending = malloc(n * sizeof(*pending));
    pg_apply_reply_t *parsed = calloc(n, sizeof(*parsed));
    argv_t a = {0};
    if (replies == NULL || pending == NULL || parsed == NULL) {
        pg_errf(errbuf, errlen, "out of memory for %zu records", n);
        rc = PG_FATAL;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        pending[i] = true;
    size_t noscript = 0;
    rc = run_scripts(b, &a, recs, n, replies, pending, &noscript, errbuf, errlen);
    if (rc == 0 && noscript > 0) {
        /* The script cache lost the script (SCRIPT FLUSH, a failover to a
         * server without it): records before the first NOSCRIPT ran, those
         * answered NOSCRIPT did not. Load it again and send those, once. */
        b->apply_loaded = false;
        rc = load_apply(b, errbuf, errlen);
        if (rc == 0)
            rc = run_scripts(b, &a, recs, n, replies, pending, &noscript, errbuf,
                             errlen);
        if (rc == 0 && noscript > 0) {
            pg_errf(
                errbuf, errlen,
                "redis %s:%d: apply script unknown (NOSCRIPT) right after loading it",
                b->host, b->port);
            rc = PG_RETRY;
        }
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        char err[160];
        rc = pg_bindings_parse_apply(replies[i], recs[i].rec == NULL, &parsed[i], err,
                                     sizeof(err));
        if (rc != 0) {
            pg_errf(errbuf, errlen, "redis %s:%d: record %zu: %s", b->host, b->port, i,
                    err);
            break;
        }
        results[i] = parsed[i].result;
        if (parsed[i].generation_malformed) {
            char vm[PG_BINDINGS_MAX_VM_LEN + 1];
            vm_text(recs[i].vm, vm, sizeof(vm));
            pg_log_warn(
                "feed_generation_malformed", "vm", vm, "#generation",
                (long long)recs[i].rec->generation, "detail",
                "the stored :generation is no canonical decimal int64 string: record "
                "not applied; "
                "the worker vetoes the VM (UNKNOWN_VM) until the key is deleted",
                NULL);
        }
    }
    if (rc == 0)
        rc = update_index(b, recs, n, parsed, errbuf, errlen);
out:
    if (rc != 0)
        pg_bindings_drop(b); /* replies may still be on their way */
    if (replies != NULL)
        free_replies(replies, n);
    free(replies);
    free(pending);
    free(parsed);
    argv_free(&a);
    return rc;
}

int pg_bindings_host_scan(pg_bindings_t *b, const char *host, uint64_t *cursor,
                          size_t count, pg_arena_t *arena, pg_bytes_t **members,
                          size_t *n, char *errbuf, size_t errlen)
{
    const char *bad;
    *members = NULL;
    *n = 0;
    if (host == NULL || (bad = pg_bindings_value_fault(cstr_bytes(host), b->max_len))) {
        pg_errf(errbuf, errlen, "host uuid %s", host == NULL ? "is missing" : bad);
        return PG_INPUT;
    }
    pg_bindings_abandon(b);
    int rc = pg_bindings_connect(b, errbuf, errlen);
    if (rc != 0)
        return rc;
    char key[KEY_MAX], cur[24], cnt[24];
    size_t kl = make_key(key, "pinguard:host:{", cstr_bytes(host), "}:vms");
    snprintf(cur, sizeof(cur), "%" PRIu64, *cursor);
    snprintf(cnt, sizeof(cnt), "%zu", count ? count : 1);
    const char *argv[5] = {"SSCAN", key, cur, "COUNT", cnt};
    const size_t lens[5] = {5, kl, strlen(cur), 5, strlen(cnt)};
    b->stats.round_trips++;
    b->stats.commands++;
    redisReply *r = redisCommandArgv(b->ctx, 5, argv, lens);
    if (r == NULL) {
        pg_errf(errbuf, errlen, "redis %s:%d SSCAN: %s", b->host, b->port,
                b->ctx->errstr);
        pg_bindings_drop(b);
        return PG_RETRY;
    }
    rc = PG_RETRY;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = pg_bindings_reply_error(b, r, " SSCAN", errbuf, errlen);
        pg_bindings_drop(b);
        goto out;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        pg_errf(errbuf, errlen, "redis %s:%d SSCAN: unexpected reply", b->host,
                b->port);
        pg_bindings_drop(b);
        goto out;
    }
    char *end = NULL;
    unsigned long long next = strtoull(r->element[0]->str, &end, 10);
    if (end == r->element[0]->str || *end != '\0') {
        pg_errf(errbuf, errlen, "redis %s:%d SSCAN: bad cursor", b->host, b->port);
        pg_bindings_drop(b);
        goto out;
    }
    const redisReply *m = r->element[1];
    pg_bytes_t *out =
        m->elements ? pg_arena_calloc(arena, m->elements, sizeof(*out)) : NULL;
    if (m->elements > 0 && out == NULL)
        goto oom;
    for (size_t i = 0; i < m->elements; i++) {
        const redisReply *e = m->element[i];
        if (e->type != REDIS_REPLY_STRING) {
            pg_errf(errbuf, errlen, "redis %s:%d SSCAN: a member is no string", b->host,
                    b->port);
            pg_bindings_drop(b);
            goto out;
        }
        char *copy = pg_arena_strndup(arena, e->str, (size_t)e->len);
        if (copy == NULL)
            goto oom;
        out[i] = (pg_bytes_t){copy, (size_t)e->len};
    }
    *members = out;
    *n = m->elements;
    *cursor = (uint64_t)next;
    rc = PG_OK;
    goto out;
oom:
    pg_errf(errbuf, errlen, "out of memory reading the index of host %s", host);
    rc = PG_FATAL;
out:
    freeReplyObject(r);
    return rc;
}

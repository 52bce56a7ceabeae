/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Binding cache over hiredis 0.14. Keys follow the SPEC:
 *   pinguard:vm:{<vm>}:host        string, the VM's current host (presence = known)
 *   pinguard:vm:{<vm>}:devices     hash, device uuid -> kind
 *   pinguard:vm:{<vm>}:pin         string, operator pin reason
 *   pinguard:vm:{<vm>}:generation  string, decimal int64: the binding generation
 * A lookup is one EVALSHA of a small Lua script (LOOKUP_LUA below) per
 * redis.lookup.chunk VMs, which reads each VM's four keys as one atomic
 * snapshot (the whole script is atomic): an upstream transaction that
 * turns a device binding into a pin can never be seen half done, as it could
 * between two commands, and the generation a decision carries is the one of
 * the devices it was decided on. The script also keeps a hostile entry from
 * costing memory or stalling the batch: a key of the wrong type is reported,
 * not raised as an error reply, and an entry with too many devices or an
 * over-long value comes back as a count and a flag instead of its bytes.
 * Every reply is then checked against the SPEC's layout (pg_bindings_check);
 * a VM whose entry fails is handed to the caller as malformed. A VM's four
 * keys share its hash tag, so with redis.lookup.chunk = 1 every script stays
 * within one slot, as a Redis Cluster needs. A batch's scripts go out in one
 * write; pg_bindings_send returns once the first script's reply is in (Redis
 * answers), and the replies are then read VM by VM, so the caller decides
 * the first VMs while Redis still answers the last ones (one round trip,
 * overlapped). Writes of one VM's keys are single
 * commands or MULTI/EXEC blocks, atomic for the same reason.
 * hiredis marks a context dead after any I/O error or timeout, and a timed-out
 * command may still have run; so every failure drops the context and the next
 * call reconnects, re-applying AUTH, SELECT, the socket timeouts and SCRIPT
 * LOAD (which also heals a NOSCRIPT after a SCRIPT FLUSH or a failover).
 * Operators read a VM by one more script (INSPECT_LUA: every key with its
 * type, the pin's expiry and the quarantine keys, bounded) and lift a
 * quarantine by another (UNQUARANTINE_LUA); the worker's quarantine notes
 * live in bindings_quarantine.c.
 * The binding feed's writes and the host index live in bindings_feed.c; the
 * connection and the struct are shared through bindings_internal.h.
 */
#include "bindings.h"

#include "bindings_internal.h"
#include "bindings_view.h"
#include "log.h"
#include "utf8.h"
#include "util.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* "pinguard:vm:{" + a VM uuid of at most PG_BINDINGS_MAX_VM_LEN + "}:generation" */
#define KEY_MAX (PG_BINDINGS_MAX_VM_LEN + 32)

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

pg_bindings_opts_t pg_bindings_opts(const pg_config_t *c)
{
    return (pg_bindings_opts_t){
        .host = c->redis_host,
        .port = c->redis_port,
        .db = c->redis_db,
        .user = c->redis_user,
        .password = c->redis_password,
        .connect_timeout_ms = c->redis_connect_timeout_ms,
        .timeout_ms = c->redis_timeout_ms,
        .view = c->redis_view == 0,
        .view_max_vms = (size_t)c->redis_view_max_vms,
        .max_devices = (size_t)c->redis_max_devices_per_vm,
        .max_len = (size_t)c->max_string_length,
        .chunk = (size_t)c->redis_lookup_chunk,
        .sentinels = c->redis_sentinels,
        .master_name = c->redis_master_name,
        .sentinel_user = c->redis_sentinel_user,
        .sentinel_password = c->redis_sentinel_password,
        .quarantine = {c->quarantine_failures, c->quarantine_window_ms,
                       c->quarantine_base_ms, c->quarantine_max_ms}};
}

pg_bindings_limits_t pg_bindings_limits(const pg_config_t *c)
{
    return (pg_bindings_limits_t){.max_devices = (size_t)c->redis_max_devices_per_vm,
                                  .max_len = (size_t)c->max_string_length};
}

pg_bindings_t *pg_bindings_new(const pg_bindings_opts_t *o)
{
    pg_bindings_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->host = dup_or_empty(o->host);
    b->user = dup_or_empty(o->user);
    b->password = dup_or_empty(o->password);
    b->master_name = dup_or_empty(o->master_name);
    b->sentinel_user = dup_or_empty(o->sentinel_user);
    b->sentinel_password = dup_or_empty(o->sentinel_password);
    b->quiet_failover = o->quiet_failover;
    if (b->host == NULL || b->user == NULL || b->password == NULL ||
        b->master_name == NULL || b->sentinel_user == NULL ||
        b->sentinel_password == NULL) {
        pg_bindings_destroy(b);
        return NULL;
    }
    if (o->sentinels != NULL && o->sentinels[0] != '\0') {
        char err[256];
        /* Checked with the configuration: a list that does not parse here
         * leaves no sentinel, and the host setting stands. */
        if (pg_sentinel_parse_list(o->sentinels, b->sentinel.sentinels, PG_SENTINEL_MAX,
                                   &b->sentinel.n, err, sizeof(err)) != PG_OK)
            b->sentinel.n = 0;
        b->sentinel.master_name = b->master_name;
        b->sentinel.user = b->sentinel_user;
        b->sentinel.password = b->sentinel_password;
        b->sentinel.connect_timeout_ms = o->connect_timeout_ms;
        b->sentinel.timeout_ms = o->timeout_ms;
    }
    b->port = o->port;
    b->db = o->db;
    b->connect_timeout_ms = o->connect_timeout_ms;
    b->timeout_ms = o->timeout_ms;
    b->max_devices = o->max_devices ? o->max_devices : PG_BINDINGS_MAX_DEVICES;
    b->max_len = o->max_len ? o->max_len : PG_BINDINGS_MAX_LEN;
    b->chunk = o->chunk ? o->chunk : PG_BINDINGS_CHUNK;
    b->quarantine = o->quarantine;
    if (o->view &&
        (b->view = pg_view_new(o->view_max_vms ? o->view_max_vms
                                               : PG_BINDINGS_VIEW_MAX_VMS)) == NULL) {
        pg_bindings_destroy(b);
        return NULL;
    }
    char n1[24], n2[24];
    int l1 = snprintf(n1, sizeof(n1), "%zu", b->max_devices);
    int l2 = snprintf(n2, sizeof(n2), "%zu", b->max_len);
    b->args_len = (size_t)snprintf(b->args, sizeof(b->args),
                                   "$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n%c\r\n", l1, n1, l2,
                                   n2, b->view ? '1' : '0');
    return b;
}

static void free_chunk(pg_bindings_t *b)
{
    if (b->chunk_reply != NULL)
        freeReplyObject(b->chunk_reply);
    b->chunk_reply = NULL;
    b->chunk_pos = 0;
}

void pg_bindings_destroy(pg_bindings_t *b)
{
    if (b == NULL)
        return;
    free_chunk(b);
    if (b->ctx != NULL)
        redisFree(b->ctx);
    if (b->inv != NULL)
        redisFree(b->inv);
    pg_view_destroy(b->view);
    free(b->hit);
    free(b->miss);
    free(b->dropped);
    pg_buf_free(&b->cmd);
    free(b->host);
    free(b->user);
    if (b->password != NULL)
        memset(b->password, 0, strlen(b->password));
    free(b->master_name);
    free(b->sentinel_user);
    free(b->sentinel_password);
    free(b->password);
    free(b);
}

static struct timeval ms_to_tv(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

struct timeval pg_bindings_tv(int ms)
{
    return ms_to_tv(ms);
}

static void drop(pg_bindings_t *b)
{
    pg_bindings_view_lost(b, NULL); /* the tracking was this connection's */
    free_chunk(b);
    if (b->ctx != NULL) {
        redisFree(b->ctx);
        b->ctx = NULL;
    }
    b->expected = 0;
    b->pending = 0;
    b->notes_expected = 0;
    b->stats.errors++;
}

/* Classifies an error reply: credentials and permissions are fatal, the
 * rest (LOADING, BUSY, MASTERDOWN, WRONGTYPE, ...) may heal: PG_RETRY. */
static int error_class(const redisReply *r)
{
    if (strncmp(r->str, "WRONGPASS", 9) == 0 || strncmp(r->str, "NOAUTH", 6) == 0 ||
        strncmp(r->str, "NOPERM", 6) == 0 ||
        strstr(r->str, "invalid password") != NULL ||
        strstr(r->str, "invalid username-password") != NULL ||
        /* a password is configured but the server expects none */
        strstr(r->str, "without any password configured") != NULL)
        return PG_FATAL;
    if (strncmp(r->str, "WRONGTYPE", 9) == 0)
        return PG_RETRY;
    return PG_RETRY;
}

/* Fills errbuf with an error reply ("redis host:port<what>: <reply>", naming
 * the settings to check when the credentials are at fault) and returns its
 * class. */
static int reply_error(const pg_bindings_t *b, const redisReply *r, const char *what,
                       char *errbuf, size_t errlen)
{
    int rc = error_class(r);
    pg_errf(errbuf, errlen, "redis %s:%d%s: %s%s", b->host, b->port, what, r->str,
            rc == PG_FATAL ? " (check redis.user and the password)" : "");
    return rc;
}

static int simple_command(pg_bindings_t *b, int argc, const char **argv, char *errbuf,
                          size_t errlen, const char *what)
{
    redisReply *r = redisCommandArgv(b->ctx, argc, argv, NULL);
    if (r == NULL) {
        pg_errf(errbuf, errlen, "redis %s:%d %s: %s", b->host, b->port, what,
                b->ctx->errstr);
        drop(b);
        return PG_RETRY;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        char where[32];
        snprintf(where, sizeof(where), " %s", what);
        rc = reply_error(b, r, where, errbuf, errlen);
        drop(b);
    }
    freeReplyObject(r);
    return rc;
}

/* The snapshots of up to redis.lookup.chunk VMs, each VM's atomic (the whole
 * script is). KEYS: :host, :pin, :devices and :generation of each VM in turn;
 * ARGV: the most devices and the longest value returned, and '1' when the
 * view asks whether :host, :pin or :generation has a TTL (flag 128: the
 * entry is not cached; a :devices that expires only vetoes longer from the
 * view, and a :quarantine is never cached). Reply: per VM
 * {flags, host, pin, n, devs, gen}: flags 1/2/4/16 = :host/:pin/:devices/
 * :generation of the wrong type, 8 = :host or a device value longer than
 * ARGV[2] (then neither is returned), 32 = :generation longer than
 * PG_BINDINGS_MAX_GEN_LEN (then it is not returned); host, pin and gen nil
 * when absent (the pin cut to ARGV[2] bytes: only its presence decides); n
 * the number of devices, devs their uuid/kind pairs, empty when n > ARGV[1].
 * MGET answers nil for a key of another type, so EXISTS tells a missing key
 * from a wrong one; HGETALL by pcall, so that WRONGTYPE is a flag of this
 * VM, not an error of the batch. Each redis.call costs about as much as the
 * command itself, so the common case makes three: several VMs per script
 * share the call's fixed cost (tests/bench). */
_Static_assert(PG_BINDINGS_MAX_GEN_LEN == 20,
               "LOOKUP_LUA bounds :generation at 20 bytes");
static const char LOOKUP_LUA[] =
    "local max_n, max_len = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local out = {}\n"
    "for v = 0, #KEYS / 5 - 1 do\n"
    "  local kh, kp, kd, kg, kq = KEYS[5 * v + 1], KEYS[5 * v + 2], KEYS[5 * v + 3], "
    "KEYS[5 * v + 4], KEYS[5 * v + 5]\n"
    "  local s = redis.call('MGET', kh, kp, kg, kq)\n"
    "  local host, pin, gen, q, flags = s[1], s[2], s[3], s[4], 0\n"
    "  if redis.call('EXISTS', kh, kp, kg, kq) ~= (host and 1 or 0) + (pin and 1 or 0) "
    "+ (gen and 1 or 0) + (q and 1 or 0) then\n"
    "    if not host and redis.call('TYPE', kh).ok ~= 'none' then flags = 1 end\n"
    "    if not pin and redis.call('TYPE', kp).ok ~= 'none' then flags = flags + 2 "
    "end\n"
    "    if not gen and redis.call('TYPE', kg).ok ~= 'none' then flags = flags + 16 "
    "end\n"
    "    if not q and redis.call('TYPE', kq).ok ~= 'none' then flags = flags + 64 "
    "end\n"
    "  end\n"
    "  if q and #q > 64 then q = string.sub(q, 1, 64) end\n"
    "  if host and #host > max_len then host = false; flags = flags + 8 end\n"
    "  if pin and #pin > max_len then pin = string.sub(pin, 1, max_len) end\n"
    "  if gen and #gen > 20 then gen = false; flags = flags + 32 end\n"
    "  local n, devs = 0, redis.pcall('HGETALL', kd)\n"
    "  if devs.err then\n"
    "    devs = {}; flags = flags + 4\n"
    "  else\n"
    "    n = #devs / 2\n"
    "    if n > max_n then devs = {} end\n"
    "    for i = 1, #devs do\n"
    "      if #devs[i] > max_len then devs = {}; flags = bit.bor(flags, 8); break end\n"
    "    end\n"
    "  end\n"
    "  if ARGV[3] == '1' and ((host and redis.call('PTTL', kh) >= 0) or\n"
    "      (pin and redis.call('PTTL', kp) >= 0) or\n"
    "      (gen and redis.call('PTTL', kg) >= 0)) then\n"
    "    flags = flags + 128\n"
    "  end\n"
    "  out[v + 1] = {flags, host, pin, n, devs, gen, q}\n"
    "end\n"
    "return out\n";

/* For operators: every key with its type, values up to ARGV[1] devices.
 * KEYS: :host, :pin, :devices, :generation, :failures, :quarantine,
 * :backoff (one VM: one hash slot). ARGV: the most devices returned, the
 * window's first score (now - quarantine.window.ms), the most failures
 * listed, the longest requestId or back-off field returned (longer ones are
 * cut). Reply: {type of :host, of :pin, of :devices, host, pin, n, devs,
 * type of :generation, generation, type of :failures, of :quarantine, of
 * :backoff, PTTL of :pin, members of :failures, of them in the window, the
 * newest of those (id, score pairs, newest first), :quarantine's value (cut
 * to 64 bytes), its PTTL, :backoff's last, since, started_by, lifted_by}. */
static const char INSPECT_LUA[] =
    "local t = {}\n"
    "for i = 1, 7 do t[i] = redis.call('TYPE', KEYS[i]).ok end\n"
    "local max_len = tonumber(ARGV[4])\n"
    "local host, pin, n, devs, gen = false, false, 0, {}, false\n"
    "if t[1] == 'string' then host = redis.call('GET', KEYS[1]) end\n"
    "if t[2] == 'string' then pin = redis.call('GET', KEYS[2]) end\n"
    "if t[3] == 'hash' then\n"
    "  n = redis.call('HLEN', KEYS[3])\n"
    "  if n <= tonumber(ARGV[1]) then devs = redis.call('HGETALL', KEYS[3]) end\n"
    "end\n"
    "if t[4] == 'string' then gen = redis.call('GET', KEYS[4]) end\n"
    "local nf, nw, fl = 0, 0, {}\n"
    "if t[5] == 'zset' then\n"
    "  nf = redis.call('ZCARD', KEYS[5])\n"
    "  nw = redis.call('ZCOUNT', KEYS[5], ARGV[2], '+inf')\n"
    "  fl = redis.call('ZREVRANGEBYSCORE', KEYS[5], '+inf', ARGV[2], 'WITHSCORES', "
    "'LIMIT', 0, tonumber(ARGV[3]))\n"
    "  for i = 1, #fl, 2 do fl[i] = string.sub(fl[i], 1, max_len) end\n"
    "end\n"
    "local q = false\n"
    "if t[6] == 'string' then q = string.sub(redis.call('GET', KEYS[6]), 1, 64) end\n"
    "local bo = {false, false, false, false}\n"
    "if t[7] == 'hash' then\n"
    "  bo = redis.call('HMGET', KEYS[7], 'last', 'since', 'started_by', 'lifted_by')\n"
    "  for i = 1, 4 do if bo[i] then bo[i] = string.sub(bo[i], 1, max_len) end end\n"
    "end\n"
    "return {t[1], t[2], t[3], host, pin, n, devs, t[4], gen, t[5], t[6], t[7], "
    "redis.call('PTTL', KEYS[2]), nf, nw, fl, q, redis.call('PTTL', KEYS[6]), bo}\n";

/* Lifts a quarantine. KEYS: :failures, :quarantine, :backoff. Reply:
 * {whether :quarantine existed, its PTTL, its value (cut to 64 bytes) or
 * nil, the members :failures had}. */
static const char UNQUARANTINE_LUA[] =
    "local kf, kq, kb = KEYS[1], KEYS[2], KEYS[3]\n"
    "local had, ttl, v = redis.call('EXISTS', kq), redis.call('PTTL', kq), false\n"
    "if redis.call('TYPE', kq).ok == 'string' then v = string.sub(redis.call('GET', "
    "kq), 1, 64) end\n"
    "local nf = 0\n"
    "if redis.call('TYPE', kf).ok == 'zset' then nf = redis.call('ZCARD', kf) end\n"
    "redis.call('DEL', kf, kq, kb)\n"
    "return {had, ttl, v, nf}\n";

/* Loads one script, its SHA1 into sha (41 bytes). */
static int load_one(pg_bindings_t *b, const char *script, char *sha, char *errbuf,
                    size_t errlen)
{
    const char *argv[3] = {"SCRIPT", "LOAD", script};
    redisReply *r = redisCommandArgv(b->ctx, 3, argv, NULL);
    if (r == NULL) {
        pg_errf(errbuf, errlen, "redis %s:%d SCRIPT LOAD: %s", b->host, b->port,
                b->ctx->errstr);
        drop(b);
        return PG_RETRY;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = reply_error(b, r, " SCRIPT LOAD", errbuf, errlen);
        drop(b);
    } else if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        pg_errf(errbuf, errlen, "redis %s:%d SCRIPT LOAD: unexpected reply", b->host,
                b->port);
        drop(b);
        rc = PG_RETRY;
    } else {
        memcpy(sha, r->str, 40);
        sha[40] = '\0';
    }
    freeReplyObject(r);
    return rc;
}

/* The scripts every connection runs: the lookup and the result notes. */
static int load_script(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    int rc = load_one(b, LOOKUP_LUA, b->sha, errbuf, errlen);
    return rc != 0 ? rc
                   : load_one(b, PG_BINDINGS_RESULT_LUA, b->note_sha, errbuf, errlen);
}

/* With Sentinel: which server to connect to, asked of the sentinels on
 * every (re)connect (a failover moves the primary). */
static int resolve_primary(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    pg_redis_addr_t a;
    int rc = pg_sentinel_resolve(&b->sentinel, &b->sentinel_next, &a, errbuf, errlen);
    if (rc != PG_OK)
        return rc;
    char *host = strdup(a.host);
    if (host == NULL) {
        pg_errf(errbuf, errlen, "out of memory");
        return PG_FATAL;
    }
    free(b->host);
    b->host = host;
    b->port = a.port;
    return PG_OK;
}

/* With Sentinel, a sentinel's answer is only a candidate: the server must
 * say it is a primary (ROLE) before anything is read from or written to it.
 * Its replication id, compared with the last primary's, tells a failover
 * (after which writes the old primary had not replicated are lost). */
static int check_primary(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    const char *role_argv[1] = {"ROLE"};
    redisReply *r = redisCommandArgv(b->ctx, 1, role_argv, NULL);
    bool primary = false;
    char err[128];
    int rc =
        r == NULL ? PG_RETRY : pg_sentinel_parse_role(r, &primary, err, sizeof(err));
    freeReplyObject(r);
    if (rc != PG_OK || !primary) {
        pg_errf(errbuf, errlen, "redis %s:%d is not the primary of %s (%s)", b->host,
                b->port, b->master_name,
                rc != PG_OK ? "no ROLE answer" : "ROLE says it is not a master");
        drop(b);
        return PG_RETRY;
    }
    const char *info_argv[2] = {"INFO", "replication"};
    r = redisCommandArgv(b->ctx, 2, info_argv, NULL);
    char replid[41] = "";
    if (r != NULL && r->type == REDIS_REPLY_STRING)
        pg_sentinel_parse_replid(r->str, (size_t)r->len, replid);
    freeReplyObject(r);
    char where[sizeof(b->primary)];
    snprintf(where, sizeof(where), "%s:%d", b->host, b->port);
    if (b->replid[0] != '\0' && replid[0] != '\0' && strcmp(b->replid, replid) != 0) {
        b->failovers++;
        if (!b->quiet_failover)
            pg_log_warn("redis_failover", "master", b->master_name, "old_primary",
                        b->primary, "new_primary", where, "old_replid", b->replid,
                        "new_replid", replid, "note",
                        "writes the old primary had not replicated are lost", NULL);
    }
    if (replid[0] != '\0')
        memcpy(b->replid, replid, sizeof(b->replid));
    memcpy(b->primary, where, sizeof(b->primary));
    return PG_OK;
}

unsigned long long pg_bindings_failovers(const pg_bindings_t *b)
{
    return b->failovers;
}

static int ensure_connected(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    if (b->ctx != NULL)
        return 0;
    if (b->sentinel.n > 0) {
        int rc = resolve_primary(b, errbuf, errlen);
        if (rc != PG_OK)
            return rc;
    }
    redisContext *c =
        redisConnectWithTimeout(b->host, b->port, ms_to_tv(b->connect_timeout_ms));
    if (c == NULL) {
        pg_errf(errbuf, errlen, "redis %s:%d: out of memory for a context", b->host,
                b->port);
        return PG_FATAL;
    }
    if (c->err) {
        pg_errf(errbuf, errlen, "redis %s:%d connect: %s", b->host, b->port, c->errstr);
        redisFree(c);
        b->stats.errors++;
        return PG_RETRY;
    }
    /* The connect timeout bounds only the connect: set the I/O bound too. */
    redisSetTimeout(c, ms_to_tv(b->timeout_ms));
    redisEnableKeepAlive(c);
    b->ctx = c;
    b->apply_loaded = false; /* a new connection may not know the feed's script */
    if (b->ever_connected)
        b->stats.reconnects++;
    b->ever_connected = true;

    int rc = 0;
    if (b->password[0] != '\0') {
        const char *argv[3] = {"AUTH", b->user, b->password};
        if (b->user[0] != '\0')
            rc = simple_command(b, 3, argv, errbuf, errlen, "AUTH");
        else {
            argv[1] = b->password;
            rc = simple_command(b, 2, argv, errbuf, errlen, "AUTH");
        }
        if (rc != 0)
            return rc;
    }
    if (b->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", b->db);
        const char *argv[2] = {"SELECT", db};
        rc = simple_command(b, 2, argv, errbuf, errlen, "SELECT");
        if (rc != 0)
            return rc;
    }
    if (b->sentinel.n > 0 && (rc = check_primary(b, errbuf, errlen)) != 0)
        return rc;
    return load_script(b, errbuf, errlen);
}

/* The connection for the module's other files (bindings_internal.h). */
int pg_bindings_connect(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    return ensure_connected(b, errbuf, errlen);
}

void pg_bindings_drop(pg_bindings_t *b)
{
    drop(b);
}

int pg_bindings_reply_error(const pg_bindings_t *b, const redisReply *r,
                            const char *what, char *errbuf, size_t errlen)
{
    return reply_error(b, r, what, errbuf, errlen);
}

int pg_bindings_ping(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    int rc = ensure_connected(b, errbuf, errlen);
    if (rc != 0)
        return rc;
    const char *argv[1] = {"PING"};
    b->stats.round_trips++;
    b->stats.commands++;
    return simple_command(b, 1, argv, errbuf, errlen, "PING");
}

static int vm_key(char *buf, const char *vm, const char *suffix)
{
    int n = snprintf(buf, KEY_MAX, "pinguard:vm:{%s}:%s", vm, suffix);
    return n > 0 && n < KEY_MAX ? n : -1;
}

static double now_seconds(void)
{
    return (double)pg_now_mono_us() / 1e6;
}

/* Reads one reply; an error reply is classified and freed. */
static int read_reply(pg_bindings_t *b, redisReply **out, char *errbuf, size_t errlen)
{
    void *r = NULL;
    if (redisGetReply(b->ctx, &r) != REDIS_OK || r == NULL) {
        pg_errf(errbuf, errlen, "redis %s:%d: %s", b->host, b->port,
                b->ctx->errstr[0] ? b->ctx->errstr : "no reply");
        return PG_RETRY;
    }
    redisReply *reply = r;
    if (reply->type == REDIS_REPLY_ERROR) {
        int rc = reply_error(b, reply, "", errbuf, errlen);
        freeReplyObject(reply);
        return rc;
    }
    *out = reply;
    return 0;
}

/* Sends everything appended so far and reads `n` replies into `replies`.
 * On failure frees whatever was read and drops the connection. */
static int exchange(pg_bindings_t *b, redisReply **replies, size_t n, char *errbuf,
                    size_t errlen)
{
    double t0 = now_seconds();
    size_t got = 0;
    int rc = 0;
    while (got < n && (rc = read_reply(b, &replies[got], errbuf, errlen)) == 0)
        got++;
    b->stats.round_trips++;
    b->stats.commands += n;
    b->stats.last_rtt_seconds = now_seconds() - t0;
    if (rc != 0) {
        for (size_t i = 0; i < got; i++)
            freeReplyObject(replies[i]);
        drop(b);
    }
    return rc;
}

static int append(pg_bindings_t *b, int argc, const char **argv, const size_t *lens)
{
    return redisAppendCommandArgv(b->ctx, argc, argv, lens) == REDIS_OK ? 0 : -1;
}

/* Appends a RESP bulk string header, "$<n>\r\n" (by hand: snprintf showed up
 * in the profile at one header per key). */
static int resp_head(pg_buf_t *b, size_t n)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    *--p = '\n';
    *--p = '\r';
    do
        *--p = (char)('0' + n % 10);
    while ((n /= 10) > 0);
    *--p = '$';
    return pg_buf_append(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* Appends one RESP bulk string. */
static int resp_bulk(pg_buf_t *b, const char *s, size_t n)
{
    return resp_head(b, n) || pg_buf_append(b, s, n) || pg_buf_append(b, "\r\n", 2);
}

/* Appends a VM key as a RESP bulk string: pinguard:vm:{<vm>}:<suffix>. */
static int resp_vm_key(pg_buf_t *b, const char *vm, size_t vm_len, const char *suffix)
{
    static const char prefix[] = "pinguard:vm:{";
    size_t sl = strlen(suffix), n = sizeof(prefix) - 1 + vm_len + 2 + sl;
    return resp_head(b, n) || pg_buf_append(b, prefix, sizeof(prefix) - 1) ||
           pg_buf_append(b, vm, vm_len) || pg_buf_append(b, "}:", 2) ||
           pg_buf_append(b, suffix, sl) || pg_buf_append(b, "\r\n", 2);
}

/* Appends a RESP bulk string holding a decimal number. */
static int resp_num(pg_buf_t *b, size_t n)
{
    char tmp[24];
    int len = snprintf(tmp, sizeof(tmp), "%zu", n);
    return resp_bulk(b, tmp, (size_t)len);
}

int pg_bindings_format_lookups(pg_buf_t *out, const char *sha, const char *args,
                               size_t args_len, size_t chunk,
                               const char *const *vm_uuids, size_t n, char *errbuf,
                               size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(vm_uuids[i]);
        if (len == 0 || len > PG_BINDINGS_MAX_VM_LEN) {
            pg_errf(errbuf, errlen, "vm uuid of %zu bytes cannot name a cache key",
                    len);
            return PG_INPUT;
        }
    }
    for (size_t first = 0; first < n; first += chunk) {
        size_t c = n - first < chunk ? n - first : chunk;
        /* EVALSHA sha numkeys <5 keys per VM> max_n max_len */
        int rc = pg_buf_append(out, "*", 1);
        char count[24];
        int cl = snprintf(count, sizeof(count), "%zu\r\n", 3 + 5 * c + 3);
        rc |= pg_buf_append(out, count, (size_t)cl) || resp_bulk(out, "EVALSHA", 7) ||
              resp_bulk(out, sha, 40) || resp_num(out, 5 * c);
        for (size_t i = first; i < first + c && rc == 0; i++) {
            size_t len = strlen(vm_uuids[i]);
            rc |= resp_vm_key(out, vm_uuids[i], len, "host") ||
                  resp_vm_key(out, vm_uuids[i], len, "pin") ||
                  resp_vm_key(out, vm_uuids[i], len, "devices") ||
                  resp_vm_key(out, vm_uuids[i], len, "generation") ||
                  resp_vm_key(out, vm_uuids[i], len, "quarantine");
        }
        if (rc != 0 || pg_buf_append(out, args, args_len) != 0) {
            pg_errf(errbuf, errlen, "out of memory formatting %zu lookups", n);
            return PG_FATAL;
        }
    }
    return 0;
}

/* One EVALSHA of LOOKUP_LUA per chunk of VMs, formatted straight into one
 * buffer and written in one go. */
/* Reads the next script's reply (one entry per VM of its chunk) into
 * b->chunk_reply. On failure the connection is dropped. */
static int read_chunk(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    size_t want = b->pending < b->chunk ? b->pending : b->chunk;
    int rc = read_reply(b, &b->chunk_reply, errbuf, errlen);
    if (rc == PG_OK && (b->chunk_reply->type != REDIS_REPLY_ARRAY ||
                        b->chunk_reply->elements != want)) {
        pg_errf(errbuf, errlen, "redis %s:%d: lookup reply of %zu entries for %zu VMs",
                b->host, b->port,
                b->chunk_reply->type == REDIS_REPLY_ARRAY ? b->chunk_reply->elements
                                                          : 0,
                want);
        rc = PG_RETRY;
    }
    b->chunk_pos = 0;
    if (rc != PG_OK)
        drop(b); /* the rest of the exchange cannot be trusted */
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The batch's VMs the view holds (b->hit, held for the batch) and those to
 * read from Redis (b->miss, in batch order: pg_bindings_next reads their
 * replies in that order); their count. */
static size_t split_view(pg_bindings_t *b, const char *const *vms, size_t n)
{
    pg_view_begin(b->view);
    if (b->view_live)
        pg_view_hold_batch(b->view, vms, n, b->hit);
    else
        memset(b->hit, 0, n * sizeof(*b->hit));
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (b->hit[i] == NULL)
            b->miss[m++] = vms[i];
    return m;
}

/* With the view on: sends the barrier's PING and splits the batch as the
 * view stands before it (the barrier is read by pg_bindings_send_notes once
 * the lookups are on their way: one round trip for both). *barrier says
 * whether a PING was sent. */
static int plan_view(pg_bindings_t *b, const char *const *vms, size_t n, size_t *n_miss,
                     bool *barrier, char *errbuf, size_t errlen)
{
    if (n > b->batch_cap) {
        const pg_view_entry_t **hit = realloc(b->hit, n * sizeof(*hit));
        if (hit != NULL)
            b->hit = hit;
        const char **miss = realloc(b->miss, n * sizeof(*miss));
        if (miss != NULL)
            b->miss = miss;
        if (hit == NULL || miss == NULL) {
            pg_errf(errbuf, errlen, "out of memory planning %zu lookups", n);
            return PG_FATAL;
        }
        b->batch_cap = n;
    }
    pg_bindings_view_ready(b);
    if (b->ctx == NULL) { /* CLIENT TRACKING found the connection gone */
        pg_errf(errbuf, errlen, "redis %s:%d: connection lost setting up the view",
                b->host, b->port);
        return PG_RETRY;
    }
    b->n_dropped = 0;
    b->dropped_all = false;
    *barrier = pg_bindings_view_barrier_send(b);
    *n_miss = split_view(b, vms, n);
    return PG_OK;
}

/* After the barrier: how many of the VMs the view served were dropped by it
 * (every one of them when it emptied the view or lost count). Those entries
 * may be freed: the batch is split again. */
static size_t dropped_hits(pg_bindings_t *b, const char *const *vms, size_t n)
{
    if (b->n_dropped == 0 && !b->dropped_all)
        return 0;
    if (b->n_dropped > 1)
        qsort(b->dropped, b->n_dropped, sizeof(*b->dropped), cmp_u64);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (b->hit[i] == NULL)
            continue;
        uint64_t h = pg_view_hash(vms[i], strlen(vms[i]));
        if (b->dropped_all ||
            bsearch(&h, b->dropped, b->n_dropped, sizeof(h), cmp_u64) != NULL)
            k++;
    }
    return k;
}

void pg_bindings_view_stats(const pg_bindings_t *b, pg_view_stats_t *out)
{
    *out = b->view_stats;
    out->vms = pg_view_size(b->view);
    out->live = b->view_live;
}

int pg_bindings_send(pg_bindings_t *b, const char *const *vm_uuids, size_t n,
                     char *errbuf, size_t errlen)
{
    return pg_bindings_send_notes(b, vm_uuids, n, NULL, 0, 0, errbuf, errlen);
}

/* Writes the pipeline in b->cmd. PG_OK, or PG_RETRY/PG_FATAL with the
 * connection dropped. */
static int write_cmd(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    if (redisAppendFormattedCommand(b->ctx, (const char *)b->cmd.data, b->cmd.len) !=
        REDIS_OK) {
        pg_errf(errbuf, errlen, "redis: out of memory buffering the pipeline");
        drop(b);
        return PG_FATAL;
    }
    int done = 0;
    while (!done)
        if (redisBufferWrite(b->ctx, &done) != REDIS_OK) {
            pg_errf(errbuf, errlen, "redis %s:%d: %s", b->host, b->port,
                    b->ctx->errstr[0] ? b->ctx->errstr : "write failed");
            drop(b);
            return PG_RETRY;
        }
    return PG_OK;
}

/* Reads and frees one reply; PG_OK, or the error with the connection
 * dropped. */
static int skip_reply(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    redisReply *r = NULL;
    int rc = read_reply(b, &r, errbuf, errlen);
    freeReplyObject(r);
    if (rc != PG_OK)
        drop(b);
    return rc;
}

int pg_bindings_send_notes(pg_bindings_t *b, const char *const *vm_uuids, size_t n,
                           const pg_result_note_t *notes, size_t n_notes,
                           int64_t now_ms, char *errbuf, size_t errlen)
{
    pg_bindings_abandon(b); /* its replies would answer this exchange */
    int rc = ensure_connected(b, errbuf, errlen);
    if (rc != 0 || n == 0)
        return rc;
    size_t n_send = n;
    const char *const *send_vms = vm_uuids;
    bool barrier = false;
    if (b->view != NULL) {
        if ((rc = plan_view(b, vm_uuids, n, &n_send, &barrier, errbuf, errlen)) !=
            PG_OK)
            return rc;
        send_vms = b->miss;
    }
    /* Served from the view, a VM needs the lookup connection's reply to a
     * command sent after the batch was polled (bindings_view.c): ROLE or the
     * lookups do, else one PING. */
    bool ping = n_send == 0 && b->sentinel.n == 0;
    pg_buf_reset(&b->cmd);
    /* With Sentinel every batch starts with ROLE: a primary demoted since the
     * connection was made (a paused one that came back as a replica) is not
     * read from, and the lookups right behind it ran on the primary. */
    bool role = b->sentinel.n > 0;
    if (role && pg_buf_append(&b->cmd, "*1\r\n$4\r\nROLE\r\n", 14) != 0) {
        pg_errf(errbuf, errlen, "out of memory formatting the lookups");
        return PG_FATAL;
    }
    if (ping && pg_buf_append(&b->cmd, "*1\r\n$4\r\nPING\r\n", 14) != 0) {
        pg_errf(errbuf, errlen, "out of memory formatting the lookups");
        return PG_FATAL;
    }
    rc = pg_bindings_format_lookups(&b->cmd, b->sha, b->args, b->args_len, b->chunk,
                                    send_vms, n_send, errbuf, errlen);
    /* The notes write: they go out once the barrier has settled which
     * lookups stand, so that a batch read again never notes twice. */
    if (rc == 0 && !barrier && n_notes > 0)
        rc = pg_bindings_format_notes(&b->cmd, b->note_sha, notes, n_notes, b->chunk,
                                      &b->quarantine, now_ms, errbuf, errlen);
    if (rc != 0)
        return rc;
    if ((rc = write_cmd(b, errbuf, errlen)) != PG_OK)
        return rc;
    b->stats.round_trips++;
    b->stats.commands += (n_send + b->chunk - 1) / b->chunk + role + ping;
    /* The barrier's pong, while Redis answers the lookups. A VM of the batch
     * it dropped was served from an entry that may be gone: the lookups
     * already sent are read and thrown away, and the batch is split and
     * read again. */
    size_t skip = 0;
    if (barrier) {
        pg_bindings_view_barrier_read(b);
        size_t reread = dropped_hits(b, vm_uuids, n);
        pg_buf_reset(&b->cmd);
        rc = 0;
        if (reread > 0) {
            b->view_stats.rereads += reread;
            skip = (n_send + b->chunk - 1) / b->chunk;
            n_send = split_view(b, vm_uuids, n);
            rc = pg_bindings_format_lookups(&b->cmd, b->sha, b->args, b->args_len,
                                            b->chunk, b->miss, n_send, errbuf, errlen);
            b->stats.round_trips++;
            b->stats.commands += (n_send + b->chunk - 1) / b->chunk;
        }
        if (rc == 0 && n_notes > 0)
            rc =
                pg_bindings_format_notes(&b->cmd, b->note_sha, notes, n_notes, b->chunk,
                                         &b->quarantine, now_ms, errbuf, errlen);
        if (rc != 0) {
            drop(b); /* the lookups sent are answered to no one */
            return rc;
        }
        if (b->cmd.len > 0 && (rc = write_cmd(b, errbuf, errlen)) != PG_OK)
            return rc;
    }
    if (b->view != NULL) {
        b->view_stats.hits += n - n_send;
        if (b->view_live)
            b->view_stats.misses += n_send;
    }
    b->stats.commands += (n_notes + b->chunk - 1) / b->chunk;
    if (role) {
        redisReply *r = NULL;
        bool primary = false;
        char err[128];
        rc = read_reply(b, &r, errbuf, errlen);
        if (rc == PG_OK &&
            (pg_sentinel_parse_role(r, &primary, err, sizeof(err)) != 0 || !primary)) {
            pg_errf(errbuf, errlen, "redis %s:%d is no longer the primary of %s",
                    b->host, b->port, b->master_name);
            rc = PG_RETRY;
        }
        freeReplyObject(r);
        if (rc != PG_OK) {
            drop(b); /* the next call asks the sentinels again */
            return rc;
        }
    }
    if (ping && (rc = skip_reply(b, errbuf, errlen)) != PG_OK)
        return rc;
    for (size_t i = 0; i < skip; i++)
        if ((rc = skip_reply(b, errbuf, errlen)) != PG_OK)
            return rc;
    b->expected = n;
    b->pending = n_send;
    b->next_vm = 0;
    b->n_vms = n;
    b->notes_expected = n_notes;
    /* The first script's reply proves that Redis answers; it is kept for
     * pg_bindings_next. */
    return n_send > 0 ? read_chunk(b, errbuf, errlen) : PG_OK;
}

static bool is_bulk(const redisReply *r)
{
    return r->type == REDIS_REPLY_STRING;
}

static pg_bytes_t bytes_of(const redisReply *r)
{
    return (pg_bytes_t){r->str, (size_t)r->len};
}

static void set_type(char *dst, const char *t)
{
    snprintf(dst, 16, "%s", t);
}

/* Devices of a reply's flat uuid/kind array, pointing into the reply. */
static int raw_devices(const redisReply *devs, pg_arena_t *arena, pg_vm_raw_t *out,
                       char *errbuf, size_t errlen)
{
    size_t nd = devs->elements / 2;
    if (devs->elements % 2 != 0) {
        pg_errf(errbuf, errlen, "device list of odd length %zu", devs->elements);
        return PG_RETRY;
    }
    if (nd == 0)
        return 0;
    out->devices = pg_arena_calloc(arena, nd, sizeof(*out->devices));
    if (out->devices == NULL) {
        pg_errf(errbuf, errlen, "out of memory for %zu devices", nd);
        return PG_FATAL;
    }
    for (size_t j = 0; j < 2 * nd; j++)
        if (!is_bulk(devs->element[j])) {
            pg_errf(errbuf, errlen, "device field %zu is not a string", j);
            return PG_RETRY;
        }
    for (size_t j = 0; j < nd; j++) {
        out->devices[j].uuid = bytes_of(devs->element[2 * j]);
        out->devices[j].kind = bytes_of(devs->element[2 * j + 1]);
    }
    return 0;
}

int pg_bindings_parse_lookup(const redisReply *r, pg_arena_t *arena, pg_vm_raw_t *out,
                             char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 7 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        (r->element[1]->type != REDIS_REPLY_NIL && !is_bulk(r->element[1])) ||
        (r->element[2]->type != REDIS_REPLY_NIL && !is_bulk(r->element[2])) ||
        r->element[3]->type != REDIS_REPLY_INTEGER || r->element[3]->integer < 0 ||
        r->element[4]->type != REDIS_REPLY_ARRAY ||
        (r->element[5]->type != REDIS_REPLY_NIL && !is_bulk(r->element[5])) ||
        (r->element[6]->type != REDIS_REPLY_NIL && !is_bulk(r->element[6]))) {
        pg_errf(errbuf, errlen, "unexpected lookup reply (type %d)", r->type);
        return PG_RETRY;
    }
    long long flags = r->element[0]->integer;
    const redisReply *host = r->element[1], *pin = r->element[2], *gen = r->element[5];
    if (gen->len > PG_BINDINGS_MAX_GEN_LEN) {
        /* The script never ships one: the reply is not its own. */
        pg_errf(errbuf, errlen, "lookup reply holds a generation of %zu bytes",
                (size_t)gen->len);
        return PG_RETRY;
    }
    set_type(out->host_type, flags & 1       ? "wrongtype"
                             : is_bulk(host) ? "string"
                                             : "none");
    set_type(out->pin_type, flags & 2 ? "wrongtype" : is_bulk(pin) ? "string" : "none");
    out->n_devices = (size_t)r->element[3]->integer;
    set_type(out->devices_type, flags & 4            ? "wrongtype"
                                : out->n_devices > 0 ? "hash"
                                                     : "none");
    out->oversized = (flags & 8) != 0;
    if (is_bulk(host)) {
        out->has_host = true;
        out->host = bytes_of(host);
    } else if (out->oversized && !(flags & 1)) {
        out->has_host = true; /* present, but too long to be fetched */
    }
    if (is_bulk(pin)) {
        out->has_pin = true;
        out->pin = bytes_of(pin);
    }
    out->generation_oversized = (flags & 32) != 0;
    out->expiring = (flags & 128) != 0;
    set_type(out->generation_type, flags & 16 ? "wrongtype"
                                   : is_bulk(gen) || out->generation_oversized
                                       ? "string"
                                       : "none");
    if (is_bulk(gen)) {
        out->has_generation = true;
        out->generation = bytes_of(gen);
    } else if (out->generation_oversized) {
        out->has_generation = true; /* present, but too long to be a generation */
    }
    /* The quarantine is pinguard's own key: one of the wrong type still
     * quarantines (fail closed), it does not make the entry malformed. */
    const redisReply *q = r->element[6];
    if (is_bulk(q) || (flags & 64)) {
        out->has_quarantine = true;
        if (is_bulk(q))
            out->quarantine = bytes_of(q);
    }
    if (r->element[4]->elements == 0)
        return 0;
    if (r->element[4]->elements != 2 * out->n_devices) {
        pg_errf(errbuf, errlen, "lookup reply holds %zu device fields for %zu devices",
                r->element[4]->elements, out->n_devices);
        return PG_RETRY;
    }
    return raw_devices(r->element[4], arena, out, errbuf, errlen);
}

bool pg_bindings_parse_quarantine(pg_bytes_t v, int64_t *until_ms, int64_t *dur_ms)
{
    /* "<until_ms> <duration_ms>", as the result script writes it. */
    char buf[65];
    long long u, d;
    char extra;
    if (until_ms != NULL)
        *until_ms = 0;
    if (dur_ms != NULL)
        *dur_ms = 0;
    if (v.len == 0 || v.len >= sizeof(buf) || memchr(v.data, '\0', v.len) != NULL)
        return false;
    memcpy(buf, v.data, v.len);
    buf[v.len] = '\0';
    if (sscanf(buf, "%lld %lld%c", &u, &d, &extra) != 2 || u < 0 || d < 0)
        return false;
    if (until_ms != NULL)
        *until_ms = u;
    if (dur_ms != NULL)
        *dur_ms = d;
    return true;
}

/* Why a value is not an acceptable id, or NULL. */
static const char *bad_value(pg_bytes_t v, size_t max_len)
{
    if (v.len == 0)
        return "is empty";
    if (v.len > max_len)
        return "is too long";
    if (memchr(v.data, '\0', v.len) != NULL)
        return "holds a NUL byte";
    if (pg_utf8_check((const uint8_t *)v.data, v.len) != v.len)
        return "is not valid UTF-8";
    return NULL;
}

const char *pg_bindings_value_fault(pg_bytes_t v, size_t max_len)
{
    return bad_value(v, max_len);
}

bool pg_bindings_parse_generation(pg_bytes_t v, int64_t *out)
{
    const char *p = v.data, *end = v.data + v.len;
    bool neg = false;
    if (v.len == 0 || v.len > PG_BINDINGS_MAX_GEN_LEN)
        return false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    /* "0" alone; otherwise no leading zero (so no "-0" either). */
    if (p == end || *p < '0' || *p > '9' || (*p == '0' && (neg || p + 1 != end)))
        return false;
    /* Accumulated as a negative number: INT64_MIN has no positive twin. */
    int64_t acc = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        int d = *p - '0';
        if (acc < (INT64_MIN + d) / 10)
            return false;
        acc = acc * 10 - d;
    }
    if (!neg) {
        if (acc == INT64_MIN)
            return false;
        acc = -acc;
    }
    *out = acc;
    return true;
}

/* Why a :generation is not acceptable, or NULL. */
static const char *bad_generation(const pg_vm_raw_t *raw)
{
    int64_t g;
    if (raw->generation_oversized || raw->generation.len > PG_BINDINGS_MAX_GEN_LEN)
        return "is longer than 20 bytes"; /* PG_BINDINGS_MAX_GEN_LEN */
    if (raw->generation.len == 0)
        return "is empty";
    if (memchr(raw->generation.data, '\0', raw->generation.len) != NULL)
        return "holds a NUL byte";
    if (!pg_bindings_parse_generation(raw->generation, &g))
        return "is not a canonical decimal int64";
    return NULL;
}

bool pg_bindings_check(const pg_vm_raw_t *raw, const pg_bindings_limits_t *lim,
                       char *why, size_t whylen)
{
    const char *bad;
    if (strcmp(raw->host_type, "none") != 0 && strcmp(raw->host_type, "string") != 0) {
        snprintf(why, whylen, ":host is a %s, not a string", raw->host_type);
        return false;
    }
    if (strcmp(raw->pin_type, "none") != 0 && strcmp(raw->pin_type, "string") != 0) {
        snprintf(why, whylen, ":pin is a %s, not a string", raw->pin_type);
        return false;
    }
    if (strcmp(raw->devices_type, "none") != 0 &&
        strcmp(raw->devices_type, "hash") != 0) {
        snprintf(why, whylen, ":devices is a %s, not a hash", raw->devices_type);
        return false;
    }
    if (raw->generation_type[0] != '\0' && strcmp(raw->generation_type, "none") != 0 &&
        strcmp(raw->generation_type, "string") != 0) {
        snprintf(why, whylen, ":generation is a %s, not a string",
                 raw->generation_type);
        return false;
    }
    if (raw->has_generation && (bad = bad_generation(raw)) != NULL) {
        snprintf(why, whylen, ":generation %s", bad);
        return false;
    }
    if (raw->oversized) {
        snprintf(why, whylen, "a value is longer than %zu bytes", lim->max_len);
        return false;
    }
    if (raw->has_host && (bad = bad_value(raw->host, lim->max_len)) != NULL) {
        snprintf(why, whylen, ":host %s", bad);
        return false;
    }
    if (raw->n_devices > lim->max_devices) {
        snprintf(why, whylen, "%zu devices, more than redis.max.devices.per.vm (%zu)",
                 raw->n_devices, lim->max_devices);
        return false;
    }
    if (raw->n_devices > 0 && raw->devices == NULL) {
        snprintf(why, whylen, "%zu devices not read", raw->n_devices);
        return false;
    }
    for (size_t i = 0; i < raw->n_devices; i++) {
        if ((bad = bad_value(raw->devices[i].uuid, lim->max_len)) != NULL) {
            snprintf(why, whylen, "device %zu: uuid %s", i, bad);
            return false;
        }
        if ((bad = bad_value(raw->devices[i].kind, lim->max_len)) != NULL) {
            snprintf(why, whylen, "device %zu: kind %s", i, bad);
            return false;
        }
    }
    return true;
}

int pg_bindings_to_binding(const pg_vm_raw_t *raw, const pg_bindings_limits_t *lim,
                           pg_arena_t *arena, pg_vm_binding_t *out, char *errbuf,
                           size_t errlen)
{
    char why[160];
    memset(out, 0, sizeof(*out));
    if (!pg_bindings_check(raw, lim, why, sizeof(why))) {
        out->malformed = true;
        out->why_malformed = pg_arena_strdup(arena, why);
        if (out->why_malformed != NULL)
            return PG_OK;
        pg_errf(errbuf, errlen, "out of memory copying a cache entry");
        return PG_FATAL;
    }
    /* Checked: no value holds a NUL, so C strings keep every byte. */
    bool oom = false;
    if (raw->has_host) {
        out->known = true;
        oom |= (out->host = pg_arena_strndup(arena, raw->host.data, raw->host.len)) ==
               NULL;
    }
    if (raw->has_pin)
        oom |=
            (out->pin = pg_arena_strndup(arena, raw->pin.data, raw->pin.len)) == NULL;
    if (raw->has_quarantine) {
        out->quarantined = true;
        pg_bindings_parse_quarantine(raw->quarantine, &out->quarantine_until_ms, NULL);
    }
    /* Checked: a present generation parses. */
    out->generation.present =
        raw->has_generation &&
        pg_bindings_parse_generation(raw->generation, &out->generation.value);
    size_t nd = raw->n_devices;
    pg_device_ref_t *d = nd ? pg_arena_calloc(arena, nd, sizeof(*d)) : NULL;
    oom |= nd > 0 && d == NULL;
    for (size_t j = 0; j < nd && !oom; j++) {
        const pg_raw_device_t *rd = &raw->devices[j];
        d[j].device_uuid = pg_arena_strndup(arena, rd->uuid.data, rd->uuid.len);
        d[j].kind = pg_arena_strndup(arena, rd->kind.data, rd->kind.len);
        oom |= d[j].device_uuid == NULL || d[j].kind == NULL;
    }
    if (oom) {
        pg_errf(errbuf, errlen, "out of memory copying cache replies");
        return PG_FATAL;
    }
    out->devices = d;
    out->n_devices = nd;
    return 0;
}

int pg_bindings_next(pg_bindings_t *b, const char *vm_uuid, pg_arena_t *arena,
                     pg_vm_binding_t *out, char *errbuf, size_t errlen)
{
    if (b->expected == 0 || b->ctx == NULL) {
        pg_errf(errbuf, errlen, "redis: no lookup in flight");
        return PG_INPUT;
    }
    int rc = 0;
    char err[256];
    if (b->view != NULL && b->next_vm < b->n_vms && b->hit[b->next_vm] != NULL) {
        /* Held since the batch's split, which the barrier's pong dropped
         * none of (or the batch was split again after it): no eviction, and
         * no drop before the next barrier, can have freed it. */
        rc = pg_view_copy(b->hit[b->next_vm], arena, out);
        if (rc != PG_OK) {
            pg_errf(errbuf, errlen, "out of memory copying vm %s", vm_uuid);
            drop(b);
            return rc;
        }
        b->next_vm++;
        b->expected--;
        return PG_OK;
    }
    if (b->chunk_reply == NULL && (rc = read_chunk(b, errbuf, errlen)) != PG_OK)
        return rc;
    bool cache = false;
    if (rc == 0) {
        pg_vm_raw_t raw;
        const pg_bindings_limits_t lim = {b->max_devices, b->max_len};
        rc = pg_bindings_parse_lookup(b->chunk_reply->element[b->chunk_pos++], arena,
                                      &raw, err, sizeof(err));
        if (rc == 0)
            rc = pg_bindings_to_binding(&raw, &lim, arena, out, err, sizeof(err));
        if (rc != 0)
            pg_errf(errbuf, errlen, "redis %s:%d lookup of vm %s: %s", b->host, b->port,
                    vm_uuid, err);
        /* Cached: what the view can keep true (bindings_view.c). */
        cache = rc == 0 && b->view_live && !out->malformed && !out->quarantined &&
                !raw.expiring;
    }
    if (cache && pg_view_put(b->view, vm_uuid, strlen(vm_uuid), out) == PG_FATAL) {
        pg_errf(errbuf, errlen, "out of memory caching vm %s", vm_uuid);
        rc = PG_FATAL;
    }
    if (rc != 0) {
        drop(b); /* the rest of the exchange cannot be trusted */
        return rc;
    }
    if (b->chunk_pos == b->chunk_reply->elements)
        free_chunk(b);
    b->expected--;
    b->pending--;
    b->next_vm++;
    return 0;
}

void pg_bindings_abandon(pg_bindings_t *b)
{
    if (b->expected > 0 || b->notes_expected > 0)
        drop(b);
}

int pg_bindings_next_note(pg_bindings_t *b, pg_note_outcome_t *out, char *errbuf,
                          size_t errlen)
{
    if (b->expected > 0 || b->notes_expected == 0 || b->ctx == NULL) {
        pg_errf(errbuf, errlen, "redis: no result note to read");
        return PG_INPUT;
    }
    int rc = PG_OK;
    if (b->chunk_reply == NULL) {
        /* The next script's reply: what and duration of each of its notes
         * (chunks are cut from the front, so this one holds the next
         * min(chunk, notes_expected)). */
        size_t want = b->notes_expected < b->chunk ? b->notes_expected : b->chunk;
        rc = read_reply(b, &b->chunk_reply, errbuf, errlen);
        b->chunk_pos = 0;
        if (rc == PG_OK && (b->chunk_reply->type != REDIS_REPLY_ARRAY ||
                            b->chunk_reply->elements != 2 * want)) {
            pg_errf(errbuf, errlen,
                    "redis %s:%d: result note reply of %zu entries for %zu", b->host,
                    b->port,
                    b->chunk_reply->type == REDIS_REPLY_ARRAY ? b->chunk_reply->elements
                                                              : 0,
                    want);
            rc = PG_RETRY;
        }
    }
    if (rc == PG_OK) {
        char err[128];
        rc = pg_bindings_parse_note(b->chunk_reply, b->chunk_pos++, out, err,
                                    sizeof(err));
        if (rc != PG_OK)
            pg_errf(errbuf, errlen, "redis %s:%d: %s", b->host, b->port, err);
    }
    if (rc != PG_OK) {
        drop(b);
        return rc;
    }
    if (2 * b->chunk_pos == b->chunk_reply->elements)
        free_chunk(b);
    b->notes_expected--;
    return PG_OK;
}

/* Runs a list of commands as one pipelined exchange, ignoring the replies. */
static int pipeline(pg_bindings_t *b, size_t ncmd, char *errbuf, size_t errlen)
{
    redisReply **replies = calloc(ncmd ? ncmd : 1, sizeof(*replies));
    if (replies == NULL) {
        drop(b);
        pg_errf(errbuf, errlen, "out of memory for %zu replies", ncmd);
        return PG_FATAL;
    }
    int rc = exchange(b, replies, ncmd, errbuf, errlen);
    if (rc == 0)
        for (size_t i = 0; i < ncmd; i++)
            freeReplyObject(replies[i]);
    free(replies);
    return rc;
}

/* Ids pinguard itself writes obey the rules it reads by: non-empty, valid
 * UTF-8, at most max bytes. */
static int check_uuid(const char *what, const char *s, size_t max, char *errbuf,
                      size_t errlen)
{
    size_t n = s != NULL ? strlen(s) : 0;
    if (n == 0 || n > max || pg_utf8_check((const uint8_t *)s, n) != n) {
        pg_errf(errbuf, errlen, "%s must be a non-empty UTF-8 id of at most %zu bytes",
                what, max);
        return PG_INPUT;
    }
    return 0;
}

static int one_command(pg_bindings_t *b, const char *vm, int argc, const char **argv,
                       redisReply **reply, char *errbuf, size_t errlen)
{
    int rc = check_uuid("vm uuid", vm, PG_BINDINGS_MAX_VM_LEN, errbuf, errlen);
    if (rc == 0)
        rc = ensure_connected(b, errbuf, errlen);
    if (rc != 0)
        return rc;
    if (append(b, argc, argv, NULL) != 0) {
        drop(b);
        pg_errf(errbuf, errlen, "redis: out of memory buffering the command");
        return PG_FATAL;
    }
    redisReply *r = NULL;
    rc = exchange(b, &r, 1, errbuf, errlen);
    if (rc != 0)
        return rc;
    if (reply != NULL)
        *reply = r;
    else
        freeReplyObject(r);
    return 0;
}

int pg_bindings_bind(pg_bindings_t *b, const char *vm, const char *device,
                     const char *kind, char *errbuf, size_t errlen)
{
    char key[KEY_MAX];
    int rc = check_uuid("device uuid", device, b->max_len, errbuf, errlen);
    if (rc == 0)
        rc = check_uuid("device kind", kind, b->max_len, errbuf, errlen);
    if (rc == 0 && (vm == NULL || vm_key(key, vm, "devices") < 0))
        rc = check_uuid("vm uuid", "", 0, errbuf, errlen);
    if (rc != 0)
        return rc;
    const char *argv[4] = {"HSET", key, device, kind};
    return one_command(b, vm, 4, argv, NULL, errbuf, errlen);
}

int pg_bindings_unbind(pg_bindings_t *b, const char *vm, const char *device,
                       bool *removed, char *errbuf, size_t errlen)
{
    char key[KEY_MAX];
    int rc = check_uuid("device uuid", device, b->max_len, errbuf, errlen);
    if (rc == 0 && (vm == NULL || vm_key(key, vm, "devices") < 0))
        rc = check_uuid("vm uuid", "", 0, errbuf, errlen);
    if (rc != 0)
        return rc;
    const char *argv[3] = {"HDEL", key, device};
    redisReply *r = NULL;
    rc = one_command(b, vm, 3, argv, &r, errbuf, errlen);
    if (rc == 0) {
        *removed = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
        freeReplyObject(r);
    }
    return rc;
}

int pg_bindings_place(pg_bindings_t *b, const char *vm, const char *host, char *errbuf,
                      size_t errlen)
{
    char key[KEY_MAX];
    int rc = check_uuid("host uuid", host, b->max_len, errbuf, errlen);
    if (rc == 0 && (vm == NULL || vm_key(key, vm, "host") < 0))
        rc = check_uuid("vm uuid", "", 0, errbuf, errlen);
    if (rc != 0)
        return rc;
    const char *argv[3] = {"SET", key, host};
    return one_command(b, vm, 3, argv, NULL, errbuf, errlen);
}

int pg_bindings_pin(pg_bindings_t *b, const char *vm, const char *reason,
                    int64_t ttl_ms, char *errbuf, size_t errlen)
{
    char key[KEY_MAX], ms[24];
    if (vm == NULL || vm_key(key, vm, "pin") < 0)
        return check_uuid("vm uuid", "", 0, errbuf, errlen);
    /* A SET without PX also drops an expiry an earlier pin had. */
    snprintf(ms, sizeof(ms), "%" PRId64, ttl_ms);
    const char *argv[5] = {"SET", key, reason ? reason : "", "PX", ms};
    return one_command(b, vm, ttl_ms > 0 ? 5 : 3, argv, NULL, errbuf, errlen);
}

int pg_bindings_unpin(pg_bindings_t *b, const char *vm, bool *removed, char *errbuf,
                      size_t errlen)
{
    char key[KEY_MAX];
    if (vm == NULL || vm_key(key, vm, "pin") < 0)
        return check_uuid("vm uuid", "", 0, errbuf, errlen);
    const char *argv[2] = {"DEL", key};
    redisReply *r = NULL;
    int rc = one_command(b, vm, 2, argv, &r, errbuf, errlen);
    if (rc == 0) {
        if (removed != NULL)
            *removed = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
        freeReplyObject(r);
    }
    return rc;
}

int pg_bindings_unquarantine(pg_bindings_t *b, const char *vm, pg_unquarantine_t *out,
                             char *errbuf, size_t errlen)
{
    char kf[KEY_MAX], kq[KEY_MAX], kb[KEY_MAX];
    if (vm == NULL || vm_key(kf, vm, "failures") < 0)
        return check_uuid("vm uuid", "", 0, errbuf, errlen);
    vm_key(kq, vm, "quarantine");
    vm_key(kb, vm, "backoff");
    const char *argv[6] = {"EVAL", UNQUARANTINE_LUA, "3", kf, kq, kb};
    redisReply *r = NULL;
    int rc = one_command(b, vm, 6, argv, &r, errbuf, errlen);
    if (rc != 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_INTEGER ||
        r->element[3]->type != REDIS_REPLY_INTEGER) {
        /* The script ran: the keys are gone, only its answer is unclear. */
        pg_errf(errbuf, errlen,
                "redis: unexpected reply lifting the quarantine of vm %s", vm);
        freeReplyObject(r);
        return PG_RETRY;
    }
    if (out != NULL) {
        memset(out, 0, sizeof(*out));
        out->was_quarantined = r->element[0]->integer > 0;
        out->ttl_ms = r->element[1]->integer >= 0 ? r->element[1]->integer : -1;
        if (is_bulk(r->element[2]))
            pg_bindings_parse_quarantine(bytes_of(r->element[2]), NULL,
                                         &out->duration_ms);
        out->failures = r->element[3]->integer > 0 ? (size_t)r->element[3]->integer : 0;
    }
    freeReplyObject(r);
    return 0;
}

/* Each VM is one MULTI/EXEC block, so a reader (the lookup script) sees its
 * old entry or its new one, never the devices deleted and not yet rewritten;
 * the blocks of all VMs go out as one pipeline. */
int pg_bindings_store(pg_bindings_t *b, const char *const *vm_uuids,
                      const pg_vm_binding_t *bindings, size_t n, char *errbuf,
                      size_t errlen)
{
    int rc = ensure_connected(b, errbuf, errlen);
    if (rc != 0 || n == 0)
        return rc;
    size_t ncmd = 0, argv_cap = 0;
    const char **argv = NULL;
    static const char *const multi[1] = {"MULTI"}, *const exec[1] = {"EXEC"};
    for (size_t i = 0; i < n && rc == 0; i++) {
        const pg_vm_binding_t *vb = &bindings[i];
        char k_host[KEY_MAX], k_pin[KEY_MAX], k_dev[KEY_MAX];
        if ((rc = check_uuid("vm uuid", vm_uuids[i], PG_BINDINGS_MAX_VM_LEN, errbuf,
                             errlen)) != 0)
            break;
        vm_key(k_host, vm_uuids[i], "host");
        vm_key(k_pin, vm_uuids[i], "pin");
        vm_key(k_dev, vm_uuids[i], "devices");
        size_t need = 2 + 2 * vb->n_devices;
        if (need > argv_cap) {
            const char **p = realloc(argv, need * sizeof(*p));
            if (p == NULL) {
                pg_errf(errbuf, errlen, "out of memory");
                rc = PG_RETRY;
                break;
            }
            argv = p;
            argv_cap = need;
        }
        int arc = append(b, 1, (const char **)multi, NULL);
        /* Replace, not merge: a device missing from the import is unbound. */
        const char *del[2] = {"DEL", k_dev};
        arc |= append(b, 2, del, NULL);
        size_t queued = 1;
        if (vb->n_devices > 0) {
            argv[0] = "HSET";
            argv[1] = k_dev;
            for (size_t j = 0; j < vb->n_devices; j++) {
                argv[2 + 2 * j] = vb->devices[j].device_uuid;
                argv[3 + 2 * j] = vb->devices[j].kind;
            }
            arc |= append(b, (int)need, argv, NULL);
            queued++;
        }
        const char *host[3] = {vb->host ? "SET" : "DEL", k_host, vb->host};
        arc |= append(b, vb->host ? 3 : 2, host, NULL);
        const char *pin[3] = {vb->pin ? "SET" : "DEL", k_pin, vb->pin};
        arc |= append(b, vb->pin ? 3 : 2, pin, NULL);
        arc |= append(b, 1, (const char **)exec, NULL);
        ncmd += queued + 2 + 2; /* MULTI, the queued commands, EXEC */
        if (arc != 0) {
            pg_errf(errbuf, errlen, "redis: cannot buffer the pipeline");
            rc = PG_RETRY;
        }
    }
    free(argv);
    if (rc != 0) {
        drop(b); /* drop what was appended but not sent */
        return rc;
    }
    return pipeline(b, ncmd, errbuf, errlen);
}

/* A reply element as an integer: an integer reply, or a bulk string holding
 * a decimal number (a sorted set's score, a hash field); false otherwise. */
static bool reply_i64(const redisReply *r, int64_t *out)
{
    if (r->type == REDIS_REPLY_INTEGER) {
        *out = r->integer;
        return true;
    }
    if (!is_bulk(r) || r->len == 0 || r->len > 40)
        return false;
    char buf[48], *end;
    memcpy(buf, r->str, r->len);
    buf[r->len] = '\0';
    double d = strtod(buf, &end);
    if (*end != '\0' || !(d > -9.2e18 && d < 9.2e18))
        return false;
    *out = (int64_t)d;
    return true;
}

/* A bulk reply copied into the arena; false when out of memory. */
static bool copy_bulk(const redisReply *v, pg_arena_t *arena, pg_bytes_t *out)
{
    char *copy = pg_arena_strndup(arena, v->str, (size_t)v->len);
    if (copy == NULL)
        return false;
    *out = (pg_bytes_t){copy, (size_t)v->len};
    return true;
}

static void set_reply_type(char *dst, const redisReply *t)
{
    set_type(dst, t->type == REDIS_REPLY_STRING || t->type == REDIS_REPLY_STATUS
                      ? t->str
                      : "?");
}

/* The quarantine half of INSPECT_LUA's reply (elements 9 to 18) into
 * out->inspect, bytes in arena. PG_OK, PG_RETRY for a reply not the script's,
 * PG_FATAL when out of memory. */
static int parse_inspect_extra(const redisReply *r, pg_arena_t *arena, pg_vm_raw_t *out)
{
    pg_vm_inspect_t *in = &out->inspect;
    const redisReply *fl = r->element[15], *bo = r->element[18];
    int64_t pin_ttl, q_ttl, nf, nw;
    if (!reply_i64(r->element[12], &pin_ttl) || !reply_i64(r->element[13], &nf) ||
        !reply_i64(r->element[14], &nw) || fl->type != REDIS_REPLY_ARRAY ||
        fl->elements % 2 != 0 || fl->elements > 2 * PG_BINDINGS_INSPECT_FAILURES ||
        !reply_i64(r->element[17], &q_ttl) || bo->type != REDIS_REPLY_ARRAY ||
        bo->elements != 4 || nf < 0 || nw < 0)
        return PG_RETRY;
    set_reply_type(in->failures_type, r->element[9]);
    set_reply_type(in->quarantine_type, r->element[10]);
    set_reply_type(in->backoff_type, r->element[11]);
    in->read = true;
    in->pin_ttl_ms = pin_ttl >= 0 ? pin_ttl : -1;
    in->quarantine_ttl_ms = q_ttl >= 0 ? q_ttl : -1;
    in->failures_total = (size_t)nf;
    in->failures_in_window = (size_t)nw;
    /* The quarantine quarantines whatever its type (as in the lookup). */
    out->has_quarantine = strcmp(in->quarantine_type, "none") != 0;
    if (is_bulk(r->element[16]) && !copy_bulk(r->element[16], arena, &out->quarantine))
        return PG_FATAL;
    size_t n = fl->elements / 2;
    if (n > 0 &&
        (in->failures = pg_arena_calloc(arena, n, sizeof(*in->failures))) == NULL)
        return PG_FATAL;
    for (size_t i = 0; i < n; i++) {
        /* Newest first in the reply; oldest first for the reader. */
        pg_raw_failure_t *f = &in->failures[n - 1 - i];
        if (!is_bulk(fl->element[2 * i]) ||
            !reply_i64(fl->element[2 * i + 1], &f->finished_at_ms))
            return PG_RETRY;
        if (!copy_bulk(fl->element[2 * i], arena, &f->request_id))
            return PG_FATAL;
    }
    in->n_failures = n;
    for (size_t i = 0; i < 4; i++)
        if (bo->element[i]->type != REDIS_REPLY_NIL && !is_bulk(bo->element[i]))
            return PG_RETRY;
    in->has_backoff_last = reply_i64(bo->element[0], &in->backoff_last_ms);
    in->has_backoff_since = reply_i64(bo->element[1], &in->backoff_since_ms);
    if (is_bulk(bo->element[2])) {
        in->has_started_by = true;
        if (!copy_bulk(bo->element[2], arena, &in->started_by))
            return PG_FATAL;
    }
    if (is_bulk(bo->element[3])) {
        in->has_lifted_by = true;
        if (!copy_bulk(bo->element[3], arena, &in->lifted_by))
            return PG_FATAL;
    }
    return PG_OK;
}

/* Every key of one VM with its type, in one atomic script. */
int pg_bindings_inspect(pg_bindings_t *b, const char *vm, size_t max_fetch,
                        pg_arena_t *arena, pg_vm_raw_t *out, char *errbuf,
                        size_t errlen)
{
    static const char *const suffixes[7] = {
        "host", "pin", "devices", "generation", "failures", "quarantine", "backoff"};
    char keys[7][KEY_MAX], nmax[24], since[24], nlist[24], maxlen[24];
    int rc = check_uuid("vm uuid", vm, PG_BINDINGS_MAX_VM_LEN, errbuf, errlen);
    if (rc != 0)
        return rc;
    const char *argv[14] = {"EVAL", INSPECT_LUA, "7"};
    for (int i = 0; i < 7; i++) {
        vm_key(keys[i], vm, suffixes[i]);
        argv[3 + i] = keys[i];
    }
    snprintf(nmax, sizeof(nmax), "%zu", max_fetch);
    snprintf(since, sizeof(since), "%" PRId64,
             pg_now_wall_ms() - (int64_t)b->quarantine.window_ms);
    snprintf(nlist, sizeof(nlist), "%d", PG_BINDINGS_INSPECT_FAILURES);
    snprintf(maxlen, sizeof(maxlen), "%zu", b->max_len);
    argv[10] = nmax;
    argv[11] = since;
    argv[12] = nlist;
    argv[13] = maxlen;
    redisReply *r = NULL;
    if ((rc = one_command(b, vm, 14, argv, &r, errbuf, errlen)) != 0)
        return rc;
    memset(out, 0, sizeof(*out));
    rc = PG_RETRY;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 19 ||
        r->element[5]->type != REDIS_REPLY_INTEGER ||
        r->element[6]->type != REDIS_REPLY_ARRAY) {
        pg_errf(errbuf, errlen, "redis: unexpected reply inspecting vm %s", vm);
        goto out;
    }
    char *types[4] = {out->host_type, out->pin_type, out->devices_type,
                      out->generation_type};
    const size_t type_at[4] = {0, 1, 2, 7};
    for (int i = 0; i < 4; i++)
        set_reply_type(types[i], r->element[type_at[i]]);
    /* Copy what the reply holds into the arena: the reply is freed below. */
    pg_bytes_t *vals[3] = {&out->host, &out->pin, &out->generation};
    bool *has[3] = {&out->has_host, &out->has_pin, &out->has_generation};
    const size_t val_at[3] = {3, 4, 8};
    for (int i = 0; i < 3; i++) {
        const redisReply *v = r->element[val_at[i]];
        if (!is_bulk(v))
            continue;
        if (!copy_bulk(v, arena, vals[i]))
            goto oom;
        *has[i] = true;
    }
    out->n_devices = (size_t)r->element[5]->integer;
    if (r->element[6]->elements > 0) {
        if (raw_devices(r->element[6], arena, out, errbuf, errlen) != 0)
            goto out;
        for (size_t j = 0; j < out->n_devices; j++) {
            pg_raw_device_t *d = &out->devices[j];
            char *u = pg_arena_strndup(arena, d->uuid.data, d->uuid.len);
            char *k = pg_arena_strndup(arena, d->kind.data, d->kind.len);
            if (u == NULL || k == NULL)
                goto oom;
            d->uuid.data = u;
            d->kind.data = k;
        }
    }
    int xrc = parse_inspect_extra(r, arena, out);
    if (xrc == PG_FATAL)
        goto oom;
    if (xrc != PG_OK) {
        pg_errf(errbuf, errlen, "redis: unexpected quarantine reply inspecting vm %s",
                vm);
        goto out;
    }
    rc = 0;
    goto out;
oom:
    pg_errf(errbuf, errlen, "out of memory reading vm %s", vm);
    rc = PG_FATAL;
out:
    freeReplyObject(r);
    return rc;
}

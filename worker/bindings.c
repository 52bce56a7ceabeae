/*
 * Binding cache over hiredis 0.14. Keys follow the SPEC:
 *   pinguard:vm:{<vm>}:host     string, the VM's current host (presence = known)
 *   pinguard:vm:{<vm>}:devices  hash, device uuid -> kind
 *   pinguard:vm:{<vm>}:pin      string, operator pin reason
 * A lookup costs two commands per VM, MGET host+pin and HGETALL devices, each
 * on one hash slot, so the layout stays usable on a Redis Cluster. A batch's
 * commands go out in one write and the replies are read VM by VM, so that the
 * caller decides the first VMs while Redis still answers the last ones (one
 * round trip, overlapped).
 * hiredis marks a context dead after any I/O error or timeout, and a timed-out
 * command may still have run; so every failure drops the context and the next
 * call reconnects, re-applying AUTH, SELECT and the socket timeouts.
 */
#include "bindings.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_MAX                                                                        \
    1100 /* "pinguard:vm:{" + uuid (at most 1024 bytes, see config) + "}:devices" */

struct pg_bindings {
    redisContext *ctx;
    char *host, *user, *password;
    int port, db, connect_timeout_ms, timeout_ms;
    bool ever_connected;
    pg_buf_t cmd;    /* the pipeline being formatted, reused across lookups */
    size_t expected; /* VMs whose replies are still to be read */
    pg_bindings_stats_t stats;
};

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

pg_bindings_t *pg_bindings_new(const pg_bindings_opts_t *o)
{
    pg_bindings_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->host = dup_or_empty(o->host);
    b->user = dup_or_empty(o->user);
    b->password = dup_or_empty(o->password);
    if (b->host == NULL || b->user == NULL || b->password == NULL) {
        pg_bindings_destroy(b);
        return NULL;
    }
    b->port = o->port;
    b->db = o->db;
    b->connect_timeout_ms = o->connect_timeout_ms;
    b->timeout_ms = o->timeout_ms;
    return b;
}

void pg_bindings_destroy(pg_bindings_t *b)
{
    if (b == NULL)
        return;
    if (b->ctx != NULL)
        redisFree(b->ctx);
    pg_buf_free(&b->cmd);
    free(b->host);
    free(b->user);
    if (b->password != NULL)
        memset(b->password, 0, strlen(b->password));
    free(b->password);
    free(b);
}

void pg_bindings_stats(const pg_bindings_t *b, pg_bindings_stats_t *out)
{
    *out = b->stats;
}

static struct timeval ms_to_tv(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static void drop(pg_bindings_t *b)
{
    if (b->ctx != NULL) {
        redisFree(b->ctx);
        b->ctx = NULL;
    }
    b->expected = 0;
    b->stats.errors++;
}

/* Classifies an error reply: credentials and permissions are fatal, the
 * rest (LOADING, BUSY, MASTERDOWN, WRONGTYPE, ...) may heal. */
static int error_class(const redisReply *r)
{
    if (strncmp(r->str, "WRONGPASS", 9) == 0 || strncmp(r->str, "NOAUTH", 6) == 0 ||
        strncmp(r->str, "NOPERM", 6) == 0 ||
        strstr(r->str, "invalid password") != NULL ||
        strstr(r->str, "invalid username-password") != NULL ||
        /* a password is configured but the server expects none */
        strstr(r->str, "without any password configured") != NULL)
        return PG_BINDINGS_EAUTH;
    if (strncmp(r->str, "WRONGTYPE", 9) == 0)
        return PG_BINDINGS_EDATA;
    return PG_BINDINGS_ETRANSIENT;
}

static int simple_command(pg_bindings_t *b, int argc, const char **argv, char *errbuf,
                          size_t errlen, const char *what)
{
    redisReply *r = redisCommandArgv(b->ctx, argc, argv, NULL);
    if (r == NULL) {
        snprintf(errbuf, errlen, "redis %s:%d %s: %s", b->host, b->port, what,
                 b->ctx->errstr);
        drop(b);
        return PG_BINDINGS_ETRANSIENT;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = error_class(r);
        snprintf(errbuf, errlen, "redis %s:%d %s: %s", b->host, b->port, what, r->str);
        drop(b);
    }
    freeReplyObject(r);
    return rc;
}

static int ensure_connected(pg_bindings_t *b, char *errbuf, size_t errlen)
{
    if (b->ctx != NULL)
        return 0;
    redisContext *c =
        redisConnectWithTimeout(b->host, b->port, ms_to_tv(b->connect_timeout_ms));
    if (c == NULL) {
        snprintf(errbuf, errlen, "redis %s:%d: cannot allocate a context", b->host,
                 b->port);
        return PG_BINDINGS_ETRANSIENT;
    }
    if (c->err) {
        snprintf(errbuf, errlen, "redis %s:%d connect: %s", b->host, b->port,
                 c->errstr);
        redisFree(c);
        b->stats.errors++;
        return PG_BINDINGS_ETRANSIENT;
    }
    /* The connect timeout bounds only the connect: set the I/O bound too. */
    redisSetTimeout(c, ms_to_tv(b->timeout_ms));
    redisEnableKeepAlive(c);
    b->ctx = c;
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
    }
    return rc;
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
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads one reply; an error reply is classified and freed. */
static int read_reply(pg_bindings_t *b, redisReply **out, char *errbuf, size_t errlen)
{
    void *r = NULL;
    if (redisGetReply(b->ctx, &r) != REDIS_OK || r == NULL) {
        snprintf(errbuf, errlen, "redis %s:%d: %s", b->host, b->port,
                 b->ctx->errstr[0] ? b->ctx->errstr : "no reply");
        return PG_BINDINGS_ETRANSIENT;
    }
    redisReply *reply = r;
    if (reply->type == REDIS_REPLY_ERROR) {
        int rc = error_class(reply);
        snprintf(errbuf, errlen, "redis %s:%d: %s", b->host, b->port, reply->str);
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

static const char *reply_string(pg_arena_t *arena, const redisReply *r, bool *oom)
{
    if (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS)
        return NULL;
    const char *s = pg_arena_strndup(arena, r->str, (size_t)r->len);
    if (s == NULL)
        *oom = true;
    return s;
}

/* Appends a RESP bulk string header, "$<n>\r\n" (by hand: snprintf showed up
 * in the profile at three headers per VM). */
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

/* Two commands per VM, each on keys of one hash slot (cluster-safe):
 *   MGET host pin   and   HGETALL devices
 * formatted straight into one buffer and written in one go. */
int pg_bindings_send(pg_bindings_t *b, const char *const *vm_uuids, size_t n,
                     char *errbuf, size_t errlen)
{
    pg_bindings_abandon(b); /* its replies would answer this exchange */
    int rc = ensure_connected(b, errbuf, errlen);
    if (rc != 0 || n == 0)
        return rc;
    pg_buf_reset(&b->cmd);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(vm_uuids[i]);
        if (len == 0 || len > KEY_MAX - 32) {
            snprintf(errbuf, errlen, "vm uuid of %zu bytes cannot name a cache key",
                     len);
            return PG_BINDINGS_EUSAGE;
        }
        if (pg_buf_append(&b->cmd, "*3\r\n", 4) || resp_bulk(&b->cmd, "MGET", 4) ||
            resp_vm_key(&b->cmd, vm_uuids[i], len, "host") ||
            resp_vm_key(&b->cmd, vm_uuids[i], len, "pin") ||
            pg_buf_append(&b->cmd, "*2\r\n", 4) || resp_bulk(&b->cmd, "HGETALL", 7) ||
            resp_vm_key(&b->cmd, vm_uuids[i], len, "devices")) {
            snprintf(errbuf, errlen, "out of memory formatting %zu lookups", n);
            return PG_BINDINGS_ETRANSIENT;
        }
    }
    int done = 0;
    if (redisAppendFormattedCommand(b->ctx, (const char *)b->cmd.data, b->cmd.len) !=
        REDIS_OK) {
        snprintf(errbuf, errlen, "redis: cannot buffer the pipeline");
        drop(b);
        return PG_BINDINGS_ETRANSIENT;
    }
    while (!done)
        if (redisBufferWrite(b->ctx, &done) != REDIS_OK) {
            snprintf(errbuf, errlen, "redis %s:%d: %s", b->host, b->port,
                     b->ctx->errstr[0] ? b->ctx->errstr : "write failed");
            drop(b);
            return PG_BINDINGS_ETRANSIENT;
        }
    b->expected = n;
    b->stats.round_trips++;
    b->stats.commands += 2 * n;
    return 0;
}

int pg_bindings_next(pg_bindings_t *b, const char *vm_uuid, pg_arena_t *arena,
                     pg_vm_binding_t *out, char *errbuf, size_t errlen)
{
    redisReply *hp = NULL, *devs = NULL;
    if (b->expected == 0 || b->ctx == NULL) {
        snprintf(errbuf, errlen, "redis: no lookup in flight");
        return PG_BINDINGS_EUSAGE;
    }
    int rc = read_reply(b, &hp, errbuf, errlen);
    if (rc == 0)
        rc = read_reply(b, &devs, errbuf, errlen);
    if (rc == 0 && (hp->type != REDIS_REPLY_ARRAY || hp->elements != 2 ||
                    devs->type != REDIS_REPLY_ARRAY || devs->elements % 2 != 0)) {
        snprintf(errbuf, errlen, "redis: unexpected reply for vm %s", vm_uuid);
        rc = PG_BINDINGS_EDATA;
    }
    bool oom = false;
    if (rc == 0) {
        memset(out, 0, sizeof(*out));
        out->host = reply_string(arena, hp->element[0], &oom);
        out->known = out->host != NULL;
        out->pin = reply_string(arena, hp->element[1], &oom);
        size_t nd = devs->elements / 2;
        pg_device_ref_t *d = nd ? pg_arena_calloc(arena, nd, sizeof(*d)) : NULL;
        if (nd && d == NULL)
            oom = true;
        for (size_t j = 0; j < nd && !oom; j++) {
            d[j].device_uuid = reply_string(arena, devs->element[2 * j], &oom);
            d[j].kind = reply_string(arena, devs->element[2 * j + 1], &oom);
        }
        out->devices = d;
        out->n_devices = nd;
        if (oom) {
            snprintf(errbuf, errlen, "out of memory copying cache replies");
            rc = PG_BINDINGS_ETRANSIENT;
        }
    }
    if (hp != NULL)
        freeReplyObject(hp);
    if (devs != NULL)
        freeReplyObject(devs);
    if (rc != 0) {
        drop(b); /* the rest of the exchange cannot be trusted */
        return rc;
    }
    b->expected--;
    return 0;
}

void pg_bindings_abandon(pg_bindings_t *b)
{
    if (b->expected > 0)
        drop(b);
}

int pg_bindings_lookup(pg_bindings_t *b, const char *const *vm_uuids, size_t n,
                       pg_arena_t *arena, pg_vm_binding_t *out, char *errbuf,
                       size_t errlen)
{
    double t0 = now_seconds();
    int rc = pg_bindings_send(b, vm_uuids, n, errbuf, errlen);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = pg_bindings_next(b, vm_uuids[i], arena, &out[i], errbuf, errlen);
    b->stats.last_rtt_seconds = now_seconds() - t0;
    return rc;
}

/* Runs a list of commands as one pipelined exchange, ignoring the replies. */
static int pipeline(pg_bindings_t *b, size_t ncmd, char *errbuf, size_t errlen)
{
    redisReply **replies = calloc(ncmd ? ncmd : 1, sizeof(*replies));
    if (replies == NULL) {
        drop(b);
        snprintf(errbuf, errlen, "out of memory for %zu replies", ncmd);
        return PG_BINDINGS_ETRANSIENT;
    }
    int rc = exchange(b, replies, ncmd, errbuf, errlen);
    if (rc == 0)
        for (size_t i = 0; i < ncmd; i++)
            freeReplyObject(replies[i]);
    free(replies);
    return rc;
}

static int check_uuid(const char *what, const char *s, char *errbuf, size_t errlen)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 256) {
        snprintf(errbuf, errlen, "%s must be a non-empty id of at most 256 bytes",
                 what);
        return PG_BINDINGS_EUSAGE;
    }
    return 0;
}

static int one_command(pg_bindings_t *b, const char *vm, int argc, const char **argv,
                       redisReply **reply, char *errbuf, size_t errlen)
{
    int rc = check_uuid("vm uuid", vm, errbuf, errlen);
    if (rc == 0)
        rc = ensure_connected(b, errbuf, errlen);
    if (rc != 0)
        return rc;
    if (append(b, argc, argv, NULL) != 0) {
        drop(b);
        snprintf(errbuf, errlen, "redis: cannot buffer the command");
        return PG_BINDINGS_ETRANSIENT;
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
    int rc = check_uuid("device uuid", device, errbuf, errlen);
    if (rc == 0)
        rc = check_uuid("device kind", kind, errbuf, errlen);
    if (rc == 0 && (vm == NULL || vm_key(key, vm, "devices") < 0))
        rc = check_uuid("vm uuid", "", errbuf, errlen);
    if (rc != 0)
        return rc;
    const char *argv[4] = {"HSET", key, device, kind};
    return one_command(b, vm, 4, argv, NULL, errbuf, errlen);
}

int pg_bindings_unbind(pg_bindings_t *b, const char *vm, const char *device,
                       bool *removed, char *errbuf, size_t errlen)
{
    char key[KEY_MAX];
    int rc = check_uuid("device uuid", device, errbuf, errlen);
    if (rc == 0 && (vm == NULL || vm_key(key, vm, "devices") < 0))
        rc = check_uuid("vm uuid", "", errbuf, errlen);
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
    int rc = check_uuid("host uuid", host, errbuf, errlen);
    if (rc == 0 && (vm == NULL || vm_key(key, vm, "host") < 0))
        rc = check_uuid("vm uuid", "", errbuf, errlen);
    if (rc != 0)
        return rc;
    const char *argv[3] = {"SET", key, host};
    return one_command(b, vm, 3, argv, NULL, errbuf, errlen);
}

int pg_bindings_pin(pg_bindings_t *b, const char *vm, const char *reason, char *errbuf,
                    size_t errlen)
{
    char key[KEY_MAX];
    if (vm == NULL || vm_key(key, vm, "pin") < 0)
        return check_uuid("vm uuid", "", errbuf, errlen);
    const char *argv[3] = {"SET", key, reason ? reason : ""};
    return one_command(b, vm, 3, argv, NULL, errbuf, errlen);
}

int pg_bindings_unpin(pg_bindings_t *b, const char *vm, char *errbuf, size_t errlen)
{
    char key[KEY_MAX];
    if (vm == NULL || vm_key(key, vm, "pin") < 0)
        return check_uuid("vm uuid", "", errbuf, errlen);
    const char *argv[2] = {"DEL", key};
    return one_command(b, vm, 2, argv, NULL, errbuf, errlen);
}

int pg_bindings_store(pg_bindings_t *b, const char *const *vm_uuids,
                      const pg_vm_binding_t *bindings, size_t n, char *errbuf,
                      size_t errlen)
{
    int rc = ensure_connected(b, errbuf, errlen);
    if (rc != 0 || n == 0)
        return rc;
    size_t ncmd = 0, argv_cap = 0;
    const char **argv = NULL;
    for (size_t i = 0; i < n; i++) {
        const pg_vm_binding_t *vb = &bindings[i];
        char k_host[KEY_MAX], k_pin[KEY_MAX], k_dev[KEY_MAX];
        if (check_uuid("vm uuid", vm_uuids[i], errbuf, errlen) != 0 ||
            vm_key(k_host, vm_uuids[i], "host") < 0 ||
            vm_key(k_pin, vm_uuids[i], "pin") < 0 ||
            vm_key(k_dev, vm_uuids[i], "devices") < 0) {
            rc = PG_BINDINGS_EUSAGE;
            break;
        }
        size_t need = 2 + 2 * vb->n_devices;
        if (need > argv_cap) {
            const char **p = realloc(argv, need * sizeof(*p));
            if (p == NULL) {
                snprintf(errbuf, errlen, "out of memory");
                rc = PG_BINDINGS_ETRANSIENT;
                break;
            }
            argv = p;
            argv_cap = need;
        }
        /* Replace, not merge: a device missing from the import is unbound. */
        const char *del[2] = {"DEL", k_dev};
        rc |= append(b, 2, del, NULL);
        ncmd++;
        if (vb->n_devices > 0) {
            argv[0] = "HSET";
            argv[1] = k_dev;
            for (size_t j = 0; j < vb->n_devices; j++) {
                argv[2 + 2 * j] = vb->devices[j].device_uuid;
                argv[3 + 2 * j] = vb->devices[j].kind;
            }
            rc |= append(b, (int)need, argv, NULL);
            ncmd++;
        }
        const char *host[3] = {vb->host ? "SET" : "DEL", k_host, vb->host};
        rc |= append(b, vb->host ? 3 : 2, host, NULL);
        const char *pin[3] = {vb->pin ? "SET" : "DEL", k_pin, vb->pin};
        rc |= append(b, vb->pin ? 3 : 2, pin, NULL);
        ncmd += 2;
        if (rc != 0) {
            snprintf(errbuf, errlen, "redis: cannot buffer the pipeline");
            rc = PG_BINDINGS_ETRANSIENT;
            break;
        }
    }
    free(argv);
    if (rc != 0) {
        drop(b); /* drop what was appended but not sent */
        return rc;
    }
    return pipeline(b, ncmd, errbuf, errlen);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Redis Sentinel, the bindings module's side (see bindings_sentinel.h): the
 * pure parsers of the sentinels' and the primary's replies, and the asking
 * of each sentinel in turn over a short-lived connection of its own. A
 * sentinel's answer is only a candidate: the caller checks ROLE on the
 * server itself before trusting it (a sentinel may be partitioned away and
 * stale), as the Sentinel clients guidelines ask.
 */
#include "bindings_sentinel.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static bool parse_port(const char *s, size_t n, int *port)
{
    if (n == 0 || n > 5)
        return false;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return false;
    *port = (int)v;
    return true;
}

int pg_sentinel_parse_list(const char *spec, pg_redis_addr_t *out, size_t max,
                           size_t *n, char *errbuf, size_t errlen)
{
    *n = 0;
    const char *p = spec != NULL ? spec : "";
    for (size_t entry = 1;; entry++) {
        const char *comma = strchr(p, ',');
        const char *e = comma != NULL ? comma : p + strlen(p);
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        const char *colon = NULL;
        for (const char *q = p; q < e; q++)
            if (*q == ':')
                colon = q;
        const char *h = p, *h_end = colon;
        if (colon != NULL && h < h_end && *h == '[' && h_end[-1] == ']') {
            h++; /* [v6]:port */
            h_end--;
        }
        int port;
        size_t hlen = colon != NULL ? (size_t)(h_end - h) : 0;
        bool ok = colon != NULL && hlen > 0 && hlen <= PG_SENTINEL_HOST_LEN &&
                  parse_port(colon + 1, (size_t)(e - colon - 1), &port);
        for (size_t i = 0; ok && i < hlen; i++)
            ok = h[i] > ' ' && h[i] < 0x7f && h[i] != ',';
        if (!ok) {
            pg_errf(errbuf, errlen,
                    "redis.sentinels entry %zu (\"%.*s\") is not host:port with a port "
                    "in [1, 65535]",
                    entry, (int)(e - p), p);
            return PG_INPUT;
        }
        if (*n == max) {
            pg_errf(errbuf, errlen, "redis.sentinels lists more than %zu sentinels",
                    max);
            return PG_INPUT;
        }
        memcpy(out[*n].host, h, hlen);
        out[*n].host[hlen] = '\0';
        out[*n].port = port;
        (*n)++;
        if (comma == NULL)
            return PG_OK;
        p = comma + 1;
    }
}

int pg_sentinel_parse_addr(const redisReply *r, pg_redis_addr_t *out, char *errbuf,
                           size_t errlen)
{
    if (r == NULL) {
        pg_errf(errbuf, errlen, "no reply");
        return PG_RETRY;
    }
    if (r->type == REDIS_REPLY_NIL) {
        pg_errf(errbuf, errlen, "the sentinel monitors no such primary");
        return PG_RETRY;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        pg_errf(errbuf, errlen, "%.*s", (int)r->len, r->str);
        return PG_RETRY;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_STRING) {
        pg_errf(errbuf, errlen, "unexpected reply to SENTINEL get-master-addr-by-name");
        return PG_INPUT;
    }
    const redisReply *h = r->element[0], *p = r->element[1];
    if (h->len == 0 || h->len > PG_SENTINEL_HOST_LEN || memchr(h->str, '\0', h->len) ||
        !parse_port(p->str, p->len, &out->port)) {
        pg_errf(errbuf, errlen,
                "the sentinel answered an address that is no host:port");
        return PG_INPUT;
    }
    memcpy(out->host, h->str, h->len);
    out->host[h->len] = '\0';
    return PG_OK;
}

int pg_sentinel_parse_role(const redisReply *r, bool *is_primary, char *errbuf,
                           size_t errlen)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        (r->element[0]->type != REDIS_REPLY_STRING &&
         r->element[0]->type != REDIS_REPLY_STATUS)) {
        pg_errf(errbuf, errlen, "unexpected reply to ROLE");
        return PG_INPUT;
    }
    const redisReply *role = r->element[0];
    *is_primary = role->len == 6 && memcmp(role->str, "master", 6) == 0;
    return PG_OK;
}

int pg_sentinel_parse_replid(const char *info, size_t len, char out[41])
{
    static const char key[] = "master_replid:";
    const size_t klen = sizeof(key) - 1;
    for (size_t i = 0; i + klen <= len; i++) {
        /* At the start of a line: master_replid2 must not match. */
        if ((i > 0 && info[i - 1] != '\n') || memcmp(info + i, key, klen) != 0)
            continue;
        size_t j = i + klen, k = 0;
        while (j < len && k < 40 && info[j] != '\r' && info[j] != '\n')
            out[k++] = info[j++];
        out[k] = '\0';
        return k > 0 ? PG_OK : PG_INPUT;
    }
    return PG_INPUT;
}

static struct timeval tv_of(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

/* One sentinel: AUTH when configured, then the question. */
static int ask_one(const pg_sentinel_opts_t *o, const pg_redis_addr_t *s,
                   pg_redis_addr_t *out, char *errbuf, size_t errlen)
{
    redisContext *c =
        redisConnectWithTimeout(s->host, s->port, tv_of(o->connect_timeout_ms));
    if (c == NULL || c->err) {
        pg_errf(errbuf, errlen, "%s", c != NULL ? c->errstr : "out of memory");
        redisFree(c);
        return PG_RETRY;
    }
    redisSetTimeout(c, tv_of(o->timeout_ms));
    int rc = PG_OK;
    redisReply *r = NULL;
    if (o->password != NULL && o->password[0] != '\0') {
        r = o->user != NULL && o->user[0] != '\0'
                ? redisCommand(c, "AUTH %s %s", o->user, o->password)
                : redisCommand(c, "AUTH %s", o->password);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            pg_errf(errbuf, errlen, "AUTH: %s", r != NULL ? r->str : c->errstr);
            /* Wrong credentials do not heal by retrying: a wrong password,
             * or one given to a sentinel that has none. */
            rc = r != NULL && (strncmp(r->str, "WRONGPASS", 9) == 0 ||
                               strncmp(r->str, "ERR invalid password", 20) == 0 ||
                               strncmp(r->str, "ERR AUTH", 8) == 0)
                     ? PG_FATAL
                     : PG_RETRY;
        }
        freeReplyObject(r);
        r = NULL;
    }
    if (rc == PG_OK) {
        r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", o->master_name);
        if (r == NULL) {
            pg_errf(errbuf, errlen, "%s", c->errstr);
            rc = PG_RETRY;
        } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOAUTH", 6) == 0) {
            /* A sentinel with a password, none configured: nor does this. */
            pg_errf(errbuf, errlen, "%s", r->str);
            rc = PG_FATAL;
        } else {
            rc = pg_sentinel_parse_addr(r, out, errbuf, errlen);
            if (rc == PG_INPUT)
                rc = PG_RETRY; /* another sentinel may answer sensibly */
        }
    }
    freeReplyObject(r);
    redisFree(c);
    return rc;
}

int pg_sentinel_resolve(const pg_sentinel_opts_t *o, size_t *next, pg_redis_addr_t *out,
                        char *errbuf, size_t errlen)
{
    char all[1024] = "";
    size_t off = 0;
    for (size_t k = 0; k < o->n; k++) {
        size_t i = (*next + k) % o->n;
        char err[256];
        int rc = ask_one(o, &o->sentinels[i], out, err, sizeof(err));
        if (rc == PG_OK) {
            *next = i; /* ask the one that answered first, next time */
            return PG_OK;
        }
        if (rc == PG_FATAL) {
            pg_errf(errbuf, errlen,
                    "sentinel %s:%d: %s (check redis.sentinel.password)",
                    o->sentinels[i].host, o->sentinels[i].port, err);
            return PG_FATAL;
        }
        int w = snprintf(all + off, sizeof(all) - off, "%s%s:%d: %s", off ? "; " : "",
                         o->sentinels[i].host, o->sentinels[i].port, err);
        if (w > 0 && (size_t)w < sizeof(all) - off)
            off += (size_t)w;
    }
    pg_errf(errbuf, errlen, "no sentinel named the primary %s (%s)", o->master_name,
            all);
    return PG_RETRY;
}

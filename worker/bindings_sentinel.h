/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Redis Sentinel for the bindings module (hiredis 0.14 has none): which
 * server is the primary of a monitored set, asked of the sentinels in turn;
 * whether a server is a primary (ROLE); and the replication id that changes
 * when a failover promotes another server. The reply parsers do no I/O and
 * are unit-tested against recorded replies; pg_sentinel_resolve does the
 * asking. Used by bindings.c on every (re)connect when redis.sentinels is
 * set.
 */
#ifndef PG_BINDINGS_SENTINEL_H
#define PG_BINDINGS_SENTINEL_H

#include "status.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

enum { PG_SENTINEL_MAX = 16, PG_SENTINEL_HOST_LEN = 255 };

typedef struct {
    char host[PG_SENTINEL_HOST_LEN + 1];
    int port;
} pg_redis_addr_t;

/* "host:port,host:port" (blanks around entries ignored; host a name, an
 * IPv4 address or a bracketed IPv6 one) into out[0..max): PG_OK, or
 * PG_INPUT naming the bad entry. An empty list is PG_INPUT too. */
int pg_sentinel_parse_list(const char *spec, pg_redis_addr_t *out, size_t max,
                           size_t *n, char *errbuf, size_t errlen);

/* The reply to SENTINEL get-master-addr-by-name: a two-element array of
 * host and port. PG_OK with *out filled; PG_RETRY when the sentinel does not
 * know the name (a nil reply) or answered an error; PG_INPUT for a reply of
 * another shape. */
int pg_sentinel_parse_addr(const redisReply *r, pg_redis_addr_t *out, char *errbuf,
                           size_t errlen);

/* The reply to ROLE: *is_primary is true for "master". PG_OK, or PG_INPUT
 * for a reply that is not a ROLE reply. */
int pg_sentinel_parse_role(const redisReply *r, bool *is_primary, char *errbuf,
                           size_t errlen);

/* The master_replid field of an INFO replication reply, into out (41 bytes):
 * PG_OK, or PG_INPUT when absent. */
int pg_sentinel_parse_replid(const char *info, size_t len, char out[41]);

typedef struct {
    pg_redis_addr_t sentinels[PG_SENTINEL_MAX];
    size_t n;
    const char *master_name;
    const char *user;     /* sentinel ACL user; empty or NULL: none */
    const char *password; /* sentinel password; empty or NULL: no AUTH */
    int connect_timeout_ms;
    int timeout_ms;
} pg_sentinel_opts_t;

/* Asks the sentinels, in order starting after the one that answered last
 * (*next, updated), for the primary of master_name. PG_OK with *out filled;
 * PG_RETRY when none answered with an address (errbuf says what each did);
 * PG_FATAL when a sentinel refused the credentials. */
int pg_sentinel_resolve(const pg_sentinel_opts_t *o, size_t *next, pg_redis_addr_t *out,
                        char *errbuf, size_t errlen);

#endif

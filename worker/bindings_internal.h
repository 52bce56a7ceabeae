/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the files of the bindings module share (bindings.c: the connection,
 * lookups and operator edits; bindings_feed.c: the binding feed's apply and
 * the host index), and their pure halves exposed for unit tests: the request
 * formatter and the reply parsers of the scripts. Neither half does I/O, so
 * tests compare the requests with hiredis's own formatter and feed RESP bytes
 * to hiredis's reader for the replies.
 */
#ifndef PG_BINDINGS_INTERNAL_H
#define PG_BINDINGS_INTERNAL_H

#include "bindings.h"
#include "bindings_sentinel.h"

#include <hiredis/hiredis.h>

/* What one connection has done (for debugging with a core file). */
typedef struct {
    unsigned long long round_trips;
    unsigned long long commands;
    unsigned long long errors;
    unsigned long long reconnects;
    double last_rtt_seconds;
} pg_bindings_stats_t;

struct pg_bindings {
    redisContext *ctx;
    char *host, *user, *password;
    /* Sentinel: where to ask for the primary (n == 0: standalone), which
     * sentinel answered last, and the primary's replication id when last
     * connected (a change is a failover). */
    pg_sentinel_opts_t sentinel;
    char *master_name, *sentinel_user, *sentinel_password;
    size_t sentinel_next;
    char replid[41];
    char primary[PG_SENTINEL_HOST_LEN + 8]; /* "host:port" of the primary in use */
    unsigned long long failovers;
    int port, db, connect_timeout_ms, timeout_ms;
    bool ever_connected;
    bool quiet_failover; /* see pg_bindings_opts_t */
    size_t max_devices, max_len;
    char sha[41];  /* SHA1 of LOOKUP_LUA, as SCRIPT LOAD returned it */
    char args[64]; /* the script's two ARGV, RESP-encoded once */
    size_t args_len;
    pg_buf_t cmd;            /* the pipeline being formatted, reused across lookups */
    size_t expected;         /* VMs still to be answered by pg_bindings_next */
    size_t pending;          /* of them, those whose replies Redis still owes */
    size_t chunk;            /* VMs per lookup script call */
    redisReply *chunk_reply; /* the script reply being read, VM by VM */
    size_t chunk_pos;
    char note_sha[41];     /* SHA1 of PG_BINDINGS_RESULT_LUA (bindings_quarantine.c) */
    size_t notes_expected; /* result notes whose replies are still to be read */
    pg_quarantine_opts_t quarantine;
    char apply_sha[41]; /* SHA1 of the feed's APPLY_LUA on this connection */
    bool apply_loaded;  /* apply_sha is loaded on this connection (reset on connect) */
    pg_bindings_stats_t stats;
    /* The binding view (bindings_view.c); view NULL when redis.view is off. */
    struct pg_view *view;
    redisContext *inv;     /* the invalidation connection, subscribed */
    bool view_live;        /* inv is subscribed and ctx's tracking points at it */
    bool view_warned;      /* redis_view_unavailable logged, not yet recovered */
    int64_t view_retry_ms; /* monotonic ms before which setup is not tried again */
    pg_view_stats_t view_stats;
    const struct pg_view_entry **hit; /* per VM of the lookup in flight: its
                                         view entry, NULL when read from Redis */
    uint64_t *dropped;                /* hashes of the VMs the last barrier dropped */
    size_t n_dropped, cap_dropped;
    /* Set when the last barrier emptied the view or dropped a VM it could not
     * remember in `dropped`: every entry held before it is suspect. */
    bool dropped_all;
    const char **miss; /* the VMs of it sent to Redis */
    size_t batch_cap;  /* entries of hit and miss */
    size_t next_vm;    /* the next VM pg_bindings_next answers */
    size_t n_vms;      /* VMs of the lookup in flight */
};

/* The socket timeout of a setting in ms. */
struct timeval pg_bindings_tv(int ms);

/* bindings_view.c: the view's connection half. pg_bindings_view_ready sets
 * the view up on the lookup connection when it is not (a failure is logged
 * once and retried every 10 s); pg_bindings_view_barrier_send sends the
 * barrier's PING (false when the view is not live, or was lost sending it)
 * and pg_bindings_view_barrier_read reads every invalidation Redis sent
 * before it, up to its pong (see bindings_view.c), after which the view is
 * live or has been emptied, with n_dropped/dropped/dropped_all saying what
 * it dropped; pg_bindings_view_lost empties it and closes the invalidation
 * connection (why: logged; NULL: quietly). */
void pg_bindings_view_ready(pg_bindings_t *b);
bool pg_bindings_view_barrier_send(pg_bindings_t *b);
void pg_bindings_view_barrier_read(pg_bindings_t *b);
void pg_bindings_view_lost(pg_bindings_t *b, const char *why);

/* The connection, for the module's other files. pg_bindings_connect connects
 * (AUTH, SELECT, timeouts, the lookup script) when there is no connection;
 * pg_bindings_drop forgets the connection and anything in flight (the next
 * call reconnects); pg_bindings_reply_error fills errbuf from an error reply
 * ("redis host:port<what>: <reply>") and returns its class: PG_FATAL for
 * credentials and permissions, PG_RETRY otherwise. */
int pg_bindings_connect(pg_bindings_t *b, char *errbuf, size_t errlen);
void pg_bindings_drop(pg_bindings_t *b);
int pg_bindings_reply_error(const pg_bindings_t *b, const redisReply *r,
                            const char *what, char *errbuf, size_t errlen);

/* bindings_quarantine.c: the result script, its request formatter (one
 * EVALSHA per chunk notes) and its reply parser (note i of a chunk's reply). */
extern const char PG_BINDINGS_RESULT_LUA[];
int pg_bindings_format_notes(pg_buf_t *out, const char *sha,
                             const pg_result_note_t *notes, size_t n, size_t chunk,
                             const pg_quarantine_opts_t *q, int64_t now_ms,
                             char *errbuf, size_t errlen);
int pg_bindings_parse_note(const redisReply *chunk, size_t i, pg_note_outcome_t *out,
                           char *errbuf, size_t errlen);

/* Why a value is no acceptable id (host, device uuid or kind) of the cache:
 * "is empty", "is too long", "holds a NUL byte", "is not valid UTF-8"; NULL
 * when it is one. The rule pg_bindings_check applies to every value. */
const char *pg_bindings_value_fault(pg_bytes_t v, size_t max_len);

/* Parses the reply of the lookup script into out; its bytes point into r (so
 * r must outlive out), its device array lives in arena. Returns 0, or
 * PG_RETRY when the reply is not the script's shape, PG_FATAL when out of
 * memory. */
int pg_bindings_parse_lookup(const redisReply *r, pg_arena_t *arena, pg_vm_raw_t *out,
                             char *errbuf, size_t errlen);

/* Appends the RESP of the lookups of n VMs, `chunk` VMs per script call
 * (EVALSHA sha <4 x VMs> <their four keys each: :host, :pin, :devices,
 * :generation> followed by `args`, the script's ARGV already in RESP), to
 * out. The bytes must equal what hiredis's
 * redisFormatCommandArgv makes of the same arguments; formatted by hand
 * because snprintf showed in the profile at three keys per VM. */
int pg_bindings_format_lookups(pg_buf_t *out, const char *sha, const char *args,
                               size_t args_len, size_t chunk,
                               const char *const *vm_uuids, size_t n, char *errbuf,
                               size_t errlen);

/* One reply of the feed's apply script, as parsed. */
typedef struct {
    pg_apply_result_t result;
    /* STALE because the stored :generation is no canonical decimal int64 (or
     * not a string): not comparable, so the record was refused (fail closed). */
    bool generation_malformed;
    /* APPLIED and DELETED: the VM's :host before the script; STALE: its :host
     * now. Absent when there was none, or it was no string of 1 to max_len
     * bytes. Points into the reply. */
    bool has_host;
    pg_bytes_t host;
} pg_apply_reply_t;

/* Parses one reply of the apply script for a record (tombstone false) or a
 * tombstone. Returns 0, or PG_RETRY when the reply is not the script's
 * answer to that kind of record. */
int pg_bindings_parse_apply(const redisReply *r, bool tombstone, pg_apply_reply_t *out,
                            char *errbuf, size_t errlen);

/* One command on the host index: SADD (add) or SREM of vm in
 * pinguard:host:{<host>}:vms. */
typedef struct {
    bool add;
    pg_bytes_t host;
    pg_bytes_t vm;
} pg_index_op_t;

/* The host index commands that follow one applied record (at most two, in
 * the order to send them), from the record and its script's reply: APPLIED
 * removes the VM from the old host's set when the host changed or became
 * null, and adds it to the new host's; STALE adds it to the host it names now
 * (idempotent: it repairs the index after a batch whose index round trip was
 * lost and which is being redone); DELETED removes it from the old host's;
 * ABSENT does nothing. A host that is no acceptable value (max_len) names no
 * set. Returns the number of ops written. Pure. */
size_t pg_bindings_index_ops(const pg_apply_t *rec, const pg_apply_reply_t *reply,
                             size_t max_len, pg_index_op_t out[2]);

#endif

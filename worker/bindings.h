/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The device-binding cache in Redis (SPEC key layout), and the only module that
 * talks to Redis. Reads for a whole batch go out as one pipelined round trip;
 * connect and every read/write are bounded by timeouts; a failed connection is
 * dropped and re-established on the next call.
 */
#ifndef PG_BINDINGS_H
#define PG_BINDINGS_H

#include "config.h"
#include "mem.h"
#include "policy.h"
#include "status.h"

/* Every function returns a pg_status_t: PG_RETRY when Redis is unreachable,
 * timed out or loading, or a key has the wrong type (an operator must fix
 * it); PG_FATAL for wrong credentials or ACL (errbuf says which settings to
 * check) and out of memory; PG_INPUT for a bad argument (e.g. an empty
 * uuid). */

/* The quarantine settings (quarantine.failures, .window.ms, .base.ms,
 * .max.ms). */
typedef struct {
    int failures, window_ms, base_ms, max_ms;
} pg_quarantine_opts_t;

typedef struct {
    const char *host;
    int port;
    int db;
    const char *user;     /* empty or NULL: AUTH with the password alone */
    const char *password; /* empty or NULL: no AUTH */
    int connect_timeout_ms;
    int timeout_ms;
    size_t max_devices; /* redis.max.devices.per.vm; 0: PG_BINDINGS_MAX_DEVICES */
    size_t max_len;     /* longest host, device uuid or kind; 0: PG_BINDINGS_MAX_LEN */
    size_t chunk;       /* VMs per lookup script call; 0: PG_BINDINGS_CHUNK */
    pg_quarantine_opts_t quarantine; /* for pg_bindings_send_notes */
    /* Sentinel (SPEC "Redis: standalone or Sentinel"): sentinels "host:port,..."
     * (NULL or empty: host and port name a standalone server), the primary's
     * name, and the sentinels' credentials. */
    const char *sentinels;
    const char *master_name;
    const char *sentinel_user;
    const char *sentinel_password;
    /* A second connection of the same process (the metrics probe): counts a
     * failover but leaves the redis_failover log line to the first. */
    bool quiet_failover;
    /* The binding view (redis.view, bindings_view.c): VMs read are kept,
     * at most view_max_vms, and kept true by Redis's invalidations. Only
     * the worker's lookups use it. */
    bool view;
    size_t view_max_vms;
} pg_bindings_opts_t;

/* PG_BINDINGS_MAX_VM_LEN: the longest VM uuid that names cache keys (the
 * longest id input.max.string.length admits). PG_BINDINGS_MAX_GEN_LEN: the
 * longest :generation there is, "-9223372036854775808"; a longer one is
 * malformed and not fetched. */
enum {
    PG_BINDINGS_MAX_DEVICES = 256,
    PG_BINDINGS_MAX_LEN = PG_MAX_STRING,
    PG_BINDINGS_MAX_VM_LEN = PG_MAX_STRING,
    PG_BINDINGS_MAX_GEN_LEN = 20,
    PG_BINDINGS_CHUNK = 32,
    PG_BINDINGS_VIEW_MAX_VMS = 65536
};

/* A value from Redis: bytes and their length, never a C string (a value
 * may hold NUL bytes). */
typedef struct {
    const char *data;
    size_t len;
} pg_bytes_t;

/* One VM's entry as Redis holds it, whatever it holds: for checking it
 * (pg_bindings_check) and for showing it to an operator (explain). */
typedef struct {
    pg_bytes_t uuid, kind;
} pg_raw_device_t;

/* What pg_bindings_inspect reads beyond the lookup's keys, for operators
 * (explain): the pin's expiry and the quarantine keys. Zero elsewhere. */
enum { PG_BINDINGS_INSPECT_FAILURES = 20 }; /* requestIds listed at most */
typedef struct {
    pg_bytes_t request_id; /* cut to the longest value the limits admit */
    int64_t finished_at_ms;
} pg_raw_failure_t;
typedef struct {
    bool read; /* filled by pg_bindings_inspect */
    /* Redis TYPE of :failures (a zset), :quarantine (a string), :backoff (a
     * hash); a key of another type is not read. */
    char failures_type[16], quarantine_type[16], backoff_type[16];
    int64_t pin_ttl_ms;        /* ms until :pin expires; -1: no expiry or no pin */
    int64_t quarantine_ttl_ms; /* ms until :quarantine expires; -1: none */
    size_t failures_total;     /* members of :failures */
    size_t failures_in_window; /* of them scored within quarantine.window.ms of now */
    /* The newest of those, at most PG_BINDINGS_INSPECT_FAILURES, oldest first. */
    size_t n_failures;
    pg_raw_failure_t *failures;
    /* :backoff's fields where present: last (the last quarantine's length),
     * since (the newest failure it counted), started_by, lifted_by. */
    bool has_backoff_last, has_backoff_since, has_started_by, has_lifted_by;
    int64_t backoff_last_ms, backoff_since_ms;
    pg_bytes_t started_by, lifted_by;
} pg_vm_inspect_t;

typedef struct {
    /* Redis TYPE of each key: "none", "string", "hash", "list", ...; an
     * empty generation_type (an entry built in memory) reads as "none". */
    char host_type[16], pin_type[16], devices_type[16], generation_type[16];
    bool has_host, has_pin, has_generation; /* the key exists as a string */
    bool has_quarantine;   /* :quarantine exists (of any type: it quarantines) */
    pg_bytes_t quarantine; /* its value when a string ("<until_ms> <duration_ms>") */
    pg_bytes_t host, pin, generation;
    bool oversized;            /* a value over the length limit was not fetched */
    bool generation_oversized; /* :generation over PG_BINDINGS_MAX_GEN_LEN bytes,
                                  not fetched (generation is then empty) */
    bool expiring;             /* a key has a TTL (asked only with the view on) */
    size_t n_devices;          /* fields in the :devices hash */
    pg_raw_device_t *devices;  /* NULL when not fetched (too many, or oversized) */
    pg_vm_inspect_t inspect;   /* pg_bindings_inspect only */
} pg_vm_raw_t;

typedef struct {
    size_t max_devices; /* redis.max.devices.per.vm */
    size_t max_len;     /* longest uuid, kind or host accepted */
} pg_bindings_limits_t;

/* Checks a raw entry against the SPEC's layout: every key of its type, a
 * non-empty :host, every device uuid and kind non-empty, valid UTF-8 without
 * NUL and at most max_len bytes, at most max_devices devices, a :generation
 * (where present) that pg_bindings_parse_generation accepts. Returns true
 * when valid; otherwise false with a one-line reason in why. Pure. */
bool pg_bindings_check(const pg_vm_raw_t *raw, const pg_bindings_limits_t *lim,
                       char *why, size_t whylen);

/* Reads a :generation value: true, with *out set, when v is a canonical
 * decimal int64 as Redis itself writes one (INCR, SET of a number): an
 * optional '-', then "0" alone or digits without a leading zero, within
 * int64 ("-0", '+', spaces, an empty value, overflow, NUL bytes and more
 * than PG_BINDINGS_MAX_GEN_LEN bytes are not). Pure. */
bool pg_bindings_parse_generation(pg_bytes_t v, int64_t *out);
/* A :quarantine value, "<until_ms> <duration_ms>" (wall-clock ms, ms): true
 * with both filled (either may be NULL), false for anything else (both 0). */
bool pg_bindings_parse_quarantine(pg_bytes_t v, int64_t *until_ms, int64_t *dur_ms);

/* The options of the settings (redis.*, input.max.string.length): the one
 * place where they are read. The strings point into cfg. */
pg_bindings_opts_t pg_bindings_opts(const pg_config_t *cfg);

/* The limits a cache entry is checked against, from the same settings. */
pg_bindings_limits_t pg_bindings_limits(const pg_config_t *cfg);

typedef struct pg_bindings pg_bindings_t;

/* Copies opts; does not connect yet (the first call does). Caller owns the
 * result. Returns NULL only when out of memory. */
pg_bindings_t *pg_bindings_new(const pg_bindings_opts_t *opts);
void pg_bindings_destroy(pg_bindings_t *b); /* NULL-safe */

/* Connects if needed and sends PING. */
int pg_bindings_ping(pg_bindings_t *b, char *errbuf, size_t errlen);

/* What the binding view did (all 0 with the view off): VMs served from it
 * (hits) and read from Redis while it was live (misses, re-reads
 * included); entries dropped by an invalidation, and of them those the
 * batch being looked up had found (re-read); times it was emptied (a
 * connection lost or re-made, a flush); barriers passed; VMs held now. */
typedef struct {
    unsigned long long hits, misses, invalidations, rereads, flushes, barriers;
    size_t vms;
    bool live;
} pg_view_stats_t;
void pg_bindings_view_stats(const pg_bindings_t *b, pg_view_stats_t *out);

/* Failovers seen: with Sentinel, times the primary's replication id changed
 * between two connections (recent writes may have been lost). */
unsigned long long pg_bindings_failovers(const pg_bindings_t *b);

/* Reads the bindings of n VMs in one round trip, each VM's keys (:host, :pin,
 * :devices and :generation) as one atomic snapshot, in two halves so that the
 * caller can use the first answers while Redis computes the rest:
 * pg_bindings_send writes the lookups of n VMs and returns once the first reply
 * has come back (PG_OK: Redis answers, and the reply is kept for
 * pg_bindings_next; a caller holding its batch while Redis cannot answer learns
 * it there); each pg_bindings_next then reads the next VM's binding into out,
 * in the order sent (vm_uuid names it in errors), its strings and devices in
 * arena. A VM whose entry breaks the SPEC's layout comes back with `malformed`
 * set (an error of that VM's data, not of Redis). Any failure drops the
 * connection and ends the exchange; so does pg_bindings_abandon, for a caller
 * that stops reading early. */
int pg_bindings_send(pg_bindings_t *b, const char *const *vm_uuids, size_t n,
                     char *errbuf, size_t errlen);
int pg_bindings_next(pg_bindings_t *b, const char *vm_uuid, pg_arena_t *arena,
                     pg_vm_binding_t *out, char *errbuf, size_t errlen);
void pg_bindings_abandon(pg_bindings_t *b);

/* A decided MigrationResult, for the quarantine bookkeeping (SPEC
 * "Quarantine"): FAILED is recorded by requestId (once however often it is
 * noted), SUCCEEDED clears the failures, the back-off and any quarantine. */
typedef struct {
    const char *vm_uuid;
    const char *request_id;
    pg_outcome_t outcome;
    int64_t finished_at_ms;
} pg_result_note_t;

typedef enum {
    PG_NOTE_NONE = 0, /* nothing changed */
    PG_NOTE_STARTED,  /* this failure started a quarantine (duration_ms long) */
    PG_NOTE_LIFTED,   /* this success lifted the VM's quarantine */
    PG_NOTE_BAD_KEYS, /* a quarantine key of the VM has the wrong type: untouched */
    PG_NOTE_STARTED_AGAIN, /* a replay of the failure that started the quarantine */
    PG_NOTE_LIFTED_AGAIN,  /* a replay of the success that lifted it */
} pg_note_result_t;
typedef struct {
    pg_note_result_t what;
    int64_t duration_ms;
} pg_note_outcome_t;

/* pg_bindings_send with the batch's result notes behind the lookups, in the
 * same round trip: each note is atomic on the VM's quarantine keys, and one
 * script notes up to redis.lookup.chunk of them, in order. After the n
 * lookups are read with pg_bindings_next, the notes' outcomes are read in
 * order with pg_bindings_next_note. A note replayed (the same requestId
 * again) answers what it did the first time, so a batch redone produces the
 * same audit events. now_ms: the wall clock the window and the quarantine's
 * end are counted from. */
int pg_bindings_send_notes(pg_bindings_t *b, const char *const *vm_uuids, size_t n,
                           const pg_result_note_t *notes, size_t n_notes,
                           int64_t now_ms, char *errbuf, size_t errlen);
int pg_bindings_next_note(pg_bindings_t *b, pg_note_outcome_t *out, char *errbuf,
                          size_t errlen);

/* Checks raw and copies it into out (strings in arena). A raw entry that
 * fails pg_bindings_check gives a malformed binding, not an error; errors
 * are out of memory only. */
int pg_bindings_to_binding(const pg_vm_raw_t *raw, const pg_bindings_limits_t *lim,
                           pg_arena_t *arena, pg_vm_binding_t *out, char *errbuf,
                           size_t errlen);

/* Reads one VM's entry (every key, whatever its type; at most max_fetch
 * devices copied) into out, its bytes in arena, with out->inspect: the pin's
 * time left and the quarantine keys (the failures counted from now back over
 * quarantine.window.ms). For operators: one atomic read, one hash slot, a
 * bounded reply apart from the entry's own values. */
int pg_bindings_inspect(pg_bindings_t *b, const char *vm, size_t max_fetch,
                        pg_arena_t *arena, pg_vm_raw_t *out, char *errbuf,
                        size_t errlen);

/* Operator edits, one round trip each. */
int pg_bindings_bind(pg_bindings_t *b, const char *vm, const char *device,
                     const char *kind, char *errbuf, size_t errlen);
/* *removed is set to whether the device was bound. */
int pg_bindings_unbind(pg_bindings_t *b, const char *vm, const char *device,
                       bool *removed, char *errbuf, size_t errlen);
int pg_bindings_place(pg_bindings_t *b, const char *vm, const char *host, char *errbuf,
                      size_t errlen);
/* Sets :pin to reason, expiring after ttl_ms (Redis removes it then), or
 * never for ttl_ms <= 0: one SET, which also clears an earlier expiry. */
int pg_bindings_pin(pg_bindings_t *b, const char *vm, const char *reason,
                    int64_t ttl_ms, char *errbuf, size_t errlen);
/* *removed (may be NULL) is set to whether the VM was pinned. */
int pg_bindings_unpin(pg_bindings_t *b, const char *vm, bool *removed, char *errbuf,
                      size_t errlen);
/* Lifts a quarantine: deletes :quarantine, :backoff and :failures in one
 * atomic script. out (may be NULL) says what there was. */
typedef struct {
    bool was_quarantined; /* :quarantine existed */
    int64_t ttl_ms;       /* the ms it had left; -1 when none or no expiry */
    int64_t duration_ms;  /* its length, from its value; 0 when unknown */
    size_t failures;      /* requestIds :failures held */
} pg_unquarantine_t;
int pg_bindings_unquarantine(pg_bindings_t *b, const char *vm, pg_unquarantine_t *out,
                             char *errbuf, size_t errlen);

/* Replaces whole VM entries (host, devices, pin) for n VMs in one pipelined
 * round trip. bindings[i].host may be NULL to leave the VM unplaced. */
int pg_bindings_store(pg_bindings_t *b, const char *const *vm_uuids,
                      const pg_vm_binding_t *bindings, size_t n, char *errbuf,
                      size_t errlen);

/* --- The binding feed (SPEC "Binding feed", bindings_feed.c) ------------- */

typedef enum {
    PG_APPLY_APPLIED = 0, /* the record replaced :host, :devices and :generation */
    PG_APPLY_STALE,       /* its generation was not greater than the stored one (or
                             the stored one is no integer): nothing changed */
    PG_APPLY_DELETED,     /* a tombstone removed an entry */
    PG_APPLY_ABSENT       /* a tombstone for a VM the cache did not hold */
} pg_apply_result_t;
#define PG_APPLY_RESULTS 4 /* values of pg_apply_result_t */

/* "applied", "stale", "deleted", "absent" (for logs and metric labels). */
const char *pg_bindings_apply_result_name(pg_apply_result_t r);

/* One record of the feed: vm is the message key; rec NULL is a tombstone. */
typedef struct {
    pg_bytes_t vm;
    const pg_vm_bindings_t *rec;
} pg_apply_t;

/* Applies n records in order, each by one atomic script on the VM's keys
 * (:host, :devices, :generation; never :pin or the quarantine keys): a record
 * replaces all three only when its generation is greater than the stored one
 * (absent counts as lower than any); a stored :generation that is not a
 * canonical decimal int64, or not a string, cannot be compared and the record
 * is refused (STALE, logged): the entry stays malformed, so the worker keeps
 * vetoing the VM (UNKNOWN_VM) until an operator deletes the key, after which
 * the next record or a replay applies. A tombstone deletes the three keys.
 * All scripts go out as one pipelined round trip (a VM named twice is applied
 * twice, in order); then one more round trip keeps the host index
 * (pinguard:host:{<host>}:vms, another slot, not atomic with the apply; a
 * wrongly typed index key is skipped with a warning). results[i] is record
 * i's outcome. Every record is checked first (pg_bindings_check_feed): PG_INPUT
 * naming the first bad one, nothing sent. PG_RETRY when Redis is down, timed
 * out or refuses (nothing may be assumed: some records may have been applied;
 * redo the whole batch, the generations make that idempotent); PG_FATAL for
 * credentials and out of memory. */
int pg_bindings_apply(pg_bindings_t *b, const pg_apply_t *recs, size_t n,
                      pg_apply_result_t *results, char *errbuf, size_t errlen);

/* Whether a record of the feed may be applied: the key non-empty, at most
 * PG_BINDINGS_MAX_VM_LEN bytes, valid UTF-8 without NUL; and for a record
 * (rec non-NULL, NULL is a tombstone) its vmUuid equal to the key ("key
 * names another VM"), a host (when present) and every device uuid and kind
 * non-empty, valid UTF-8 and at most lim->max_len bytes, no device uuid
 * twice, at most lim->max_devices devices, a generation >= 0; and the entry
 * it becomes valid by pg_bindings_check, so that the feed never writes an
 * entry the worker would call malformed. PG_OK; PG_INPUT with a one-line
 * reason in why; PG_FATAL when out of memory. Pure. */
int pg_bindings_check_feed(const pg_bindings_limits_t *lim, pg_bytes_t key,
                           const pg_vm_bindings_t *rec, char *why, size_t why_len);

/* One SSCAN step over a host's index (pinguard:host:{<host>}:vms): *cursor
 * is 0 to start and 0 again once the iteration is complete; up to about
 * `count` members (Redis decides) come back in *members (*n of them), their
 * bytes in arena, as stored (they may repeat across steps, and need not be
 * valid VM uuids). For reports only: the index is not atomic with the VMs'
 * entries. PG_INPUT for a host that names no key; PG_RETRY also when the
 * key is not a set. */
int pg_bindings_host_scan(pg_bindings_t *b, const char *host, uint64_t *cursor,
                          size_t count, pg_arena_t *arena, pg_bytes_t **members,
                          size_t *n, char *errbuf, size_t errlen);

#endif

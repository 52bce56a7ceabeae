/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Counters and gauges of one worker, and the HTTP endpoints that expose them:
 * /metrics (Prometheus text format), /healthz (the loop is alive) and /readyz
 * (group joined, Redis answers, loop not stalled, no input partition stalled).
 * The worker thread records; libmicrohttpd's threads render, so every value is
 * atomic or read under the registry's lock. Values that live elsewhere
 * (consumer lag, Redis reachability) cost network round trips: refresher
 * threads of the registry's own pull them through callbacks the worker
 * installs and keep the last answers as snapshots, so no HTTP request ever
 * waits on Kafka or Redis (a /metrics scrape waits a bounded time for a fresh
 * lag snapshot, on its own connection thread).
 */
#ifndef PG_METRICS_H
#define PG_METRICS_H

#include "bindings.h"
#include "mem.h"
#include "status.h"
#include "types.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    PG_M_IN_DECIDED = 0,
    PG_M_IN_DLQ,
    PG_M_IN_RETRIED,
    PG_M_IN_OUTCOMES
} pg_metrics_outcome_t;
typedef enum {
    PG_M_STREAM_ADVICE = 0,
    PG_M_STREAM_MIGRATE,
    PG_M_STREAM_RELEASE,
    PG_M_STREAMS
} pg_metrics_stream_t;

/* One partition's offsets; lag = high - committed, or high - low when the
 * group has committed nothing yet (the whole log is pending). */
typedef struct {
    char topic[256];
    int32_t partition;
    int64_t committed; /* -1: none */
    int64_t high;
    int64_t low;
    int64_t lag;
    /* The consumer's position (past any transaction markers and aborted
     * records it skipped) and the offset of the last input it handed to the
     * worker; -1 unknown. With every consumed input committed and the
     * position at the high watermark, what lag remains is markers, not work. */
    int64_t position;
    int64_t consumed;
} pg_lag_row_t;

/* Fills *rows (malloc'd, caller frees) with the partitions this worker owns.
 * Returns PG_OK or PG_RETRY with errbuf filled. Called from the lag refresher thread
 * only; it may block (broker round trips). */
typedef int (*pg_metrics_lag_fn)(void *ctx, pg_lag_row_t **rows, size_t *n,
                                 char *errbuf, size_t errlen);
/* Whether the worker's consumer has joined its group, and its counters
 * (fetch_wakeups: see wake_fetcher in kafka.c). Called from the HTTP
 * threads: it must not block. */
/* Kafka requests by type, as librdkafka's statistics count them (summed over
 * the brokers), for what a client costs the brokers. */
enum { PG_M_KAFKA_REQ_TYPES = 18 };
extern const char *const pg_metrics_kafka_requests[PG_M_KAFKA_REQ_TYPES];
typedef struct {
    bool joined; /* the first assignment arrived */
    unsigned long long rebalances;
    unsigned long long assigned_partitions;
    unsigned long long transaction_aborts;
    unsigned long long fetch_wakeups;
    bool stats; /* librdkafka statistics are on (kafka.statistics.interval.ms) */
    unsigned long long requests[2][PG_M_KAFKA_REQ_TYPES]; /* [consumer, producer] */
} pg_metrics_group_t;
typedef void (*pg_metrics_group_fn)(void *ctx, pg_metrics_group_t *out);
/* Whether Redis answers now (a PING on a connection of the callback's own;
 * it is only ever called from one thread at a time). */
typedef bool (*pg_metrics_redis_fn)(void *ctx);

typedef struct pg_metrics pg_metrics_t;

/* How often the refresher threads read the lag and probe Redis. One second
 * keeps /readyz and a scrape within a second of the truth and the stall clock
 * finer than the smallest health.stall.ms (1 s), for one OffsetFetch, two
 * ListOffsets and one PING a second. */
#define PG_METRICS_REFRESH_MS 1000
/* Redis counts as not answering once the freshest word about it (the probe's
 * or the worker's own last exchange) is older than this: a probe hung for
 * several periods, or a refresher thread that stopped turning. */
#define PG_METRICS_REDIS_STALE_MS 10000
/* How long a /metrics scrape waits for a lag snapshot begun after it arrived
 * before it renders the last one (well below Prometheus' 10 s scrape
 * timeout). */
#define PG_METRICS_FRESH_WAIT_MS 2000

/* Caller owns the result; NULL when out of memory. input_topics are the
 * names used as the `topic` label, index-aligned with pg_input_t.
 * stall_timeout_ms: /healthz fails when the loop has not ticked for this
 * long; partition_stall_ms: /readyz fails when an assigned partition with
 * lag has not moved its committed offset for this long. */
pg_metrics_t *pg_metrics_new(const char *const input_topics[PG_IN_COUNT],
                             int stall_timeout_ms, int partition_stall_ms);
/* The registry of `pinguard sync`: one input topic (the binding feed), the
 * feed's counters instead of the decisions', and /readyz waiting for
 * pg_metrics_feed_caught_up as well. */
pg_metrics_t *pg_metrics_new_feed(const char *feed_topic, int stall_timeout_ms,
                                  int partition_stall_ms);
/* NULL-safe. In this order: stops the HTTP server (waiting for the requests
 * under way), then joins the refresher threads, which may take as long as
 * the callback they are in (a lag read against an unreachable broker: up to
 * its timeouts). Only then may the callbacks' context go: destroy the
 * registry before the Kafka client and the Redis probe connection. */
void pg_metrics_destroy(pg_metrics_t *m);

void pg_metrics_set_sources(pg_metrics_t *m, pg_metrics_lag_fn lag,
                            pg_metrics_group_fn group, pg_metrics_redis_fn redis,
                            void *ctx);

/* Recording, from the worker thread. */
void pg_metrics_input(pg_metrics_t *m, int input, pg_metrics_outcome_t outcome,
                      unsigned long long n);
/* verdict: 0/1 = APPROVED/VETOED (advice, migrate) or RELEASE/KEEP (release);
 * reason: the Avro enum index, or -1 for an approval. */
void pg_metrics_decision(pg_metrics_t *m, pg_metrics_stream_t stream, int verdict,
                         int reason);
/* What one input's answer will add to the counters once it is committed:
 * its outcome and, for a decided input, the verdicts of its stream (the
 * stream of an input is the input's index: advice, migrate, release). The
 * worker fills one per input while deciding and hands it to
 * pg_metrics_commit only when the transaction committed (exactly once) or
 * the output was acknowledged and its offset stored (at least once), so the
 * counters say what the outputs say. */
#define PG_M_REASONS 7 /* "none" + the largest reason enum */
typedef struct {
    uint8_t input;   /* pg_input_t */
    uint8_t outcome; /* PG_M_IN_DECIDED or PG_M_IN_DLQ */
    uint32_t unknown_kinds;
    uint8_t quarantine; /* a result's note: 1 started a quarantine, 2 lifted one */
    uint32_t verdicts[2][PG_M_REASONS]; /* [verdict][reason + 1] */
} pg_metrics_tally_t;

void pg_metrics_tally_init(pg_metrics_tally_t *t, int input,
                           pg_metrics_outcome_t outcome);
/* verdict and reason as for pg_metrics_decision. */
void pg_metrics_tally_decision(pg_metrics_tally_t *t, int verdict, int reason);
void pg_metrics_commit(pg_metrics_t *m, const pg_metrics_tally_t *t);

/* The feed's records, by what applying them did (pg_apply_result_t order:
 * applied, stale, deleted, absent), counted once Redis confirmed them. */
enum { PG_M_FEED_RESULTS = 4 };
void pg_metrics_feed_records(pg_metrics_t *m, int result, unsigned long long n);
/* A feed record sent to the DLQ; reason must be a string that outlives the
 * registry (a pg_codec_err_name, "INVALID_FIELD"). */
void pg_metrics_feed_dead_letter(pg_metrics_t *m, const char *reason);
/* Whether the feed has been applied up to the high watermarks read at start
 * (it stays so once it was). */
void pg_metrics_feed_caught_up(pg_metrics_t *m, bool caught_up);
/* A batch, or part of one, that will be consumed again (abort or rewind). */
void pg_metrics_batch_redone(pg_metrics_t *m);
/* VMs whose cache entry could not be read as the SPEC's layout says. */
void pg_metrics_cache_invalid(pg_metrics_t *m, unsigned long long n);
void pg_metrics_redis_exchange(pg_metrics_t *m, double seconds, bool ok);
/* Redis failovers the loop's connection has seen so far (Sentinel). */
void pg_metrics_redis_failovers(pg_metrics_t *m, unsigned long long total);
/* What the loop's binding view has done so far (bindings.h). */
void pg_metrics_redis_view(pg_metrics_t *m, const pg_view_stats_t *v);
void pg_metrics_tick(pg_metrics_t *m);  /* the loop is alive */
void pg_metrics_batch(pg_metrics_t *m); /* one consumed batch was processed */

/* Renders the Prometheus text into out (appended), from the snapshots: it
 * never calls the lag or Redis callbacks. */
int pg_metrics_render(pg_metrics_t *m, pg_buf_t *out);
/* PG_OK when live/ready; PG_RETRY (not now) with a one-line reason
 * otherwise. Neither calls the
 * network: they read atomics and the snapshots under the lock. */
int pg_metrics_health(pg_metrics_t *m, char *why, size_t whylen);
int pg_metrics_ready(pg_metrics_t *m, char *why, size_t whylen);
/* pg_metrics_ready as of now_ms (CLOCK_MONOTONIC, in ms). */
int pg_metrics_ready_at(pg_metrics_t *m, int64_t now_ms, char *why, size_t whylen);

/* One refresh of both snapshots on the calling thread: reads the lag and
 * updates the stall clocks, then probes Redis. The refresher threads do this
 * every PG_METRICS_REFRESH_MS; call it directly only when they do not run
 * (before pg_metrics_serve, or without a server). */
void pg_metrics_refresh(pg_metrics_t *m);

/* Starts the refresher threads (one for the lag, one for Redis, so that an
 * unreachable broker cannot make Redis look down), then serves /metrics,
 * /healthz and /readyz on "host:port" with a thread per connection, so that
 * a slow client or a waiting scrape holds no probe. Returns PG_OK, PG_INPUT
 * (a malformed address) or PG_FATAL (e.g. the address is taken) with
 * errbuf filled. */
int pg_metrics_serve(pg_metrics_t *m, const char *listen, char *errbuf, size_t errlen);
/* The port actually bound (useful with port 0), or -1 when not serving. */
int pg_metrics_port(const pg_metrics_t *m);

/* The stall net, as a pure function of consecutive lag snapshots. Each
 * assigned partition has a clock, started when the partition is first seen,
 * when its committed offset moves, and when its lag rises from 0 (an idle
 * partition that receives input has not been stalling all along). A
 * partition is stalled when it has lag and its clock has run for stall_ms. */
typedef struct {
    char topic[256];
    int32_t partition;
    int64_t committed;
    int64_t lag;
    int64_t since_ms; /* when the clock started */
} pg_metrics_clock_t;
typedef struct {
    pg_metrics_clock_t *parts; /* one per row of the last snapshot */
    size_t n;
} pg_metrics_stall_t;

/* Replaces s's clocks by those of the snapshot rows[0..n) taken at now_ms:
 * a partition absent from rows is dropped (revoked), a new one starts its
 * clock. Returns PG_OK, or PG_FATAL when out of memory (s unchanged). */
int pg_metrics_stall_update(pg_metrics_stall_t *s, const pg_lag_row_t *rows, size_t n,
                            int64_t now_ms);
/* The number of partitions stalled at now_ms; *worst (when not NULL) is set to
 * the one stalled longest, or NULL. */
size_t pg_metrics_stall_count(const pg_metrics_stall_t *s, int64_t now_ms, int stall_ms,
                              const pg_metrics_clock_t **worst);
void pg_metrics_stall_free(pg_metrics_stall_t *s); /* NULL-safe; leaves it empty */

/* One observation of Redis: whether it answered, and when (CLOCK_MONOTONIC
 * ms; INT64_MIN: never). */
typedef struct {
    bool ok;
    int64_t at_ms;
} pg_metrics_redis_obs_t;
/* Whether Redis answers as of now_ms: the fresher of the probe's last answer
 * and the worker's last exchange decides (a failure, when both are of the
 * same millisecond), and neither counts once older than
 * PG_METRICS_REDIS_STALE_MS. *age_ms (when not NULL) gets the deciding
 * observation's age, or -1 when there is none. */
bool pg_metrics_redis_verdict(pg_metrics_redis_obs_t probe, pg_metrics_redis_obs_t seen,
                              int64_t now_ms, int64_t *age_ms);

#endif

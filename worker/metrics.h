/*
 * Counters and gauges of one worker, and the HTTP endpoints that expose them:
 * /metrics (Prometheus text format), /healthz (the loop is alive) and /readyz
 * (group joined, Redis answers, loop not stalled). The worker thread records;
 * libmicrohttpd's thread renders, so every value is atomic or read under the
 * registry's lock. Values that live elsewhere (consumer lag, Redis reachability)
 * are pulled at scrape time through callbacks the worker installs.
 */
#ifndef PG_METRICS_H
#define PG_METRICS_H

#include "kafka.h"
#include "mem.h"

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

/* Fills *rows (malloc'd, caller frees) with the partitions this worker owns.
 * Returns 0 or -1 with errbuf filled. */
typedef int (*pg_metrics_lag_fn)(void *ctx, pg_lag_row_t **rows, size_t *n,
                                 char *errbuf, size_t errlen);
/* Whether the worker's consumer has joined its group, and its counters. */
typedef struct {
    bool joined;
    unsigned long long rebalances;
    unsigned long long assigned_partitions;
    unsigned long long transaction_aborts;
    unsigned long long fetch_wakeups;
} pg_metrics_group_t;
typedef void (*pg_metrics_group_fn)(void *ctx, pg_metrics_group_t *out);
/* Whether Redis answers now (a PING on a connection of the HTTP thread's). */
typedef bool (*pg_metrics_redis_fn)(void *ctx);

typedef struct pg_metrics pg_metrics_t;

/* Caller owns the result; NULL when out of memory. input_topics are the
 * names used as the `topic` label, index-aligned with pg_input_t. */
pg_metrics_t *pg_metrics_new(const char *const input_topics[3], int stall_timeout_ms);
void pg_metrics_destroy(pg_metrics_t *m); /* NULL-safe; stops the server first */

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
void pg_metrics_redis_exchange(pg_metrics_t *m, double seconds, bool ok);
void pg_metrics_unknown_kinds(pg_metrics_t *m, unsigned long long n);
void pg_metrics_tick(pg_metrics_t *m);  /* the loop is alive */
void pg_metrics_batch(pg_metrics_t *m); /* one consumed batch was processed */

/* Renders the Prometheus text into out (appended). */
int pg_metrics_render(pg_metrics_t *m, pg_buf_t *out);
/* 0 when live/ready; -1 with a one-line reason otherwise. */
int pg_metrics_health(pg_metrics_t *m, char *why, size_t whylen);
int pg_metrics_ready(pg_metrics_t *m, char *why, size_t whylen);

/* Serves /metrics, /healthz and /readyz on "host:port" from a thread of its
 * own. Returns 0, or -1 with errbuf filled (e.g. the address is taken). */
int pg_metrics_serve(pg_metrics_t *m, const char *listen, char *errbuf, size_t errlen);
/* The port actually bound (useful with port 0), or -1 when not serving. */
int pg_metrics_port(const pg_metrics_t *m);

#endif

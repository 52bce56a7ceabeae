/*
 * Everything that talks to Kafka: one consumer in the group over the three
 * input topics, one producer for the decision and dead-letter topics, and the
 * offset bookkeeping between them. Batches are built on
 * rd_kafka_consumer_poll (librdkafka 2.0.2's consume_batch_queue can lose
 * messages around pause/seek/rebalance). The worker never sees librdkafka
 * types.
 */
#ifndef PG_KAFKA_H
#define PG_KAFKA_H

#include "config.h"

#include <stdint.h>

typedef enum {
    PG_IN_ADVICE = 0,
    PG_IN_REQUESTS,
    PG_IN_RESULTS,
    PG_IN_COUNT
} pg_input_t;
typedef enum {
    PG_OUT_FILTERED = 0,
    PG_OUT_DECISIONS,
    PG_OUT_RELEASE,
    PG_OUT_DLQ,
    PG_OUT_COUNT
} pg_output_t;

/* Failure classes. */
enum {
    PG_KAFKA_OK = 0,
    PG_KAFKA_ERETRY = -1, /* this batch must be redone; the process is healthy */
    PG_KAFKA_EFATAL = -2, /* the client cannot go on: exit non-zero, let the
                             supervisor restart the process */
};

typedef struct {
    pg_input_t input;
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* -1 when the broker gave none */
    const void *key;
    size_t key_len;
    const uint8_t *payload;
    size_t len;
    void *handle; /* owned by the kafka module until pg_kafka_batch_release */
} pg_kafka_msg_t;

typedef struct {
    const char *name;
    const char *value;
} pg_kafka_header_t;

/* Delivery state of one produced message, written by the delivery report. */
typedef enum {
    PG_DELIVERY_PENDING = 0,
    PG_DELIVERY_OK = 1,
    PG_DELIVERY_FAILED = -1
} pg_delivery_state_t;

typedef struct pg_kafka pg_kafka_t;

/* One partition's offsets; lag = high - committed, or high - low when the
 * group has committed nothing yet (the whole log is pending). */
typedef struct {
    char topic[256];
    int32_t partition;
    int64_t committed; /* -1: none */
    int64_t high;
    int64_t low;
    int64_t lag;
} pg_lag_row_t;

typedef struct {
    bool joined; /* the first assignment arrived */
    unsigned long long rebalances;
    unsigned long long assigned_partitions;
    unsigned long long transaction_aborts;
    unsigned long long fetch_wakeups; /* see wake_fetcher in kafka.c */
} pg_kafka_group_stats_t;

/* A consumer in the configured group that neither subscribes nor produces:
 * for reading the group's offsets (`pinguard lag`). NULL with errbuf filled. */
pg_kafka_t *pg_kafka_new_inspector(const pg_config_t *cfg, char *errbuf, size_t errlen);

/* Creates the producer and the consumer, subscribes to the input topics.
 * Returns NULL with errbuf filled (a configuration error: fatal). The config
 * must outlive the client. */
pg_kafka_t *pg_kafka_new(const pg_config_t *cfg, char *errbuf, size_t errlen);
/* Waits for the outputs in flight and stores their inputs' offsets, closes
 * the consumer (final offset commit, leave group), flushes the producer, then
 * destroys both, in librdkafka's documented order. NULL-safe. */
void pg_kafka_destroy(pg_kafka_t *k);

/* Fills up to `max` messages, stopping once they hold `max_bytes` (keys and
 * payloads), waiting at most `max_wait_ms` once the first arrives and at most
 * `idle_ms` for it. Messages collected before a rebalance
 * are dropped (they will be re-fetched by their new owner). Returns the count
 * (>= 0) or PG_KAFKA_EFATAL with errbuf filled. */
int pg_kafka_poll_batch(pg_kafka_t *k, pg_kafka_msg_t *msgs, size_t max,
                        size_t max_bytes, int idle_ms, int max_wait_ms, char *errbuf,
                        size_t errlen);
void pg_kafka_batch_release(pg_kafka_msg_t *msgs, size_t n);

/* Counts rebalances; a batch held across a change must be dropped. */
uint64_t pg_kafka_generation(const pg_kafka_t *k);

/* Stops/starts fetching on every assigned partition while still serving the
 * group protocol; pg_kafka_idle polls for at most ms without taking messages. */
int pg_kafka_pause(pg_kafka_t *k);
int pg_kafka_resume(pg_kafka_t *k);
int pg_kafka_idle(pg_kafka_t *k, int ms, char *errbuf, size_t errlen);

/* Queues one output. `state` is set when the broker acknowledges or the
 * message fails for good; it must stay valid until its report is served
 * (pg_kafka_flush or pg_kafka_pending_settle). */
int pg_kafka_produce(pg_kafka_t *k, pg_output_t out, const void *key, size_t key_len,
                     const void *value, size_t len, const pg_kafka_header_t *headers,
                     size_t n_headers, pg_delivery_state_t *state, char *errbuf,
                     size_t errlen);
/* Waits until every queued output has its delivery report. */
int pg_kafka_flush(pg_kafka_t *k, char *errbuf, size_t errlen);

/* At least once, outputs are acknowledged in the background. Each input gets
 * a tracking slot, in consumption order, whose state its one output's
 * delivery report sets (pass it to pg_kafka_produce); NULL when the
 * pg_kafka_pending_room() slots are taken. The slot belongs to the kafka
 * module. */
size_t pg_kafka_pending_room(const pg_kafka_t *k);
pg_delivery_state_t *pg_kafka_pending_add(pg_kafka_t *k, const pg_kafka_msg_t *m);
/* Serves delivery reports (all of them when wait) and settles the inputs
 * answered so far: per partition, the offset after the last acknowledged
 * input is stored (auto-commit sends it), never past a failed one, and the
 * partition is rewound to the failed input so it is consumed again. Returns
 * 0, 1 when something was rewound, PG_KAFKA_ERETRY or PG_KAFKA_EFATAL. */
int pg_kafka_pending_settle(pg_kafka_t *k, bool wait, char *errbuf, size_t errlen);

const char *pg_kafka_output_topic(const pg_kafka_t *k, pg_output_t out);

/* Offsets and lag of the partitions this consumer owns (all = false), or of
 * every partition of the input topics (all = true). Safe to call from another
 * thread than the one polling. *rows is malloc'd; the caller frees it. */
int pg_kafka_lag(pg_kafka_t *k, bool all, pg_lag_row_t **rows, size_t *n, char *errbuf,
                 size_t errlen);
/* Safe to call from any thread. */
void pg_kafka_group_stats(const pg_kafka_t *k, pg_kafka_group_stats_t *out);

/* Exactly-once mode (delivery = exactly-once). A batch's outputs are produced
 * between begin and commit; commit sends the batch's input offsets to the
 * transaction and commits both atomically. An abortable failure aborts the
 * transaction, rewinds the consumer to the committed offsets and returns
 * PG_KAFKA_ERETRY; a fatal one returns PG_KAFKA_EFATAL. */
bool pg_kafka_transactional(const pg_kafka_t *k);
int pg_kafka_txn_begin(pg_kafka_t *k, char *errbuf, size_t errlen);
int pg_kafka_txn_commit(pg_kafka_t *k, const pg_kafka_msg_t *msgs, size_t n,
                        char *errbuf, size_t errlen);
int pg_kafka_txn_abort(pg_kafka_t *k, char *errbuf, size_t errlen);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Everything that talks to Kafka: one consumer in the group over the three
 * input topics, one producer for the decision and dead-letter topics, and the
 * offset bookkeeping between them, behind one batch interface for both
 * delivery modes (begin, track each output, finish). Batches are built on
 * rd_kafka_consumer_poll (librdkafka 2.0.2's consume_batch_queue can lose
 * messages around pause/seek/rebalance). The worker never sees librdkafka
 * types. The module's files share kafka_internal.h.
 */
#ifndef PG_KAFKA_H
#define PG_KAFKA_H

#include "config.h"
#include "metrics.h"
#include "status.h"
#include "types.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    PG_OUT_FILTERED = 0,
    PG_OUT_DECISIONS,
    PG_OUT_RELEASE,
    PG_OUT_DLQ,
    PG_OUT_AUDIT, /* v2: quarantine changes (AuditEvent) */
    PG_OUT_COUNT
} pg_output_t;

/* Every function returns a pg_status_t (or a count, never negative, where
 * said): PG_RETRY when this batch must be redone and the process is
 * healthy; PG_FATAL when the client cannot go on (exit non-zero, let the
 * supervisor restart the process) or memory ran out; PG_INPUT when the
 * caller's argument is at fault for good: a setting librdkafka refuses, or
 * for pg_kafka_produce a record over the producer's message.max.bytes (see
 * pg_kafka_output_max_bytes). */

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

/* What a client is for. WORKER: the group (group.id) over the three input
 * topics, producing decisions and dead letters, in the configured delivery
 * mode. SYNC: `pinguard sync`, the group sync.group.id over topic.bindings,
 * producing dead letters only, at least once (Redis is not part of a Kafka
 * transaction; the generation makes a redone apply harmless). REBUILD:
 * `pinguard sync --rebuild`, every partition of topic.bindings from its
 * beginning, assigned rather than subscribed, in a throwaway group that is
 * never committed to. In SYNC and REBUILD a message's `input` is 0. */
typedef enum { PG_KAFKA_WORKER = 0, PG_KAFKA_SYNC, PG_KAFKA_REBUILD } pg_kafka_role_t;

/* A consumer in the configured group that neither subscribes nor produces:
 * for reading the group's offsets (`pinguard lag`). NULL with errbuf filled. */
pg_kafka_t *pg_kafka_new_inspector(const pg_config_t *cfg, char *errbuf, size_t errlen);

/* Builds the producer's and the consumer's librdkafka configurations exactly
 * as pg_kafka_new would for cfg's delivery mode, without creating a client:
 * an unknown property or an invalid value fails here, named in errbuf
 * ("kafka.linger.ms: ..."). 0 or -1. Checks that librdkafka makes only when
 * a client is created (combinations of properties) are left to pg_kafka_new. */
int pg_kafka_check_config(const pg_config_t *cfg, char *errbuf, size_t errlen);

/* Creates the producer and the consumer and subscribes to the input topics.
 * In exactly-once mode it first initialises transactions. Before joining
 * the group it checks, with one metadata request, that every output topic
 * exists (a missing one fails, named in errbuf: "kafka: output topic X
 * (topic.dlq) does not exist") and reads each output topic's
 * max.message.bytes (see pg_kafka_output_max_bytes). When no broker answers
 * within 1.5 s, the client is returned all the same and that check and the
 * subscription are made by the first pg_kafka_poll_batch calls once one
 * does (they return 0 meanwhile, PG_FATAL for a missing topic), so a
 * worker started before its brokers is up and stoppable while it waits.
 * Every wait for the brokers is cut into slices of at most 500 ms with *stop
 * (may be NULL) checked between them: a stop request returns NULL within
 * about half a second, errbuf saying what was stopped, and the caller,
 * seeing *stop set, exits 0. Otherwise NULL with errbuf filled is fatal. The
 * config must outlive the client. */
pg_kafka_t *pg_kafka_new(const pg_config_t *cfg, volatile sig_atomic_t *stop,
                         char *errbuf, size_t errlen);
/* The same for any role; pg_kafka_new is the WORKER's. Only the outputs a
 * role produces to are checked (SYNC and REBUILD: topic.dlq). */
pg_kafka_t *pg_kafka_new_role(const pg_config_t *cfg, pg_kafka_role_t role,
                              volatile sig_atomic_t *stop, char *errbuf, size_t errlen);
/* Waits for the outputs in flight and stores their inputs' offsets, closes
 * the consumer (final offset commit, leave group), flushes the producer, then
 * destroys both, in librdkafka's documented order. A consumer in a fatal
 * state is not closed (it can neither commit nor leave) and an idle producer
 * is not flushed, so destroying a client that never got going is quick.
 * NULL-safe. */
void pg_kafka_destroy(pg_kafka_t *k);

/* Fills up to `max` messages, stopping once they hold `max_bytes` (keys and
 * payloads), waiting at most `max_wait_ms` once the first arrives and at most
 * `idle_ms` for it. Messages collected before a rebalance
 * are dropped (they will be re-fetched by their new owner). Returns the count
 * (>= 0) or PG_FATAL with errbuf naming the cause once either client
 * is in a state it cannot leave: a librdkafka fatal error (this consumer
 * fenced by another with the same kafka.group.instance.id, the producer
 * fenced by another with the same kafka.transactional.id, ...) or failed
 * authentication or authorisation. pg_kafka_idle, pg_kafka_flush,
 * pg_kafka_settle and pg_kafka_batch_finish return PG_FATAL in the same
 * states. */
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

/* The largest record the output accepts, counted as key_len + len + the
 * names' and values' lengths of its headers: the smaller of the producer's
 * message.max.bytes and the topic's max.message.bytes (read at start; the
 * producer's limit alone when the broker would not tell), less
 * PG_KAFKA_RECORD_MARGIN. 0 when the limit is no larger than the margin. */
size_t pg_kafka_output_max_bytes(const pg_kafka_t *k, pg_output_t out);
/* What the wire adds to key, value and header strings, all counted once per
 * record as the broker sees it: the record batch header (61 bytes: a batch
 * of this record alone is what the topic limit is checked against), the
 * record's own framing (at most 36 bytes of varints and attributes) and each
 * header's two length varints (at most 10 bytes; room for 40 headers). */
enum { PG_KAFKA_RECORD_MARGIN = 512 };

/* Queues one output. `state` is set when the broker acknowledges or the
 * message fails for good; it must stay valid until its report is served
 * (pg_kafka_flush, pg_kafka_settle or pg_kafka_batch_finish). Returns
 * PG_OK, PG_RETRY,
 * PG_FATAL, or PG_INPUT when librdkafka refuses the record
 * as larger than message.max.bytes (nothing was queued; `state` stays
 * PENDING). A record within that limit but over the topic's is refused by
 * the broker instead, and reported through `state` as FAILED. */
int pg_kafka_produce(pg_kafka_t *k, pg_output_t out, const void *key, size_t key_len,
                     const void *value, size_t len, const pg_kafka_header_t *headers,
                     size_t n_headers, pg_delivery_state_t *state, char *errbuf,
                     size_t errlen);
/* Queues input m to the DLQ (PG_OUT_DLQ) with its key and bytes and the
 * headers pinguard-error ("REASON: detail"), pinguard-source-topic,
 * -partition and -offset, and logs it once (input_dead_lettered). An input
 * too large for the DLQ goes with its headers alone (INPUT_TOO_LARGE), its
 * key too when the key alone is too large, so that no input can be refused
 * by the DLQ and redone forever. As pg_kafka_produce, except that PG_INPUT
 * never comes back (PG_RETRY instead). */
int pg_kafka_dead_letter(pg_kafka_t *k, const pg_kafka_msg_t *m, const char *reason,
                         const char *detail, pg_delivery_state_t *state, char *errbuf,
                         size_t errlen);
/* Waits until every queued output has its delivery report. */
int pg_kafka_flush(pg_kafka_t *k, char *errbuf, size_t errlen);

/* One batch's delivery, the same for both modes: pg_kafka_batch_begin
 * opens it (exactly once, in the open transaction or a new one),
 * pg_kafka_batch_track(k, i) gives the delivery state for input i's one
 * output (pass it to pg_kafka_produce; it belongs to the kafka module; NULL
 * past the batch), and pg_kafka_batch_finish ends it: exactly once, adds the
 * batch's input offsets to the transaction and commits it (or, while a
 * backlog drains, leaves it open for up to four full batches or
 * delivery.transaction.max.ms; pg_kafka_settle, a rebalance, a pause and
 * destroy commit what it holds) or, when `failed` outputs failed, aborts it
 * and rewinds; at least once, stores the offsets of the inputs answered so far
 * (per partition, never past a failed input, which is rewound to). Every
 * tracked input is told to the settled
 * callback exactly once, in order, whichever the mode: at the commit or
 * abort, or when its offset is stored or given up. *end says whether inputs
 * will be consumed again: REWOUND (a partition, at least once) or ABORTED
 * (the whole batch). begin: PG_OK, or PG_FATAL (no room: call
 * pg_kafka_settle first; or the producer cannot go on); finish: PG_OK,
 * PG_RETRY (a store failed: the inputs come again after a rebalance) or
 * PG_FATAL. msgs must stay valid until finish returns. */
typedef enum {
    PG_KAFKA_BATCH_DONE = 0,
    PG_KAFKA_BATCH_REWOUND,
    PG_KAFKA_BATCH_ABORTED
} pg_kafka_batch_end_t;
int pg_kafka_batch_begin(pg_kafka_t *k, const pg_kafka_msg_t *msgs, size_t n,
                         char *errbuf, size_t errlen);
pg_delivery_state_t *pg_kafka_batch_track(pg_kafka_t *k, size_t i);
int pg_kafka_batch_finish(pg_kafka_t *k, size_t failed, pg_kafka_batch_end_t *end,
                          char *errbuf, size_t errlen);
/* At least once: with room 0, serves the delivery reports and settles what
 * they answered; with room > 0, makes room to track that many inputs,
 * waiting for every report when fewer could be tracked now (so that a settle
 * between reading and producing a batch cannot rewind a partition under it).
 * Exactly once: commits the open transaction with room 0 (the loop is idle),
 * or when room more inputs would not fit in it or it is old enough.
 * *rewound: a partition was rewound to a failed input (exactly once: the
 * commit failed and the transaction's inputs will be consumed again). */
int pg_kafka_settle(pg_kafka_t *k, size_t room, bool *rewound, char *errbuf,
                    size_t errlen);
/* The most inputs tracked at once: the length of the settled callback's
 * backlog. */
size_t pg_kafka_tracked_max(const pg_kafka_t *k);

/* Told of every tracked input exactly once, in the order they were tracked,
 * when it is settled: exactly once, when its transaction ends (committed:
 * it committed), in pg_kafka_batch_finish, pg_kafka_settle, pg_kafka_pause,
 * the revoke or pg_kafka_destroy; at least once, when its offset is stored, by the
 * revoke of its partition (inside pg_kafka_poll_batch or pg_kafka_idle,
 * which serve the rebalance) or by pg_kafka_destroy (so ctx must stay valid
 * until destroy returns). At least once, committed is true when the input's
 * offset was stored for commit: its output was acknowledged
 * (PG_DELIVERY_OK), no input of its partition at or before it failed (which
 * rewinds the partition there, so it and what follows are consumed again)
 * and the store was accepted (it is not when the partition was revoked
 * meanwhile: its new owner does it again). Inputs still unanswered when
 * destroy gives up (a fatal state) are told false. The callback must not
 * call back into the kafka module. One callback; NULL clears it. */
typedef void (*pg_kafka_settled_fn)(void *ctx, bool committed);
void pg_kafka_set_settled_cb(pg_kafka_t *k, pg_kafka_settled_fn fn, void *ctx);

/* Offsets and lag of the partitions this consumer owns (all = false), or of
 * every partition of the input topics (all = true). Safe to call from another
 * thread than the one polling. *rows is malloc'd; the caller frees it. */
int pg_kafka_lag(pg_kafka_t *k, bool all, pg_lag_row_t **rows, size_t *n, char *errbuf,
                 size_t errlen);
/* Safe to call from any thread. */
void pg_kafka_group_stats(const pg_kafka_t *k, pg_metrics_group_t *out);

/* The high watermark of every partition of the first input topic now, by
 * partition id, into ends[0..max): *n is the partition count. A snapshot to
 * tell later when the consumer has caught up with it. PG_OK or PG_RETRY. */
int pg_kafka_end_offsets(pg_kafka_t *k, int64_t *ends, size_t max, size_t *n,
                         char *errbuf, size_t errlen);
/* Whether every partition of the first input topic that this consumer reads
 * now has been consumed up to ends[p] (its position, the next offset to
 * fetch, at or past it; transaction markers count as consumed). False
 * before the first assignment; partitions past n count as reached. The
 * caller has decided every message it polled. PG_OK or PG_RETRY. */
int pg_kafka_reached(pg_kafka_t *k, const int64_t *ends, size_t n, bool *reached,
                     char *errbuf, size_t errlen);

/* A plain producer for the CLI (`pinguard publish`, the audit trail): any
 * topic, idempotent, no consumer. */
typedef struct pg_kafka_publisher pg_kafka_publisher_t;
/* NULL with errbuf filled. The config must outlive the publisher. */
pg_kafka_publisher_t *pg_kafka_publisher_new(const pg_config_t *cfg, char *errbuf,
                                             size_t errlen);
/* Queues one record; value NULL is a tombstone. The first record for a topic
 * checks that the topic exists (a metadata request of at most 5 s): PG_INPUT
 * naming it when it does not. PG_OK, PG_RETRY (no broker answered), PG_INPUT
 * or PG_FATAL. */
int pg_kafka_publish(pg_kafka_publisher_t *p, const char *topic, const void *key,
                     size_t key_len, const void *value, size_t len, char *errbuf,
                     size_t errlen);
/* Waits at most timeout_ms for every queued record's acknowledgement.
 * *acked and *failed (either may be NULL) count the records since the
 * publisher was made. PG_OK when all were acknowledged, else PG_RETRY with
 * errbuf naming the first failure (or the timeout). */
int pg_kafka_publisher_flush(pg_kafka_publisher_t *p, int timeout_ms, size_t *acked,
                             size_t *failed, char *errbuf, size_t errlen);
void pg_kafka_publisher_destroy(pg_kafka_publisher_t *p); /* NULL-safe; flushes 5 s */

/* One record handed over by pg_kafka_read_topic; its bytes are valid during
 * the call only. */
typedef struct {
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* -1 when the broker gave none */
    const void *key;      /* NULL when the record has none */
    size_t key_len;
    const uint8_t *value; /* NULL for a tombstone */
    size_t len;
} pg_kafka_record_t;
/* Returns 0 to go on; anything else stops the read, which returns it. */
typedef int (*pg_kafka_record_fn)(void *ctx, const pg_kafka_record_t *rec);

/* Reads a topic back for the CLI (`pinguard audit`): every partition from
 * the first record stamped at or after since_ms (offsets_for_times; a
 * partition with none is skipped) up to the end offsets read at the start,
 * read_committed (records of aborted transactions are never handed over;
 * a transaction still open is read up to where it starts), without
 * joining or committing to any group. fn sees each partition's records in
 * order, the partitions interleaved. Gives up after timeout_ms. PG_OK;
 * PG_INPUT when the topic does not exist; PG_RETRY when no broker answered,
 * the read failed or timed out (errbuf says which); PG_FATAL for a client
 * that cannot be made or fatal client states; fn's own non-zero answer. */
int pg_kafka_read_topic(const pg_config_t *cfg, const char *topic, int64_t since_ms,
                        int timeout_ms, pg_kafka_record_fn fn, void *ctx, char *errbuf,
                        size_t errlen);

#endif

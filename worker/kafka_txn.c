/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Exactly-once delivery in the kafka module: the transactional producer's
 * initialisation (fencing older instances), and per transaction begin,
 * commit with its inputs' offsets, or abort and rewind the consumer to its
 * inputs' first offsets (the flow of librdkafka's examples/transactions.c).
 * A transaction holds one batch or, while a backlog drains, several (when
 * to end it is pg_kafka_batch_finish's and pg_kafka_settle's choice in
 * kafka.c).
 */
#include "kafka_internal.h"

#include "log.h"
#include "util.h"

#include <string.h>

/* Fences any older producer with the same transactional.id and aborts what it
 * left open. Called in short slices (the call resumes after a retriable
 * timeout) with the producer's error callback served between them: a wrong
 * SASL password shows up there as _AUTHENTICATION within a second, while a
 * single call would only time out after 60 s with no word of the cause; and
 * a stop request is seen between two slices. */
int pg_kafka_txn_init(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    int64_t deadline = pg_now_mono_ms() + 60000;
    for (;;) {
        if (pg_kafka_stopping(k)) {
            pg_errf(errbuf, errlen, "stopped while initialising transactions");
            return PG_RETRY;
        }
        int64_t left = deadline - pg_now_mono_ms();
        int slice = left > 500 ? 500 : left > 1 ? (int)left : 1;
        rd_kafka_error_t *e = rd_kafka_init_transactions(k->producer, slice);
        if (e == NULL)
            return 0;
        bool retry = rd_kafka_error_is_retriable(e);
        pg_errf(errbuf, errlen, "kafka init_transactions: %s",
                rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        rd_kafka_poll(k->producer, 0); /* runs on_error, which may set k->fatal */
        if (pg_kafka_check_fatal(k, errbuf, errlen) != 0 || !retry ||
            pg_now_mono_ms() >= deadline)
            return PG_FATAL;
    }
}

bool pg_kafka_transactional(const pg_kafka_t *k)
{
    return k->transactional;
}

int pg_kafka_txn_begin(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    if (k->txn_open)
        return 0;
    if (k->txn_first == NULL)
        k->txn_first = rd_kafka_topic_partition_list_new(16);
    if (k->txn_next == NULL)
        k->txn_next = rd_kafka_topic_partition_list_new(16);
    rd_kafka_error_t *e = rd_kafka_begin_transaction(k->producer);
    if (e == NULL) {
        k->txn_open = true;
        k->txn_began_ms = pg_now_mono_ms();
        return 0;
    }
    pg_errf(errbuf, errlen, "kafka begin_transaction: %s", rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
    return PG_FATAL; /* only a fatal or a state error can fail begin */
}

void pg_kafka_txn_add(pg_kafka_t *k, const pg_kafka_msg_t *msgs, size_t n)
{
    /* Batches come in consumption order: a partition's first offset is that
     * of the first batch naming it, its next one from the last. */
    for (size_t i = 0; i < n; i++) {
        const pg_kafka_msg_t *m = &msgs[i];
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(k->txn_next, m->topic, m->partition);
        if (p == NULL) {
            p = rd_kafka_topic_partition_list_add(k->txn_next, m->topic, m->partition);
            rd_kafka_topic_partition_list_add(k->txn_first, m->topic, m->partition)
                ->offset = m->offset;
        }
        if (m->offset + 1 > p->offset)
            p->offset = m->offset + 1;
    }
    k->txn_inputs += n;
}

void pg_kafka_txn_free(pg_kafka_t *k)
{
    if (k->txn_first != NULL)
        rd_kafka_topic_partition_list_destroy(k->txn_first);
    if (k->txn_next != NULL)
        rd_kafka_topic_partition_list_destroy(k->txn_next);
    k->txn_first = k->txn_next = NULL;
}

/* Puts each partition of the aborted transaction back at its first offset
 * in it, so that what the transaction consumed is consumed again. That is
 * the committed offset (the transaction before was committed, or aborted
 * and rewound the same way), known here without asking the coordinator:
 * right after an abort, until its markers are written, OffsetFetch answers
 * UNSTABLE_OFFSET_COMMIT for those very partitions, and librdkafka 2.0.2's
 * rd_kafka_committed retries that twice and then returns the partition with
 * offset -1001 and a per-partition error, which read as "nothing committed"
 * replays the partition from its beginning. A partition no longer assigned
 * (__STATE) restarts from the committed offset when it is assigned again.
 * Any other seek failure leaves a position past undecided inputs: PG_FATAL.
 * The inputs of the batch being finished are in the lists too: an abort
 * adds them first (pg_kafka_batch_finish). */
static int rewind_txn(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    if (k->txn_first == NULL || k->txn_first->cnt == 0)
        return 0;
    return pg_kafka_seek_to(k, k->txn_first, errbuf, errlen) != 0 ? PG_FATAL : 0;
}

static int txn_abort(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    for (;;) {
        rd_kafka_error_t *e = rd_kafka_abort_transaction(k->producer, 60000);
        if (e == NULL)
            break;
        bool retry = rd_kafka_error_is_retriable(e);
        pg_errf(errbuf, errlen, "kafka abort_transaction: %s",
                rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        if (!retry)
            return PG_FATAL;
    }
    /* Counted here, whoever asked for the abort: txn_error or the worker
     * after an output failed. */
    atomic_fetch_add(&k->aborts, 1);
    int rc = rewind_txn(k, errbuf, errlen);
    return rc != 0 ? rc : PG_RETRY;
}

/* Classifies a transactional API error: retry the call, abort the
 * transaction, or give up on the process. */
static int txn_error(pg_kafka_t *k, rd_kafka_error_t *e, const char *what, bool *retry,
                     char *errbuf, size_t errlen)
{
    pg_errf(errbuf, errlen, "kafka %s: %s", what, rd_kafka_error_string(e));
    *retry = rd_kafka_error_is_retriable(e);
    bool abortable = rd_kafka_error_txn_requires_abort(e);
    bool fatal = rd_kafka_error_is_fatal(e);
    rd_kafka_error_destroy(e);
    if (*retry)
        return 0;
    if (fatal || !abortable)
        return PG_FATAL;
    pg_log_warn("transaction_aborted", "error", errbuf, NULL);
    char aerr[512];
    int rc = txn_abort(k, aerr, sizeof(aerr));
    if (rc == PG_FATAL)
        pg_errf(errbuf, errlen, "%s", aerr);
    return rc;
}

/* Every input of the transaction was answered inside it (a decision or a
 * dead letter): its partitions' next offsets commit with the outputs. */
static int txn_commit(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    int rc = 0;
    bool retry = true;
    while (rc == 0 && retry && k->txn_next->cnt > 0) {
        rd_kafka_consumer_group_metadata_t *cgmd =
            rd_kafka_consumer_group_metadata(k->consumer);
        rd_kafka_error_t *e =
            rd_kafka_send_offsets_to_transaction(k->producer, k->txn_next, cgmd, 60000);
        rd_kafka_consumer_group_metadata_destroy(cgmd);
        retry = false;
        if (e != NULL)
            rc = txn_error(k, e, "send_offsets_to_transaction", &retry, errbuf, errlen);
    }
    retry = true;
    while (rc == 0 && retry) {
        rd_kafka_error_t *e = rd_kafka_commit_transaction(k->producer, 60000);
        retry = false;
        if (e != NULL)
            rc = txn_error(k, e, "commit_transaction", &retry, errbuf, errlen);
    }
    return rc;
}

int pg_kafka_txn_end(pg_kafka_t *k, bool abort, char *errbuf, size_t errlen)
{
    if (!k->txn_open)
        return PG_OK;
    /* A batch begun and not finished has outputs in the transaction and no
     * offsets: committing would decide its inputs twice. */
    if (k->batch != NULL)
        abort = true;
    int rc = abort ? txn_abort(k, errbuf, errlen) : txn_commit(k, errbuf, errlen);
    k->txn_open = false;
    /* PG_FATAL: the process ends, with its inputs unsettled (and nothing
     * for destroy to commit). */
    for (size_t i = 0; rc != PG_FATAL && k->settled_fn != NULL && i < k->txn_inputs;
         i++)
        k->settled_fn(k->settled_ctx, rc == PG_OK);
    k->txn_inputs = 0;
    pg_kafka_txn_free(k); /* the next begin makes new lists */
    return rc;
}

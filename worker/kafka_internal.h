/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the files of the kafka module share (kafka.c: the clients, polling
 * and producing; kafka_conf.c: the client configurations; kafka_txn.c: the
 * exactly-once transactions; kafka_lag.c: offsets and lag; kafka_ring.c:
 * the at-least-once settle ring). Not for other modules.
 */
#ifndef PG_KAFKA_INTERNAL_H
#define PG_KAFKA_INTERNAL_H

#include "kafka.h"
#include "kafka_ring.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>

enum { TRACKED_PARTITIONS = 1024, TXN_MAX_BATCHES = 4 };

struct pg_kafka {
    const pg_config_t *cfg;
    pg_kafka_role_t role;
    size_t n_in;                 /* in_topics in use */
    bool out_used[PG_OUT_COUNT]; /* outputs this role produces to */
    volatile sig_atomic_t *stop; /* NULL: never asked to stop */
    pg_kafka_settled_fn settled_fn;
    void *settled_ctx;
    size_t out_max[PG_OUT_COUNT]; /* see pg_kafka_output_max_bytes */
    size_t msg_max, batch_max;    /* the producer's, from its configuration */
    bool subscribed; /* the outputs were checked, see start_consuming in kafka.c */
    pg_kafka_ring_t pending; /* at least once: the inputs in flight */
    /* The batch between pg_kafka_batch_begin and pg_kafka_batch_finish; in
     * exactly-once mode its outputs' delivery states (the commit answers
     * for them all), batch_cap of them. */
    const pg_kafka_msg_t *batch;
    size_t batch_n, batch_cap;
    pg_delivery_state_t *txn_states;
    /* Exactly once: the transaction, which stays open across full batches
     * while a backlog drains (see pg_kafka_batch_finish): per partition the
     * first offset of its inputs (where an abort rewinds to) and the next
     * (what the commit sends); how many inputs it holds, at most txn_cap;
     * when it began. */
    bool txn_open;
    rd_kafka_topic_partition_list_t *txn_first, *txn_next;
    size_t txn_inputs, txn_cap;
    int64_t txn_began_ms;
    bool backlog; /* the last batch polled was full: more is waiting */
    rd_kafka_t *consumer;
    rd_kafka_t *producer;
    rd_kafka_topic_t *out[PG_OUT_COUNT];
    const char *in_topics[PG_IN_COUNT];
    uint64_t generation;
    /* Read by the metrics thread. */
    _Atomic bool joined;
    _Atomic unsigned long long rebalances, assigned, aborts, fetch_wakeups;
    /* From the statistics callback: requests by type, [consumer, producer]. */
    _Atomic bool stats;
    _Atomic unsigned long long requests[2][PG_M_KAFKA_REQ_TYPES];
    /* Offset of the last input handed to the worker, per input topic and
     * partition (up to TRACKED_PARTITIONS), for the lag rows; -1 none. */
    _Atomic int64_t consumed[PG_IN_COUNT][TRACKED_PARTITIONS];
    int64_t next_wakeup_ms; /* earliest time of the next fetcher wake-up */
    /* The fetcher wake-ups' own thread (see wake_fetcher in kafka.c): the
     * main loop hands it a list under waker_lock and never waits on it. */
    pthread_t waker;
    pthread_mutex_t waker_lock;
    /* Under waker_lock, and apart from the main loop's flags below, whose
     * neighbours the compiler may read in one load. */
    rd_kafka_topic_partition_list_t *waker_parts; /* handed over, not yet sent */
    bool waker_busy, waker_stop;
    pthread_cond_t waker_cond;
    bool waker_started;
    bool caught_up; /* the last check saw no lag: poll without slicing */
    bool transactional;
    bool paused;
    bool quiet; /* building confs for pg_kafka_check_config: no logs */
    bool fatal;
    char fatal_reason[768];
};

/* kafka_conf.c: one client's configuration (pinguard's defaults, the
 * operator's passthrough properties, the settings correctness depends on,
 * the callbacks); NULL with errbuf filled. */
rd_kafka_conf_t *pg_kafka_conf_make(pg_kafka_t *k, bool consumer, char *errbuf,
                                    size_t errlen);
/* A size property of a configuration not yet handed to rd_kafka_new. */
size_t pg_kafka_conf_size(const rd_kafka_conf_t *conf, const char *key, size_t dflt);

/* kafka_conf.c: the throwaway group of a rebuild (never committed to). */
void pg_kafka_rebuild_group(char *buf, size_t len);
/* kafka_lag.c: the partitions of the input topics, from a metadata request. */
int pg_kafka_input_partitions(pg_kafka_t *k, rd_kafka_topic_partition_list_t **out,
                              char *errbuf, size_t errlen);

/* kafka.c: installs the module's callbacks (log, error, rebalance or
 * delivery report) with k as their opaque. */
void pg_kafka_conf_callbacks(pg_kafka_t *k, rd_kafka_conf_t *conf, bool consumer);
/* PG_FATAL with errbuf filled once either client is in a state it
 * cannot leave, else 0. */
int pg_kafka_check_fatal(pg_kafka_t *k, char *errbuf, size_t errlen);
/* Whether a stop was requested. */
bool pg_kafka_stopping(const pg_kafka_t *k);
/* Seeks the consumer to parts' offsets. 0 or PG_RETRY. */
int pg_kafka_seek_to(pg_kafka_t *k, rd_kafka_topic_partition_list_t *parts,
                     char *errbuf, size_t errlen);
/* The pg_input_t of an input topic's name, or -1. */
int pg_kafka_input_of(const pg_kafka_t *k, const char *topic);
/* Marks every consumed offset unknown. */
void pg_kafka_init_consumed(pg_kafka_t *k);

/* kafka.c, at least once. */
/* Outputs are acknowledged in the background. Each input gets
 * a tracking slot, in consumption order, whose state its one output's
 * delivery report sets (pass it to pg_kafka_produce); NULL when the
 * pg_kafka_pending_room() slots are taken. The slot belongs to the kafka
 * module. */
size_t pg_kafka_pending_room(const pg_kafka_t *k);
pg_delivery_state_t *pg_kafka_pending_add(pg_kafka_t *k, const pg_kafka_msg_t *m);
/* Serves delivery reports (all of them when wait) and settles the inputs
 * answered so far: per partition, the offset after the last acknowledged
 * input is stored (auto-commit sends it), never past a failed one, and the
 * partition is rewound to the failed input so it is consumed again;
 * *rewound (may be NULL) is set to whether a partition was. Returns PG_OK,
 * PG_RETRY or PG_FATAL. */
int pg_kafka_pending_settle(pg_kafka_t *k, bool wait, bool *rewound, char *errbuf,
                            size_t errlen);

/* kafka_txn.c: exactly once. */
/* Exactly-once mode (delivery = exactly-once). Outputs are produced inside
 * a transaction, opened by pg_kafka_txn_begin when none is; pg_kafka_txn_add
 * counts a batch's inputs into it; pg_kafka_txn_end commits the inputs'
 * offsets with the outputs atomically (abort = false) or aborts. Either way
 * every input it held is told to the settled callback, in order. An
 * abortable failure aborts the transaction, rewinds the consumer to its
 * inputs' first offsets and returns PG_RETRY; a fatal one returns PG_FATAL.
 * Every transaction aborted counts once in pg_kafka_group_stats'
 * transaction_aborts. pg_kafka_txn_free releases the offset lists. */
bool pg_kafka_transactional(const pg_kafka_t *k);
int pg_kafka_txn_begin(pg_kafka_t *k, char *errbuf, size_t errlen);
void pg_kafka_txn_add(pg_kafka_t *k, const pg_kafka_msg_t *msgs, size_t n);
int pg_kafka_txn_end(pg_kafka_t *k, bool abort, char *errbuf, size_t errlen);
void pg_kafka_txn_free(pg_kafka_t *k);

/* kafka_txn.c: fences older producers with the same transactional.id.
 * PG_OK, PG_RETRY when stopped meanwhile, or PG_FATAL with errbuf filled. */
int pg_kafka_txn_init(pg_kafka_t *k, char *errbuf, size_t errlen);

#endif

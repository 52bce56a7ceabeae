/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The loop of `pinguard sync`:
 *   poll a batch of the feed -> decode and check every record -> apply the
 *   valid ones to Redis in one pipelined pass (bindings) -> dead-letter the
 *   rest -> finish the batch (at least once: the offsets are stored only
 *   now, after Redis confirmed every apply of the batch).
 * Applying is idempotent (only a greater generation replaces an entry), so a
 * batch redone after a crash or a rebalance changes nothing it already
 * changed. When Redis cannot answer, the batch is held, the partitions are
 * paused and the apply is retried with capped backoff; nothing is committed
 * meanwhile. A rebalance while holding drops the batch.
 * Caught up: every partition consumed up to the high watermark read at
 * start. Until then /readyz says so; a rebuild (`--rebuild`: every partition
 * from the beginning, no group, no commits) ends there, showing its progress
 * on the way.
 */
#include "sync.h"

#include "bindings.h"
#include "codec.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Partitions of the feed followed for catching up and progress. */
enum { MAX_PARTITIONS = 1024 };

typedef struct {
    int rc;           /* 0, or the pg_codec_err_t that sends it to the DLQ */
    char detail[256]; /* why, for the pinguard-error header */
    pg_record_t rec;
    bool tombstone;
} slot_t;

typedef struct {
    const pg_config_t *cfg;
    const pg_sync_opts_t *opts;
    volatile sig_atomic_t *stop;
    pg_codec_t *codec;
    pg_bindings_t *bindings;
    pg_bindings_t *probe; /* the metrics refresher's own Redis connection */
    pg_kafka_t *kafka;
    pg_metrics_t *metrics;
    pg_arena_t *arena;
    pg_kafka_msg_t *msgs;
    slot_t *slots;
    pg_apply_t *apply;
    pg_apply_result_t *results;
    pg_codec_limits_t limits;
    pg_bindings_limits_t blim;
    /* The high watermarks read at start, and how far each partition has
     * been consumed (the offset after its last record), for catching up. */
    int64_t ends[MAX_PARTITIONS], done[MAX_PARTITIONS];
    size_t n_ends;
    bool caught_up;
    unsigned long long counts[PG_M_FEED_RESULTS], dead_lettered;
    int64_t started_ms, last_progress_ms;
    bool stopped; /* a stop request came while a batch was held */
} sync_t;

enum { HOLD_OK = 0, HOLD_DROPPED = 1, HOLD_STOPPED = 2, HOLD_FATAL = -1 };

static int next_backoff(const pg_config_t *cfg, int current)
{
    if (current == 0)
        return cfg->retry_backoff_min_ms;
    return current > cfg->retry_backoff_max_ms / 2 ? cfg->retry_backoff_max_ms
                                                   : current * 2;
}

/* Decodes and checks message i: a tombstone (no value) deletes the VM its
 * key names; any other value must be a VmBindings record the cache layout
 * can hold, keyed by its own VM. */
static void decode_one(sync_t *s, size_t i)
{
    const pg_kafka_msg_t *m = &s->msgs[i];
    slot_t *sl = &s->slots[i];
    memset(sl, 0, sizeof(*sl));
    sl->tombstone = m->payload == NULL;
    pg_bytes_t key = {m->key, m->key != NULL ? m->key_len : 0};
    if (!sl->tombstone) {
        sl->rc = pg_codec_decode(s->codec, m->payload, m->len, &s->limits, s->arena,
                                 &sl->rec, sl->detail, sizeof(sl->detail));
        if (sl->rc == 0 && sl->rec.type != PG_REC_VM_BINDINGS) {
            sl->rc = PG_CODEC_ETYPE;
            snprintf(sl->detail, sizeof(sl->detail), "a %s on the binding feed",
                     pg_record_type_name(sl->rec.type));
        }
        if (sl->rc != 0)
            return;
    }
    if (pg_bindings_check_feed(&s->blim, key,
                               sl->tombstone ? NULL : &sl->rec.u.vm_bindings,
                               sl->detail, sizeof(sl->detail)) != PG_OK)
        sl->rc = PG_CODEC_EFIELD;
}

/* Applies the batch's valid records, holding the batch while Redis cannot
 * answer. */
static int apply_holding(sync_t *s, size_t n_apply, size_t n_msgs, char *errbuf,
                         size_t errlen)
{
    uint64_t gen = pg_kafka_generation(s->kafka);
    int backoff = s->cfg->retry_backoff_min_ms;
    int64_t last_log = 0;
    unsigned long long attempts = 0;
    bool paused = false;
    for (;;) {
        char err[512];
        int64_t t0 = pg_now_mono_us();
        int rc = pg_bindings_apply(s->bindings, s->apply, n_apply, s->results, err,
                                   sizeof(err));
        pg_metrics_redis_exchange(s->metrics, (double)(pg_now_mono_us() - t0) / 1e6,
                                  rc == PG_OK);
        if (rc == PG_OK) {
            if (paused && pg_kafka_resume(s->kafka) != PG_OK)
                return HOLD_DROPPED; /* resuming failed: redo from the group */
            return HOLD_OK;
        }
        if (rc == PG_FATAL || rc == PG_INPUT) {
            /* PG_INPUT: a record the check above let through and the apply
             * refuses; retrying would never end. */
            pg_errf(errbuf, errlen, "%s", err);
            return HOLD_FATAL;
        }
        attempts++;
        for (size_t i = 0; i < n_msgs; i++)
            pg_metrics_input(s->metrics, 0, PG_M_IN_RETRIED, 1);
        if (pg_now_mono_ms() - last_log >= 10000) {
            pg_log_warn("redis_unavailable", "error", err, "#attempts",
                        (long long)attempts, "#retry_in_ms", (long long)backoff, NULL);
            last_log = pg_now_mono_ms();
        }
        if (!paused)
            paused = pg_kafka_pause(s->kafka) == PG_OK;
        int64_t until = pg_now_mono_ms() + backoff;
        while (pg_now_mono_ms() < until) {
            int64_t left = until - pg_now_mono_ms();
            if (pg_kafka_idle(s->kafka, left < 100 ? (int)left : 100, errbuf, errlen) ==
                PG_FATAL)
                return HOLD_FATAL;
            pg_metrics_tick(s->metrics);
            if (pg_kafka_generation(s->kafka) != gen)
                return HOLD_DROPPED;
            if (*s->stop)
                return HOLD_STOPPED;
        }
        backoff = next_backoff(s->cfg, backoff);
    }
}

/* One batch: decode, apply, dead-letter, finish. PG_OK or PG_FATAL. */
static int process_batch(sync_t *s, size_t n, char *errbuf, size_t errlen)
{
    size_t n_apply = 0;
    for (size_t i = 0; i < n; i++) {
        decode_one(s, i);
        if (s->slots[i].rc != 0)
            continue;
        const pg_kafka_msg_t *m = &s->msgs[i];
        s->apply[n_apply++] = (pg_apply_t){
            .vm = {m->key, m->key_len},
            .rec = s->slots[i].tombstone ? NULL : &s->slots[i].rec.u.vm_bindings};
    }
    if (n_apply > 0) {
        int hold = apply_holding(s, n_apply, n, errbuf, errlen);
        if (hold == HOLD_FATAL)
            return PG_FATAL;
        if (hold == HOLD_STOPPED) {
            s->stopped = true;
            return PG_OK;
        }
        if (hold == HOLD_DROPPED) {
            pg_log_info("batch_dropped", "why", "rebalance while waiting for redis",
                        "#messages", (long long)n, NULL);
            return PG_OK;
        }
    }
    /* Redis confirmed every apply: the records are done; only the dead
     * letters still wait for the broker. */
    if (pg_kafka_batch_begin(s->kafka, s->msgs, n, errbuf, errlen) != PG_OK)
        return PG_FATAL;
    size_t failed = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        const pg_kafka_msg_t *m = &s->msgs[i];
        pg_delivery_state_t *state = pg_kafka_batch_track(s->kafka, i);
        if (state == NULL) {
            pg_errf(errbuf, errlen, "no room to track record %zu of %zu", i, n);
            return PG_FATAL;
        }
        if (s->slots[i].rc == 0) {
            pg_apply_result_t r = s->results[k++];
            s->counts[r]++;
            pg_metrics_feed_records(s->metrics, (int)r, 1);
            pg_metrics_input(s->metrics, 0, PG_M_IN_DECIDED, 1);
            *state = PG_DELIVERY_OK;
        } else {
            const char *reason = pg_codec_err_name(s->slots[i].rc);
            s->dead_lettered++;
            pg_metrics_feed_dead_letter(s->metrics, reason);
            pg_metrics_input(s->metrics, 0, PG_M_IN_DLQ, 1);
            int rc = pg_kafka_dead_letter(s->kafka, m, reason, s->slots[i].detail,
                                          state, errbuf, errlen);
            if (rc == PG_FATAL)
                return PG_FATAL;
            if (rc != PG_OK) {
                failed++;
                *state = PG_DELIVERY_FAILED;
            }
        }
        if (m->partition >= 0 && m->partition < MAX_PARTITIONS &&
            m->offset + 1 > s->done[m->partition])
            s->done[m->partition] = m->offset + 1;
    }
    pg_kafka_batch_end_t end;
    int rc = pg_kafka_batch_finish(s->kafka, failed, &end, errbuf, errlen);
    if (rc == PG_FATAL)
        return PG_FATAL;
    if (rc != PG_OK)
        pg_log_warn("settle_failed", "error", errbuf, NULL);
    if (end != PG_KAFKA_BATCH_DONE)
        pg_metrics_batch_redone(s->metrics);
    return PG_OK;
}

/* ---- Progress ----------------------------------------------------------- */

static void progress_figures(const sync_t *s, long long *done, long long *total)
{
    *done = *total = 0;
    for (size_t p = 0; p < s->n_ends; p++) {
        *total += s->ends[p];
        *done += s->done[p] < s->ends[p] ? s->done[p] : s->ends[p];
    }
}

static unsigned long long records_seen(const sync_t *s)
{
    unsigned long long n = s->dead_lettered;
    for (int r = 0; r < PG_M_FEED_RESULTS; r++)
        n += s->counts[r];
    return n;
}

/* A rebuild's progress: a bar redrawn on a terminal, a line every five
 * seconds otherwise; both on stderr. */
static void show_progress(sync_t *s, bool final)
{
    int64_t now = pg_now_mono_ms();
    int every = s->opts->progress ? 200 : 5000;
    if (!s->opts->rebuild || (!final && now - s->last_progress_ms < every))
        return;
    s->last_progress_ms = now;
    long long done, total;
    progress_figures(s, &done, &total);
    double secs = (double)(now - s->started_ms) / 1000.0;
    double rate = secs > 0 ? (double)records_seen(s) / secs : 0;
    int pct = total > 0 ? (int)(100 * done / total) : 100;
    if (s->opts->progress) {
        char bar[41];
        int fill = pct * 40 / 100;
        for (int i = 0; i < 40; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[40] = '\0';
        fprintf(stderr, "\rrebuild [%s] %3d%% %lld/%lld offsets, %.0f records/s", bar,
                pct, done, total, rate);
        if (final)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "rebuild: %lld/%lld offsets (%d%%), %.0f records/s\n", done,
                total, pct, rate);
    }
    fflush(stderr);
}

/* Reads the high watermarks to catch up with, retrying until a broker
 * answers. PG_OK, or PG_RETRY when stopped meanwhile. */
static int read_ends(sync_t *s, char *errbuf, size_t errlen)
{
    int64_t last_log = 0;
    while (!*s->stop) {
        if (pg_kafka_end_offsets(s->kafka, s->ends, MAX_PARTITIONS, &s->n_ends, errbuf,
                                 errlen) == PG_OK)
            return PG_OK;
        if (pg_now_mono_ms() - last_log >= 10000) {
            pg_log_warn("feed_offsets_unknown", "error", errbuf, "then", "retrying",
                        NULL);
            last_log = pg_now_mono_ms();
        }
        pg_kafka_idle(s->kafka, 500, errbuf, errlen);
        pg_metrics_tick(s->metrics);
    }
    return PG_RETRY;
}

static void check_caught_up(sync_t *s)
{
    if (s->caught_up)
        return;
    char err[256];
    bool reached = false;
    if (pg_kafka_reached(s->kafka, s->ends, s->n_ends, &reached, err, sizeof(err)) !=
            PG_OK ||
        !reached)
        return;
    s->caught_up = true;
    pg_metrics_feed_caught_up(s->metrics, true);
    long long done, total;
    progress_figures(s, &done, &total);
    pg_log_info("feed_caught_up", "#partitions", (long long)s->n_ends, "#offsets",
                total, "#applied", (long long)s->counts[PG_APPLY_APPLIED], "#ms",
                (long long)(pg_now_mono_ms() - s->started_ms), NULL);
}

/* ---- Metrics sources ----------------------------------------------------- */

static int scrape_lag(void *ctx, pg_lag_row_t **rows, size_t *n, char *errbuf,
                      size_t errlen)
{
    sync_t *s = ctx;
    return pg_kafka_lag(s->kafka, false, rows, n, errbuf, errlen);
}

static void scrape_group(void *ctx, pg_metrics_group_t *out)
{
    sync_t *s = ctx;
    pg_kafka_group_stats(s->kafka, out);
}

static bool scrape_redis(void *ctx)
{
    sync_t *s = ctx;
    char err[256];
    return pg_bindings_ping(s->probe, err, sizeof(err)) == 0;
}

static int start_metrics(sync_t *s, const pg_bindings_opts_t *bopts, char *errbuf,
                         size_t errlen)
{
    s->metrics =
        pg_metrics_new_feed(s->cfg->topic_bindings, s->cfg->health_stall_timeout_ms,
                            s->cfg->health_partition_stall_ms);
    pg_bindings_opts_t popts = *bopts;
    popts.quiet_failover = true; /* the lookup connection logs it */
    popts.view = false;
    s->probe = pg_bindings_new(&popts);
    if (s->metrics == NULL || s->probe == NULL) {
        pg_errf(errbuf, errlen, "out of memory starting the metrics");
        return PG_FATAL;
    }
    pg_metrics_set_sources(s->metrics, s->opts->rebuild ? NULL : scrape_lag,
                           scrape_group, scrape_redis, s);
    const char *listen = s->cfg->sync_metrics_listen;
    if (s->opts->rebuild || listen[0] == '\0')
        return PG_OK; /* a rebuild is a command, not a service */
    if (pg_metrics_serve(s->metrics, listen, errbuf, errlen) != 0)
        return PG_FATAL;
    pg_log_info("metrics_listening", "listen", listen, "#port",
                (long long)pg_metrics_port(s->metrics), NULL);
    return PG_OK;
}

static void sync_teardown(sync_t *s)
{
    /* As the worker's: the metrics threads read the Kafka client and the
     * probe, so they stop first. */
    pg_metrics_destroy(s->metrics);
    pg_bindings_destroy(s->probe);
    pg_kafka_destroy(s->kafka);
    pg_bindings_destroy(s->bindings);
    pg_codec_destroy(s->codec);
    pg_arena_destroy(s->arena);
    free(s->msgs);
    free(s->slots);
    free(s->apply);
    free(s->results);
}

int pg_sync_run(const pg_config_t *cfg, const pg_sync_opts_t *opts,
                volatile sig_atomic_t *stop, char *errbuf, size_t errlen)
{
    int rc = PG_FATAL;
    size_t max = (size_t)cfg->batch_max_messages;
    sync_t s = {
        .cfg = cfg,
        .opts = opts,
        .stop = stop,
        .limits = {.max_string = (size_t)cfg->max_string_length,
                   .max_items = (size_t)cfg->redis_max_devices_per_vm},
        .blim = pg_bindings_limits(cfg),
        .started_ms = pg_now_mono_ms(),
    };
    pg_bindings_opts_t bopts = pg_bindings_opts(cfg);
    bopts.view = false; /* the feed writes; only the worker's lookups keep a view */
    s.msgs = calloc(max, sizeof(*s.msgs));
    s.slots = calloc(max, sizeof(*s.slots));
    s.apply = calloc(max, sizeof(*s.apply));
    s.results = calloc(max, sizeof(*s.results));
    s.arena = pg_arena_new(1 << 20);
    s.bindings = pg_bindings_new(&bopts);
    if (s.msgs == NULL || s.slots == NULL || s.apply == NULL || s.results == NULL ||
        s.arena == NULL || s.bindings == NULL) {
        pg_errf(errbuf, errlen, "out of memory starting sync");
        goto out;
    }
    if ((s.codec = pg_codec_new(errbuf, errlen)) == NULL)
        goto out;
    char perr[512];
    if (pg_bindings_ping(s.bindings, perr, sizeof(perr)) == PG_FATAL) {
        pg_errf(errbuf, errlen, "%s", perr);
        goto out;
    }
    s.kafka = pg_kafka_new_role(cfg, opts->rebuild ? PG_KAFKA_REBUILD : PG_KAFKA_SYNC,
                                stop, errbuf, errlen);
    if (s.kafka == NULL) {
        if (*stop) {
            pg_log_info("sync_stopping", "why", errbuf, NULL);
            rc = PG_OK;
        }
        goto out;
    }
    if (start_metrics(&s, &bopts, errbuf, errlen) != PG_OK)
        goto out;
    if (read_ends(&s, errbuf, errlen) != PG_OK) {
        rc = PG_OK; /* stopped while waiting for a broker */
        goto out;
    }
    pg_log_info("sync_started", "mode", opts->rebuild ? "rebuild" : "live", "topic",
                cfg->topic_bindings, "group",
                opts->rebuild ? "(none)" : cfg->sync_group_id, "#partitions",
                (long long)s.n_ends, NULL);

    while (!*stop) {
        pg_metrics_tick(s.metrics);
        bool rewound = false;
        if (pg_kafka_settle(s.kafka, max, &rewound, errbuf, errlen) == PG_FATAL)
            goto out;
        int n = pg_kafka_poll_batch(s.kafka, s.msgs, max, (size_t)cfg->batch_max_bytes,
                                    100, cfg->batch_max_wait_ms, errbuf, errlen);
        if (n < 0)
            goto out;
        if (n > 0) {
            int brc = process_batch(&s, (size_t)n, errbuf, errlen);
            pg_metrics_batch(s.metrics);
            pg_metrics_redis_failovers(s.metrics, pg_bindings_failovers(s.bindings));
            pg_kafka_batch_release(s.msgs, (size_t)n);
            pg_arena_reset(s.arena);
            if (brc != PG_OK)
                goto out;
            if (s.stopped)
                break;
        } else if (pg_kafka_settle(s.kafka, 0, &rewound, errbuf, errlen) == PG_FATAL) {
            goto out;
        }
        check_caught_up(&s);
        show_progress(&s, false);
        if (opts->rebuild && s.caught_up)
            break;
    }
    rc = PG_OK;
    if (opts->rebuild && !s.caught_up) {
        /* Stopped part-way: the cache holds part of the feed. */
        pg_errf(errbuf, errlen, "rebuild stopped before catching up (%llu records)",
                records_seen(&s));
        rc = PG_RETRY;
    } else if (opts->rebuild) {
        show_progress(&s, true);
        printf("rebuild: applied %llu records (%llu stale, %llu tombstones, %llu dead "
               "letters) from %zu partitions in %.1f s\n",
               s.counts[PG_APPLY_APPLIED], s.counts[PG_APPLY_STALE],
               s.counts[PG_APPLY_DELETED] + s.counts[PG_APPLY_ABSENT], s.dead_lettered,
               s.n_ends, (double)(pg_now_mono_ms() - s.started_ms) / 1000.0);
        fflush(stdout);
    }
    pg_log_info("sync_stopping", "#applied", (long long)s.counts[PG_APPLY_APPLIED],
                "#stale", (long long)s.counts[PG_APPLY_STALE], "#deleted",
                (long long)s.counts[PG_APPLY_DELETED], "#dead_lettered",
                (long long)s.dead_lettered, NULL);
out:
    sync_teardown(&s);
    return rc;
}

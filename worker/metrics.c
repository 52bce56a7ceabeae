/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The metrics registry and its HTTP face. Every counter is fixed in shape
 * (topics, streams, reasons are small enums), so the registry is a struct of
 * arrays of relaxed atomics: recording costs one add and no lock, rendering
 * walks the arrays. What costs a network round trip (the consumer lag, a
 * Redis PING) is fetched by two refresher threads of the registry's, each
 * once a period, into snapshots under the lock; the HTTP handlers only read
 * them. The lag and the Redis probe have a thread each because a lag read
 * against an unreachable broker blocks for its timeouts (tens of seconds),
 * and Redis must not look down meanwhile. The stall net (a partition with
 * lag whose committed offset does not move) is kept as clocks updated from
 * consecutive lag snapshots and judged at request time.
 */
#include "metrics.h"

#include "log.h"
#include "util.h"

#include <microhttpd.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#ifndef PINGUARD_VERSION
#define PINGUARD_VERSION "unknown"
#endif

static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                 0.05,   0.1,   0.25,   0.5,   1,    2.5};
#define N_BUCKETS (sizeof(buckets) / sizeof(buckets[0]))
#define N_REASONS PG_M_REASONS
_Static_assert(N_REASONS >= PG_VETO_REASONS + 1 && N_REASONS >= PG_RELEASE_REASONS + 1,
               "PG_M_REASONS holds \"none\" and every veto and release reason");

static const char *const outcome_names[] = {"decided", "dlq", "retried"};

const char *const pg_metrics_kafka_requests[PG_M_KAFKA_REQ_TYPES] = {
    "Produce",
    "Fetch",
    "ListOffsets",
    "Metadata",
    "OffsetCommit",
    "OffsetFetch",
    "FindCoordinator",
    "JoinGroup",
    "Heartbeat",
    "LeaveGroup",
    "SyncGroup",
    "InitProducerId",
    "AddPartitionsToTxn",
    "AddOffsetsToTxn",
    "EndTxn",
    "TxnOffsetCommit",
    "DescribeConfigs",
    "ApiVersion",
};
static const char *const stream_names[] = {"advice", "migrate", "release"};

/* What the worker records. Relaxed atomics: the worker adds on its hot path
 * without a lock; a scrape may see one counter a step ahead of another. */
typedef _Atomic unsigned long long counter_t;
typedef struct {
    counter_t inputs[PG_IN_COUNT][PG_M_IN_OUTCOMES];
    counter_t decisions[PG_M_STREAMS][2][N_REASONS];
    counter_t redis_round_trips, redis_errors, unknown_kinds, batches;
    counter_t batches_redone, cache_invalid;
    counter_t feed[PG_M_FEED_RESULTS];
    counter_t quarantines_started, quarantines_lifted;
    counter_t redis_failovers;
    counter_t view_hits, view_misses, view_invalidations, view_rereads, view_flushes;
    counter_t view_barriers, view_vms, view_live;
    _Atomic bool caught_up;
    counter_t redis_hist[N_BUCKETS + 1];
    counter_t redis_sum_ns;
    /* The worker's last exchange with Redis: when (ms) * 2 + whether it
     * succeeded, in one word so that a reader sees both of the same one. */
    _Atomic int64_t redis_seen;
    _Atomic int64_t last_tick_ms;
} values_t;

#define ADD(c, n) atomic_fetch_add_explicit(&(c), (n), memory_order_relaxed)
#define GET(c) atomic_load_explicit(&(c), memory_order_relaxed)

enum { FEED_DLQ_REASONS = 24 };

struct pg_metrics {
    pthread_mutex_t lock; /* guards the sources, the snapshots and the flags */
    char *topics[PG_IN_COUNT];
    int n_topics;
    bool feed; /* `pinguard sync`'s registry */
    /* Dead letters of the feed by reason; rare, so under the lock. */
    const char *dlq_reasons[FEED_DLQ_REASONS];
    unsigned long long dlq_counts[FEED_DLQ_REASONS];
    int stall_timeout_ms;
    int partition_stall_ms;
    values_t v;
    pg_metrics_lag_fn lag;
    pg_metrics_group_fn group;
    pg_metrics_redis_fn redis;
    void *ctx;
    struct MHD_Daemon *daemon;

    /* Lag snapshot: the rows of the last successful read and when it began
     * (INT64_MIN: none yet), whether the last attempt failed, and attempt
     * sequence numbers, so that a scrape can wait for an attempt begun after
     * it arrived. */
    pg_lag_row_t *lag_rows;
    size_t n_lag_rows;
    int64_t lag_ok_ms;
    bool lag_failed;
    unsigned long long lag_started, lag_done;
    bool lag_wanted;          /* a scrape waits: refresh now */
    pg_metrics_stall_t stall; /* written by the lag refresher only */
    pg_metrics_redis_obs_t probe;

    bool stopping;
    pthread_cond_t lag_wake, lag_fresh, redis_wake; /* on CLOCK_MONOTONIC */
    pthread_t lag_thread, redis_thread;
    bool threads; /* both started */
};

static int64_t pack_seen(bool ok, int64_t at_ms)
{
    return at_ms * 2 + (ok ? 1 : 0);
}

static pg_metrics_t *metrics_new(const char *const *input_topics, int n_topics,
                                 int stall_timeout_ms, int partition_stall_ms)
{
    pg_metrics_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->lag_wake, &ca);
    pthread_cond_init(&m->lag_fresh, &ca);
    pthread_cond_init(&m->redis_wake, &ca);
    pthread_condattr_destroy(&ca);
    m->lag_ok_ms = INT64_MIN;
    m->probe = (pg_metrics_redis_obs_t){.ok = false, .at_ms = INT64_MIN};
    m->n_topics = n_topics;
    for (int i = 0; i < n_topics; i++) {
        m->topics[i] = strdup(input_topics[i]);
        if (m->topics[i] == NULL) {
            pg_metrics_destroy(m);
            return NULL;
        }
    }
    m->stall_timeout_ms = stall_timeout_ms;
    m->partition_stall_ms = partition_stall_ms;
    atomic_init(&m->v.last_tick_ms, pg_now_mono_ms());
    /* Until the worker's first exchange, Redis counts as answering: the
     * worker checked it before starting. */
    atomic_init(&m->v.redis_seen, pack_seen(true, pg_now_mono_ms()));
    return m;
}

pg_metrics_t *pg_metrics_new(const char *const input_topics[PG_IN_COUNT],
                             int stall_timeout_ms, int partition_stall_ms)
{
    return metrics_new(input_topics, PG_IN_COUNT, stall_timeout_ms, partition_stall_ms);
}

pg_metrics_t *pg_metrics_new_feed(const char *feed_topic, int stall_timeout_ms,
                                  int partition_stall_ms)
{
    const char *topics[1] = {feed_topic};
    pg_metrics_t *m = metrics_new(topics, 1, stall_timeout_ms, partition_stall_ms);
    if (m != NULL)
        m->feed = true;
    return m;
}

void pg_metrics_feed_records(pg_metrics_t *m, int result, unsigned long long n)
{
    if (m != NULL && result >= 0 && result < PG_M_FEED_RESULTS)
        ADD(m->v.feed[result], n);
}

void pg_metrics_feed_dead_letter(pg_metrics_t *m, const char *reason)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    size_t i = 0;
    while (i < FEED_DLQ_REASONS && m->dlq_reasons[i] != NULL &&
           strcmp(m->dlq_reasons[i], reason) != 0)
        i++;
    if (i == FEED_DLQ_REASONS)
        i--; /* more reasons than there are: counted under the last */
    if (m->dlq_reasons[i] == NULL)
        m->dlq_reasons[i] = reason;
    m->dlq_counts[i]++;
    pthread_mutex_unlock(&m->lock);
}

void pg_metrics_feed_caught_up(pg_metrics_t *m, bool caught_up)
{
    if (m != NULL)
        atomic_store(&m->v.caught_up, caught_up);
}

static void stop_threads(pg_metrics_t *m)
{
    pthread_mutex_lock(&m->lock);
    m->stopping = true;
    pthread_cond_broadcast(&m->lag_wake);
    pthread_cond_broadcast(&m->lag_fresh);
    pthread_cond_broadcast(&m->redis_wake);
    bool threads = m->threads;
    m->threads = false;
    pthread_mutex_unlock(&m->lock);
    if (threads) {
        pthread_join(m->lag_thread, NULL);
        pthread_join(m->redis_thread, NULL);
    }
}

void pg_metrics_destroy(pg_metrics_t *m)
{
    if (m == NULL)
        return;
    /* Scrapes waiting for a fresh snapshot are woken first, so that stopping
     * the server (which joins the connection threads) is quick; then the
     * refresher threads, the only other users of the callbacks, are joined. */
    pthread_mutex_lock(&m->lock);
    m->stopping = true;
    pthread_cond_broadcast(&m->lag_fresh);
    pthread_mutex_unlock(&m->lock);
    if (m->daemon != NULL)
        MHD_stop_daemon(m->daemon);
    stop_threads(m);
    for (int i = 0; i < m->n_topics; i++)
        free(m->topics[i]);
    free(m->lag_rows);
    pg_metrics_stall_free(&m->stall);
    pthread_cond_destroy(&m->lag_wake);
    pthread_cond_destroy(&m->lag_fresh);
    pthread_cond_destroy(&m->redis_wake);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void pg_metrics_set_sources(pg_metrics_t *m, pg_metrics_lag_fn lag,
                            pg_metrics_group_fn group, pg_metrics_redis_fn redis,
                            void *ctx)
{
    pthread_mutex_lock(&m->lock);
    m->lag = lag;
    m->group = group;
    m->redis = redis;
    m->ctx = ctx;
    pthread_mutex_unlock(&m->lock);
}

void pg_metrics_input(pg_metrics_t *m, int input, pg_metrics_outcome_t outcome,
                      unsigned long long n)
{
    if (m == NULL || input < 0 || input >= PG_IN_COUNT)
        return;
    ADD(m->v.inputs[input][outcome], n);
}

void pg_metrics_decision(pg_metrics_t *m, pg_metrics_stream_t stream, int verdict,
                         int reason)
{
    if (m == NULL || verdict < 0 || verdict > 1 || reason < -1 ||
        reason >= N_REASONS - 1)
        return;
    ADD(m->v.decisions[stream][verdict][reason + 1], 1);
}

void pg_metrics_tally_init(pg_metrics_tally_t *t, int input,
                           pg_metrics_outcome_t outcome)
{
    memset(t, 0, sizeof(*t));
    t->input = (uint8_t)input;
    t->outcome = (uint8_t)outcome;
}

void pg_metrics_tally_decision(pg_metrics_tally_t *t, int verdict, int reason)
{
    if (verdict < 0 || verdict > 1 || reason < -1 || reason >= N_REASONS - 1)
        return;
    t->verdicts[verdict][reason + 1]++;
}

void pg_metrics_commit(pg_metrics_t *m, const pg_metrics_tally_t *t)
{
    if (m == NULL || t->input >= PG_IN_COUNT || t->outcome >= PG_M_IN_OUTCOMES)
        return;
    ADD(m->v.inputs[t->input][t->outcome], 1);
    if (t->unknown_kinds > 0)
        ADD(m->v.unknown_kinds, t->unknown_kinds);
    if (t->quarantine == 1)
        ADD(m->v.quarantines_started, 1);
    else if (t->quarantine == 2)
        ADD(m->v.quarantines_lifted, 1);
    for (int v = 0; v < 2; v++)
        for (int r = 0; r < N_REASONS; r++)
            if (t->verdicts[v][r] > 0)
                ADD(m->v.decisions[t->input][v][r], t->verdicts[v][r]);
}

void pg_metrics_redis_failovers(pg_metrics_t *m, unsigned long long total)
{
    if (m != NULL)
        atomic_store_explicit(&m->v.redis_failovers, total, memory_order_relaxed);
}

void pg_metrics_redis_view(pg_metrics_t *m, const pg_view_stats_t *v)
{
    if (m == NULL)
        return;
    atomic_store_explicit(&m->v.view_hits, v->hits, memory_order_relaxed);
    atomic_store_explicit(&m->v.view_misses, v->misses, memory_order_relaxed);
    atomic_store_explicit(&m->v.view_invalidations, v->invalidations,
                          memory_order_relaxed);
    atomic_store_explicit(&m->v.view_rereads, v->rereads, memory_order_relaxed);
    atomic_store_explicit(&m->v.view_flushes, v->flushes, memory_order_relaxed);
    atomic_store_explicit(&m->v.view_barriers, v->barriers, memory_order_relaxed);
    atomic_store_explicit(&m->v.view_vms, v->vms, memory_order_relaxed);
    atomic_store_explicit(&m->v.view_live, v->live, memory_order_relaxed);
}

void pg_metrics_batch_redone(pg_metrics_t *m)
{
    if (m != NULL)
        ADD(m->v.batches_redone, 1);
}

void pg_metrics_cache_invalid(pg_metrics_t *m, unsigned long long n)
{
    if (m != NULL && n > 0)
        ADD(m->v.cache_invalid, n);
}

void pg_metrics_redis_exchange(pg_metrics_t *m, double seconds, bool ok)
{
    if (m == NULL)
        return;
    size_t b = 0;
    while (b < N_BUCKETS && seconds > buckets[b])
        b++;
    ADD(m->v.redis_round_trips, 1);
    if (!ok)
        ADD(m->v.redis_errors, 1);
    atomic_store_explicit(&m->v.redis_seen, pack_seen(ok, pg_now_mono_ms()),
                          memory_order_relaxed);
    ADD(m->v.redis_hist[b], 1);
    ADD(m->v.redis_sum_ns, (unsigned long long)(seconds * 1e9));
}

void pg_metrics_batch(pg_metrics_t *m)
{
    if (m == NULL)
        return;
    ADD(m->v.batches, 1);
}

void pg_metrics_tick(pg_metrics_t *m)
{
    if (m == NULL)
        return;
    atomic_store_explicit(&m->v.last_tick_ms, pg_now_mono_ms(), memory_order_relaxed);
}

/* --- Snapshots ------------------------------------------------------------ */

static const pg_metrics_clock_t *find_clock(const pg_metrics_stall_t *s,
                                            const pg_lag_row_t *r, size_t *hint)
{
    /* The rows come sorted the same way every time: start where the last
     * match left off, so that a whole update is linear. */
    for (size_t k = 0; k < s->n; k++) {
        size_t j = (*hint + k) % s->n;
        const pg_metrics_clock_t *c = &s->parts[j];
        if (c->partition == r->partition && strcmp(c->topic, r->topic) == 0) {
            *hint = j + 1;
            return c;
        }
    }
    return NULL;
}

/* Whether a partition's lag is only records nobody has to decide: every
 * input consumed is committed and the consumer's position is at the high
 * watermark. Transactional producers end each transaction with a marker
 * that is never handed to the worker, so such a partition shows lag (1 per
 * trailing marker, more after an aborted transaction) with nothing to do;
 * without this it would read as stalled. */
static bool idle_tail(const pg_lag_row_t *r)
{
    int64_t committed = r->committed >= 0 ? r->committed : r->low;
    return r->position >= 0 && r->position >= r->high && committed > r->consumed;
}

int pg_metrics_stall_update(pg_metrics_stall_t *s, const pg_lag_row_t *rows, size_t n,
                            int64_t now_ms)
{
    pg_metrics_clock_t *parts = calloc(n > 0 ? n : 1, sizeof(*parts));
    if (parts == NULL)
        return PG_FATAL;
    size_t hint = 0;
    for (size_t i = 0; i < n; i++) {
        const pg_lag_row_t *r = &rows[i];
        const pg_metrics_clock_t *prev = find_clock(s, r, &hint);
        pg_metrics_clock_t *c = &parts[i];
        snprintf(c->topic, sizeof(c->topic), "%s", r->topic);
        c->partition = r->partition;
        c->committed = r->committed;
        c->lag = idle_tail(r) ? 0 : r->lag;
        bool restart =
            prev == NULL || prev->committed != r->committed || prev->lag <= 0;
        c->since_ms = restart ? now_ms : prev->since_ms;
    }
    free(s->parts);
    s->parts = parts;
    s->n = n;
    return 0;
}

size_t pg_metrics_stall_count(const pg_metrics_stall_t *s, int64_t now_ms, int stall_ms,
                              const pg_metrics_clock_t **worst)
{
    size_t count = 0;
    const pg_metrics_clock_t *w = NULL;
    for (size_t i = 0; i < s->n; i++) {
        const pg_metrics_clock_t *c = &s->parts[i];
        if (c->lag <= 0 || now_ms - c->since_ms < stall_ms)
            continue;
        count++;
        if (w == NULL || c->since_ms < w->since_ms)
            w = c;
    }
    if (worst != NULL)
        *worst = w;
    return count;
}

void pg_metrics_stall_free(pg_metrics_stall_t *s)
{
    if (s == NULL)
        return;
    free(s->parts);
    s->parts = NULL;
    s->n = 0;
}

bool pg_metrics_redis_verdict(pg_metrics_redis_obs_t probe, pg_metrics_redis_obs_t seen,
                              int64_t now_ms, int64_t *age_ms)
{
    /* Of two words from the same millisecond, a failure wins. */
    pg_metrics_redis_obs_t o = probe.at_ms > seen.at_ms ? probe : seen;
    if (probe.at_ms == seen.at_ms)
        o.ok = probe.ok && seen.ok;
    if (o.at_ms == INT64_MIN) {
        if (age_ms != NULL)
            *age_ms = -1;
        return false;
    }
    int64_t age = now_ms > o.at_ms ? now_ms - o.at_ms : 0;
    if (age_ms != NULL)
        *age_ms = age;
    return o.ok && age <= PG_METRICS_REDIS_STALE_MS;
}

static pg_metrics_redis_obs_t seen_obs(pg_metrics_t *m)
{
    int64_t v = atomic_load_explicit(&m->v.redis_seen, memory_order_relaxed);
    return (pg_metrics_redis_obs_t){.ok = (v & 1) != 0, .at_ms = v / 2};
}

/* Whether Redis answers as of now. Without a probe installed, the worker's
 * last exchange alone decides, however old. */
static bool redis_answers(pg_metrics_t *m, int64_t now, int64_t *age_ms)
{
    pthread_mutex_lock(&m->lock);
    bool probed = m->redis != NULL;
    pg_metrics_redis_obs_t probe = m->probe;
    pthread_mutex_unlock(&m->lock);
    pg_metrics_redis_obs_t seen = seen_obs(m);
    if (!probed) {
        if (age_ms != NULL)
            *age_ms = -1;
        return seen.ok;
    }
    return pg_metrics_redis_verdict(probe, seen, now, age_ms);
}

static void refresh_lag(pg_metrics_t *m)
{
    pthread_mutex_lock(&m->lock);
    pg_metrics_lag_fn lag = m->lag;
    void *ctx = m->ctx;
    unsigned long long seq = ++m->lag_started;
    pthread_mutex_unlock(&m->lock);

    int64_t start = pg_now_mono_ms();
    pg_lag_row_t *rows = NULL;
    size_t n = 0;
    char err[256] = "no lag source";
    int rc = lag != NULL ? lag(ctx, &rows, &n, err, sizeof(err)) : -1;

    pthread_mutex_lock(&m->lock);
    bool was_failed = m->lag_failed;
    if (rc == 0 && pg_metrics_stall_update(&m->stall, rows, n, start) != 0) {
        snprintf(err, sizeof(err), "out of memory");
        free(rows);
        rc = -1;
    } else if (rc == 0) {
        free(m->lag_rows);
        m->lag_rows = rows;
        m->n_lag_rows = n;
        m->lag_ok_ms = start;
    }
    /* A failed read keeps the last rows and clocks: a partition that had
     * lag then goes on stalling, as nothing can be committed meanwhile. */
    m->lag_failed = rc != 0;
    m->lag_done = seq;
    pthread_cond_broadcast(&m->lag_fresh);
    pthread_mutex_unlock(&m->lock);
    /* Once per outage, not once a second. */
    if (rc != 0 && !was_failed && lag != NULL)
        pg_log_warn("lag_scrape_failed", "error", err, NULL);
    else if (rc == 0 && was_failed)
        pg_log_info("lag_scrape_recovered", NULL);
}

static void refresh_redis(pg_metrics_t *m)
{
    pthread_mutex_lock(&m->lock);
    pg_metrics_redis_fn redis = m->redis;
    void *ctx = m->ctx;
    pthread_mutex_unlock(&m->lock);
    if (redis == NULL)
        return;
    bool ok = redis(ctx);
    /* When it answered (or gave up), like the worker's own exchanges. */
    int64_t at = pg_now_mono_ms();
    pthread_mutex_lock(&m->lock);
    m->probe = (pg_metrics_redis_obs_t){.ok = ok, .at_ms = at};
    pthread_mutex_unlock(&m->lock);
}

void pg_metrics_refresh(pg_metrics_t *m)
{
    refresh_lag(m);
    refresh_redis(m);
}

/* pthread_cond_timedwait to a CLOCK_MONOTONIC deadline in ms. */
static int wait_until_ms(pthread_cond_t *c, pthread_mutex_t *l, int64_t deadline_ms)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_ms / 1000),
                          .tv_nsec = (long)(deadline_ms % 1000) * 1000000L};
    return pthread_cond_timedwait(c, l, &ts);
}

static void *lag_main(void *arg)
{
    pg_metrics_t *m = arg;
    for (;;) {
        refresh_lag(m);
        int64_t next = pg_now_mono_ms() + PG_METRICS_REFRESH_MS;
        pthread_mutex_lock(&m->lock);
        while (!m->stopping && !m->lag_wanted)
            if (wait_until_ms(&m->lag_wake, &m->lock, next) == ETIMEDOUT)
                break;
        m->lag_wanted = false;
        bool stop = m->stopping;
        pthread_mutex_unlock(&m->lock);
        if (stop)
            return NULL;
    }
}

static void *redis_main(void *arg)
{
    pg_metrics_t *m = arg;
    for (;;) {
        refresh_redis(m);
        int64_t next = pg_now_mono_ms() + PG_METRICS_REFRESH_MS;
        pthread_mutex_lock(&m->lock);
        while (!m->stopping)
            if (wait_until_ms(&m->redis_wake, &m->lock, next) == ETIMEDOUT)
                break;
        bool stop = m->stopping;
        pthread_mutex_unlock(&m->lock);
        if (stop)
            return NULL;
    }
}

static int start_threads(pg_metrics_t *m, char *errbuf, size_t errlen)
{
    if (pthread_create(&m->lag_thread, NULL, lag_main, m) != 0) {
        pg_errf(errbuf, errlen, "metrics: cannot start the lag refresher thread");
        return PG_FATAL;
    }
    if (pthread_create(&m->redis_thread, NULL, redis_main, m) != 0) {
        pthread_mutex_lock(&m->lock);
        m->stopping = true;
        pthread_cond_broadcast(&m->lag_wake);
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->lag_thread, NULL);
        pg_errf(errbuf, errlen, "metrics: cannot start the Redis refresher thread");
        return PG_FATAL;
    }
    pthread_mutex_lock(&m->lock);
    m->threads = true;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* A scrape asks for a lag read begun after it arrived and waits for it, up
 * to PG_METRICS_FRESH_WAIT_MS, on its own connection thread; then it renders
 * whatever the last snapshot holds (with its age). */
static void await_fresh_lag(pg_metrics_t *m)
{
    pthread_mutex_lock(&m->lock);
    if (m->threads && !m->stopping) {
        unsigned long long want = m->lag_started + 1;
        m->lag_wanted = true;
        pthread_cond_signal(&m->lag_wake);
        int64_t deadline = pg_now_mono_ms() + PG_METRICS_FRESH_WAIT_MS;
        while (!m->stopping && m->lag_done < want)
            if (wait_until_ms(&m->lag_fresh, &m->lock, deadline) == ETIMEDOUT)
                break;
    }
    pthread_mutex_unlock(&m->lock);
}

__attribute__((format(printf, 2, 3))) static int put(pg_buf_t *b, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    return pg_buf_append(b, line,
                         (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void head(pg_buf_t *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Topic names are Kafka-legal ([a-zA-Z0-9._-]) and need no label escaping. */
static void render_lag(pg_metrics_t *m, pg_buf_t *b, int64_t now)
{
    /* A copy of the snapshot, so that formatting holds no lock. */
    pthread_mutex_lock(&m->lock);
    size_t n = m->n_lag_rows;
    pg_lag_row_t *rows = n > 0 ? malloc(n * sizeof(*rows)) : NULL;
    if (rows != NULL)
        memcpy(rows, m->lag_rows, n * sizeof(*rows));
    int64_t ok_ms = m->lag_ok_ms;
    bool failed = m->lag_failed || ok_ms == INT64_MIN || (n > 0 && rows == NULL);
    size_t stalled =
        pg_metrics_stall_count(&m->stall, now, m->partition_stall_ms, NULL);
    pthread_mutex_unlock(&m->lock);

    head(b, "pinguard_lag_scrape_error", "gauge",
         "1 when the last attempt to read the consumer lag failed (the lag figures "
         "are those of the last successful read).");
    put(b, "pinguard_lag_scrape_error %d\n", failed ? 1 : 0);
    head(b, "pinguard_lag_snapshot_age_seconds", "gauge",
         "Age of the lag figures: seconds since their read began (-1: none yet).");
    put(b, "pinguard_lag_snapshot_age_seconds %.3f\n",
        ok_ms == INT64_MIN ? -1.0 : (double)(now - ok_ms) / 1000.0);
    head(b, "pinguard_stalled_partitions", "gauge",
         "Assigned partitions with lag whose committed offset has not moved for "
         "health.stall.ms (/readyz fails while any is).");
    put(b, "pinguard_stalled_partitions %zu\n", stalled);
    if (ok_ms == INT64_MIN || (n > 0 && rows == NULL))
        return; /* no figures to show */

    head(b, "pinguard_consumer_lag_messages", "gauge",
         "Messages of a partition not yet committed by the group (high watermark - "
         "committed offset).");
    for (size_t i = 0; i < n; i++)
        put(b, "pinguard_consumer_lag_messages{topic=\"%s\",partition=\"%d\"} %lld\n",
            rows[i].topic, (int)rows[i].partition, (long long)rows[i].lag);
    head(b, "pinguard_topic_consumer_lag_messages", "gauge",
         "Sum of the consumer lag over the partitions this worker owns, per topic.");
    for (int t = 0; t < m->n_topics; t++) {
        long long sum = 0;
        for (size_t i = 0; i < n; i++)
            if (strcmp(rows[i].topic, m->topics[t]) == 0)
                sum += rows[i].lag;
        put(b, "pinguard_topic_consumer_lag_messages{topic=\"%s\"} %lld\n",
            m->topics[t], sum);
    }
    head(b, "pinguard_committed_offset", "gauge",
         "The group's committed offset of a partition (-1: none yet).");
    for (size_t i = 0; i < n; i++)
        put(b, "pinguard_committed_offset{topic=\"%s\",partition=\"%d\"} %lld\n",
            rows[i].topic, (int)rows[i].partition, (long long)rows[i].committed);
    head(b, "pinguard_high_watermark_offset", "gauge",
         "High watermark of a partition.");
    for (size_t i = 0; i < n; i++)
        put(b, "pinguard_high_watermark_offset{topic=\"%s\",partition=\"%d\"} %lld\n",
            rows[i].topic, (int)rows[i].partition, (long long)rows[i].high);
    free(rows);
}

static void render_feed(pg_metrics_t *m, pg_buf_t *b)
{
    static const char *const results[PG_M_FEED_RESULTS] = {"applied", "stale",
                                                           "deleted", "absent"};
    head(b, "pinguard_sync_records_total", "counter",
         "Feed records confirmed by Redis, by what applying them did: applied (a "
         "greater generation replaced the VM's entry), stale (an equal or lower "
         "generation, nothing changed), deleted (a tombstone removed an entry), "
         "absent (a tombstone for a VM the cache did not hold).");
    for (int r = 0; r < PG_M_FEED_RESULTS; r++)
        put(b, "pinguard_sync_records_total{result=\"%s\"} %llu\n", results[r],
            GET(m->v.feed[r]));
    head(b, "pinguard_sync_dead_letters_total", "counter",
         "Feed records sent to the DLQ, by reason.");
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < FEED_DLQ_REASONS && m->dlq_reasons[i] != NULL; i++)
        put(b, "pinguard_sync_dead_letters_total{reason=\"%s\"} %llu\n",
            m->dlq_reasons[i], m->dlq_counts[i]);
    pthread_mutex_unlock(&m->lock);
    head(b, "pinguard_sync_caught_up", "gauge",
         "1 once the feed is applied up to the high watermarks read at start.");
    put(b, "pinguard_sync_caught_up %d\n", atomic_load(&m->v.caught_up) ? 1 : 0);
}

int pg_metrics_render(pg_metrics_t *m, pg_buf_t *b)
{
    values_t *s = &m->v;
    int64_t now = pg_now_mono_ms();
    pthread_mutex_lock(&m->lock);
    pg_metrics_group_fn group = m->group;
    void *ctx = m->ctx;
    pthread_mutex_unlock(&m->lock);

    pg_metrics_group_t g = {0};
    if (group != NULL)
        group(ctx, &g); /* atomics of the Kafka client's: no network */
    bool redis_up = redis_answers(m, now, NULL);

    render_lag(m, b, now);

    head(b, "pinguard_inputs_total", "counter",
         "Input messages by topic and outcome (decided, dlq, retried).");
    for (int t = 0; t < m->n_topics; t++)
        for (int o = 0; o < PG_M_IN_OUTCOMES; o++)
            put(b, "pinguard_inputs_total{topic=\"%s\",outcome=\"%s\"} %llu\n",
                m->topics[t], outcome_names[o], GET(s->inputs[t][o]));

    if (m->feed)
        render_feed(m, b);
    else
        head(b, "pinguard_decisions_total", "counter",
             "Decisions produced, by stream, verdict (or release action) and reason.");
    for (int st = 0; st < PG_M_STREAMS && !m->feed; st++) {
        bool release = st == PG_M_STREAM_RELEASE;
        int nreasons = release ? PG_RELEASE_REASONS : PG_VETO_REASONS;
        for (int v = 0; v < 2; v++) {
            for (int r = -1; r < nreasons; r++) {
                /* Approvals carry no reason; vetoes, KEEP and RELEASE always one. */
                bool approval = !release && v == 0;
                if (approval != (r == -1))
                    continue;
                put(b,
                    "pinguard_decisions_total{stream=\"%s\",verdict=\"%s\",reason=\"%"
                    "s\"} "
                    "%llu\n",
                    stream_names[st],
                    release ? pg_release_action_name((pg_release_action_t)v)
                            : pg_verdict_name((pg_verdict_t)v),
                    r < 0     ? "none"
                    : release ? pg_release_reason_name((pg_release_reason_t)r)
                              : pg_veto_reason_name((pg_veto_reason_t)r),
                    GET(s->decisions[st][v][r + 1]));
            }
        }
    }
    if (!m->feed) {
        head(b, "pinguard_unknown_device_kinds_total", "counter",
             "Devices of a kind pinguard does not know, seen in decisions (they pin).");
        put(b, "pinguard_unknown_device_kinds_total %llu\n", GET(s->unknown_kinds));
    }

    if (!m->feed) {
        head(b, "pinguard_quarantines_started_total", "counter",
             "Quarantines started: a VM's FAILED results reached quarantine.failures "
             "within quarantine.window.ms (counted once committed; a replayed result "
             "repeats the audit event, not the count).");
        put(b, "pinguard_quarantines_started_total %llu\n",
            GET(s->quarantines_started));
        head(
            b, "pinguard_quarantines_lifted_total", "counter",
            "Quarantines lifted by a SUCCEEDED result (unquarantine and expiry are not "
            "counted here).");
        put(b, "pinguard_quarantines_lifted_total %llu\n", GET(s->quarantines_lifted));
    }
    head(b, "pinguard_cache_invalid_total", "counter",
         "VMs whose cache entry could not be read as the SPEC's layout says (a key "
         "of the wrong type, an empty or non-UTF-8 value, too many devices): each "
         "was decided as unknown.");
    put(b, "pinguard_cache_invalid_total %llu\n", GET(s->cache_invalid));
    head(b, "pinguard_batches_redone_total", "counter",
         "Batches, or parts of one, consumed again after an abort or a failed output.");
    put(b, "pinguard_batches_redone_total %llu\n", GET(s->batches_redone));

    head(b, "pinguard_batches_total", "counter",
         "Consumed batches processed (each costs at most one Redis round trip).");
    put(b, "pinguard_batches_total %llu\n", GET(s->batches));
    head(b, "pinguard_redis_round_trips_total", "counter",
         "Pipelined exchanges with the binding cache.");
    put(b, "pinguard_redis_round_trips_total %llu\n", GET(s->redis_round_trips));
    head(b, "pinguard_redis_errors_total", "counter",
         "Exchanges with the binding cache that failed.");
    put(b, "pinguard_redis_errors_total %llu\n", GET(s->redis_errors));
    head(b, "pinguard_redis_latency_seconds", "histogram",
         "Duration of one pipelined exchange with the binding cache.");
    unsigned long long cum = 0;
    for (size_t i = 0; i < N_BUCKETS; i++) {
        cum += GET(s->redis_hist[i]);
        put(b, "pinguard_redis_latency_seconds_bucket{le=\"%g\"} %llu\n", buckets[i],
            cum);
    }
    cum += GET(s->redis_hist[N_BUCKETS]);
    put(b, "pinguard_redis_latency_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
    put(b, "pinguard_redis_latency_seconds_sum %.6f\n",
        (double)GET(s->redis_sum_ns) / 1e9);
    put(b, "pinguard_redis_latency_seconds_count %llu\n", cum);
    head(b, "pinguard_redis_failovers_total", "counter",
         "Changes of the Redis primary's replication id seen on reconnecting (a "
         "Sentinel failover; writes the old primary had not replicated are lost).");
    put(b, "pinguard_redis_failovers_total %llu\n", GET(s->redis_failovers));
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } view[] = {
        {"pinguard_view_hits_total", "counter",
         "VMs of batches served from the binding view.", offsetof(values_t, view_hits)},
        {"pinguard_view_misses_total", "counter",
         "VMs read from Redis while the view was live (re-reads included).",
         offsetof(values_t, view_misses)},
        {"pinguard_view_invalidations_total", "counter",
         "View entries Redis said changed (dropped, read again when next needed).",
         offsetof(values_t, view_invalidations)},
        {"pinguard_view_barrier_rereads_total", "counter",
         "Of them, VMs of the batch being looked up: the barrier caught the change "
         "and they were read again.",
         offsetof(values_t, view_rereads)},
        {"pinguard_view_flushes_total", "counter",
         "Times the view was emptied (a connection lost or re-made, a flush in Redis).",
         offsetof(values_t, view_flushes)},
        {"pinguard_view_barriers_total", "counter", "Barriers passed.",
         offsetof(values_t, view_barriers)},
        {"pinguard_view_vms", "gauge", "VMs the view holds.",
         offsetof(values_t, view_vms)},
        {"pinguard_view_live", "gauge",
         "1 when the view is set up and kept true by Redis (0: every VM read "
         "directly).",
         offsetof(values_t, view_live)},
    };
    for (size_t i = 0; i < sizeof(view) / sizeof(view[0]); i++) {
        head(b, view[i].name, view[i].type, view[i].help);
        put(b, "%s %llu\n", view[i].name,
            GET(*(const counter_t *)((const char *)s + view[i].off)));
    }
    head(b, "pinguard_redis_up", "gauge", "1 when the binding cache answers.");
    put(b, "pinguard_redis_up %d\n", redis_up ? 1 : 0);

    head(b, "pinguard_rebalances_total", "counter", "Consumer group rebalances seen.");
    put(b, "pinguard_rebalances_total %llu\n", g.rebalances);
    head(b, "pinguard_assigned_partitions", "gauge",
         "Input partitions assigned to this worker.");
    put(b, "pinguard_assigned_partitions %llu\n", g.assigned_partitions);
    head(b, "pinguard_transaction_aborts_total", "counter",
         "Kafka transactions aborted (their batch is consumed again).");
    put(b, "pinguard_transaction_aborts_total %llu\n", g.transaction_aborts);
    head(b, "pinguard_fetch_wakeups_total", "counter",
         "Times the consumer's fetcher was woken while input was waiting.");
    put(b, "pinguard_fetch_wakeups_total %llu\n", g.fetch_wakeups);
    if (g.stats) {
        static const char *const clients[2] = {"consumer", "producer"};
        head(b, "pinguard_kafka_requests_total", "counter",
             "Requests this process's Kafka clients sent, by type, summed over the "
             "brokers (librdkafka statistics, every kafka.statistics.interval.ms).");
        for (int c = 0; c < 2; c++)
            for (int r = 0; r < PG_M_KAFKA_REQ_TYPES; r++)
                put(b,
                    "pinguard_kafka_requests_total{client=\"%s\",request=\"%s\"} "
                    "%llu\n",
                    clients[c], pg_metrics_kafka_requests[r], g.requests[c][r]);
    }
    head(b, "pinguard_build_info", "gauge", "Build information.");
    put(b, "pinguard_build_info{version=\"%s\"} 1\n", PINGUARD_VERSION);
    return 0;
}

static int health_at(pg_metrics_t *m, int64_t now, char *why, size_t whylen)
{
    int64_t age = now - atomic_load(&m->v.last_tick_ms);
    if (age > m->stall_timeout_ms) {
        snprintf(why, whylen, "loop stalled for %lld ms", (long long)age);
        return PG_RETRY;
    }
    snprintf(why, whylen, "ok");
    return 0;
}

int pg_metrics_health(pg_metrics_t *m, char *why, size_t whylen)
{
    return health_at(m, pg_now_mono_ms(), why, whylen);
}

int pg_metrics_ready(pg_metrics_t *m, char *why, size_t whylen)
{
    return pg_metrics_ready_at(m, pg_now_mono_ms(), why, whylen);
}

int pg_metrics_ready_at(pg_metrics_t *m, int64_t now, char *why, size_t whylen)
{
    if (health_at(m, now, why, whylen) != 0)
        return PG_RETRY;
    pthread_mutex_lock(&m->lock);
    pg_metrics_group_fn group = m->group;
    void *ctx = m->ctx;
    const pg_metrics_clock_t *w = NULL;
    size_t stalled = pg_metrics_stall_count(&m->stall, now, m->partition_stall_ms, &w);
    pg_metrics_clock_t worst = {0};
    if (w != NULL)
        worst = *w;
    pthread_mutex_unlock(&m->lock);
    pg_metrics_group_t g = {0};
    if (group != NULL)
        group(ctx, &g);
    if (!g.joined) {
        snprintf(why, whylen, "consumer group not joined");
        return PG_RETRY;
    }
    int64_t age;
    if (!redis_answers(m, now, &age)) {
        if (age > PG_METRICS_REDIS_STALE_MS)
            snprintf(why, whylen, "redis does not answer (no word from it for %lld ms)",
                     (long long)age);
        else
            snprintf(why, whylen, "redis does not answer");
        return PG_RETRY;
    }
    if (m->feed && !atomic_load(&m->v.caught_up)) {
        snprintf(why, whylen, "catching up with the feed");
        return PG_RETRY;
    }
    if (stalled > 0) {
        snprintf(why, whylen,
                 "partition stalled: %s/%d, committed offset %lld unmoved for %lld ms "
                 "with lag %lld (%zu stalled)",
                 worst.topic, (int)worst.partition, (long long)worst.committed,
                 (long long)(now - worst.since_ms), (long long)worst.lag, stalled);
        return PG_RETRY;
    }
    snprintf(why, whylen, "ok");
    return 0;
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status,
                               const char *type, const void *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;
    pg_metrics_t *m = cls;
    char why[256];
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", "GET only\n", 9);
    if (strcmp(url, "/metrics") == 0) {
        await_fresh_lag(m);
        pg_buf_t b = {0};
        pg_metrics_render(m, &b);
        enum MHD_Result r = respond(
            c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        pg_buf_free(&b);
        return r;
    }
    int rc;
    if (strcmp(url, "/healthz") == 0)
        rc = pg_metrics_health(m, why, sizeof(why));
    else if (strcmp(url, "/readyz") == 0)
        rc = pg_metrics_ready(m, why, sizeof(why));
    else
        return respond(c, MHD_HTTP_NOT_FOUND, "text/plain", "not found\n", 10);
    size_t n = strlen(why);
    why[n] = '\n';
    return respond(c, rc == 0 ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                   "text/plain", why, n + 1);
}

int pg_metrics_serve(pg_metrics_t *m, const char *listen, char *errbuf, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL || (size_t)(colon - listen) >= sizeof(host)) {
        pg_errf(errbuf, errlen, "metrics.listen '%s': expected host:port", listen);
        return PG_INPUT;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (*end != '\0' || port < 0 || port > 65535 ||
        inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        pg_errf(errbuf, errlen,
                "metrics.listen '%s': expected an IPv4 address and a port", listen);
        return PG_INPUT;
    }
    if (start_threads(m, errbuf, errlen) != 0)
        return PG_FATAL;
    /* A thread per connection: a scrape waiting for its lag snapshot, or a
     * client that sends half a request, holds only its own connection. The
     * limits bound the threads a flood of connections can start. */
    m->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL,
        (uint16_t)port, NULL, NULL, on_request, m, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)128, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)64, MHD_OPTION_END);
    if (m->daemon == NULL) {
        stop_threads(m);
        pg_errf(errbuf, errlen, "metrics.listen %s: cannot listen (address in use?)",
                listen);
        return PG_FATAL;
    }
    return 0;
}

int pg_metrics_port(const pg_metrics_t *m)
{
    if (m->daemon == NULL)
        return -1;
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(m->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info != NULL ? (int)info->port : -1;
}

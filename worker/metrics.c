/*
 * The metrics registry and its HTTP face. Every counter is fixed in shape
 * (topics, streams, reasons are small enums), so the registry is a struct of
 * arrays of relaxed atomics: recording costs one add and no lock, rendering
 * walks the arrays. Lag and readiness are computed at scrape time from
 * callbacks, so the figures are as fresh as the scrape.
 */
#include "metrics.h"

#include "log.h"

#include <microhttpd.h>
#include <arpa/inet.h>
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
#define N_REASONS 6 /* the largest reason enum (ReleaseReason has 5) + "none" */

static const char *const outcome_names[] = {"decided", "dlq", "retried"};
static const char *const stream_names[] = {"advice", "migrate", "release"};
static const char *const verdict_names[PG_M_STREAMS][2] = {
    {"APPROVED", "VETOED"}, {"APPROVED", "VETOED"}, {"RELEASE", "KEEP"}};
static const char *const veto_reasons[] = {"HOST_BOUND_DEVICE", "OPERATOR_PIN",
                                           "UNKNOWN_VM", "UNKNOWN_DEVICE_KIND"};
static const char *const release_reasons[] = {
    "CONFIRMED_ON_DESTINATION", "NO_DESTINATION", "STILL_ON_SOURCE",
    "PLACEMENT_UNCONFIRMED", "PLACEMENT_CONFLICT"};

/* What the worker records. Relaxed atomics: the worker adds on its hot path
 * without a lock; a scrape may see one counter a step ahead of another. */
typedef _Atomic unsigned long long counter_t;
typedef struct {
    counter_t inputs[3][PG_M_IN_OUTCOMES];
    counter_t decisions[PG_M_STREAMS][2][N_REASONS];
    counter_t redis_round_trips, redis_errors, unknown_kinds, batches;
    counter_t redis_hist[N_BUCKETS + 1];
    counter_t redis_sum_ns;
    _Atomic bool redis_last_ok;
    _Atomic int64_t last_tick_ms;
} values_t;

#define ADD(c, n) atomic_fetch_add_explicit(&(c), (n), memory_order_relaxed)
#define GET(c) atomic_load_explicit(&(c), memory_order_relaxed)

struct pg_metrics {
    pthread_mutex_t lock; /* guards the sources */
    char *topics[3];
    int stall_timeout_ms;
    values_t v;
    pg_metrics_lag_fn lag;
    pg_metrics_group_fn group;
    pg_metrics_redis_fn redis;
    void *ctx;
    struct MHD_Daemon *daemon;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

pg_metrics_t *pg_metrics_new(const char *const input_topics[3], int stall_timeout_ms)
{
    pg_metrics_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    for (int i = 0; i < 3; i++) {
        m->topics[i] = strdup(input_topics[i]);
        if (m->topics[i] == NULL) {
            pg_metrics_destroy(m);
            return NULL;
        }
    }
    m->stall_timeout_ms = stall_timeout_ms;
    atomic_init(&m->v.last_tick_ms, mono_ms());
    atomic_init(&m->v.redis_last_ok, true);
    return m;
}

void pg_metrics_destroy(pg_metrics_t *m)
{
    if (m == NULL)
        return;
    if (m->daemon != NULL)
        MHD_stop_daemon(m->daemon); /* joins the server thread: no scrape runs after */
    for (int i = 0; i < 3; i++)
        free(m->topics[i]);
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
    if (m == NULL || input < 0 || input > 2)
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
    atomic_store_explicit(&m->v.redis_last_ok, ok, memory_order_relaxed);
    ADD(m->v.redis_hist[b], 1);
    ADD(m->v.redis_sum_ns, (unsigned long long)(seconds * 1e9));
}

void pg_metrics_unknown_kinds(pg_metrics_t *m, unsigned long long n)
{
    if (m == NULL || n == 0)
        return;
    ADD(m->v.unknown_kinds, n);
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
    atomic_store_explicit(&m->v.last_tick_ms, mono_ms(), memory_order_relaxed);
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
static void render_lag(pg_metrics_t *m, pg_buf_t *b, pg_metrics_lag_fn lag, void *ctx)
{
    pg_lag_row_t *rows = NULL;
    size_t n = 0;
    char err[256];
    if (lag == NULL || lag(ctx, &rows, &n, err, sizeof(err)) != 0) {
        if (lag != NULL)
            pg_log_warn("lag_scrape_failed", "error", err, NULL);
        head(b, "pinguard_lag_scrape_error", "gauge",
             "1 when the consumer lag could not be read at this scrape.");
        put(b, "pinguard_lag_scrape_error 1\n");
        return;
    }
    head(b, "pinguard_consumer_lag_messages", "gauge",
         "Messages of a partition not yet committed by the group (high watermark - "
         "committed offset).");
    for (size_t i = 0; i < n; i++)
        put(b, "pinguard_consumer_lag_messages{topic=\"%s\",partition=\"%d\"} %lld\n",
            rows[i].topic, (int)rows[i].partition, (long long)rows[i].lag);
    head(b, "pinguard_topic_consumer_lag_messages", "gauge",
         "Sum of the consumer lag over the partitions this worker owns, per topic.");
    for (int t = 0; t < 3; t++) {
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

int pg_metrics_render(pg_metrics_t *m, pg_buf_t *b)
{
    /* Take the sources under the lock, then render without holding it across
     * the broker queries the lag callback makes. */
    values_t *s = &m->v;
    pthread_mutex_lock(&m->lock);
    pg_metrics_lag_fn lag = m->lag;
    pg_metrics_group_fn group = m->group;
    pg_metrics_redis_fn redis = m->redis;
    void *ctx = m->ctx;
    pthread_mutex_unlock(&m->lock);

    pg_metrics_group_t g = {0};
    if (group != NULL)
        group(ctx, &g);
    bool redis_up = redis != NULL ? redis(ctx) : atomic_load(&s->redis_last_ok);

    render_lag(m, b, lag, ctx);

    head(b, "pinguard_inputs_total", "counter",
         "Input messages by topic and outcome (decided, dlq, retried).");
    for (int t = 0; t < 3; t++)
        for (int o = 0; o < PG_M_IN_OUTCOMES; o++)
            put(b, "pinguard_inputs_total{topic=\"%s\",outcome=\"%s\"} %llu\n",
                m->topics[t], outcome_names[o], GET(s->inputs[t][o]));

    head(b, "pinguard_decisions_total", "counter",
         "Decisions produced, by stream, verdict (or release action) and reason.");
    for (int st = 0; st < PG_M_STREAMS; st++) {
        const char *const *reasons =
            st == PG_M_STREAM_RELEASE ? release_reasons : veto_reasons;
        int nreasons = st == PG_M_STREAM_RELEASE ? 5 : 4;
        for (int v = 0; v < 2; v++) {
            for (int r = -1; r < nreasons; r++) {
                /* Approvals carry no reason; vetoes, KEEP and RELEASE always one. */
                bool approval = st != PG_M_STREAM_RELEASE && v == 0;
                if (approval != (r == -1))
                    continue;
                put(b,
                    "pinguard_decisions_total{stream=\"%s\",verdict=\"%s\",reason=\"%"
                    "s\"} "
                    "%llu\n",
                    stream_names[st], verdict_names[st][v], r < 0 ? "none" : reasons[r],
                    GET(s->decisions[st][v][r + 1]));
            }
        }
    }
    head(b, "pinguard_unknown_device_kinds_total", "counter",
         "Devices of a kind pinguard does not know, seen in decisions (they pin).");
    put(b, "pinguard_unknown_device_kinds_total %llu\n", GET(s->unknown_kinds));

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
    head(b, "pinguard_build_info", "gauge", "Build information.");
    put(b, "pinguard_build_info{version=\"%s\"} 1\n", PINGUARD_VERSION);
    return 0;
}

int pg_metrics_health(pg_metrics_t *m, char *why, size_t whylen)
{
    int64_t age = mono_ms() - atomic_load(&m->v.last_tick_ms);
    if (age > m->stall_timeout_ms) {
        snprintf(why, whylen, "loop stalled for %lld ms", (long long)age);
        return -1;
    }
    snprintf(why, whylen, "ok");
    return 0;
}

int pg_metrics_ready(pg_metrics_t *m, char *why, size_t whylen)
{
    if (pg_metrics_health(m, why, whylen) != 0)
        return -1;
    pthread_mutex_lock(&m->lock);
    pg_metrics_group_fn group = m->group;
    pg_metrics_redis_fn redis = m->redis;
    void *ctx = m->ctx;
    pthread_mutex_unlock(&m->lock);
    pg_metrics_group_t g = {0};
    if (group != NULL)
        group(ctx, &g);
    if (!g.joined) {
        snprintf(why, whylen, "consumer group not joined");
        return -1;
    }
    if (redis != NULL && !redis(ctx)) {
        snprintf(why, whylen, "redis does not answer");
        return -1;
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
        snprintf(errbuf, errlen, "metrics.listen '%s': expected host:port", listen);
        return -1;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (*end != '\0' || port < 0 || port > 65535 ||
        inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(errbuf, errlen,
                 "metrics.listen '%s': expected an IPv4 address and a port", listen);
        return -1;
    }
    m->daemon =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL,
                         on_request, m, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (m->daemon == NULL) {
        snprintf(errbuf, errlen, "metrics.listen %s: cannot listen (address in use?)",
                 listen);
        return -1;
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

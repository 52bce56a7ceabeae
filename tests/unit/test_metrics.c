/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the metrics registry: Prometheus text shape, counters by
 * label, the cumulative histogram, the liveness/readiness rules, the stall
 * net and the staleness of snapshots (fed by hand, no threads), and one test
 * of the HTTP server on loopback: probes answer while the lag read blocks.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

static const char *const topics[3] = {"a", "r", "s"};

static char *render(pg_metrics_t *m)
{
    pg_buf_t b = {0};
    ck_assert_int_eq(pg_metrics_render(m, &b), 0);
    ck_assert_int_eq(pg_buf_append(&b, "", 1), 0);
    return (char *)b.data;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Spins into the next millisecond, so that two observations are ordered. */
static void next_ms(void)
{
    int64_t t = now_ms();
    while (now_ms() == t)
        ;
}

static int fake_lag(void *ctx, pg_lag_row_t **rows, size_t *n, char *errbuf,
                    size_t errlen)
{
    (void)ctx;
    (void)errbuf;
    (void)errlen;
    *rows = calloc(2, sizeof(**rows));
    (*rows)[0] = (pg_lag_row_t){
        .topic = "r", .partition = 0, .committed = 5, .high = 9, .lag = 4};
    (*rows)[1] = (pg_lag_row_t){
        .topic = "r", .partition = 1, .committed = -1, .high = 3, .lag = 3};
    *n = 2;
    return 0;
}

static bool joined_flag;
static bool redis_flag;

static void fake_group(void *ctx, pg_metrics_group_t *out)
{
    (void)ctx;
    *out = (pg_metrics_group_t){
        .joined = joined_flag, .rebalances = 2, .assigned_partitions = 6};
}

static bool fake_redis(void *ctx)
{
    (void)ctx;
    return redis_flag;
}

START_TEST(render_counters)
{
    pg_metrics_t *m = pg_metrics_new(topics, 60000, 120000);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    redis_flag = true;
    pg_metrics_refresh(m); /* what the refresher threads do every second */
    pg_metrics_input(m, 1, PG_M_IN_DECIDED, 3);
    pg_metrics_input(m, 1, PG_M_IN_DLQ, 1);
    pg_metrics_input(m, 7, PG_M_IN_DLQ, 1); /* out of range: ignored */
    pg_metrics_decision(m, PG_M_STREAM_MIGRATE, 1, 2);
    pg_metrics_decision(m, PG_M_STREAM_MIGRATE, 0, -1);
    pg_metrics_decision(m, PG_M_STREAM_RELEASE, 1, 2);
    pg_metrics_redis_exchange(m, 0.0004, true);
    pg_metrics_redis_exchange(m, 0.003, false);
    pg_metrics_redis_exchange(m, 9.0, true);
    char *t = render(m);
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_inputs_total{topic=\"r\",outcome=\"decided\"} 3\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_inputs_total{topic=\"r\",outcome=\"dlq\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_decisions_total{stream=\"migrate\","
                                    "verdict=\"VETOED\",reason=\"UNKNOWN_VM\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_decisions_total{stream=\"migrate\","
                                    "verdict=\"APPROVED\",reason=\"none\"} 1\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_decisions_total{stream=\"release\",verdict=\"KEEP\","
                  "reason=\"STILL_ON_SOURCE\"} 1\n"));
    /* Approvals never carry a reason, vetoes never "none". */
    ck_assert_ptr_null(strstr(t, "verdict=\"APPROVED\",reason=\"UNKNOWN_VM\""));
    ck_assert_ptr_null(strstr(t, "verdict=\"VETOED\",reason=\"none\""));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_redis_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_redis_latency_seconds_bucket{le=\"0.005\"} 2\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_redis_latency_seconds_bucket{le=\"2.5\"} 2\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_redis_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_redis_latency_seconds_count 3\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_redis_errors_total 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_redis_up 1\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_consumer_lag_messages{topic=\"r\",partition=\"0\"} 4\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_topic_consumer_lag_messages{topic=\"r\"} 7\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_topic_consumer_lag_messages{topic=\"a\"} 0\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_committed_offset{topic=\"r\",partition=\"1\"} -1\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_assigned_partitions 6\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_lag_scrape_error 0\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_stalled_partitions 0\n"));
    ck_assert_ptr_null(strstr(t, "pinguard_lag_snapshot_age_seconds -"));
    ck_assert_ptr_nonnull(
        strstr(t, "# TYPE pinguard_redis_latency_seconds histogram\n"));
    /* Every sample line belongs to a declared family. */
    for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n"))
        ck_assert_msg(line[0] == '#' || strncmp(line, "pinguard_", 9) == 0, "%s", line);
    free(t);
    pg_metrics_destroy(m);
}
END_TEST

START_TEST(readiness_rules)
{
    char why[128];
    pg_metrics_t *m = pg_metrics_new(topics, 60000, 120000);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    joined_flag = false;
    redis_flag = true;
    pg_metrics_refresh(m);
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), 0);
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), PG_RETRY);
    ck_assert_ptr_nonnull(strstr(why, "not joined"));
    joined_flag = true;
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), 0);
    /* The probe's answer counts from the next refresh on, not before. */
    redis_flag = false;
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), 0);
    next_ms();
    pg_metrics_refresh(m);
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), PG_RETRY);
    ck_assert_ptr_nonnull(strstr(why, "redis"));
    /* The fresher word decides: the worker's successful exchange after the
     * failed probe, then its failed one after the probe answered again. */
    next_ms();
    pg_metrics_redis_exchange(m, 0.001, true);
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), 0);
    redis_flag = true;
    next_ms();
    pg_metrics_refresh(m);
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), 0);
    next_ms();
    pg_metrics_redis_exchange(m, 0.001, false);
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), PG_RETRY);
    ck_assert_ptr_nonnull(strstr(why, "redis"));
    pg_metrics_destroy(m);
}
END_TEST

/* `pinguard sync`'s registry: the feed's counters instead of decisions, and
 * not ready before it caught up with the feed. */
START_TEST(feed_registry)
{
    char why[128];
    pg_metrics_t *m = pg_metrics_new_feed("r", 60000, 120000);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    joined_flag = redis_flag = true;
    pg_metrics_refresh(m);
    pg_metrics_feed_records(m, 0, 5);
    pg_metrics_feed_records(m, 1, 2);
    pg_metrics_feed_records(m, 4, 9); /* out of range: ignored */
    pg_metrics_feed_dead_letter(m, "INVALID_FIELD");
    pg_metrics_feed_dead_letter(m, "BAD_MAGIC");
    pg_metrics_feed_dead_letter(m, "INVALID_FIELD");
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), PG_RETRY);
    ck_assert_ptr_nonnull(strstr(why, "catching up"));
    pg_metrics_feed_caught_up(m, true);
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), 0);
    char *t = render(m);
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_sync_records_total{result=\"applied\"} 5\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_sync_records_total{result=\"stale\"} 2\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_sync_records_total{result=\"absent\"} 0\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_sync_dead_letters_total{reason=\"INVALID_FIELD\"} 2\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_sync_dead_letters_total{reason=\"BAD_MAGIC\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_sync_caught_up 1\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_consumer_lag_messages{topic=\"r\",partition=\"0\"} 4\n"));
    /* No decision families, and no other input topic. */
    ck_assert_ptr_null(strstr(t, "pinguard_decisions_total"));
    ck_assert_ptr_null(strstr(t, "topic=\"a\""));
    for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n"))
        ck_assert_msg(line[0] == '#' || strncmp(line, "pinguard_", 9) == 0, "%s", line);
    free(t);
    pg_metrics_destroy(m);
}
END_TEST

START_TEST(stalled_loop_fails_both)
{
    char why[128];
    pg_metrics_t *m = pg_metrics_new(topics, 20, 120000);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    joined_flag = redis_flag = true;
    pg_metrics_refresh(m);
    pg_metrics_tick(m);
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), 0);
    /* Nothing ticks now: within a second both probes must fail. */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do
        clock_gettime(CLOCK_MONOTONIC, &now);
    while (pg_metrics_health(m, why, sizeof(why)) == 0 &&
           now.tv_sec - start.tv_sec < 2);
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), PG_RETRY);
    ck_assert_ptr_nonnull(strstr(why, "stalled"));
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), PG_RETRY);
    pg_metrics_tick(m);
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), 0);
    pg_metrics_destroy(m);
}
END_TEST

static pg_lag_row_t row(const char *topic, int32_t p, int64_t committed, int64_t lag)
{
    pg_lag_row_t r = {.partition = p,
                      .committed = committed,
                      .lag = lag,
                      .position = -1,
                      .consumed = -1};
    snprintf(r.topic, sizeof(r.topic), "%s", topic);
    r.high = (committed < 0 ? 0 : committed) + lag;
    return r;
}

static size_t stalled_at(const pg_metrics_stall_t *s, int64_t now, int stall_ms,
                         const char *topic, int32_t *partition)
{
    const pg_metrics_clock_t *w = NULL;
    size_t n = pg_metrics_stall_count(s, now, stall_ms, &w);
    ck_assert_int_eq(n == 0, w == NULL);
    if (w != NULL) {
        ck_assert_str_eq(w->topic, topic);
        *partition = w->partition;
    }
    return n;
}

START_TEST(marker_tail_is_not_a_stall)
{
    /* A transactional producer's commit marker ends the log: the worker
     * decided and committed the last input (offset 9), the consumer stepped
     * over the marker (position 11 = high), and lag stays 1 for ever. That is
     * not a stall; an input consumed but not committed is. */
    const int S = 1000;
    pg_metrics_stall_t st = {0};
    int32_t p = -1;
    pg_lag_row_t r = row("r", 0, 10, 1);
    r.position = 11;
    r.consumed = 9;
    ck_assert_int_eq(pg_metrics_stall_update(&st, &r, 1, 0), 0);
    ck_assert_int_eq(pg_metrics_stall_update(&st, &r, 1, 5 * S), 0);
    ck_assert_uint_eq(stalled_at(&st, 10 * S, S, "r", &p), 0);
    /* The worker consumed offset 11 and cannot commit it (its output is
     * refused, say): the clock starts when that lag appears. */
    r.high = 12;
    r.lag = 2;
    r.position = 12;
    r.consumed = 11;
    ck_assert_int_eq(pg_metrics_stall_update(&st, &r, 1, 11 * S), 0);
    ck_assert_uint_eq(stalled_at(&st, 12 * S - 1, S, "r", &p), 0);
    ck_assert_uint_eq(stalled_at(&st, 12 * S, S, "r", &p), 1);
    /* Input waiting that the consumer never fetched (position behind the
     * high watermark) stalls too. */
    r.consumed = 9;
    r.position = 11;
    ck_assert_int_eq(pg_metrics_stall_update(&st, &r, 1, 13 * S), 0);
    ck_assert_uint_eq(stalled_at(&st, 12 * S, S, "r", &p), 1);
    pg_metrics_stall_free(&st);
}
END_TEST

START_TEST(stall_clocks)
{
    const int S = 1000;
    pg_metrics_stall_t st = {0};
    int32_t p = -1;
    /* t=0: r/0 has lag (newly seen: its clock starts now), r/1 none. */
    pg_lag_row_t a[] = {row("r", 0, 10, 5), row("r", 1, 7, 0)};
    ck_assert_int_eq(pg_metrics_stall_update(&st, a, 2, 0), 0);
    ck_assert_uint_eq(stalled_at(&st, 0, S, "r", &p), 0);
    ck_assert_uint_eq(stalled_at(&st, S - 1, S, "r", &p), 0);
    ck_assert_uint_eq(stalled_at(&st, S, S, "r", &p), 1);
    ck_assert_int_eq(p, 0);
    /* The same figures again at t=600: the clock keeps running. */
    ck_assert_int_eq(pg_metrics_stall_update(&st, a, 2, 600), 0);
    ck_assert_uint_eq(stalled_at(&st, S, S, "r", &p), 1);
    /* t=1200: r/0 commits (offset moves): unstalled, a fresh clock. */
    pg_lag_row_t b[] = {row("r", 0, 12, 3), row("r", 1, 7, 0)};
    ck_assert_int_eq(pg_metrics_stall_update(&st, b, 2, 1200), 0);
    ck_assert_uint_eq(stalled_at(&st, 1200 + S - 1, S, "r", &p), 0);
    ck_assert_uint_eq(stalled_at(&st, 1200 + S, S, "r", &p), 1);
    /* A partition without lag never stalls, however long it sits still. */
    ck_assert_uint_eq(stalled_at(&st, 1000000, S, "r", &p), 1);
    ck_assert_int_eq(p, 0);
    /* t=5000: r/1, idle since t=0, receives input: its clock starts now, not
     * at its last commit. Rows in another order still match their clocks. */
    pg_lag_row_t c[] = {row("r", 1, 7, 2), row("r", 0, 12, 3)};
    ck_assert_int_eq(pg_metrics_stall_update(&st, c, 2, 5000), 0);
    ck_assert_uint_eq(stalled_at(&st, 5000 + S - 1, S, "r", &p), 1);
    ck_assert_int_eq(p, 0); /* the one stalled longest */
    ck_assert_uint_eq(stalled_at(&st, 5000 + S, S, "r", &p), 2);
    ck_assert_int_eq(p, 0);
    /* r/0 revoked (absent), r/1 and s/0 remain: r/0's clock is gone and
     * comes back new when it is assigned again. */
    pg_lag_row_t d[] = {row("r", 1, 7, 2), row("s", 0, -1, 4)};
    ck_assert_int_eq(pg_metrics_stall_update(&st, d, 2, 6000), 0);
    ck_assert_uint_eq(st.n, 2);
    ck_assert_uint_eq(stalled_at(&st, 6000 + S - 1, S, "r", &p), 1);
    ck_assert_int_eq(p, 1);
    ck_assert_int_eq(pg_metrics_stall_update(&st, c, 2, 7000), 0);
    ck_assert_uint_eq(stalled_at(&st, 7000 + S - 1, S, "r", &p), 1);
    ck_assert_int_eq(p, 1); /* r/0 starts over at 7000 */
    ck_assert_uint_eq(stalled_at(&st, 7000 + S, S, "r", &p), 2);
    /* An empty assignment clears everything. */
    ck_assert_int_eq(pg_metrics_stall_update(&st, NULL, 0, 8000), 0);
    ck_assert_uint_eq(pg_metrics_stall_count(&st, 100000, S, NULL), 0);
    pg_metrics_stall_free(&st);
    pg_metrics_stall_free(&st); /* leaves it empty: twice is fine */
    pg_metrics_stall_free(NULL);
}
END_TEST

START_TEST(redis_staleness)
{
    const int64_t T = PG_METRICS_REDIS_STALE_MS;
    const pg_metrics_redis_obs_t never = {.ok = false, .at_ms = INT64_MIN};
    int64_t age;
    ck_assert(!pg_metrics_redis_verdict(never, never, 1000, &age));
    ck_assert_int_eq(age, -1);
    pg_metrics_redis_obs_t up = {.ok = true, .at_ms = 1000};
    pg_metrics_redis_obs_t down = {.ok = false, .at_ms = 2000};
    ck_assert(pg_metrics_redis_verdict(up, never, 1000 + T, &age));
    ck_assert_int_eq(age, T);
    /* Too old counts as no answer. */
    ck_assert(!pg_metrics_redis_verdict(up, never, 1000 + T + 1, &age));
    ck_assert_int_eq(age, T + 1);
    /* The fresher observation decides, whichever side it comes from. */
    ck_assert(!pg_metrics_redis_verdict(up, down, 2500, NULL));
    ck_assert(!pg_metrics_redis_verdict(down, up, 2500, NULL));
    pg_metrics_redis_obs_t later = {.ok = true, .at_ms = 3000};
    ck_assert(pg_metrics_redis_verdict(down, later, 3500, &age));
    ck_assert_int_eq(age, 500);
    ck_assert(pg_metrics_redis_verdict(later, down, 3500, NULL));
    /* A worker's success keeps it fresh while the probe is stuck. */
    pg_metrics_redis_obs_t recent = {.ok = true, .at_ms = 1000 + T};
    ck_assert(pg_metrics_redis_verdict(up, recent, 1000 + T + 5, NULL));
    /* The same millisecond: a failure wins. */
    pg_metrics_redis_obs_t tie = {.ok = false, .at_ms = 1000};
    ck_assert(!pg_metrics_redis_verdict(up, tie, 1000, NULL));
    ck_assert(!pg_metrics_redis_verdict(tie, up, 1000, NULL));

    /* In the registry: a probe answer older than the bound fails /readyz. */
    char why[256];
    pg_metrics_t *m = pg_metrics_new(topics, 3600000, 120000);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    joined_flag = redis_flag = true;
    next_ms();
    pg_metrics_refresh(m);
    int64_t t = now_ms();
    ck_assert_int_eq(pg_metrics_ready_at(m, t, why, sizeof(why)), 0);
    ck_assert_int_eq(pg_metrics_ready_at(m, t + T + 5, why, sizeof(why)), -1);
    ck_assert_ptr_nonnull(strstr(why, "redis does not answer (no word from it for"));
    pg_metrics_destroy(m);
}
END_TEST

static pg_lag_row_t var_rows[2];
static size_t var_n;
static bool lag_fails;

static int var_lag(void *ctx, pg_lag_row_t **rows, size_t *n, char *errbuf,
                   size_t errlen)
{
    (void)ctx;
    if (lag_fails) {
        snprintf(errbuf, errlen, "broker gone");
        return -1;
    }
    *rows = calloc(2, sizeof(**rows));
    memcpy(*rows, var_rows, sizeof(var_rows));
    *n = var_n;
    return 0;
}

START_TEST(readiness_names_stalled_partition)
{
    char why[256];
    const int S = 5000;
    pg_metrics_t *m = pg_metrics_new(topics, 3600000, S);
    pg_metrics_set_sources(m, var_lag, fake_group, fake_redis, NULL);
    joined_flag = redis_flag = true;
    lag_fails = false;
    var_rows[0] = row("r", 3, 40, 2);
    var_rows[1] = row("s", 0, 9, 0);
    var_n = 2;
    int64_t before = now_ms();
    pg_metrics_refresh(m);
    int64_t after = now_ms();
    ck_assert_int_eq(pg_metrics_ready_at(m, before + S - 1, why, sizeof(why)), 0);
    ck_assert_int_eq(pg_metrics_ready_at(m, after + S, why, sizeof(why)), -1);
    ck_assert_ptr_nonnull(strstr(why, "partition stalled: r/3"));
    ck_assert_ptr_nonnull(strstr(why, "committed offset 40"));
    ck_assert_ptr_nonnull(strstr(why, "with lag 2 (1 stalled)"));
    /* /healthz does not care. */
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), 0);
    /* The offset moves: the clock starts over. */
    var_rows[0].committed = 41;
    before = now_ms();
    pg_metrics_refresh(m);
    after = now_ms();
    ck_assert_int_eq(pg_metrics_ready_at(m, before + S - 1, why, sizeof(why)), 0);
    ck_assert_int_eq(pg_metrics_ready_at(m, after + S, why, sizeof(why)), -1);
    /* A failed read keeps the last figures: the clock runs on, and the rows
     * are still rendered, marked by the error gauge. */
    lag_fails = true;
    pg_metrics_refresh(m);
    ck_assert_int_eq(pg_metrics_ready_at(m, before + S - 1, why, sizeof(why)), 0);
    ck_assert_int_eq(pg_metrics_ready_at(m, after + S, why, sizeof(why)), -1);
    ck_assert_ptr_nonnull(strstr(why, "r/3"));
    char *t = render(m);
    ck_assert_ptr_nonnull(strstr(t, "pinguard_lag_scrape_error 1\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "pinguard_committed_offset{topic=\"r\",partition=\"3\"} 41\n"));
    ck_assert_ptr_null(strstr(t, "pinguard_lag_snapshot_age_seconds -"));
    free(t);
    /* Revoked: no partition, nothing stalled. */
    lag_fails = false;
    var_n = 0;
    pg_metrics_refresh(m);
    ck_assert_int_eq(pg_metrics_ready_at(m, after + S + 100, why, sizeof(why)), 0);
    pg_metrics_destroy(m);

    /* With health.stall.ms 0 every partition with lag is stalled at once: the
     * gauge counts them. */
    m = pg_metrics_new(topics, 3600000, 0);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    pg_metrics_refresh(m);
    t = render(m);
    ck_assert_ptr_nonnull(strstr(t, "pinguard_stalled_partitions 2\n"));
    free(t);
    pg_metrics_destroy(m);
}
END_TEST

START_TEST(no_lag_yet)
{
    /* Before the first successful read: the error gauge, an age of -1 and
     * no lag figures at all (zeros would claim a drained backlog). */
    pg_metrics_t *m = pg_metrics_new(topics, 60000, 120000);
    pg_metrics_set_sources(m, var_lag, fake_group, fake_redis, NULL);
    lag_fails = true;
    pg_metrics_refresh(m);
    char *t = render(m);
    ck_assert_ptr_nonnull(strstr(t, "pinguard_lag_scrape_error 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "pinguard_lag_snapshot_age_seconds -1.000\n"));
    ck_assert_ptr_null(strstr(t, "pinguard_topic_consumer_lag_messages{"));
    free(t);
    pg_metrics_destroy(m);
    lag_fails = false;
}
END_TEST

/* A lag source whose first read blocks until released, like a broker that
 * does not answer. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool gate_open, gate_entered;

static int gated_lag(void *ctx, pg_lag_row_t **rows, size_t *n, char *errbuf,
                     size_t errlen)
{
    pthread_mutex_lock(&gate_lock);
    gate_entered = true;
    pthread_cond_broadcast(&gate_cond);
    while (!gate_open)
        pthread_cond_wait(&gate_cond, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
    return fake_lag(ctx, rows, n, errbuf, errlen);
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void send_all(int fd, const char *s)
{
    ck_assert_int_eq(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

/* Reads the whole HTTP/1.0 response (the server closes). */
static char *read_all(int fd)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)r;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    close(fd);
    return buf;
}

START_TEST(probes_answer_while_lag_read_blocks)
{
    char err[256];
    gate_open = gate_entered = false;
    joined_flag = redis_flag = true;
    pg_metrics_t *m = pg_metrics_new(topics, 60000, 120000);
    pg_metrics_set_sources(m, gated_lag, fake_group, fake_redis, NULL);
    ck_assert_int_eq(pg_metrics_serve(m, "127.0.0.1:0", err, sizeof(err)), 0);
    int port = pg_metrics_port(m);
    ck_assert_int_gt(port, 0);
    pthread_mutex_lock(&gate_lock);
    while (!gate_entered)
        pthread_cond_wait(&gate_cond, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
    /* A scrape in flight, and a client that sends half a request. */
    int scrape = connect_to(port);
    send_all(scrape, "GET /metrics HTTP/1.0\r\n\r\n");
    int slow = connect_to(port);
    send_all(slow, "GET /hea");
    for (int i = 0; i < 20; i++) {
        const char *path = i % 2 ? "/readyz" : "/healthz";
        int64_t t0 = now_ms();
        int fd = connect_to(port);
        char req[64];
        snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
        send_all(fd, req);
        char *resp = read_all(fd);
        int64_t took = now_ms() - t0;
        ck_assert_msg(strncmp(resp, "HTTP/1.0 200", 12) == 0 ||
                          strncmp(resp, "HTTP/1.1 200", 12) == 0,
                      "%s: %s", path, resp);
        ck_assert_msg(took < 200, "%s took %lld ms", path, (long long)took);
        free(resp);
    }
    /* Released, the scrape gets figures read after it arrived. */
    pthread_mutex_lock(&gate_lock);
    gate_open = true;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
    char *text = read_all(scrape);
    ck_assert_ptr_nonnull(strstr(text, "pinguard_lag_scrape_error 0\n"));
    ck_assert_ptr_nonnull(strstr(
        text, "pinguard_consumer_lag_messages{topic=\"r\",partition=\"0\"} 4\n"));
    free(text);
    close(slow);
    pg_metrics_destroy(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *t = tcase_create("metrics");
    tcase_add_test(t, render_counters);
    tcase_add_test(t, readiness_rules);
    tcase_add_test(t, feed_registry);
    tcase_add_test(t, stalled_loop_fails_both);
    tcase_add_test(t, stall_clocks);
    tcase_add_test(t, marker_tail_is_not_a_stall);
    tcase_add_test(t, redis_staleness);
    tcase_add_test(t, readiness_names_stalled_partition);
    tcase_add_test(t, no_lag_yet);
    tcase_add_test(t, probes_answer_while_lag_read_blocks);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

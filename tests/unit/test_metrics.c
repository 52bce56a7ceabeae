/*
 * Unit tests of the metrics registry: Prometheus text shape, counters by
 * label, the cumulative histogram, and the liveness/readiness rules.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

static const char *const topics[3] = {"a", "r", "s"};

static char *render(pg_metrics_t *m)
{
    pg_buf_t b = {0};
    ck_assert_int_eq(pg_metrics_render(m, &b), 0);
    ck_assert_int_eq(pg_buf_append(&b, "", 1), 0);
    return (char *)b.data;
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
    pg_metrics_t *m = pg_metrics_new(topics, 60000);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    redis_flag = true;
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
    pg_metrics_t *m = pg_metrics_new(topics, 60000);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    joined_flag = false;
    redis_flag = true;
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), 0);
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), -1);
    ck_assert_ptr_nonnull(strstr(why, "not joined"));
    joined_flag = true;
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), 0);
    redis_flag = false;
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), -1);
    ck_assert_ptr_nonnull(strstr(why, "redis"));
    pg_metrics_destroy(m);
}
END_TEST

START_TEST(stalled_loop_fails_both)
{
    char why[128];
    pg_metrics_t *m = pg_metrics_new(topics, 20);
    pg_metrics_set_sources(m, fake_lag, fake_group, fake_redis, NULL);
    joined_flag = redis_flag = true;
    pg_metrics_tick(m);
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), 0);
    /* Nothing ticks now: within a second both probes must fail. */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do
        clock_gettime(CLOCK_MONOTONIC, &now);
    while (pg_metrics_health(m, why, sizeof(why)) == 0 &&
           now.tv_sec - start.tv_sec < 2);
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), -1);
    ck_assert_ptr_nonnull(strstr(why, "stalled"));
    ck_assert_int_eq(pg_metrics_ready(m, why, sizeof(why)), -1);
    pg_metrics_tick(m);
    ck_assert_int_eq(pg_metrics_health(m, why, sizeof(why)), 0);
    pg_metrics_destroy(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *t = tcase_create("metrics");
    tcase_add_test(t, render_counters);
    tcase_add_test(t, readiness_rules);
    tcase_add_test(t, stalled_loop_fails_both);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

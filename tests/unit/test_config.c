/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the settings table: SPEC defaults, precedence of the sources,
 * bounds, passthrough, secrets, and that docs/CONFIG.md is the table's own
 * reference output.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static char err[512];

static char *capture(void (*fn)(const pg_config_t *, FILE *), const pg_config_t *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fn(c, f);
    fclose(f);
    return buf;
}

static void reference_adapter(const pg_config_t *c, FILE *f)
{
    (void)c;
    pg_config_print_reference(f);
}

static char *write_temp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/pg_test_config_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

START_TEST(spec_defaults)
{
    pg_config_t *c = pg_config_new();
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), 0);
    ck_assert_str_eq(c->topic_advice, "drs.advice");
    ck_assert_str_eq(c->topic_requests, "vm.migrate.requests");
    ck_assert_str_eq(c->topic_results, "vm.migrate.results");
    ck_assert_str_eq(c->topic_filtered, "drs.advice.filtered");
    ck_assert_str_eq(c->topic_decisions, "vm.migrate.decisions");
    ck_assert_str_eq(c->topic_release, "device.release.decisions");
    ck_assert_str_eq(c->topic_dlq, "pinguard.dlq");
    ck_assert_str_eq(c->redis_host, "127.0.0.1");
    ck_assert_int_eq(c->redis_port, 6379);
    ck_assert_int_eq(c->redis_db, 0);
    ck_assert_str_eq(c->metrics_listen, "127.0.0.1:9464");
    ck_assert_str_eq(pg_config_kafka_get(c, "bootstrap.servers"), "127.0.0.1:9092");
    ck_assert_str_eq(pg_config_kafka_get(c, "group.id"), "pinguard");
    ck_assert(!c->allow_unknown_vm);
    pg_config_destroy(c);
}
END_TEST

START_TEST(precedence_file_env_flag)
{
    pg_config_t *c = pg_config_new();
    const char *path = write_temp("# comment\n redis.port = 7000 \nredis.db=3\n"
                                  "kafka.group.id = from-file\n\n");
    ck_assert_int_eq(pg_config_load_file(c, path, err, sizeof(err)), 0);
    unlink(path);
    ck_assert_int_eq(c->redis_port, 7000);
    char *env[] = {"PINGUARD_REDIS_PORT=7001", "PINGUARD_KAFKA_GROUP_ID=from-env",
                   "PINGUARD_BIN=/ignored", "HOME=/root", NULL};
    ck_assert_int_eq(pg_config_load_env(c, env, err, sizeof(err)), 0);
    ck_assert_int_eq(c->redis_port, 7001);
    ck_assert_int_eq(c->redis_db, 3);
    ck_assert_str_eq(pg_config_kafka_get(c, "group.id"), "from-env");
    ck_assert_int_eq(
        pg_config_set(c, "redis.port", "7002", PG_CONFIG_SRC_FLAG, err, sizeof(err)),
        0);
    ck_assert_int_eq(c->redis_port, 7002);
    char *shown = capture(pg_config_print, c);
    ck_assert_ptr_nonnull(strstr(shown, "redis.port = 7002  # flag"));
    ck_assert_ptr_nonnull(strstr(shown, "redis.db = 3  # file"));
    ck_assert_ptr_nonnull(strstr(shown, "kafka.group.id = from-env  # env"));
    free(shown);
    pg_config_destroy(c);
}
END_TEST

START_TEST(bounds_and_types)
{
    pg_config_t *c = pg_config_new();
    ck_assert_int_eq(pg_config_set(c, "redis.port", "0", 3, err, sizeof(err)),
                     PG_INPUT);
    ck_assert_ptr_nonnull(strstr(err, "[1, 65535]"));
    ck_assert_int_eq(pg_config_set(c, "redis.port", "65536", 3, err, sizeof(err)),
                     PG_INPUT);
    ck_assert_int_eq(pg_config_set(c, "redis.port", "12x", 3, err, sizeof(err)),
                     PG_INPUT);
    ck_assert_int_eq(pg_config_set(c, "redis.port", "", 3, err, sizeof(err)), PG_INPUT);
    ck_assert_int_eq(c->redis_port, 6379); /* a rejected value changes nothing */
    ck_assert_int_eq(
        pg_config_set(c, "policy.allow.unknown.vm", "yes", 3, err, sizeof(err)), 0);
    ck_assert(c->allow_unknown_vm);
    ck_assert_int_eq(
        pg_config_set(c, "policy.allow.unknown.vm", "maybe", 3, err, sizeof(err)),
        PG_INPUT);
    ck_assert_int_eq(pg_config_set(c, "log.level", "debug", 3, err, sizeof(err)), 0);
    ck_assert_int_eq(c->log_level, PG_LOG_DEBUG);
    ck_assert_int_eq(pg_config_set(c, "log.level", "loud", 3, err, sizeof(err)),
                     PG_INPUT);
    ck_assert_int_eq(pg_config_set(c, "no.such.key", "1", 3, err, sizeof(err)),
                     PG_INPUT);
    ck_assert_ptr_nonnull(strstr(err, "no.such.key"));
    ck_assert_int_eq(pg_config_set(c, "kafka.", "1", 3, err, sizeof(err)), PG_INPUT);
    pg_config_destroy(c);
}
END_TEST

START_TEST(cross_field_checks)
{
    pg_config_t *c = pg_config_new();
    pg_config_set(c, "topic.dlq", "drs.advice", 3, err, sizeof(err));
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), PG_INPUT);
    ck_assert_ptr_nonnull(strstr(err, "drs.advice"));
    pg_config_destroy(c);

    c = pg_config_new();
    pg_config_set(c, "retry.backoff.min.ms", "500", 3, err, sizeof(err));
    pg_config_set(c, "retry.backoff.max.ms", "100", 3, err, sizeof(err));
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), PG_INPUT);
    pg_config_destroy(c);
}
END_TEST

/* device.kinds and quarantine.origins are parsed when the settings are
 * finished: a malformed value fails there, so --check-config refuses it. */
START_TEST(site_kinds_and_origins_checked)
{
    static const char *const bad[][2] = {{"device.kinds", "gpu-vf=sometimes"},
                                         {"device.kinds", "gpu-vf"},
                                         {"device.kinds", "a=pins,a=migrates"},
                                         {"device.kinds", "gpu vf=pins"},
                                         {"device.kinds", ","},
                                         {"device.kinds", "=pins"},
                                         {"quarantine.origins", "drs"},
                                         {"quarantine.origins", "DRS;HA"},
                                         {"quarantine.origins", "NOBODY"},
                                         {"redis.sentinels", "127.0.0.1"},
                                         {"redis.sentinels", "a:1,b:0"},
                                         {"redis.sentinels", "a:1,,b:2"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pg_config_t *c = pg_config_new();
        ck_assert_int_eq(pg_config_set(c, bad[i][0], bad[i][1], 3, err, sizeof(err)),
                         0);
        ck_assert_msg(pg_config_finish(c, err, sizeof(err)) == PG_INPUT,
                      "%s = %s accepted", bad[i][0], bad[i][1]);
        ck_assert_msg(strstr(err, bad[i][0]) != NULL, "'%s' does not name %s", err,
                      bad[i][0]);
        pg_config_destroy(c);
    }
    pg_config_t *c = pg_config_new();
    pg_config_set(c, "device.kinds", " gpu-vf=pins , pci=migrates", 3, err,
                  sizeof(err));
    pg_config_set(c, "quarantine.origins", "DRS, API", 3, err, sizeof(err));
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), 0);
    ck_assert_uint_eq(c->site_kinds.n, 2);
    ck_assert_str_eq(c->site_kinds.kinds[0].kind, "gpu-vf");
    ck_assert(c->site_kinds.kinds[0].pins && !c->site_kinds.kinds[1].pins);
    ck_assert_uint_eq(c->quarantine_origins,
                      (1u << PG_ORIGIN_DRS) | (1u << PG_ORIGIN_API));
    const pg_policy_opts_t po = pg_config_policy_opts(c);
    bool pins;
    ck_assert_int_eq(pg_policy_classify(&po, "pci", &pins), PG_KIND_RULE_SITE);
    ck_assert(!pins);
    ck_assert_int_eq(pg_policy_classify(&po, "dgpu", &pins), PG_KIND_RULE_BUILTIN);
    ck_assert(pins);
    ck_assert_int_eq(pg_policy_classify(&po, "fpga", &pins), PG_KIND_RULE_NONE);
    ck_assert(pins);
    pg_config_destroy(c);
    /* The defaults: no site kind, quarantine blocks DRS. */
    c = pg_config_new();
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), 0);
    ck_assert_uint_eq(c->site_kinds.n, 0);
    ck_assert_uint_eq(c->quarantine_origins, 1u << PG_ORIGIN_DRS);
    pg_config_destroy(c);
}
END_TEST

/* metrics.listen is checked when the settings are finished, by the rules the
 * metrics server binds with, so --check-config refuses what run would. */
/* A Sentinel set needs the primary's name; a good list is accepted. */
START_TEST(sentinels_checked)
{
    pg_config_t *c = pg_config_new();
    ck_assert_int_eq(pg_config_set(c, "redis.sentinels", "127.0.0.1:26379, s2:26380", 3,
                                   err, sizeof(err)),
                     0);
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), 0);
    ck_assert_str_eq(c->redis_master_name, "pinguard");
    pg_config_destroy(c);
    c = pg_config_new();
    pg_config_set(c, "redis.sentinels", "127.0.0.1:26379", 3, err, sizeof(err));
    pg_config_set(c, "redis.master.name", "", 3, err, sizeof(err));
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), PG_INPUT);
    ck_assert_ptr_nonnull(strstr(err, "redis.master.name"));
    pg_config_destroy(c);
}
END_TEST

START_TEST(metrics_listen_checked)
{
    static const char *const good[] = {"127.0.0.1:9464", "0.0.0.0:0", "10.1.2.3:65535",
                                       ""};
    static const char *const bad[] = {
        "127.0.0.1:70000", "127.0.0.1:65536", "nosuchhost:9464", "localhost:9464",
        "999.1.1.1:1",     "127.0.0.1",       "127.0.0.1:",      ":9464",
        "127.0.0.1:80x",   "127.0.0.1:+80",   "127.0.0.1: 80",   "127.0.0.1:-1",
        "[::1]:9464",      "1.2.3:80",        "127.0.0.1:9464 ", "127.0.0.1:0000080"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        pg_config_t *c = pg_config_new();
        ck_assert_int_eq(pg_config_set(c, "metrics.listen", good[i], PG_CONFIG_SRC_FLAG,
                                       err, sizeof(err)),
                         0);
        ck_assert_msg(pg_config_finish(c, err, sizeof(err)) == 0, "'%s': %s", good[i],
                      err);
        pg_config_destroy(c);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pg_config_t *c = pg_config_new();
        ck_assert_int_eq(pg_config_set(c, "metrics.listen", bad[i], PG_CONFIG_SRC_FLAG,
                                       err, sizeof(err)),
                         0);
        err[0] = '\0';
        ck_assert_msg(pg_config_finish(c, err, sizeof(err)) == PG_INPUT,
                      "'%s' accepted", bad[i]);
        ck_assert_msg(strstr(err, "metrics.listen") != NULL && strstr(err, bad[i]),
                      "'%s': %s", bad[i], err);
        pg_config_destroy(c);
    }
}
END_TEST

/* Every integer setting refuses what is not a decimal integer, from any
 * source, naming the key; nothing is half-applied. */
START_TEST(integers_from_every_source)
{
    static const char *const keys[] = {"redis.port", "batch.max.messages",
                                       "redis.max.devices.per.vm", "health.stall.ms",
                                       "input.max.string.length"};
    static const char *const junk[] = {"", "many", "12x", "1e3", "0x10", "99999999999"};
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        for (size_t j = 0; j < sizeof(junk) / sizeof(junk[0]); j++) {
            pg_config_t *c = pg_config_new();
            char *before = capture(pg_config_print, c);
            ck_assert_int_eq(pg_config_set(c, keys[k], junk[j], PG_CONFIG_SRC_FLAG, err,
                                           sizeof(err)),
                             PG_INPUT);
            ck_assert_ptr_nonnull(strstr(err, keys[k]));
            char var[128], *env[] = {var, NULL};
            snprintf(var, sizeof(var), "PINGUARD_");
            for (const char *p = keys[k]; *p; p++) {
                char ch = *p == '.' ? '_' : (char)(*p - 'a' + 'A');
                size_t n = strlen(var);
                var[n] = ch;
                var[n + 1] = '\0';
            }
            snprintf(var + strlen(var), sizeof(var) - strlen(var), "=%s", junk[j]);
            ck_assert_int_eq(pg_config_load_env(c, env, err, sizeof(err)), PG_INPUT);
            ck_assert_ptr_nonnull(strstr(err, keys[k]));
            char *after = capture(pg_config_print, c);
            ck_assert_str_eq(before, after);
            free(before);
            free(after);
            pg_config_destroy(c);
        }
    }
}
END_TEST

START_TEST(secrets_hidden)
{
    pg_config_t *c = pg_config_new();
    const char *path = write_temp("s3cr3t-from-file\n");
    pg_config_set(c, "redis.password.file", path, 3, err, sizeof(err));
    pg_config_set(c, "kafka.sasl.password", "kafka-s3cr3t", 3, err, sizeof(err));
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), 0);
    unlink(path);
    ck_assert_str_eq(c->redis_password, "s3cr3t-from-file");
    char *shown = capture(pg_config_print, c);
    ck_assert_ptr_null(strstr(shown, "s3cr3t"));
    ck_assert_ptr_nonnull(strstr(shown, "redis.password = (set, hidden)"));
    ck_assert_ptr_nonnull(strstr(shown, "kafka.sasl.password = (set, hidden)"));
    free(shown);
    ck_assert(pg_config_key_is_secret("redis.password"));
    ck_assert(pg_config_key_is_secret("ssl.key.password"));
    ck_assert(!pg_config_key_is_secret("redis.host"));
    /* A bad value of a secret is not echoed back either. */
    pg_config_destroy(c);

    c = pg_config_new();
    pg_config_set(c, "redis.password.file", "/nonexistent/pw", 3, err, sizeof(err));
    ck_assert_int_eq(pg_config_finish(c, err, sizeof(err)), PG_INPUT);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/pw"));
    pg_config_destroy(c);
}
END_TEST

START_TEST(bad_file)
{
    pg_config_t *c = pg_config_new();
    const char *path = write_temp("redis.port = 1\njust words\n");
    ck_assert_int_eq(pg_config_load_file(c, path, err, sizeof(err)), PG_INPUT);
    ck_assert_ptr_nonnull(strstr(err, ":2:"));
    unlink(path);
    ck_assert_int_eq(pg_config_load_file(c, "/nonexistent.conf", err, sizeof(err)),
                     PG_INPUT);
    pg_config_destroy(c);
}
END_TEST

START_TEST(docs_match_table)
{
    const char *src = getenv("PG_SOURCE_DIR");
    ck_assert_ptr_nonnull(src);
    char path[1024];
    snprintf(path, sizeof(path), "%s/docs/CONFIG.md", src);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL,
                  "missing %s: run `pinguard config reference > docs/CONFIG.md`", path);
    char *doc = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&doc, &cap, '\0', f);
    fclose(f);
    ck_assert_int_gt(n, 0);
    char *ref = capture(reference_adapter, NULL);
    ck_assert_msg(
        strcmp(doc, ref) == 0,
        "docs/CONFIG.md is stale: run `pinguard config reference > docs/CONFIG.md`");
    free(ref);
    free(doc);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *t = tcase_create("config");
    tcase_add_test(t, spec_defaults);
    tcase_add_test(t, precedence_file_env_flag);
    tcase_add_test(t, bounds_and_types);
    tcase_add_test(t, cross_field_checks);
    tcase_add_test(t, metrics_listen_checked);
    tcase_add_test(t, site_kinds_and_origins_checked);
    tcase_add_test(t, sentinels_checked);
    tcase_add_test(t, integers_from_every_source);
    tcase_add_test(t, secrets_hidden);
    tcase_add_test(t, bad_file);
    tcase_add_test(t, docs_match_table);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

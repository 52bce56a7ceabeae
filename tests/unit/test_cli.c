/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the command line's helpers: durations as operators write
 * them (pin --for, audit --since), durations and times as the CLI prints
 * them, and the two-pass line input of import and publish, from a file and
 * from a pipe.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_internal.h"

START_TEST(durations_parsed)
{
    static const struct {
        const char *text;
        int64_t ms;
    } good[] = {{"500ms", 500},
                {"1ms", 1},
                {"90s", 90000},
                {"15m", 900000},
                {"2h", 7200000},
                {"1d", 86400000},
                {"007s", 7000},
                {"36500d", 36500LL * 86400000LL},
                {"3153600000000ms", 3153600000000LL}};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t ms = -1;
        ck_assert_msg(pg_cli_parse_duration(good[i].text, &ms) == 0, "%s refused",
                      good[i].text);
        ck_assert_int_eq(ms, good[i].ms);
    }
    static const char *const bad[] = {"",
                                      "0",
                                      "0s",
                                      "0ms",
                                      "-5s",
                                      "+5s",
                                      "5",
                                      "5 s",
                                      " 5s",
                                      "5s ",
                                      "1.5h",
                                      "2w",
                                      "5S",
                                      "h",
                                      "ms",
                                      "5sec",
                                      "5hh",
                                      "1h30m",
                                      "36501d",
                                      "3153600000001ms",
                                      "99999999999999999999ms",
                                      "9223372036854775807ms",
                                      "18446744073709551617s"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms = 42;
        ck_assert_msg(pg_cli_parse_duration(bad[i], &ms) == -1, "'%s' accepted",
                      bad[i]);
        ck_assert_int_eq(ms, 42);
    }
    int64_t ms;
    ck_assert_int_eq(pg_cli_parse_duration(NULL, &ms), -1);
}
END_TEST

START_TEST(durations_and_times_printed)
{
    static const struct {
        int64_t ms;
        const char *text;
    } cases[] = {
        {0, "0ms"},       {-3, "0ms"},   {850, "850ms"},        {1000, "1s"},
        {1999, "1s"},     {60000, "1m"}, {7199000, "1h59m59s"}, {90061000, "1d1h1m1s"},
        {172800000, "2d"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[48];
        pg_cli_format_ms(cases[i].ms, buf, sizeof(buf));
        ck_assert_str_eq(buf, cases[i].text);
    }
    char t[32];
    pg_cli_format_time(0, t, sizeof(t));
    ck_assert_str_eq(t, "1970-01-01T00:00:00Z");
    pg_cli_format_time(1796413364263LL, t, sizeof(t));
    ck_assert_str_eq(t, "2026-12-04T19:42:44Z");
}
END_TEST

/* The line checker of the tests below: "ok..." lines pass, others fail. */
static int check_ok(void *ctx, const char *line, size_t len, char *err, size_t errlen)
{
    size_t *n = ctx;
    if (len < 2 || memcmp(line, "ok", 2) != 0) {
        snprintf(err, errlen, "not ok");
        return PG_INPUT;
    }
    (*n)++;
    return PG_OK;
}

static const char LINES[] = "ok 1\n\n  \t\nok 2\nok 3"; /* blank lines; no last \n */

/* Both passes over an input: what the first counted, and the second's lines
 * with their numbers. */
static void two_passes(const char *path)
{
    pg_cli_lines_t in = {0};
    ck_assert_int_eq(pg_cli_lines_open(&in, "import", path), PG_OK);
    size_t n = 0;
    ck_assert_int_eq(pg_cli_lines_check(&in, check_ok, &n, "imported"), PG_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(in.lines, 5);
    static const struct {
        const char *text;
        size_t lineno;
    } want[] = {{"ok 1\n", 1}, {"ok 2\n", 4}, {"ok 3", 5}};
    const char *line;
    size_t len;
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq(pg_cli_lines_next(&in, &line, &len), 1);
        ck_assert_uint_eq(len, strlen(want[i].text));
        ck_assert(memcmp(line, want[i].text, len) == 0);
        ck_assert_uint_eq(in.lineno, want[i].lineno);
    }
    ck_assert_int_eq(pg_cli_lines_next(&in, &line, &len), 0);
    pg_cli_lines_close(&in);
    pg_cli_lines_close(&in); /* closing twice is harmless */
}

START_TEST(lines_from_a_file_twice)
{
    char path[] = "/tmp/pg-test-lines-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert(write(fd, LINES, sizeof(LINES) - 1) == (ssize_t)(sizeof(LINES) - 1));
    close(fd);
    two_passes(path);
    unlink(path);
}
END_TEST

START_TEST(lines_from_a_pipe_twice)
{
    /* stdin a pipe: the first pass keeps a copy for the second. */
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    ck_assert(write(p[1], LINES, sizeof(LINES) - 1) == (ssize_t)(sizeof(LINES) - 1));
    close(p[1]);
    ck_assert_int_ge(dup2(p[0], STDIN_FILENO), 0);
    close(p[0]);
    two_passes("-");
}
END_TEST

START_TEST(a_bad_line_stops_before_the_second_pass)
{
    char path[] = "/tmp/pg-test-lines-XXXXXX";
    int fd = mkstemp(path);
    static const char text[] = "ok\nbad\nok\n";
    ck_assert(write(fd, text, sizeof(text) - 1) == (ssize_t)(sizeof(text) - 1));
    close(fd);
    pg_cli_lines_t in = {0};
    ck_assert_int_eq(pg_cli_lines_open(&in, "import", path), PG_OK);
    size_t n = 0;
    ck_assert_int_eq(pg_cli_lines_check(&in, check_ok, &n, "imported"), PG_FATAL);
    ck_assert_uint_eq(n, 2); /* every line is still checked and reported */
    pg_cli_lines_close(&in);
    unlink(path);

    pg_cli_lines_t none = {0};
    ck_assert_int_eq(pg_cli_lines_open(&none, "import", "/nonexistent/x"), PG_FATAL);
    pg_cli_lines_close(&none);
}
END_TEST

int main(void)
{

    Suite *s = suite_create("cli");
    TCase *t = tcase_create("cli");
    tcase_add_test(t, durations_parsed);
    tcase_add_test(t, durations_and_times_printed);
    tcase_add_test(t, lines_from_a_file_twice);
    tcase_add_test(t, lines_from_a_pipe_twice);
    tcase_add_test(t, a_bad_line_stops_before_the_second_pass);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the command line's pure helpers: durations as operators write
 * them (pin --for, audit --since), and durations and times as the CLI prints
 * them.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

int main(void)
{
    Suite *s = suite_create("cli");
    TCase *t = tcase_create("cli");
    tcase_add_test(t, durations_parsed);
    tcase_add_test(t, durations_and_times_printed);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the Sentinel side of bindings: the list of sentinels as
 * configured, and the replies of sentinels and servers as Redis 7 sends them
 * (recorded RESP bytes fed through hiredis's own reader): an address, a nil
 * for an unknown name, errors, replies of the wrong shape; ROLE of a primary,
 * a replica and a sentinel; the replication id in INFO.
 */
#include <check.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "bindings_sentinel.h"

static redisReply *reply_of(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    ck_assert_ptr_nonnull(rd);
    ck_assert_int_eq(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    void *r = NULL;
    ck_assert_int_eq(redisReaderGetReply(rd, &r), REDIS_OK);
    ck_assert_ptr_nonnull(r);
    redisReaderFree(rd);
    return r;
}

START_TEST(list_parses)
{
    pg_redis_addr_t a[PG_SENTINEL_MAX];
    size_t n;
    char err[256];
    ck_assert_int_eq(
        pg_sentinel_parse_list("127.0.0.1:26379, sent-b:26380 ,[::1]:26381", a,
                               PG_SENTINEL_MAX, &n, err, sizeof(err)),
        PG_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(a[0].host, "127.0.0.1");
    ck_assert_int_eq(a[0].port, 26379);
    ck_assert_str_eq(a[1].host, "sent-b");
    ck_assert_int_eq(a[1].port, 26380);
    ck_assert_str_eq(a[2].host, "::1");
    ck_assert_int_eq(a[2].port, 26381);
}
END_TEST

START_TEST(list_refuses)
{
    static const char *const bad[] = {
        "",     "  ",       "host",     "host:",        ":26379", "host:0", "h:65536",
        "h:2x", "h:26379,", ",h:26379", "h:26379,,h:1", "h o:1",  "[]:1",
    };
    pg_redis_addr_t a[PG_SENTINEL_MAX];
    size_t n;
    char err[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(pg_sentinel_parse_list(bad[i], a, PG_SENTINEL_MAX, &n, err,
                                             sizeof(err)) == PG_INPUT,
                      "accepted \"%s\"", bad[i]);
        ck_assert_ptr_nonnull(strstr(err, "redis.sentinels"));
    }
    ck_assert_int_eq(pg_sentinel_parse_list("a:1,b:2,c:3", a, 2, &n, err, sizeof(err)),
                     PG_INPUT);
    ck_assert_ptr_nonnull(strstr(err, "more than 2"));
}
END_TEST

START_TEST(addr_replies)
{
    pg_redis_addr_t a;
    char err[256];
    redisReply *r = reply_of("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n");
    ck_assert_int_eq(pg_sentinel_parse_addr(r, &a, err, sizeof(err)), PG_OK);
    ck_assert_str_eq(a.host, "127.0.0.1");
    ck_assert_int_eq(a.port, 6380);
    freeReplyObject(r);
    /* The name is not monitored: nil (RESP2), worth asking another. */
    r = reply_of("$-1\r\n");
    ck_assert_int_eq(pg_sentinel_parse_addr(r, &a, err, sizeof(err)), PG_RETRY);
    freeReplyObject(r);
    r = reply_of("*-1\r\n");
    ck_assert_int_eq(pg_sentinel_parse_addr(r, &a, err, sizeof(err)), PG_RETRY);
    freeReplyObject(r);
    r = reply_of("-IDONTKNOW No good slave to failover\r\n");
    ck_assert_int_eq(pg_sentinel_parse_addr(r, &a, err, sizeof(err)), PG_RETRY);
    ck_assert_ptr_nonnull(strstr(err, "IDONTKNOW"));
    freeReplyObject(r);
    static const char *const odd[] = {
        "*1\r\n$9\r\n127.0.0.1\r\n",
        "*2\r\n$9\r\n127.0.0.1\r\n:6380\r\n",
        "*2\r\n$0\r\n\r\n$4\r\n6380\r\n",
        "*2\r\n$9\r\n127.0.0.1\r\n$5\r\n99999\r\n",
        "*2\r\n$9\r\n127.0.0.1\r\n$4\r\n63a0\r\n",
        "*3\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nx\r\n",
        "+OK\r\n",
    };
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        r = reply_of(odd[i]);
        ck_assert_msg(pg_sentinel_parse_addr(r, &a, err, sizeof(err)) == PG_INPUT,
                      "accepted reply %zu", i);
        freeReplyObject(r);
    }
    ck_assert_int_eq(pg_sentinel_parse_addr(NULL, &a, err, sizeof(err)), PG_RETRY);
}
END_TEST

START_TEST(role_replies)
{
    bool primary;
    char err[256];
    redisReply *r =
        reply_of("*3\r\n$6\r\nmaster\r\n:4242\r\n*1\r\n*3\r\n$9\r\n127.0.0.1"
                 "\r\n$4\r\n6380\r\n$4\r\n4242\r\n");
    ck_assert_int_eq(pg_sentinel_parse_role(r, &primary, err, sizeof(err)), PG_OK);
    ck_assert(primary);
    freeReplyObject(r);
    r = reply_of("*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n"
                 ":4242\r\n");
    ck_assert_int_eq(pg_sentinel_parse_role(r, &primary, err, sizeof(err)), PG_OK);
    ck_assert(!primary);
    freeReplyObject(r);
    r = reply_of("*2\r\n$8\r\nsentinel\r\n*1\r\n$8\r\npinguard\r\n");
    ck_assert_int_eq(pg_sentinel_parse_role(r, &primary, err, sizeof(err)), PG_OK);
    ck_assert(!primary);
    freeReplyObject(r);
    r = reply_of("-ERR unknown command 'ROLE'\r\n");
    ck_assert_int_eq(pg_sentinel_parse_role(r, &primary, err, sizeof(err)), PG_INPUT);
    freeReplyObject(r);
    r = reply_of("*0\r\n");
    ck_assert_int_eq(pg_sentinel_parse_role(r, &primary, err, sizeof(err)), PG_INPUT);
    freeReplyObject(r);
}
END_TEST

START_TEST(replid)
{
    char id[41];
    const char *info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n"
                       "master_failover_state:no-failover\r\n"
                       "master_replid:8b1d5a0c6c2f0c6d0e1f2a3b4c5d6e7f80912345\r\n"
                       "master_replid2:0000000000000000000000000000000000000000\r\n";
    ck_assert_int_eq(pg_sentinel_parse_replid(info, strlen(info), id), PG_OK);
    ck_assert_str_eq(id, "8b1d5a0c6c2f0c6d0e1f2a3b4c5d6e7f80912345");
    /* master_replid2 alone is not it. */
    const char *only2 = "# Replication\r\nmaster_replid2:abc\r\n";
    ck_assert_int_eq(pg_sentinel_parse_replid(only2, strlen(only2), id), PG_INPUT);
    ck_assert_int_eq(pg_sentinel_parse_replid("", 0, id), PG_INPUT);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sentinel");
    TCase *t = tcase_create("parse");
    tcase_add_test(t, list_parses);
    tcase_add_test(t, list_refuses);
    tcase_add_test(t, addr_replies);
    tcase_add_test(t, role_replies);
    tcase_add_test(t, replid);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The Kafka side of pinguard over librdkafka 2.0.2: the clients, their
 * callbacks, polling, producing, and one batch's delivery in either mode
 * (the configurations are in kafka_conf.c, the transactions in kafka_txn.c,
 * the lag in kafka_lag.c, the settle ring in kafka_ring.c). Offsets are stored by
 * hand (enable.auto.offset.store=false) only for inputs whose outputs the
 * broker acknowledged, and auto-commit sends what is stored; on revoke the
 * stored offsets are committed synchronously before the partitions go, so a
 * new owner starts exactly after the last acknowledged decision.
 * In exactly-once mode the producer is transactional: each batch's decisions
 * and its input offsets commit together, consumers of the outputs read
 * read_committed, and an abort rewinds the consumer to the committed offsets
 * (the flow of librdkafka's examples/transactions.c).
 * Nothing is consumed before every output topic is known to exist and its
 * size limit read; a client state librdkafka cannot leave (a fatal error,
 * failed authentication) ends the process through PG_FATAL.
 */
#include "kafka_internal.h"

#include "log.h"
#include "util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int waker_start(pg_kafka_t *k);
static void waker_stop(pg_kafka_t *k);

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    pg_log_level_t l = level <= 3   ? PG_LOG_ERROR
                       : level <= 4 ? PG_LOG_WARN
                       : level <= 6 ? PG_LOG_INFO
                                    : PG_LOG_DEBUG;
    pg_log(l, "kafka_log", "client", rd_kafka_name(rk), "facility", fac, "message", buf,
           NULL);
}

/* Wrong credentials and missing permissions do not heal by retrying. */
static bool is_auth_error(rd_kafka_resp_err_t err)
{
    return err == RD_KAFKA_RESP_ERR__AUTHENTICATION ||
           err == RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED ||
           err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
           err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED;
}

/* Records the first cause of a state the client cannot leave, with the
 * setting an operator should look at. */
static void set_fatal(pg_kafka_t *k, rd_kafka_resp_err_t err, const char *reason)
{
    if (k->fatal)
        return;
    const char *hint = "";
    if (is_auth_error(err))
        hint = " (check the kafka.sasl.* and kafka.ssl.* settings)";
    else if (err == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID)
        hint = " (another consumer runs with the same kafka.group.instance.id)";
    else if (err == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
             err == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH)
        hint = " (another producer runs with the same kafka.transactional.id)";
    snprintf(k->fatal_reason, sizeof(k->fatal_reason), "%s: %s%s",
             rd_kafka_err2name(err), reason, hint);
    k->fatal = true;
}

/* A fatal error of either client, read from librdkafka itself: the consumer
 * reports its own (a fenced static member) only as one message of
 * rd_kafka_consumer_poll, the producer through on_error, and either may be
 * raised while nothing is polled. */
static void read_fatal(pg_kafka_t *k)
{
    rd_kafka_t *clients[] = {k->consumer, k->producer};
    for (size_t i = 0; !k->fatal && i < sizeof(clients) / sizeof(clients[0]); i++) {
        char why[512];
        rd_kafka_resp_err_t err =
            clients[i] ? rd_kafka_fatal_error(clients[i], why, sizeof(why)) : 0;
        if (err)
            set_fatal(k, err, why);
    }
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    pg_kafka_t *k = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        set_fatal(k, orig ? orig : (rd_kafka_resp_err_t)err, orig ? why : reason);
    } else if (is_auth_error((rd_kafka_resp_err_t)err)) {
        set_fatal(k, (rd_kafka_resp_err_t)err, reason);
    }
    pg_log(k->fatal ? PG_LOG_ERROR : PG_LOG_WARN, "kafka_error", "client",
           rd_kafka_name(rk), "error", rd_kafka_err2name(err), "reason", reason, NULL);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    pg_delivery_state_t *state = m->_private;
    if (m->err) {
        pg_log_warn("delivery_failed", "topic", rd_kafka_topic_name(m->rkt), "error",
                    rd_kafka_err2str(m->err), NULL);
        *state = PG_DELIVERY_FAILED;
    } else {
        *state = PG_DELIVERY_OK;
    }
}

/* "topic:0,1,2 other:3" for logs; cut short (ending "...") when long. */
static void partition_list(const rd_kafka_topic_partition_list_t *parts, char *buf,
                           size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int i = 0; i < parts->cnt && off + 16 < len; i++) {
        bool same =
            i > 0 && strcmp(parts->elems[i].topic, parts->elems[i - 1].topic) == 0;
        int n =
            same ? snprintf(buf + off, len - off, ",%d", (int)parts->elems[i].partition)
                 : snprintf(buf + off, len - off, "%s%s:%d", i ? " " : "",
                            parts->elems[i].topic, (int)parts->elems[i].partition);
        if (n < 0 || (size_t)n >= len - off) {
            snprintf(buf + (off < len - 4 ? off : len - 4), 4, "...");
            return;
        }
        off += (size_t)n;
    }
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    pg_kafka_t *k = opaque;
    k->generation++;
    k->paused = false; /* pause state does not survive a rebalance */
    atomic_fetch_add(&k->rebalances, 1);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        char list[1024];
        partition_list(parts, list, sizeof(list));
        pg_log_info("partitions_assigned", "#count", (long long)parts->cnt,
                    "partitions", list, NULL);
        rd_kafka_resp_err_t aerr = rd_kafka_assign(rk, parts);
        if (aerr) {
            /* A consumer that cannot take its partitions holds them from the
             * group without reading them: end the process. */
            pg_log_error("assign_failed", "error", rd_kafka_err2str(aerr), NULL);
            set_fatal(k, aerr, "assigning the partitions failed");
            return;
        }
        atomic_store(&k->assigned, (unsigned long long)parts->cnt);
        atomic_store(&k->joined, true);
        return;
    }
    atomic_store(&k->assigned, 0ULL);
    if (k->transactional && k->txn_open) {
        /* A transaction open across batches commits what it holds while the
         * partitions are still ours (the group's generation is still the
         * one its offsets are sent with); failing that it aborts. */
        char terr[512];
        if (pg_kafka_txn_end(k, false, terr, sizeof(terr)) == PG_FATAL) {
            pg_log_error("revoke_commit_failed", "error", terr, NULL);
            set_fatal(k, RD_KAFKA_RESP_ERR__FATAL, terr);
        }
    }
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        /* Hand over exactly what was acknowledged: wait for the outputs in
         * flight first. Transactions carry their own offsets (ended above). */
        if (!k->transactional) {
            char serr[256];
            if (pg_kafka_pending_settle(k, true, NULL, serr, sizeof(serr)) < 0)
                pg_log_warn("settle_failed", "error", serr, NULL);
            rd_kafka_resp_err_t cerr = rd_kafka_commit(rk, NULL, 0);
            if (cerr && cerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
                pg_log_warn("revoke_commit_failed", "error", rd_kafka_err2str(cerr),
                            NULL);
        }
        pg_log_info("partitions_revoked", "#count", (long long)parts->cnt, NULL);
    } else {
        pg_log_error("rebalance_error", "error", rd_kafka_err2str(err), NULL);
    }
    rd_kafka_resp_err_t uerr = rd_kafka_assign(rk, NULL);
    if (uerr && uerr != RD_KAFKA_RESP_ERR__DESTROY) { /* __DESTROY: closing anyway */
        pg_log_error("unassign_failed", "error", rd_kafka_err2str(uerr), NULL);
        set_fatal(k, uerr, "giving up the partitions failed");
    }
}

/* librdkafka's statistics (when kafka.statistics.interval.ms is set): the
 * requests each client sent, by type, summed over its brokers. The counts in
 * the JSON are totals since the client started. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    pg_kafka_t *k = opaque;
    int c = rd_kafka_type(rk) == RD_KAFKA_CONSUMER ? 0 : 1;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    json_t *brokers = json_object_get(root, "brokers");
    unsigned long long sum[PG_M_KAFKA_REQ_TYPES] = {0};
    const char *name;
    json_t *b;
    json_object_foreach(brokers, name, b)
    {
        json_t *req = json_object_get(b, "req");
        for (int r = 0; r < PG_M_KAFKA_REQ_TYPES; r++) {
            json_t *v = json_object_get(req, pg_metrics_kafka_requests[r]);
            if (json_is_integer(v) && json_integer_value(v) > 0)
                sum[r] += (unsigned long long)json_integer_value(v);
        }
    }
    if (root != NULL) {
        for (int r = 0; r < PG_M_KAFKA_REQ_TYPES; r++)
            atomic_store(&k->requests[c][r], sum[r]);
        atomic_store(&k->stats, true);
    }
    json_decref(root);
    return 0; /* librdkafka frees json */
}

void pg_kafka_conf_callbacks(pg_kafka_t *k, rd_kafka_conf_t *conf, bool consumer)
{
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    if (consumer)
        rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    else
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
}

bool pg_kafka_stopping(const pg_kafka_t *k)
{
    return k->stop != NULL && *k->stop;
}

static const char *const out_setting[PG_OUT_COUNT] = {
    "topic.advice.filtered", "topic.decisions", "topic.release", "topic.dlq",
    "topic.audit"};

/* Outputs sharing a topic with an earlier one are checked once. */
static bool out_seen_before(const pg_kafka_t *k, int o)
{
    for (int i = 0; i < o; i++)
        if (strcmp(rd_kafka_topic_name(k->out[i]), rd_kafka_topic_name(k->out[o])) == 0)
            return true;
    return false;
}

/* A missing output topic would fail every decision for good, and in exactly-
 * once mode only at the commit: refuse to consume instead. One metadata
 * request for the topics this producer knows (the outputs), waiting at most
 * timeout_ms for a broker to answer. Returns 1 when every output exists, 0
 * when no broker answered (or a topic is still being created:
 * LEADER_NOT_AVAILABLE), -1 with errbuf naming the missing topics, or on a
 * fatal state (on_error is served here: wrong credentials end the wait). */
static int check_outputs_once(pg_kafka_t *k, int timeout_ms, char *errbuf,
                              size_t errlen)
{
    int64_t t0 = pg_now_mono_ms();
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(k->producer, 0, NULL, &md, timeout_ms);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        size_t off = 0;
        bool again = false;
        for (int o = 0; o < PG_OUT_COUNT; o++) {
            if (!k->out_used[o])
                continue;
            const char *name = rd_kafka_topic_name(k->out[o]);
            rd_kafka_resp_err_t terr = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
            for (int i = 0; i < md->topic_cnt; i++)
                if (strcmp(md->topics[i].topic, name) == 0)
                    terr = md->topics[i].err;
            if (terr == RD_KAFKA_RESP_ERR_NO_ERROR || out_seen_before(k, o))
                continue;
            if (terr == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE) {
                again = true;
                continue;
            }
            bool missing = terr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
            int n = snprintf(errbuf + off, off < errlen ? errlen - off : 0,
                             "%soutput topic %s (%s)%s%s", off == 0 ? "kafka: " : "; ",
                             name, out_setting[o], missing ? " does not exist" : ": ",
                             missing ? "" : rd_kafka_err2str(terr));
            off += n > 0 ? (size_t)n : 0;
        }
        rd_kafka_metadata_destroy(md);
        if (off > 0)
            return -1;
        if (!again)
            return 1;
    }
    /* Serves on_error, and paces a request that failed at once. */
    int left = timeout_ms - (int)(pg_now_mono_ms() - t0);
    rd_kafka_poll(k->producer, left > 0 ? left : 0);
    return pg_kafka_check_fatal(k, errbuf, errlen) != 0 ? -1 : 0;
}

/* Each output's limit starts as the producer's message.max.bytes and is
 * lowered to its topic's max.message.bytes, read with one DescribeConfigs
 * request. Without an answer (no DescribeConfigs permission, an old broker,
 * a timeout) the producer's limit stands and the broker refuses what the
 * topic cannot take: said once here. Returns 1, or 0 on a stop request. */
static int read_output_limits(pg_kafka_t *k)
{
    size_t msg_max = k->msg_max, batch_max = k->batch_max;
    rd_kafka_ConfigResource_t *res[PG_OUT_COUNT];
    size_t nres = 0;
    char why[512] = "";
    int rc = 1;
    for (int o = 0; o < PG_OUT_COUNT; o++) {
        k->out_max[o] = msg_max;
        if (k->out_used[o] && !out_seen_before(k, o))
            res[nres++] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC,
                                                      rd_kafka_topic_name(k->out[o]));
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->producer);
    rd_kafka_AdminOptions_t *opts =
        rd_kafka_AdminOptions_new(k->producer, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    char oerr[256];
    rd_kafka_AdminOptions_set_request_timeout(opts, 10000, oerr, sizeof(oerr));
    rd_kafka_DescribeConfigs(k->producer, res, nres, opts, q);
    rd_kafka_event_t *ev = NULL;
    int64_t deadline = pg_now_mono_ms() + 12000;
    while (ev == NULL && pg_now_mono_ms() < deadline) {
        if (pg_kafka_stopping(k)) {
            rc = 0;
            goto out;
        }
        ev = rd_kafka_queue_poll(q, 500);
    }
    if (ev == NULL) {
        snprintf(why, sizeof(why), "DescribeConfigs: no answer");
    } else if (rd_kafka_event_error(ev)) {
        snprintf(why, sizeof(why), "DescribeConfigs: %s",
                 rd_kafka_event_error_string(ev));
    } else {
        size_t cnt = 0;
        const rd_kafka_ConfigResource_t **rs =
            rd_kafka_DescribeConfigs_result_resources(
                rd_kafka_event_DescribeConfigs_result(ev), &cnt);
        for (size_t r = 0; r < cnt; r++) {
            const char *topic = rd_kafka_ConfigResource_name(rs[r]);
            if (rd_kafka_ConfigResource_error(rs[r])) {
                snprintf(why, sizeof(why), "DescribeConfigs %s: %s", topic,
                         rd_kafka_ConfigResource_error_string(rs[r]));
                continue;
            }
            size_t nc = 0;
            const rd_kafka_ConfigEntry_t **cs =
                rd_kafka_ConfigResource_configs(rs[r], &nc);
            for (size_t c = 0; c < nc; c++) {
                const char *v = rd_kafka_ConfigEntry_value(cs[c]);
                if (strcmp(rd_kafka_ConfigEntry_name(cs[c]), "max.message.bytes") !=
                        0 ||
                    v == NULL)
                    continue;
                char *end;
                unsigned long long limit = strtoull(v, &end, 10);
                if (end == v || *end != '\0')
                    continue;
                for (int o = 0; o < PG_OUT_COUNT; o++)
                    if (strcmp(rd_kafka_topic_name(k->out[o]), topic) == 0 &&
                        limit < k->out_max[o])
                        k->out_max[o] = (size_t)limit;
                /* librdkafka 2.0.2 fills a batch up to the smaller of
                 * message.max.bytes and batch.size and does not split one the
                 * broker refuses: every record in it fails. */
                if (limit < batch_max) {
                    char lim[32];
                    snprintf(lim, sizeof(lim), "%llu", limit);
                    pg_log_warn(
                        "output_batches_over_topic_limit", "topic", topic,
                        "max.message.bytes", lim, "hint",
                        "set kafka.batch.size (and kafka.message.max.bytes) to at "
                        "most the topic's max.message.bytes",
                        NULL);
                }
            }
        }
    }
    if (why[0] != '\0')
        pg_log_warn("output_limits_unknown", "error", why, "fallback",
                    "the producer's message.max.bytes", NULL);
    if (k->role != PG_KAFKA_WORKER)
        pg_log_info("output_limits", "#dlq",
                    (long long)pg_kafka_output_max_bytes(k, PG_OUT_DLQ), NULL);
    else
        pg_log_info("output_limits", "#advice.filtered",
                    (long long)pg_kafka_output_max_bytes(k, PG_OUT_FILTERED),
                    "#decisions",
                    (long long)pg_kafka_output_max_bytes(k, PG_OUT_DECISIONS),
                    "#release", (long long)pg_kafka_output_max_bytes(k, PG_OUT_RELEASE),
                    "#dlq", (long long)pg_kafka_output_max_bytes(k, PG_OUT_DLQ), NULL);
out:
    if (ev != NULL)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_queue_destroy(q);
    rd_kafka_ConfigResource_destroy_array(res, nres);
    return rc;
}

static bool consumer_error(pg_kafka_t *k, const rd_kafka_message_t *m);

/* What comes before the first input: the output topics checked, their
 * limits read, the subscription made (so the group is joined only then).
 * pg_kafka_new tries for a moment; when no broker answers that soon,
 * pg_kafka_poll_batch goes on trying, a slice at a time, so the worker is
 * up (health, metrics, stop requests) while it waits for the brokers.
 * Returns 1 when done, 0 not yet (no answer, or a stop request), -1 with
 * errbuf filled. */
static int start_consuming(pg_kafka_t *k, int timeout_ms, char *errbuf, size_t errlen)
{
    /* The consumer's error callbacks and events, served while it waits. */
    rd_kafka_message_t *m;
    while ((m = rd_kafka_consumer_poll(k->consumer, 0)) != NULL) {
        if (m->err)
            consumer_error(k, m);
        rd_kafka_message_destroy(m);
    }
    int rc = check_outputs_once(k, timeout_ms, errbuf, errlen);
    if (rc <= 0 || pg_kafka_stopping(k) || read_output_limits(k) == 0)
        return rc < 0 ? -1 : 0;
    if (k->role == PG_KAFKA_REBUILD) {
        /* Every partition from its beginning, no group: a replay. */
        rd_kafka_topic_partition_list_t *parts = NULL;
        if (pg_kafka_input_partitions(k, &parts, errbuf, errlen) != 0)
            return 0;
        for (int i = 0; i < parts->cnt; i++)
            parts->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_resp_err_t aerr = rd_kafka_assign(k->consumer, parts);
        atomic_store(&k->assigned, (unsigned long long)parts->cnt);
        rd_kafka_topic_partition_list_destroy(parts);
        if (aerr) {
            pg_errf(errbuf, errlen, "kafka assign: %s", rd_kafka_err2str(aerr));
            return -1;
        }
        atomic_store(&k->joined, true);
        k->subscribed = true;
        return 1;
    }
    rd_kafka_topic_partition_list_t *topics =
        rd_kafka_topic_partition_list_new((int)k->n_in);
    for (size_t i = 0; i < k->n_in; i++)
        rd_kafka_topic_partition_list_add(topics, k->in_topics[i],
                                          RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t serr = rd_kafka_subscribe(k->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (serr) {
        pg_errf(errbuf, errlen, "kafka subscribe: %s", rd_kafka_err2str(serr));
        return -1;
    }
    k->subscribed = true;
    return 1;
}

/* How long pg_kafka_new waits for the output check before leaving it to
 * pg_kafka_poll_batch: a reachable cluster answers in milliseconds. */
enum { START_CHECK_MS = 1500 };

void pg_kafka_init_consumed(pg_kafka_t *k)
{
    for (int i = 0; i < PG_IN_COUNT; i++)
        for (int p = 0; p < TRACKED_PARTITIONS; p++)
            atomic_init(&k->consumed[i][p], -1);
}

pg_kafka_t *pg_kafka_new(const pg_config_t *cfg, volatile sig_atomic_t *stop,
                         char *errbuf, size_t errlen)
{
    return pg_kafka_new_role(cfg, PG_KAFKA_WORKER, stop, errbuf, errlen);
}

pg_kafka_t *pg_kafka_new_role(const pg_config_t *cfg, pg_kafka_role_t role,
                              volatile sig_atomic_t *stop, char *errbuf, size_t errlen)
{
    char err[512];
    rd_kafka_conf_t *conf = NULL;
    pg_kafka_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        pg_errf(errbuf, errlen, "out of memory");
        return NULL;
    }
    k->cfg = cfg;
    k->stop = stop;
    k->role = role;
    pg_kafka_init_consumed(k);
    if (role == PG_KAFKA_WORKER) {
        k->transactional = cfg->delivery == PG_DELIVERY_EXACTLY_ONCE;
        k->in_topics[PG_IN_ADVICE] = cfg->topic_advice;
        k->in_topics[PG_IN_REQUESTS] = cfg->topic_requests;
        k->in_topics[PG_IN_RESULTS] = cfg->topic_results;
        k->n_in = PG_IN_COUNT;
        for (int o = 0; o < PG_OUT_COUNT; o++)
            k->out_used[o] = true;
    } else {
        k->in_topics[0] = cfg->topic_bindings;
        k->n_in = 1;
        k->out_used[PG_OUT_DLQ] = true;
    }
    k->batch_cap = (size_t)cfg->batch_max_messages;
    /* A transaction spans at most TXN_MAX_BATCHES full batches. */
    k->txn_cap = cfg->txn_max_ms > 0 ? TXN_MAX_BATCHES * k->batch_cap : k->batch_cap;
    if (!k->transactional) {
        /* Room for a few batches in flight; more only waits for the broker. */
        if (pg_kafka_ring_init(&k->pending, 4 * k->batch_cap) != 0) {
            pg_errf(errbuf, errlen, "out of memory");
            goto fail;
        }
    } else if ((k->txn_states = calloc(k->batch_cap, sizeof(*k->txn_states))) == NULL) {
        pg_errf(errbuf, errlen, "out of memory");
        goto fail;
    }

    if ((conf = pg_kafka_conf_make(k, false, errbuf, errlen)) == NULL)
        goto fail;
    /* librdkafka's defaults when unset: 1000000 both. */
    k->msg_max = pg_kafka_conf_size(conf, "message.max.bytes", 1000000);
    k->batch_max = pg_kafka_conf_size(conf, "batch.size", 1000000);
    if (k->msg_max < k->batch_max)
        k->batch_max = k->msg_max;
    for (int o = 0; o < PG_OUT_COUNT; o++)
        k->out_max[o] = k->msg_max; /* until the topics' limits are read */
    k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (k->producer == NULL) {
        pg_errf(errbuf, errlen, "kafka producer: %s", err);
        goto fail; /* conf is still ours on failure */
    }
    conf = NULL;
    if (k->transactional && pg_kafka_txn_init(k, errbuf, errlen) != 0)
        goto fail;
    const char *out_names[PG_OUT_COUNT] = {cfg->topic_filtered, cfg->topic_decisions,
                                           cfg->topic_release, cfg->topic_dlq,
                                           cfg->topic_audit};
    for (int i = 0; i < PG_OUT_COUNT; i++) {
        k->out[i] = rd_kafka_topic_new(k->producer, out_names[i], NULL);
        if (k->out[i] == NULL) {
            pg_errf(errbuf, errlen, "kafka topic %s: %s", out_names[i],
                    rd_kafka_err2str(rd_kafka_last_error()));
            goto fail;
        }
    }
    if ((conf = pg_kafka_conf_make(k, true, errbuf, errlen)) == NULL)
        goto fail;
    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (k->consumer == NULL) {
        pg_errf(errbuf, errlen, "kafka consumer: %s", err);
        goto fail;
    }
    conf = NULL;
    rd_kafka_poll_set_consumer(k->consumer);
    if (waker_start(k) != 0) {
        pg_errf(errbuf, errlen, "cannot start the fetcher's waker thread");
        goto fail;
    }

    int64_t until = pg_now_mono_ms() + START_CHECK_MS;
    int rc = 0;
    while (rc == 0 && !pg_kafka_stopping(k) && pg_now_mono_ms() < until)
        rc = start_consuming(k, 500, errbuf, errlen);
    if (rc == 0 && pg_kafka_stopping(k)) {
        pg_errf(errbuf, errlen, "stopped while checking the output topics");
        goto fail;
    }
    if (rc < 0)
        goto fail;
    if (rc == 0)
        pg_log_warn("output_check_deferred", "why", "no broker answered yet", "then",
                    "the output topics are checked before the first input", NULL);
    return k;
fail:
    if (conf != NULL)
        rd_kafka_conf_destroy(conf);
    pg_kafka_destroy(k);
    return NULL;
}

void pg_kafka_destroy(pg_kafka_t *k)
{
    if (k == NULL)
        return;
    if (k->consumer != NULL) {
        /* Outputs still in flight are waited for, so that closing commits
         * their inputs' offsets. */
        char err0[256];
        if (k->producer != NULL &&
            pg_kafka_pending_settle(k, true, NULL, err0, sizeof(err0)) < 0)
            pg_log_warn("settle_failed", "error", err0, NULL);
        pg_kafka_ring_pop(&k->pending, k->pending.len, false, k->settled_fn,
                          k->settled_ctx);
        waker_stop(k);
        /* Batches a transaction holds whole commit; one stopped half-way
         * (the process is failing) aborts it with them. */
        char why[64];
        if (k->txn_open && rd_kafka_fatal_error(k->producer, why, sizeof(why)) == 0) {
            char terr[512];
            if (pg_kafka_txn_end(k, false, terr, sizeof(terr)) != PG_OK)
                pg_log_warn("final_commit_failed", "error", terr, NULL);
        }
        /* A consumer in a fatal state refuses close (and any commit):
         * rd_kafka_destroy alone tears it down without leaving the group. */
        if (rd_kafka_fatal_error(k->consumer, why, sizeof(why)) == 0) {
            rd_kafka_resp_err_t err = rd_kafka_consumer_close(k->consumer);
            if (err)
                pg_log_warn("consumer_close_failed", "error", rd_kafka_err2str(err),
                            NULL);
        }
        rd_kafka_destroy(k->consumer);
    }
    if (k->producer != NULL) {
        /* Nothing queued (never started, or everything answered): no wait. */
        if (rd_kafka_outq_len(k->producer) > 0)
            rd_kafka_flush(k->producer, 10000);
        for (int i = 0; i < PG_OUT_COUNT; i++)
            if (k->out[i] != NULL)
                rd_kafka_topic_destroy(k->out[i]);
        rd_kafka_destroy(k->producer);
    }
    pg_kafka_ring_free(&k->pending);
    free(k->txn_states);
    pg_kafka_txn_free(k);
    free(k);
}

uint64_t pg_kafka_generation(const pg_kafka_t *k)
{
    return k->generation;
}

size_t pg_kafka_output_max_bytes(const pg_kafka_t *k, pg_output_t out)
{
    size_t limit = k->out_max[out];
    return limit > PG_KAFKA_RECORD_MARGIN ? limit - PG_KAFKA_RECORD_MARGIN : 0;
}

int pg_kafka_dead_letter(pg_kafka_t *k, const pg_kafka_msg_t *m, const char *reason,
                         const char *detail, pg_delivery_state_t *state, char *errbuf,
                         size_t errlen)
{
    char error[400], partition[16], offset[24];
    snprintf(partition, sizeof(partition), "%d", (int)m->partition);
    snprintf(offset, sizeof(offset), "%lld", (long long)m->offset);
    const pg_kafka_header_t headers[] = {
        {"pinguard-error", error},
        {"pinguard-source-topic", m->topic},
        {"pinguard-source-partition", partition},
        {"pinguard-source-offset", offset},
    };
    size_t head_bytes = 0;
    snprintf(error, sizeof(error), "%s: %s", reason, detail);
    for (size_t h = 0; h < 4; h++)
        head_bytes += strlen(headers[h].name) + strlen(headers[h].value);
    size_t limit = pg_kafka_output_max_bytes(k, PG_OUT_DLQ);
    const void *key = m->key, *value = m->payload;
    size_t key_len = m->key_len, len = m->len;
    for (int attempt = 0;; attempt++) {
        if (attempt > 0 || head_bytes + key_len + len > limit) {
            /* Headers alone: the source topic, partition and offset say where
             * the original still is. A key too large goes too. */
            if (value != NULL || len > 0)
                snprintf(error, sizeof(error),
                         "INPUT_TOO_LARGE: %zu bytes, over %zu; %s: %s",
                         m->len + m->key_len, limit, reason, detail);
            value = NULL;
            len = 0;
            if (head_bytes + key_len > limit || attempt > 1) {
                key = NULL;
                key_len = 0;
            }
        }
        if (attempt == 0)
            pg_log_warn("input_dead_lettered", "topic", m->topic, "#partition",
                        (long long)m->partition, "#offset", (long long)m->offset,
                        "error", error, NULL);
        int rc = pg_kafka_produce(k, PG_OUT_DLQ, key, key_len, value, len, headers, 4,
                                  state, errbuf, errlen);
        if (rc != PG_INPUT || attempt >= 2)
            return rc == PG_INPUT ? PG_RETRY : rc;
    }
}

int pg_kafka_check_fatal(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    read_fatal(k);
    if (!k->fatal)
        return 0;
    pg_errf(errbuf, errlen, "kafka: %s", k->fatal_reason);
    return PG_FATAL;
}

void pg_kafka_batch_release(pg_kafka_msg_t *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rd_kafka_message_destroy(msgs[i].handle);
        msgs[i].handle = NULL;
    }
}

int pg_kafka_input_of(const pg_kafka_t *k, const char *topic)
{
    for (int i = 0; i < (int)k->n_in; i++)
        if (strcmp(topic, k->in_topics[i]) == 0)
            return i;
    return -1;
}

/* Consumer-side errors arrive as messages. Most are informational (a broker
 * went away and will be reconnected); a missing topic is logged once a poll.
 * A few leave the consumer unable to go on: a librdkafka fatal error (its
 * cause read with rd_kafka_fatal_error; in 2.0.2 a static member fenced by
 * a newer one with the same group.instance.id arrives so, from the
 * heartbeat, JoinGroup or SyncGroup answer), and failed authorisation.
 * Returns true for those, with k->fatal set. */
static bool consumer_error(pg_kafka_t *k, const rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(k->consumer, why, sizeof(why));
        set_fatal(k, orig ? orig : m->err, orig ? why : rd_kafka_message_errstr(m));
    } else if (m->err == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID ||
               is_auth_error(m->err)) {
        set_fatal(k, m->err, rd_kafka_message_errstr(m));
    }
    bool fatal = k->fatal;
    pg_log(fatal ? PG_LOG_ERROR : PG_LOG_WARN, "consume_error", "topic",
           m->rkt ? rd_kafka_topic_name(m->rkt) : "", "#partition",
           (long long)m->partition, "error", rd_kafka_err2name(m->err), "reason",
           rd_kafka_message_errstr(m), NULL);
    return fatal;
}

/* librdkafka 2.0.2 stops fetching once the consumer queue passes
 * queued.max.messages.kbytes and looks again only when something wakes its
 * broker thread, or after a second (fetch.queue.backoff.ms arrived in 2.3.0):
 * a bounded prefetch alone drains a backlog at one queue's worth a second
 * (28k msgs/s measured with tests/bench/relay.c). So when the queue ran dry
 * while the last fetch reported more data (cached high watermark above the
 * position; both local calls), a ListOffsets request to the lagging
 * partitions' leaders wakes their broker threads, which fetch at once.
 * At most one wake-up per FETCH_WAKEUP_MS, and at most one in flight.
 * The request is synchronous (rd_kafka_offsets_for_times; 2.0.2 has no
 * asynchronous ListOffsets), so it runs on the waker thread: on the main
 * loop a broker busy with a drain's writes held every batch behind it for
 * up to 43 ms (tests/bench latency runs). */
enum { FETCH_WAKEUP_MS = 5 };

static void *waker_main(void *arg)
{
    pg_kafka_t *k = arg;
    pthread_mutex_lock(&k->waker_lock);
    for (;;) {
        while (k->waker_parts == NULL && !k->waker_stop)
            pthread_cond_wait(&k->waker_cond, &k->waker_lock);
        if (k->waker_stop)
            break;
        rd_kafka_topic_partition_list_t *parts = k->waker_parts;
        k->waker_parts = NULL;
        k->waker_busy = true;
        pthread_mutex_unlock(&k->waker_lock);
        /* The answer is not needed; a failure only means no early wake-up. */
        (void)rd_kafka_offsets_for_times(k->consumer, parts, 1000);
        atomic_fetch_add(&k->fetch_wakeups, 1);
        rd_kafka_topic_partition_list_destroy(parts);
        pthread_mutex_lock(&k->waker_lock);
        k->waker_busy = false;
    }
    pthread_mutex_unlock(&k->waker_lock);
    return NULL;
}

/* Starts the waker thread; before the consumer exists it has nothing to do.
 * 0 or -1. */
static int waker_start(pg_kafka_t *k)
{
    if (pthread_mutex_init(&k->waker_lock, NULL) != 0)
        return -1;
    if (pthread_cond_init(&k->waker_cond, NULL) != 0) {
        pthread_mutex_destroy(&k->waker_lock);
        return -1;
    }
    if (pthread_create(&k->waker, NULL, waker_main, k) != 0) {
        pthread_cond_destroy(&k->waker_cond);
        pthread_mutex_destroy(&k->waker_lock);
        return -1;
    }
    k->waker_started = true;
    return 0;
}

/* Stops and joins the waker thread; a wake-up in flight finishes first
 * (bounded by its 1 s timeout). Before the consumer is closed. */
static void waker_stop(pg_kafka_t *k)
{
    if (!k->waker_started)
        return;
    pthread_mutex_lock(&k->waker_lock);
    k->waker_stop = true;
    pthread_cond_signal(&k->waker_cond);
    pthread_mutex_unlock(&k->waker_lock);
    pthread_join(k->waker, NULL);
    if (k->waker_parts != NULL)
        rd_kafka_topic_partition_list_destroy(k->waker_parts);
    k->waker_parts = NULL;
    pthread_cond_destroy(&k->waker_cond);
    pthread_mutex_destroy(&k->waker_lock);
    k->waker_started = false;
}

static void wake_fetcher(pg_kafka_t *k)
{
    int64_t now = pg_now_mono_ms();
    if (k->paused || k->caught_up || now < k->next_wakeup_ms)
        return;
    k->next_wakeup_ms = now + FETCH_WAKEUP_MS;
    pthread_mutex_lock(&k->waker_lock);
    bool idle = k->waker_parts == NULL && !k->waker_busy;
    pthread_mutex_unlock(&k->waker_lock);
    if (!idle) /* the one in flight will wake the fetcher */
        return;
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(k->consumer, &parts) != 0 || parts->cnt == 0) {
        if (parts != NULL)
            rd_kafka_topic_partition_list_destroy(parts);
        return;
    }
    rd_kafka_position(k->consumer, parts);
    rd_kafka_topic_partition_list_t *lagging = rd_kafka_topic_partition_list_new(4);
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
        int64_t lo, hi;
        if (tp->offset < 0 || rd_kafka_get_watermark_offsets(
                                  k->consumer, tp->topic, tp->partition, &lo, &hi) != 0)
            continue;
        if (hi > tp->offset)
            rd_kafka_topic_partition_list_add(lagging, tp->topic, tp->partition)
                ->offset = RD_KAFKA_OFFSET_END; /* "latest": the cheapest ListOffsets */
    }
    rd_kafka_topic_partition_list_destroy(parts);
    if (lagging->cnt == 0) {
        k->caught_up = true; /* until the next message shows there is more */
        rd_kafka_topic_partition_list_destroy(lagging);
        return;
    }
    pthread_mutex_lock(&k->waker_lock);
    k->waker_parts = lagging; /* the waker's now */
    pthread_cond_signal(&k->waker_cond);
    pthread_mutex_unlock(&k->waker_lock);
}

int pg_kafka_poll_batch(pg_kafka_t *k, pg_kafka_msg_t *msgs, size_t max,
                        size_t max_bytes, int idle_ms, int max_wait_ms, char *errbuf,
                        size_t errlen)
{
    if (!k->subscribed) {
        int rc = start_consuming(k, idle_ms > 0 ? idle_ms : 1, errbuf, errlen);
        if (rc <= 0)
            return rc < 0 ? PG_FATAL : 0;
    }
    size_t n = 0, bytes = 0;
    uint64_t gen = k->generation;
    int64_t deadline = 0;
    int64_t idle_until = pg_now_mono_ms() + idle_ms;
    while (n < max && bytes < max_bytes) {
        /* Short slices, so that a stalled fetcher is noticed and woken. */
        int64_t until = n > 0 ? deadline : idle_until;
        int timeout = (int)(until - pg_now_mono_ms());
        if (timeout < 0)
            break;
        if (timeout > FETCH_WAKEUP_MS && !k->caught_up)
            timeout = FETCH_WAKEUP_MS;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, timeout);
        if (k->generation != gen) {
            /* Collected before a rebalance: the partitions may be someone
             * else's now, and they restart from the committed offsets. */
            pg_kafka_batch_release(msgs, n);
            n = 0;
            bytes = 0;
            gen = k->generation;
        }
        int rc = pg_kafka_check_fatal(k, errbuf, errlen);
        if (rc != 0) {
            if (m != NULL)
                rd_kafka_message_destroy(m);
            pg_kafka_batch_release(msgs, n);
            return rc;
        }
        if (m == NULL) {
            wake_fetcher(k);
            continue;
        }
        if (m->err) {
            bool fatal = consumer_error(k, m);
            rd_kafka_message_destroy(m);
            if (fatal) {
                pg_kafka_batch_release(msgs, n);
                return pg_kafka_check_fatal(k, errbuf, errlen);
            }
            if (n == 0)
                return 0;
            continue;
        }
        k->caught_up = false;
        const char *topic = rd_kafka_topic_name(m->rkt);
        int in = pg_kafka_input_of(k, topic);
        if (in < 0) { /* cannot happen with a fixed subscription */
            rd_kafka_message_destroy(m);
            continue;
        }
        rd_kafka_timestamp_type_t tstype;
        msgs[n] = (pg_kafka_msg_t){
            .input = (pg_input_t)in,
            .topic = topic,
            .partition = m->partition,
            .offset = m->offset,
            .timestamp_ms = rd_kafka_message_timestamp(m, &tstype),
            .key = m->key,
            .key_len = m->key_len,
            .payload = m->payload,
            .len = m->payload ? m->len : 0,
            .handle = m,
        };
        bytes += msgs[n].len + msgs[n].key_len;
        if (m->partition >= 0 && m->partition < TRACKED_PARTITIONS)
            atomic_store_explicit(&k->consumed[in][m->partition], m->offset,
                                  memory_order_relaxed);
        if (n++ == 0)
            deadline = pg_now_mono_ms() + max_wait_ms;
    }
    k->backlog = n >= max || bytes >= max_bytes;
    return (int)n;
}

static int pause_resume(pg_kafka_t *k, bool pause)
{
    if (pause && k->txn_open) {
        /* Paused for as long as Redis is away: what the transaction holds
         * commits now rather than outlive transaction.timeout.ms. */
        char terr[512];
        if (pg_kafka_txn_end(k, false, terr, sizeof(terr)) == PG_FATAL) {
            set_fatal(k, RD_KAFKA_RESP_ERR__FATAL, terr);
            return PG_RETRY; /* pg_kafka_check_fatal reports it */
        }
    }
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_resp_err_t err = rd_kafka_assignment(k->consumer, &parts);
    if (err == 0)
        err = pause ? rd_kafka_pause_partitions(k->consumer, parts)
                    : rd_kafka_resume_partitions(k->consumer, parts);
    if (parts != NULL)
        rd_kafka_topic_partition_list_destroy(parts);
    if (err) {
        pg_log_warn(pause ? "pause_failed" : "resume_failed", "error",
                    rd_kafka_err2str(err), NULL);
        return PG_RETRY;
    }
    k->paused = pause;
    return 0;
}

int pg_kafka_pause(pg_kafka_t *k)
{
    return pause_resume(k, true);
}

int pg_kafka_resume(pg_kafka_t *k)
{
    return k->paused ? pause_resume(k, false) : 0;
}

/* librdkafka 2.0.2 waits for the seeks' answers timeout_ms *microseconds*
 * (fixed in 2.1.0): a seek answered after 10 ms reports __TIMED_OUT, the
 * partitions not yet answered marked __IN_PROGRESS. Those seeks are made all
 * the same, and the version barrier each one raised when it was queued
 * already keeps older fetched messages from the application, so they count
 * as done. */
int pg_kafka_seek_to(pg_kafka_t *k, rd_kafka_topic_partition_list_t *parts,
                     char *errbuf, size_t errlen)
{
    rd_kafka_error_t *e = rd_kafka_seek_partitions(k->consumer, parts, 10000);
    int rc = 0;
    bool late = false;
    if (e != NULL) {
        late = rd_kafka_error_code(e) == RD_KAFKA_RESP_ERR__TIMED_OUT;
        if (!late) {
            pg_errf(errbuf, errlen, "kafka seek: %s", rd_kafka_error_string(e));
            rc = PG_RETRY;
        }
        rd_kafka_error_destroy(e);
    }
    for (int i = 0; rc == 0 && i < parts->cnt; i++) {
        rd_kafka_resp_err_t err = parts->elems[i].err;
        if (err && err != RD_KAFKA_RESP_ERR__STATE &&
            !(late && err == RD_KAFKA_RESP_ERR__IN_PROGRESS)) {
            pg_errf(errbuf, errlen, "kafka seek %s[%d]: %s", parts->elems[i].topic,
                    (int)parts->elems[i].partition, rd_kafka_err2str(err));
            rc = PG_RETRY;
        }
    }
    return rc;
}

int pg_kafka_idle(pg_kafka_t *k, int ms, char *errbuf, size_t errlen)
{
    rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, ms);
    int rc = pg_kafka_check_fatal(k, errbuf, errlen);
    if (m == NULL || rc != 0) {
        if (m != NULL)
            rd_kafka_message_destroy(m);
        return rc;
    }
    if (!m->err) {
        /* Fetched before the pause took effect: put the position back so
         * the message is consumed again after resume. */
        rd_kafka_topic_partition_list_t *p = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(p, rd_kafka_topic_name(m->rkt), m->partition)
            ->offset = m->offset;
        rc = pg_kafka_seek_to(k, p, errbuf, errlen);
        rd_kafka_topic_partition_list_destroy(p);
    } else if (consumer_error(k, m)) {
        rc = pg_kafka_check_fatal(k, errbuf, errlen);
    }
    rd_kafka_message_destroy(m);
    return rc;
}

int pg_kafka_produce(pg_kafka_t *k, pg_output_t out, const void *key, size_t key_len,
                     const void *value, size_t len, const pg_kafka_header_t *headers,
                     size_t n_headers, pg_delivery_state_t *state, char *errbuf,
                     size_t errlen)
{
    *state = PG_DELIVERY_PENDING;
    size_t hdr_bytes = 0;
    for (size_t i = 0; i < n_headers; i++)
        hdr_bytes += strlen(headers[i].name) + strlen(headers[i].value);
    for (;;) {
        rd_kafka_headers_t *hdrs = NULL;
        if (n_headers > 0) {
            hdrs = rd_kafka_headers_new(n_headers);
            for (size_t i = 0; i < n_headers; i++)
                rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value, -1);
        }
        rd_kafka_resp_err_t err = rd_kafka_producev(
            k->producer, RD_KAFKA_V_RKT(k->out[out]),
            RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY((void *)key, key_len), RD_KAFKA_V_VALUE((void *)value, len),
            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(state), RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
            return 0;
        if (hdrs != NULL)
            rd_kafka_headers_destroy(hdrs); /* not taken on failure */
        if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
            pg_errf(errbuf, errlen,
                    "kafka produce to %s: %zu bytes of key, value and headers, over "
                    "the producer's message.max.bytes (%zu) with the record framing",
                    rd_kafka_topic_name(k->out[out]), key_len + len + hdr_bytes,
                    k->msg_max);
            return PG_INPUT;
        }
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            pg_errf(errbuf, errlen, "kafka produce to %s: %s",
                    rd_kafka_topic_name(k->out[out]), rd_kafka_err2str(err));
            if (err == RD_KAFKA_RESP_ERR__FATAL) {
                read_fatal(k);
                return PG_FATAL;
            }
            return PG_RETRY;
        }
        rd_kafka_poll(k->producer, 50); /* make room by serving delivery reports */
    }
}

int pg_kafka_flush(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    /* message.timeout.ms bounds how long any message can stay queued, so
     * this loop ends with every report in. */
    while (rd_kafka_outq_len(k->producer) > 0) {
        rd_kafka_flush(k->producer, 1000);
        int rc = pg_kafka_check_fatal(k, errbuf, errlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

size_t pg_kafka_pending_room(const pg_kafka_t *k)
{
    return pg_kafka_ring_room(&k->pending);
}

pg_delivery_state_t *pg_kafka_pending_add(pg_kafka_t *k, const pg_kafka_msg_t *m)
{
    return pg_kafka_ring_add(&k->pending, m->input, m->partition, m->offset);
}

void pg_kafka_set_settled_cb(pg_kafka_t *k, pg_kafka_settled_fn fn, void *ctx)
{
    k->settled_fn = fn;
    k->settled_ctx = ctx;
}

/* Settles the first n tracked inputs as the ring plans it: per partition,
 * stores the offset after the last acknowledged input before the first
 * failed one, and seeks back to that failed one so it is consumed again.
 * Then the ring tells each input to the settled callback, in order. */
static int settle_prefix(pg_kafka_t *k, size_t n, bool *rewound, char *errbuf,
                         size_t errlen)
{
    pg_kafka_ring_t *r = &k->pending;
    int rc = 0;
    bool stores_known = false;
    rd_kafka_topic_partition_list_t *store = NULL, *seek = NULL;
    if (pg_kafka_ring_plan(r, n) != 0) {
        pg_errf(errbuf, errlen, "out of memory settling offsets");
        rc = PG_FATAL;
        goto out;
    }
    size_t np = r->n_parts;
    pg_kafka_ring_part_t *ps = r->parts;
    store = rd_kafka_topic_partition_list_new((int)np);
    seek = rd_kafka_topic_partition_list_new((int)np);
    for (size_t j = 0; j < np; j++) {
        const char *topic = k->in_topics[ps[j].input];
        if (ps[j].next >= 0)
            rd_kafka_topic_partition_list_add(store, topic, ps[j].partition)->offset =
                ps[j].next;
        if (ps[j].rewind >= 0)
            rd_kafka_topic_partition_list_add(seek, topic, ps[j].partition)->offset =
                ps[j].rewind;
    }
    if (store->cnt > 0) {
        rd_kafka_resp_err_t err = rd_kafka_offsets_store(k->consumer, store);
        /* __STATE: the partition was revoked meanwhile; its new owner redoes it. */
        if (err && err != RD_KAFKA_RESP_ERR__STATE) {
            pg_errf(errbuf, errlen, "kafka offsets_store: %s", rd_kafka_err2str(err));
            rc = PG_RETRY;
        }
        /* Each partition's own answer (set whatever the overall one). */
        for (size_t j = 0, s = 0; j < np; j++)
            if (ps[j].next >= 0) {
                ps[j].stored = store->elems[s].err == RD_KAFKA_RESP_ERR_NO_ERROR;
                s++;
            }
    }
    stores_known = true;
    if (rc == 0 && seek->cnt > 0)
        rc = pg_kafka_seek_to(k, seek, errbuf, errlen);
    if (rc == 0 && seek->cnt > 0)
        *rewound = true;
out:
    /* Settled either way: a failed store or seek leaves the committed offset
     * behind, and the inputs come again after the next rebalance. */
    pg_kafka_ring_pop(r, n, stores_known, k->settled_fn, k->settled_ctx);
    if (store != NULL)
        rd_kafka_topic_partition_list_destroy(store);
    if (seek != NULL)
        rd_kafka_topic_partition_list_destroy(seek);
    return rc;
}

int pg_kafka_pending_settle(pg_kafka_t *k, bool wait, bool *rewound, char *errbuf,
                            size_t errlen)
{
    bool ignored;
    if (rewound == NULL)
        rewound = &ignored;
    *rewound = false;
    if (k->pending.len == 0)
        return 0;
    int rc = wait ? pg_kafka_flush(k, errbuf, errlen) : 0;
    if (rc != 0)
        return rc;
    rd_kafka_poll(k->producer, 0); /* delivery reports set the states */
    if ((rc = pg_kafka_check_fatal(k, errbuf, errlen)) != 0)
        return rc;
    bool failed = false;
    size_t n = pg_kafka_ring_answered(&k->pending, &failed);
    if (failed && n < k->pending.len) {
        /* Inputs after a failed one may share its partition: settle them all
         * together, once every report is in, so that none is stored past it. */
        if ((rc = pg_kafka_flush(k, errbuf, errlen)) != 0)
            return rc;
        n = k->pending.len;
    }
    return n > 0 ? settle_prefix(k, n, rewound, errbuf, errlen) : PG_OK;
}

/* ---- One batch's delivery, either mode ---------------------------------- */

size_t pg_kafka_tracked_max(const pg_kafka_t *k)
{
    return k->transactional ? k->txn_cap : k->pending.cap;
}

int pg_kafka_settle(pg_kafka_t *k, size_t room, bool *rewound, char *errbuf,
                    size_t errlen)
{
    *rewound = false;
    if (k->transactional) {
        /* The open transaction ends when the loop is idle (room 0), when
         * another batch would not fit, or when it is old enough. */
        if (!k->txn_open || (room > 0 && k->txn_inputs + room <= k->txn_cap &&
                             pg_now_mono_ms() - k->txn_began_ms < k->cfg->txn_max_ms))
            return PG_OK;
        int rc = pg_kafka_txn_end(k, false, errbuf, errlen);
        *rewound = rc == PG_RETRY; /* aborted: its inputs come again */
        return rc == PG_FATAL ? PG_FATAL : PG_OK;
    }
    if (room > 0 && pg_kafka_pending_room(k) >= room)
        return PG_OK; /* room enough: the reports are served after the batch */
    return pg_kafka_pending_settle(k, room > 0, rewound, errbuf, errlen);
}

int pg_kafka_batch_begin(pg_kafka_t *k, const pg_kafka_msg_t *msgs, size_t n,
                         char *errbuf, size_t errlen)
{
    if (n > k->batch_cap || (!k->transactional && pg_kafka_pending_room(k) < n) ||
        (k->transactional && k->txn_inputs + n > k->txn_cap)) {
        pg_errf(errbuf, errlen, "no room to track a batch of %zu inputs", n);
        return PG_FATAL; /* the caller made room with pg_kafka_settle */
    }
    k->batch = msgs;
    k->batch_n = n;
    return k->transactional ? pg_kafka_txn_begin(k, errbuf, errlen) : PG_OK;
}

pg_delivery_state_t *pg_kafka_batch_track(pg_kafka_t *k, size_t i)
{
    if (i >= k->batch_n)
        return NULL;
    if (!k->transactional)
        return pg_kafka_pending_add(k, &k->batch[i]);
    k->txn_states[i] = PG_DELIVERY_PENDING;
    return &k->txn_states[i];
}

int pg_kafka_batch_finish(pg_kafka_t *k, size_t failed, pg_kafka_batch_end_t *end,
                          char *errbuf, size_t errlen)
{
    *end = PG_KAFKA_BATCH_DONE;
    int rc;
    if (k->transactional) {
        /* While a backlog drains (the batch was full), the transaction stays
         * open for the next batch, up to txn_cap inputs and
         * delivery.transaction.max.ms: a transaction costs the broker a
         * marker per partition written and a few writes to its state log,
         * whatever it holds (tests/bench: 0.19 -> 0.06 transactions per
         * 1,000 decisions cut the broker's CPU per decision by half). A
         * batch that is not full commits at once, so at a steady rate every
         * decision is visible as soon as it is made. */
        pg_kafka_txn_add(k, k->batch, k->batch_n);
        k->batch = NULL; /* whole: the transaction may commit it */
        k->batch_n = 0;
        rc = PG_OK;
        if (failed || !k->backlog || k->txn_inputs + k->batch_cap > k->txn_cap ||
            pg_now_mono_ms() - k->txn_began_ms >= k->cfg->txn_max_ms)
            rc = pg_kafka_txn_end(k, failed > 0, errbuf, errlen);
        if (rc != PG_FATAL) {
            /* Aborted (an output failed, or the commit could not be made):
             * every input of the transaction is consumed again. */
            if (rc != PG_OK)
                *end = PG_KAFKA_BATCH_ABORTED;
            rc = PG_OK;
        }
    } else {
        /* The acknowledgements arrive while the next batch is read and
         * decided: settle what is answered so far. */
        bool rewound = false;
        rc = pg_kafka_pending_settle(k, false, &rewound, errbuf, errlen);
        if (rewound)
            *end = PG_KAFKA_BATCH_REWOUND;
    }
    k->batch = NULL;
    k->batch_n = 0;
    return rc;
}

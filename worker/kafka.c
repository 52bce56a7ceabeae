/*
 * The Kafka side of pinguard over librdkafka 2.0.2. Offsets are stored by
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
 * failed authentication) ends the process through PG_KAFKA_EFATAL.
 */
#include "kafka.h"

#include "log.h"

#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* At least once: one per input whose output is in flight, in consumption
 * order; the delivery report writes `state` through the message's opaque. */
typedef struct {
    pg_input_t input;
    int32_t partition;
    int64_t offset;
    pg_delivery_state_t state;
    /* Scratch of settle_prefix: before the partition's first failure, and
     * the index of the partition's entry there. */
    bool before_failure;
    uint32_t part;
} pending_t;

enum { TRACKED_PARTITIONS = 1024 };

struct pg_kafka {
    const pg_config_t *cfg;
    volatile sig_atomic_t *stop; /* NULL: never asked to stop */
    pg_kafka_settled_fn settled_fn;
    void *settled_ctx;
    size_t out_max[PG_OUT_COUNT]; /* see pg_kafka_output_max_bytes */
    size_t msg_max, batch_max;    /* the producer's, from its configuration */
    bool subscribed;              /* the outputs were checked, see start_consuming */
    pending_t *pending;           /* ring of pending_cap entries */
    size_t pending_cap, pending_head, pending_len;
    rd_kafka_t *consumer;
    rd_kafka_t *producer;
    rd_kafka_topic_t *out[PG_OUT_COUNT];
    const char *in_topics[PG_IN_COUNT];
    uint64_t generation;
    /* Read by the metrics thread. */
    _Atomic bool joined;
    _Atomic unsigned long long rebalances, assigned, aborts, fetch_wakeups;
    /* Offset of the last input handed to the worker, per input topic and
     * partition (up to TRACKED_PARTITIONS), for the lag rows; -1 none. */
    _Atomic int64_t consumed[PG_IN_COUNT][TRACKED_PARTITIONS];
    int64_t next_wakeup_ms; /* earliest time of the next fetcher wake-up */
    bool caught_up;         /* the last check saw no lag: poll without slicing */
    bool transactional;
    bool paused;
    bool quiet; /* building confs for pg_kafka_check_config: no logs */
    bool fatal;
    char fatal_reason[768];
};

/* Properties that belong to one client only: given as plain kafka.<prop> they
 * go only where they mean something, which keeps librdkafka's CONFWARN quiet. */
static const char *const consumer_only[] = {"group.",
                                            "auto.offset.reset",
                                            "partition.assignment.strategy",
                                            "session.timeout.ms",
                                            "max.poll.interval.ms",
                                            "heartbeat.interval.ms",
                                            "fetch.",
                                            "max.partition.fetch.bytes",
                                            "isolation.level",
                                            "enable.auto.",
                                            "auto.commit.",
                                            "queued.",
                                            "check.crcs",
                                            "enable.partition.eof",
                                            "coordinator.query.interval.ms",
                                            "offset.store.",
                                            NULL};
static const char *const producer_only[] = {"acks",
                                            "request.required.acks",
                                            "linger.ms",
                                            "queue.buffering.",
                                            "batch.",
                                            "compression.",
                                            "message.timeout.ms",
                                            "delivery.timeout.ms",
                                            "enable.idempotence",
                                            "transactional.",
                                            "transaction.",
                                            "partitioner",
                                            "retries",
                                            "message.send.max.retries",
                                            "enable.gapless.guarantee",
                                            "sticky.partitioning.linger.ms",
                                            NULL};

static bool has_prefix(const char *const *list, const char *prop)
{
    for (size_t i = 0; list[i] != NULL; i++)
        if (strncmp(prop, list[i], strlen(list[i])) == 0)
            return true;
    return false;
}

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

int pg_kafka_pending_settle(pg_kafka_t *k, bool wait, char *errbuf, size_t errlen);

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
        rd_kafka_assign(rk, parts);
        atomic_store(&k->assigned, (unsigned long long)parts->cnt);
        atomic_store(&k->joined, true);
        return;
    }
    atomic_store(&k->assigned, 0ULL);
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        /* Hand over exactly what was acknowledged: wait for the outputs in
         * flight first. Transactions carry their own offsets and none is
         * open between batches. */
        if (!k->transactional) {
            char serr[256];
            if (pg_kafka_pending_settle(k, true, serr, sizeof(serr)) < 0)
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
    rd_kafka_assign(rk, NULL);
}

/* Sets key; a refusal is reported for kafka.<name>. */
static int conf_set_as(rd_kafka_conf_t *conf, const char *key, const char *value,
                       const char *name, char *errbuf, size_t errlen)
{
    char err[256];
    if (rd_kafka_conf_set(conf, key, value, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        snprintf(errbuf, errlen, "kafka.%s: %s", name, err);
        return -1;
    }
    return 0;
}

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *value,
                    char *errbuf, size_t errlen)
{
    return conf_set_as(conf, key, value, key, errbuf, errlen);
}

/* A transactional.id must be stable across restarts of one replica (so that
 * a restart aborts what a crashed predecessor left open at once) and unique
 * among replicas. Unless the operator sets one, it is <group.id>-<hostname>:
 * one replica per host, the pod name on Kubernetes. */
static int txn_id_default(pg_kafka_t *k, rd_kafka_conf_t *conf, char *errbuf,
                          size_t errlen)
{
    char value[512], host[256] = "localhost";
    size_t n = sizeof(value);
    if (rd_kafka_conf_get(conf, "transactional.id", value, &n) == RD_KAFKA_CONF_OK &&
        value[0] != '\0')
        return 0;
    gethostname(host, sizeof(host) - 1);
    const char *group = pg_config_kafka_get(k->cfg, "group.id");
    snprintf(value, sizeof(value), "%s-%s", group ? group : "pinguard", host);
    return conf_set(conf, "transactional.id", value, errbuf, errlen);
}

/* Builds one client's configuration: pinguard's defaults, then the operator's
 * passthrough properties, then the settings correctness depends on. */
static rd_kafka_conf_t *make_conf(pg_kafka_t *k, bool consumer, char *errbuf,
                                  size_t errlen)
{
    /* Prefetch bounds: librdkafka's defaults (50 MB fetches, 64 MB queued)
     * triple the worker's memory for no throughput a batch can use (peak RSS
     * 117 MB). Bounded prefetch needs a short fetch.wait.max.ms: with the
     * queue full, the only fetch in flight holds just the idle partitions and
     * the broker keeps it for the whole wait (500 ms by default), stalling
     * the drain; 10 ms costs under 1% of a core when idle. Measured with
     * tests/bench, figures in tests/bench/RESULTS.md. */
    static const char *const consumer_defaults[][2] = {
        {"auto.commit.interval.ms", "200"},      {"enable.partition.eof", "false"},
        {"queued.max.messages.kbytes", "2048"},  {"fetch.max.bytes", "1048576"},
        {"max.partition.fetch.bytes", "131072"}, {"fetch.wait.max.ms", "10"}};
    static const char *const producer_defaults[][2] = {
        {"linger.ms", "1"},
        {"compression.type", "lz4"},
        {"partitioner", "murmur2_random"}, /* the Java client's choice */
        {"message.timeout.ms", "60000"},
        {"transaction.timeout.ms", "60000"}};
    static const char *const consumer_forced[][2] = {
        {"enable.auto.offset.store", "false"}, {"enable.auto.commit", "true"}};
    static const char *const consumer_forced_txn[][2] = {
        {"enable.auto.offset.store", "false"},
        {"enable.auto.commit", "false"},
        {"isolation.level", "read_committed"}};
    static const char *const producer_forced[][2] = {{"enable.idempotence", "true"}};
    const char *const(*defs)[2] = consumer ? consumer_defaults : producer_defaults;
    size_t ndefs = consumer ? sizeof(consumer_defaults) / sizeof(consumer_defaults[0])
                            : sizeof(producer_defaults) / sizeof(producer_defaults[0]);
    const char *const(*forced)[2] =
        consumer ? (k->transactional ? consumer_forced_txn : consumer_forced)
                 : producer_forced;
    size_t nforced = consumer ? (k->transactional ? 3 : 2) : 1;
    const char *scope = consumer ? "consumer." : "producer.";
    const char *const *foreign = consumer ? producer_only : consumer_only;

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; i < ndefs; i++)
        if (conf_set(conf, defs[i][0], defs[i][1], errbuf, errlen) != 0)
            goto fail;
    /* In a transaction the commit sends at once whatever lingers, so linger
     * only batches: at 1 ms librdkafka 2.0.2's transactional producer spent
     * a fifth of the worker's CPU in its timer thread (tests/bench profile);
     * at 5 ms the drain ran 209k -> 233k decisions/s. At least once, linger
     * is added to every decision's latency: it stays at 1 ms. */
    if (!consumer && k->transactional &&
        conf_set(conf, "linger.ms", "5", errbuf, errlen))
        goto fail;
    for (size_t i = 0; i < k->cfg->n_kafka; i++) {
        const char *key = k->cfg->kafka[i].key;
        if (strncmp(key, "consumer.", 9) == 0 || strncmp(key, "producer.", 9) == 0) {
            if (strncmp(key, scope, 9) != 0)
                continue;
            key += 9;
        } else if (has_prefix(foreign, key)) {
            continue;
        }
        if (!consumer && !k->transactional && strcmp(key, "transactional.id") == 0) {
            /* A transactional producer refuses every produce() before
             * init_transactions (Local: Erroneous state): at least once
             * uses a plain idempotent producer, so the id is moot here. */
            if (!k->quiet)
                pg_log_warn("kafka_property_ignored", "property", "transactional.id",
                            "why", "delivery=at-least-once", NULL);
            continue;
        }
        /* An error names the property as the operator wrote it. */
        if (conf_set_as(conf, key, k->cfg->kafka[i].value, k->cfg->kafka[i].key, errbuf,
                        errlen) != 0)
            goto fail;
    }
    for (size_t i = 0; i < nforced; i++)
        if (conf_set(conf, forced[i][0], forced[i][1], errbuf, errlen) != 0)
            goto fail;
    if (!consumer && k->transactional && txn_id_default(k, conf, errbuf, errlen) != 0)
        goto fail;
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    if (consumer)
        rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    else
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

static int64_t now_ms(void);
static int check_fatal(pg_kafka_t *k, char *errbuf, size_t errlen);

static bool stopping(const pg_kafka_t *k)
{
    return k->stop != NULL && *k->stop;
}

int pg_kafka_check_config(const pg_config_t *cfg, char *errbuf, size_t errlen)
{
    pg_kafka_t k = {.cfg = cfg,
                    .transactional = cfg->delivery == PG_DELIVERY_EXACTLY_ONCE,
                    .quiet = true};
    for (int consumer = 0; consumer < 2; consumer++) {
        rd_kafka_conf_t *conf = make_conf(&k, consumer, errbuf, errlen);
        if (conf == NULL)
            return -1;
        rd_kafka_conf_destroy(conf);
    }
    return 0;
}

/* A size property of a configuration not yet handed to rd_kafka_new. */
static size_t conf_size(const rd_kafka_conf_t *conf, const char *key, size_t dflt)
{
    char value[64];
    size_t n = sizeof(value);
    if (rd_kafka_conf_get(conf, key, value, &n) != RD_KAFKA_CONF_OK)
        return dflt;
    char *end;
    unsigned long long v = strtoull(value, &end, 10);
    return end != value && *end == '\0' ? (size_t)v : dflt;
}

/* Fences any older producer with the same transactional.id and aborts what it
 * left open. Called in short slices (the call resumes after a retriable
 * timeout) with the producer's error callback served between them: a wrong
 * SASL password shows up there as _AUTHENTICATION within a second, while a
 * single call would only time out after 60 s with no word of the cause; and
 * a stop request is seen between two slices. */
static int init_transactions(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    int64_t deadline = now_ms() + 60000;
    for (;;) {
        if (stopping(k)) {
            snprintf(errbuf, errlen, "stopped while initialising transactions");
            return -1;
        }
        int64_t left = deadline - now_ms();
        int slice = left > 500 ? 500 : left > 1 ? (int)left : 1;
        rd_kafka_error_t *e = rd_kafka_init_transactions(k->producer, slice);
        if (e == NULL)
            return 0;
        bool retry = rd_kafka_error_is_retriable(e);
        snprintf(errbuf, errlen, "kafka init_transactions: %s",
                 rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        rd_kafka_poll(k->producer, 0); /* runs on_error, which may set k->fatal */
        if (check_fatal(k, errbuf, errlen) != 0 || !retry || now_ms() >= deadline)
            return -1;
    }
}

static const char *const out_setting[PG_OUT_COUNT] = {
    "topic.advice.filtered", "topic.decisions", "topic.release", "topic.dlq"};

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
    int64_t t0 = now_ms();
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(k->producer, 0, NULL, &md, timeout_ms);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        size_t off = 0;
        bool again = false;
        for (int o = 0; o < PG_OUT_COUNT; o++) {
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
    int left = timeout_ms - (int)(now_ms() - t0);
    rd_kafka_poll(k->producer, left > 0 ? left : 0);
    return check_fatal(k, errbuf, errlen) != 0 ? -1 : 0;
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
        if (!out_seen_before(k, o))
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
    int64_t deadline = now_ms() + 12000;
    while (ev == NULL && now_ms() < deadline) {
        if (stopping(k)) {
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
    pg_log_info("output_limits", "#advice.filtered",
                (long long)pg_kafka_output_max_bytes(k, PG_OUT_FILTERED), "#decisions",
                (long long)pg_kafka_output_max_bytes(k, PG_OUT_DECISIONS), "#release",
                (long long)pg_kafka_output_max_bytes(k, PG_OUT_RELEASE), "#dlq",
                (long long)pg_kafka_output_max_bytes(k, PG_OUT_DLQ), NULL);
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
    if (rc <= 0 || stopping(k) || read_output_limits(k) == 0)
        return rc < 0 ? -1 : 0;
    rd_kafka_topic_partition_list_t *topics =
        rd_kafka_topic_partition_list_new(PG_IN_COUNT);
    for (int i = 0; i < PG_IN_COUNT; i++)
        rd_kafka_topic_partition_list_add(topics, k->in_topics[i],
                                          RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t serr = rd_kafka_subscribe(k->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (serr) {
        snprintf(errbuf, errlen, "kafka subscribe: %s", rd_kafka_err2str(serr));
        return -1;
    }
    k->subscribed = true;
    return 1;
}

/* How long pg_kafka_new waits for the output check before leaving it to
 * pg_kafka_poll_batch: a reachable cluster answers in milliseconds. */
enum { START_CHECK_MS = 1500 };

static void init_consumed(pg_kafka_t *k)
{
    for (int i = 0; i < PG_IN_COUNT; i++)
        for (int p = 0; p < TRACKED_PARTITIONS; p++)
            atomic_init(&k->consumed[i][p], -1);
}

pg_kafka_t *pg_kafka_new(const pg_config_t *cfg, volatile sig_atomic_t *stop,
                         char *errbuf, size_t errlen)
{
    char err[512];
    rd_kafka_conf_t *conf = NULL;
    pg_kafka_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        return NULL;
    }
    k->cfg = cfg;
    k->stop = stop;
    init_consumed(k);
    k->transactional = cfg->delivery == PG_DELIVERY_EXACTLY_ONCE;
    k->in_topics[PG_IN_ADVICE] = cfg->topic_advice;
    k->in_topics[PG_IN_REQUESTS] = cfg->topic_requests;
    k->in_topics[PG_IN_RESULTS] = cfg->topic_results;
    if (!k->transactional) {
        /* Room for a few batches in flight; more only waits for the broker. */
        k->pending_cap = 4 * (size_t)cfg->batch_max_messages;
        k->pending = calloc(k->pending_cap, sizeof(*k->pending));
        if (k->pending == NULL) {
            snprintf(errbuf, errlen, "out of memory");
            goto fail;
        }
    }

    if ((conf = make_conf(k, false, errbuf, errlen)) == NULL)
        goto fail;
    /* librdkafka's defaults when unset: 1000000 both. */
    k->msg_max = conf_size(conf, "message.max.bytes", 1000000);
    k->batch_max = conf_size(conf, "batch.size", 1000000);
    if (k->msg_max < k->batch_max)
        k->batch_max = k->msg_max;
    for (int o = 0; o < PG_OUT_COUNT; o++)
        k->out_max[o] = k->msg_max; /* until the topics' limits are read */
    k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (k->producer == NULL) {
        snprintf(errbuf, errlen, "kafka producer: %s", err);
        goto fail; /* conf is still ours on failure */
    }
    conf = NULL;
    if (k->transactional && init_transactions(k, errbuf, errlen) != 0)
        goto fail;
    const char *out_names[PG_OUT_COUNT] = {cfg->topic_filtered, cfg->topic_decisions,
                                           cfg->topic_release, cfg->topic_dlq};
    for (int i = 0; i < PG_OUT_COUNT; i++) {
        k->out[i] = rd_kafka_topic_new(k->producer, out_names[i], NULL);
        if (k->out[i] == NULL) {
            snprintf(errbuf, errlen, "kafka topic %s: %s", out_names[i],
                     rd_kafka_err2str(rd_kafka_last_error()));
            goto fail;
        }
    }
    if ((conf = make_conf(k, true, errbuf, errlen)) == NULL)
        goto fail;
    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (k->consumer == NULL) {
        snprintf(errbuf, errlen, "kafka consumer: %s", err);
        goto fail;
    }
    conf = NULL;
    rd_kafka_poll_set_consumer(k->consumer);

    int64_t until = now_ms() + START_CHECK_MS;
    int rc = 0;
    while (rc == 0 && !stopping(k) && now_ms() < until)
        rc = start_consuming(k, 500, errbuf, errlen);
    if (rc == 0 && stopping(k)) {
        snprintf(errbuf, errlen, "stopped while checking the output topics");
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

static void drop_pending(pg_kafka_t *k);

void pg_kafka_destroy(pg_kafka_t *k)
{
    if (k == NULL)
        return;
    if (k->consumer != NULL) {
        /* Outputs still in flight are waited for, so that closing commits
         * their inputs' offsets. */
        char err0[256];
        if (k->producer != NULL &&
            pg_kafka_pending_settle(k, true, err0, sizeof(err0)) < 0)
            pg_log_warn("settle_failed", "error", err0, NULL);
        drop_pending(k);
        /* A consumer in a fatal state refuses close (and any commit):
         * rd_kafka_destroy alone tears it down without leaving the group. */
        char why[64];
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
    free(k->pending);
    free(k);
}

uint64_t pg_kafka_generation(const pg_kafka_t *k)
{
    return k->generation;
}

const char *pg_kafka_output_topic(const pg_kafka_t *k, pg_output_t out)
{
    return rd_kafka_topic_name(k->out[out]);
}

size_t pg_kafka_output_max_bytes(const pg_kafka_t *k, pg_output_t out)
{
    size_t limit = k->out_max[out];
    return limit > PG_KAFKA_RECORD_MARGIN ? limit - PG_KAFKA_RECORD_MARGIN : 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int check_fatal(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    read_fatal(k);
    if (!k->fatal)
        return 0;
    snprintf(errbuf, errlen, "kafka: %s", k->fatal_reason);
    return PG_KAFKA_EFATAL;
}

void pg_kafka_batch_release(pg_kafka_msg_t *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rd_kafka_message_destroy(msgs[i].handle);
        msgs[i].handle = NULL;
    }
}

static int input_of(const pg_kafka_t *k, const char *topic)
{
    for (int i = 0; i < PG_IN_COUNT; i++)
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
 * At most one wake-up per FETCH_WAKEUP_MS. */
enum { FETCH_WAKEUP_MS = 5 };

static void wake_fetcher(pg_kafka_t *k)
{
    int64_t now = now_ms();
    if (k->paused || k->caught_up || now < k->next_wakeup_ms)
        return;
    k->next_wakeup_ms = now + FETCH_WAKEUP_MS;
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
    if (lagging->cnt > 0) {
        /* The answer is not needed; a failure only means no early wake-up. */
        (void)rd_kafka_offsets_for_times(k->consumer, lagging, 1000);
        atomic_fetch_add(&k->fetch_wakeups, 1);
    } else {
        k->caught_up = true; /* until the next message shows there is more */
    }
    rd_kafka_topic_partition_list_destroy(lagging);
    rd_kafka_topic_partition_list_destroy(parts);
}

int pg_kafka_poll_batch(pg_kafka_t *k, pg_kafka_msg_t *msgs, size_t max,
                        size_t max_bytes, int idle_ms, int max_wait_ms, char *errbuf,
                        size_t errlen)
{
    if (!k->subscribed) {
        int rc = start_consuming(k, idle_ms > 0 ? idle_ms : 1, errbuf, errlen);
        if (rc <= 0)
            return rc < 0 ? PG_KAFKA_EFATAL : 0;
    }
    size_t n = 0, bytes = 0;
    uint64_t gen = k->generation;
    int64_t deadline = 0;
    int64_t idle_until = now_ms() + idle_ms;
    while (n < max && bytes < max_bytes) {
        /* Short slices, so that a stalled fetcher is noticed and woken. */
        int64_t until = n > 0 ? deadline : idle_until;
        int timeout = (int)(until - now_ms());
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
        int rc = check_fatal(k, errbuf, errlen);
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
                return check_fatal(k, errbuf, errlen);
            }
            if (n == 0)
                return 0;
            continue;
        }
        k->caught_up = false;
        const char *topic = rd_kafka_topic_name(m->rkt);
        int in = input_of(k, topic);
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
            deadline = now_ms() + max_wait_ms;
    }
    return (int)n;
}

static int pause_resume(pg_kafka_t *k, bool pause)
{
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
        return PG_KAFKA_ERETRY;
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

static int seek_to(pg_kafka_t *k, rd_kafka_topic_partition_list_t *parts, char *errbuf,
                   size_t errlen)
{
    rd_kafka_error_t *e = rd_kafka_seek_partitions(k->consumer, parts, 10000);
    int rc = 0;
    if (e != NULL) {
        snprintf(errbuf, errlen, "kafka seek: %s", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        rc = PG_KAFKA_ERETRY;
    }
    for (int i = 0; rc == 0 && i < parts->cnt; i++) {
        if (parts->elems[i].err && parts->elems[i].err != RD_KAFKA_RESP_ERR__STATE) {
            snprintf(errbuf, errlen, "kafka seek %s[%d]: %s", parts->elems[i].topic,
                     (int)parts->elems[i].partition,
                     rd_kafka_err2str(parts->elems[i].err));
            rc = PG_KAFKA_ERETRY;
        }
    }
    return rc;
}

int pg_kafka_idle(pg_kafka_t *k, int ms, char *errbuf, size_t errlen)
{
    rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, ms);
    int rc = check_fatal(k, errbuf, errlen);
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
        rc = seek_to(k, p, errbuf, errlen);
        rd_kafka_topic_partition_list_destroy(p);
    } else if (consumer_error(k, m)) {
        rc = check_fatal(k, errbuf, errlen);
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
            snprintf(errbuf, errlen,
                     "kafka produce to %s: %zu bytes of key, value and headers, over "
                     "the producer's message.max.bytes (%zu) with the record framing",
                     rd_kafka_topic_name(k->out[out]), key_len + len + hdr_bytes,
                     k->msg_max);
            return PG_KAFKA_ETOOLARGE;
        }
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            snprintf(errbuf, errlen, "kafka produce to %s: %s",
                     rd_kafka_topic_name(k->out[out]), rd_kafka_err2str(err));
            if (err == RD_KAFKA_RESP_ERR__FATAL) {
                read_fatal(k);
                return PG_KAFKA_EFATAL;
            }
            return PG_KAFKA_ERETRY;
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
        int rc = check_fatal(k, errbuf, errlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

typedef struct {
    pg_input_t input;
    int32_t partition;
    int64_t next;   /* offset to store: last settled + 1, or -1 */
    int64_t rewind; /* first failed offset, or -1 */
    bool stored;    /* the store of `next` was accepted */
} part_state_t;

static pending_t *pending_at(pg_kafka_t *k, size_t i)
{
    return &k->pending[(k->pending_head + i) % k->pending_cap];
}

size_t pg_kafka_pending_room(const pg_kafka_t *k)
{
    return k->pending_cap - k->pending_len;
}

pg_delivery_state_t *pg_kafka_pending_add(pg_kafka_t *k, const pg_kafka_msg_t *m)
{
    if (k->pending_len == k->pending_cap)
        return NULL;
    pending_t *e = pending_at(k, k->pending_len++);
    *e = (pending_t){.input = m->input,
                     .partition = m->partition,
                     .offset = m->offset,
                     .state = PG_DELIVERY_PENDING};
    return &e->state;
}

void pg_kafka_set_settled_cb(pg_kafka_t *k, pg_kafka_settled_fn fn, void *ctx)
{
    k->settled_fn = fn;
    k->settled_ctx = ctx;
}

/* Settles the first n tracked inputs: per partition, stores the offset after
 * the last acknowledged input before the first failed one, and seeks back to
 * that failed one so it is consumed again. Each input is then told to the
 * settled callback, in order: committed when it came before its partition's
 * first failure, was acknowledged, and its partition's store was accepted. */
static int settle_prefix(pg_kafka_t *k, size_t n, char *errbuf, size_t errlen)
{
    part_state_t local[64], *ps = local;
    size_t np = 0, cap = sizeof(local) / sizeof(local[0]);
    int rc = 0;
    bool stores_known = false;
    rd_kafka_topic_partition_list_t *store = NULL, *seek = NULL;
    for (size_t i = 0; i < n; i++) {
        pending_t *e = pending_at(k, i);
        size_t j = 0;
        while (j < np && !(ps[j].partition == e->partition && ps[j].input == e->input))
            j++;
        if (j == np) {
            if (np == cap) {
                part_state_t *grown = malloc(2 * cap * sizeof(*grown));
                if (grown == NULL) {
                    snprintf(errbuf, errlen, "out of memory settling offsets");
                    rc = PG_KAFKA_EFATAL;
                    goto out;
                }
                memcpy(grown, ps, np * sizeof(*grown));
                if (ps != local)
                    free(ps);
                ps = grown;
                cap *= 2;
            }
            ps[np++] = (part_state_t){e->input, e->partition, -1, -1, false};
        }
        e->part = (uint32_t)j;
        e->before_failure = ps[j].rewind < 0;
        if (ps[j].rewind >= 0)
            continue;
        if (e->state == PG_DELIVERY_OK)
            ps[j].next = e->offset + 1;
        else
            ps[j].rewind = e->offset;
    }
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
            snprintf(errbuf, errlen, "kafka offsets_store: %s", rd_kafka_err2str(err));
            rc = PG_KAFKA_ERETRY;
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
        rc = seek_to(k, seek, errbuf, errlen);
    if (rc == 0 && seek->cnt > 0)
        rc = 1;
out:
    /* Settled either way: a failed store or seek leaves the committed offset
     * behind, and the inputs come again after the next rebalance. */
    for (size_t i = 0; k->settled_fn != NULL && i < n; i++) {
        const pending_t *e = pending_at(k, i);
        k->settled_fn(k->settled_ctx, stores_known && e->before_failure &&
                                          e->state == PG_DELIVERY_OK &&
                                          ps[e->part].stored);
    }
    if (store != NULL)
        rd_kafka_topic_partition_list_destroy(store);
    if (seek != NULL)
        rd_kafka_topic_partition_list_destroy(seek);
    if (ps != local)
        free(ps);
    k->pending_head = (k->pending_head + n) % k->pending_cap;
    k->pending_len -= n;
    return rc;
}

/* What destroy could not settle (a fatal state stopped the wait for the
 * reports): nothing of it is stored, and the callback hears so. */
static void drop_pending(pg_kafka_t *k)
{
    for (size_t i = 0; k->settled_fn != NULL && i < k->pending_len; i++)
        k->settled_fn(k->settled_ctx, false);
    k->pending_head = 0;
    k->pending_len = 0;
}

int pg_kafka_pending_settle(pg_kafka_t *k, bool wait, char *errbuf, size_t errlen)
{
    if (k->pending_len == 0)
        return 0;
    int rc = wait ? pg_kafka_flush(k, errbuf, errlen) : 0;
    if (rc != 0)
        return rc;
    rd_kafka_poll(k->producer, 0); /* delivery reports set the states */
    if ((rc = check_fatal(k, errbuf, errlen)) != 0)
        return rc;
    size_t n = 0;
    bool failed = false;
    while (n < k->pending_len && pending_at(k, n)->state != PG_DELIVERY_PENDING)
        failed |= pending_at(k, n++)->state == PG_DELIVERY_FAILED;
    if (failed && n < k->pending_len) {
        /* Inputs after a failed one may share its partition: settle them all
         * together, once every report is in, so that none is stored past it. */
        if ((rc = pg_kafka_flush(k, errbuf, errlen)) != 0)
            return rc;
        n = k->pending_len;
    }
    return n > 0 ? settle_prefix(k, n, errbuf, errlen) : 0;
}

bool pg_kafka_transactional(const pg_kafka_t *k)
{
    return k->transactional;
}

int pg_kafka_txn_begin(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    rd_kafka_error_t *e = rd_kafka_begin_transaction(k->producer);
    if (e == NULL)
        return 0;
    snprintf(errbuf, errlen, "kafka begin_transaction: %s", rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
    return PG_KAFKA_EFATAL; /* only a fatal or a state error can fail begin */
}

/* Puts every assigned partition back at its committed offset, so that what
 * an aborted transaction consumed is consumed again. */
static int rewind_to_committed(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_resp_err_t err = rd_kafka_assignment(k->consumer, &parts);
    int rc = 0;
    if (err) {
        snprintf(errbuf, errlen, "kafka assignment: %s", rd_kafka_err2str(err));
        rc = PG_KAFKA_EFATAL;
    } else if (parts->cnt > 0) {
        err = rd_kafka_committed(k->consumer, parts, 30000);
        if (err) {
            snprintf(errbuf, errlen, "kafka committed: %s", rd_kafka_err2str(err));
            rc = PG_KAFKA_EFATAL; /* cannot know where to resume: restart */
        } else {
            for (int i = 0; i < parts->cnt; i++)
                if (parts->elems[i].offset < 0)
                    parts->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
            if (seek_to(k, parts, errbuf, errlen) != 0)
                rc = PG_KAFKA_EFATAL;
        }
    }
    if (parts != NULL)
        rd_kafka_topic_partition_list_destroy(parts);
    return rc;
}

int pg_kafka_txn_abort(pg_kafka_t *k, char *errbuf, size_t errlen)
{
    for (;;) {
        rd_kafka_error_t *e = rd_kafka_abort_transaction(k->producer, 60000);
        if (e == NULL)
            break;
        bool retry = rd_kafka_error_is_retriable(e);
        snprintf(errbuf, errlen, "kafka abort_transaction: %s",
                 rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        if (!retry)
            return PG_KAFKA_EFATAL;
    }
    /* Counted here, whoever asked for the abort: txn_error or the worker
     * after an output failed. */
    atomic_fetch_add(&k->aborts, 1);
    int rc = rewind_to_committed(k, errbuf, errlen);
    return rc != 0 ? rc : PG_KAFKA_ERETRY;
}

/* Classifies a transactional API error: retry the call, abort the
 * transaction, or give up on the process. */
static int txn_error(pg_kafka_t *k, rd_kafka_error_t *e, const char *what, bool *retry,
                     char *errbuf, size_t errlen)
{
    snprintf(errbuf, errlen, "kafka %s: %s", what, rd_kafka_error_string(e));
    *retry = rd_kafka_error_is_retriable(e);
    bool abortable = rd_kafka_error_txn_requires_abort(e);
    bool fatal = rd_kafka_error_is_fatal(e);
    rd_kafka_error_destroy(e);
    if (*retry)
        return 0;
    if (fatal || !abortable)
        return PG_KAFKA_EFATAL;
    pg_log_warn("transaction_aborted", "error", errbuf, NULL);
    char aerr[512];
    int rc = pg_kafka_txn_abort(k, aerr, sizeof(aerr));
    if (rc == PG_KAFKA_EFATAL)
        snprintf(errbuf, errlen, "%s", aerr);
    return rc;
}

int pg_kafka_txn_commit(pg_kafka_t *k, const pg_kafka_msg_t *msgs, size_t n,
                        char *errbuf, size_t errlen)
{
    /* The batch's next offsets: every message in it was answered inside this
     * transaction (a decision or a dead letter). */
    rd_kafka_topic_partition_list_t *offsets = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_topic_partition_t *p = rd_kafka_topic_partition_list_find(
            offsets, msgs[i].topic, msgs[i].partition);
        if (p == NULL)
            p = rd_kafka_topic_partition_list_add(offsets, msgs[i].topic,
                                                  msgs[i].partition);
        if (msgs[i].offset + 1 > p->offset)
            p->offset = msgs[i].offset + 1;
    }
    int rc = 0;
    bool retry = true;
    while (rc == 0 && retry) {
        rd_kafka_consumer_group_metadata_t *cgmd =
            rd_kafka_consumer_group_metadata(k->consumer);
        rd_kafka_error_t *e =
            rd_kafka_send_offsets_to_transaction(k->producer, offsets, cgmd, 60000);
        rd_kafka_consumer_group_metadata_destroy(cgmd);
        retry = false;
        if (e != NULL)
            rc = txn_error(k, e, "send_offsets_to_transaction", &retry, errbuf, errlen);
    }
    retry = true;
    while (rc == 0 && retry) {
        rd_kafka_error_t *e = rd_kafka_commit_transaction(k->producer, 60000);
        retry = false;
        if (e != NULL)
            rc = txn_error(k, e, "commit_transaction", &retry, errbuf, errlen);
    }
    rd_kafka_topic_partition_list_destroy(offsets);
    return rc;
}

void pg_kafka_group_stats(const pg_kafka_t *k, pg_kafka_group_stats_t *out)
{
    out->joined = atomic_load(&k->joined);
    out->rebalances = atomic_load(&k->rebalances);
    out->assigned_partitions = atomic_load(&k->assigned);
    out->transaction_aborts = atomic_load(&k->aborts);
    out->fetch_wakeups = atomic_load(&k->fetch_wakeups);
}

pg_kafka_t *pg_kafka_new_inspector(const pg_config_t *cfg, char *errbuf, size_t errlen)
{
    char err[512];
    pg_kafka_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        return NULL;
    }
    k->cfg = cfg;
    init_consumed(k);
    k->in_topics[PG_IN_ADVICE] = cfg->topic_advice;
    k->in_topics[PG_IN_REQUESTS] = cfg->topic_requests;
    k->in_topics[PG_IN_RESULTS] = cfg->topic_results;
    rd_kafka_conf_t *conf = make_conf(k, true, errbuf, errlen);
    if (conf == NULL)
        goto fail;
    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (k->consumer == NULL) {
        rd_kafka_conf_destroy(conf);
        snprintf(errbuf, errlen, "kafka consumer: %s", err);
        goto fail;
    }
    return k;
fail:
    pg_kafka_destroy(k);
    return NULL;
}

/* The partitions of the input topics, from a metadata request. */
static int input_partitions(pg_kafka_t *k, rd_kafka_topic_partition_list_t **out,
                            char *errbuf, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(k->consumer, 1, NULL, &md, 10000);
    if (err) {
        snprintf(errbuf, errlen, "kafka metadata: %s", rd_kafka_err2str(err));
        return -1;
    }
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(32);
    for (int t = 0; t < PG_IN_COUNT; t++)
        for (int i = 0; i < md->topic_cnt; i++)
            if (strcmp(md->topics[i].topic, k->in_topics[t]) == 0)
                for (int p = 0; p < md->topics[i].partition_cnt; p++)
                    rd_kafka_topic_partition_list_add(parts, k->in_topics[t],
                                                      md->topics[i].partitions[p].id);
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_partition_list_sort(parts, NULL, NULL);
    *out = parts;
    return 0;
}

/* A copy of parts with each partition's offset at `which` (END or BEGINNING). */
static int query_offsets(pg_kafka_t *k, const rd_kafka_topic_partition_list_t *parts,
                         int64_t which, rd_kafka_topic_partition_list_t **out,
                         char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *q = rd_kafka_topic_partition_list_copy(parts);
    for (int i = 0; i < q->cnt; i++)
        q->elems[i].offset = which;
    rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(k->consumer, q, 10000);
    for (int i = 0; !err && i < q->cnt; i++)
        if (q->elems[i].err)
            err = q->elems[i].err;
    *out = q;
    if (err) {
        snprintf(errbuf, errlen, "kafka list offsets: %s", rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

int pg_kafka_lag(pg_kafka_t *k, bool all, pg_lag_row_t **rows_out, size_t *n_out,
                 char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *parts = NULL, *hi = NULL, *lo = NULL;
    pg_lag_row_t *rows = NULL;
    int rc = -1;
    if (all) {
        if (input_partitions(k, &parts, errbuf, errlen) != 0)
            goto out;
    } else {
        rd_kafka_resp_err_t err = rd_kafka_assignment(k->consumer, &parts);
        if (err) {
            snprintf(errbuf, errlen, "kafka assignment: %s", rd_kafka_err2str(err));
            goto out;
        }
        rd_kafka_topic_partition_list_sort(parts, NULL, NULL);
    }
    rows = calloc(parts->cnt ? (size_t)parts->cnt : 1, sizeof(*rows));
    if (rows == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        goto out;
    }
    rd_kafka_topic_partition_list_t *pos = rd_kafka_topic_partition_list_copy(parts);
    if (!all)
        rd_kafka_position(k->consumer, pos); /* local: what was consumed */
    for (int i = 0; i < parts->cnt; i++) {
        int in = input_of(k, pos->elems[i].topic);
        int32_t p = pos->elems[i].partition;
        rows[i].position =
            !all && pos->elems[i].offset >= 0 ? pos->elems[i].offset : -1;
        rows[i].consumed =
            in >= 0 && p >= 0 && p < TRACKED_PARTITIONS
                ? atomic_load_explicit(&k->consumed[in][p], memory_order_relaxed)
                : -1;
    }
    rd_kafka_topic_partition_list_destroy(pos);
    if (parts->cnt > 0) {
        /* What the group committed, as the coordinator knows it: the same
         * figure Kafka's consumer-groups tool reads, in either delivery mode. */
        rd_kafka_resp_err_t err = rd_kafka_committed(k->consumer, parts, 10000);
        if (err) {
            snprintf(errbuf, errlen, "kafka committed: %s", rd_kafka_err2str(err));
            goto out;
        }
    }
    /* End and start offsets of every partition in one ListOffsets request per
     * broker (timestamps -1 and -2 ask for the latest and the earliest). */
    if (parts->cnt > 0 &&
        (query_offsets(k, parts, RD_KAFKA_OFFSET_END, &hi, errbuf, errlen) ||
         query_offsets(k, parts, RD_KAFKA_OFFSET_BEGINNING, &lo, errbuf, errlen)))
        goto out;
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &parts->elems[i];
        pg_lag_row_t *r = &rows[i];
        snprintf(r->topic, sizeof(r->topic), "%s", p->topic);
        r->partition = p->partition;
        r->committed = p->offset >= 0 ? p->offset : -1;
        r->low = lo->elems[i].offset;
        r->high = hi->elems[i].offset;
        r->lag = r->high - (r->committed >= 0 ? r->committed : r->low);
        if (r->lag < 0)
            r->lag = 0;
    }
    *rows_out = rows;
    *n_out = (size_t)parts->cnt;
    rows = NULL;
    rc = 0;
out:
    free(rows);
    if (parts != NULL)
        rd_kafka_topic_partition_list_destroy(parts);
    if (hi != NULL)
        rd_kafka_topic_partition_list_destroy(hi);
    if (lo != NULL)
        rd_kafka_topic_partition_list_destroy(lo);
    return rc;
}

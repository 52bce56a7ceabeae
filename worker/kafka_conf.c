/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The kafka module's client configurations: pinguard's defaults for the
 * consumer and the producer, the operator's kafka.* passthrough properties
 * routed to the client they mean something to, and the settings that
 * delivery's correctness depends on, forced last. Also checks a
 * configuration without creating a client (pinguard check-config).
 */
#include "kafka_internal.h"

#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Sets key; a refusal is reported for kafka.<name>. */
static int conf_set_as(rd_kafka_conf_t *conf, const char *key, const char *value,
                       const char *name, char *errbuf, size_t errlen)
{
    char err[256];
    if (rd_kafka_conf_set(conf, key, value, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        pg_errf(errbuf, errlen, "kafka.%s: %s", name, err);
        return PG_INPUT;
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

/* The operator set `key` for this client (scoped to it or not). */
static bool operator_set(const pg_kafka_t *k, const char *scope, const char *key)
{
    for (size_t i = 0; i < k->cfg->n_kafka; i++) {
        const char *name = k->cfg->kafka[i].key;
        if (strncmp(name, scope, 9) == 0)
            name += 9;
        if (strcmp(name, key) == 0)
            return true;
    }
    return false;
}

/* Builds one client's configuration: pinguard's defaults, then the operator's
 * passthrough properties, then the settings correctness depends on. */
rd_kafka_conf_t *pg_kafka_conf_make(pg_kafka_t *k, bool consumer, char *errbuf,
                                    size_t errlen)
{
    /* Prefetch bounds: librdkafka's defaults (50 MB fetches, 64 MB queued)
     * triple the worker's memory for no throughput a batch can use (peak RSS
     * 117 MB). What one fetch brings is the larger term: the queue bound
     * counts the payloads, checked only before a fetch, and a response of
     * fetch.max.bytes of compressed batches decompresses to several times
     * that, each message with its own op (heaptrack: 35 of 54 MB of heap in
     * the consumer's broker thread with 2 MB fetches). Within that bound,
     * whole-partition runs are cheapest: 512 KB per partition cut the
     * Produce requests per decision by a third (a batch's outputs share
     * fewer partitions) and Redis's CPU per decision by half (a batch names
     * fewer VMs), against 128 KB. A fetch of 512 KB needs message.max.bytes
     * no larger (librdkafka checks; it is only a request bound here, and a
     * batch larger than a fetch is still returned whole). Bounded prefetch
     * needs a short fetch.wait.max.ms: with the queue full, the only fetch in
     * flight holds just the idle partitions and the broker keeps it for the
     * whole wait (500 ms by default), stalling the drain; 10 ms costs under
     * 1% of a core when idle. Measured with tests/bench: the sweep of fetch
     * sizes in tests/bench/PROFILES.md, the drains in RESULTS.md. */
    static const char *const consumer_defaults[][2] = {
        {"auto.commit.interval.ms", "200"},
        {"enable.partition.eof", "false"},
        {"queued.max.messages.kbytes", "2048"},
        {"fetch.max.bytes", "524288"},
        {"max.partition.fetch.bytes", "524288"},
        {"message.max.bytes", "524288"},
        {"fetch.wait.max.ms", "10"}};
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
    /* kafka.message.max.bytes, unscoped, is meant for the outputs; the
     * consumer's fetches grow to match unless fetch.max.bytes was set. */
    size_t mmb = pg_kafka_conf_size(conf, "message.max.bytes", 0);
    if (consumer && !operator_set(k, scope, "fetch.max.bytes") &&
        pg_kafka_conf_size(conf, "fetch.max.bytes", 0) < mmb) {
        char v[32];
        snprintf(v, sizeof(v), "%zu", mmb);
        if (conf_set(conf, "fetch.max.bytes", v, errbuf, errlen) != 0)
            goto fail;
    }
    for (size_t i = 0; i < nforced; i++)
        if (conf_set(conf, forced[i][0], forced[i][1], errbuf, errlen) != 0)
            goto fail;
    /* The feed's consumers have their own group: sync's replicas share
     * sync.group.id; a rebuild reads in a group of its own that it never
     * commits to, so it disturbs nobody's offsets. */
    if (consumer && k->role == PG_KAFKA_SYNC &&
        conf_set(conf, "group.id", k->cfg->sync_group_id, errbuf, errlen) != 0)
        goto fail;
    if (consumer && k->role == PG_KAFKA_REBUILD) {
        char group[300];
        pg_kafka_rebuild_group(group, sizeof(group));
        if (conf_set(conf, "group.id", group, errbuf, errlen) != 0 ||
            conf_set(conf, "enable.auto.commit", "false", errbuf, errlen) != 0)
            goto fail;
    }
    if (!consumer && k->transactional && txn_id_default(k, conf, errbuf, errlen) != 0)
        goto fail;
    pg_kafka_conf_callbacks(k, conf, consumer);
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

void pg_kafka_rebuild_group(char *buf, size_t len)
{
    char host[256] = "localhost";
    gethostname(host, sizeof(host) - 1);
    snprintf(buf, len, "pinguard-rebuild-%s-%ld", host, (long)getpid());
}

int pg_kafka_check_config(const pg_config_t *cfg, char *errbuf, size_t errlen)
{
    pg_kafka_t k = {.cfg = cfg,
                    .transactional = cfg->delivery == PG_DELIVERY_EXACTLY_ONCE,
                    .quiet = true};
    for (int consumer = 0; consumer < 2; consumer++) {
        rd_kafka_conf_t *conf = pg_kafka_conf_make(&k, consumer, errbuf, errlen);
        if (conf == NULL)
            return PG_INPUT;
        rd_kafka_conf_destroy(conf);
    }
    return 0;
}

/* A size property of a configuration not yet handed to rd_kafka_new. */
size_t pg_kafka_conf_size(const rd_kafka_conf_t *conf, const char *key, size_t dflt)
{
    char value[64];
    size_t n = sizeof(value);
    if (rd_kafka_conf_get(conf, key, value, &n) != RD_KAFKA_CONF_OK)
        return dflt;
    char *end;
    unsigned long long v = strtoull(value, &end, 10);
    return end != value && *end == '\0' ? (size_t)v : dflt;
}

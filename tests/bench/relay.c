/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The benchmark's consume+produce ceiling: the smallest loop that does the
 * Kafka work a pinguard worker must do for every input -- consume it in a
 * group, produce one output, wait for the acknowledgement, store the offset --
 * and nothing else (no decoding, no Redis, no policy). It copies each input's
 * key and value to the output topic with the prefetch, batch and producer
 * settings pinguard uses by default, so its rate and latency are the floor a
 * worker on the same machine can be held against.
 *
 *   pg_bench_relay BROKERS GROUP IN_TOPIC OUT_TOPIC COUNT [BATCH [WAIT_MS
 * [PROP=VALUE...]]]
 *
 * PROP=VALUE pairs are set on the consumer after the defaults (experiments).
 * "pipelined" stores each offset as soon as its output is queued and waits
 * for the acknowledgements only at the end: not a safe way to run, but the
 * most a consume+produce loop can reach, for the ceiling.
 *
 * Exits 0 once COUNT inputs are relayed and their offsets committed, printing
 * "relayed N in S s" and, from librdkafka's statistics, the requests both
 * clients sent by type ("requests Fetch=N Produce=M ..."); COUNT 0 relays
 * until SIGTERM.
 */
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* librdkafka 2.0.2 stops fetching a partition for up to 1 s once its queue
 * passes queued.max.messages.kbytes (fetch.queue.backoff.ms came in 2.3.0).
 * When the queue ran dry while the last fetch saw more data, a pause and
 * resume of those partitions (their queues are empty: nothing is dropped)
 * wakes the fetcher at once. */
static int kick(rd_kafka_t *c)
{
    rd_kafka_topic_partition_list_t *parts = NULL, *lagging;
    int kicked = 0;
    if (rd_kafka_assignment(c, &parts) != 0)
        return 0;
    rd_kafka_position(c, parts);
    lagging = rd_kafka_topic_partition_list_new(parts->cnt);
    for (int i = 0; i < parts->cnt; i++) {
        int64_t lo, hi;
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        if (tp->offset < 0 ||
            rd_kafka_get_watermark_offsets(c, tp->topic, tp->partition, &lo, &hi) != 0)
            continue;
        if (hi > tp->offset)
            rd_kafka_topic_partition_list_add(lagging, tp->topic, tp->partition);
    }
    if (lagging->cnt > 0) {
        for (int i = 0; i < lagging->cnt; i++)
            lagging->elems[i].offset = -1;
        rd_kafka_offsets_for_times(c, lagging, 1000);
        kicked = lagging->cnt;
    }
    rd_kafka_topic_partition_list_destroy(lagging);
    rd_kafka_topic_partition_list_destroy(parts);
    return kicked;
}

/* Requests by type, summed over the brokers, per client (the statistics'
 * counts are totals since the client started). */
enum { N_REQ = 16 };
static const char *const req_names[N_REQ] = {"Produce",
                                             "Fetch",
                                             "ListOffsets",
                                             "Metadata",
                                             "OffsetCommit",
                                             "OffsetFetch",
                                             "FindCoordinator",
                                             "JoinGroup",
                                             "Heartbeat",
                                             "LeaveGroup",
                                             "SyncGroup",
                                             "InitProducerId",
                                             "AddPartitionsToTxn",
                                             "AddOffsetsToTxn",
                                             "EndTxn",
                                             "TxnOffsetCommit"};
static long long req_counts[2][N_REQ];

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)opaque;
    int client = rd_kafka_type(rk) == RD_KAFKA_CONSUMER ? 0 : 1;
    json_t *root = json_loadb(json, len, 0, NULL), *b;
    const char *name;
    long long sum[N_REQ] = {0};
    json_object_foreach(json_object_get(root, "brokers"), name, b)
    {
        for (int r = 0; r < N_REQ; r++) {
            json_t *v = json_object_get(json_object_get(b, "req"), req_names[r]);
            if (json_is_integer(v))
                sum[r] += (long long)json_integer_value(v);
        }
    }
    if (root != NULL)
        memcpy(req_counts[client], sum, sizeof(sum));
    json_decref(root);
    return 0;
}

static int set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char err[256];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof(err)) == RD_KAFKA_CONF_OK)
        return 0;
    fprintf(stderr, "relay: %s=%s: %s\n", k, v, err);
    return -1;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s BROKERS GROUP IN OUT COUNT [BATCH [WAIT_MS]]\n",
                argv[0]);
        return 2;
    }
    long long want = atoll(argv[5]);
    size_t batch = argc > 6 ? (size_t)atol(argv[6]) : 2000;
    double wait = (argc > 7 ? atof(argv[7]) : 5.0) / 1000.0;
    char err[512];
    int rc = 1;
    bool pipelined = false;
    rd_kafka_t *c = NULL, *p = NULL;
    rd_kafka_topic_t *out = NULL;
    rd_kafka_message_t **msgs = calloc(batch, sizeof(*msgs));
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    /* The consumer and producer settings of pinguard's defaults (kafka_conf.c). */
    rd_kafka_conf_t *cc = rd_kafka_conf_new(), *pc = rd_kafka_conf_new();
    if (msgs == NULL || set(cc, "bootstrap.servers", argv[1]) ||
        set(cc, "group.id", argv[2]) || set(cc, "auto.offset.reset", "earliest") ||
        set(cc, "enable.auto.offset.store", "false") ||
        set(cc, "auto.commit.interval.ms", "200") ||
        set(cc, "queued.max.messages.kbytes", "2048") ||
        set(cc, "fetch.max.bytes", "524288") ||
        set(cc, "message.max.bytes", "524288") ||
        set(cc, "max.partition.fetch.bytes", "524288") ||
        set(cc, "fetch.wait.max.ms", "10") || set(pc, "bootstrap.servers", argv[1]) ||
        set(pc, "linger.ms", "1") || set(pc, "compression.type", "lz4") ||
        set(pc, "enable.idempotence", "true") ||
        set(cc, "statistics.interval.ms", "500") ||
        set(pc, "statistics.interval.ms", "500")) {
        rd_kafka_conf_destroy(cc);
        rd_kafka_conf_destroy(pc);
        goto out;
    }
    for (int i = 8; i < argc; i++) {
        if (strcmp(argv[i], "pipelined") == 0) {
            pipelined = true;
            continue;
        }
        char *eq = strchr(argv[i], '=');
        if (eq == NULL) {
            fprintf(stderr, "relay: %s: expected PROP=VALUE\n", argv[i]);
            rd_kafka_conf_destroy(cc);
            rd_kafka_conf_destroy(pc);
            goto out;
        }
        *eq = '\0';
        if (set(cc, argv[i], eq + 1) != 0) {
            rd_kafka_conf_destroy(cc);
            rd_kafka_conf_destroy(pc);
            goto out;
        }
    }
    rd_kafka_conf_set_stats_cb(cc, on_stats);
    rd_kafka_conf_set_stats_cb(pc, on_stats);
    if ((p = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof(err))) == NULL) {
        fprintf(stderr, "relay: producer: %s\n", err);
        rd_kafka_conf_destroy(pc);
        rd_kafka_conf_destroy(cc);
        goto out;
    }
    if ((c = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof(err))) == NULL) {
        fprintf(stderr, "relay: consumer: %s\n", err);
        rd_kafka_conf_destroy(cc);
        goto out;
    }
    rd_kafka_poll_set_consumer(c);
    out = rd_kafka_topic_new(p, argv[4], NULL);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(3);
    for (char *save = NULL, *t = strtok_r(argv[3], ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save))
        rd_kafka_topic_partition_list_add(sub, t, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(c, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        fprintf(stderr, "relay: subscribe: %s\n", rd_kafka_err2str(e));
        goto out;
    }

    long long done = 0, kicks = 0;
    double t0 = now_s();
    while (!stop && (want == 0 || done < want)) {
        size_t n = 0;
        double deadline = 0;
        while (n < batch) {
            int timeout = n == 0 ? 100 : (int)((deadline - now_s()) * 1000);
            if (n > 0 && timeout < 0)
                break;
            rd_kafka_message_t *m = rd_kafka_consumer_poll(c, n == 0 ? 5 : timeout);
            if (m == NULL && kick(c) > 0)
                kicks++;
            if (m == NULL) {
                if (n == 0 || stop)
                    break;
                continue;
            }
            if (m->err) {
                rd_kafka_message_destroy(m);
                continue;
            }
            if (n == 0)
                deadline = now_s() + wait;
            msgs[n++] = m;
        }
        for (size_t i = 0; i < n; i++) {
            while (rd_kafka_produce(out, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY,
                                    msgs[i]->payload, msgs[i]->len, msgs[i]->key,
                                    msgs[i]->key_len, NULL) != 0)
                rd_kafka_poll(p, 10); /* queue full: serve delivery reports */
        }
        if (pipelined)
            rd_kafka_poll(p, 0);
        else
            while (rd_kafka_outq_len(p) > 0)
                rd_kafka_flush(p, 1000);
        for (size_t i = 0; i < n; i++) {
            rd_kafka_offset_store(msgs[i]->rkt, msgs[i]->partition, msgs[i]->offset);
            rd_kafka_message_destroy(msgs[i]);
        }
        done += (long long)n;
    }
    while (rd_kafka_outq_len(p) > 0)
        rd_kafka_flush(p, 1000);
    e = rd_kafka_commit(c, NULL, 0);
    if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET) {
        fprintf(stderr, "relay: commit: %s\n", rd_kafka_err2str(e));
        goto out;
    }
    printf("relayed %lld in %.3f s (%lld kicks)\n", done, now_s() - t0, kicks);
    /* The next statistics report counts the drain's last requests. */
    for (double until = now_s() + 0.6; now_s() < until;) {
        rd_kafka_poll(p, 50);
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 50);
        if (m != NULL)
            rd_kafka_message_destroy(m);
    }
    printf("requests");
    for (int r = 0; r < N_REQ; r++)
        printf(" %s=%lld", req_names[r], req_counts[0][r] + req_counts[1][r]);
    printf("\n");
    rc = 0;
out:
    if (c != NULL) {
        rd_kafka_consumer_close(c);
        rd_kafka_destroy(c);
    }
    if (out != NULL)
        rd_kafka_topic_destroy(out);
    if (p != NULL)
        rd_kafka_destroy(p);
    free(msgs);
    return rc;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The kafka module's plain producer, for the CLI: `pinguard publish` puts
 * VmBindings records on the binding feed, and operator edits put AuditEvent
 * records on the audit trail. Idempotent, with pinguard's producer defaults
 * and the operator's passthrough properties; no consumer, no transactions.
 * A topic is checked to exist before its first record, so a missing topic is
 * an error at once instead of a timeout a minute later. And the reader of
 * `pinguard audit`: a consumer that assigns itself every partition of one
 * topic from a point in time (offsets_for_times) to the end offsets read at
 * its start, read_committed, in a group of its own that is never joined or
 * committed to.
 */
#include "kafka_internal.h"

#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_TOPICS = 8, CHECK_MS = 5000 };

struct pg_kafka_publisher {
    pg_kafka_t k; /* for the configuration and the fatal state */
    size_t acked, failed;
    char first_error[256];
    char *checked[MAX_TOPICS];
    size_t n_checked;
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    pg_kafka_publisher_t *p = opaque;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        p->acked++;
        return;
    }
    if (p->failed++ == 0)
        snprintf(p->first_error, sizeof(p->first_error), "%s: %s",
                 rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
}

pg_kafka_publisher_t *pg_kafka_publisher_new(const pg_config_t *cfg, char *errbuf,
                                             size_t errlen)
{
    char err[512];
    pg_kafka_publisher_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        pg_errf(errbuf, errlen, "out of memory");
        return NULL;
    }
    p->k.cfg = cfg;
    rd_kafka_conf_t *conf = pg_kafka_conf_make(&p->k, false, errbuf, errlen);
    if (conf == NULL) {
        free(p);
        return NULL;
    }
    /* Its own opaque and delivery report: counts, not per-record states. */
    rd_kafka_conf_set_opaque(conf, p);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    p->k.producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (p->k.producer == NULL) {
        rd_kafka_conf_destroy(conf);
        pg_errf(errbuf, errlen, "kafka producer: %s", err);
        free(p);
        return NULL;
    }
    return p;
}

/* One metadata request for the topic: PG_OK, PG_INPUT when it does not
 * exist, PG_RETRY when no broker answered. */
static int check_topic(pg_kafka_publisher_t *p, const char *topic, char *errbuf,
                       size_t errlen)
{
    for (size_t i = 0; i < p->n_checked; i++)
        if (strcmp(p->checked[i], topic) == 0)
            return PG_OK;
    rd_kafka_topic_t *t = rd_kafka_topic_new(p->k.producer, topic, NULL);
    if (t == NULL) {
        pg_errf(errbuf, errlen, "kafka topic %s: %s", topic,
                rd_kafka_err2str(rd_kafka_last_error()));
        return PG_INPUT;
    }
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(p->k.producer, 0, t, &md, CHECK_MS);
    rd_kafka_topic_destroy(t);
    if (err) {
        pg_errf(errbuf, errlen, "kafka metadata for %s: %s", topic,
                rd_kafka_err2str(err));
        return PG_RETRY;
    }
    rd_kafka_resp_err_t terr = md->topic_cnt == 1
                                   ? md->topics[0].err
                                   : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    rd_kafka_metadata_destroy(md);
    if (terr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
        pg_errf(errbuf, errlen, "kafka: topic %s does not exist", topic);
        return PG_INPUT;
    }
    if (terr) {
        pg_errf(errbuf, errlen, "kafka topic %s: %s", topic, rd_kafka_err2str(terr));
        return PG_RETRY;
    }
    if (p->n_checked < MAX_TOPICS && (p->checked[p->n_checked] = strdup(topic)) != NULL)
        p->n_checked++;
    return PG_OK;
}

int pg_kafka_publish(pg_kafka_publisher_t *p, const char *topic, const void *key,
                     size_t key_len, const void *value, size_t len, char *errbuf,
                     size_t errlen)
{
    int rc = check_topic(p, topic, errbuf, errlen);
    if (rc != PG_OK)
        return rc;
    void *v = (void *)value, *kp = (void *)key;
    size_t vlen = value != NULL ? len : 0;
    for (;;) {
        rd_kafka_resp_err_t err =
            rd_kafka_producev(p->k.producer, RD_KAFKA_V_TOPIC(topic),
                              RD_KAFKA_V_KEY(kp, key_len), RD_KAFKA_V_VALUE(v, vlen),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_poll(p->k.producer, 0);
            return PG_OK;
        }
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            pg_errf(errbuf, errlen, "kafka produce to %s: %s", topic,
                    rd_kafka_err2str(err));
            return err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ? PG_INPUT : PG_FATAL;
        }
        rd_kafka_poll(p->k.producer, 100); /* room is made as reports arrive */
        if (pg_kafka_check_fatal(&p->k, errbuf, errlen) != 0)
            return PG_FATAL;
    }
}

int pg_kafka_publisher_flush(pg_kafka_publisher_t *p, int timeout_ms, size_t *acked,
                             size_t *failed, char *errbuf, size_t errlen)
{
    rd_kafka_resp_err_t err = rd_kafka_flush(p->k.producer, timeout_ms);
    if (acked != NULL)
        *acked = p->acked;
    if (failed != NULL)
        *failed = p->failed;
    if (p->failed > 0) {
        pg_errf(errbuf, errlen, "%zu record(s) failed, the first: %s", p->failed,
                p->first_error);
        return PG_RETRY;
    }
    if (err) {
        pg_errf(errbuf, errlen, "kafka: %d record(s) unacknowledged after %d ms",
                rd_kafka_outq_len(p->k.producer), timeout_ms);
        return PG_RETRY;
    }
    return PG_OK;
}

void pg_kafka_publisher_destroy(pg_kafka_publisher_t *p)
{
    if (p == NULL)
        return;
    if (p->k.producer != NULL) {
        if (rd_kafka_outq_len(p->k.producer) > 0)
            rd_kafka_flush(p->k.producer, 5000);
        rd_kafka_destroy(p->k.producer);
    }
    for (size_t i = 0; i < p->n_checked; i++)
        free(p->checked[i]);
    free(p);
}

/* --- Reading a topic back -------------------------------------------- */

enum { READ_META_MS = 10000, READ_POLL_MS = 200 };

/* Where a partition's read starts and ends, and whether it has ended. */
typedef struct {
    int32_t partition;
    int64_t start, end;
    bool done;
} read_part_t;

static read_part_t *find_part(read_part_t *parts, size_t n, int32_t partition)
{
    for (size_t i = 0; i < n; i++)
        if (parts[i].partition == partition)
            return &parts[i];
    return NULL;
}

/* The partitions of the topic and their end offsets (read_committed: the
 * last stable offsets), then the first offset of each at or after since_ms. */
static int read_plan(rd_kafka_t *c, const char *topic, int64_t since_ms, int timeout_ms,
                     read_part_t **out, size_t *n_out, char *errbuf, size_t errlen)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(c, topic, NULL);
    if (t == NULL) {
        pg_errf(errbuf, errlen, "kafka topic %s: %s", topic,
                rd_kafka_err2str(rd_kafka_last_error()));
        return PG_INPUT;
    }
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(
        c, 0, t, &md, timeout_ms < READ_META_MS ? timeout_ms : READ_META_MS);
    rd_kafka_topic_destroy(t);
    if (err) {
        pg_errf(errbuf, errlen, "kafka metadata for %s: %s", topic,
                rd_kafka_err2str(err));
        return PG_RETRY;
    }
    rd_kafka_resp_err_t terr = md->topic_cnt == 1
                                   ? md->topics[0].err
                                   : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    if (terr) {
        rd_kafka_metadata_destroy(md);
        if (terr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
            pg_errf(errbuf, errlen, "kafka: topic %s does not exist", topic);
            return PG_INPUT;
        }
        pg_errf(errbuf, errlen, "kafka topic %s: %s", topic, rd_kafka_err2str(terr));
        return PG_RETRY;
    }
    int cnt = md->topics[0].partition_cnt;
    rd_kafka_topic_partition_list_t *ends = rd_kafka_topic_partition_list_new(cnt);
    for (int i = 0; i < cnt; i++)
        rd_kafka_topic_partition_list_add(ends, topic, md->topics[0].partitions[i].id)
            ->offset = RD_KAFKA_OFFSET_END;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_partition_list_t *starts = rd_kafka_topic_partition_list_copy(ends);
    for (int i = 0; i < starts->cnt; i++)
        starts->elems[i].offset = since_ms;
    /* One ListOffsets request per leader each: -1 asks for the end (the
     * last stable offset for a read_committed client), a time for the first
     * record stamped at or after it (-1 back when there is none). */
    int rc = PG_OK;
    err = cnt > 0 ? rd_kafka_offsets_for_times(c, ends, timeout_ms) : 0;
    if (!err && cnt > 0)
        err = rd_kafka_offsets_for_times(c, starts, timeout_ms);
    for (int i = 0; !err && i < cnt; i++)
        err = ends->elems[i].err ? ends->elems[i].err : starts->elems[i].err;
    read_part_t *parts = calloc(cnt > 0 ? (size_t)cnt : 1, sizeof(*parts));
    if (err) {
        pg_errf(errbuf, errlen, "kafka list offsets of %s: %s", topic,
                rd_kafka_err2str(err));
        rc = PG_RETRY;
    } else if (parts == NULL) {
        pg_errf(errbuf, errlen, "out of memory");
        rc = PG_FATAL;
    } else {
        for (int i = 0; i < cnt; i++) {
            read_part_t *p = &parts[i];
            p->partition = ends->elems[i].partition;
            p->end = ends->elems[i].offset;
            p->start = starts->elems[i].offset;
            p->done = p->start < 0 || p->end < 0 || p->start >= p->end;
        }
        *out = parts;
        *n_out = (size_t)cnt;
        parts = NULL;
    }
    free(parts);
    rd_kafka_topic_partition_list_destroy(ends);
    rd_kafka_topic_partition_list_destroy(starts);
    return rc;
}

static bool all_done(const read_part_t *parts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!parts[i].done)
            return false;
    return true;
}

/* Marks partitions whose position passed their end: a transaction's marker
 * may be the last offset before it, and no record stands for it. */
static void check_positions(rd_kafka_t *c, const char *topic, read_part_t *parts,
                            size_t n)
{
    rd_kafka_topic_partition_list_t *pos = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        if (!parts[i].done)
            rd_kafka_topic_partition_list_add(pos, topic, parts[i].partition);
    if (pos->cnt > 0 && rd_kafka_position(c, pos) == RD_KAFKA_RESP_ERR_NO_ERROR)
        for (int i = 0; i < pos->cnt; i++) {
            read_part_t *p = find_part(parts, n, pos->elems[i].partition);
            if (p != NULL && pos->elems[i].offset >= 0 &&
                pos->elems[i].offset >= p->end)
                p->done = true;
        }
    rd_kafka_topic_partition_list_destroy(pos);
}

int pg_kafka_read_topic(const pg_config_t *cfg, const char *topic, int64_t since_ms,
                        int timeout_ms, pg_kafka_record_fn fn, void *ctx, char *errbuf,
                        size_t errlen)
{
    char err[512], group[300], host[256] = "localhost";
    read_part_t *parts = NULL;
    size_t n = 0;
    int rc = PG_FATAL;
    const int64_t deadline = pg_now_mono_ms() + timeout_ms;
    /* The callbacks' opaque: it holds the configuration and a fatal state. */
    pg_kafka_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        pg_errf(errbuf, errlen, "out of memory");
        return PG_FATAL;
    }
    k->cfg = cfg;
    k->role = PG_KAFKA_REBUILD; /* a consumer of no group's, committing nothing */
    rd_kafka_conf_t *conf = pg_kafka_conf_make(k, true, errbuf, errlen);
    if (conf == NULL) {
        free(k);
        return PG_FATAL;
    }
    gethostname(host, sizeof(host) - 1);
    snprintf(group, sizeof(group), "pinguard-reader-%s-%ld", host, (long)getpid());
    static const char *const forced[][2] = {{"enable.auto.commit", "false"},
                                            {"isolation.level", "read_committed"},
                                            {"enable.partition.eof", "true"}};
    if (rd_kafka_conf_set(conf, "group.id", group, err, sizeof(err)) !=
        RD_KAFKA_CONF_OK)
        goto conf_fail;
    for (size_t i = 0; i < sizeof(forced) / sizeof(forced[0]); i++)
        if (rd_kafka_conf_set(conf, forced[i][0], forced[i][1], err, sizeof(err)) !=
            RD_KAFKA_CONF_OK)
            goto conf_fail;
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (c == NULL) {
        rd_kafka_conf_destroy(conf);
        pg_errf(errbuf, errlen, "kafka consumer: %s", err);
        free(k);
        return PG_FATAL;
    }
    k->consumer = c;
    rd_kafka_poll_set_consumer(c);

    rc = read_plan(c, topic, since_ms, timeout_ms, &parts, &n, errbuf, errlen);
    if (rc != PG_OK)
        goto out;
    rd_kafka_topic_partition_list_t *assign = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        if (!parts[i].done)
            rd_kafka_topic_partition_list_add(assign, topic, parts[i].partition)
                ->offset = parts[i].start;
    rd_kafka_resp_err_t aerr =
        assign->cnt > 0 ? rd_kafka_assign(c, assign) : RD_KAFKA_RESP_ERR_NO_ERROR;
    rd_kafka_topic_partition_list_destroy(assign);
    if (aerr) {
        pg_errf(errbuf, errlen, "kafka assign: %s", rd_kafka_err2str(aerr));
        rc = PG_RETRY;
        goto out;
    }
    while (!all_done(parts, n)) {
        if (pg_kafka_check_fatal(k, errbuf, errlen) != 0) {
            rc = PG_FATAL;
            goto out;
        }
        if (pg_now_mono_ms() > deadline) {
            size_t left = 0;
            for (size_t i = 0; i < n; i++)
                left += !parts[i].done;
            pg_errf(
                errbuf, errlen,
                "kafka: %s not read to its end within %d ms (%zu partition(s) left)",
                topic, timeout_ms, left);
            rc = PG_RETRY;
            goto out;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, READ_POLL_MS);
        if (m == NULL) {
            check_positions(c, topic, parts, n);
            continue;
        }
        read_part_t *p = find_part(parts, n, m->partition);
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* As far as read_committed reads now. */
            if (p != NULL)
                p->done = true;
        } else if (m->err) {
            bool gone = m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
                        m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
                        m->err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION;
            if (gone || m->err == RD_KAFKA_RESP_ERR__FATAL ||
                m->err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) {
                pg_errf(errbuf, errlen, "kafka: reading %s: %s", topic,
                        rd_kafka_message_errstr(m));
                rc = m->err == RD_KAFKA_RESP_ERR__FATAL ? PG_FATAL : PG_RETRY;
                rd_kafka_message_destroy(m);
                goto out;
            }
            pg_log_warn("consume_error", "topic", topic, "error",
                        rd_kafka_err2name(m->err), "reason", rd_kafka_message_errstr(m),
                        NULL);
        } else if (p != NULL && !p->done && m->offset < p->end) {
            rd_kafka_timestamp_type_t tt;
            int64_t ts = rd_kafka_message_timestamp(m, &tt);
            const pg_kafka_record_t rec = {.partition = m->partition,
                                           .offset = m->offset,
                                           .timestamp_ms = ts,
                                           .key = m->key,
                                           .key_len = m->key_len,
                                           .value = m->payload,
                                           .len = m->len};
            int frc = fn(ctx, &rec);
            if (m->offset + 1 >= p->end)
                p->done = true;
            if (frc != 0) {
                rd_kafka_message_destroy(m);
                rc = frc;
                goto out;
            }
        } else if (p != NULL) {
            p->done = true; /* written after the read began */
        }
        rd_kafka_message_destroy(m);
    }
    rc = PG_OK;
out:
    free(parts);
    /* Never subscribed: closing leaves no group and commits nothing. */
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    free(k);
    return rc;
conf_fail:
    pg_errf(errbuf, errlen, "kafka reader configuration: %s", err);
    rd_kafka_conf_destroy(conf);
    free(k);
    return PG_FATAL;
}

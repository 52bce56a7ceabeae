/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The kafka module's plain producer, for the CLI: `pinguard publish` puts
 * VmBindings records on the binding feed, and operator edits put AuditEvent
 * records on the audit trail. Idempotent, with pinguard's producer defaults
 * and the operator's passthrough properties; no consumer, no transactions.
 * A topic is checked to exist before its first record, so a missing topic is
 * an error at once instead of a timeout a minute later.
 */
#include "kafka_internal.h"

#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

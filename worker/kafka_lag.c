/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Offsets and lag in the kafka module: the group's counters for metrics, the
 * inspector client of `pinguard lag`, and the committed, low, high and
 * consumed offsets of the input partitions.
 */
#include "kafka_internal.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pg_kafka_group_stats(const pg_kafka_t *k, pg_metrics_group_t *out)
{
    out->joined = atomic_load(&k->joined);
    out->rebalances = atomic_load(&k->rebalances);
    out->assigned_partitions = atomic_load(&k->assigned);
    out->transaction_aborts = atomic_load(&k->aborts);
    out->fetch_wakeups = atomic_load(&k->fetch_wakeups);
    out->stats = atomic_load(&k->stats);
    for (int c = 0; c < 2; c++)
        for (int r = 0; r < PG_M_KAFKA_REQ_TYPES; r++)
            out->requests[c][r] = atomic_load(&k->requests[c][r]);
}

pg_kafka_t *pg_kafka_new_inspector(const pg_config_t *cfg, char *errbuf, size_t errlen)
{
    char err[512];
    pg_kafka_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        pg_errf(errbuf, errlen, "out of memory");
        return NULL;
    }
    k->cfg = cfg;
    pg_kafka_init_consumed(k);
    k->in_topics[PG_IN_ADVICE] = cfg->topic_advice;
    k->in_topics[PG_IN_REQUESTS] = cfg->topic_requests;
    k->in_topics[PG_IN_RESULTS] = cfg->topic_results;
    k->n_in = PG_IN_COUNT;
    rd_kafka_conf_t *conf = pg_kafka_conf_make(k, true, errbuf, errlen);
    if (conf == NULL)
        goto fail;
    k->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (k->consumer == NULL) {
        rd_kafka_conf_destroy(conf);
        pg_errf(errbuf, errlen, "kafka consumer: %s", err);
        goto fail;
    }
    return k;
fail:
    pg_kafka_destroy(k);
    return NULL;
}

int pg_kafka_input_partitions(pg_kafka_t *k, rd_kafka_topic_partition_list_t **out,
                              char *errbuf, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(k->consumer, 1, NULL, &md, 10000);
    if (err) {
        pg_errf(errbuf, errlen, "kafka metadata: %s", rd_kafka_err2str(err));
        return PG_RETRY;
    }
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(32);
    for (size_t t = 0; t < k->n_in; t++)
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
        pg_errf(errbuf, errlen, "kafka list offsets: %s", rd_kafka_err2str(err));
        return PG_RETRY;
    }
    return 0;
}

int pg_kafka_lag(pg_kafka_t *k, bool all, pg_lag_row_t **rows_out, size_t *n_out,
                 char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *parts = NULL, *hi = NULL, *lo = NULL;
    pg_lag_row_t *rows = NULL;
    int rc = PG_RETRY;
    if (all) {
        if (pg_kafka_input_partitions(k, &parts, errbuf, errlen) != 0)
            goto out;
    } else {
        rd_kafka_resp_err_t err = rd_kafka_assignment(k->consumer, &parts);
        if (err) {
            pg_errf(errbuf, errlen, "kafka assignment: %s", rd_kafka_err2str(err));
            goto out;
        }
        rd_kafka_topic_partition_list_sort(parts, NULL, NULL);
    }
    rows = calloc(parts->cnt ? (size_t)parts->cnt : 1, sizeof(*rows));
    if (rows == NULL) {
        pg_errf(errbuf, errlen, "out of memory");
        goto out;
    }
    rd_kafka_topic_partition_list_t *pos = rd_kafka_topic_partition_list_copy(parts);
    if (!all)
        rd_kafka_position(k->consumer, pos); /* local: what was consumed */
    for (int i = 0; i < parts->cnt; i++) {
        int in = pg_kafka_input_of(k, pos->elems[i].topic);
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
            pg_errf(errbuf, errlen, "kafka committed: %s", rd_kafka_err2str(err));
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

int pg_kafka_end_offsets(pg_kafka_t *k, int64_t *ends, size_t max, size_t *n,
                         char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *parts = NULL, *hi = NULL, *lo = NULL;
    int rc = pg_kafka_input_partitions(k, &parts, errbuf, errlen);
    if (rc == 0 && parts->cnt > 0)
        rc = query_offsets(k, parts, RD_KAFKA_OFFSET_END, &hi, errbuf, errlen);
    if (rc == 0 && parts->cnt > 0)
        rc = query_offsets(k, parts, RD_KAFKA_OFFSET_BEGINNING, &lo, errbuf, errlen);
    size_t count = 0;
    for (size_t p = 0; p < max; p++)
        ends[p] = 0;
    for (int i = 0; rc == 0 && i < parts->cnt; i++) {
        int32_t p = parts->elems[i].partition;
        if (strcmp(parts->elems[i].topic, k->in_topics[0]) != 0 || p < 0 ||
            (size_t)p >= max)
            continue;
        /* A partition with nothing left to read needs no catching up. */
        ends[p] = hi->elems[i].offset > lo->elems[i].offset ? hi->elems[i].offset : 0;
        if ((size_t)p + 1 > count)
            count = (size_t)p + 1;
    }
    if (rc == 0)
        *n = count;
    if (parts != NULL)
        rd_kafka_topic_partition_list_destroy(parts);
    if (hi != NULL)
        rd_kafka_topic_partition_list_destroy(hi);
    if (lo != NULL)
        rd_kafka_topic_partition_list_destroy(lo);
    return rc;
}

int pg_kafka_reached(pg_kafka_t *k, const int64_t *ends, size_t n, bool *reached,
                     char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    *reached = false;
    if (!atomic_load(&k->joined))
        return 0;
    rd_kafka_resp_err_t err = rd_kafka_assignment(k->consumer, &parts);
    if (err) {
        pg_errf(errbuf, errlen, "kafka assignment: %s", rd_kafka_err2str(err));
        return PG_RETRY;
    }
    rd_kafka_position(k->consumer, parts); /* local: the next offset to fetch */
    /* A partition nothing was consumed from yet has no position: where the
     * group committed says how far it is (a restart with nothing new). */
    rd_kafka_topic_partition_list_t *unknown = rd_kafka_topic_partition_list_new(8);
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].offset < 0)
            rd_kafka_topic_partition_list_add(unknown, parts->elems[i].topic,
                                              parts->elems[i].partition);
    if (unknown->cnt > 0 && k->role != PG_KAFKA_REBUILD) {
        err = rd_kafka_committed(k->consumer, unknown, 5000);
        if (err) {
            rd_kafka_topic_partition_list_destroy(unknown);
            rd_kafka_topic_partition_list_destroy(parts);
            pg_errf(errbuf, errlen, "kafka committed: %s", rd_kafka_err2str(err));
            return PG_RETRY;
        }
        for (int i = 0; i < parts->cnt; i++) {
            rd_kafka_topic_partition_t *c = rd_kafka_topic_partition_list_find(
                unknown, parts->elems[i].topic, parts->elems[i].partition);
            if (c != NULL && parts->elems[i].offset < 0)
                parts->elems[i].offset = c->offset;
        }
    }
    rd_kafka_topic_partition_list_destroy(unknown);
    bool all = true;
    for (int i = 0; all && i < parts->cnt; i++) {
        int32_t p = parts->elems[i].partition;
        if (strcmp(parts->elems[i].topic, k->in_topics[0]) != 0 || p < 0 ||
            (size_t)p >= n || ends[p] <= 0)
            continue;
        all = parts->elems[i].offset >= ends[p];
    }
    rd_kafka_topic_partition_list_destroy(parts);
    *reached = all;
    return 0;
}

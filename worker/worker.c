/*
 * The decision loop of `pinguard run`:
 *   poll a batch -> decode -> one pipelined Redis read for every VM named ->
 *   policy -> produce decisions (or dead letters) -> then either
 *   exactly once: commit the outputs and the batch's input offsets in one
 *   Kafka transaction, or
 *   at least once: wait for the broker's acknowledgements and store the
 *   offsets of acknowledged inputs.
 * When Redis cannot answer, the batch is held, the partitions are paused (the
 * group protocol keeps being served) and the read is retried with capped
 * backoff; nothing is produced and nothing is stored meanwhile. A rebalance
 * while holding drops the batch: the partitions restart from their committed
 * offsets wherever they land.
 */
#include "worker.h"

#include "bindings.h"
#include "codec.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int rc;           /* 0, or the pg_codec_err_t that sends it to the DLQ */
    char detail[256]; /* why, for the pinguard-error header */
    pg_record_t rec;
    size_t vm_first; /* its VMs in the batch's lookup list */
    size_t vm_count;
    pg_delivery_state_t state;
} slot_t;

typedef struct {
    const pg_config_t *cfg;
    volatile sig_atomic_t *stop;
    pg_codec_t *codec;
    pg_bindings_t *bindings;
    pg_kafka_t *kafka;
    pg_metrics_t *metrics;
    pg_bindings_t *probe; /* the HTTP thread's own Redis connection, for /readyz */
    pg_arena_t *arena;
    pg_kafka_msg_t *msgs;
    slot_t *slots;
    pg_buf_t out;
    pg_policy_opts_t policy;
    pg_codec_limits_t limits;
    unsigned long long decided, dead_lettered, retried_batches, aborted_batches;
    bool batch_redone; /* the last batch (or part of it) must be consumed again */
} worker_t;

enum { HOLD_OK = 0, HOLD_DROPPED = 1, HOLD_STOPPED = 2, HOLD_FATAL = -1 };

static const pg_record_type_t expected_type[PG_IN_COUNT] = {
    [PG_IN_ADVICE] = PG_REC_DRS_ADVICE,
    [PG_IN_REQUESTS] = PG_REC_MIGRATE_REQUEST,
    [PG_IN_RESULTS] = PG_REC_MIGRATION_RESULT,
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_ms(void)
{
    return mono_us() / 1000;
}

/* Decodes every message and lists the VMs whose bindings the batch needs.
 * Returns 0, or -1 when the process (not a message) is at fault. */
static int decode_batch(worker_t *w, size_t n, const char ***vms_out, size_t *nvm_out,
                        char *errbuf, size_t errlen)
{
    size_t cap = n; /* one VM per request or result, grown below for advice */
    const char **vms = NULL;
    size_t nvm = 0;
    for (size_t i = 0; i < n; i++) {
        slot_t *s = &w->slots[i];
        const pg_kafka_msg_t *m = &w->msgs[i];
        memset(s, 0, sizeof(*s));
        s->rc = pg_codec_decode(w->codec, m->payload, m->len, &w->limits, w->arena,
                                &s->rec, s->detail, sizeof(s->detail));
        if (s->rc == PG_CODEC_ENOMEM || s->rc == PG_CODEC_EINTERNAL) {
            snprintf(errbuf, errlen, "decoding %s[%d]@%" PRId64 ": %s", m->topic,
                     (int)m->partition, m->offset, s->detail);
            return -1;
        }
        if (s->rc == 0 && s->rec.type != expected_type[m->input]) {
            s->rc = PG_CODEC_ETYPE;
            snprintf(s->detail, sizeof(s->detail), "a %s record on topic %s",
                     pg_record_type_name(s->rec.type), m->topic);
        }
        if (s->rc == 0 && s->rec.type == PG_REC_DRS_ADVICE)
            cap += s->rec.u.drs_advice.n_migrations;
    }
    vms = pg_arena_calloc(w->arena, cap ? cap : 1, sizeof(*vms));
    if (vms == NULL) {
        snprintf(errbuf, errlen, "out of memory listing %zu VMs", cap);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        slot_t *s = &w->slots[i];
        if (s->rc != 0)
            continue;
        s->vm_first = nvm;
        switch (s->rec.type) {
        case PG_REC_DRS_ADVICE:
            for (size_t j = 0; j < s->rec.u.drs_advice.n_migrations; j++)
                vms[nvm++] = s->rec.u.drs_advice.migrations[j].vm_uuid;
            break;
        case PG_REC_MIGRATE_REQUEST:
            vms[nvm++] = s->rec.u.migrate_request.vm_uuid;
            break;
        case PG_REC_MIGRATION_RESULT:
            vms[nvm++] = s->rec.u.migration_result.vm_uuid;
            break;
        default:
            break;
        }
        s->vm_count = nvm - s->vm_first;
    }
    *vms_out = vms;
    *nvm_out = nvm;
    return 0;
}

/* At least once: stores the offsets of inputs whose outputs were
 * acknowledged (all of them when wait). Returns 0, or -1 when fatal. */
static int settle(worker_t *w, bool wait, char *errbuf, size_t errlen)
{
    int rc = pg_kafka_pending_settle(w->kafka, wait, errbuf, errlen);
    if (rc == PG_KAFKA_EFATAL)
        return -1;
    if (rc == 1)
        w->batch_redone = true; /* an output failed: its input comes again */
    else if (rc != 0)
        pg_log_warn("settle_failed", "error", errbuf, NULL);
    return 0;
}

/* The next wait of a doubling backoff that starts at retry.backoff.min.ms. */
static int next_backoff(const pg_config_t *cfg, int current)
{
    if (current == 0)
        return cfg->retry_backoff_min_ms;
    return current > cfg->retry_backoff_max_ms / 2 ? cfg->retry_backoff_max_ms
                                                   : current * 2;
}

/* Sends the batch's lookups and reads the first VM's binding, holding the
 * batch while Redis cannot answer; the other bindings are read by
 * process_batch as it decides. *t0 is when the exchange that worked began. */
static int lookup_holding(worker_t *w, size_t n, const char **vms, size_t nvm,
                          pg_vm_binding_t *out, int64_t *t0, char *errbuf,
                          size_t errlen)
{
    uint64_t gen = pg_kafka_generation(w->kafka);
    int backoff = w->cfg->retry_backoff_min_ms;
    int64_t last_log = 0;
    unsigned attempts = 0;
    bool paused = false;
    char err[512];
    for (;;) {
        *t0 = mono_us();
        int rc = pg_bindings_send(w->bindings, vms, nvm, err, sizeof(err));
        if (rc == 0)
            rc = pg_bindings_next(w->bindings, vms[0], w->arena, &out[0], err,
                                  sizeof(err));
        if (rc == 0) {
            if (attempts > 0)
                pg_log_info("redis_recovered", "#attempts", (long long)attempts, NULL);
            if (paused && pg_kafka_resume(w->kafka) != 0) {
                pg_bindings_abandon(w->bindings);
                return HOLD_DROPPED; /* resume failed: redo the batch after a rebalance
                                      */
            }
            return HOLD_OK;
        }
        pg_metrics_redis_exchange(w->metrics, (double)(mono_us() - *t0) / 1e6, false);
        if (rc == PG_BINDINGS_EAUTH) {
            snprintf(errbuf, errlen, "%s (check redis.user and the password)", err);
            return HOLD_FATAL;
        }
        attempts++;
        w->retried_batches++;
        for (size_t i = 0; i < n; i++)
            pg_metrics_input(w->metrics, (int)w->msgs[i].input, PG_M_IN_RETRIED, 1);
        if (mono_ms() - last_log >= 10000) {
            pg_log_warn("redis_unavailable", "error", err, "#attempts",
                        (long long)attempts, "#retry_in_ms", (long long)backoff, NULL);
            last_log = mono_ms();
        }
        if (!paused) {
            pg_kafka_pause(w->kafka);
            paused = true;
        }
        int64_t until = mono_ms() + backoff;
        while (mono_ms() < until) {
            int64_t left = until - mono_ms();
            if (pg_kafka_idle(w->kafka, left < 100 ? (int)left : 100, errbuf, errlen) ==
                PG_KAFKA_EFATAL)
                return HOLD_FATAL;
            pg_metrics_tick(w->metrics);
            if (pg_kafka_generation(w->kafka) != gen)
                return HOLD_DROPPED;
            if (*w->stop)
                return HOLD_STOPPED;
        }
        backoff = next_backoff(w->cfg, backoff);
    }
}

static pg_device_ref_t *device_scratch(worker_t *w, size_t n)
{
    return pg_arena_calloc(w->arena, n ? n : 1, sizeof(pg_device_ref_t));
}

static int decide_advice(worker_t *w, const pg_drs_advice_t *a,
                         const pg_vm_binding_t *b, int64_t now, pg_record_t *out)
{
    size_t n = a->n_migrations, na = 0, nv = 0;
    pg_migration_advice_t *approved =
        pg_arena_calloc(w->arena, n ? n : 1, sizeof(*approved));
    pg_veto_t *vetoed = pg_arena_calloc(w->arena, n ? n : 1, sizeof(*vetoed));
    if (approved == NULL || vetoed == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        pg_device_ref_t *devs = device_scratch(w, b[i].n_devices);
        if (devs == NULL)
            return -1;
        pg_policy_verdict_t v;
        pg_policy_judge(&w->policy, &b[i], devs, &v);
        pg_metrics_unknown_kinds(w->metrics, v.n_unknown_kinds);
        pg_metrics_decision(w->metrics, PG_M_STREAM_ADVICE, (int)v.verdict,
                            v.verdict == PG_VERDICT_APPROVED ? -1 : (int)v.reason);
        if (v.verdict == PG_VERDICT_APPROVED) {
            approved[na++] = a->migrations[i];
            continue;
        }
        vetoed[nv++] = (pg_veto_t){.migration = a->migrations[i],
                                   .reason = v.reason,
                                   .n_devices = v.n_devices,
                                   .devices = devs};
        pg_log_info("advice_vetoed", "advice", a->advice_id, "vm",
                    a->migrations[i].vm_uuid, "reason", pg_veto_reason_name(v.reason),
                    "#devices", (long long)v.n_devices, NULL);
    }
    out->type = PG_REC_FILTERED_ADVICE;
    out->u.filtered_advice =
        (pg_filtered_advice_t){.advice_id = a->advice_id,
                               .cluster_uuid = a->cluster_uuid,
                               .generated_at_ms = a->generated_at_ms,
                               .decided_at_ms = now,
                               .n_approved = na,
                               .approved = approved,
                               .n_vetoed = nv,
                               .vetoed = vetoed};
    return 0;
}

static int decide_request(worker_t *w, const pg_migrate_request_t *r,
                          const pg_vm_binding_t *b, int64_t now, pg_record_t *out)
{
    pg_device_ref_t *devs = device_scratch(w, b->n_devices);
    if (devs == NULL)
        return -1;
    pg_policy_verdict_t v;
    pg_policy_judge(&w->policy, b, devs, &v);
    bool veto = v.verdict == PG_VERDICT_VETOED;
    pg_metrics_unknown_kinds(w->metrics, v.n_unknown_kinds);
    pg_metrics_decision(w->metrics, PG_M_STREAM_MIGRATE, (int)v.verdict,
                        veto ? (int)v.reason : -1);
    out->type = PG_REC_MIGRATE_DECISION;
    out->u.migrate_decision = (pg_migrate_decision_t){.request_id = r->request_id,
                                                      .vm_uuid = r->vm_uuid,
                                                      .src_host_uuid = r->src_host_uuid,
                                                      .dst_host_uuid = r->dst_host_uuid,
                                                      .origin = r->origin,
                                                      .verdict = v.verdict,
                                                      .has_reason = veto,
                                                      .reason = v.reason,
                                                      .n_devices = v.n_devices,
                                                      .devices = devs,
                                                      .decided_at_ms = now};
    if (veto)
        pg_log_info("request_vetoed", "request", r->request_id, "vm", r->vm_uuid,
                    "reason", pg_veto_reason_name(v.reason), "#devices",
                    (long long)v.n_devices, NULL);
    else
        pg_log_debug("request_approved", "request", r->request_id, "vm", r->vm_uuid,
                     NULL);
    return 0;
}

static int decide_result(worker_t *w, const pg_migration_result_t *r,
                         const pg_vm_binding_t *b, int64_t now, pg_record_t *out)
{
    pg_device_ref_t *devs = device_scratch(w, b->n_devices);
    if (devs == NULL)
        return -1;
    if (b->n_devices > 0)
        memcpy(devs, b->devices, b->n_devices * sizeof(*devs));
    pg_policy_sort_devices(devs, b->n_devices);
    pg_release_verdict_t v =
        pg_policy_release(r->src_host_uuid, r->dst_host_uuid, r->observed_host_uuid,
                          b->known ? b->host : NULL);
    pg_metrics_decision(w->metrics, PG_M_STREAM_RELEASE, (int)v.action, (int)v.reason);
    out->type = PG_REC_RELEASE_DECISION;
    out->u.release_decision =
        (pg_release_decision_t){.request_id = r->request_id,
                                .vm_uuid = r->vm_uuid,
                                .outcome = r->outcome,
                                .action = v.action,
                                .reason = v.reason,
                                .from_host_uuid = r->src_host_uuid,
                                .dst_host_uuid = r->dst_host_uuid,
                                .n_devices = b->n_devices,
                                .devices = devs,
                                .decided_at_ms = now};
    pg_log_info("release_decided", "request", r->request_id, "vm", r->vm_uuid,
                "outcome", pg_outcome_name(r->outcome), "action",
                pg_release_action_name(v.action), "reason",
                pg_release_reason_name(v.reason), "#devices", (long long)b->n_devices,
                NULL);
    return 0;
}

static int produce_dead_letter(worker_t *w, size_t i, pg_delivery_state_t *state,
                               char *errbuf, size_t errlen)
{
    const pg_kafka_msg_t *m = &w->msgs[i];
    slot_t *s = &w->slots[i];
    char error[320], partition[16], offset[24];
    snprintf(error, sizeof(error), "%s: %s", pg_codec_err_name(s->rc), s->detail);
    snprintf(partition, sizeof(partition), "%d", (int)m->partition);
    snprintf(offset, sizeof(offset), "%" PRId64, m->offset);
    const pg_kafka_header_t headers[] = {
        {"pinguard-error", error},
        {"pinguard-source-topic", m->topic},
        {"pinguard-source-partition", partition},
        {"pinguard-source-offset", offset},
    };
    pg_log_warn("input_dead_lettered", "topic", m->topic, "#partition",
                (long long)m->partition, "#offset", (long long)m->offset, "error",
                error, NULL);
    w->dead_lettered++;
    pg_metrics_input(w->metrics, (int)m->input, PG_M_IN_DLQ, 1);
    return pg_kafka_produce(w->kafka, PG_OUT_DLQ, m->key, m->key_len, m->payload,
                            m->len, headers, 4, state, errbuf, errlen);
}

static int produce_decision(worker_t *w, size_t i, const pg_vm_binding_t *b,
                            int64_t now, pg_delivery_state_t *state, char *errbuf,
                            size_t errlen)
{
    slot_t *s = &w->slots[i];
    const pg_vm_binding_t *vb = b + s->vm_first;
    pg_record_t out;
    pg_output_t topic;
    const char *key;
    int rc;
    switch (s->rec.type) {
    case PG_REC_DRS_ADVICE:
        rc = decide_advice(w, &s->rec.u.drs_advice, vb, now, &out);
        topic = PG_OUT_FILTERED;
        key = s->rec.u.drs_advice.cluster_uuid;
        break;
    case PG_REC_MIGRATE_REQUEST:
        rc = decide_request(w, &s->rec.u.migrate_request, vb, now, &out);
        topic = PG_OUT_DECISIONS;
        key = s->rec.u.migrate_request.vm_uuid;
        break;
    case PG_REC_MIGRATION_RESULT:
        rc = decide_result(w, &s->rec.u.migration_result, vb, now, &out);
        topic = PG_OUT_RELEASE;
        key = s->rec.u.migration_result.vm_uuid;
        break;
    default:
        snprintf(errbuf, errlen, "no decision for a %s",
                 pg_record_type_name(s->rec.type));
        return PG_KAFKA_EFATAL;
    }
    if (rc != 0) {
        snprintf(errbuf, errlen, "out of memory deciding a %s",
                 pg_record_type_name(s->rec.type));
        return PG_KAFKA_EFATAL;
    }
    pg_buf_reset(&w->out);
    rc = pg_codec_encode(w->codec, &out, &w->out, errbuf, errlen);
    if (rc != 0)
        return PG_KAFKA_EFATAL; /* our own record failed to encode: a bug */
    w->decided++;
    pg_metrics_input(w->metrics, (int)w->msgs[i].input, PG_M_IN_DECIDED, 1);
    return pg_kafka_produce(w->kafka, topic, key, strlen(key), w->out.data, w->out.len,
                            NULL, 0, state, errbuf, errlen);
}

/* One batch, start to finish. Returns 0, 1 to stop (signal while holding), or
 * -1 on a fatal error. */
static int process_batch(worker_t *w, size_t n, char *errbuf, size_t errlen)
{
    const char **vms = NULL;
    size_t nvm = 0;
    if (decode_batch(w, n, &vms, &nvm, errbuf, errlen) != 0)
        return -1;
    pg_vm_binding_t *bindings =
        pg_arena_calloc(w->arena, nvm ? nvm : 1, sizeof(*bindings));
    if (bindings == NULL) {
        snprintf(errbuf, errlen, "out of memory for %zu bindings", nvm);
        return -1;
    }
    size_t have = 0; /* bindings read so far */
    int64_t t0 = 0;
    if (nvm > 0) {
        int hold = lookup_holding(w, n, vms, nvm, bindings, &t0, errbuf, errlen);
        if (hold == HOLD_FATAL)
            return -1;
        if (hold == HOLD_STOPPED)
            return 1;
        if (hold == HOLD_DROPPED) {
            pg_log_info("batch_dropped", "why", "rebalance while waiting for redis",
                        "#messages", (long long)n, NULL);
            return 0;
        }
        have = 1;
    }

    bool txn = pg_kafka_transactional(w->kafka);
    if (txn && pg_kafka_txn_begin(w->kafka, errbuf, errlen) != 0) {
        pg_bindings_abandon(w->bindings);
        return -1;
    }
    int64_t now = wall_ms();
    size_t failed = 0;
    bool redis_failed = false;
    char first_error[512] = "";
    for (size_t i = 0; i < n; i++) {
        slot_t *s = &w->slots[i];
        /* At least once, the kafka module tracks each input until its output
         * is acknowledged; in a transaction the commit answers for all. */
        pg_delivery_state_t *state =
            txn ? &s->state : pg_kafka_pending_add(w->kafka, &w->msgs[i]);
        if (state == NULL) { /* the main loop made room for a whole batch */
            snprintf(errbuf, errlen, "no room to track input %zu of %zu", i, n);
            pg_bindings_abandon(w->bindings);
            return -1;
        }
        /* This input's bindings, read as Redis sends them. A failure here
         * leaves it and the rest of the batch undecided, to be redone. */
        while (s->rc == 0 && !redis_failed && have < s->vm_first + s->vm_count) {
            if (pg_bindings_next(w->bindings, vms[have], w->arena, &bindings[have],
                                 errbuf, errlen) != 0) {
                redis_failed = true;
                pg_log_warn("redis_failed_mid_batch", "error", errbuf, "#undecided",
                            (long long)(n - i), NULL);
                pg_metrics_redis_exchange(w->metrics, (double)(mono_us() - t0) / 1e6,
                                          false);
            } else {
                have++;
            }
        }
        int rc;
        if (s->rc != 0)
            rc = produce_dead_letter(w, i, state, errbuf, errlen);
        else if (redis_failed)
            rc = PG_KAFKA_ERETRY;
        else
            rc = produce_decision(w, i, bindings, now, state, errbuf, errlen);
        if (rc == PG_KAFKA_EFATAL) {
            pg_bindings_abandon(w->bindings);
            return -1;
        }
        if (rc != 0) {
            if (failed++ == 0)
                snprintf(first_error, sizeof(first_error), "%s", errbuf);
            *state = PG_DELIVERY_FAILED;
        }
    }
    if (nvm > 0 && !redis_failed)
        pg_metrics_redis_exchange(w->metrics, (double)(mono_us() - t0) / 1e6, true);
    if (failed > 0) {
        /* One line per batch, not per message: a broken producer would
         * otherwise flood the log a thousand lines at a time. */
        pg_log_warn("produce_failed", "#messages", (long long)failed, "error",
                    first_error, NULL);
        w->batch_redone = true;
    }
    if (txn) {
        /* All or nothing: a batch with a failed output is aborted and
         * consumed again from the committed offsets. */
        int rc = failed ? pg_kafka_txn_abort(w->kafka, errbuf, errlen)
                        : pg_kafka_txn_commit(w->kafka, w->msgs, n, errbuf, errlen);
        if (rc == PG_KAFKA_EFATAL)
            return -1;
        if (rc != 0) {
            w->aborted_batches++;
            w->batch_redone = true;
            for (size_t i = 0; i < n; i++)
                pg_metrics_input(w->metrics, (int)w->msgs[i].input, PG_M_IN_RETRIED, 1);
        }
        return 0;
    }
    /* The acknowledgements arrive while the next batch is read and decided. */
    return settle(w, false, errbuf, errlen) != 0 ? -1 : 0;
}

static int scrape_lag(void *ctx, pg_lag_row_t **rows, size_t *n, char *errbuf,
                      size_t errlen)
{
    worker_t *w = ctx;
    return pg_kafka_lag(w->kafka, false, rows, n, errbuf, errlen);
}

static void scrape_group(void *ctx, pg_metrics_group_t *out)
{
    worker_t *w = ctx;
    pg_kafka_group_stats_t s;
    pg_kafka_group_stats(w->kafka, &s);
    *out = (pg_metrics_group_t){.joined = s.joined,
                                .rebalances = s.rebalances,
                                .assigned_partitions = s.assigned_partitions,
                                .transaction_aborts = s.transaction_aborts,
                                .fetch_wakeups = s.fetch_wakeups};
}

static bool scrape_redis(void *ctx)
{
    worker_t *w = ctx;
    char err[256];
    return pg_bindings_ping(w->probe, err, sizeof(err)) == 0;
}

static int start_metrics(worker_t *w, const pg_bindings_opts_t *bopts, char *errbuf,
                         size_t errlen)
{
    const char *topics[3] = {w->cfg->topic_advice, w->cfg->topic_requests,
                             w->cfg->topic_results};
    w->metrics = pg_metrics_new(topics, w->cfg->health_stall_timeout_ms);
    w->probe = pg_bindings_new(bopts);
    if (w->metrics == NULL || w->probe == NULL) {
        snprintf(errbuf, errlen, "out of memory starting the metrics");
        return -1;
    }
    pg_metrics_set_sources(w->metrics, scrape_lag, scrape_group, scrape_redis, w);
    if (w->cfg->metrics_listen[0] == '\0')
        return 0;
    if (pg_metrics_serve(w->metrics, w->cfg->metrics_listen, errbuf, errlen) != 0)
        return -1;
    pg_log_info("metrics_listening", "listen", w->cfg->metrics_listen, "#port",
                (long long)pg_metrics_port(w->metrics), NULL);
    return 0;
}

/* Sleeps in slices, so that a stop request is honoured within 100 ms. */
static void wait_ms(worker_t *w, int ms)
{
    int64_t until = mono_ms() + ms;
    while (!*w->stop && mono_ms() < until) {
        int64_t left = until - mono_ms();
        struct timespec ts = {0, (left < 100 ? left : 100) * 1000000L};
        nanosleep(&ts, NULL);
        pg_metrics_tick(w->metrics);
    }
}

static void worker_teardown(worker_t *w)
{
    /* The HTTP thread reads the Kafka client: stop it first. Then Kafka:
     * closing the consumer commits what was acknowledged. */
    pg_metrics_destroy(w->metrics);
    pg_bindings_destroy(w->probe);
    pg_kafka_destroy(w->kafka);
    pg_bindings_destroy(w->bindings);
    pg_codec_destroy(w->codec);
    pg_arena_destroy(w->arena);
    pg_buf_free(&w->out);
    free(w->msgs);
    free(w->slots);
}

int pg_worker_run(const pg_config_t *cfg, volatile sig_atomic_t *stop, char *errbuf,
                  size_t errlen)
{
    int rc = -1;
    size_t max = (size_t)cfg->batch_max_messages;
    worker_t w = {
        .cfg = cfg,
        .stop = stop,
        .policy = {.allow_unknown_vm = cfg->allow_unknown_vm},
        .limits = {.max_string = (size_t)cfg->max_string_length,
                   .max_items = (size_t)cfg->advice_max_migrations},
    };
    const pg_bindings_opts_t bopts = {.host = cfg->redis_host,
                                      .port = cfg->redis_port,
                                      .db = cfg->redis_db,
                                      .user = cfg->redis_user,
                                      .password = cfg->redis_password,
                                      .connect_timeout_ms =
                                          cfg->redis_connect_timeout_ms,
                                      .timeout_ms = cfg->redis_timeout_ms};

    w.msgs = calloc(max, sizeof(*w.msgs));
    w.slots = calloc(max, sizeof(*w.slots));
    w.arena = pg_arena_new(1 << 20);
    w.bindings = pg_bindings_new(&bopts);
    if (w.msgs == NULL || w.slots == NULL || w.arena == NULL || w.bindings == NULL) {
        snprintf(errbuf, errlen, "out of memory starting the worker");
        goto out;
    }
    if ((w.codec = pg_codec_new(errbuf, errlen)) == NULL)
        goto out;
    /* Wrong Redis credentials are a configuration error: fail before joining. */
    char perr[512];
    if (pg_bindings_ping(w.bindings, perr, sizeof(perr)) == PG_BINDINGS_EAUTH) {
        snprintf(errbuf, errlen, "%s (check redis.user and the password)", perr);
        goto out;
    }
    if ((w.kafka = pg_kafka_new(cfg, errbuf, errlen)) == NULL)
        goto out;
    if (start_metrics(&w, &bopts, errbuf, errlen) != 0)
        goto out;
    pg_log_info("worker_started", "group", pg_config_kafka_get(cfg, "group.id"),
                "brokers", pg_config_kafka_get(cfg, "bootstrap.servers"), "delivery",
                cfg->delivery == PG_DELIVERY_EXACTLY_ONCE ? "exactly-once"
                                                          : "at-least-once",
                NULL);

    int redo_backoff = 0;
    while (!*stop) {
        pg_metrics_tick(w.metrics);
        /* Room to track a whole batch, made before it is read: a settle
         * between reading and producing could rewind a partition under it. */
        if (!pg_kafka_transactional(w.kafka) && pg_kafka_pending_room(w.kafka) < max &&
            settle(&w, true, errbuf, errlen) != 0)
            goto out;
        int n = pg_kafka_poll_batch(w.kafka, w.msgs, max, (size_t)cfg->batch_max_bytes,
                                    100, cfg->batch_max_wait_ms, errbuf, errlen);
        if (n < 0)
            goto out;
        if (n == 0) {
            if (!pg_kafka_transactional(w.kafka) &&
                settle(&w, false, errbuf, errlen) != 0)
                goto out;
            continue;
        }
        w.batch_redone = false;
        int brc = process_batch(&w, (size_t)n, errbuf, errlen);
        pg_metrics_batch(w.metrics);
        pg_kafka_batch_release(w.msgs, (size_t)n);
        pg_arena_reset(w.arena);
        if (brc < 0)
            goto out;
        if (brc > 0)
            break;
        /* A batch that must be redone waits first, doubling up to the cap,
         * so a persistent produce failure cannot spin the loop. */
        redo_backoff = w.batch_redone ? next_backoff(cfg, redo_backoff) : 0;
        wait_ms(&w, redo_backoff);
    }
    rc = 0;
    pg_log_info("worker_stopping", "#decided", (long long)w.decided, "#dead_lettered",
                (long long)w.dead_lettered, "#aborted_batches",
                (long long)w.aborted_batches, NULL);
out:
    worker_teardown(&w);
    return rc;
}

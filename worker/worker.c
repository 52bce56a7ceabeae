/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The decision loop of `pinguard run`:
 *   poll a batch -> decode -> one pipelined Redis read for every distinct VM
 *   named -> policy -> produce decisions (or dead letters) -> finish, which
 *   the kafka module does for either delivery mode (exactly once: commit the
 *   outputs and the batch's input offsets in one transaction; at least
 *   once: store the offsets of inputs whose outputs the broker acknowledged,
 *   as the acknowledgements arrive).
 * Whatever an input or the cache holds, the partition moves on: undecodable
 * input, a decision too large for its topic, an input too large to copy and
 * a decision that cannot be encoded each go to the DLQ with their reason,
 * and a malformed cache entry is decided as an unknown VM. Only the process
 * failing (out of memory, a fatal client state) stops the loop.
 * When Redis cannot answer, the batch is held, the partitions are paused (the
 * group protocol keeps being served) and the read is retried with capped
 * backoff; nothing is produced and nothing is stored meanwhile. A rebalance
 * while holding drops the batch: the partitions restart from their committed
 * offsets wherever they land.
 * Every decision carries the VM's :generation read with it (bindingsGeneration,
 * null when the cache holds none), and a request's minGeneration fences it.
 * Decision and input counters move only for what committed: each input's
 * tally is handed to metrics when the kafka module reports the input
 * settled as committed (its transaction committed, or its offset was
 * stored).
 */
#include "worker.h"

#include "bindings.h"
#include "codec.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int rc;           /* 0, or the pg_codec_err_t that sends it to the DLQ */
    char detail[256]; /* why, for the pinguard-error header */
    pg_record_t rec;
    const size_t *vm_idx; /* per VM the record names: its index in the batch's
                             list of distinct VMs */
    size_t vm_count;
    size_t vm_need; /* bindings to read before this input can be decided */
    int note;       /* a result's index in the batch's notes, or -1 */
    pg_metrics_tally_t tally;
} slot_t;

typedef struct {
    const pg_config_t *cfg;
    volatile sig_atomic_t *stop;
    pg_codec_t *codec;
    pg_bindings_t *bindings;
    pg_kafka_t *kafka;
    pg_metrics_t *metrics;
    pg_bindings_t *probe; /* the metrics refresher's own Redis connection */
    pg_arena_t *arena;
    pg_kafka_msg_t *msgs;
    slot_t *slots;
    pg_buf_t out;
    pg_policy_opts_t policy;
    pg_codec_limits_t limits;
    /* The tallies of the inputs in flight, in the order the kafka module
     * tracks them; popped as it settles each (at its commit, exactly once). */
    pg_metrics_tally_t *tallies;
    size_t tally_cap, tally_head, tally_len;
    /* The batch's results, noted for quarantine with its lookups, and what
     * each note did. */
    pg_result_note_t *notes;
    pg_note_outcome_t *note_out;
    size_t n_notes;
    pg_buf_t audit;                 /* an encoded AuditEvent */
    pg_delivery_state_t audit_sink; /* audit events ride with their input's
                                       decision; their own reports are only logged */
    unsigned long long decided, dead_lettered, retried_batches, aborted_batches;
    bool batch_redone; /* the last batch (or part of it) must be consumed again */
    bool stopped;      /* a stop request came while a batch was held */
} worker_t;

enum { HOLD_OK = 0, HOLD_DROPPED = 1, HOLD_STOPPED = 2, HOLD_FATAL = -1 };

static const pg_record_type_t expected_type[PG_IN_COUNT] = {
    [PG_IN_ADVICE] = PG_REC_DRS_ADVICE,
    [PG_IN_REQUESTS] = PG_REC_MIGRATE_REQUEST,
    [PG_IN_RESULTS] = PG_REC_MIGRATION_RESULT,
};

/* The batch's distinct VMs: an open-addressing set over the uuids (which the
 * decoded records own), so that a VM named by many inputs is read once. */
typedef struct {
    const char **list; /* distinct uuids, in order of first appearance */
    size_t n;
    const char **slots;
    size_t *index;
    size_t mask;
} vmset_t;

static int vmset_init(pg_arena_t *arena, vmset_t *set, size_t most)
{
    size_t cap = 16;
    while (cap < 2 * most)
        cap *= 2;
    set->list = pg_arena_calloc(arena, most ? most : 1, sizeof(*set->list));
    set->slots = pg_arena_calloc(arena, cap, sizeof(*set->slots));
    set->index = pg_arena_calloc(arena, cap, sizeof(*set->index));
    set->mask = cap - 1;
    set->n = 0;
    return set->list && set->slots && set->index ? 0 : -1;
}

static size_t vmset_add(vmset_t *set, const char *vm)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)vm; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    size_t i = (size_t)h & set->mask;
    while (set->slots[i] != NULL) {
        if (strcmp(set->slots[i], vm) == 0)
            return set->index[i];
        i = (i + 1) & set->mask;
    }
    set->slots[i] = vm;
    set->index[i] = set->n;
    set->list[set->n] = vm;
    return set->n++;
}

/* Decodes every message and lists the distinct VMs whose bindings the batch
 * needs. Returns PG_OK, or PG_FATAL when the process (not a message) is at
 * fault. */
static int decode_batch(worker_t *w, size_t n, const char ***vms_out, size_t *nvm_out,
                        char *errbuf, size_t errlen)
{
    size_t most = 0;
    for (size_t i = 0; i < n; i++) {
        slot_t *s = &w->slots[i];
        const pg_kafka_msg_t *m = &w->msgs[i];
        memset(s, 0, sizeof(*s));
        s->rc = pg_codec_decode(w->codec, m->payload, m->len, &w->limits, w->arena,
                                &s->rec, s->detail, sizeof(s->detail));
        if (pg_codec_status(s->rc) == PG_FATAL) {
            pg_errf(errbuf, errlen, "decoding %s[%d]@%" PRId64 ": %s", m->topic,
                    (int)m->partition, m->offset, s->detail);
            return PG_FATAL;
        }
        if (s->rc == 0 && s->rec.type != expected_type[m->input]) {
            s->rc = PG_CODEC_ETYPE;
            snprintf(s->detail, sizeof(s->detail), "a %s record on topic %s",
                     pg_record_type_name(s->rec.type), m->topic);
        }
        if (s->rc == 0)
            most +=
                s->rec.type == PG_REC_DRS_ADVICE ? s->rec.u.drs_advice.n_migrations : 1;
    }
    vmset_t set;
    if (vmset_init(w->arena, &set, most) != 0) {
        pg_errf(errbuf, errlen, "out of memory listing %zu VMs", most);
        return PG_FATAL;
    }
    w->n_notes = 0;
    for (size_t i = 0; i < n; i++) {
        slot_t *s = &w->slots[i];
        s->note = -1;
        if (s->rc != 0)
            continue;
        const char *one = NULL;
        switch (s->rec.type) {
        case PG_REC_DRS_ADVICE:
            s->vm_count = s->rec.u.drs_advice.n_migrations;
            break;
        case PG_REC_MIGRATE_REQUEST:
            one = s->rec.u.migrate_request.vm_uuid;
            s->vm_count = 1;
            break;
        case PG_REC_MIGRATION_RESULT: {
            const pg_migration_result_t *r = &s->rec.u.migration_result;
            one = r->vm_uuid;
            s->vm_count = 1;
            s->note = (int)w->n_notes;
            w->notes[w->n_notes++] =
                (pg_result_note_t){.vm_uuid = r->vm_uuid,
                                   .request_id = r->request_id,
                                   .outcome = r->outcome,
                                   .finished_at_ms = r->finished_at_ms};
            break;
        }
        default:
            break;
        }
        size_t *idx =
            pg_arena_calloc(w->arena, s->vm_count ? s->vm_count : 1, sizeof(*idx));
        if (idx == NULL) {
            pg_errf(errbuf, errlen, "out of memory listing %zu VMs", s->vm_count);
            return PG_FATAL;
        }
        for (size_t j = 0; j < s->vm_count; j++) {
            idx[j] =
                vmset_add(&set, one ? one : s->rec.u.drs_advice.migrations[j].vm_uuid);
            if (idx[j] + 1 > s->vm_need)
                s->vm_need = idx[j] + 1;
        }
        s->vm_idx = idx;
    }
    *vms_out = set.list;
    *nvm_out = set.n;
    return PG_OK;
}

/* Called by the kafka module once per tracked input, in the order they were
 * tracked, in either mode: the input's tally counts only if it committed
 * (its transaction did, or its offset was stored). */
static void on_settled(void *ctx, bool committed)
{
    worker_t *w = ctx;
    if (w->tally_len == 0)
        return;
    if (committed)
        pg_metrics_commit(w->metrics, &w->tallies[w->tally_head]);
    w->tally_head = (w->tally_head + 1) % w->tally_cap;
    w->tally_len--;
}

/* The next wait of a doubling backoff that starts at retry.backoff.min.ms. */
static int next_backoff(const pg_config_t *cfg, int current)
{
    if (current == 0)
        return cfg->retry_backoff_min_ms;
    return current > cfg->retry_backoff_max_ms / 2 ? cfg->retry_backoff_max_ms
                                                   : current * 2;
}

/* Sends the batch's lookups, holding the batch while Redis cannot answer
 * (pg_bindings_send returns once the first reply proved it does); the
 * bindings are read by process_batch as it decides. *t0 is when the
 * exchange that worked began. */
static int lookup_holding(worker_t *w, size_t n, const char **vms, size_t nvm,
                          int64_t *t0, char *errbuf, size_t errlen)
{
    uint64_t gen = pg_kafka_generation(w->kafka);
    int backoff = w->cfg->retry_backoff_min_ms;
    int64_t last_log = 0;
    unsigned attempts = 0;
    bool paused = false;
    char err[512];
    for (;;) {
        *t0 = pg_now_mono_us();
        int rc = pg_bindings_send_notes(w->bindings, vms, nvm, w->notes, w->n_notes,
                                        pg_now_wall_ms(), err, sizeof(err));
        if (rc == PG_OK) {
            if (attempts > 0)
                pg_log_info("redis_recovered", "#attempts", (long long)attempts, NULL);
            if (paused && pg_kafka_resume(w->kafka) != PG_OK) {
                /* Resume failed: redo the batch after a rebalance. */
                pg_bindings_abandon(w->bindings);
                return HOLD_DROPPED;
            }
            return HOLD_OK;
        }
        pg_metrics_redis_exchange(w->metrics, (double)(pg_now_mono_us() - *t0) / 1e6,
                                  false);
        if (rc == PG_FATAL) { /* wrong credentials, out of memory */
            pg_errf(errbuf, errlen, "%s", err);
            return HOLD_FATAL;
        }
        attempts++;
        w->retried_batches++;
        for (size_t i = 0; i < n; i++)
            pg_metrics_input(w->metrics, (int)w->msgs[i].input, PG_M_IN_RETRIED, 1);
        if (pg_now_mono_ms() - last_log >= 10000) {
            pg_log_warn("redis_unavailable", "error", err, "#attempts",
                        (long long)attempts, "#retry_in_ms", (long long)backoff, NULL);
            last_log = pg_now_mono_ms();
        }
        /* Paused, the partitions fetch nothing meanwhile. A pause that
         * failed (logged by kafka) is tried again next round; until then
         * pg_kafka_idle puts back what it is handed. */
        if (!paused)
            paused = pg_kafka_pause(w->kafka) == PG_OK;
        int64_t until = pg_now_mono_ms() + backoff;
        while (pg_now_mono_ms() < until) {
            int64_t left = until - pg_now_mono_ms();
            if (pg_kafka_idle(w->kafka, left < 100 ? (int)left : 100, errbuf, errlen) ==
                PG_FATAL)
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

static int decide_advice(worker_t *w, slot_t *s, const pg_vm_binding_t *b, int64_t now,
                         pg_record_t *out)
{
    const pg_drs_advice_t *a = &s->rec.u.drs_advice;
    size_t n = a->n_migrations, na = 0, nv = 0;
    pg_migration_advice_t *approved =
        pg_arena_calloc(w->arena, n ? n : 1, sizeof(*approved));
    pg_veto_t *vetoed = pg_arena_calloc(w->arena, n ? n : 1, sizeof(*vetoed));
    if (approved == NULL || vetoed == NULL)
        return PG_FATAL;
    for (size_t i = 0; i < n; i++) {
        const pg_vm_binding_t *vb = &b[s->vm_idx[i]];
        pg_device_ref_t *devs = device_scratch(w, vb->n_devices);
        if (devs == NULL)
            return PG_FATAL;
        pg_policy_verdict_t v;
        pg_policy_judge(&w->policy, vb, NULL, devs, &v); /* DRS, no fence */
        s->tally.unknown_kinds += (uint32_t)v.n_unknown_kinds;
        pg_metrics_tally_decision(&s->tally, (int)v.verdict,
                                  v.verdict == PG_VERDICT_APPROVED ? -1
                                                                   : (int)v.reason);
        /* The generation the item was decided on; the input's is ignored. */
        pg_migration_advice_t m = a->migrations[i];
        m.bindings_generation = vb->generation;
        if (v.verdict == PG_VERDICT_APPROVED) {
            approved[na++] = m;
            continue;
        }
        vetoed[nv++] = (pg_veto_t){.migration = m,
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
    return PG_OK;
}

static int decide_request(worker_t *w, slot_t *s, const pg_vm_binding_t *b, int64_t now,
                          pg_record_t *out)
{
    const pg_migrate_request_t *r = &s->rec.u.migrate_request;
    b += s->vm_idx[0];
    pg_device_ref_t *devs = device_scratch(w, b->n_devices);
    if (devs == NULL)
        return PG_FATAL;
    pg_policy_verdict_t v;
    const pg_policy_ask_t ask = {.origin = r->origin,
                                 .min_generation = r->min_generation};
    pg_policy_judge(&w->policy, b, &ask, devs, &v);
    bool veto = v.verdict == PG_VERDICT_VETOED;
    s->tally.unknown_kinds += (uint32_t)v.n_unknown_kinds;
    pg_metrics_tally_decision(&s->tally, (int)v.verdict, veto ? (int)v.reason : -1);
    out->type = PG_REC_MIGRATE_DECISION;
    out->u.migrate_decision =
        (pg_migrate_decision_t){.request_id = r->request_id,
                                .vm_uuid = r->vm_uuid,
                                .src_host_uuid = r->src_host_uuid,
                                .dst_host_uuid = r->dst_host_uuid,
                                .origin = r->origin,
                                .verdict = v.verdict,
                                .has_reason = veto,
                                .reason = v.reason,
                                .n_devices = v.n_devices,
                                .devices = devs,
                                .decided_at_ms = now,
                                .bindings_generation = b->generation};
    if (veto)
        pg_log_info("request_vetoed", "request", r->request_id, "vm", r->vm_uuid,
                    "reason", pg_veto_reason_name(v.reason), "#devices",
                    (long long)v.n_devices, NULL);
    else
        pg_log_debug("request_approved", "request", r->request_id, "vm", r->vm_uuid,
                     NULL);
    return PG_OK;
}

static int decide_result(worker_t *w, slot_t *s, const pg_vm_binding_t *b, int64_t now,
                         pg_record_t *out)
{
    const pg_migration_result_t *r = &s->rec.u.migration_result;
    b += s->vm_idx[0];
    /* A malformed entry gives no evidence and no devices: never RELEASE. */
    size_t nd = b->malformed ? 0 : b->n_devices;
    pg_device_ref_t *devs = device_scratch(w, nd);
    if (devs == NULL)
        return PG_FATAL;
    if (nd > 0)
        memcpy(devs, b->devices, nd * sizeof(*devs));
    pg_policy_sort_devices(devs, nd);
    pg_release_verdict_t v =
        pg_policy_release(r->src_host_uuid, r->dst_host_uuid, r->observed_host_uuid, b);
    pg_metrics_tally_decision(&s->tally, (int)v.action, (int)v.reason);
    out->type = PG_REC_RELEASE_DECISION;
    out->u.release_decision =
        (pg_release_decision_t){.request_id = r->request_id,
                                .vm_uuid = r->vm_uuid,
                                .outcome = r->outcome,
                                .action = v.action,
                                .reason = v.reason,
                                .from_host_uuid = r->src_host_uuid,
                                .dst_host_uuid = r->dst_host_uuid,
                                .n_devices = nd,
                                .devices = devs,
                                .decided_at_ms = now,
                                .bindings_generation = b->generation};
    pg_log_info("release_decided", "request", r->request_id, "vm", r->vm_uuid,
                "outcome", pg_outcome_name(r->outcome), "action",
                pg_release_action_name(v.action), "reason",
                pg_release_reason_name(v.reason), "#devices", (long long)nd, NULL);
    return PG_OK;
}

/* Sends input i to the DLQ with `reason` (a pinguard-error name) and detail.
 * An input too large to copy goes without its bytes (INPUT_TOO_LARGE), so
 * that no input can be refused by the DLQ and redone forever. */
static int produce_dead_letter(worker_t *w, size_t i, const char *reason,
                               const char *detail, pg_delivery_state_t *state,
                               char *errbuf, size_t errlen)
{
    const pg_kafka_msg_t *m = &w->msgs[i];
    w->dead_lettered++;
    pg_metrics_tally_init(&w->slots[i].tally, (int)m->input, PG_M_IN_DLQ);
    return pg_kafka_dead_letter(w->kafka, m, reason, detail, state, errbuf, errlen);
}

/* Decides input i and produces its decision; a decision that cannot be
 * encoded or is larger than its topic accepts dead-letters the input. */
static int produce_decision(worker_t *w, size_t i, const pg_vm_binding_t *b,
                            int64_t now, pg_delivery_state_t *state, char *errbuf,
                            size_t errlen)
{
    slot_t *s = &w->slots[i];
    pg_record_t out;
    pg_output_t topic;
    const char *key;
    int rc;
    pg_metrics_tally_init(&s->tally, (int)w->msgs[i].input, PG_M_IN_DECIDED);
    switch (s->rec.type) {
    case PG_REC_DRS_ADVICE:
        rc = decide_advice(w, s, b, now, &out);
        topic = PG_OUT_FILTERED;
        key = s->rec.u.drs_advice.cluster_uuid;
        break;
    case PG_REC_MIGRATE_REQUEST:
        rc = decide_request(w, s, b, now, &out);
        topic = PG_OUT_DECISIONS;
        key = s->rec.u.migrate_request.vm_uuid;
        break;
    case PG_REC_MIGRATION_RESULT:
        rc = decide_result(w, s, b, now, &out);
        topic = PG_OUT_RELEASE;
        key = s->rec.u.migration_result.vm_uuid;
        break;
    default:
        pg_errf(errbuf, errlen, "no decision for a %s",
                pg_record_type_name(s->rec.type));
        return PG_FATAL;
    }
    if (rc != 0) {
        pg_errf(errbuf, errlen, "out of memory deciding a %s",
                pg_record_type_name(s->rec.type));
        return PG_FATAL;
    }
    char why[512];
    pg_buf_reset(&w->out);
    int erc = pg_codec_encode(w->codec, &out, &w->out, why, sizeof(why));
    if (erc == PG_CODEC_ENOMEM) {
        pg_errf(errbuf, errlen, "encoding a %s: %s", pg_record_type_name(out.type),
                why);
        return PG_FATAL;
    }
    if (erc != PG_CODEC_OK) {
        /* Never from data pinguard checked: a bug, but one input's, not a
         * reason to stop the partition (or to crash-loop on restart). */
        pg_log_error("decision_not_encoded", "topic", w->msgs[i].topic, "#offset",
                     (long long)w->msgs[i].offset, "error", why, NULL);
        return produce_dead_letter(w, i, "INTERNAL_ERROR", why, state, errbuf, errlen);
    }
    size_t key_len = strlen(key), limit = pg_kafka_output_max_bytes(w->kafka, topic);
    if (w->out.len + key_len > limit) {
        snprintf(why, sizeof(why),
                 "the %s is %zu bytes, over the %zu its topic accepts",
                 pg_record_type_name(out.type), w->out.len + key_len, limit);
        return produce_dead_letter(w, i, "OUTPUT_TOO_LARGE", why, state, errbuf,
                                   errlen);
    }
    rc = pg_kafka_produce(w->kafka, topic, key, key_len, w->out.data, w->out.len, NULL,
                          0, state, errbuf, errlen);
    if (rc == PG_INPUT) {
        snprintf(why, sizeof(why), "the %s (%zu bytes) was refused: %s",
                 pg_record_type_name(out.type), w->out.len + key_len, errbuf);
        return produce_dead_letter(w, i, "OUTPUT_TOO_LARGE", why, state, errbuf,
                                   errlen);
    }
    if (rc == 0)
        w->decided++;
    return rc;
}

/* Reads the next distinct VM's binding; a malformed entry is logged and
 * counted here, once per VM and batch. */
static int read_binding(worker_t *w, const char *vm, pg_vm_binding_t *out, char *errbuf,
                        size_t errlen)
{
    int rc = pg_bindings_next(w->bindings, vm, w->arena, out, errbuf, errlen);
    if (rc == 0 && out->malformed) {
        pg_log_warn("cache_entry_malformed", "vm", vm, "why", out->why_malformed,
                    "decided_as", "UNKNOWN_VM", NULL);
        pg_metrics_cache_invalid(w->metrics, 1);
    }
    return rc;
}

/* What a finished batch leaves to redo: a rewound partition (at least once)
 * or the whole batch (an abort, exactly once) is consumed again. */
static void note_end(worker_t *w, size_t n, pg_kafka_batch_end_t end)
{
    if (end == PG_KAFKA_BATCH_DONE)
        return;
    w->batch_redone = true;
    pg_metrics_batch_redone(w->metrics);
    if (end != PG_KAFKA_BATCH_ABORTED)
        return;
    w->aborted_batches++;
    for (size_t i = 0; i < n; i++)
        pg_metrics_input(w->metrics, (int)w->msgs[i].input, PG_M_IN_RETRIED, 1);
}

/* Serves the delivery reports, settling what they answered; waits for them
 * all when fewer than `room` inputs could be tracked. PG_OK or PG_FATAL. */
static int settle(worker_t *w, size_t room, char *errbuf, size_t errlen)
{
    bool rewound = false;
    int rc = pg_kafka_settle(w->kafka, room, &rewound, errbuf, errlen);
    if (rc == PG_FATAL)
        return PG_FATAL;
    if (rc != PG_OK)
        pg_log_warn("settle_failed", "error", errbuf, NULL);
    note_end(w, 0, rewound ? PG_KAFKA_BATCH_REWOUND : PG_KAFKA_BATCH_DONE);
    return PG_OK;
}

/* Tracks input i and the tally that will count it once it is settled (the
 * settled callback pops them in the same order). NULL when out of room. */
static pg_delivery_state_t *track(worker_t *w, size_t i, pg_metrics_tally_t **tally)
{
    pg_delivery_state_t *state = pg_kafka_batch_track(w->kafka, i);
    if (state == NULL || w->tally_len == w->tally_cap)
        return NULL;
    *tally = &w->tallies[(w->tally_head + w->tally_len++) % w->tally_cap];
    return state;
}

/* The VMs of a batch, and how far their bindings have been read. */
typedef struct {
    const char **vms;
    pg_vm_binding_t *bindings;
    size_t n, have;
    bool failed; /* Redis failed mid-batch: the rest is undecided */
    int64_t t0;  /* when the exchange began */
} lookup_t;

/* Reads the bindings input i needs, as Redis sends them. A failure leaves
 * it and the rest of the batch undecided, to be redone. PG_OK or PG_FATAL. */
static int read_needed(worker_t *w, size_t i, size_t n, lookup_t *l, char *errbuf,
                       size_t errlen)
{
    const slot_t *s = &w->slots[i];
    while (s->rc == 0 && !l->failed && l->have < s->vm_need) {
        int rc =
            read_binding(w, l->vms[l->have], &l->bindings[l->have], errbuf, errlen);
        if (rc == PG_FATAL)
            return PG_FATAL;
        if (rc != PG_OK) {
            l->failed = true;
            pg_log_warn("redis_failed_mid_batch", "error", errbuf, "#undecided",
                        (long long)(n - i), NULL);
            pg_metrics_redis_exchange(w->metrics,
                                      (double)(pg_now_mono_us() - l->t0) / 1e6, false);
        } else {
            l->have++;
        }
    }
    return PG_OK;
}

/* A batch with results: every lookup is read first, then what each result's
 * note did, before anything is produced, so that a failure leaves the whole
 * batch undecided (its notes are idempotent: redoing them changes nothing
 * they did). PG_OK or PG_FATAL. */
static int read_notes(worker_t *w, size_t n, lookup_t *l, char *errbuf, size_t errlen)
{
    while (!l->failed && l->have < l->n) {
        int rc =
            read_binding(w, l->vms[l->have], &l->bindings[l->have], errbuf, errlen);
        if (rc == PG_FATAL)
            return PG_FATAL;
        if (rc != PG_OK)
            l->failed = true;
        else
            l->have++;
    }
    for (size_t k = 0; k < w->n_notes && !l->failed; k++) {
        int rc = pg_bindings_next_note(w->bindings, &w->note_out[k], errbuf, errlen);
        if (rc == PG_FATAL)
            return PG_FATAL;
        if (rc != PG_OK)
            l->failed = true;
        else if (w->note_out[k].what == PG_NOTE_BAD_KEYS)
            pg_log_warn("quarantine_keys_malformed", "vm", w->notes[k].vm_uuid, "why",
                        "a :failures, :quarantine or :backoff key of another type",
                        "then", "the result was not counted", NULL);
    }
    if (l->failed) {
        pg_log_warn("redis_failed_mid_batch", "error", errbuf, "#undecided",
                    (long long)n, NULL);
        pg_bindings_abandon(w->bindings);
    }
    return PG_OK;
}

/* The audit event of a quarantine a result started or lifted, produced with
 * the result's decision (in its transaction, exactly once). Its eventId is
 * derived from the requestId, so a redone batch repeats the same event. */
static int produce_audit(worker_t *w, size_t i, int64_t now, char *errbuf,
                         size_t errlen)
{
    slot_t *s = &w->slots[i];
    const pg_migration_result_t *r = &s->rec.u.migration_result;
    const pg_note_outcome_t *o = &w->note_out[s->note];
    bool again = o->what == PG_NOTE_STARTED_AGAIN || o->what == PG_NOTE_LIFTED_AGAIN;
    if (o->what != PG_NOTE_STARTED && o->what != PG_NOTE_LIFTED && !again)
        return PG_OK;
    bool started = o->what == PG_NOTE_STARTED || o->what == PG_NOTE_STARTED_AGAIN;
    char id[PG_MAX_STRING + 32], detail[512];
    snprintf(id, sizeof(id), "%s:%s", started ? "quarantine" : "unquarantine",
             r->request_id);
    if (started)
        snprintf(
            detail, sizeof(detail),
            "%d failed migrations within %d ms (the last %s); quarantined for %lld "
            "ms",
            w->cfg->quarantine_failures, w->cfg->quarantine_window_ms, r->request_id,
            (long long)o->duration_ms);
    else
        snprintf(detail, sizeof(detail), "migration %s succeeded", r->request_id);
    pg_record_t ev = {.type = PG_REC_AUDIT_EVENT,
                      .u.audit_event = {.event_id = id,
                                        .at_ms = now,
                                        .actor = "pinguard",
                                        .action = started ? PG_AUDIT_QUARANTINE
                                                          : PG_AUDIT_UNQUARANTINE,
                                        .vm_uuid = r->vm_uuid,
                                        .detail = detail}};
    /* A replay repeats the event (same eventId) but is no new change. */
    if (!again) {
        pg_log_info(started ? "quarantine_started" : "quarantine_lifted", "vm",
                    r->vm_uuid, "request", r->request_id, "#duration_ms",
                    (long long)o->duration_ms, NULL);
        s->tally.quarantine = started ? 1 : 2;
    }
    w->audit.len = 0;
    int rc = pg_codec_encode(w->codec, &ev, &w->audit, errbuf, errlen);
    if (rc != 0) {
        pg_log_warn("audit_event_unencodable", "vm", r->vm_uuid, "error", errbuf, NULL);
        return PG_OK; /* the decision stands; the trail says nothing false */
    }
    return pg_kafka_produce(w->kafka, PG_OUT_AUDIT, r->vm_uuid, strlen(r->vm_uuid),
                            w->audit.data, w->audit.len, NULL, 0, &w->audit_sink,
                            errbuf, errlen);
}

/* One batch, as the SPEC says it: poll (done by the caller), decode, look
 * up, decide, produce, finish. Returns PG_OK (w->stopped set when a signal
 * came while holding) or PG_FATAL. */
static int process_batch(worker_t *w, size_t n, char *errbuf, size_t errlen)
{
    lookup_t l = {0};
    if (decode_batch(w, n, &l.vms, &l.n, errbuf, errlen) != PG_OK)
        return PG_FATAL;
    l.bindings = pg_arena_calloc(w->arena, l.n ? l.n : 1, sizeof(*l.bindings));
    if (l.bindings == NULL) {
        pg_errf(errbuf, errlen, "out of memory for %zu bindings", l.n);
        return PG_FATAL;
    }
    if (l.n > 0) {
        int hold = lookup_holding(w, n, l.vms, l.n, &l.t0, errbuf, errlen);
        if (hold == HOLD_FATAL)
            return PG_FATAL;
        if (hold == HOLD_STOPPED) {
            w->stopped = true;
            return PG_OK;
        }
        if (hold == HOLD_DROPPED) {
            pg_log_info("batch_dropped", "why", "rebalance while waiting for redis",
                        "#messages", (long long)n, NULL);
            return PG_OK;
        }
    }
    if (w->n_notes > 0 && read_notes(w, n, &l, errbuf, errlen) != PG_OK) {
        pg_bindings_abandon(w->bindings);
        return PG_FATAL;
    }
    if (pg_kafka_batch_begin(w->kafka, w->msgs, n, errbuf, errlen) != PG_OK) {
        pg_bindings_abandon(w->bindings);
        return PG_FATAL;
    }
    int64_t now = pg_now_wall_ms();
    size_t failed = 0;
    char first_error[512] = "";
    for (size_t i = 0; i < n; i++) {
        slot_t *s = &w->slots[i];
        pg_metrics_tally_t *tally = NULL;
        pg_delivery_state_t *state = track(w, i, &tally);
        if (state == NULL) {
            /* the main loop made room for a whole batch */
            pg_errf(errbuf, errlen, "no room to track input %zu of %zu", i, n);
            pg_bindings_abandon(w->bindings);
            return PG_FATAL;
        }
        int rc = read_needed(w, i, n, &l, errbuf, errlen);
        if (rc == PG_OK) {
            if (s->rc != 0)
                rc = produce_dead_letter(w, i, pg_codec_err_name(s->rc), s->detail,
                                         state, errbuf, errlen);
            else if (l.failed)
                rc = PG_RETRY;
            else
                rc = produce_decision(w, i, l.bindings, now, state, errbuf, errlen);
            if (rc == PG_OK && s->rc == 0 && s->note >= 0)
                rc = produce_audit(w, i, now, errbuf, errlen);
        }
        *tally = s->tally;
        if (rc == PG_FATAL) {
            pg_bindings_abandon(w->bindings);
            return PG_FATAL;
        }
        if (rc != PG_OK) {
            if (failed++ == 0)
                snprintf(first_error, sizeof(first_error), "%s", errbuf);
            *state = PG_DELIVERY_FAILED;
        }
    }
    if (l.n > 0 && !l.failed)
        pg_metrics_redis_exchange(w->metrics, (double)(pg_now_mono_us() - l.t0) / 1e6,
                                  true);
    if (failed > 0) {
        /* One line per batch, not per message: a broken producer would
         * otherwise flood the log a thousand lines at a time. */
        pg_log_warn("produce_failed", "#messages", (long long)failed, "error",
                    first_error, NULL);
        w->batch_redone = true;
    }
    pg_kafka_batch_end_t end;
    int rc = pg_kafka_batch_finish(w->kafka, failed, &end, errbuf, errlen);
    if (rc == PG_FATAL)
        return PG_FATAL;
    if (rc != PG_OK)
        pg_log_warn("settle_failed", "error", errbuf, NULL);
    note_end(w, n, end);
    return PG_OK;
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
    pg_kafka_group_stats(w->kafka, out);
}

/* Called from the metrics registry's Redis refresher thread only, so the
 * probe connection has one user. */
static bool scrape_redis(void *ctx)
{
    worker_t *w = ctx;
    char err[256];
    return pg_bindings_ping(w->probe, err, sizeof(err)) == 0;
}

static int start_metrics(worker_t *w, const pg_bindings_opts_t *bopts, char *errbuf,
                         size_t errlen)
{
    const char *topics[PG_IN_COUNT] = {w->cfg->topic_advice, w->cfg->topic_requests,
                                       w->cfg->topic_results};
    w->metrics = pg_metrics_new(topics, w->cfg->health_stall_timeout_ms,
                                w->cfg->health_partition_stall_ms);
    pg_bindings_opts_t popts = *bopts;
    popts.quiet_failover = true; /* the lookup connection logs it */
    popts.view = false;          /* it only PINGs */
    w->probe = pg_bindings_new(&popts);
    if (w->metrics == NULL || w->probe == NULL) {
        pg_errf(errbuf, errlen, "out of memory starting the metrics");
        return PG_FATAL;
    }
    pg_metrics_set_sources(w->metrics, scrape_lag, scrape_group, scrape_redis, w);
    if (w->cfg->metrics_listen[0] == '\0')
        return PG_OK;
    if (pg_metrics_serve(w->metrics, w->cfg->metrics_listen, errbuf, errlen) != 0)
        return PG_FATAL;
    pg_log_info("metrics_listening", "listen", w->cfg->metrics_listen, "#port",
                (long long)pg_metrics_port(w->metrics), NULL);
    return PG_OK;
}

/* Sleeps in slices, so that a stop request is honoured within 100 ms. */
static void wait_ms(worker_t *w, int ms)
{
    int64_t until = pg_now_mono_ms() + ms;
    while (!*w->stop && pg_now_mono_ms() < until) {
        int64_t left = until - pg_now_mono_ms();
        struct timespec ts = {0, (left < 100 ? left : 100) * 1000000L};
        nanosleep(&ts, NULL);
        pg_metrics_tick(w->metrics);
    }
}

static void worker_teardown(worker_t *w)
{
    /* The metrics threads (HTTP and the refreshers) read the Kafka client
     * and the probe: stop them first. Then Kafka: closing the consumer
     * commits what was acknowledged. */
    pg_metrics_destroy(w->metrics);
    w->metrics = NULL; /* outputs settled while closing count nowhere */
    pg_bindings_destroy(w->probe);
    pg_kafka_destroy(w->kafka);
    pg_bindings_destroy(w->bindings);
    pg_codec_destroy(w->codec);
    pg_arena_destroy(w->arena);
    pg_buf_free(&w->out);
    free(w->msgs);
    free(w->slots);
    free(w->notes);
    free(w->note_out);
    pg_buf_free(&w->audit);
    free(w->tallies);
}

int pg_worker_run(const pg_config_t *cfg, volatile sig_atomic_t *stop, char *errbuf,
                  size_t errlen)
{
    int rc = PG_FATAL;
    size_t max = (size_t)cfg->batch_max_messages;
    worker_t w = {
        .cfg = cfg,
        .stop = stop,
        .policy = pg_config_policy_opts(cfg),
        .limits = {.max_string = (size_t)cfg->max_string_length,
                   .max_items = (size_t)cfg->advice_max_migrations},
    };
    const pg_bindings_opts_t bopts = pg_bindings_opts(cfg);

    w.msgs = calloc(max, sizeof(*w.msgs));
    w.slots = calloc(max, sizeof(*w.slots));
    w.notes = calloc(max, sizeof(*w.notes));
    w.note_out = calloc(max, sizeof(*w.note_out));
    w.arena = pg_arena_new(1 << 20);
    w.bindings = pg_bindings_new(&bopts);
    if (w.msgs == NULL || w.slots == NULL || w.notes == NULL || w.note_out == NULL ||
        w.arena == NULL || w.bindings == NULL) {
        pg_errf(errbuf, errlen, "out of memory starting the worker");
        goto out;
    }
    if ((w.codec = pg_codec_new(errbuf, errlen)) == NULL)
        goto out;
    /* Wrong Redis credentials are a configuration error: fail before joining. */
    char perr[512];
    if (pg_bindings_ping(w.bindings, perr, sizeof(perr)) == PG_FATAL) {
        pg_errf(errbuf, errlen, "%s", perr);
        goto out;
    }
    if ((w.kafka = pg_kafka_new(cfg, stop, errbuf, errlen)) == NULL) {
        if (*stop) { /* asked to stop while starting: not a failure */
            pg_log_info("worker_stopping", "why", errbuf, NULL);
            rc = PG_OK;
        }
        goto out;
    }
    if (start_metrics(&w, &bopts, errbuf, errlen) != 0)
        goto out;
    w.tally_cap = pg_kafka_tracked_max(w.kafka);
    w.tallies = calloc(w.tally_cap ? w.tally_cap : 1, sizeof(*w.tallies));
    if (w.tallies == NULL) {
        pg_errf(errbuf, errlen, "out of memory starting the worker");
        goto out;
    }
    pg_kafka_set_settled_cb(w.kafka, on_settled, &w);
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
        if (settle(&w, max, errbuf, errlen) != PG_OK)
            goto out;
        int n = pg_kafka_poll_batch(w.kafka, w.msgs, max, (size_t)cfg->batch_max_bytes,
                                    100, cfg->batch_max_wait_ms, errbuf, errlen);
        if (n < 0)
            goto out;
        if (n == 0) {
            if (settle(&w, 0, errbuf, errlen) != PG_OK)
                goto out;
            continue;
        }
        w.batch_redone = false;
        int brc = process_batch(&w, (size_t)n, errbuf, errlen);
        pg_metrics_batch(w.metrics);
        pg_metrics_redis_failovers(w.metrics, pg_bindings_failovers(w.bindings));
        pg_view_stats_t vs;
        pg_bindings_view_stats(w.bindings, &vs);
        pg_metrics_redis_view(w.metrics, &vs);
        pg_kafka_batch_release(w.msgs, (size_t)n);
        pg_arena_reset(w.arena);
        if (brc != PG_OK)
            goto out;
        if (w.stopped)
            break;
        /* A batch that must be redone waits first, doubling up to the cap,
         * so a persistent produce failure cannot spin the loop. */
        redo_backoff = w.batch_redone ? next_backoff(cfg, redo_backoff) : 0;
        wait_ms(&w, redo_backoff);
    }
    /* What is still open (exactly once, a transaction spanning batches)
     * commits while the metrics can count it. */
    if (settle(&w, 0, errbuf, errlen) != PG_OK)
        goto out;
    rc = PG_OK;
    pg_log_info("worker_stopping", "#decided", (long long)w.decided, "#dead_lettered",
                (long long)w.dead_lettered, "#aborted_batches",
                (long long)w.aborted_batches, NULL);
out:
    worker_teardown(&w);
    return rc;
}

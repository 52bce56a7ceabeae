/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The binding feed's operator commands:
 *   impact HOST [--json]  every VM the host index lists for HOST, and what a
 *                         MAINTENANCE MigrateVmRequest for it would get now,
 *                         decided by the worker's policy on the worker's
 *                         lookup (one pipelined pass per chunk of VMs);
 *   publish FILE|-        JSON lines to VmBindings records (or tombstones)
 *                         on topic.bindings, checked as `sync` will check
 *                         them, all lines before any is published.
 * The host index is kept by `sync` beside each apply but is not atomic with
 * it, and direct cache writes do not keep it: impact reads each listed VM's
 * own entry and lists a VM whose :host names another host as moved, out of
 * the counts. It writes nothing (it leaves such entries to `sync`, which
 * repairs the index when it applies the VM again): removing one here could
 * race a move back onto the host and hide that VM from the next report.
 */
#include "cli.h"
#include "cli_internal.h"

#include "bindings.h"
#include "codec.h"
#include "config.h"
#include "kafka.h"
#include "policy.h"
#include "utf8.h"
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* --- impact ----------------------------------------------------------- */

enum {
    SCAN_COUNT = 1000,  /* members asked of each SSCAN step */
    IMPACT_CHUNK = 1000 /* VMs per pipelined lookup */
};

/* The VMs of the index, as C strings (checked: UTF-8 without NUL). */
typedef struct {
    char **v;
    size_t n, cap;
} names_t;

static int names_add(names_t *s, char *name)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        char **v = realloc(s->v, cap * sizeof(*v));
        if (v == NULL)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = name;
    return 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether an index member can name a VM's keys. */
static bool vm_name_ok(pg_bytes_t m)
{
    return m.len > 0 && m.len <= PG_BINDINGS_MAX_VM_LEN &&
           pg_utf8_check((const uint8_t *)m.data, m.len) == m.len;
}

/* Every member of the host's index, sorted and without repeats (SSCAN may
 * return one twice). *ignored counts members that name no VM. */
static int read_index(pg_bindings_t *b, const char *host, pg_arena_t *keep,
                      names_t *out, size_t *ignored, char *err, size_t errlen)
{
    pg_arena_t *scan = pg_arena_new(1 << 16);
    if (scan == NULL) {
        pg_errf(err, errlen, "out of memory");
        return PG_FATAL;
    }
    uint64_t cursor = 0;
    int rc;
    do {
        pg_bytes_t *m;
        size_t n;
        pg_arena_reset(scan);
        rc = pg_bindings_host_scan(b, host, &cursor, SCAN_COUNT, scan, &m, &n, err,
                                   errlen);
        for (size_t i = 0; rc == PG_OK && i < n; i++) {
            if (!vm_name_ok(m[i])) {
                (*ignored)++;
                continue;
            }
            char *name = pg_arena_strndup(keep, m[i].data, m[i].len);
            if (name == NULL || names_add(out, name) != 0) {
                pg_errf(err, errlen, "out of memory");
                rc = PG_FATAL;
            }
        }
    } while (rc == PG_OK && cursor != 0);
    pg_arena_destroy(scan);
    if (rc != PG_OK)
        return rc;
    if (out->n > 1)
        qsort(out->v, out->n, sizeof(*out->v), name_cmp);
    size_t k = 0;
    for (size_t i = 0; i < out->n; i++)
        if (k == 0 || strcmp(out->v[k - 1], out->v[i]) != 0)
            out->v[k++] = out->v[i];
    out->n = k;
    return PG_OK;
}

typedef struct {
    size_t vms, can_move, stay, moved;
    size_t by_reason[PG_VETO_REASONS];
} impact_count_t;

/* The reasons that keep VMs, by count descending then name. */
static size_t reasons_in_order(const impact_count_t *n, pg_veto_reason_t *out)
{
    size_t k = 0;
    for (int r = 0; r < PG_VETO_REASONS; r++)
        if (n->by_reason[r] > 0)
            out[k++] = (pg_veto_reason_t)r;
    for (size_t i = 1; i < k; i++) /* insertion sort: at most six */
        for (size_t j = i; j > 0; j--) {
            pg_veto_reason_t x = out[j - 1], y = out[j];
            bool swap = n->by_reason[x] < n->by_reason[y] ||
                        (n->by_reason[x] == n->by_reason[y] &&
                         strcmp(pg_veto_reason_name(x), pg_veto_reason_name(y)) > 0);
            if (!swap)
                break;
            out[j - 1] = y;
            out[j] = x;
        }
    return k;
}

static json_t *json_text(const char *s)
{
    return json_stringn(s, strlen(s));
}

/* One VM of the index, decided and shown (text) or added to the document. */
static int impact_one(const pg_cli_args_t *a, const pg_config_t *c, const char *host,
                      const char *vm, const pg_vm_binding_t *vb, pg_arena_t *arena,
                      impact_count_t *n, json_t *vms, json_t *moved)
{
    const char *vm_shown = pg_cli_shown((pg_bytes_t){vm, strlen(vm)}, true, arena);
    if (vm_shown == NULL)
        return PG_FATAL;
    /* A valid entry that names another host: the index is behind. A VM
     * whose entry is malformed or has no :host cannot be said to have moved:
     * it is decided (and vetoed UNKNOWN_VM) like any other. */
    if (!vb->malformed && vb->known && strcmp(vb->host, host) != 0) {
        n->moved++;
        if (a->json) {
            json_t *o = json_pack("{s:o, s:o}", "vmUuid", json_text(vm), "hostUuid",
                                  json_text(vb->host));
            return o != NULL && json_array_append_new(moved, o) == 0 ? PG_OK : PG_FATAL;
        }
        const char *now =
            pg_cli_shown((pg_bytes_t){vb->host, strlen(vb->host)}, true, arena);
        if (now == NULL)
            return PG_FATAL;
        printf("%s  moved  now on %s\n", vm_shown, now);
        return PG_OK;
    }
    pg_device_ref_t *pinning =
        pg_arena_calloc(arena, vb->n_devices + 1, sizeof(*pinning));
    if (pinning == NULL)
        return PG_FATAL;
    /* The worker's decision (its options, device.kinds included) of a
     * MAINTENANCE request without minGeneration: the origin matters only to
     * quarantine, which does not block MAINTENANCE. */
    const pg_policy_opts_t po = pg_config_policy_opts(c);
    const pg_policy_ask_t ask = {.origin = PG_ORIGIN_MAINTENANCE};
    pg_policy_verdict_t v;
    pg_policy_judge(&po, vb, &ask, pinning, &v);
    bool can_move = v.verdict == PG_VERDICT_APPROVED;
    n->vms++;
    if (can_move) {
        n->can_move++;
    } else {
        n->stay++;
        n->by_reason[v.reason]++;
    }
    if (a->json) {
        json_t *devs = json_array();
        for (size_t i = 0; devs != NULL && i < v.n_devices; i++) {
            json_t *d =
                json_pack("{s:o, s:o}", "deviceUuid", json_text(pinning[i].device_uuid),
                          "kind", json_text(pinning[i].kind));
            if (d == NULL || json_array_append_new(devs, d) != 0) {
                json_decref(devs);
                devs = NULL;
            }
        }
        if (devs == NULL)
            return PG_FATAL;
        json_t *o = json_pack(
            "{s:o, s:b, s:o, s:o, s:o}", "vmUuid", json_text(vm), "canMove", can_move,
            "reason",
            can_move ? json_null() : json_string(pg_veto_reason_name(v.reason)),
            "devices", devs, "generation",
            vb->generation.present ? json_integer((json_int_t)vb->generation.value)
                                   : json_null());
        return o != NULL && json_array_append_new(vms, o) == 0 ? PG_OK : PG_FATAL;
    }
    if (can_move) {
        printf("%s  can move\n", vm_shown);
        return PG_OK;
    }
    printf("%s  stays  %s", vm_shown, pg_veto_reason_name(v.reason));
    for (size_t i = 0; i < v.n_devices; i++) {
        const pg_device_ref_t *d = &pinning[i];
        const char *u = pg_cli_shown(
            (pg_bytes_t){d->device_uuid, strlen(d->device_uuid)}, true, arena);
        const char *k =
            pg_cli_shown((pg_bytes_t){d->kind, strlen(d->kind)}, true, arena);
        if (u == NULL || k == NULL)
            return PG_FATAL;
        printf("%s%s(%s)", i == 0 ? "  " : ",", u, k);
    }
    printf("\n");
    return PG_OK;
}

/* Decides n VMs from one pipelined lookup. */
static int impact_chunk(const pg_cli_args_t *a, const pg_config_t *c, pg_bindings_t *b,
                        const char *host, char *const *vms, size_t n, pg_arena_t *arena,
                        impact_count_t *count, json_t *jvms, json_t *jmoved, char *err,
                        size_t errlen)
{
    int rc = pg_bindings_send(b, (const char *const *)vms, n, err, errlen);
    for (size_t i = 0; rc == PG_OK && i < n; i++) {
        pg_vm_binding_t vb;
        rc = pg_bindings_next(b, vms[i], arena, &vb, err, errlen);
        if (rc == PG_OK &&
            (rc = impact_one(a, c, host, vms[i], &vb, arena, count, jvms, jmoved)) != 0)
            pg_errf(err, errlen, "out of memory");
    }
    if (rc != PG_OK)
        pg_bindings_abandon(b);
    return rc;
}

int pg_cli_impact(const pg_cli_args_t *a, const pg_config_t *c)
{
    char err[512];
    int rc = PG_EXIT_RUNTIME;
    if (a->n_pos != 2)
        return pg_cli_usage_error("%s", "usage: pinguard impact HOST [--json]");
    const char *host = a->pos[1];
    size_t ignored = 0;
    names_t names = {0};
    impact_count_t count = {0};
    json_t *jvms = NULL, *jmoved = NULL;
    pg_bindings_t *b = pg_cli_open_bindings(c);
    pg_arena_t *keep = pg_arena_new(1 << 16), *arena = pg_arena_new(1 << 16);
    if (b == NULL || keep == NULL || arena == NULL)
        goto oom;
    int brc = read_index(b, host, keep, &names, &ignored, err, sizeof(err));
    if (brc == PG_INPUT) {
        rc = pg_cli_usage_error("impact: %s", err);
        goto out;
    }
    if (brc != PG_OK)
        goto failed;
    if (a->json && ((jvms = json_array()) == NULL || (jmoved = json_array()) == NULL))
        goto oom;
    for (size_t first = 0; first < names.n; first += IMPACT_CHUNK) {
        size_t k = names.n - first < IMPACT_CHUNK ? names.n - first : IMPACT_CHUNK;
        pg_arena_reset(arena);
        brc = impact_chunk(a, c, b, host, names.v + first, k, arena, &count, jvms,
                           jmoved, err, sizeof(err));
        if (brc != PG_OK)
            goto failed;
    }
    if (ignored > 0)
        fprintf(stderr,
                "pinguard: impact: the index of host %s holds %zu %s that name%s no "
                "VM; left out\n",
                host, ignored, ignored == 1 ? "entry" : "entries",
                ignored == 1 ? "s" : "");

    pg_veto_reason_t order[PG_VETO_REASONS];
    size_t nr = reasons_in_order(&count, order);
    if (a->json) {
        json_t *reasons = json_object();
        for (size_t i = 0; reasons != NULL && i < nr; i++)
            json_object_set_new(reasons, pg_veto_reason_name(order[i]),
                                json_integer((json_int_t)count.by_reason[order[i]]));
        json_t *o = json_pack(
            "{s:o, s:o, s:o, s:{s:I, s:I, s:I, s:I, s:o}}", "host", json_text(host),
            "vms", jvms, "moved", jmoved, "summary", "vms", (json_int_t)count.vms,
            "canMove", (json_int_t)count.can_move, "stay", (json_int_t)count.stay,
            "moved", (json_int_t)count.moved, "reasons", reasons);
        jvms = jmoved = NULL; /* the document owns them, even when it failed */
        char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (text == NULL)
            goto oom;
        printf("%s\n", text);
        free(text);
    } else {
        const char *h = pg_cli_shown((pg_bytes_t){host, strlen(host)}, true, arena);
        if (h == NULL)
            goto oom;
        printf("host %s: %zu VMs, %zu can move, %zu stay", h, count.vms, count.can_move,
               count.stay);
        for (size_t i = 0; i < nr; i++)
            printf("%s%zu %s", i == 0 ? ": " : ", ", count.by_reason[order[i]],
                   pg_veto_reason_name(order[i]));
        printf("\n");
    }
    rc = PG_EXIT_OK;
    goto out;
failed:
    fflush(stdout);
    fprintf(stderr, "pinguard: impact %s: %s\n", host, err);
    goto out;
oom:
    fprintf(stderr, "pinguard: impact %s: out of memory\n", host);
out:
    json_decref(jvms);
    json_decref(jmoved);
    free(names.v);
    pg_arena_destroy(keep);
    pg_arena_destroy(arena);
    pg_bindings_destroy(b);
    return rc;
}

/* --- publish ---------------------------------------------------------- */

/* One line of `publish`, checked as `sync` will read it. */
typedef struct {
    const char *key; /* the vmUuid, in the arena */
    size_t key_len;
    bool tombstone;
    size_t devices;
} publish_rec_t;

typedef struct {
    const pg_codec_t *codec;
    pg_codec_limits_t codec_lim;
    pg_bindings_limits_t lim;
    int64_t now_ms; /* updatedAtMs of lines without one */
} publish_ctx_t;

/* Parses, encodes and checks one JSON line: a record's single-object bytes
 * go to value (reset first), a tombstone leaves it empty. 0, or -1 with the
 * reason in err. */
static int publish_line(const publish_ctx_t *x, const char *line, size_t len,
                        pg_arena_t *arena, publish_rec_t *out, pg_buf_t *value,
                        char *err, size_t errlen)
{
    json_error_t jerr;
    char why[256];
    int rc = -1;
    char *text = NULL;
    memset(out, 0, sizeof(*out));
    pg_buf_reset(value);
    /* NUL is let through the parser so that it is named below, not as bad
     * JSON. */
    json_t *o = json_loadb(line, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
    if (o == NULL || !json_is_object(o)) {
        pg_errf(err, errlen, "not a JSON object (%s)", o ? "wrong type" : jerr.text);
        goto out;
    }
    json_t *jvm = json_object_get(o, "vmUuid"), *jt = json_object_get(o, "tombstone");
    if (jvm == NULL || !json_is_string(jvm)) {
        pg_errf(err, errlen,
                jvm == NULL ? "missing vmUuid" : "vmUuid must be a string");
        goto out;
    }
    out->key_len = json_string_length(jvm);
    out->key = pg_arena_strndup(arena, json_string_value(jvm), out->key_len);
    if (out->key == NULL) {
        pg_errf(err, errlen, "out of memory");
        goto out;
    }
    const pg_bytes_t key = {out->key, out->key_len};
    /* The key first, so that its faults (a NUL byte among them) are named as
     * such rather than as the codec's. */
    if (pg_bindings_check_feed(&x->lim, key, NULL, why, sizeof(why)) != PG_OK) {
        pg_errf(err, errlen, "%s", why);
        goto out;
    }
    if (jt != NULL) {
        if (!json_is_true(jt)) {
            pg_errf(err, errlen, "tombstone must be true (leave it out for a record)");
            goto out;
        }
        const char *k;
        json_t *v;
        json_object_foreach(o, k, v)
        {
            if (strcmp(k, "vmUuid") != 0 && strcmp(k, "tombstone") != 0) {
                pg_errf(err, errlen, "a tombstone has no field '%.64s'", k);
                goto out;
            }
        }
        out->tombstone = true;
        rc = 0;
        goto out;
    }
    if (json_object_get(o, "updatedAtMs") == NULL &&
        json_object_set_new(o, "updatedAtMs", json_integer((json_int_t)x->now_ms)) !=
            0) {
        pg_errf(err, errlen, "out of memory");
        goto out;
    }
    /* The codec's own JSON reader makes the record (unknown or missing
     * fields, wrong types), and its decoder reads it back with the limits
     * `sync` decodes the feed with. */
    text = json_dumps(o, JSON_COMPACT);
    if (text == NULL) {
        pg_errf(err, errlen, "out of memory");
        goto out;
    }
    char cerr[384];
    int crc = pg_codec_from_json(x->codec, 0, PG_REC_VM_BINDINGS, text, strlen(text),
                                 value, cerr, sizeof(cerr));
    pg_record_t rec;
    if (crc == 0)
        crc = pg_codec_decode(x->codec, value->data, value->len, &x->codec_lim, arena,
                              &rec, cerr, sizeof(cerr));
    if (crc != 0) {
        pg_errf(err, errlen, "%s: %s", pg_codec_err_name(crc), cerr);
        goto out;
    }
    int frc =
        pg_bindings_check_feed(&x->lim, key, &rec.u.vm_bindings, why, sizeof(why));
    if (frc != PG_OK) {
        pg_errf(err, errlen, "%s", frc == PG_FATAL ? "out of memory" : why);
        goto out;
    }
    out->devices = rec.u.vm_bindings.n_devices;
    rc = 0;
out:
    free(text);
    json_decref(o);
    return rc;
}

/* How long to wait for the last acknowledgements: past the producer's
 * message.timeout.ms (pinguard's default 60 s), by when every record has its
 * report. */
static int flush_timeout_ms(const pg_config_t *c)
{
    const char *t = pg_config_kafka_get(c, "message.timeout.ms");
    long ms = t != NULL ? strtol(t, NULL, 10) : 0;
    if (ms <= 0)
        ms = 60000;
    return ms > 600000 ? 610000 : (int)ms + 10000;
}

/* The first pass's count, and what it checks a line with. */
typedef struct {
    const publish_ctx_t *x;
    pg_arena_t *arena;
    pg_buf_t *value;
    size_t records, tombstones;
} publish_count_t;

static int publish_check(void *ctx, const char *line, size_t len, char *err,
                         size_t errlen)
{
    publish_count_t *n = ctx;
    publish_rec_t r;
    pg_arena_reset(n->arena);
    if (publish_line(n->x, line, len, n->arena, &r, n->value, err, errlen) != 0)
        return PG_INPUT;
    n->records++;
    n->tombstones += r.tombstone;
    return PG_OK;
}

/* Two passes (cli_lines.c), as `import`: a bad line anywhere leaves the
 * feed as it was; the second pass publishes the records in order (one VM's
 * records keep their order: one key, one partition, an idempotent
 * producer). */
int pg_cli_publish(const pg_cli_args_t *a, const pg_config_t *c)
{
    char err[512];
    int rc = PG_EXIT_RUNTIME;
    pg_buf_t value = {0};
    pg_kafka_publisher_t *p = NULL;
    pg_codec_t *codec = NULL;
    pg_cli_lines_t in = {0};
    if (a->n_pos != 2)
        return pg_cli_usage_error("%s", "usage: pinguard publish FILE|-");
    const char *topic = c->topic_bindings;
    if (pg_cli_lines_open(&in, "publish", a->pos[1]) != PG_OK)
        return PG_EXIT_RUNTIME;
    const char *name = in.name;
    const bool tty = in.tty;
    pg_arena_t *arena = pg_arena_new(1 << 16);
    if (arena == NULL)
        goto oom;
    if ((codec = pg_codec_new(err, sizeof(err))) == NULL) {
        fprintf(stderr, "pinguard: publish: %s\n", err);
        goto out;
    }
    const publish_ctx_t x = {.codec = codec,
                             .codec_lim = pg_cli_codec_limits(c),
                             .lim = pg_bindings_limits(c),
                             .now_ms = pg_now_wall_ms()};
    publish_count_t n = {.x = &x, .arena = arena, .value = &value};
    if (pg_cli_lines_check(&in, publish_check, &n, "published") != PG_OK)
        goto out;
    const size_t records = n.records, tombstones = n.tombstones;
    if (records > 0 && (p = pg_kafka_publisher_new(c, err, sizeof(err))) == NULL) {
        fprintf(stderr, "pinguard: publish: %s\n", err);
        goto out;
    }
    size_t queued = 0;
    for (;;) {
        const char *line;
        size_t len;
        int got = pg_cli_lines_next(&in, &line, &len);
        if (got == PG_FATAL) {
            fprintf(stderr,
                    "pinguard: publish %s: read error: %s (%zu records were queued)\n",
                    name, strerror(errno), queued);
            goto flush;
        }
        if (got == 0)
            break;
        publish_rec_t r;
        pg_arena_reset(arena);
        if (p == NULL) /* no record at the first pass */
            snprintf(err, sizeof(err), "a record where the first pass read none");
        if (p == NULL ||
            publish_line(&x, line, len, arena, &r, &value, err, sizeof(err)) != 0) {
            pg_cli_progress(tty, "");
            fprintf(stderr,
                    "pinguard: publish %s:%zu: %s (the file changed while being "
                    "published; %zu records were queued)\n",
                    name, in.lineno, err, queued);
            goto flush;
        }
        if (pg_kafka_publish(p, topic, r.key, r.key_len,
                             r.tombstone ? NULL : value.data, value.len, err,
                             sizeof(err)) != PG_OK) {
            pg_cli_progress(tty, "");
            fprintf(stderr, "pinguard: publish: %s (%zu of %zu records were queued)\n",
                    err, queued, records);
            goto flush;
        }
        queued++;
        if (tty && queued % 4096 == 0) {
            char text[96];
            snprintf(text, sizeof(text), "pinguard: publish: %zu of %zu records queued",
                     queued, records);
            pg_cli_progress(tty, text);
        }
    }
    rc = PG_EXIT_OK;
flush:
    if (p != NULL) {
        size_t acked = 0, failed = 0;
        pg_cli_progress(tty, tty ? "pinguard: publish: waiting for the broker" : "");
        int frc = pg_kafka_publisher_flush(p, flush_timeout_ms(c), &acked, &failed, err,
                                           sizeof(err));
        pg_cli_progress(tty, "");
        if (frc != PG_OK) {
            fprintf(stderr,
                    "pinguard: publish: the broker acknowledged %zu of %zu records "
                    "(%zu failed, %zu unanswered): %s\n",
                    acked, queued, failed, queued - acked - failed, err);
            rc = PG_EXIT_RUNTIME;
        } else if (rc != PG_EXIT_OK && queued > 0) {
            fprintf(stderr,
                    "pinguard: publish: the %zu records queued were acknowledged; the "
                    "rest was not published\n",
                    queued);
        }
    }
    if (rc == PG_EXIT_OK)
        printf("published %zu records (%zu tombstones) to %s\n", records, tombstones,
               topic);
    goto out;
oom:
    fprintf(stderr, "pinguard: publish: out of memory\n");
out:
    pg_buf_free(&value);
    pg_kafka_publisher_destroy(p);
    pg_codec_destroy(codec);
    pg_arena_destroy(arena);
    pg_cli_lines_close(&in);
    return rc;
}

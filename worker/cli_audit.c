/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The audit trail on the command line (SPEC "Operator pins with expiry, and
 * the audit trail"):
 *   - every operator edit of the cache (bind, unbind, place, pin, unpin,
 *     import, unquarantine) is followed, in the same run, by one AuditEvent
 *     on topic.audit, keyed by the VM (no key for an import): who (--actor,
 *     else SUDO_USER, else USER), what, and a random uuid as its eventId.
 *     The edit comes first and stays atomic; when its record cannot be
 *     written (no broker, no topic) the command says so, naming the edit
 *     already made, and exits 1;
 *   - `audit [VM] [--since DURATION] [--json]` reads the trail back: every
 *     partition from the offsets of now - DURATION to the end offsets read
 *     at its start, read_committed (the worker's QUARANTINE and UNQUARANTINE
 *     events commit with its decisions), each eventId once (at least once, a
 *     redone batch writes its events again), sorted oldest first, one line
 *     per event or one Avro JSON object per line.
 * Only the kafka module talks to Kafka: this file composes and decodes.
 */
#include "cli.h"
#include "cli_internal.h"

#include "codec.h"
#include "config.h"
#include "kafka.h"
#include "types.h"
#include "utf8.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    MAX_ACTOR = 256,            /* bytes of an actor's name */
    AUDIT_FLUSH_MS = 30000,     /* the most an edit waits for its record's ack */
    AUDIT_READ_MS = 60000,      /* the most `audit` waits for the end of the trail */
    DEFAULT_SINCE_MS = 86400000 /* 24h */
};

/* An environment variable of the command's environment; NULL when unset. */
static const char *env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (char *const *e = envp; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

static bool actor_ok(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    return n > 0 && n <= MAX_ACTOR && pg_utf8_check((const uint8_t *)s, n) == n;
}

const char *pg_cli_actor(const pg_cli_args_t *a)
{
    if (a->actor != NULL)
        return actor_ok(a->actor) ? a->actor : NULL;
    /* Under sudo USER is root: the person is SUDO_USER. */
    const char *names[] = {"SUDO_USER", "USER"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *v = env_get(a->envp, names[i]);
        if (actor_ok(v))
            return v;
    }
    return "unknown";
}

/* A random (version 4) uuid, from the kernel's generator. */
static int uuid4(char out[37], char *errbuf, size_t errlen)
{
    uint8_t r[16];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f != NULL ? fread(r, 1, sizeof(r), f) : 0;
    if (f != NULL)
        fclose(f);
    if (got != sizeof(r)) {
        pg_errf(errbuf, errlen, "cannot read /dev/urandom for an event id: %s",
                strerror(errno));
        return -1;
    }
    r[6] = (uint8_t)((r[6] & 0x0f) | 0x40);
    r[8] = (uint8_t)((r[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
             r[12], r[13], r[14], r[15]);
    return 0;
}

/* The record's acknowledgement: PG_OK, or a status with errbuf filled. */
static int write_event(const pg_config_t *c, const pg_audit_event_t *ev, char *errbuf,
                       size_t errlen)
{
    pg_buf_t buf = {0};
    pg_kafka_publisher_t *p = NULL;
    pg_codec_t *codec = pg_codec_new(errbuf, errlen);
    int rc = codec == NULL ? PG_FATAL : PG_OK;
    if (rc == PG_OK) {
        const pg_record_t rec = {.type = PG_REC_AUDIT_EVENT, .u.audit_event = *ev};
        int erc = pg_codec_encode(codec, &rec, &buf, errbuf, errlen);
        rc = erc == 0 ? PG_OK : pg_codec_status(erc);
    }
    if (rc == PG_OK && (p = pg_kafka_publisher_new(c, errbuf, errlen)) == NULL)
        rc = PG_FATAL;
    if (rc == PG_OK)
        rc = pg_kafka_publish(p, c->topic_audit, ev->vm_uuid,
                              ev->vm_uuid != NULL ? strlen(ev->vm_uuid) : 0, buf.data,
                              buf.len, errbuf, errlen);
    if (rc == PG_OK)
        rc = pg_kafka_publisher_flush(p, AUDIT_FLUSH_MS, NULL, NULL, errbuf, errlen);
    pg_kafka_publisher_destroy(p);
    pg_codec_destroy(codec);
    pg_buf_free(&buf);
    return rc;
}

int pg_cli_audit_edit(const pg_cli_args_t *a, const pg_config_t *c,
                      pg_audit_action_t action, const char *vm, const char *detail,
                      const char *done)
{
    char err[768], id[37];
    int rc = uuid4(id, err, sizeof(err));
    if (rc == 0) {
        const pg_audit_event_t ev = {.event_id = id,
                                     .at_ms = pg_now_wall_ms(),
                                     .actor = pg_cli_actor(a),
                                     .action = action,
                                     .vm_uuid = vm,
                                     .detail = detail};
        rc = ev.actor != NULL ? write_event(c, &ev, err, sizeof(err)) : PG_INPUT;
        if (ev.actor == NULL)
            snprintf(err, sizeof(err), "no valid actor");
    }
    if (rc == PG_OK)
        return PG_EXIT_OK;
    fprintf(stderr,
            "pinguard: %s, but its audit record could not be written to %s: %s\n", done,
            c->topic_audit, err);
    return PG_EXIT_RUNTIME;
}

/* --- pinguard audit ---------------------------------------------------- */

/* One record of the trail as read: its bytes, where it was, and (once
 * decoded) the event. */
typedef struct {
    uint8_t *value;
    size_t len;
    int32_t partition;
    int64_t offset, timestamp_ms;
    pg_audit_event_t ev;
    size_t seq; /* order read, for a stable sort */
} trail_rec_t;

typedef struct {
    trail_rec_t *v;
    size_t n, cap;
    int64_t since_ms;
    size_t tombstones;
} trail_t;

static int collect(void *ctx, const pg_kafka_record_t *r)
{
    trail_t *t = ctx;
    /* offsets_for_times starts each partition at the first record stamped
     * since then; a later record may still carry an earlier time. */
    if (r->timestamp_ms >= 0 && r->timestamp_ms < t->since_ms)
        return 0;
    if (r->value == NULL) {
        t->tombstones++;
        return 0;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 256;
        trail_rec_t *v = realloc(t->v, cap * sizeof(*v));
        if (v == NULL)
            return PG_FATAL;
        t->v = v;
        t->cap = cap;
    }
    trail_rec_t *e = &t->v[t->n];
    memset(e, 0, sizeof(*e));
    if ((e->value = malloc(r->len ? r->len : 1)) == NULL)
        return PG_FATAL;
    memcpy(e->value, r->value, r->len);
    e->len = r->len;
    e->partition = r->partition;
    e->offset = r->offset;
    e->timestamp_ms = r->timestamp_ms;
    e->seq = t->n++;
    return 0;
}

/* By eventId, then in the order read: the first of a redone event first. */
static int id_cmp(const void *a, const void *b)
{
    const trail_rec_t *x = a, *y = b;
    int c = strcmp(x->ev.event_id, y->ev.event_id);
    return c != 0 ? c : (x->seq < y->seq ? -1 : x->seq > y->seq);
}

static int event_cmp(const void *a, const void *b)
{
    const trail_rec_t *x = a, *y = b;
    if (x->ev.at_ms != y->ev.at_ms)
        return x->ev.at_ms < y->ev.at_ms ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* A string of an event for one text line: control characters and
 * backslashes as \xNN, so that an event is always one line. */
static const char *shown(const char *s, pg_arena_t *arena)
{
    const char *t =
        s != NULL ? pg_cli_shown((pg_bytes_t){s, strlen(s)}, true, arena) : "-";
    return t != NULL ? t : "?";
}

int pg_cli_audit(const pg_cli_args_t *a, const pg_config_t *c)
{
    char err[768];
    if (a->n_pos > 2)
        return pg_cli_usage_error(
            "%s", "usage: pinguard audit [VM] [--since DURATION] [--json]");
    const char *vm = a->n_pos == 2 ? a->pos[1] : NULL;
    int64_t since = DEFAULT_SINCE_MS;
    if (a->since != NULL && pg_cli_parse_duration(a->since, &since) != 0)
        return pg_cli_usage_error(
            "--since: '%s' is not a duration: a whole number above "
            "0 with ms, s, m, h or d (90s, 15m, 2h, 1d)",
            a->since);
    trail_t t = {.since_ms = pg_now_wall_ms() - since};
    pg_codec_t *codec = NULL;
    pg_arena_t *arena = NULL;
    int rc = PG_EXIT_RUNTIME;
    int krc = pg_kafka_read_topic(c, c->topic_audit, t.since_ms, AUDIT_READ_MS, collect,
                                  &t, err, sizeof(err));
    if (krc != PG_OK) {
        if (krc == PG_FATAL && err[0] == '\0')
            snprintf(err, sizeof(err), "out of memory");
        fprintf(stderr, "pinguard: audit: %s\n", err);
        goto out;
    }
    codec = pg_codec_new(err, sizeof(err));
    arena = pg_arena_new(1 << 16);
    if (codec == NULL || arena == NULL) {
        fprintf(stderr, "pinguard: audit: %s\n", codec == NULL ? err : "out of memory");
        goto out;
    }
    const pg_codec_limits_t lim = pg_cli_codec_limits(c);
    size_t kept = 0, bad = 0;
    for (size_t i = 0; i < t.n; i++) {
        trail_rec_t e = t.v[i];
        pg_record_t rec;
        int drc =
            pg_codec_decode(codec, e.value, e.len, &lim, arena, &rec, err, sizeof(err));
        bool keep = drc == 0 && rec.type == PG_REC_AUDIT_EVENT;
        if (!keep && bad++ < 10)
            fprintf(stderr,
                    "pinguard: audit: partition %d offset %lld is no AuditEvent (%s)\n",
                    (int)e.partition, (long long)e.offset,
                    drc != 0 ? pg_codec_err_name(drc) : "another record");
        if (keep && vm != NULL)
            keep = rec.u.audit_event.vm_uuid != NULL &&
                   strcmp(rec.u.audit_event.vm_uuid, vm) == 0;
        if (!keep) {
            free(e.value);
            continue;
        }
        e.ev = rec.u.audit_event; /* its strings live in the arena */
        t.v[kept++] = e;          /* kept <= i: a slot already dealt with */
    }
    t.n = kept;
    /* An event written again (the worker redid a batch after a crash or an
     * abort: at least once, its eventId is the same) is shown once. */
    if (t.n > 1)
        qsort(t.v, t.n, sizeof(*t.v), id_cmp);
    kept = 0;
    for (size_t i = 0; i < t.n; i++) {
        if (kept > 0 && strcmp(t.v[kept - 1].ev.event_id, t.v[i].ev.event_id) == 0) {
            free(t.v[i].value);
            continue;
        }
        t.v[kept++] = t.v[i];
    }
    t.n = kept;
    if (t.n > 1)
        qsort(t.v, t.n, sizeof(*t.v), event_cmp);
    for (size_t i = 0; i < t.n; i++) {
        const pg_audit_event_t *ev = &t.v[i].ev;
        if (a->json) {
            char *json = NULL;
            int jrc = pg_codec_to_json(codec, 0, t.v[i].value, t.v[i].len, &lim, &json,
                                       NULL, err, sizeof(err));
            if (jrc != 0) {
                fprintf(stderr, "pinguard: audit: %s\n", err);
                goto out;
            }
            printf("%s\n", json);
            free(json);
        } else {
            char at[32];
            pg_cli_format_time(ev->at_ms, at, sizeof(at));
            printf("%s %s %s %s %s\n", at, shown(ev->actor, arena),
                   pg_audit_action_name(ev->action), shown(ev->vm_uuid, arena),
                   shown(ev->detail, arena));
        }
    }
    if (bad > 0)
        fprintf(stderr,
                "pinguard: audit: %zu record(s) of %s were no AuditEvent and "
                "were left out\n",
                bad, c->topic_audit);
    rc = fflush(stdout) == 0 ? PG_EXIT_OK : PG_EXIT_RUNTIME;
out:
    for (size_t i = 0; i < t.n; i++)
        free(t.v[i].value);
    free(t.v);
    pg_arena_destroy(arena);
    pg_codec_destroy(codec);
    return rc;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Subcommands of the one `pinguard` binary. Each command parses its own
 * arguments, builds the configuration from defaults, file, environment and
 * flags, does its work through the modules, and returns an exit code. Usage
 * errors print the usage text and return 2; runtime errors print one line
 * naming what failed and return 1. `impact` and `publish` live in
 * cli_feed.c; what the files share is in cli_internal.h.
 */
#include "cli.h"

#include "bindings.h"
#include "cli_internal.h"
#include "codec.h"
#include "config.h"
#include "kafka.h"
#include "log.h"
#include "policy.h"
#include "sync.h"
#include "utf8.h"
#include "worker.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef PINGUARD_VERSION
#define PINGUARD_VERSION "unknown"
#endif

static const char usage_text[] =
    "usage: pinguard [options] <command> [args]\n"
    "\n"
    "Commands:\n"
    "  run                          consume, decide and produce (the worker)\n"
    "  sync [--rebuild]             apply the binding feed (topic.bindings) to the\n"
    "                               cache; --rebuild replays the whole topic and\n"
    "                               exits when caught up (for a new or flushed Redis)\n"
    "  explain VM [--json]          is the VM host-bound, and which devices pin it\n"
    "                               (and by which rule: built-in, site or none);\n"
    "                               the pin's time left, the quarantine, the failed\n"
    "                               migrations in quarantine.window.ms and the\n"
    "                               back-off; shows the cache entry as stored and\n"
    "                               whether it is valid (a malformed entry is an\n"
    "                               unknown VM); a value holding bytes that are not\n"
    "                               UTF-8, or NUL, shows them, and any \\, as \\xNN\n"
    "  bind VM DEVICE KIND          bind a device (pci, dgpu, mdev, usb, pci+vf,\n"
    "                               pci+vf2, pci+vdpa, or a kind of device.kinds)\n"
    "                               to a VM\n"
    "  unbind VM DEVICE             remove a device binding\n"
    "  place VM HOST                record the host the VM runs on\n"
    "  pin VM REASON... [--for DURATION]\n"
    "                               pin the VM to its host (operator pin), until\n"
    "                               unpin, or for DURATION (500ms, 90s, 15m, 2h, 1d)\n"
    "  unpin VM                     remove the operator pin\n"
    "  unquarantine VM              lift the VM's quarantine (its failures and\n"
    "                               back-off too)\n"
    "  audit [VM] [--since DURATION] [--json]\n"
    "                               the audit trail (topic.audit) since DURATION ago\n"
    "                               (default 24h), oldest first: operator edits and\n"
    "                               quarantine changes, of one VM or all\n"
    "  import FILE|-                load VMs from JSON lines (each replaces the VM's\n"
    "                               entry): "
    "{\"vmUuid\":..,\"hostUuid\":..,\"pin\":..,\n"
    "                                \"devices\":[{\"deviceUuid\":..,\"kind\":..}]};\n"
    "                               every line is checked first: one bad line and\n"
    "                               nothing is written\n"
    "  impact HOST [--json]         before maintenance: every VM the host index lists\n"
    "                               for HOST, whether a MAINTENANCE migration would\n"
    "                               be approved now, and if not why\n"
    "  publish FILE|-               put JSON lines on the binding feed as VmBindings\n"
    "                               records: {\"vmUuid\":..,\"hostUuid\":..|null,\n"
    "                                \"devices\":[{\"deviceUuid\":..,\"kind\":..}],\n"
    "                                \"generation\":N,\"updatedAtMs\":M}\n"
    "                               (updatedAtMs: default now); a line\n"
    "                               {\"vmUuid\":..,\"tombstone\":true} is a\n"
    "                               tombstone (the VM no longer exists); every line\n"
    "                               is checked first: one bad line and nothing is\n"
    "                               published\n"
    "  avro encode --type T [--schema-version N] [FILE]\n"
    "                               JSON to single-object Avro on stdout; refuses,\n"
    "                               with the DLQ reason, what the worker would not\n"
    "                               accept (input.max.string.length and\n"
    "                               advice.max.migrations apply)\n"
    "  avro decode [--framed] [--schema-version N] [FILE]\n"
    "                               single-object Avro of any known version to JSON\n"
    "                               lines in version N's shape; --framed reads\n"
    "                               kcat -f '%R%s' frames (4-byte length + payload)\n"
    "  avro fingerprint [--type T] [--schema-version N]\n"
    "                               print each version's fingerprints and canonical\n"
    "                               forms\n"
    "  lag [--json]                 the group's lag per input partition\n"
    "  config reference             print the configuration reference (Markdown)\n"
    "  config show                  print the effective configuration, secrets hidden\n"
    "\n"
    "Options (before or after the command):\n"
    "  --config FILE                read settings from FILE (key = value lines)\n"
    "  --set KEY=VALUE              set one setting (repeatable)\n"
    "  -X PROP=VALUE                librdkafka property, same as --set "
    "kafka.PROP=VALUE\n"
    "  --check-config               with run and sync: validate the settings, print\n"
    "                               them, exit\n"
    "  --json                       with explain, impact, lag and audit: JSON output\n"
    "  --for DURATION               with pin: the pin expires after DURATION\n"
    "  --actor NAME                 with the edits (bind, unbind, place, pin, unpin,\n"
    "                               import, unquarantine): who makes it, for the\n"
    "                               audit trail (default: $SUDO_USER, else $USER)\n"
    "  --since DURATION             with audit: how far back (default 24h)\n"
    "  --rebuild                    with sync: replay the topic from the beginning\n"
    "  --type T, --framed           with avro: record type / framed input\n"
    "  -h, --help                   this text\n"
    "  --version                    print the version and exit\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error.\n";

int pg_cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "pinguard: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n\n%s", usage_text);
    va_end(ap);
    return PG_EXIT_USAGE;
}

int pg_cli_parse_duration(const char *s, int64_t *ms)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    int64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (PG_CLI_MAX_DURATION_MS - (*p - '0')) / 10)
            return -1; /* past any duration accepted: no overflow below */
        v = v * 10 + (*p - '0');
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(p, units[i].unit) != 0)
            continue;
        if (v == 0 || v > PG_CLI_MAX_DURATION_MS / units[i].ms)
            return -1;
        *ms = v * units[i].ms;
        return 0;
    }
    return -1;
}

void pg_cli_format_ms(int64_t ms, char *buf, size_t len)
{
    if (ms < 1000) {
        snprintf(buf, len, "%lldms", (long long)(ms > 0 ? ms : 0));
        return;
    }
    static const struct {
        char unit;
        int64_t ms;
    } parts[] = {{'d', 86400000}, {'h', 3600000}, {'m', 60000}, {'s', 1000}};
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]) && off < len; i++) {
        int64_t n = ms / parts[i].ms;
        ms %= parts[i].ms;
        if (n > 0) {
            int w =
                snprintf(buf + off, len - off, "%lld%c", (long long)n, parts[i].unit);
            off += w > 0 ? (size_t)w : 0;
        }
    }
}

void pg_cli_format_time(int64_t at_ms, char *buf, size_t len)
{
    time_t t = (time_t)(at_ms >= 0 ? at_ms / 1000 : (at_ms - 999) / 1000);
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "%lld", (long long)at_ms);
}

static int parse_args(int argc, char **argv, pg_cli_args_t *a)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        bool needs_value = strcmp(s, "--config") == 0 || strcmp(s, "--set") == 0 ||
                           strcmp(s, "-X") == 0 || strcmp(s, "--type") == 0 ||
                           strcmp(s, "--schema-version") == 0 ||
                           strcmp(s, "--for") == 0 || strcmp(s, "--actor") == 0 ||
                           strcmp(s, "--since") == 0;
        if (needs_value && i + 1 >= argc)
            return pg_cli_usage_error("%s needs a value", s);
        if (strcmp(s, "--config") == 0) {
            a->config_file = argv[++i];
        } else if (strcmp(s, "--set") == 0 || strcmp(s, "-X") == 0) {
            if (a->n_sets == sizeof(a->sets) / sizeof(a->sets[0]))
                return pg_cli_usage_error("too many %s options", s);
            /* -X is kcat's passthrough: prefix it into the kafka.* namespace. */
            if (s[1] == 'X') {
                char *x = a->xbuf[a->n_sets];
                snprintf(x, sizeof(a->xbuf[0]), "kafka.%s", argv[++i]);
                a->sets[a->n_sets++] = x;
            } else {
                a->sets[a->n_sets++] = argv[++i];
            }
        } else if (strcmp(s, "--type") == 0) {
            a->type = argv[++i];
        } else if (strcmp(s, "--schema-version") == 0) {
            a->schema_version = argv[++i];
        } else if (strcmp(s, "--for") == 0) {
            a->for_duration = argv[++i];
        } else if (strcmp(s, "--actor") == 0) {
            a->actor = argv[++i];
        } else if (strcmp(s, "--since") == 0) {
            a->since = argv[++i];
        } else if (strcmp(s, "--check-config") == 0) {
            a->check_config = true;
        } else if (strcmp(s, "--json") == 0) {
            a->json = true;
        } else if (strcmp(s, "--rebuild") == 0) {
            a->rebuild = true;
        } else if (strcmp(s, "--framed") == 0) {
            a->framed = true;
        } else if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
            a->help = true;
        } else if (strcmp(s, "--version") == 0) {
            a->version = true;
        } else if (s[0] == '-' && s[1] != '\0') {
            return pg_cli_usage_error("unknown option %s", s);
        } else {
            if (a->n_pos == sizeof(a->pos) / sizeof(a->pos[0]))
                return pg_cli_usage_error("too many arguments (%s)", s);
            a->pos[a->n_pos++] = s;
        }
    }
    return PG_EXIT_OK;
}

/* Builds the configuration from every source; a failure is a usage error. */
static pg_config_t *load_config(const pg_cli_args_t *a, char *const *envp,
                                int *exit_code)
{
    char err[512];
    pg_config_t *c = pg_config_new();
    *exit_code = PG_EXIT_USAGE;
    if (c == NULL) {
        fprintf(stderr, "pinguard: out of memory\n");
        *exit_code = PG_EXIT_RUNTIME;
        return NULL;
    }
    const char *file = a->config_file;
    for (char *const *e = envp; file == NULL && e && *e; e++)
        if (strncmp(*e, "PINGUARD_CONFIG=", 16) == 0)
            file = *e + 16;
    if (file != NULL && pg_config_load_file(c, file, err, sizeof(err)) != 0)
        goto fail;
    if (pg_config_load_env(c, envp, err, sizeof(err)) != 0)
        goto fail;
    for (size_t i = 0; i < a->n_sets; i++) {
        char kv[1024];
        snprintf(kv, sizeof(kv), "%s", a->sets[i]);
        char *eq = strchr(kv, '=');
        if (eq == NULL) {
            snprintf(err, sizeof(err), "'%s': expected KEY=VALUE", a->sets[i]);
            goto fail;
        }
        *eq = '\0';
        if (pg_config_set(c, kv, eq + 1, PG_CONFIG_SRC_FLAG, err, sizeof(err)) != 0)
            goto fail;
    }
    if (pg_config_finish(c, err, sizeof(err)) != 0)
        goto fail;
    pg_log_setup((pg_log_level_t)c->log_level, (pg_log_format_t)c->log_format);
    *exit_code = PG_EXIT_OK;
    return c;
fail:
    fprintf(stderr, "pinguard: configuration: %s\n", err);
    pg_config_destroy(c);
    return NULL;
}

pg_bindings_t *pg_cli_open_bindings(const pg_config_t *c)
{
    pg_bindings_opts_t o = pg_bindings_opts(c);
    o.view = false; /* one-shot commands: every read is direct */
    pg_bindings_t *b = pg_bindings_new(&o);
    if (b == NULL)
        fprintf(stderr, "pinguard: out of memory\n");
    return b;
}

static int cmd_run(const pg_cli_args_t *a, const pg_config_t *c,
                   volatile sig_atomic_t *stop)
{
    char err[1024];
    if (a->n_pos != 1)
        return pg_cli_usage_error("run takes no arguments (got %s)", a->pos[1]);
    /* librdkafka's view of the kafka.* properties, before anything connects:
     * a property it does not know or a value it cannot parse is a
     * configuration error like any other. */
    if (pg_kafka_check_config(c, err, sizeof(err)) != 0) {
        fprintf(stderr, "pinguard: configuration: %s\n", err);
        return PG_EXIT_USAGE;
    }
    if (a->check_config) {
        pg_config_print(c, stdout);
        return PG_EXIT_OK;
    }
    if (pg_worker_run(c, stop, err, sizeof(err)) != 0) {
        pg_log_error("worker_failed", "error", err, NULL);
        return PG_EXIT_RUNTIME;
    }
    return PG_EXIT_OK;
}

/* `sync [--rebuild]`: like run, for the binding feed. */
static int cmd_sync(const pg_cli_args_t *a, const pg_config_t *c,
                    volatile sig_atomic_t *stop)
{
    char err[1024];
    if (a->n_pos != 1)
        return pg_cli_usage_error("sync takes no arguments (got %s)", a->pos[1]);
    if (pg_kafka_check_config(c, err, sizeof(err)) != 0) {
        fprintf(stderr, "pinguard: configuration: %s\n", err);
        return PG_EXIT_USAGE;
    }
    if (a->check_config) {
        pg_config_print(c, stdout);
        return PG_EXIT_OK;
    }
    const pg_sync_opts_t o = {.rebuild = a->rebuild,
                              .progress = isatty(fileno(stderr))};
    if (pg_sync_run(c, &o, stop, err, sizeof(err)) != 0) {
        pg_log_error("sync_failed", "error", err, NULL);
        return PG_EXIT_RUNTIME;
    }
    return PG_EXIT_OK;
}

/* Most devices explain reads of one VM: the largest redis.max.devices.per.vm
 * anyone may configure, so an entry the worker refuses as too large is still
 * shown whole up to that bound. */
#define EXPLAIN_MAX_DEVICES 100000

/* A cache value for an operator: verbatim when it is UTF-8 without NUL (and,
 * for a terminal, without control characters). Otherwise each byte outside a
 * well-formed UTF-8 character, each NUL, control character and backslash is
 * written \xNN, so that no two values print alike. NULL when out of memory. */
const char *pg_cli_shown(pg_bytes_t v, bool terminal, pg_arena_t *arena)
{
    const uint8_t *s = (const uint8_t *)v.data;
    bool escape = pg_utf8_check(s, v.len) != v.len;
    for (size_t i = 0; terminal && !escape && i < v.len; i++)
        escape = s[i] < 0x20 || s[i] == 0x7f;
    if (!escape)
        return pg_arena_strndup(arena, v.data, v.len);
    char *out = pg_arena_alloc(arena, 4 * v.len + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < v.len;) {
        size_t ok = pg_utf8_check(s + i, v.len - i);
        for (size_t k = i; k < i + ok; k++) {
            if (s[k] < 0x20 || s[k] == 0x7f || s[k] == '\\')
                o += sprintf(o, "\\x%02x", s[k]);
            else
                *o++ = (char)s[k];
        }
        i += ok;
        if (i < v.len)
            o += sprintf(o, "\\x%02x", s[i++]);
    }
    *o = '\0';
    return out;
}

static int raw_device_cmp(const void *a, const void *b)
{
    const pg_raw_device_t *x = a, *y = b;
    size_t n = x->uuid.len < y->uuid.len ? x->uuid.len : y->uuid.len;
    int c = n ? memcmp(x->uuid.data, y->uuid.data, n) : 0;
    if (c != 0 || x->uuid.len != y->uuid.len)
        return c != 0 ? c : (x->uuid.len < y->uuid.len ? -1 : 1);
    n = x->kind.len < y->kind.len ? x->kind.len : y->kind.len;
    c = n ? memcmp(x->kind.data, y->kind.data, n) : 0;
    return c != 0 ? c : (x->kind.len > y->kind.len) - (x->kind.len < y->kind.len);
}

static json_t *json_bytes(bool present, pg_bytes_t v, pg_arena_t *arena)
{
    const char *t = present ? pg_cli_shown(v, false, arena) : NULL;
    return t != NULL ? json_string(t) : json_null();
}

/* explain's :generation: a number when it is one, else the bytes as held
 * (the entry is then malformed), null when absent. */
static json_t *json_generation(const pg_vm_raw_t *raw, pg_arena_t *arena)
{
    int64_t g;
    if (raw->has_generation && pg_bindings_parse_generation(raw->generation, &g))
        return json_integer((json_int_t)g);
    return json_bytes(raw->has_generation, raw->generation, arena);
}

/* The rule that classifies a kind as the cache holds it, and whether it
 * pins: a kind holding a NUL byte is declared nowhere (and the entry is
 * malformed anyway). */
static pg_kind_rule_t classify_raw(const pg_policy_opts_t *po, pg_bytes_t kind,
                                   pg_arena_t *arena, bool *pins)
{
    *pins = true;
    char *k = memchr(kind.data, '\0', kind.len) == NULL
                  ? pg_arena_strndup(arena, kind.data, kind.len)
                  : NULL;
    return k != NULL ? pg_policy_classify(po, k, pins) : PG_KIND_RULE_NONE;
}

/* The origins a quarantine blocks (quarantine.origins), "DRS, HA". */
static void origins_text(unsigned mask, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int o = PG_ORIGIN_DRS; o <= PG_ORIGIN_OTHER && off < len; o++)
        if (mask & (1u << (unsigned)o)) {
            int w = snprintf(buf + off, len - off, "%s%s", off ? ", " : "",
                             pg_origin_name((pg_origin_t)o));
            off += w > 0 ? (size_t)w : 0;
        }
    if (buf[0] == '\0')
        snprintf(buf, len, "nothing");
}

/* explain --json's "quarantine": the state, the failures and the back-off. */
static json_t *json_quarantine(const pg_vm_raw_t *raw, const pg_config_t *c,
                               pg_arena_t *arena)
{
    const pg_vm_inspect_t *in = &raw->inspect;
    int64_t until = 0, dur = 0;
    bool parsed = raw->has_quarantine &&
                  pg_bindings_parse_quarantine(raw->quarantine, &until, &dur);
    json_t *fails = json_array(), *blocks = json_array();
    for (size_t i = 0; i < in->n_failures; i++) {
        const char *id = pg_cli_shown(in->failures[i].request_id, false, arena);
        json_array_append_new(
            fails, json_pack("{s:s, s:I}", "requestId", id ? id : "", "finishedAtMs",
                             (json_int_t)in->failures[i].finished_at_ms));
    }
    for (int o = PG_ORIGIN_DRS; o <= PG_ORIGIN_OTHER; o++)
        if (c->quarantine_origins & (1u << (unsigned)o))
            json_array_append_new(blocks, json_string(pg_origin_name((pg_origin_t)o)));
    return json_pack(
        "{s:b, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o}",
        "quarantined", raw->has_quarantine, "expiresInMs",
        raw->has_quarantine && in->quarantine_ttl_ms >= 0
            ? json_integer((json_int_t)in->quarantine_ttl_ms)
            : json_null(),
        "durationMs", parsed ? json_integer((json_int_t)dur) : json_null(), "untilMs",
        parsed ? json_integer((json_int_t)until) : json_null(), "blocks", blocks,
        "windowMs", (json_int_t)c->quarantine_window_ms, "failuresToQuarantine",
        (json_int_t)c->quarantine_failures, "failuresInWindow",
        (json_int_t)in->failures_in_window, "failuresTotal",
        (json_int_t)in->failures_total, "failures", fails, "backoffLastMs",
        in->has_backoff_last ? json_integer((json_int_t)in->backoff_last_ms)
                             : json_null(),
        "startedBy", json_bytes(in->has_started_by, in->started_by, arena), "liftedBy",
        json_bytes(in->has_lifted_by, in->lifted_by, arena));
}

/* explain's quarantine lines. NULL-free: out of memory shows "?". */
static void print_quarantine(const pg_vm_raw_t *raw, const pg_config_t *c,
                             pg_arena_t *arena)
{
    const pg_vm_inspect_t *in = &raw->inspect;
    char left[48], dur[48], window[48], blocks[64], at[32];
    int64_t until = 0, d = 0;
    origins_text(c->quarantine_origins, blocks, sizeof(blocks));
    pg_cli_format_ms(c->quarantine_window_ms, window, sizeof(window));
    if (!raw->has_quarantine) {
        printf("  quarantine: none\n");
    } else if (strcmp(in->quarantine_type, "string") != 0) {
        printf("  quarantine: QUARANTINED (:quarantine is a %s, not a string; it "
               "quarantines all the same), blocks %s\n",
               in->quarantine_type, blocks);
    } else {
        bool parsed = pg_bindings_parse_quarantine(raw->quarantine, &until, &d);
        pg_cli_format_ms(in->quarantine_ttl_ms, left, sizeof(left));
        pg_cli_format_ms(d, dur, sizeof(dur));
        printf("  quarantine: QUARANTINED, %s left",
               in->quarantine_ttl_ms >= 0 ? left : "no expiry,");
        if (parsed)
            printf(" of %s", dur);
        printf(", blocks %s\n", blocks);
    }
    if (strcmp(in->failures_type, "zset") != 0 &&
        strcmp(in->failures_type, "none") != 0)
        printf("  failures: (a %s, not a zset: the worker leaves it alone)\n",
               in->failures_type);
    else
        printf("  failed migrations within %s: %zu (quarantine.failures: %d)\n", window,
               in->failures_in_window, c->quarantine_failures);
    for (size_t i = 0; i < in->n_failures; i++) {
        const char *id = pg_cli_shown(in->failures[i].request_id, true, arena);
        pg_cli_format_time(in->failures[i].finished_at_ms, at, sizeof(at));
        printf("    %s  %s\n", at, id ? id : "?");
    }
    if (in->failures_in_window > in->n_failures)
        printf("    ... and %zu earlier\n", in->failures_in_window - in->n_failures);
    if (strcmp(in->backoff_type, "hash") != 0 &&
        strcmp(in->backoff_type, "none") != 0) {
        printf("  back-off: (a %s, not a hash: the worker leaves it alone)\n",
               in->backoff_type);
    } else if (in->has_backoff_last && in->backoff_last_ms > 0) {
        int64_t next = 2 * in->backoff_last_ms;
        if (next > c->quarantine_max_ms)
            next = c->quarantine_max_ms;
        pg_cli_format_ms(in->backoff_last_ms, dur, sizeof(dur));
        pg_cli_format_ms(next, left, sizeof(left));
        printf("  back-off: the last quarantine lasted %s; the next would last %s\n",
               dur, left);
    } else {
        printf("  back-off: none\n");
    }
}

static int cmd_explain(const pg_cli_args_t *a, const pg_config_t *c)
{
    char err[512], why[256] = "";
    int rc = PG_EXIT_RUNTIME;
    if (a->n_pos != 2)
        return pg_cli_usage_error("%s", "explain needs exactly one VM uuid");
    const char *vm = a->pos[1];
    pg_bindings_t *b = pg_cli_open_bindings(c);
    pg_arena_t *arena = pg_arena_new(1 << 16);
    pg_vm_raw_t raw;
    pg_vm_binding_t vb;
    if (b == NULL || arena == NULL)
        goto out;
    int brc =
        pg_bindings_inspect(b, vm, EXPLAIN_MAX_DEVICES, arena, &raw, err, sizeof(err));
    if (brc == PG_INPUT) {
        rc = pg_cli_usage_error("explain: %s", err);
        goto out;
    }
    if (brc != 0) {
        fprintf(stderr, "pinguard: explain %s: %s\n", vm, err);
        goto out;
    }
    /* The worker's rule: an entry that fails the check is an unknown VM. */
    const pg_bindings_limits_t lim = pg_bindings_limits(c);
    bool valid = pg_bindings_check(&raw, &lim, why, sizeof(why));
    if (pg_bindings_to_binding(&raw, &lim, arena, &vb, err, sizeof(err)) != 0)
        goto oom;
    size_t n_shown = raw.devices != NULL ? raw.n_devices : 0;
    if (n_shown > 1)
        qsort(raw.devices, n_shown, sizeof(*raw.devices), raw_device_cmp);
    pg_device_ref_t *pinning =
        pg_arena_calloc(arena, vb.n_devices + 1, sizeof(*pinning));
    if (pinning == NULL)
        goto oom;
    const pg_policy_opts_t po = pg_config_policy_opts(c);
    pg_policy_verdict_t v;
    /* As the worker decides advice (origin DRS), and a request without
     * minGeneration. */
    pg_policy_judge(&po, &vb, NULL, pinning, &v);
    bool vetoed = v.verdict == PG_VERDICT_VETOED;
    bool quarantined_only = vetoed && v.reason == PG_VETO_QUARANTINED;
    bool bound = vetoed && !quarantined_only;
    /* The pin's time left, when it has one. */
    int64_t pin_ttl = raw.has_pin ? raw.inspect.pin_ttl_ms : -1;

    if (a->json) {
        json_t *devs = json_array(), *pins = json_array();
        for (size_t i = 0; i < n_shown; i++) {
            const pg_raw_device_t *d = &raw.devices[i];
            const char *u = pg_cli_shown(d->uuid, false, arena),
                       *k = pg_cli_shown(d->kind, false, arena);
            if (u == NULL || k == NULL) {
                json_decref(devs);
                json_decref(pins);
                goto oom;
            }
            bool p;
            pg_kind_rule_t rule = classify_raw(&po, d->kind, arena, &p);
            json_array_append_new(devs, json_pack("{s:s, s:s, s:b, s:s}", "deviceUuid",
                                                  u, "kind", k, "pins", p, "rule",
                                                  pg_policy_kind_rule_name(rule)));
        }
        for (size_t i = 0; i < v.n_devices; i++)
            json_array_append_new(pins, json_pack("{s:s, s:s}", "deviceUuid",
                                                  pinning[i].device_uuid, "kind",
                                                  pinning[i].kind));
        json_t *types = json_pack(
            "{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "host", raw.host_type, "pin",
            raw.pin_type, "devices", raw.devices_type, "generation",
            raw.generation_type, "failures", raw.inspect.failures_type, "quarantine",
            raw.inspect.quarantine_type, "backoff", raw.inspect.backoff_type);
        json_t *o = json_pack(
            "{s:s, s:b, s:o, s:o, s:b, s:o, s:o, s:o, s:o, s:b, s:s, s:o, s:o, s:I, "
            "s:o, s:o}",
            "vmUuid", vm, "valid", valid, "invalidReason",
            valid ? json_null() : json_string(why), "keyTypes", types, "known",
            vb.known, "host", json_bytes(raw.has_host, raw.host, arena), "pin",
            json_bytes(raw.has_pin, raw.pin, arena), "pinExpiresInMs",
            pin_ttl >= 0 ? json_integer((json_int_t)pin_ttl) : json_null(),
            "generation", json_generation(&raw, arena), "hostBound", bound, "verdict",
            pg_verdict_name(v.verdict), "reason",
            vetoed ? json_string(pg_veto_reason_name(v.reason)) : json_null(),
            "pinningDevices", pins, "deviceCount", (json_int_t)raw.n_devices, "devices",
            devs, "quarantine", json_quarantine(&raw, c, arena));
        char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (text == NULL)
            goto oom;
        printf("%s\n", text);
        free(text);
    } else {
        const char *host = raw.has_host ? pg_cli_shown(raw.host, true, arena) : NULL;
        const char *pin = raw.has_pin ? pg_cli_shown(raw.pin, true, arena) : NULL;
        const char *gen =
            raw.has_generation ? pg_cli_shown(raw.generation, true, arena) : NULL;
        if ((raw.has_host && host == NULL) || (raw.has_pin && pin == NULL) ||
            (raw.has_generation && gen == NULL))
            goto oom;
        char blocks[64], left[48];
        origins_text(c->quarantine_origins, blocks, sizeof(blocks));
        if (quarantined_only)
            printf("vm %s: QUARANTINED, migrations from %s are vetoed (QUARANTINED)\n",
                   vm, blocks);
        else if (bound)
            printf("vm %s: HOST-BOUND, migration is vetoed (%s)\n", vm,
                   pg_veto_reason_name(v.reason));
        else
            printf("vm %s: migratable\n", vm);
        if (!valid)
            printf("  cache entry: MALFORMED (%s): decided as an unknown VM\n", why);
        printf("  host: %s\n", host != NULL ? host
                               : valid      ? "(not in the cache: unknown VM)"
                                            : "(none)");
        pg_cli_format_ms(pin_ttl, left, sizeof(left));
        printf("  operator pin: %s",
               pin ? (pin[0] ? pin : "(no reason given)") : "none");
        if (pin != NULL)
            printf(pin_ttl >= 0 ? " (expires in %s)" : " (no expiry)", left);
        printf("\n");
        if (strcmp(raw.generation_type, "none") != 0 &&
            strcmp(raw.generation_type, "string") != 0)
            printf("  generation: (a %s, not a string)\n", raw.generation_type);
        else
            printf("  generation: %s\n", gen != NULL ? gen : "none");
        printf("  devices: %zu%s\n", raw.n_devices,
               raw.n_devices > n_shown ? " (too many to read)" : "");
        for (size_t i = 0; i < n_shown; i++) {
            const pg_raw_device_t *d = &raw.devices[i];
            const char *u = pg_cli_shown(d->uuid, true, arena),
                       *k = pg_cli_shown(d->kind, true, arena);
            if (u == NULL || k == NULL)
                goto oom;
            bool p;
            pg_kind_rule_t rule = classify_raw(&po, d->kind, arena, &p);
            printf("    %-38s %-9s %s\n", u, k,
                   rule == PG_KIND_RULE_NONE ? "PINS (declared nowhere: fail closed)"
                   : rule == PG_KIND_RULE_SITE
                       ? (p ? "PINS (site: device.kinds)"
                            : "migrates (site: device.kinds)")
                       : (p ? "PINS (built-in)" : "migrates (built-in)"));
        }
        if (bound && v.n_devices > 0) {
            printf("  pinned by:");
            for (size_t i = 0; i < v.n_devices; i++) {
                const pg_device_ref_t *d = &pinning[i];
                const char *u = pg_cli_shown(
                    (pg_bytes_t){d->device_uuid, strlen(d->device_uuid)}, true, arena);
                const char *k =
                    pg_cli_shown((pg_bytes_t){d->kind, strlen(d->kind)}, true, arena);
                if (u == NULL || k == NULL)
                    goto oom;
                printf(" %s(%s)", u, k);
            }
            printf("\n");
        }
        print_quarantine(&raw, c, arena);
    }
    rc = PG_EXIT_OK;
    goto out;
oom:
    fprintf(stderr, "pinguard: explain %s: out of memory\n", vm);
out:
    pg_arena_destroy(arena);
    pg_bindings_destroy(b);
    return rc;
}

/* Formats into buf and cuts it after its last whole UTF-8 character (a
 * value cut short by the buffer must still be a valid Avro string). */
__attribute__((format(printf, 3, 4))) static const char *text_of(char *buf, size_t len,
                                                                 const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    buf[pg_utf8_check((const uint8_t *)buf, strlen(buf))] = '\0';
    return buf;
}

static int cmd_edit(const pg_cli_args_t *a, const pg_config_t *c)
{
    char err[512] = "", detail[4096], done[4096], left[48];
    const char *cmd = a->pos[0];
    int rc;
    static const struct {
        const char *name;
        size_t min, max;
        const char *usage;
    } shapes[] = {{"bind", 4, 4, "bind VM DEVICE KIND"},
                  {"unbind", 3, 3, "unbind VM DEVICE"},
                  {"place", 3, 3, "place VM HOST"},
                  {"pin", 3, 16, "pin VM REASON... [--for DURATION]"},
                  {"unpin", 2, 2, "unpin VM"},
                  {"unquarantine", 2, 2, "unquarantine VM"}};
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        if (strcmp(cmd, shapes[i].name) == 0 &&
            (a->n_pos < shapes[i].min || a->n_pos > shapes[i].max))
            return pg_cli_usage_error("usage: pinguard %s", shapes[i].usage);
    int64_t ttl_ms = 0;
    if (a->for_duration != NULL && pg_cli_parse_duration(a->for_duration, &ttl_ms) != 0)
        return pg_cli_usage_error("--for: '%s' is not a duration: a whole number above "
                                  "0 with ms, s, m, h or d (500ms, 90s, 15m, 2h, 1d), "
                                  "at most 36500d",
                                  a->for_duration);
    char reason[PG_MAX_STRING + 1] = "";
    size_t len = 0;
    for (size_t i = 2; strcmp(cmd, "pin") == 0 && i < a->n_pos; i++)
        len += (size_t)snprintf(reason + len,
                                len < sizeof(reason) ? sizeof(reason) - len : 0, "%s%s",
                                i > 2 ? " " : "", a->pos[i]);
    if (len >= sizeof(reason))
        return pg_cli_usage_error("the pin's reason is %zu bytes, more than %d", len,
                                  PG_MAX_STRING);
    const char *actor = pg_cli_actor(a);
    if (actor == NULL)
        return pg_cli_usage_error("%s", "--actor needs a non-empty UTF-8 name of at "
                                        "most 256 bytes");

    pg_bindings_t *b = pg_cli_open_bindings(c);
    if (b == NULL)
        return PG_EXIT_RUNTIME;
    const char *vm = a->pos[1];
    pg_audit_action_t action = PG_AUDIT_BIND;
    if (strcmp(cmd, "bind") == 0) {
        const char *kind = a->pos[3];
        rc = pg_bindings_bind(b, vm, a->pos[2], kind, err, sizeof(err));
        /* A kind of the built-in table or of device.kinds is known; any other
         * pins the VM (fail closed), which may not be what was meant. */
        const pg_policy_opts_t po = pg_config_policy_opts(c);
        bool pins;
        pg_kind_rule_t rule = pg_policy_classify(&po, kind, &pins);
        if (rc == 0 && rule == PG_KIND_RULE_NONE)
            fprintf(stderr,
                    "pinguard: warning: kind '%s' is neither built in nor declared in "
                    "device.kinds: it pins the VM\n",
                    kind);
        text_of(detail, sizeof(detail), "bound %s (%s, %s: %s)", a->pos[2], kind,
                pg_policy_kind_rule_name(rule), pins ? "pins" : "migrates");
        text_of(done, sizeof(done), "device %s (%s) was bound to vm %s", a->pos[2],
                kind, vm);
    } else if (strcmp(cmd, "unbind") == 0) {
        bool removed = false;
        action = PG_AUDIT_UNBIND;
        rc = pg_bindings_unbind(b, vm, a->pos[2], &removed, err, sizeof(err));
        if (rc == 0 && !removed)
            fprintf(stderr, "pinguard: device %s was not bound to vm %s\n", a->pos[2],
                    vm);
        text_of(detail, sizeof(detail),
                removed ? "unbound %s" : "%s was not bound (nothing changed)",
                a->pos[2]);
        text_of(done, sizeof(done),
                removed ? "device %s was unbound from vm %s"
                        : "device %s was not bound to vm %s (nothing changed)",
                a->pos[2], vm);
    } else if (strcmp(cmd, "place") == 0) {
        action = PG_AUDIT_PLACE;
        rc = pg_bindings_place(b, vm, a->pos[2], err, sizeof(err));
        text_of(detail, sizeof(detail), "placed on %s", a->pos[2]);
        text_of(done, sizeof(done), "vm %s was placed on %s", vm, a->pos[2]);
    } else if (strcmp(cmd, "pin") == 0) {
        action = PG_AUDIT_PIN;
        rc = pg_bindings_pin(b, vm, reason, ttl_ms, err, sizeof(err));
        pg_cli_format_ms(ttl_ms, left, sizeof(left));
        if (ttl_ms > 0) {
            text_of(detail, sizeof(detail), "pinned: %s (expires in %lld ms)", reason,
                    (long long)ttl_ms);
            text_of(done, sizeof(done), "vm %s was pinned for %s", vm, left);
        } else {
            text_of(detail, sizeof(detail), "pinned: %s (no expiry)", reason);
            text_of(done, sizeof(done), "vm %s was pinned", vm);
        }
    } else if (strcmp(cmd, "unpin") == 0) {
        bool removed = false;
        action = PG_AUDIT_UNPIN;
        rc = pg_bindings_unpin(b, vm, &removed, err, sizeof(err));
        text_of(detail, sizeof(detail), "%s",
                removed ? "unpinned" : "was not pinned (nothing changed)");
        text_of(done, sizeof(done),
                removed ? "vm %s was unpinned"
                        : "vm %s was not pinned (nothing changed)",
                vm);
    } else {
        pg_unquarantine_t q = {0};
        action = PG_AUDIT_UNQUARANTINE;
        rc = pg_bindings_unquarantine(b, vm, &q, err, sizeof(err));
        char dur[48], cleared[160];
        pg_cli_format_ms(q.ttl_ms, left, sizeof(left));
        pg_cli_format_ms(q.duration_ms, dur, sizeof(dur));
        snprintf(cleared, sizeof(cleared), "its %zu failure%s and back-off cleared",
                 q.failures, q.failures == 1 ? "" : "s");
        if (q.was_quarantined && q.ttl_ms >= 0)
            text_of(detail, sizeof(detail),
                    "quarantine lifted (%lld ms left of %lld ms); %s",
                    (long long)q.ttl_ms, (long long)q.duration_ms, cleared);
        else if (q.was_quarantined)
            text_of(detail, sizeof(detail), "quarantine lifted; %s", cleared);
        else
            text_of(detail, sizeof(detail), "was not quarantined; %s", cleared);
        if (q.was_quarantined && q.ttl_ms >= 0)
            text_of(done, sizeof(done), "vm %s: quarantine lifted (%s left of %s); %s",
                    vm, left, q.duration_ms > 0 ? dur : "?", cleared);
        else
            text_of(done, sizeof(done), "vm %s %s; %s", vm,
                    q.was_quarantined ? "had its quarantine lifted"
                                      : "was not quarantined",
                    cleared);
        if (rc == 0)
            printf("%s\n", done);
    }
    pg_bindings_destroy(b);
    if (rc == PG_INPUT)
        return pg_cli_usage_error("%s", err);
    if (rc != 0) {
        fprintf(stderr, "pinguard: %s %s: %s\n", cmd, vm, err);
        return PG_EXIT_RUNTIME;
    }
    return pg_cli_audit_edit(a, c, action, vm, detail, done);
}

/* Why a JSON string cannot be a value of the cache, into err; NULL-safe on
 * the string. Strings from jansson are UTF-8 already; NUL is let through the
 * parser (JSON_ALLOW_NUL) so that it is named here, not as bad JSON. */
static int import_string(json_t *j, const char *what, bool may_be_empty, size_t max_len,
                         char *err, size_t errlen)
{
    if (!json_is_string(j)) {
        snprintf(err, errlen, "%s must be a string", what);
        return -1;
    }
    size_t len = json_string_length(j);
    if (len == 0 && !may_be_empty)
        snprintf(err, errlen, "%s is empty", what);
    else if (len > max_len)
        snprintf(err, errlen,
                 "%s is %zu bytes, longer than input.max.string.length (%zu)", what,
                 len, max_len);
    else if (memchr(json_string_value(j), '\0', len) != NULL)
        snprintf(err, errlen, "%s holds a NUL byte", what);
    else
        return 0;
    return -1;
}

/* Refuses a field an object does not know: a misspelt "hostUUID" would
 * otherwise leave the VM unplaced without a word. */
static int import_fields(json_t *o, const char *const *known, const char *where,
                         char *err, size_t errlen)
{
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val)
    {
        size_t i = 0;
        while (known[i] != NULL && strcmp(known[i], key) != 0)
            i++;
        if (known[i] == NULL) {
            snprintf(err, errlen, "%s%sunknown field '%.64s'", where ? where : "",
                     where ? ": " : "", key);
            return -1;
        }
    }
    return 0;
}

static int device_ref_cmp(const void *a, const void *b)
{
    return strcmp(((const pg_device_ref_t *)a)->device_uuid,
                  ((const pg_device_ref_t *)b)->device_uuid);
}

/* One JSON line of `import` into a binding, strings in the arena, checked
 * as the worker will read the entry it becomes: refused unless valid. */
static int import_line(const char *line, size_t len, const pg_config_t *c,
                       pg_arena_t *arena, const char **vm, pg_vm_binding_t *vb,
                       char *err, size_t errlen)
{
    static const char *const vm_fields[] = {"vmUuid", "hostUuid", "pin", "devices",
                                            NULL};
    static const char *const dev_fields[] = {"deviceUuid", "kind", NULL};
    const size_t max_len = (size_t)c->max_string_length;
    const size_t max_devices = (size_t)c->redis_max_devices_per_vm;
    json_error_t jerr;
    int rc = -1;
    json_t *o = json_loadb(line, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
    if (o == NULL || !json_is_object(o)) {
        snprintf(err, errlen, "not a JSON object (%s)", o ? "wrong type" : jerr.text);
        goto out;
    }
    if (import_fields(o, vm_fields, NULL, err, errlen) != 0)
        goto out;
    json_t *jvm = json_object_get(o, "vmUuid"), *jhost = json_object_get(o, "hostUuid"),
           *jpin = json_object_get(o, "pin"), *jdevs = json_object_get(o, "devices");
    if (jvm == NULL) {
        snprintf(err, errlen, "missing vmUuid");
        goto out;
    }
    if (import_string(jvm, "vmUuid", false, max_len, err, errlen) != 0 ||
        (!json_is_null(jhost) && jhost != NULL &&
         import_string(jhost, "hostUuid", false, max_len, err, errlen) != 0) ||
        (!json_is_null(jpin) && jpin != NULL &&
         import_string(jpin, "pin", true, max_len, err, errlen) != 0))
        goto out;
    if (jdevs != NULL && !json_is_null(jdevs) && !json_is_array(jdevs)) {
        snprintf(err, errlen, "devices must be an array");
        goto out;
    }
    size_t nd = json_array_size(jdevs); /* 0 for NULL or null */
    if (nd > max_devices) {
        snprintf(err, errlen, "%zu devices, more than redis.max.devices.per.vm (%zu)",
                 nd, max_devices);
        goto out;
    }
    memset(vb, 0, sizeof(*vb));
    *vm = pg_arena_strdup(arena, json_string_value(jvm));
    vb->host =
        json_is_string(jhost) ? pg_arena_strdup(arena, json_string_value(jhost)) : NULL;
    vb->known = vb->host != NULL;
    vb->pin =
        json_is_string(jpin) ? pg_arena_strdup(arena, json_string_value(jpin)) : NULL;
    pg_device_ref_t *d = pg_arena_calloc(arena, nd + 1, sizeof(*d));
    pg_raw_device_t *rd = pg_arena_calloc(arena, nd + 1, sizeof(*rd));
    if (*vm == NULL || d == NULL || rd == NULL ||
        (json_is_string(jhost) && !vb->host) || (json_is_string(jpin) && !vb->pin)) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nd; i++) {
        char where[64];
        json_t *e = json_array_get(jdevs, i);
        snprintf(where, sizeof(where), "devices[%zu]", i);
        if (!json_is_object(e)) {
            snprintf(err, errlen, "%s must be an object", where);
            goto out;
        }
        if (import_fields(e, dev_fields, where, err, errlen) != 0)
            goto out;
        json_t *du = json_object_get(e, "deviceUuid"), *dk = json_object_get(e, "kind");
        if (du == NULL || dk == NULL) {
            snprintf(err, errlen, "%s: missing %s", where,
                     du == NULL ? "deviceUuid" : "kind");
            goto out;
        }
        char what[80];
        snprintf(what, sizeof(what), "%s.deviceUuid", where);
        if (import_string(du, what, false, max_len, err, errlen) != 0)
            goto out;
        snprintf(what, sizeof(what), "%s.kind", where);
        if (import_string(dk, what, false, max_len, err, errlen) != 0)
            goto out;
        d[i].device_uuid = pg_arena_strdup(arena, json_string_value(du));
        d[i].kind = pg_arena_strdup(arena, json_string_value(dk));
        if (d[i].device_uuid == NULL || d[i].kind == NULL) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        rd[i].uuid = (pg_bytes_t){d[i].device_uuid, strlen(d[i].device_uuid)};
        rd[i].kind = (pg_bytes_t){d[i].kind, strlen(d[i].kind)};
    }
    /* A uuid twice would leave one of its kinds to chance in the hash. */
    if (nd > 1)
        qsort(d, nd, sizeof(*d), device_ref_cmp);
    for (size_t i = 1; i < nd; i++) {
        if (strcmp(d[i - 1].device_uuid, d[i].device_uuid) == 0) {
            snprintf(err, errlen, "device %.128s is listed twice", d[i].device_uuid);
            goto out;
        }
    }
    /* Last, the worker's own rule on the entry this line becomes. */
    pg_vm_raw_t raw = {.has_host = vb->host != NULL,
                       .has_pin = vb->pin != NULL,
                       .n_devices = nd,
                       .devices = nd > 0 ? rd : NULL};
    snprintf(raw.host_type, sizeof(raw.host_type), "%s", vb->host ? "string" : "none");
    snprintf(raw.pin_type, sizeof(raw.pin_type), "%s", vb->pin ? "string" : "none");
    snprintf(raw.devices_type, sizeof(raw.devices_type), "%s", nd ? "hash" : "none");
    if (vb->host != NULL)
        raw.host = (pg_bytes_t){vb->host, strlen(vb->host)};
    if (vb->pin != NULL)
        raw.pin = (pg_bytes_t){vb->pin, strlen(vb->pin)};
    const pg_bindings_limits_t lim = pg_bindings_limits(c);
    char why[256];
    if (!pg_bindings_check(&raw, &lim, why, sizeof(why))) {
        snprintf(err, errlen, "the entry would be malformed: %s", why);
        goto out;
    }
    vb->devices = d;
    vb->n_devices = nd;
    rc = 0;
out:
    json_decref(o);
    return rc;
}

/* On a terminal, one status line rewritten in place (an empty text clears
 * it); nothing otherwise. */
void pg_cli_progress(bool tty, const char *text)
{
    if (!tty)
        return;
    fprintf(stderr, "\r%-78.78s\r", text);
    fflush(stderr);
}

bool pg_cli_blank(const char *line, size_t len)
{
    return strspn(line, " \t\r\n") >= len;
}

/* The first pass's count, and what it checks a line with. */
typedef struct {
    const pg_config_t *c;
    pg_arena_t *arena;
    size_t vms, devices, pins;
} import_count_t;

static int import_check(void *ctx, const char *line, size_t len, char *err,
                        size_t errlen)
{
    import_count_t *n = ctx;
    const char *vm;
    pg_vm_binding_t vb;
    pg_arena_reset(n->arena);
    if (import_line(line, len, n->c, n->arena, &vm, &vb, err, errlen) != 0)
        return PG_INPUT;
    n->vms++;
    n->devices += vb.n_devices;
    n->pins += vb.pin != NULL;
    return PG_OK;
}

/* Two passes (cli_lines.c): a bad line anywhere leaves the cache as it was;
 * the second pass stores the VMs in pipelined chunks (each VM's entry
 * replaced atomically). */
static int cmd_import(const pg_cli_args_t *a, const pg_config_t *c)
{
    enum { CHUNK = 5000 };
    char err[512];
    int rc = PG_EXIT_RUNTIME;
    size_t written = 0; /* VMs stored so far */
    pg_bindings_t *b = NULL;
    const char **vms = NULL;
    pg_vm_binding_t *vbs = NULL;
    pg_cli_lines_t in = {0};
    if (a->n_pos != 2)
        return pg_cli_usage_error("%s", "usage: pinguard import FILE|-");
    if (pg_cli_actor(a) == NULL)
        return pg_cli_usage_error("%s", "--actor needs a non-empty UTF-8 name of at "
                                        "most 256 bytes");
    if (pg_cli_lines_open(&in, "import", a->pos[1]) != PG_OK)
        return PG_EXIT_RUNTIME;
    const char *name = in.name;
    import_count_t n = {.c = c, .arena = pg_arena_new(1 << 20)};
    pg_arena_t *arena = n.arena;
    if (arena == NULL)
        goto oom;
    if (pg_cli_lines_check(&in, import_check, &n, "imported") != PG_OK)
        goto out;
    b = pg_cli_open_bindings(c);
    vms = calloc(CHUNK, sizeof(*vms));
    vbs = calloc(CHUNK, sizeof(*vbs));
    if (b == NULL || vms == NULL || vbs == NULL)
        goto oom;
    pg_arena_reset(arena);
    size_t k = 0;
    for (;;) {
        const char *line;
        size_t len;
        int got = pg_cli_lines_next(&in, &line, &len);
        if (got == PG_FATAL) {
            pg_cli_progress(in.tty, "");
            fprintf(stderr,
                    "pinguard: import %s: read error: %s (%zu VMs were written)\n",
                    name, strerror(errno), written);
            goto out;
        }
        if (got == 1) {
            if (import_line(line, len, c, arena, &vms[k], &vbs[k], err, sizeof(err)) !=
                0) {
                pg_cli_progress(in.tty, "");
                fprintf(stderr,
                        "pinguard: import %s:%zu: %s (the file changed while being "
                        "imported; %zu VMs were written)\n",
                        name, in.lineno, err, written);
                goto out;
            }
            k++;
        }
        if (k == CHUNK || (got == 0 && k > 0)) {
            if (pg_bindings_store(b, vms, vbs, k, err, sizeof(err)) != 0) {
                pg_cli_progress(in.tty, "");
                fprintf(stderr, "pinguard: import: %s (%zu of %zu VMs were written)\n",
                        err, written, n.vms);
                goto out;
            }
            written += k;
            k = 0;
            pg_arena_reset(arena);
            if (in.tty) {
                char text[96];
                snprintf(text, sizeof(text), "pinguard: import: %zu of %zu VMs written",
                         written, n.vms);
                pg_cli_progress(in.tty, text);
            }
        }
        if (got == 0)
            break;
    }
    pg_cli_progress(in.tty, "");
    printf("imported %zu VMs (%zu devices, %zu pins) from %s\n", written, n.devices,
           n.pins, name);
    rc = PG_EXIT_OK;
    goto out;
oom:
    fprintf(stderr, "pinguard: import: out of memory\n");
out:
    free(vms);
    free(vbs);
    pg_arena_destroy(arena);
    pg_bindings_destroy(b);
    pg_cli_lines_close(&in);
    /* What was written is audited, a run stopped part-way included. */
    if (written > 0) {
        char detail[PG_MAX_STRING + 256], done[PG_MAX_STRING + 256];
        if (rc == PG_EXIT_OK) {
            text_of(detail, sizeof(detail),
                    "imported %zu VMs (%zu devices, %zu pins) from %s", written,
                    n.devices, n.pins, name);
            text_of(done, sizeof(done), "%zu VMs were imported from %s", written, name);
        } else {
            text_of(detail, sizeof(detail),
                    "import from %s stopped: %zu of %zu VMs written", name, written,
                    n.vms);
            text_of(done, sizeof(done), "%zu of %zu VMs were imported from %s", written,
                    n.vms, name);
        }
        int arc = pg_cli_audit_edit(a, c, PG_AUDIT_IMPORT, NULL, detail, done);
        if (rc == PG_EXIT_OK)
            rc = arc;
    }
    return rc;
}

static int read_all(FILE *f, pg_buf_t *buf)
{
    uint8_t chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (pg_buf_append(buf, chunk, n) != 0)
            return -1;
    return ferror(f) ? -1 : 0;
}

/* The limits the worker decodes its input with. */
pg_codec_limits_t pg_cli_codec_limits(const pg_config_t *c)
{
    return (pg_codec_limits_t){.max_string = (size_t)c->max_string_length,
                               .max_items = (size_t)c->advice_max_migrations};
}

static int decode_one(const pg_codec_t *codec, int version,
                      const pg_codec_limits_t *lim, const uint8_t *p, size_t n)
{
    char err[512], *json = NULL;
    int rc = pg_codec_to_json(codec, version, p, n, lim, &json, NULL, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "pinguard: avro decode: %s: %s\n", pg_codec_err_name(rc), err);
        return -1;
    }
    printf("%s\n", json);
    free(json);
    return 0;
}

static int cmd_avro(const pg_cli_args_t *a, const pg_config_t *c)
{
    char err[512];
    int rc = PG_EXIT_RUNTIME;
    FILE *f = NULL;
    pg_buf_t in = {0}, out = {0};
    const pg_codec_limits_t lim = pg_cli_codec_limits(c);
    if (a->n_pos < 2)
        return pg_cli_usage_error("%s",
                                  "usage: pinguard avro encode|decode|fingerprint ...");
    const char *sub = a->pos[1];
    pg_record_type_t type = PG_REC_COUNT;
    if (a->type != NULL && pg_record_type_from_name(a->type, &type) != 0)
        return pg_cli_usage_error("unknown record type %s", a->type);
    if (strcmp(sub, "encode") == 0 && a->type == NULL)
        return pg_cli_usage_error("%s", "avro encode needs --type");
    if (strcmp(sub, "encode") != 0 && strcmp(sub, "decode") != 0 &&
        strcmp(sub, "fingerprint") != 0)
        return pg_cli_usage_error("unknown avro command %s", sub);
    if (a->n_pos > 3)
        return pg_cli_usage_error("%s", "avro takes at most one FILE");
    int version = PG_CODEC_VERSION;
    if (a->schema_version != NULL) {
        char *end;
        long v = strtol(a->schema_version, &end, 10);
        if (end == a->schema_version || *end != '\0' || v < 1 || v > PG_CODEC_VERSION)
            return pg_cli_usage_error("--schema-version must be 1 to %d",
                                      PG_CODEC_VERSION);
        version = (int)v;
    }

    pg_codec_t *codec = pg_codec_new(err, sizeof(err));
    if (codec == NULL) {
        fprintf(stderr, "pinguard: %s\n", err);
        return PG_EXIT_RUNTIME;
    }
    if (strcmp(sub, "fingerprint") == 0) {
        /* Every version unless one is named: consumers pin all of them. */
        for (int v = 1; v <= PG_CODEC_VERSION; v++) {
            if (a->schema_version != NULL && v != version)
                continue;
            for (int t = 0; t < PG_REC_COUNT; t++) {
                const char *pcf =
                    pg_codec_canonical_form(codec, v, (pg_record_type_t)t);
                if ((a->type != NULL && (pg_record_type_t)t != type) || pcf == NULL)
                    continue;
                printf("%d %-22s %016llx %s\n", v,
                       pg_record_type_name((pg_record_type_t)t),
                       (unsigned long long)pg_codec_fingerprint(codec, v,
                                                                (pg_record_type_t)t),
                       pcf);
            }
        }
        rc = PG_EXIT_OK;
        goto out;
    }
    f = a->n_pos == 3 && strcmp(a->pos[2], "-") != 0 ? fopen(a->pos[2], "rb") : stdin;
    if (f == NULL) {
        fprintf(stderr, "pinguard: avro %s %s: %s\n", sub, a->pos[2], strerror(errno));
        goto out;
    }
    if (read_all(f, &in) != 0) {
        fprintf(stderr, "pinguard: avro %s: cannot read the input\n", sub);
        goto out;
    }
    if (strcmp(sub, "encode") == 0) {
        int erc = pg_codec_from_json(codec, version, type, (const char *)in.data,
                                     in.len, &out, err, sizeof(err));
        /* Bytes the worker would dead-letter are refused with the worker's
         * reason: read them back exactly as it does, with its limits. */
        if (erc == 0) {
            pg_arena_t *arena = pg_arena_new(1 << 16);
            pg_record_t rec;
            erc = arena == NULL ? PG_CODEC_ENOMEM
                                : pg_codec_decode(codec, out.data, out.len, &lim, arena,
                                                  &rec, err, sizeof(err));
            if (arena == NULL)
                snprintf(err, sizeof(err), "out of memory");
            pg_arena_destroy(arena);
        }
        if (erc != 0) {
            fprintf(stderr, "pinguard: avro encode: %s: %s\n", pg_codec_err_name(erc),
                    err);
            goto out;
        }
        if (fwrite(out.data, 1, out.len, stdout) != out.len || fflush(stdout) != 0) {
            fprintf(stderr, "pinguard: avro encode: cannot write the output\n");
            goto out;
        }
        rc = PG_EXIT_OK;
        goto out;
    }
    if (!a->framed) {
        rc = decode_one(codec, version, &lim, in.data, in.len) == 0 ? PG_EXIT_OK
                                                                    : PG_EXIT_RUNTIME;
        goto out;
    }
    rc = PG_EXIT_OK;
    for (size_t off = 0; off < in.len;) {
        if (in.len - off < 4) {
            fprintf(stderr, "pinguard: avro decode: truncated frame header\n");
            rc = PG_EXIT_RUNTIME;
            break;
        }
        int32_t n =
            (int32_t)((uint32_t)in.data[off] << 24 | (uint32_t)in.data[off + 1] << 16 |
                      (uint32_t)in.data[off + 2] << 8 | in.data[off + 3]);
        off += 4;
        if (n < 0) { /* a null payload (tombstone) */
            printf("null\n");
            continue;
        }
        if ((size_t)n > in.len - off) {
            fprintf(stderr, "pinguard: avro decode: frame of %d bytes past the end\n",
                    n);
            rc = PG_EXIT_RUNTIME;
            break;
        }
        if (decode_one(codec, version, &lim, in.data + off, (size_t)n) != 0)
            rc = PG_EXIT_RUNTIME;
        off += (size_t)n;
    }
out:
    if (f != NULL && f != stdin)
        fclose(f);
    pg_buf_free(&in);
    pg_buf_free(&out);
    pg_codec_destroy(codec);
    return rc;
}

static int cmd_lag(const pg_cli_args_t *a, const pg_config_t *c)
{
    char err[512];
    pg_lag_row_t *rows = NULL;
    size_t n = 0;
    if (a->n_pos != 1)
        return pg_cli_usage_error("%s", "usage: pinguard lag [--json]");
    pg_kafka_t *k = pg_kafka_new_inspector(c, err, sizeof(err));
    if (k == NULL || pg_kafka_lag(k, true, &rows, &n, err, sizeof(err)) != 0) {
        fprintf(stderr, "pinguard: lag: %s\n", err);
        pg_kafka_destroy(k);
        return PG_EXIT_RUNTIME;
    }
    const char *group = pg_config_kafka_get(c, "group.id");
    long long total = 0;
    if (a->json) {
        json_t *parts = json_array();
        for (size_t i = 0; i < n; i++) {
            total += rows[i].lag;
            json_array_append_new(parts, json_pack("{s:s, s:i, s:o, s:I, s:I}", "topic",
                                                   rows[i].topic, "partition",
                                                   (int)rows[i].partition, "committed",
                                                   rows[i].committed >= 0
                                                       ? json_integer(rows[i].committed)
                                                       : json_null(),
                                                   "high", (json_int_t)rows[i].high,
                                                   "lag", (json_int_t)rows[i].lag));
        }
        json_t *o = json_pack("{s:s, s:o, s:I}", "group", group, "partitions", parts,
                              "totalLag", (json_int_t)total);
        char *s = json_dumps(o, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        printf("group %s\n%-32s %9s %12s %12s %10s\n", group, "TOPIC", "PARTITION",
               "COMMITTED", "HIGH", "LAG");
        for (size_t i = 0; i < n; i++) {
            char committed[24] = "-";
            if (rows[i].committed >= 0)
                snprintf(committed, sizeof(committed), "%lld",
                         (long long)rows[i].committed);
            printf("%-32s %9d %12s %12lld %10lld\n", rows[i].topic,
                   (int)rows[i].partition, committed, (long long)rows[i].high,
                   (long long)rows[i].lag);
            total += rows[i].lag;
        }
        printf("total lag %lld\n", total);
    }
    free(rows);
    pg_kafka_destroy(k);
    return PG_EXIT_OK;
}

static int cmd_config(const pg_cli_args_t *a, const pg_config_t *c)
{
    if (a->n_pos == 2 && strcmp(a->pos[1], "reference") == 0) {
        pg_config_print_reference(stdout);
        return PG_EXIT_OK;
    }
    if (a->n_pos == 2 && strcmp(a->pos[1], "show") == 0) {
        pg_config_print(c, stdout);
        return PG_EXIT_OK;
    }
    return pg_cli_usage_error("%s", "usage: pinguard config reference|show");
}

int pg_cli_main(int argc, char **argv, char *const *envp, volatile sig_atomic_t *stop)
{
    pg_cli_args_t a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc != PG_EXIT_OK)
        return rc;
    if (a.version) {
        printf("pinguard %s\n", PINGUARD_VERSION);
        return PG_EXIT_OK;
    }
    if (a.help || a.n_pos == 0) {
        fputs(usage_text, a.help ? stdout : stderr);
        return a.help ? PG_EXIT_OK : PG_EXIT_USAGE;
    }
    const char *cmd = a.pos[0];
    static const char *const known[] = {"run",     "sync",         "explain", "bind",
                                        "unbind",  "place",        "pin",     "unpin",
                                        "import",  "unquarantine", "audit",   "impact",
                                        "publish", "config",       "lag",     "avro"};
    /* The operator edits: each is audited. */
    static const char *const edits[] = {"bind",  "unbind", "place",       "pin",
                                        "unpin", "import", "unquarantine"};
    bool ok = false, edit = false;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        ok |= strcmp(cmd, known[i]) == 0;
    for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++)
        edit |= strcmp(cmd, edits[i]) == 0;
    if (!ok)
        return pg_cli_usage_error("unknown command %s", cmd);
    if (a.for_duration != NULL && strcmp(cmd, "pin") != 0)
        return pg_cli_usage_error("%s", "--for goes with pin only");
    if (a.since != NULL && strcmp(cmd, "audit") != 0)
        return pg_cli_usage_error("%s", "--since goes with audit only");
    if (a.actor != NULL && !edit)
        return pg_cli_usage_error("--actor goes with the edits (bind, unbind, place, "
                                  "pin, unpin, import, unquarantine), not %s",
                                  cmd);
    a.envp = envp;

    pg_config_t *c = load_config(&a, envp, &rc);
    if (c == NULL)
        return rc;
    if (strcmp(cmd, "run") == 0)
        rc = cmd_run(&a, c, stop);
    else if (strcmp(cmd, "sync") == 0)
        rc = cmd_sync(&a, c, stop);
    else if (strcmp(cmd, "impact") == 0)
        rc = pg_cli_impact(&a, c);
    else if (strcmp(cmd, "publish") == 0)
        rc = pg_cli_publish(&a, c);
    else if (strcmp(cmd, "explain") == 0)
        rc = cmd_explain(&a, c);
    else if (strcmp(cmd, "import") == 0)
        rc = cmd_import(&a, c);
    else if (strcmp(cmd, "audit") == 0)
        rc = pg_cli_audit(&a, c);
    else if (strcmp(cmd, "config") == 0)
        rc = cmd_config(&a, c);
    else if (strcmp(cmd, "lag") == 0)
        rc = cmd_lag(&a, c);
    else if (strcmp(cmd, "avro") == 0)
        rc = cmd_avro(&a, c);
    else
        rc = cmd_edit(&a, c);
    pg_config_destroy(c);
    return rc;
}

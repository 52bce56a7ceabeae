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
    "  explain VM [--json]          is the VM host-bound, and which devices pin it;\n"
    "                               shows the cache entry as stored and whether it\n"
    "                               is valid (a malformed entry is an unknown VM); a\n"
    "                               value holding bytes that are not UTF-8, or NUL,\n"
    "                               shows them, and any \\, as \\xNN\n"
    "  bind VM DEVICE KIND          bind a device (pci, dgpu, mdev, usb, pci+vf,\n"
    "                               pci+vf2, pci+vdpa) to a VM\n"
    "  unbind VM DEVICE             remove a device binding\n"
    "  place VM HOST                record the host the VM runs on\n"
    "  pin VM REASON...             pin the VM to its host (operator pin)\n"
    "  unpin VM                     remove the operator pin\n"
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
    "  --json                       with explain, impact and lag: JSON output\n"
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

static int parse_args(int argc, char **argv, pg_cli_args_t *a)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        bool needs_value = strcmp(s, "--config") == 0 || strcmp(s, "--set") == 0 ||
                           strcmp(s, "-X") == 0 || strcmp(s, "--type") == 0 ||
                           strcmp(s, "--schema-version") == 0;
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
    const pg_bindings_opts_t o = pg_bindings_opts(c);
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
    /* As the worker decides advice, and a request without minGeneration. */
    pg_policy_judge(&po, &vb, NULL, pinning, &v);
    bool bound = v.verdict == PG_VERDICT_VETOED;

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
            /* An escaped kind is no kind policy knows: it pins. */
            pg_device_kind_t kind = pg_policy_kind_parse(k);
            json_array_append_new(devs,
                                  json_pack("{s:s, s:s, s:b}", "deviceUuid", u, "kind",
                                            k, "pins", pg_policy_kind_pins(kind)));
        }
        for (size_t i = 0; i < v.n_devices; i++)
            json_array_append_new(pins, json_pack("{s:s, s:s}", "deviceUuid",
                                                  pinning[i].device_uuid, "kind",
                                                  pinning[i].kind));
        json_t *o =
            json_pack("{s:s, s:b, s:o, s:{s:s, s:s, s:s, s:s}, s:b, s:o, s:o, s:o, "
                      "s:b, s:s, s:o, s:o, s:I, s:o}",
                      "vmUuid", vm, "valid", valid, "invalidReason",
                      valid ? json_null() : json_string(why), "keyTypes", "host",
                      raw.host_type, "pin", raw.pin_type, "devices", raw.devices_type,
                      "generation", raw.generation_type, "known", vb.known, "host",
                      json_bytes(raw.has_host, raw.host, arena), "pin",
                      json_bytes(raw.has_pin, raw.pin, arena), "generation",
                      json_generation(&raw, arena), "hostBound", bound, "verdict",
                      pg_verdict_name(v.verdict), "reason",
                      bound ? json_string(pg_veto_reason_name(v.reason)) : json_null(),
                      "pinningDevices", pins, "deviceCount", (json_int_t)raw.n_devices,
                      "devices", devs);
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
        printf("vm %s: %s", vm,
               bound ? "HOST-BOUND, migration is vetoed" : "migratable");
        if (bound)
            printf(" (%s)", pg_veto_reason_name(v.reason));
        printf("\n");
        if (!valid)
            printf("  cache entry: MALFORMED (%s): decided as an unknown VM\n", why);
        printf("  host: %s\n", host != NULL ? host
                               : valid      ? "(not in the cache: unknown VM)"
                                            : "(none)");
        printf("  operator pin: %s\n",
               pin ? (pin[0] ? pin : "(no reason given)") : "none");
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
            pg_device_kind_t kind = pg_policy_kind_parse(k);
            printf("    %-38s %-9s %s\n", u, k,
                   kind == PG_KIND_UNKNOWN     ? "PINS (unknown kind, fail closed)"
                   : pg_policy_kind_pins(kind) ? "PINS"
                                               : "migrates");
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

static int cmd_edit(const pg_cli_args_t *a, const pg_config_t *c)
{
    char err[512] = "";
    const char *cmd = a->pos[0];
    int rc;
    static const struct {
        const char *name;
        size_t min, max;
        const char *usage;
    } shapes[] = {{"bind", 4, 4, "bind VM DEVICE KIND"},
                  {"unbind", 3, 3, "unbind VM DEVICE"},
                  {"place", 3, 3, "place VM HOST"},
                  {"pin", 3, 16, "pin VM REASON..."},
                  {"unpin", 2, 2, "unpin VM"}};
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        if (strcmp(cmd, shapes[i].name) == 0 &&
            (a->n_pos < shapes[i].min || a->n_pos > shapes[i].max))
            return pg_cli_usage_error("usage: pinguard %s", shapes[i].usage);

    pg_bindings_t *b = pg_cli_open_bindings(c);
    if (b == NULL)
        return PG_EXIT_RUNTIME;
    const char *vm = a->pos[1];
    if (strcmp(cmd, "bind") == 0) {
        rc = pg_bindings_bind(b, vm, a->pos[2], a->pos[3], err, sizeof(err));
        if (rc == 0 && pg_policy_kind_parse(a->pos[3]) == PG_KIND_UNKNOWN)
            fprintf(stderr, "pinguard: warning: kind '%s' is unknown and pins the VM\n",
                    a->pos[3]);
    } else if (strcmp(cmd, "unbind") == 0) {
        bool removed = false;
        rc = pg_bindings_unbind(b, vm, a->pos[2], &removed, err, sizeof(err));
        if (rc == 0 && !removed)
            fprintf(stderr, "pinguard: device %s was not bound to vm %s\n", a->pos[2],
                    vm);
    } else if (strcmp(cmd, "place") == 0) {
        rc = pg_bindings_place(b, vm, a->pos[2], err, sizeof(err));
    } else if (strcmp(cmd, "pin") == 0) {
        char reason[1024] = "";
        size_t len = 0;
        for (size_t i = 2; i < a->n_pos; i++)
            len += (size_t)snprintf(reason + len,
                                    len < sizeof(reason) ? sizeof(reason) - len : 0,
                                    "%s%s", i > 2 ? " " : "", a->pos[i]);
        rc = pg_bindings_pin(b, vm, reason, err, sizeof(err));
    } else {
        rc = pg_bindings_unpin(b, vm, err, sizeof(err));
    }
    pg_bindings_destroy(b);
    if (rc == PG_INPUT)
        return pg_cli_usage_error("%s", err);
    if (rc != 0) {
        fprintf(stderr, "pinguard: %s %s: %s\n", cmd, vm, err);
        return PG_EXIT_RUNTIME;
    }
    return PG_EXIT_OK;
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

typedef struct {
    size_t lines, vms, devices, pins;
} import_count_t;

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

/* Two passes: the first checks every line and writes nothing, so that a bad
 * line anywhere leaves the cache as it was; the second stores the VMs in
 * pipelined chunks (each VM's entry replaced atomically). Input that cannot
 * be read twice (a pipe) is kept in a temporary file by the first pass. */
static int cmd_import(const pg_cli_args_t *a, const pg_config_t *c)
{
    enum { CHUNK = 5000, MAX_REPORTED = 10 };
    char err[512];
    int rc = PG_EXIT_RUNTIME;
    char *line = NULL;
    size_t cap = 0, bad = 0, first_bad = 0;
    import_count_t n = {0};
    pg_bindings_t *b = NULL;
    const char **vms = NULL;
    pg_vm_binding_t *vbs = NULL;
    FILE *spool = NULL;
    if (a->n_pos != 2)
        return pg_cli_usage_error("%s", "usage: pinguard import FILE|-");
    const char *name = strcmp(a->pos[1], "-") == 0 ? "stdin" : a->pos[1];
    FILE *f = strcmp(a->pos[1], "-") == 0 ? stdin : fopen(a->pos[1], "r");
    if (f == NULL) {
        fprintf(stderr, "pinguard: import %s: %s\n", name, strerror(errno));
        return PG_EXIT_RUNTIME;
    }
    const bool tty = isatty(fileno(stderr));
    pg_arena_t *arena = pg_arena_new(1 << 20);
    if (arena == NULL)
        goto oom;
    /* Where the input starts: stdin may come positioned inside a file. */
    const off_t start = ftello(f);
    if (start < 0 && (spool = tmpfile()) == NULL) {
        fprintf(stderr, "pinguard: import: cannot create a temporary file: %s\n",
                strerror(errno));
        goto out;
    }

    for (;;) {
        ssize_t len = getline(&line, &cap, f);
        if (len < 0)
            break;
        n.lines++;
        if (spool != NULL && fwrite(line, 1, (size_t)len, spool) != (size_t)len) {
            fprintf(stderr, "pinguard: import: cannot write the temporary file\n");
            goto out;
        }
        if (tty && n.lines % 4096 == 0) {
            char text[96];
            snprintf(text, sizeof(text), "pinguard: import: %zu lines checked",
                     n.lines);
            pg_cli_progress(tty, text);
        }
        if (pg_cli_blank(line, (size_t)len))
            continue;
        const char *vm;
        pg_vm_binding_t vb;
        pg_arena_reset(arena);
        if (import_line(line, (size_t)len, c, arena, &vm, &vb, err, sizeof(err)) != 0) {
            if (bad++ == 0)
                first_bad = n.lines;
            if (bad <= MAX_REPORTED) {
                pg_cli_progress(tty, "");
                fprintf(stderr, "pinguard: import %s:%zu: %s\n", name, n.lines, err);
            }
            continue;
        }
        n.vms++;
        n.devices += vb.n_devices;
        n.pins += vb.pin != NULL;
    }
    if (ferror(f)) {
        fprintf(stderr, "pinguard: import %s: read error: %s\n", name, strerror(errno));
        goto out;
    }
    if (bad > 0) {
        pg_cli_progress(tty, "");
        fprintf(stderr,
                "pinguard: import %s: %zu invalid line%s (the first is line %zu); "
                "nothing was imported\n",
                name, bad, bad == 1 ? "" : "s", first_bad);
        goto out;
    }

    FILE *in = spool != NULL ? spool : f;
    if (fseeko(in, spool != NULL ? 0 : start, SEEK_SET) != 0) {
        fprintf(stderr, "pinguard: import %s: cannot read it again: %s\n", name,
                strerror(errno));
        goto out;
    }
    b = pg_cli_open_bindings(c);
    vms = calloc(CHUNK, sizeof(*vms));
    vbs = calloc(CHUNK, sizeof(*vbs));
    if (b == NULL || vms == NULL || vbs == NULL)
        goto oom;
    pg_arena_reset(arena);
    size_t k = 0, written = 0, lineno = 0;
    for (;;) {
        ssize_t len = getline(&line, &cap, in);
        bool eof = len < 0;
        if (!eof) {
            lineno++;
            if (pg_cli_blank(line, (size_t)len))
                continue;
            if (import_line(line, (size_t)len, c, arena, &vms[k], &vbs[k], err,
                            sizeof(err)) != 0) {
                pg_cli_progress(tty, "");
                fprintf(stderr,
                        "pinguard: import %s:%zu: %s (the file changed while being "
                        "imported; %zu VMs were written)\n",
                        name, lineno, err, written);
                goto out;
            }
            k++;
        }
        if (k == CHUNK || (eof && k > 0)) {
            if (pg_bindings_store(b, vms, vbs, k, err, sizeof(err)) != 0) {
                pg_cli_progress(tty, "");
                fprintf(stderr, "pinguard: import: %s (%zu of %zu VMs were written)\n",
                        err, written, n.vms);
                goto out;
            }
            written += k;
            k = 0;
            pg_arena_reset(arena);
            if (tty) {
                char text[96];
                snprintf(text, sizeof(text), "pinguard: import: %zu of %zu VMs written",
                         written, n.vms);
                pg_cli_progress(tty, text);
            }
        }
        if (eof)
            break;
    }
    pg_cli_progress(tty, "");
    printf("imported %zu VMs (%zu devices, %zu pins) from %s\n", written, n.devices,
           n.pins, name);
    rc = PG_EXIT_OK;
    goto out;
oom:
    fprintf(stderr, "pinguard: import: out of memory\n");
out:
    free(line);
    free(vms);
    free(vbs);
    pg_arena_destroy(arena);
    pg_bindings_destroy(b);
    if (spool != NULL)
        fclose(spool);
    if (f != stdin)
        fclose(f);
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
    static const char *const known[] = {
        "run",   "sync",   "explain", "bind",    "unbind", "place", "pin",
        "unpin", "import", "impact",  "publish", "config", "lag",   "avro"};
    bool ok = false;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        ok |= strcmp(cmd, known[i]) == 0;
    if (!ok)
        return pg_cli_usage_error("unknown command %s", cmd);

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

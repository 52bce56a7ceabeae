/*
 * Subcommands of the one `pinguard` binary. Each command parses its own
 * arguments, builds the configuration from defaults, file, environment and
 * flags, does its work through the modules, and returns an exit code. Usage
 * errors print the usage text and return 2; runtime errors print one line
 * naming what failed and return 1.
 */
#include "cli.h"

#include "bindings.h"
#include "codec.h"
#include "config.h"
#include "kafka.h"
#include "log.h"
#include "policy.h"
#include "worker.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: pinguard [options] <command> [args]\n"
    "\n"
    "Commands:\n"
    "  run                          consume, decide and produce (the worker)\n"
    "  explain VM [--json]          is the VM host-bound, and which devices pin it\n"
    "  bind VM DEVICE KIND          bind a device (pci, dgpu, mdev, usb, pci+vf,\n"
    "                               pci+vf2, pci+vdpa) to a VM\n"
    "  unbind VM DEVICE             remove a device binding\n"
    "  place VM HOST                record the host the VM runs on\n"
    "  pin VM REASON...             pin the VM to its host (operator pin)\n"
    "  unpin VM                     remove the operator pin\n"
    "  import FILE|-                load VMs from JSON lines, one pipelined pass:\n"
    "                               {\"vmUuid\":..,\"hostUuid\":..,\"pin\":..,\n"
    "                                \"devices\":[{\"deviceUuid\":..,\"kind\":..}]}\n"
    "  avro encode --type T [FILE]  JSON to single-object Avro on stdout\n"
    "  avro decode [--framed] [FILE]\n"
    "                               single-object Avro to JSON lines; --framed reads\n"
    "                               kcat -f '%R%s' frames (4-byte length + payload)\n"
    "  avro fingerprint [--type T]  print schema fingerprints and canonical forms\n"
    "  lag [--json]                 the group's lag per input partition\n"
    "  config reference             print the configuration reference (Markdown)\n"
    "  config show                  print the effective configuration, secrets hidden\n"
    "\n"
    "Options (before or after the command):\n"
    "  --config FILE                read settings from FILE (key = value lines)\n"
    "  --set KEY=VALUE              set one setting (repeatable)\n"
    "  -X PROP=VALUE                librdkafka property, same as --set "
    "kafka.PROP=VALUE\n"
    "  --check-config               with run: validate the settings, print them, exit\n"
    "  --json                       with explain and lag: JSON output\n"
    "  --type T, --framed           with avro: record type / framed input\n"
    "  -h, --help                   this text\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error.\n";

typedef struct {
    const char *config_file;
    const char *sets[64];
    char xbuf[64][512]; /* -X values, prefixed with "kafka." */
    size_t n_sets;
    bool check_config, json, framed, help;
    const char *type;
    const char *pos[16];
    size_t n_pos;
} args_t;

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "pinguard: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n\n%s", usage_text);
    va_end(ap);
    return PG_EXIT_USAGE;
}

static int parse_args(int argc, char **argv, args_t *a)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        bool needs_value = strcmp(s, "--config") == 0 || strcmp(s, "--set") == 0 ||
                           strcmp(s, "-X") == 0 || strcmp(s, "--type") == 0;
        if (needs_value && i + 1 >= argc)
            return usage_error("%s needs a value", s);
        if (strcmp(s, "--config") == 0) {
            a->config_file = argv[++i];
        } else if (strcmp(s, "--set") == 0 || strcmp(s, "-X") == 0) {
            if (a->n_sets == sizeof(a->sets) / sizeof(a->sets[0]))
                return usage_error("too many %s options", s);
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
        } else if (strcmp(s, "--check-config") == 0) {
            a->check_config = true;
        } else if (strcmp(s, "--json") == 0) {
            a->json = true;
        } else if (strcmp(s, "--framed") == 0) {
            a->framed = true;
        } else if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
            a->help = true;
        } else if (s[0] == '-' && s[1] != '\0') {
            return usage_error("unknown option %s", s);
        } else {
            if (a->n_pos == sizeof(a->pos) / sizeof(a->pos[0]))
                return usage_error("too many arguments (%s)", s);
            a->pos[a->n_pos++] = s;
        }
    }
    return PG_EXIT_OK;
}

/* Builds the configuration from every source; a failure is a usage error. */
static pg_config_t *load_config(const args_t *a, char *const *envp, int *exit_code)
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

static pg_bindings_t *open_bindings(const pg_config_t *c)
{
    const pg_bindings_opts_t o = {.host = c->redis_host,
                                  .port = c->redis_port,
                                  .db = c->redis_db,
                                  .user = c->redis_user,
                                  .password = c->redis_password,
                                  .connect_timeout_ms = c->redis_connect_timeout_ms,
                                  .timeout_ms = c->redis_timeout_ms};
    pg_bindings_t *b = pg_bindings_new(&o);
    if (b == NULL)
        fprintf(stderr, "pinguard: out of memory\n");
    return b;
}

static int cmd_run(const args_t *a, const pg_config_t *c, volatile sig_atomic_t *stop)
{
    char err[1024];
    if (a->n_pos != 1)
        return usage_error("run takes no arguments (got %s)", a->pos[1]);
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

static json_t *devices_json(const pg_device_ref_t *d, size_t n, bool with_pins)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o =
            json_pack("{s:s, s:s}", "deviceUuid", d[i].device_uuid, "kind", d[i].kind);
        if (with_pins)
            json_object_set_new(
                o, "pins",
                json_boolean(pg_policy_kind_pins(pg_policy_kind_parse(d[i].kind))));
        json_array_append_new(arr, o);
    }
    return arr;
}

static int cmd_explain(const args_t *a, const pg_config_t *c)
{
    char err[512];
    int rc = PG_EXIT_RUNTIME;
    if (a->n_pos != 2)
        return usage_error("%s", "explain needs exactly one VM uuid");
    const char *vm = a->pos[1];
    pg_bindings_t *b = open_bindings(c);
    pg_arena_t *arena = pg_arena_new(1 << 16);
    pg_vm_binding_t vb;
    if (b == NULL || arena == NULL)
        goto out;
    if (pg_bindings_lookup(b, &vm, 1, arena, &vb, err, sizeof(err)) != 0) {
        fprintf(stderr, "pinguard: explain %s: %s\n", vm, err);
        goto out;
    }
    pg_device_ref_t *all = pg_arena_calloc(arena, vb.n_devices + 1, sizeof(*all));
    pg_device_ref_t *pinning =
        pg_arena_calloc(arena, vb.n_devices + 1, sizeof(*pinning));
    if (all == NULL || pinning == NULL)
        goto out;
    /* A VM without devices has devices == NULL: memcpy(p, NULL, 0) is undefined. */
    if (vb.n_devices > 0)
        memcpy(all, vb.devices, vb.n_devices * sizeof(*all));
    pg_policy_sort_devices(all, vb.n_devices);
    const pg_policy_opts_t po = {.allow_unknown_vm = c->allow_unknown_vm};
    pg_policy_verdict_t v;
    pg_policy_judge(&po, &vb, pinning, &v);
    bool bound = v.verdict == PG_VERDICT_VETOED;

    if (a->json) {
        json_t *o = json_pack(
            "{s:s, s:b, s:o, s:o, s:b, s:s, s:o, s:o, s:o}", "vmUuid", vm, "known",
            vb.known, "host", vb.host ? json_string(vb.host) : json_null(), "pin",
            vb.pin ? json_string(vb.pin) : json_null(), "hostBound", bound, "verdict",
            pg_verdict_name(v.verdict), "reason",
            bound ? json_string(pg_veto_reason_name(v.reason)) : json_null(),
            "pinningDevices", devices_json(pinning, v.n_devices, false), "devices",
            devices_json(all, vb.n_devices, true));
        char *s = json_dumps(o, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        printf("vm %s: %s", vm,
               bound ? "HOST-BOUND, migration is vetoed" : "migratable");
        if (bound)
            printf(" (%s)", pg_veto_reason_name(v.reason));
        printf("\n  host: %s\n", vb.known ? vb.host : "(not in the cache: unknown VM)");
        printf("  operator pin: %s\n",
               vb.pin ? (vb.pin[0] ? vb.pin : "(no reason given)") : "none");
        printf("  devices: %zu\n", vb.n_devices);
        for (size_t i = 0; i < vb.n_devices; i++) {
            pg_device_kind_t k = pg_policy_kind_parse(all[i].kind);
            printf("    %-38s %-9s %s\n", all[i].device_uuid, all[i].kind,
                   k == PG_KIND_UNKNOWN     ? "PINS (unknown kind, fail closed)"
                   : pg_policy_kind_pins(k) ? "PINS"
                                            : "migrates");
        }
        if (bound && v.n_devices > 0) {
            printf("  pinned by:");
            for (size_t i = 0; i < v.n_devices; i++)
                printf(" %s(%s)", pinning[i].device_uuid, pinning[i].kind);
            printf("\n");
        }
    }
    rc = PG_EXIT_OK;
out:
    pg_arena_destroy(arena);
    pg_bindings_destroy(b);
    return rc;
}

static int cmd_edit(const args_t *a, const pg_config_t *c)
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
            return usage_error("usage: pinguard %s", shapes[i].usage);

    pg_bindings_t *b = open_bindings(c);
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
    if (rc == PG_BINDINGS_EUSAGE)
        return usage_error("%s", err);
    if (rc != 0) {
        fprintf(stderr, "pinguard: %s %s: %s\n", cmd, vm, err);
        return PG_EXIT_RUNTIME;
    }
    return PG_EXIT_OK;
}

/* One JSON line of `import` into a binding, strings in the arena. */
static int import_line(const char *line, pg_arena_t *arena, const char **vm,
                       pg_vm_binding_t *vb, char *err, size_t errlen)
{
    json_error_t jerr;
    int rc = -1;
    json_t *o = json_loads(line, 0, &jerr);
    if (o == NULL || !json_is_object(o)) {
        snprintf(err, errlen, "not a JSON object (%s)", o ? "wrong type" : jerr.text);
        goto out;
    }
    json_t *jvm = json_object_get(o, "vmUuid"), *jhost = json_object_get(o, "hostUuid"),
           *jpin = json_object_get(o, "pin"), *jdevs = json_object_get(o, "devices");
    if (!json_is_string(jvm) ||
        (jhost && !json_is_string(jhost) && !json_is_null(jhost)) ||
        (jpin && !json_is_string(jpin) && !json_is_null(jpin)) ||
        (jdevs && !json_is_array(jdevs))) {
        snprintf(err, errlen,
                 "needs vmUuid (string), optional hostUuid and pin (strings), "
                 "devices (array)");
        goto out;
    }
    memset(vb, 0, sizeof(*vb));
    *vm = pg_arena_strdup(arena, json_string_value(jvm));
    vb->host =
        json_is_string(jhost) ? pg_arena_strdup(arena, json_string_value(jhost)) : NULL;
    vb->known = vb->host != NULL;
    vb->pin =
        json_is_string(jpin) ? pg_arena_strdup(arena, json_string_value(jpin)) : NULL;
    size_t nd = jdevs ? json_array_size(jdevs) : 0;
    pg_device_ref_t *d = pg_arena_calloc(arena, nd + 1, sizeof(*d));
    if (*vm == NULL || d == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nd; i++) {
        json_t *e = json_array_get(jdevs, i);
        json_t *du = json_object_get(e, "deviceUuid"), *dk = json_object_get(e, "kind");
        if (!json_is_string(du) || !json_is_string(dk)) {
            snprintf(err, errlen, "devices[%zu] needs deviceUuid and kind strings", i);
            goto out;
        }
        d[i].device_uuid = pg_arena_strdup(arena, json_string_value(du));
        d[i].kind = pg_arena_strdup(arena, json_string_value(dk));
        if (d[i].device_uuid == NULL || d[i].kind == NULL) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    }
    vb->devices = d;
    vb->n_devices = nd;
    rc = 0;
out:
    json_decref(o);
    return rc;
}

static int cmd_import(const args_t *a, const pg_config_t *c)
{
    enum { CHUNK = 5000 };
    char err[512];
    int rc = PG_EXIT_RUNTIME;
    char *line = NULL;
    size_t cap = 0, n = 0, total = 0, lineno = 0;
    if (a->n_pos != 2)
        return usage_error("%s", "usage: pinguard import FILE|-");
    FILE *f = strcmp(a->pos[1], "-") == 0 ? stdin : fopen(a->pos[1], "r");
    if (f == NULL) {
        fprintf(stderr, "pinguard: import %s: %s\n", a->pos[1], strerror(errno));
        return PG_EXIT_RUNTIME;
    }
    pg_bindings_t *b = open_bindings(c);
    pg_arena_t *arena = pg_arena_new(1 << 20);
    const char **vms = calloc(CHUNK, sizeof(*vms));
    pg_vm_binding_t *vbs = calloc(CHUNK, sizeof(*vbs));
    if (b == NULL || arena == NULL || vms == NULL || vbs == NULL)
        goto out;
    for (;;) {
        ssize_t len = getline(&line, &cap, f);
        bool eof = len < 0;
        if (!eof) {
            lineno++;
            if (strspn(line, " \t\r\n") == (size_t)len)
                continue;
            if (import_line(line, arena, &vms[n], &vbs[n], err, sizeof(err)) != 0) {
                fprintf(stderr, "pinguard: import %s:%zu: %s\n", a->pos[1], lineno,
                        err);
                goto out;
            }
            n++;
        }
        if (n == CHUNK || (eof && n > 0)) {
            if (pg_bindings_store(b, vms, vbs, n, err, sizeof(err)) != 0) {
                fprintf(stderr, "pinguard: import: %s\n", err);
                goto out;
            }
            total += n;
            n = 0;
            pg_arena_reset(arena);
        }
        if (eof)
            break;
    }
    printf("imported %zu VMs\n", total);
    rc = PG_EXIT_OK;
out:
    free(line);
    free(vms);
    free(vbs);
    pg_arena_destroy(arena);
    pg_bindings_destroy(b);
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

static int decode_one(pg_codec_t *codec, const uint8_t *p, size_t n)
{
    char err[512], *json = NULL;
    const pg_codec_limits_t lim = PG_CODEC_LIMITS_DEFAULT;
    int rc = pg_codec_to_json(codec, p, n, &lim, &json, NULL, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "pinguard: avro decode: %s: %s\n", pg_codec_err_name(rc), err);
        return -1;
    }
    printf("%s\n", json);
    free(json);
    return 0;
}

static int cmd_avro(const args_t *a)
{
    char err[512];
    int rc = PG_EXIT_RUNTIME;
    FILE *f = NULL;
    pg_buf_t in = {0}, out = {0};
    if (a->n_pos < 2)
        return usage_error("%s", "usage: pinguard avro encode|decode|fingerprint ...");
    const char *sub = a->pos[1];
    pg_record_type_t type = PG_REC_COUNT;
    if (a->type != NULL && pg_record_type_from_name(a->type, &type) != 0)
        return usage_error("unknown record type %s", a->type);
    if (strcmp(sub, "encode") == 0 && a->type == NULL)
        return usage_error("%s", "avro encode needs --type");
    if (strcmp(sub, "encode") != 0 && strcmp(sub, "decode") != 0 &&
        strcmp(sub, "fingerprint") != 0)
        return usage_error("unknown avro command %s", sub);
    if (a->n_pos > 3)
        return usage_error("%s", "avro takes at most one FILE");

    pg_codec_t *codec = pg_codec_new(err, sizeof(err));
    if (codec == NULL) {
        fprintf(stderr, "pinguard: %s\n", err);
        return PG_EXIT_RUNTIME;
    }
    if (strcmp(sub, "fingerprint") == 0) {
        for (int t = 0; t < PG_REC_COUNT; t++) {
            if (a->type != NULL && (pg_record_type_t)t != type)
                continue;
            printf("%-22s %016llx %s\n", pg_record_type_name((pg_record_type_t)t),
                   (unsigned long long)pg_codec_fingerprint(codec, (pg_record_type_t)t),
                   pg_codec_canonical_form(codec, (pg_record_type_t)t));
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
        int erc = pg_codec_from_json(codec, type, (const char *)in.data, in.len, &out,
                                     err, sizeof(err));
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
        rc = decode_one(codec, in.data, in.len) == 0 ? PG_EXIT_OK : PG_EXIT_RUNTIME;
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
        if (decode_one(codec, in.data + off, (size_t)n) != 0)
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

static int cmd_lag(const args_t *a, const pg_config_t *c)
{
    char err[512];
    pg_lag_row_t *rows = NULL;
    size_t n = 0;
    if (a->n_pos != 1)
        return usage_error("%s", "usage: pinguard lag [--json]");
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

static int cmd_config(const args_t *a, const pg_config_t *c)
{
    if (a->n_pos == 2 && strcmp(a->pos[1], "reference") == 0) {
        pg_config_print_reference(stdout);
        return PG_EXIT_OK;
    }
    if (a->n_pos == 2 && strcmp(a->pos[1], "show") == 0) {
        pg_config_print(c, stdout);
        return PG_EXIT_OK;
    }
    return usage_error("%s", "usage: pinguard config reference|show");
}

int pg_cli_main(int argc, char **argv, char *const *envp, volatile sig_atomic_t *stop)
{
    args_t a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc != PG_EXIT_OK)
        return rc;
    if (a.help || a.n_pos == 0) {
        fputs(usage_text, a.help ? stdout : stderr);
        return a.help ? PG_EXIT_OK : PG_EXIT_USAGE;
    }
    const char *cmd = a.pos[0];
    if (strcmp(cmd, "avro") == 0)
        return cmd_avro(&a);
    static const char *const known[] = {"run", "explain", "bind",   "unbind", "place",
                                        "pin", "unpin",   "import", "config", "lag"};
    bool ok = false;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        ok |= strcmp(cmd, known[i]) == 0;
    if (!ok)
        return usage_error("unknown command %s", cmd);

    pg_config_t *c = load_config(&a, envp, &rc);
    if (c == NULL)
        return rc;
    if (strcmp(cmd, "run") == 0)
        rc = cmd_run(&a, c, stop);
    else if (strcmp(cmd, "explain") == 0)
        rc = cmd_explain(&a, c);
    else if (strcmp(cmd, "import") == 0)
        rc = cmd_import(&a, c);
    else if (strcmp(cmd, "config") == 0)
        rc = cmd_config(&a, c);
    else if (strcmp(cmd, "lag") == 0)
        rc = cmd_lag(&a, c);
    else
        rc = cmd_edit(&a, c);
    pg_config_destroy(c);
    return rc;
}

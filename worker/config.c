/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The settings table and its three sources. Every key is declared exactly
 * once below, with its bounds; the parser, the effective-config printout and
 * the Markdown reference all walk the same table, so they cannot disagree.
 */
#include "config.h"

#include "bindings_sentinel.h"

#include "types.h"
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { T_STRING, T_INT, T_BOOL, T_ENUM } entry_type_t;

typedef struct {
    const char *key;
    entry_type_t type;
    size_t offset;
    const char *def;
    long min, max;              /* T_INT bounds */
    const char *const *symbols; /* T_ENUM, NULL-terminated */
    bool secret;
    const char *help;
} entry_t;

static const char *const delivery_symbols[] = {"exactly-once", "at-least-once", NULL};
static const char *const onoff_symbols[] = {"on", "off", NULL};
static const char *const level_symbols[] = {"error", "warn", "info", "debug", NULL};
static const char *const format_symbols[] = {"logfmt", "json", NULL};

#define OFF(f) offsetof(pg_config_t, f)
#define STR(k, f, d, h)                                                                \
    {                                                                                  \
        k, T_STRING, OFF(f), d, 0, 0, NULL, false, h                                   \
    }
#define INT(k, f, d, lo, hi, h)                                                        \
    {                                                                                  \
        k, T_INT, OFF(f), d, lo, hi, NULL, false, h                                    \
    }

static const entry_t table[] = {
    STR("topic.advice", topic_advice, "drs.advice", "Input: DrsAdvice records."),
    STR("topic.requests", topic_requests, "vm.migrate.requests",
        "Input: MigrateVmRequest records."),
    STR("topic.results", topic_results, "vm.migrate.results",
        "Input: MigrationResult records."),
    STR("topic.advice.filtered", topic_filtered, "drs.advice.filtered",
        "Output: FilteredAdvice records."),
    STR("topic.decisions", topic_decisions, "vm.migrate.decisions",
        "Output: MigrateVmDecision records."),
    STR("topic.release", topic_release, "device.release.decisions",
        "Output: DeviceReleaseDecision records."),
    STR("topic.dlq", topic_dlq, "pinguard.dlq",
        "Output: undecodable input, with headers."),
    STR("topic.bindings", topic_bindings, "device.bindings",
        "The binding feed (compacted): VmBindings records, keyed by vmUuid, that "
        "`pinguard sync` applies to the cache."),
    STR("topic.audit", topic_audit, "pinguard.audit",
        "Output: AuditEvent records of operator edits and quarantine changes."),
    STR("sync.group.id", sync_group_id, "pinguard-sync",
        "Consumer group of `pinguard sync`, shared by its replicas."),
    STR("sync.metrics.listen", sync_metrics_listen, "127.0.0.1:9465",
        "IPv4 address:port of `pinguard sync`'s /metrics, /healthz and /readyz "
        "(as metrics.listen, which the worker uses)."),
    STR("redis.host", redis_host, "127.0.0.1", "Binding cache host."),
    INT("redis.port", redis_port, "6379", 1, 65535, "Binding cache port."),
    INT("redis.db", redis_db, "0", 0, 15, "Binding cache database number."),
    STR("redis.user", redis_user, "", "ACL user (empty: the default user)."),
    {"redis.password", T_STRING, OFF(redis_password), "", 0, 0, NULL, true,
     "Password (prefer redis.password.file or PINGUARD_REDIS_PASSWORD)."},
    STR("redis.password.file", redis_password_file, "",
        "File whose first line is the Redis password."),
    STR("redis.sentinels", redis_sentinels, "",
        "Sentinels of a Sentinel-managed Redis, host:port,...: pinguard asks them for "
        "the primary of redis.master.name and checks ROLE before using it (empty: "
        "redis.host and redis.port name a standalone server)."),
    STR("redis.master.name", redis_master_name, "pinguard",
        "Name under which the sentinels monitor the primary."),
    STR("redis.sentinel.user", redis_sentinel_user, "",
        "ACL user for the sentinels (empty: the password alone)."),
    {"redis.sentinel.password", T_STRING, OFF(redis_sentinel_password), "", 0, 0, NULL,
     true,
     "Password of the sentinels (prefer redis.sentinel.password.file or "
     "PINGUARD_REDIS_SENTINEL_PASSWORD)."},
    STR("redis.sentinel.password.file", redis_sentinel_password_file, "",
        "File whose first line is the sentinels' password."),
    INT("redis.connect.timeout.ms", redis_connect_timeout_ms, "1000", 10, 60000,
        "Bound on connecting to Redis."),
    INT("redis.timeout.ms", redis_timeout_ms, "1000", 10, 60000,
        "Bound on one Redis round trip; past it the batch is retried."),
    INT("redis.max.devices.per.vm", redis_max_devices_per_vm, "256", 1, 100000,
        "A VM whose cache entry binds more devices is unknown (vetoed UNKNOWN_VM): "
        "bounds the memory one VM's entry can take."),
    INT("redis.lookup.chunk", redis_lookup_chunk, "32", 1, 1000,
        "VMs read per lookup script call, and results noted per quarantine script "
        "call (each VM's keys are one atomic snapshot, each note atomic; several "
        "per call share its fixed cost in Redis). 1 keeps every call on one VM's "
        "keys, one hash slot, as a Redis Cluster needs."),
    {"redis.view", T_ENUM, OFF(redis_view), "on", 0, 0, onoff_symbols, false,
     "on: the worker keeps the VMs it has read and Redis tells it when any of "
     "their keys change (CLIENT TRACKING to a second connection); before a batch "
     "uses what it keeps, one PING on that connection proves every change made "
     "before it has been heard, so a decision is as fresh as a direct read. "
     "off: every batch reads its VMs from Redis."},
    INT("redis.view.max.vms", redis_view_max_vms, "65536", 1, 10000000,
        "VMs the view keeps at most (the least recently used are dropped); about "
        "60 bytes each plus their ids (an entry of more than 1 KiB of ids is read "
        "directly every time instead)."),
    {"policy.allow.unknown.vm", T_BOOL, OFF(allow_unknown_vm), "false", 0, 1, NULL,
     false,
     "Approve VMs the cache does not know instead of vetoing them (UNKNOWN_VM)."},
    STR("device.kinds", device_kinds, "",
        "Device kinds the site declares, extending or overriding the built-in table: "
        "comma-separated kind=pins or kind=migrates (e.g. gpu-vf=pins, "
        "nvme-migratable=migrates). A kind declared nowhere pins."),
    INT("quarantine.failures", quarantine_failures, "3", 1, 1000,
        "FAILED migration results of one VM within quarantine.window.ms that start a "
        "quarantine (each requestId counts once)."),
    INT("quarantine.window.ms", quarantine_window_ms, "3600000", 1000, 604800000,
        "How far back failed results count towards a quarantine."),
    INT("quarantine.base.ms", quarantine_base_ms, "600000", 1000, 604800000,
        "Length of a VM's first quarantine; each consecutive one doubles it."),
    INT("quarantine.max.ms", quarantine_max_ms, "86400000", 1000, 2147483647,
        "Cap of the doubling quarantine."),
    STR("quarantine.origins", quarantine_origins_text, "DRS",
        "Comma-separated MigrationOrigin values a quarantine blocks (DRS advice counts "
        "as DRS); HA, API and MAINTENANCE are not blocked unless listed. Empty: "
        "quarantine blocks nothing."),
    {"delivery", T_ENUM, OFF(delivery), "exactly-once", 0, 0, delivery_symbols, false,
     "exactly-once: decisions and input offsets commit in one Kafka transaction "
     "(set a stable, unique kafka.transactional.id per replica); at-least-once: "
     "offsets are stored after the decisions are acknowledged."},
    INT("delivery.transaction.max.ms", txn_max_ms, "100", 0, 10000,
        "Exactly once, while a backlog drains (each batch full): how long one "
        "transaction may stay open across batches, up to four batches. Each "
        "transaction costs the broker a commit marker per partition it wrote, so "
        "fewer of them cut its CPU; a batch that is not full, a rebalance, a pause "
        "or a stop commits at once. 0: one transaction per batch."),
    INT("batch.max.messages", batch_max_messages, "5000", 1, 100000,
        "Most input messages decided together (one Redis round trip)."),
    INT("batch.max.bytes", batch_max_bytes, "1048576", 1024, 67108864,
        "Most input bytes decided together: bounds a batch's memory when inputs are "
        "large (a DrsAdvice names many VMs)."),
    INT("batch.max.wait.ms", batch_max_wait_ms, "5", 0, 10000,
        "Longest wait to fill a batch once it holds a message."),
    INT("advice.max.migrations", advice_max_migrations, "1000", 1, 100000,
        "A DrsAdvice with more migrations goes to the DLQ (LIMIT_EXCEEDED)."),
    INT("input.max.string.length", max_string_length, PG_MAX_STRING_TEXT, 36,
        PG_MAX_STRING,
        "Longest string field accepted in input; longer goes to the DLQ."),
    INT("retry.backoff.min.ms", retry_backoff_min_ms, "100", 1, 60000,
        "First wait before retrying after Redis failed."),
    INT("retry.backoff.max.ms", retry_backoff_max_ms, "5000", 1, 600000,
        "Cap of the doubling retry wait."),
    STR("metrics.listen", metrics_listen, "127.0.0.1:9464",
        "IPv4 address:port (a dotted address, no host name) of the /metrics, "
        "/healthz and /readyz endpoints; port 0 picks a free one (logged), an empty "
        "value turns them off."),
    INT("health.stall.timeout.ms", health_stall_timeout_ms, "90000", 1000, 3600000,
        "/healthz and /readyz fail when the loop has not turned for this long."),
    INT("health.stall.ms", health_partition_stall_ms, "120000", 1000, 3600000,
        "/readyz fails when an assigned partition with lag has not moved its "
        "committed offset for this long."),
    {"log.level", T_ENUM, OFF(log_level), "info", 0, 0, level_symbols, false,
     "Least severe level logged."},
    {"log.format", T_ENUM, OFF(log_format), "logfmt", 0, 0, format_symbols, false,
     "Log line format."},
};
#define N_ENTRIES (sizeof(table) / sizeof(table[0]))
_Static_assert(N_ENTRIES <= 64, "pg_config_t.sources is too small");

/* librdkafka properties pinguard sets unless the operator does. */
static const struct {
    const char *key, *value, *help;
} kafka_defaults[] = {
    {"bootstrap.servers", "127.0.0.1:9092", "Kafka brokers."},
    {"group.id", "pinguard", "Consumer group shared by all replicas."},
    {"auto.offset.reset", "earliest",
     "A new group starts at the oldest input: no advice is skipped."},
    {"partition.assignment.strategy", "range,roundrobin",
     "Eager assignors (see README)."},
};

static const char *const source_names[] = {"default", "file", "env", "flag"};

static const entry_t *entry_find(const char *key)
{
    for (size_t i = 0; i < N_ENTRIES; i++)
        if (strcmp(table[i].key, key) == 0)
            return &table[i];
    return NULL;
}

bool pg_config_key_is_secret(const char *key)
{
    const entry_t *e = entry_find(key);
    if (e != NULL)
        return e->secret;
    /* librdkafka secrets: sasl.password, ssl.key.password, ssl.key.pem, ... */
    return strstr(key, "password") != NULL || strstr(key, "secret") != NULL ||
           strstr(key, ".pem") != NULL || strstr(key, "ssl.key") != NULL ||
           strstr(key, "token") != NULL;
}

static int kafka_set(pg_config_t *c, const char *prop, const char *value, int source)
{
    for (size_t i = 0; i < c->n_kafka; i++) {
        if (strcmp(c->kafka[i].key, prop) == 0) {
            char *v = strdup(value);
            if (v == NULL)
                return PG_FATAL;
            free(c->kafka[i].value);
            c->kafka[i].value = v;
            c->kafka[i].source = source;
            return 0;
        }
    }
    pg_config_kv_t *kv = realloc(c->kafka, (c->n_kafka + 1) * sizeof(*kv));
    if (kv == NULL)
        return PG_FATAL;
    c->kafka = kv;
    kv[c->n_kafka].key = strdup(prop);
    kv[c->n_kafka].value = strdup(value);
    kv[c->n_kafka].source = source;
    if (kv[c->n_kafka].key == NULL || kv[c->n_kafka].value == NULL) {
        free(kv[c->n_kafka].key);
        free(kv[c->n_kafka].value);
        return PG_FATAL;
    }
    c->n_kafka++;
    return 0;
}

const char *pg_config_kafka_get(const pg_config_t *c, const char *prop)
{
    for (size_t i = 0; i < c->n_kafka; i++)
        if (strcmp(c->kafka[i].key, prop) == 0)
            return c->kafka[i].value;
    return NULL;
}

static int parse_long(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return PG_INPUT;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return PG_INPUT;
}

static int entry_apply(pg_config_t *c, const entry_t *e, const char *value,
                       char *errbuf, size_t errlen)
{
    char *base = (char *)c;
    switch (e->type) {
    case T_STRING: {
        char *v = strdup(value);
        if (v == NULL) {
            pg_errf(errbuf, errlen, "%s: out of memory", e->key);
            return PG_FATAL;
        }
        char **slot = (char **)(base + e->offset);
        free(*slot);
        *slot = v;
        return 0;
    }
    case T_INT: {
        long v;
        if (parse_long(value, &v) != 0 || v < e->min || v > e->max) {
            pg_errf(errbuf, errlen, "%s: '%s' is not an integer in [%ld, %ld]", e->key,
                    e->secret ? "***" : value, e->min, e->max);
            return PG_INPUT;
        }
        *(int *)(base + e->offset) = (int)v;
        return 0;
    }
    case T_BOOL:
        if (parse_bool(value, (bool *)(base + e->offset)) != 0) {
            pg_errf(errbuf, errlen, "%s: '%s' is not true or false", e->key, value);
            return PG_INPUT;
        }
        return 0;
    case T_ENUM:
        for (int i = 0; e->symbols[i] != NULL; i++) {
            if (strcmp(value, e->symbols[i]) == 0) {
                *(int *)(base + e->offset) = i;
                return 0;
            }
        }
        pg_errf(errbuf, errlen, "%s: '%s' is not one of the accepted values", e->key,
                value);
        return PG_INPUT;
    }
    return PG_INPUT;
}

int pg_config_set(pg_config_t *c, const char *key, const char *value, int source,
                  char *errbuf, size_t errlen)
{
    if (strncmp(key, "kafka.", 6) == 0 && key[6] != '\0') {
        if (kafka_set(c, key + 6, value, source) != 0) {
            pg_errf(errbuf, errlen, "%s: out of memory", key);
            return PG_FATAL;
        }
        return 0;
    }
    const entry_t *e = entry_find(key);
    if (e == NULL) {
        pg_errf(errbuf, errlen,
                "unknown setting '%s' (see `pinguard config reference`)", key);
        return PG_INPUT;
    }
    if (entry_apply(c, e, value, errbuf, errlen) != 0)
        return PG_INPUT;
    c->sources[e - table] = source;
    return 0;
}

pg_config_t *pg_config_new(void)
{
    char err[256];
    pg_config_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    for (size_t i = 0; i < N_ENTRIES; i++)
        if (entry_apply(c, &table[i], table[i].def, err, sizeof(err)) != 0)
            goto fail;
    for (size_t i = 0; i < sizeof(kafka_defaults) / sizeof(kafka_defaults[0]); i++)
        if (kafka_set(c, kafka_defaults[i].key, kafka_defaults[i].value,
                      PG_CONFIG_SRC_DEFAULT) != 0)
            goto fail;
    return c;
fail:
    pg_config_destroy(c);
    return NULL;
}

void pg_config_destroy(pg_config_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < N_ENTRIES; i++)
        if (table[i].type == T_STRING)
            free(*(char **)((char *)c + table[i].offset));
    for (size_t i = 0; i < c->n_kafka; i++) {
        free(c->kafka[i].key);
        free(c->kafka[i].value);
    }
    free(c->kafka);
    free(c);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

int pg_config_load_file(pg_config_t *c, const char *path, char *errbuf, size_t errlen)
{
    int rc = PG_INPUT;
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        pg_errf(errbuf, errlen, "config file %s: %s", path, strerror(errno));
        return PG_INPUT;
    }
    while (getline(&line, &cap, f) != -1) {
        lineno++;
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            pg_errf(errbuf, errlen, "%s:%u: expected 'key = value'", path, lineno);
            goto out;
        }
        *eq = '\0';
        char sub[256];
        if (pg_config_set(c, trim(s), trim(eq + 1), PG_CONFIG_SRC_FILE, sub,
                          sizeof(sub)) != 0) {
            pg_errf(errbuf, errlen, "%s:%u: %s", path, lineno, sub);
            goto out;
        }
    }
    rc = 0;
out:
    free(line);
    fclose(f);
    return rc;
}

/* PINGUARD_REDIS_PASSWORD_FILE -> redis.password.file; only names that map to a
 * declared key or to kafka.* are read, so unrelated PINGUARD_* variables pass. */
int pg_config_load_env(pg_config_t *c, char *const *envp, char *errbuf, size_t errlen)
{
    static const char prefix[] = "PINGUARD_";
    for (; envp != NULL && *envp != NULL; envp++) {
        const char *var = *envp;
        if (strncmp(var, prefix, sizeof(prefix) - 1) != 0)
            continue;
        const char *eq = strchr(var, '=');
        size_t n = eq ? (size_t)(eq - var) - (sizeof(prefix) - 1) : 0;
        char key[256];
        if (eq == NULL || n == 0 || n >= sizeof(key))
            continue;
        for (size_t i = 0; i < n; i++) {
            char ch = var[sizeof(prefix) - 1 + i];
            key[i] = ch == '_' ? '.' : (char)tolower((unsigned char)ch);
        }
        key[n] = '\0';
        bool is_kafka = strncmp(key, "kafka.", 6) == 0 && key[6] != '\0';
        if (!is_kafka && entry_find(key) == NULL)
            continue;
        char sub[256];
        if (pg_config_set(c, key, eq + 1, PG_CONFIG_SRC_ENV, sub, sizeof(sub)) != 0) {
            pg_errf(errbuf, errlen, "environment %.*s: %s", (int)(eq - var), var, sub);
            return PG_INPUT;
        }
    }
    return 0;
}

static int read_secret_file(const char *path, char **out, char *errbuf, size_t errlen)
{
    char *line = NULL;
    size_t cap = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        pg_errf(errbuf, errlen, "redis.password.file %s: %s", path, strerror(errno));
        return PG_INPUT;
    }
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    if (n < 0) {
        free(line);
        pg_errf(errbuf, errlen, "redis.password.file %s: empty", path);
        return PG_INPUT;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    free(*out);
    *out = line;
    return 0;
}

/* metrics.listen as the metrics server binds it: empty (no endpoints), or a
 * dotted IPv4 address, a colon and a port of 0 to 65535 in decimal digits (0:
 * any free port). No names: the server never resolves one, so a name would
 * pass here and fail at start-up. */
static int check_listen(const char *key, const char *listen, char *errbuf,
                        size_t errlen)
{
    if (listen[0] == '\0')
        return 0;
    const char *colon = strrchr(listen, ':');
    const char *port = colon != NULL ? colon + 1 : "";
    size_t digits = strspn(port, "0123456789");
    char host[INET_ADDRSTRLEN];
    struct in_addr addr;
    bool ok = colon != NULL && (size_t)(colon - listen) < sizeof(host) && digits > 0 &&
              digits <= 5 && port[digits] == '\0' && atol(port) <= 65535;
    if (ok) {
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = '\0';
        ok = inet_pton(AF_INET, host, &addr) == 1;
    }
    if (!ok) {
        pg_errf(errbuf, errlen,
                "%s: '%s' is not an IPv4 address:port with a port in "
                "[0, 65535] (empty turns the endpoints off)",
                key, listen);
        return PG_INPUT;
    }
    return 0;
}

/* quarantine.origins: MigrationOrigin symbols, comma-separated. */
static int parse_origins(const char *text, unsigned *mask, char *errbuf, size_t errlen)
{
    *mask = 0;
    const char *p = text;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (n == 0)
            break;
        int found = -1;
        for (int o = PG_ORIGIN_DRS; o <= PG_ORIGIN_OTHER; o++)
            if (strlen(pg_origin_name((pg_origin_t)o)) == n &&
                strncmp(p, pg_origin_name((pg_origin_t)o), n) == 0)
                found = o;
        if (found < 0) {
            pg_errf(
                errbuf, errlen,
                "quarantine.origins: '%.*s' is not one of DRS, HA, API, MAINTENANCE, "
                "OTHER",
                (int)n, p);
            return PG_INPUT;
        }
        *mask |= 1u << (unsigned)found;
        p += n;
    }
    return 0;
}

pg_policy_opts_t pg_config_policy_opts(const pg_config_t *c)
{
    return (pg_policy_opts_t){.allow_unknown_vm = c->allow_unknown_vm,
                              .site_kinds = &c->site_kinds,
                              .quarantine_origins = c->quarantine_origins};
}

int pg_config_finish(pg_config_t *c, char *errbuf, size_t errlen)
{
    if (check_listen("metrics.listen", c->metrics_listen, errbuf, errlen) != 0 ||
        check_listen("sync.metrics.listen", c->sync_metrics_listen, errbuf, errlen) !=
            0)
        return PG_INPUT;
    if (c->redis_sentinel_password_file[0] != '\0' &&
        read_secret_file(c->redis_sentinel_password_file, &c->redis_sentinel_password,
                         errbuf, errlen) != 0)
        return PG_INPUT;
    if (c->redis_sentinels[0] != '\0') {
        pg_redis_addr_t addrs[PG_SENTINEL_MAX];
        size_t n;
        if (pg_sentinel_parse_list(c->redis_sentinels, addrs, PG_SENTINEL_MAX, &n,
                                   errbuf, errlen) != PG_OK)
            return PG_INPUT;
        if (c->redis_master_name[0] == '\0') {
            pg_errf(errbuf, errlen,
                    "redis.master.name is empty but redis.sentinels is set");
            return PG_INPUT;
        }
    }
    if (c->redis_password_file[0] != '\0' &&
        read_secret_file(c->redis_password_file, &c->redis_password, errbuf, errlen) !=
            0)
        return PG_INPUT;
    if (pg_policy_parse_kinds(c->device_kinds, &c->site_kinds, errbuf, errlen) != PG_OK)
        return PG_INPUT;
    if (parse_origins(c->quarantine_origins_text, &c->quarantine_origins, errbuf,
                      errlen) != 0)
        return PG_INPUT;
    if (c->quarantine_max_ms < c->quarantine_base_ms) {
        pg_errf(errbuf, errlen,
                "quarantine.max.ms (%d) is below quarantine.base.ms (%d)",
                c->quarantine_max_ms, c->quarantine_base_ms);
        return PG_INPUT;
    }
    if (c->retry_backoff_max_ms < c->retry_backoff_min_ms) {
        pg_errf(errbuf, errlen,
                "retry.backoff.max.ms (%d) is below retry.backoff.min.ms (%d)",
                c->retry_backoff_max_ms, c->retry_backoff_min_ms);
        return PG_INPUT;
    }
    const char *topics[] = {c->topic_advice,   c->topic_requests,  c->topic_results,
                            c->topic_filtered, c->topic_decisions, c->topic_release,
                            c->topic_dlq};
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
        if (topics[i][0] == '\0') {
            pg_errf(errbuf, errlen, "topic names must not be empty");
            return PG_INPUT;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(topics[i], topics[j]) == 0) {
                pg_errf(errbuf, errlen, "topic '%s' is configured twice", topics[i]);
                return PG_INPUT;
            }
        }
    }
    if (c->redis_user[0] != '\0' && c->redis_password[0] == '\0') {
        pg_errf(errbuf, errlen, "redis.user is set but no password is given");
        return PG_INPUT;
    }
    /* The rebalance handling is eager only: rd_kafka_assign() (refused under
     * the COOPERATIVE protocol, so the consumer would fetch nothing), and a
     * rebalance drops the batch in hand, which only an eager revoke of every
     * partition makes safe. librdkafka 2.0.2's cooperative-sticky also has
     * known hangs and loops (fixed in 2.4.0 and 2.6.1). */
    const char *strategies[] = {"partition.assignment.strategy",
                                "consumer.partition.assignment.strategy"};
    for (size_t i = 0; i < 2; i++) {
        const char *s = pg_config_kafka_get(c, strategies[i]);
        if (s != NULL && strstr(s, "cooperative") != NULL) {
            pg_errf(errbuf, errlen,
                    "kafka.%s=%s: cooperative assignors are not supported, use the "
                    "eager range or roundrobin",
                    strategies[i], s);
            return PG_INPUT;
        }
    }
    return 0;
}

static void print_value(FILE *out, const pg_config_t *c, const entry_t *e)
{
    const char *base = (const char *)c;
    switch (e->type) {
    case T_STRING: {
        const char *v = *(char *const *)(base + e->offset);
        fprintf(out, "%s", e->secret && v[0] != '\0' ? "(set, hidden)" : v);
        break;
    }
    case T_INT:
        fprintf(out, "%d", *(const int *)(base + e->offset));
        break;
    case T_BOOL:
        fprintf(out, "%s", *(const bool *)(base + e->offset) ? "true" : "false");
        break;
    case T_ENUM:
        fprintf(out, "%s", e->symbols[*(const int *)(base + e->offset)]);
        break;
    }
}

void pg_config_print(const pg_config_t *c, FILE *out)
{
    for (size_t i = 0; i < N_ENTRIES; i++) {
        fprintf(out, "%s = ", table[i].key);
        print_value(out, c, &table[i]);
        fprintf(out, "  # %s\n", source_names[c->sources[i]]);
    }
    for (size_t i = 0; i < c->n_kafka; i++)
        fprintf(out, "kafka.%s = %s  # %s\n", c->kafka[i].key,
                pg_config_key_is_secret(c->kafka[i].key) ? "(set, hidden)"
                                                         : c->kafka[i].value,
                source_names[c->kafka[i].source]);
}

void pg_config_print_reference(FILE *out)
{
    fprintf(out,
            "# pinguard configuration reference\n\n"
            "Generated by `pinguard config reference` from the settings table; "
            "do not edit by hand.\n\n"
            "Sources, lowest precedence first: defaults, the file given with "
            "`--config FILE` (`key = value` lines, `#` comments), the environment "
            "(`PINGUARD_` + the key in upper case with dots as underscores, e.g. "
            "`PINGUARD_REDIS_PASSWORD`), then `--set key=value` and "
            "`-X property=value` flags. Any `kafka.<property>` is passed to "
            "librdkafka as `<property>` for the consumer and the producer; "
            "`kafka.consumer.<property>` and `kafka.producer.<property>` reach one "
            "of them only.\n\n"
            "| key | type | default | accepted | meaning |\n"
            "| --- | --- | --- | --- | --- |\n");
    for (size_t i = 0; i < N_ENTRIES; i++) {
        const entry_t *e = &table[i];
        fprintf(out, "| `%s` | ", e->key);
        switch (e->type) {
        case T_STRING:
            fprintf(out, "string | `%s` | | ", e->def);
            break;
        case T_INT:
            fprintf(out, "integer | `%s` | %ld to %ld | ", e->def, e->min, e->max);
            break;
        case T_BOOL:
            fprintf(out, "boolean | `%s` | true, false | ", e->def);
            break;
        case T_ENUM:
            fprintf(out, "enum | `%s` | ", e->def);
            for (int j = 0; e->symbols[j] != NULL; j++)
                fprintf(out, "%s`%s`", j ? ", " : "", e->symbols[j]);
            fprintf(out, " | ");
            break;
        }
        fprintf(out, "%s%s |\n", e->help, e->secret ? " Secret: never printed." : "");
    }
    for (size_t i = 0; i < sizeof(kafka_defaults) / sizeof(kafka_defaults[0]); i++)
        fprintf(out, "| `kafka.%s` | librdkafka | `%s` | | %s |\n",
                kafka_defaults[i].key, kafka_defaults[i].value, kafka_defaults[i].help);
}

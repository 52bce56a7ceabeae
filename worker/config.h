/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Settings of pinguard: one table (config.c) declares every key with its type,
 * default, bounds and help; parsing, --check-config and docs/CONFIG.md are all
 * driven by it. Sources, lowest precedence first: built-in defaults, a file
 * (`key = value` lines), the environment (PINGUARD_<KEY>, dots as
 * underscores), then command-line `--set key=value` / `-X prop=value`.
 * Keys `kafka.<property>` pass through to librdkafka for the consumer and the
 * producer alike; `kafka.consumer.<property>` and `kafka.producer.<property>`
 * reach only one of them.
 */
#ifndef PG_CONFIG_H
#define PG_CONFIG_H

#include "log.h"
#include "status.h"

#include "policy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum { PG_DELIVERY_EXACTLY_ONCE = 0, PG_DELIVERY_AT_LEAST_ONCE } pg_delivery_t;

typedef struct {
    char *key; /* librdkafka property, without the "kafka." prefix */
    char *value;
    int source; /* where it came from, for --check-config */
} pg_config_kv_t;

typedef struct {
    char *topic_advice;
    char *topic_requests;
    char *topic_results;
    char *topic_filtered;
    char *topic_decisions;
    char *topic_release;
    char *topic_dlq;
    char *topic_bindings; /* v2: the binding feed */
    char *topic_audit;    /* v2: the audit trail */
    char *sync_group_id;
    char *sync_metrics_listen;

    char *redis_host;
    int redis_port;
    int redis_db;
    char *redis_user;
    char *redis_password;
    char *redis_password_file;
    char *redis_sentinels;   /* host:port,... ; empty: a standalone server */
    char *redis_master_name; /* the primary's name the sentinels monitor */
    char *redis_sentinel_user;
    char *redis_sentinel_password;
    char *redis_sentinel_password_file;
    int redis_connect_timeout_ms;
    int redis_timeout_ms;
    int redis_max_devices_per_vm;
    int redis_lookup_chunk;
    int redis_view; /* 0: on, 1: off (onoff order) */
    int redis_view_max_vms;

    bool allow_unknown_vm;
    char *device_kinds;         /* device.kinds as written */
    pg_site_kinds_t site_kinds; /* ... and parsed by pg_config_finish */
    int quarantine_failures;
    int quarantine_window_ms;
    int quarantine_base_ms;
    int quarantine_max_ms;
    char *quarantine_origins_text; /* quarantine.origins as written */
    unsigned quarantine_origins;   /* ... as a mask of (1 << pg_origin_t) */
    int delivery;                  /* pg_delivery_t */
    int batch_max_messages;
    int batch_max_bytes;
    int batch_max_wait_ms;
    int txn_max_ms; /* delivery.transaction.max.ms */
    int advice_max_migrations;
    int max_string_length;
    int retry_backoff_min_ms;
    int retry_backoff_max_ms;

    char *metrics_listen;
    int health_stall_timeout_ms;
    int health_partition_stall_ms;
    int log_level;  /* pg_log_level_t */
    int log_format; /* pg_log_format_t */

    size_t n_kafka;
    pg_config_kv_t *kafka;

    int sources[64]; /* per table entry: 0 default, 1 file, 2 env, 3 flag */
} pg_config_t;

enum {
    PG_CONFIG_SRC_DEFAULT = 0,
    PG_CONFIG_SRC_FILE,
    PG_CONFIG_SRC_ENV,
    PG_CONFIG_SRC_FLAG
};

/* Returns a config holding the defaults, or NULL when out of memory. */
pg_config_t *pg_config_new(void);
void pg_config_destroy(pg_config_t *c); /* NULL-safe */

/* Each returns PG_OK, or PG_INPUT with errbuf naming the key, the value and
 * the rule it broke (a permanent, usage-class error), or PG_FATAL when out of
 * memory. */
int pg_config_set(pg_config_t *c, const char *key, const char *value, int source,
                  char *errbuf, size_t errlen);
int pg_config_load_file(pg_config_t *c, const char *path, char *errbuf, size_t errlen);
/* envp: NULL-terminated "NAME=value" strings (pass `environ`). */
int pg_config_load_env(pg_config_t *c, char *const *envp, char *errbuf, size_t errlen);
/* Cross-field checks and secrets from files; call once after all sources. */
int pg_config_finish(pg_config_t *c, char *errbuf, size_t errlen);

/* The value of a passthrough property, or NULL. */
const char *pg_config_kafka_get(const pg_config_t *c, const char *prop);

/* The policy options of a finished configuration (the worker's, which every
 * other decider, explain and impact, uses too). */
pg_policy_opts_t pg_config_policy_opts(const pg_config_t *c);

/* Prints the effective configuration, secrets redacted, one `key = value`
 * line each with its source. */
void pg_config_print(const pg_config_t *c, FILE *out);
/* Prints the Markdown reference of every key (docs/CONFIG.md). */
void pg_config_print_reference(FILE *out);

/* Whether a key's value must never be printed or logged. */
bool pg_config_key_is_secret(const char *key);

#endif

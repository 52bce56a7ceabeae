/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the files of the command line share: the parsed arguments, a few
 * helpers, and the commands that live outside cli.c (cli_feed.c: `impact`
 * and `publish`). Not part of any other module's interface.
 */
#ifndef PG_CLI_INTERNAL_H
#define PG_CLI_INTERNAL_H

#include "bindings.h"
#include "codec.h"
#include "config.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *config_file;
    const char *sets[64];
    char xbuf[64][512]; /* -X values, prefixed with "kafka." */
    size_t n_sets;
    bool check_config, json, framed, help, version, rebuild;
    const char *schema_version; /* avro: --schema-version N */
    const char *type;
    const char *pos[16];
    size_t n_pos;
} pg_cli_args_t;

/* Prints "pinguard: <message>" and the usage text on stderr; returns
 * PG_EXIT_USAGE. */
__attribute__((format(printf, 1, 2))) int pg_cli_usage_error(const char *fmt, ...);

/* A binding cache client for the settings; NULL (said on stderr) when out of
 * memory. */
pg_bindings_t *pg_cli_open_bindings(const pg_config_t *c);

/* A cache value for an operator: verbatim when it is UTF-8 without NUL (and,
 * for a terminal, without control characters); otherwise each byte outside a
 * well-formed UTF-8 character, each NUL, control character and backslash as
 * \xNN. NULL when out of memory. */
const char *pg_cli_shown(pg_bytes_t v, bool terminal, pg_arena_t *arena);

/* Whether a line holds nothing but blanks. */
bool pg_cli_blank(const char *line, size_t len);

/* On a terminal, one status line on stderr rewritten in place (an empty
 * text clears it); nothing otherwise. */
void pg_cli_progress(bool tty, const char *text);

/* The limits the worker decodes its input with. */
pg_codec_limits_t pg_cli_codec_limits(const pg_config_t *c);

/* cli_feed.c */
int pg_cli_impact(const pg_cli_args_t *a, const pg_config_t *c);
int pg_cli_publish(const pg_cli_args_t *a, const pg_config_t *c);

#endif

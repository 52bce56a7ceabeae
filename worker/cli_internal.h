/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the files of the command line share: the parsed arguments, a few
 * helpers, and the commands that live outside cli.c (cli_feed.c: `impact`
 * and `publish`; cli_audit.c: the audit trail of operator edits and
 * `audit`). Not part of any other module's interface.
 */
#ifndef PG_CLI_INTERNAL_H
#define PG_CLI_INTERNAL_H

#include "bindings.h"
#include "codec.h"
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

typedef struct {
    const char *config_file;
    const char *sets[64];
    char xbuf[64][512]; /* -X values, prefixed with "kafka." */
    size_t n_sets;
    bool check_config, json, framed, help, version, rebuild;
    const char *schema_version; /* avro: --schema-version N */
    const char *type;
    const char *for_duration; /* pin: --for DURATION */
    const char *actor;        /* operator edits: --actor NAME */
    const char *since;        /* audit: --since DURATION */
    char *const *envp;        /* the process's environment */
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

/* A duration as operators write it: a whole number of ms, s, m, h or d
 * ("500ms", "90s", "15m", "2h", "1d"), more than 0 and at most
 * PG_CLI_MAX_DURATION_MS: 0 with *ms set, -1 for anything else (a sign, a
 * blank, a fraction, another unit, an overflow). */
#define PG_CLI_MAX_DURATION_MS (36500LL * 86400000LL) /* 100 years */
int pg_cli_parse_duration(const char *s, int64_t *ms);
/* A number of ms for people: "850ms", "1h59m58s", "2d3h" (below a second
 * the ms, above it whole seconds, zero parts left out). */
void pg_cli_format_ms(int64_t ms, char *buf, size_t len);
/* Wall-clock ms as UTC, "2026-12-04T19:00:00Z". */
void pg_cli_format_time(int64_t at_ms, char *buf, size_t len);

/* cli_audit.c */
/* Who makes an edit: --actor, else SUDO_USER, else USER, else "unknown". */
const char *pg_cli_actor(const pg_cli_args_t *a);
/* Writes the AuditEvent of an edit already made to topic.audit and waits
 * for the broker's acknowledgement. vm NULL: not one VM's (import); detail
 * says what changed. When the record cannot be written it says so on
 * stderr naming the edit ("<done>, but its audit record could not be
 * written: <why>") and returns PG_EXIT_RUNTIME; PG_EXIT_OK otherwise. */
int pg_cli_audit_edit(const pg_cli_args_t *a, const pg_config_t *c,
                      pg_audit_action_t action, const char *vm, const char *detail,
                      const char *done);
/* `audit [VM] [--since DURATION] [--json]`. */
int pg_cli_audit(const pg_cli_args_t *a, const pg_config_t *c);

/* cli_feed.c */
int pg_cli_impact(const pg_cli_args_t *a, const pg_config_t *c);
int pg_cli_publish(const pg_cli_args_t *a, const pg_config_t *c);

/* cli_lines.c: the two-pass line input of `import` and `publish`. Owns its
 * FILEs and line buffer until pg_cli_lines_close (safe on a zeroed or closed
 * one). Every failure is said on stderr, prefixed "pinguard: VERB". */
typedef struct {
    const char *verb, *name; /* the command; "stdin" or the path */
    FILE *f, *spool, *in;    /* the input; its copy (a pipe); the second pass's */
    off_t start;             /* where the input started */
    char *line;
    size_t cap, lines, lineno; /* lines read by the first pass; by the second */
    bool tty;                  /* progress on stderr */
} pg_cli_lines_t;

/* Checks one non-blank line: PG_OK, or PG_INPUT with the reason in err. */
typedef int (*pg_cli_line_fn)(void *ctx, const char *line, size_t len, char *err,
                              size_t errlen);

/* Opens PATH ("-" for stdin). PG_OK or PG_FATAL. */
int pg_cli_lines_open(pg_cli_lines_t *l, const char *verb, const char *path);
/* The first pass: check() on every non-blank line, the first few failures
 * reported with their line numbers; then positions for the second pass.
 * PG_OK when every line passed, PG_FATAL otherwise ("nothing was
 * NOTHING_DONE"). */
int pg_cli_lines_check(pg_cli_lines_t *l, pg_cli_line_fn check, void *ctx,
                       const char *nothing_done);
/* The second pass: the next non-blank line (valid until the next call, its
 * number in l->lineno): 1; 0 at the end; PG_FATAL on a read error. */
int pg_cli_lines_next(pg_cli_lines_t *l, const char **line, size_t *len);
void pg_cli_lines_close(pg_cli_lines_t *l);

#endif

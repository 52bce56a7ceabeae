/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One line per event on stderr, logfmt or JSON lines, with a level. Callers
 * pass key/value pairs terminated by NULL; a key starting with '#' takes a
 * long long value instead of a string (the '#' is not printed). Secrets are
 * never passed here: callers log names of settings, not their values.
 */
#ifndef PG_LOG_H
#define PG_LOG_H

#include <stdbool.h>

typedef enum {
    PG_LOG_ERROR = 0,
    PG_LOG_WARN,
    PG_LOG_INFO,
    PG_LOG_DEBUG
} pg_log_level_t;
typedef enum { PG_LOG_LOGFMT = 0, PG_LOG_JSON } pg_log_format_t;

void pg_log_setup(pg_log_level_t level, pg_log_format_t format);
bool pg_log_enabled(pg_log_level_t level);
void pg_log(pg_log_level_t level, const char *event, ...);

#define pg_log_error(...) pg_log(PG_LOG_ERROR, __VA_ARGS__)
#define pg_log_warn(...) pg_log(PG_LOG_WARN, __VA_ARGS__)
#define pg_log_info(...) pg_log(PG_LOG_INFO, __VA_ARGS__)
#define pg_log_debug(...) pg_log(PG_LOG_DEBUG, __VA_ARGS__)

#endif

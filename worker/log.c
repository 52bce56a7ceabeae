/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Structured logging. Each line is built in a local buffer and written with
 * one fwrite so that lines of concurrent processes sharing a pipe stay whole.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static pg_log_level_t log_level = PG_LOG_INFO;
static pg_log_format_t log_format = PG_LOG_LOGFMT;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void pg_log_setup(pg_log_level_t level, pg_log_format_t format)
{
    log_level = level;
    log_format = format;
}

bool pg_log_enabled(pg_log_level_t level)
{
    return level <= log_level;
}

typedef struct {
    char data[2048];
    size_t len;
} line_t;

static void put(line_t *l, const char *s, size_t n)
{
    size_t room = sizeof(l->data) - 2 - l->len; /* keep room for "\n\0" */
    if (n > room)
        n = room;
    memcpy(l->data + l->len, s, n);
    l->len += n;
}

static void puts_(line_t *l, const char *s)
{
    put(l, s, strlen(s));
}

static void put_value(line_t *l, const char *v)
{
    bool json = log_format == PG_LOG_JSON;
    bool quote = json || *v == '\0' || strpbrk(v, " =\"\\\t\n") != NULL;
    if (quote)
        put(l, "\"", 1);
    for (const char *p = v; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        char esc[8];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            put(l, esc, 2);
        } else if (ch == '\n') {
            put(l, "\\n", 2);
        } else if (ch < 0x20) {
            int n = snprintf(esc, sizeof(esc), "\\u%04x", ch);
            put(l, esc, (size_t)n);
        } else {
            put(l, (const char *)p, 1);
        }
    }
    if (quote)
        put(l, "\"", 1);
}

static void put_pair(line_t *l, const char *key, const char *value, bool raw,
                     bool first)
{
    if (log_format == PG_LOG_JSON) {
        if (!first)
            put(l, ",", 1);
        put(l, "\"", 1);
        puts_(l, key);
        put(l, "\":", 2);
    } else {
        if (!first)
            put(l, " ", 1);
        puts_(l, key);
        put(l, "=", 1);
    }
    if (raw)
        puts_(l, value);
    else
        put_value(l, value);
}

void pg_log(pg_log_level_t level, const char *event, ...)
{
    if (!pg_log_enabled(level))
        return;
    line_t l = {.len = 0};
    char ts[40];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000);

    if (log_format == PG_LOG_JSON)
        put(&l, "{", 1);
    put_pair(&l, "ts", ts, false, true);
    put_pair(&l, "level", level_names[level], false, false);
    put_pair(&l, "event", event, false, false);

    va_list ap;
    va_start(ap, event);
    const char *key;
    while ((key = va_arg(ap, const char *)) != NULL) {
        char num[32];
        if (key[0] == '#') {
            snprintf(num, sizeof(num), "%lld", va_arg(ap, long long));
            put_pair(&l, key + 1, num, true, false);
        } else {
            const char *v = va_arg(ap, const char *);
            put_pair(&l, key, v ? v : "", false, false);
        }
    }
    va_end(ap);
    if (log_format == PG_LOG_JSON)
        put(&l, "}", 1);
    l.data[l.len++] = '\n'; /* put() always leaves room for it */
    fwrite(l.data, 1, l.len, stderr);
}

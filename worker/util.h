/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Small helpers every module shares: the clocks and filling a caller's error
 * buffer. Header-only (static inline), so each library that includes it
 * carries its own copy and none depends on another for them.
 */
#ifndef PG_UTIL_H
#define PG_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* The deepest nesting accepted anywhere: Avro values, schemas and JSON input. */
#define PG_MAX_DEPTH 32

/* CLOCK_MONOTONIC, for durations and deadlines. */
static inline int64_t pg_now_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t pg_now_mono_ms(void)
{
    return pg_now_mono_us() / 1000;
}

/* CLOCK_REALTIME in ms, for timestamps written into records. */
static inline int64_t pg_now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Formats into the caller's error buffer (NULL or empty: nothing), always
 * NUL-terminated, truncated when long. */
__attribute__((format(printf, 3, 0))) static inline void
pg_verrf(char *errbuf, size_t errlen, const char *fmt, va_list ap)
{
    if (errbuf != NULL && errlen > 0)
        vsnprintf(errbuf, errlen, fmt, ap);
}

__attribute__((format(printf, 3, 4))) static inline void
pg_errf(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pg_verrf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

#endif

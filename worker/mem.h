/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Memory helpers: a bump arena for everything that lives as long as one
 * consumed batch (decoded records, cache replies, decisions), and a growable
 * byte buffer for encoding. Both are reset, not freed, between batches so the
 * steady state allocates nothing.
 */
#ifndef PG_MEM_H
#define PG_MEM_H

#include "status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct pg_arena pg_arena_t;

/* Returns a new arena, or NULL when out of memory. Caller owns it. */
pg_arena_t *pg_arena_new(size_t chunk_size);
/* NULL-safe. Frees every block the arena handed out. */
void pg_arena_destroy(pg_arena_t *a);
/* Forgets every allocation; keeps one chunk as large as all it held, for
 * reuse. */
void pg_arena_reset(pg_arena_t *a);
/* Aligned to max_align_t; NULL when out of memory or n overflows. The memory is
 * owned by the arena and valid until the next reset or destroy. */
void *pg_arena_alloc(pg_arena_t *a, size_t n);
void *pg_arena_calloc(pg_arena_t *a, size_t count, size_t size);
/* Copies n bytes and appends a NUL. */
char *pg_arena_strndup(pg_arena_t *a, const char *s, size_t n);
char *pg_arena_strdup(pg_arena_t *a, const char *s);
/* A point in an arena's life: pg_arena_rewind frees everything allocated
 * after it (a decode that fails part-way gives back what it took). A mark is
 * valid until the arena is reset or rewound to an earlier mark. */
typedef struct {
    void *chunk;
    size_t chunk_used;
    size_t used;
} pg_arena_mark_t;
pg_arena_mark_t pg_arena_mark(const pg_arena_t *a);
void pg_arena_rewind(pg_arena_t *a, pg_arena_mark_t m);
/* Bytes currently handed out (for tests and metrics). */
size_t pg_arena_used(const pg_arena_t *a);

typedef struct {
    uint8_t *data; /* owned; free with pg_buf_free */
    size_t len;
    size_t cap;
} pg_buf_t;

/* PG_OK, or PG_FATAL when out of memory (the buffer is left as it was). */
int pg_buf_reserve(pg_buf_t *b, size_t extra);
int pg_buf_append(pg_buf_t *b, const void *p, size_t n);
void pg_buf_reset(pg_buf_t *b);
/* NULL-safe; leaves the buffer empty and reusable. */
void pg_buf_free(pg_buf_t *b);

#endif

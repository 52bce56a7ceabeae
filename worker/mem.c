/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Bump arena and growable buffer. The arena keeps a list of chunks; a reset
 * merges them into one so a steady batch size settles on one allocation,
 * made once.
 */
#include "mem.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

typedef struct pg_arena_chunk {
    struct pg_arena_chunk *next;
    size_t size;
    size_t used;
    alignas(max_align_t) unsigned char data[];
} pg_arena_chunk_t;

struct pg_arena {
    pg_arena_chunk_t *head; /* current chunk, newest first */
    size_t chunk_size;
    size_t used;
};

static pg_arena_chunk_t *arena_chunk_new(size_t size)
{
    if (size > SIZE_MAX - sizeof(pg_arena_chunk_t))
        return NULL;
    pg_arena_chunk_t *ch = malloc(sizeof(*ch) + size);
    if (ch == NULL)
        return NULL;
    ch->next = NULL;
    ch->size = size;
    ch->used = 0;
    return ch;
}

pg_arena_t *pg_arena_new(size_t chunk_size)
{
    pg_arena_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->chunk_size = chunk_size < 1024 ? 1024 : chunk_size;
    a->head = arena_chunk_new(a->chunk_size);
    if (a->head == NULL) {
        free(a);
        return NULL;
    }
    return a;
}

void pg_arena_destroy(pg_arena_t *a)
{
    if (a == NULL)
        return;
    pg_arena_chunk_t *ch = a->head;
    while (ch != NULL) {
        pg_arena_chunk_t *next = ch->next;
        free(ch);
        ch = next;
    }
    free(a);
}

void pg_arena_reset(pg_arena_t *a)
{
    if (a == NULL)
        return;
    /* More than one chunk: the next batch of this size should need only
     * one, so they are replaced by one as large as all of them (a batch is
     * bounded, and so is this). If that fails, the oldest (the last in the
     * list, of the base size) is kept. */
    pg_arena_chunk_t *ch = a->head;
    if (ch->next != NULL) {
        size_t total = 0;
        for (const pg_arena_chunk_t *c = ch; c != NULL; c = c->next)
            total += c->size;
        pg_arena_chunk_t *one = arena_chunk_new(total);
        while (ch->next != NULL) {
            pg_arena_chunk_t *next = ch->next;
            free(ch);
            ch = next;
        }
        if (one != NULL) {
            free(ch);
            ch = one;
        }
    }
    ch->used = 0;
    a->head = ch;
    a->used = 0;
}

void *pg_arena_alloc(pg_arena_t *a, size_t n)
{
    const size_t align = alignof(max_align_t);
    if (n > SIZE_MAX / 2)
        return NULL;
    size_t need = (n + align - 1) & ~(align - 1);
    if (need == 0)
        need = align;
    pg_arena_chunk_t *ch = a->head;
    if (ch->size - ch->used < need) {
        size_t size = need > a->chunk_size ? need : a->chunk_size;
        pg_arena_chunk_t *fresh = arena_chunk_new(size);
        if (fresh == NULL)
            return NULL;
        fresh->next = ch;
        a->head = ch = fresh;
    }
    void *p = ch->data + ch->used;
    ch->used += need;
    a->used += need;
    return p;
}

void *pg_arena_calloc(pg_arena_t *a, size_t count, size_t size)
{
    if (size != 0 && count > SIZE_MAX / 2 / size)
        return NULL;
    void *p = pg_arena_alloc(a, count * size);
    if (p != NULL)
        memset(p, 0, count * size);
    return p;
}

char *pg_arena_strndup(pg_arena_t *a, const char *s, size_t n)
{
    char *p = pg_arena_alloc(a, n + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *pg_arena_strdup(pg_arena_t *a, const char *s)
{
    return pg_arena_strndup(a, s, strlen(s));
}

pg_arena_mark_t pg_arena_mark(const pg_arena_t *a)
{
    return (pg_arena_mark_t){a->head, a->head->used, a->used};
}

void pg_arena_rewind(pg_arena_t *a, pg_arena_mark_t m)
{
    /* Chunks are newest first: free down to the one the mark was taken in. */
    while (a->head != m.chunk && a->head->next != NULL) {
        pg_arena_chunk_t *next = a->head->next;
        free(a->head);
        a->head = next;
    }
    a->head->used = m.chunk_used;
    a->used = m.used;
}

size_t pg_arena_used(const pg_arena_t *a)
{
    return a->used;
}

int pg_buf_reserve(pg_buf_t *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len)
        return PG_FATAL;
    if (b->len + extra <= b->cap)
        return PG_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return PG_FATAL;
    b->data = p;
    b->cap = cap;
    return PG_OK;
}

int pg_buf_append(pg_buf_t *b, const void *p, size_t n)
{
    if (pg_buf_reserve(b, n) != 0)
        return PG_FATAL;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return PG_OK;
}

void pg_buf_reset(pg_buf_t *b)
{
    b->len = 0;
}

void pg_buf_free(pg_buf_t *b)
{
    if (b == NULL)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

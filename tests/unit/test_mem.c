/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of the memory helpers: the arena's alignment, its reset (the
 * first chunk kept, every allocation forgotten), allocations larger than a
 * chunk, the overflow guards of alloc and calloc, strndup's copy and NUL,
 * the used-bytes figure; the growable buffer's reserve and append growth, an
 * append that cannot grow leaving the buffer as it was, reset, and a
 * NULL-safe free after which the buffer is reusable.
 */
#include <check.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"

#define ALIGN alignof(max_align_t)

static int aligned(const void *p)
{
    return (uintptr_t)p % ALIGN == 0;
}

/* Odd sizes, one after another: every block starts on a max_align_t
 * boundary, and used counts each block rounded up to it. */
START_TEST(arena_alignment)
{
    pg_arena_t *a = pg_arena_new(4096);
    ck_assert_ptr_nonnull(a);
    static const size_t sizes[] = {1, 3, 7, ALIGN - 1, ALIGN, ALIGN + 1, 33, 100, 1};
    size_t want_used = 0;
    unsigned char *prev = NULL;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        unsigned char *p = pg_arena_alloc(a, sizes[i]);
        ck_assert_ptr_nonnull(p);
        ck_assert_msg(aligned(p), "size %zu at %p", sizes[i], (void *)p);
        /* The block is writable over its whole length and does not overlap
         * the one before it. */
        memset(p, 0x5A, sizes[i]);
        if (prev != NULL)
            ck_assert(p != prev);
        prev = p;
        want_used += (sizes[i] + ALIGN - 1) / ALIGN * ALIGN;
        ck_assert_uint_eq(pg_arena_used(a), want_used);
    }
    /* A zero-byte request is still a distinct, aligned block. */
    void *z1 = pg_arena_alloc(a, 0), *z2 = pg_arena_alloc(a, 0);
    ck_assert_ptr_nonnull(z1);
    ck_assert_ptr_nonnull(z2);
    ck_assert(z1 != z2);
    ck_assert(aligned(z1) && aligned(z2));
    ck_assert_uint_eq(pg_arena_used(a), want_used + 2 * ALIGN);
    pg_arena_destroy(a);
}
END_TEST

/* Blocks written with distinct patterns keep them while more are handed out
 * from the same and from new chunks. */
START_TEST(arena_blocks_do_not_overlap)
{
    pg_arena_t *a = pg_arena_new(1024);
    enum { N = 200, SZ = 40 };
    unsigned char *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = pg_arena_alloc(a, SZ);
        ck_assert_ptr_nonnull(blocks[i]);
        ck_assert(aligned(blocks[i]));
        memset(blocks[i], i & 0xFF, SZ);
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < SZ; j++)
            ck_assert_uint_eq(blocks[i][j], (unsigned)(i & 0xFF));
    pg_arena_destroy(a);
}
END_TEST

/* Reset forgets every allocation (used goes back to 0). An arena that grew
 * chunks keeps one as large as all of them: the same batch again is served
 * from it, each block right after the one before; an arena of one chunk
 * keeps it, so the next allocation starts where the first one did. */
START_TEST(arena_reset_settles_on_one_chunk)
{
    pg_arena_t *a = pg_arena_new(1024);
    ck_assert_ptr_nonnull(pg_arena_alloc(a, 16));
    for (int i = 0; i < 100; i++) /* ~10 chunks' worth */
        ck_assert_ptr_nonnull(pg_arena_alloc(a, 100));
    ck_assert_uint_gt(pg_arena_used(a), 1024 * 5);
    pg_arena_reset(a);
    ck_assert_uint_eq(pg_arena_used(a), 0);
    unsigned char *first = pg_arena_alloc(a, 16), *prev = first;
    ck_assert_ptr_nonnull(first);
    ck_assert_uint_eq(pg_arena_used(a), (16 + ALIGN - 1) / ALIGN * ALIGN);
    size_t step = (16 + ALIGN - 1) / ALIGN * ALIGN;
    for (int i = 0; i < 100; i++) {
        unsigned char *p = pg_arena_alloc(a, 100);
        ck_assert_ptr_eq(p, prev + step);
        prev = p;
        step = (100 + ALIGN - 1) / ALIGN * ALIGN;
    }

    /* Twice in a row, and on an arena that never allocated. */
    pg_arena_reset(a);
    pg_arena_reset(a);
    ck_assert_uint_eq(pg_arena_used(a), 0);
    ck_assert_ptr_eq(pg_arena_alloc(a, 1), first);
    pg_arena_destroy(a);

    pg_arena_t *b = pg_arena_new(0);
    ck_assert_ptr_nonnull(b);
    pg_arena_reset(b);
    ck_assert_uint_eq(pg_arena_used(b), 0);
    pg_arena_destroy(b);
    pg_arena_reset(NULL); /* NULL-safe */
}
END_TEST

/* A chunk size below the floor still serves allocations of the floor size
 * (1024) from the first chunk: the second block follows the first in it. */
START_TEST(arena_small_chunk_size_is_raised)
{
    pg_arena_t *a = pg_arena_new(1);
    unsigned char *p = pg_arena_alloc(a, 512);
    unsigned char *q = pg_arena_alloc(a, 256);
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_eq(q, p + 512);
    pg_arena_destroy(a);
}
END_TEST

/* An allocation larger than the chunk size gets a chunk of its own, fully
 * usable; the arena goes on serving small blocks afterwards, and after a
 * reset the same allocations fit in one chunk. */
START_TEST(arena_larger_than_chunk)
{
    pg_arena_t *a = pg_arena_new(1024);
    ck_assert_ptr_nonnull(pg_arena_alloc(a, 8));
    const size_t big = 1024 * 64 + 3;
    unsigned char *p = pg_arena_alloc(a, big);
    ck_assert_ptr_nonnull(p);
    ck_assert(aligned(p));
    memset(p, 0xEE, big);
    ck_assert_uint_eq(p[0], 0xEE);
    ck_assert_uint_eq(p[big - 1], 0xEE);
    ck_assert_uint_eq(pg_arena_used(a), ALIGN + (big + ALIGN - 1) / ALIGN * ALIGN);
    unsigned char *s = pg_arena_alloc(a, 8);
    ck_assert_ptr_nonnull(s);
    ck_assert((uintptr_t)s < (uintptr_t)p || (uintptr_t)s >= (uintptr_t)p + big);
    /* Exactly the chunk size fits a fresh chunk too. */
    ck_assert_ptr_nonnull(pg_arena_alloc(a, 1024));
    pg_arena_reset(a);
    unsigned char *again = pg_arena_alloc(a, 8);
    ck_assert_ptr_eq(pg_arena_alloc(a, big), again + ALIGN);
    pg_arena_destroy(a);
}
END_TEST

/* Sizes no chunk can hold come back NULL and leave the arena as it was. */
START_TEST(arena_alloc_overflow)
{
    pg_arena_t *a = pg_arena_new(1024);
    ck_assert_ptr_nonnull(pg_arena_alloc(a, 10));
    size_t used = pg_arena_used(a);
    ck_assert_ptr_null(pg_arena_alloc(a, SIZE_MAX));
    ck_assert_ptr_null(pg_arena_alloc(a, SIZE_MAX - ALIGN + 2)); /* rounding wraps */
    ck_assert_ptr_null(pg_arena_alloc(a, SIZE_MAX / 2 + 1));
    ck_assert_uint_eq(pg_arena_used(a), used);
    ck_assert_ptr_nonnull(pg_arena_alloc(a, 10));
    pg_arena_destroy(a);
}
END_TEST

/* count * size that wraps around SIZE_MAX is refused, not allocated short. */
START_TEST(arena_calloc_overflow)
{
    pg_arena_t *a = pg_arena_new(1024);
    const size_t half = (size_t)1 << (sizeof(size_t) * 8 / 2);
    /* half * half == 2^64 wraps to 0; (SIZE_MAX/8 + 2) * 8 wraps to 8. */
    ck_assert_ptr_null(pg_arena_calloc(a, half, half));
    ck_assert_ptr_null(pg_arena_calloc(a, SIZE_MAX / 8 + 2, 8));
    ck_assert_ptr_null(pg_arena_calloc(a, 8, SIZE_MAX / 8 + 2));
    ck_assert_ptr_null(pg_arena_calloc(a, SIZE_MAX, SIZE_MAX));
    ck_assert_ptr_null(pg_arena_calloc(a, 2, SIZE_MAX / 2 + 1));
    ck_assert_uint_eq(pg_arena_used(a), 0);
    pg_arena_destroy(a);
}
END_TEST

/* calloc zeroes, also memory a reset handed back dirty. */
START_TEST(arena_calloc_zeroes)
{
    pg_arena_t *a = pg_arena_new(1024);
    unsigned char *p = pg_arena_alloc(a, 256);
    memset(p, 0xFF, 256);
    pg_arena_reset(a);
    unsigned char *z = pg_arena_calloc(a, 32, 8);
    ck_assert_ptr_eq(z, p);
    for (int i = 0; i < 256; i++)
        ck_assert_uint_eq(z[i], 0);
    ck_assert_uint_eq(pg_arena_used(a), 256);
    /* count 0 or size 0: a valid (empty) block, not an error. */
    ck_assert_ptr_nonnull(pg_arena_calloc(a, 0, 8));
    ck_assert_ptr_nonnull(pg_arena_calloc(a, 8, 0));
    pg_arena_destroy(a);
}
END_TEST

/* strndup copies exactly n bytes, embedded NULs and bytes past n left out,
 * and appends a NUL; the copy is independent of the source. */
START_TEST(arena_strndup)
{
    pg_arena_t *a = pg_arena_new(1024);
    /* Dirty memory to copy into: the NUL must be written, not found. */
    memset(pg_arena_alloc(a, 512), 0xFF, 512);
    pg_arena_reset(a);
    char src[] = "abcdef";
    char *p = pg_arena_strndup(a, src, 3);
    ck_assert_ptr_nonnull(p);
    ck_assert(p != src);
    ck_assert_str_eq(p, "abc");
    ck_assert_uint_eq(p[3], '\0');
    src[0] = 'X';
    ck_assert_str_eq(p, "abc");

    const char nul[] = {'a', '\0', 'b', 'c'};
    char *q = pg_arena_strndup(a, nul, sizeof(nul));
    ck_assert_mem_eq(q, nul, sizeof(nul));
    ck_assert_uint_eq(q[sizeof(nul)], '\0');

    /* Not NUL-terminated input: only n bytes are read. */
    const char raw[4] = {'w', 'x', 'y', 'z'};
    ck_assert_str_eq(pg_arena_strndup(a, raw, 4), "wxyz");

    char *e = pg_arena_strndup(a, "", 0);
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(e, "");

    char *d = pg_arena_strdup(a, "hello");
    ck_assert_str_eq(d, "hello");
    /* n so large that n + 1 cannot be allocated: NULL, nothing read. */
    ck_assert_ptr_null(pg_arena_strndup(a, "x", SIZE_MAX - 1));
    pg_arena_destroy(a);
}
END_TEST

/* A rewind gives back exactly what was taken after the mark, across chunks,
 * and what was taken before it stays intact. */
START_TEST(arena_mark_rewind)
{
    pg_arena_t *a = pg_arena_new(1024);
    ck_assert_ptr_nonnull(a);
    char *keep = pg_arena_strdup(a, "kept");
    pg_arena_mark_t m = pg_arena_mark(a);
    size_t used = pg_arena_used(a);
    for (int i = 0; i < 50; i++) /* several chunks' worth */
        ck_assert_ptr_nonnull(pg_arena_alloc(a, 200));
    ck_assert_uint_gt(pg_arena_used(a), used + 9000);
    pg_arena_rewind(a, m);
    ck_assert_uint_eq(pg_arena_used(a), used);
    ck_assert_str_eq(keep, "kept");
    /* The next allocation continues where the mark was. */
    char *next = pg_arena_alloc(a, 16);
    ck_assert_ptr_nonnull(next);
    ck_assert_uint_eq(pg_arena_used(a), used + 16);
    /* Rewinding to a mark with nothing after it changes nothing. */
    m = pg_arena_mark(a);
    pg_arena_rewind(a, m);
    ck_assert_uint_eq(pg_arena_used(a), used + 16);
    pg_arena_destroy(a);
}
END_TEST

START_TEST(arena_destroy_null)
{
    pg_arena_destroy(NULL);
}
END_TEST

/* ---- pg_buf -------------------------------------------------------------- */

/* Appends grow the buffer (capacity doubling from 256) and keep every byte
 * appended so far in order. */
START_TEST(buf_append_grows)
{
    pg_buf_t b = {0};
    ck_assert_int_eq(pg_buf_append(&b, "ab", 2), 0);
    ck_assert_uint_eq(b.len, 2);
    ck_assert_uint_eq(b.cap, 256);
    ck_assert_mem_eq(b.data, "ab", 2);
    unsigned char chunk[100];
    size_t total = 2;
    for (int i = 0; i < 50; i++) {
        memset(chunk, i, sizeof(chunk));
        ck_assert_int_eq(pg_buf_append(&b, chunk, sizeof(chunk)), 0);
        total += sizeof(chunk);
        ck_assert_uint_eq(b.len, total);
        ck_assert_uint_ge(b.cap, b.len);
    }
    ck_assert_uint_eq(b.cap, 8192); /* 5002 bytes: 256 doubled five times */
    ck_assert_mem_eq(b.data, "ab", 2);
    for (int i = 0; i < 50; i++)
        for (size_t j = 0; j < sizeof(chunk); j++)
            ck_assert_uint_eq(b.data[2 + i * sizeof(chunk) + j], (unsigned)i);
    /* An empty append changes nothing (and takes no source). */
    ck_assert_int_eq(pg_buf_append(&b, NULL, 0), 0);
    ck_assert_uint_eq(b.len, total);
    pg_buf_free(&b);
}
END_TEST

/* reserve makes room without changing len; within capacity it keeps the
 * same storage; a reservation past the capacity grows it to a power of two
 * times 256 that fits. */
START_TEST(buf_reserve)
{
    pg_buf_t b = {0};
    ck_assert_int_eq(pg_buf_reserve(&b, 0), 0);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_int_eq(pg_buf_reserve(&b, 1000), 0);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_uint_eq(b.cap, 1024);
    uint8_t *data = b.data;
    ck_assert_ptr_nonnull(data);
    memset(b.data, 1, 1000);
    ck_assert_int_eq(pg_buf_reserve(&b, 1024), 0);
    ck_assert_ptr_eq(b.data, data); /* room enough already */
    ck_assert_int_eq(pg_buf_append(&b, "xyz", 3), 0);
    ck_assert_int_eq(pg_buf_reserve(&b, 1022), 0);
    ck_assert_uint_eq(b.cap, 2048);
    ck_assert_mem_eq(b.data, "xyz", 3);
    pg_buf_free(&b);
}
END_TEST

/* An append the buffer cannot grow for (extra past SIZE_MAX / 2 - len) fails
 * and leaves data, len and cap exactly as they were. */
START_TEST(buf_append_failure_leaves_buffer)
{
    pg_buf_t b = {0};
    ck_assert_int_eq(pg_buf_append(&b, "keep", 4), 0);
    pg_buf_t before = b;
    static const char src[1] = {'z'};
    ck_assert_int_eq(pg_buf_append(&b, src, SIZE_MAX / 2), PG_FATAL);
    ck_assert_int_eq(pg_buf_append(&b, src, SIZE_MAX), PG_FATAL);
    ck_assert_int_eq(pg_buf_reserve(&b, SIZE_MAX / 2 - 3), PG_FATAL);
    ck_assert_ptr_eq(b.data, before.data);
    ck_assert_uint_eq(b.len, before.len);
    ck_assert_uint_eq(b.cap, before.cap);
    ck_assert_mem_eq(b.data, "keep", 4);
    /* And the buffer works on afterwards. */
    ck_assert_int_eq(pg_buf_append(&b, "!", 1), 0);
    ck_assert_mem_eq(b.data, "keep!", 5);
    pg_buf_free(&b);

    /* On an empty buffer too: still no storage. */
    pg_buf_t e = {0};
    ck_assert_int_eq(pg_buf_reserve(&e, SIZE_MAX), PG_FATAL);
    ck_assert_ptr_null(e.data);
    ck_assert_uint_eq(e.len, 0);
    ck_assert_uint_eq(e.cap, 0);
}
END_TEST

/* reset empties the buffer and keeps its storage for the next appends. */
START_TEST(buf_reset)
{
    pg_buf_t b = {0};
    ck_assert_int_eq(pg_buf_append(&b, "0123456789", 10), 0);
    uint8_t *data = b.data;
    size_t cap = b.cap;
    pg_buf_reset(&b);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_uint_eq(b.cap, cap);
    ck_assert_int_eq(pg_buf_append(&b, "ab", 2), 0);
    ck_assert_uint_eq(b.len, 2);
    ck_assert_ptr_eq(b.data, data);
    ck_assert_mem_eq(b.data, "ab", 2);
    pg_buf_free(&b);
}
END_TEST

/* free is NULL-safe, leaves the buffer empty, and the buffer is reusable
 * (and freeable again) after it. */
START_TEST(buf_free_null_safe_and_reusable)
{
    pg_buf_free(NULL);
    pg_buf_t b = {0};
    pg_buf_free(&b); /* never used */
    ck_assert_ptr_null(b.data);
    ck_assert_int_eq(pg_buf_append(&b, "one", 3), 0);
    pg_buf_free(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_uint_eq(b.cap, 0);
    ck_assert_int_eq(pg_buf_append(&b, "two", 3), 0);
    ck_assert_uint_eq(b.len, 3);
    ck_assert_mem_eq(b.data, "two", 3);
    pg_buf_free(&b);
    pg_buf_free(&b); /* twice */
    ck_assert_ptr_null(b.data);
}
END_TEST

static Suite *mem_suite(void)
{
    Suite *s = suite_create("mem");
    TCase *a = tcase_create("arena");
    tcase_add_test(a, arena_mark_rewind);
    tcase_add_test(a, arena_alignment);
    tcase_add_test(a, arena_blocks_do_not_overlap);
    tcase_add_test(a, arena_reset_settles_on_one_chunk);
    tcase_add_test(a, arena_small_chunk_size_is_raised);
    tcase_add_test(a, arena_larger_than_chunk);
    tcase_add_test(a, arena_alloc_overflow);
    tcase_add_test(a, arena_calloc_overflow);
    tcase_add_test(a, arena_calloc_zeroes);
    tcase_add_test(a, arena_strndup);
    tcase_add_test(a, arena_destroy_null);
    suite_add_tcase(s, a);

    TCase *b = tcase_create("buf");
    tcase_add_test(b, buf_append_grows);
    tcase_add_test(b, buf_reserve);
    tcase_add_test(b, buf_append_failure_leaves_buffer);
    tcase_add_test(b, buf_reset);
    tcase_add_test(b, buf_free_null_safe_and_reusable);
    suite_add_tcase(s, b);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(mem_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

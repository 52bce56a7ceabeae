/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The codec's one reader: untrusted single-object bytes of any known version
 * into the structs of types.h, in one walk of the writer's table. Every value
 * is checked before it is stored or allocated for: varints (at most 10 bytes,
 * no overflow), lengths and block counts against the bytes left and the
 * caller's limits, union branches, enum indexes, UTF-8, non-empty ids. A
 * failure names the field and the body offset, and gives back to the arena
 * whatever the message had taken.
 *
 * Arrays may come in several blocks (Avro allows it; pinguard and fastavro
 * write one): items are read into one arena array that grows geometrically,
 * so a message of many one-item blocks costs at most twice its items.
 */
#include "codec_internal.h"

#include "utf8.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

typedef struct {
    const uint8_t *p, *end;
    const uint8_t *body; /* offsets in details are relative to the body */
    const pg_codec_limits_t *lim;
    pg_arena_t *arena;
    const char *field; /* innermost record field, for the detail */
    char *errbuf;
    size_t errlen;
} cur_t;

__attribute__((format(printf, 3, 4))) static int fail(cur_t *r, int code,
                                                      const char *fmt, ...)
{
    if (r->errbuf == NULL || r->errlen == 0)
        return code;
    int k = snprintf(r->errbuf, r->errlen, "%s%s", r->field ? r->field : "",
                     r->field ? ": " : "");
    if (k >= 0 && (size_t)k < r->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->errbuf + k, r->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return code;
}

static size_t off(const cur_t *r, const uint8_t *p)
{
    return (size_t)(p - r->body);
}

static size_t left(const cur_t *r)
{
    return (size_t)(r->end - r->p);
}

/* A zig-zag varint of at most 10 bytes; the last byte may carry only the bit
 * that still fits in 64. */
static int read_long(cur_t *r, int64_t *out)
{
    const uint8_t *start = r->p;
    uint64_t raw = 0;
    for (int i = 0;; i++) {
        if (r->p == r->end)
            return fail(r, PG_CODEC_ETRUNCATED,
                        "body ends inside a varint at body offset %zu", off(r, start));
        uint8_t b = *r->p++;
        if (i == 9 && b > 0x01)
            return fail(
                r, PG_CODEC_EVARINT,
                "varint at body offset %zu is longer than 10 bytes or overflows",
                off(r, start));
        raw |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0)
            break;
    }
    *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
    return 0;
}

static int read_string(cur_t *r, bool is_id, const char **out)
{
    const uint8_t *start = r->p;
    int64_t len;
    int rc = read_long(r, &len);
    if (rc != 0)
        return rc;
    if (len < 0)
        return fail(r, PG_CODEC_ELENGTH,
                    "length %" PRId64 " at body offset %zu is negative", len,
                    off(r, start));
    if ((uint64_t)len > left(r))
        return fail(r, PG_CODEC_ELENGTH,
                    "string length %" PRId64
                    " at body offset %zu exceeds the %zu bytes "
                    "left",
                    len, off(r, start), left(r));
    if ((uint64_t)len > r->lim->max_string)
        return fail(r, PG_CODEC_ELIMIT,
                    "string length %" PRId64 " at body offset %zu is over the limit of "
                    "%zu",
                    len, off(r, start), r->lim->max_string);
    size_t bad = pg_utf8_check(r->p, (size_t)len);
    if (bad != (size_t)len)
        return fail(r, PG_CODEC_EUTF8,
                    "string at body offset %zu has %s at body offset %zu",
                    off(r, start), r->p[bad] == 0 ? "a NUL byte" : "invalid UTF-8",
                    off(r, r->p + bad));
    /* An id's value (a null in its union never gets here) must name something.
     * The detail starts with the field's name, as the DLQ's pinguard-error
     * shows it. */
    if (is_id && len == 0)
        return pg_codec_fail(r->errbuf, r->errlen, PG_CODEC_EFIELD,
                             "%s is empty (body offset %zu)",
                             r->field ? r->field : "id", off(r, start));
    char *s = pg_arena_strndup(r->arena, (const char *)r->p, (size_t)len);
    if (s == NULL)
        return fail(r, PG_CODEC_ENOMEM, "out of memory for a %" PRId64 "-byte string",
                    len);
    r->p += len;
    *out = s;
    return 0;
}

/* The branch of a ["null", X]: *present is false for null. */
static int read_branch(cur_t *r, bool *present)
{
    const uint8_t *start = r->p;
    int64_t x;
    int rc = read_long(r, &x);
    if (rc != 0)
        return rc;
    if (x != PG_CODEC_BRANCH_NULL && x != PG_CODEC_BRANCH_VALUE)
        return fail(r, PG_CODEC_EUNION,
                    "union branch %" PRId64 " at body offset %zu, the union has 2", x,
                    off(r, start));
    *present = x == PG_CODEC_BRANCH_VALUE;
    return 0;
}

static int read_enum(cur_t *r, const pg_codec_enum_t *en, int *out)
{
    const uint8_t *start = r->p;
    int64_t x;
    int rc = read_long(r, &x);
    if (rc != 0)
        return rc;
    if (x < 0 || (uint64_t)x >= en->n)
        return fail(r, PG_CODEC_EENUM,
                    "enum index %" PRId64 " at body offset %zu, %s has %zu symbols", x,
                    off(r, start), en->name, en->n);
    *out = en->to_c[x];
    return 0;
}

static int read_rec(cur_t *r, const pg_codec_rec_t *rec, void *dst, int depth);

/* Blocks of items, ended by a zero count; a negative count is followed by the
 * block's size in bytes (Avro spec, "Complex Types"). */
static int read_array(cur_t *r, const pg_codec_rec_t *item, void *dst,
                      const pg_codec_slot_t *slot, int depth)
{
    const size_t size = item->layout->size;
    char *items = NULL;
    size_t total = 0, cap = 0;
    for (;;) {
        const uint8_t *start = r->p, *block_end = NULL;
        int64_t count, bytes = 0;
        int rc = read_long(r, &count);
        if (rc != 0)
            return rc;
        if (count == 0)
            break;
        if (count < 0) {
            if (count == INT64_MIN)
                return fail(r, PG_CODEC_ELENGTH,
                            "block count at body offset %zu overflows", off(r, start));
            count = -count;
            if ((rc = read_long(r, &bytes)) != 0)
                return rc;
            if (bytes < 0 || (uint64_t)bytes > left(r))
                return fail(r, PG_CODEC_ELENGTH,
                            "block size %" PRId64 " at body offset %zu is negative or "
                            "exceeds the %zu bytes left",
                            bytes, off(r, start), left(r));
            block_end = r->p + bytes;
        }
        /* Every item takes at least min_size bytes, so a count the rest of
         * the message cannot hold is a lie, whatever the limits say. */
        if ((uint64_t)count > left(r) / (item->min_size ? item->min_size : 1))
            return fail(r, PG_CODEC_ELENGTH,
                        "block of %" PRId64 " items at body offset %zu cannot fit in "
                        "the %zu bytes left",
                        count, off(r, start), left(r));
        if ((uint64_t)count > r->lim->max_items - total)
            return fail(r, PG_CODEC_ELIMIT,
                        "more than %zu items in the array at body offset %zu",
                        r->lim->max_items, off(r, start));
        if (total + (size_t)count > cap) {
            size_t want = total + (size_t)count;
            size_t grown = total > 0 && want < 2 * cap ? 2 * cap : want;
            char *bigger = pg_arena_calloc(r->arena, grown, size);
            if (bigger == NULL)
                return fail(r, PG_CODEC_ENOMEM, "out of memory for %zu items", grown);
            if (total > 0)
                memcpy(bigger, items, total * size);
            items = bigger;
            cap = grown;
        }
        const char *field = r->field;
        const uint8_t *block_start = r->p;
        for (int64_t i = 0; i < count; i++) {
            if ((rc = read_rec(r, item, items + (total + (size_t)i) * size,
                               depth + 1)) != 0)
                return rc;
            r->field = field;
        }
        total += (size_t)count;
        if (block_end != NULL && r->p != block_end)
            return fail(r, PG_CODEC_ELENGTH,
                        "block at body offset %zu declares %" PRId64 " bytes but holds "
                        "%zu",
                        off(r, start), bytes, (size_t)(r->p - block_start));
    }
    pg_codec_put_ptr(dst, slot->off, items);
    memcpy((char *)dst + slot->aux, &total, sizeof(total));
    return 0;
}

static int read_rec(cur_t *r, const pg_codec_rec_t *rec, void *dst, int depth)
{
    if (depth > PG_MAX_DEPTH)
        return fail(r, PG_CODEC_ELIMIT, "values nested deeper than %d", PG_MAX_DEPTH);
    for (size_t i = 0; i < rec->n; i++) {
        const pg_codec_field_t *f = &rec->fields[i];
        const pg_codec_slot_t *slot = f->slot;
        char *at = (char *)dst + slot->off;
        const char *str = NULL;
        bool present = true;
        int64_t x;
        int e = 0, rc = 0;
        r->field = f->name;
        switch (slot->kind) {
        case PG_K_OPT_STR:
            if ((rc = read_branch(r, &present)) != 0 || !present)
                break;
            /* fall through */
        case PG_K_STR:
            if ((rc = read_string(r, slot->is_id, &str)) == 0)
                pg_codec_put_ptr(dst, slot->off, str);
            break;
        case PG_K_LONG:
            if ((rc = read_long(r, &x)) == 0)
                memcpy(at, &x, sizeof(x));
            break;
        case PG_K_OPT_LONG: {
            pg_opt_long_t v = {false, 0};
            if ((rc = read_branch(r, &v.present)) == 0 && v.present)
                rc = read_long(r, &v.value);
            if (rc == 0)
                memcpy(at, &v, sizeof(v));
            break;
        }
        case PG_K_OPT_ENUM:
            if ((rc = read_branch(r, &present)) != 0)
                break;
            memcpy((char *)dst + slot->aux, &present, sizeof(present));
            if (!present)
                break;
            /* fall through */
        case PG_K_ENUM:
            if ((rc = read_enum(r, f->en, &e)) == 0)
                memcpy(at, &e, sizeof(e));
            break;
        case PG_K_OPT_DOUBLE: {
            if ((rc = read_branch(r, &present)) != 0)
                break;
            memcpy((char *)dst + slot->aux, &present, sizeof(present));
            if (!present)
                break;
            if (left(r) < 8) {
                rc = fail(r, PG_CODEC_ETRUNCATED,
                          "body ends inside a double at body offset %zu (%zu of 8 "
                          "bytes)",
                          off(r, r->p), left(r));
                break;
            }
            uint64_t bits = 0;
            for (int k = 7; k >= 0; k--) /* little-endian on the wire */
                bits = (bits << 8) | r->p[k];
            double v;
            memcpy(&v, &bits, sizeof(v));
            memcpy(at, &v, sizeof(v));
            r->p += 8;
            break;
        }
        case PG_K_ARRAY:
            rc = read_array(r, f->sub, dst, slot, depth);
            break;
        case PG_K_RECORD:
            rc = read_rec(r, f->sub, at, depth + 1);
            break;
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

int pg_codec_decode(const pg_codec_t *c, const uint8_t *buf, size_t len,
                    const pg_codec_limits_t *lim, pg_arena_t *arena, pg_record_t *out,
                    char *errbuf, size_t errlen)
{
    const pg_codec_limits_t dflt = PG_CODEC_LIMITS_DEFAULT;
    int rc, version;
    pg_record_type_t t;
    memset(out, 0, sizeof(*out));
    const pg_codec_schema_t *s =
        pg_codec_lookup(c, buf, len, &version, &t, &rc, errbuf, errlen);
    if (s == NULL)
        return rc;
    cur_t r = {.p = buf + PG_CODEC_HEADER_LEN,
               .end = buf + len,
               .body = buf + PG_CODEC_HEADER_LEN,
               .lim = lim != NULL ? lim : &dflt,
               .arena = arena,
               .errbuf = errbuf,
               .errlen = errlen};
    pg_arena_mark_t mark = pg_arena_mark(arena);
    rc = read_rec(&r, s->root, &out->u, 0);
    if (rc == 0 && r.p != r.end)
        rc = pg_codec_fail(errbuf, errlen, PG_CODEC_ETRAILING,
                           "%zu bytes after the %s body, which ends at body offset %zu",
                           left(&r), pg_record_type_name(t), off(&r, r.p));
    if (rc != 0) {
        pg_arena_rewind(arena, mark);
        memset(out, 0, sizeof(*out));
        return rc;
    }
    out->type = t;
    out->version = version;
    return 0;
}

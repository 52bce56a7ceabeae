/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The codec's one writer: a struct of types.h to the single-object bytes of a
 * chosen version, walking that version's table. Fields the version lacks are
 * left out; a value it cannot hold (a symbol it lacks, a NULL where it has no
 * null, a string that is not UTF-8) fails the whole message, so nothing a
 * reader of that version would refuse is ever produced.
 */
#include "codec_internal.h"

#include "utf8.h"

static int put_long(pg_buf_t *b, int64_t v)
{
    uint8_t tmp[10];
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 0;
    while (u & ~(uint64_t)0x7f) {
        tmp[n++] = (uint8_t)((u & 0x7f) | 0x80);
        u >>= 7;
    }
    tmp[n++] = (uint8_t)u;
    return pg_buf_append(b, tmp, n) == PG_OK ? 0 : PG_CODEC_ENOMEM;
}

static int put_string(pg_buf_t *b, const pg_codec_field_t *f, const char *s,
                      char *errbuf, size_t errlen)
{
    if (s == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "field %s is NULL but the schema has no null", f->name);
    size_t len = strlen(s);
    if (pg_utf8_check((const uint8_t *)s, len) != len)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EUTF8,
                             "field %s: invalid UTF-8, which no reader would accept",
                             f->name);
    if (put_long(b, (int64_t)len) != 0 || pg_buf_append(b, s, len) != PG_OK)
        return PG_CODEC_ENOMEM;
    return 0;
}

static int put_enum(pg_buf_t *b, const pg_codec_field_t *f, int e, int version,
                    char *errbuf, size_t errlen)
{
    const pg_codec_enum_t *en = f->en;
    if (e < 0 || (size_t)e >= en->n_c || en->from_c[e] < 0)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "field %s: value %d is not a symbol of %s in version %d",
                             f->name, e, en->name, version);
    return put_long(b, en->from_c[e]);
}

static int write_rec(const pg_codec_rec_t *rec, const void *src, int version,
                     pg_buf_t *out, char *errbuf, size_t errlen)
{
    for (size_t i = 0; i < rec->n; i++) {
        const pg_codec_field_t *f = &rec->fields[i];
        const pg_codec_slot_t *slot = f->slot;
        const char *at = (const char *)src + slot->off;
        bool present = true;
        int e, rc = 0;
        switch (slot->kind) {
        case PG_K_OPT_STR:
            present = pg_codec_get_ptr(src, slot->off) != NULL;
            break;
        case PG_K_OPT_LONG: {
            pg_opt_long_t v;
            memcpy(&v, at, sizeof(v));
            present = v.present;
            break;
        }
        case PG_K_OPT_ENUM:
        case PG_K_OPT_DOUBLE:
            memcpy(&present, (const char *)src + slot->aux, sizeof(present));
            break;
        default:
            break;
        }
        if (slot->kind == PG_K_OPT_STR || slot->kind == PG_K_OPT_LONG ||
            slot->kind == PG_K_OPT_ENUM || slot->kind == PG_K_OPT_DOUBLE) {
            if (put_long(out, present ? PG_CODEC_BRANCH_VALUE : PG_CODEC_BRANCH_NULL) !=
                0)
                return PG_CODEC_ENOMEM;
            if (!present)
                continue;
        }
        switch (slot->kind) {
        case PG_K_STR:
        case PG_K_OPT_STR:
            rc = put_string(out, f, pg_codec_get_ptr(src, slot->off), errbuf, errlen);
            break;
        case PG_K_LONG: {
            int64_t x;
            memcpy(&x, at, sizeof(x));
            rc = put_long(out, x);
            break;
        }
        case PG_K_OPT_LONG: {
            pg_opt_long_t v;
            memcpy(&v, at, sizeof(v));
            rc = put_long(out, v.value);
            break;
        }
        case PG_K_ENUM:
        case PG_K_OPT_ENUM:
            memcpy(&e, at, sizeof(e));
            rc = put_enum(out, f, e, version, errbuf, errlen);
            break;
        case PG_K_OPT_DOUBLE: {
            double x;
            uint64_t bits;
            uint8_t le[8];
            memcpy(&x, at, sizeof(x));
            memcpy(&bits, &x, sizeof(bits));
            for (int k = 0; k < 8; k++)
                le[k] = (uint8_t)(bits >> (8 * k));
            rc = pg_buf_append(out, le, sizeof(le)) == PG_OK ? 0 : PG_CODEC_ENOMEM;
            break;
        }
        case PG_K_ARRAY: {
            size_t count;
            const char *items = pg_codec_get_ptr(src, slot->off);
            memcpy(&count, (const char *)src + slot->aux, sizeof(count));
            if (count > 0 && items == NULL)
                return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                                     "field %s: %zu items but no array", f->name,
                                     count);
            /* One block of count items, then the empty block that ends it. */
            if (count > 0 && put_long(out, (int64_t)count) != 0)
                return PG_CODEC_ENOMEM;
            for (size_t k = 0; k < count && rc == 0; k++)
                rc = write_rec(f->sub, items + k * f->sub->layout->size, version, out,
                               errbuf, errlen);
            if (rc == 0)
                rc = put_long(out, 0);
            break;
        }
        case PG_K_RECORD:
            rc = write_rec(f->sub, at, version, out, errbuf, errlen);
            break;
        }
        if (rc != 0) {
            if (rc == PG_CODEC_ENOMEM)
                pg_codec_fail(errbuf, errlen, rc, "field %s: out of memory", f->name);
            return rc;
        }
    }
    return 0;
}

int pg_codec_write(const pg_codec_schema_t *s, const void *src, pg_buf_t *out,
                   char *errbuf, size_t errlen)
{
    size_t start = out->len;
    uint8_t h[PG_CODEC_HEADER_LEN] = {0xc3, 0x01};
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(s->fingerprint >> (8 * i));
    int rc = pg_buf_append(out, h, sizeof(h)) == PG_OK ? 0 : PG_CODEC_ENOMEM;
    if (rc == 0)
        rc = write_rec(s->root, src, s->version, out, errbuf, errlen);
    else
        pg_codec_fail(errbuf, errlen, rc, "no memory for a message header");
    if (rc != 0)
        out->len = start; /* nothing half-written is left behind */
    return rc;
}

int pg_codec_encode_version(const pg_codec_t *c, int version, const pg_record_t *rec,
                            pg_buf_t *out, char *errbuf, size_t errlen)
{
    if ((unsigned)rec->type >= PG_REC_COUNT)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "record type %d is unknown", (int)rec->type);
    const pg_codec_schema_t *s = pg_codec_schema(c, version, rec->type);
    if (s == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "schema version %d has no %s", version,
                             pg_record_type_name(rec->type));
    return pg_codec_write(s, &rec->u, out, errbuf, errlen);
}

int pg_codec_encode(const pg_codec_t *c, const pg_record_t *rec, pg_buf_t *out,
                    char *errbuf, size_t errlen)
{
    return pg_codec_encode_version(c, PG_CODEC_VERSION, rec, out, errbuf, errlen);
}

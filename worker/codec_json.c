/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Avro's JSON encoding, for the `pinguard avro` tools and for tests. JSON is
 * turned into the structs of types.h by walking a version's table, then
 * written by the codec's one writer; bytes are read by its one reader, then
 * turned into JSON in a version's shape. So the tools accept and produce
 * exactly what the worker does.
 *
 * Input is forgiving where the intent is unambiguous: an optional value may
 * come untagged, a named branch may be tagged by its short name, and a
 * missing field takes its schema default. Output is strict Avro JSON
 * (branches tagged by full name, as fastavro and Java expect).
 */
#include "codec_internal.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int version; /* of the table walked */
    pg_arena_t *arena;
    char *errbuf;
    size_t errlen;
    char path[160]; /* where in the document we are, for the detail */
    size_t path_len;
} jctx_t;

__attribute__((format(printf, 2, 3))) static int jfail(jctx_t *x, const char *fmt, ...)
{
    if (x->errbuf == NULL || x->errlen == 0)
        return PG_CODEC_EFIELD;
    int k = x->path_len ? snprintf(x->errbuf, x->errlen, "%s: ", x->path) : 0;
    if (k >= 0 && (size_t)k < x->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->errbuf + k, x->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return PG_CODEC_EFIELD;
}

/* Appends ".name" or "[i]" to the path; returns the mark to restore. */
__attribute__((format(printf, 2, 3))) static size_t path_push(jctx_t *x,
                                                              const char *fmt, ...)
{
    size_t mark = x->path_len;
    if (mark < sizeof(x->path) - 1) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(x->path + mark, sizeof(x->path) - mark, fmt, ap);
        va_end(ap);
        if (k > 0)
            x->path_len += (size_t)k < sizeof(x->path) - mark
                               ? (size_t)k
                               : sizeof(x->path) - 1 - mark;
    }
    return mark;
}

static void path_pop(jctx_t *x, size_t mark)
{
    x->path_len = mark;
    x->path[mark] = '\0';
}

static int nomem(jctx_t *x)
{
    jfail(x, "out of memory");
    return PG_CODEC_ENOMEM;
}

/* The tag of an optional field's value branch in Avro JSON. */
static const char *branch_tag(const pg_codec_field_t *f)
{
    switch (f->slot->kind) {
    case PG_K_OPT_STR:
        return "string";
    case PG_K_OPT_LONG:
        return "long";
    case PG_K_OPT_DOUBLE:
        return "double";
    case PG_K_OPT_ENUM:
        return f->en->name;
    default:
        return NULL;
    }
}

static bool tag_matches(const char *full, const char *tag)
{
    if (strcmp(full, tag) == 0)
        return true;
    const char *dot = strrchr(full, '.');
    return dot != NULL && strcmp(dot + 1, tag) == 0;
}

static int symbol_index(const pg_codec_enum_t *en, const char *sym)
{
    for (size_t i = 0; i < en->n; i++)
        if (strcmp(en->symbols[i], sym) == 0)
            return (int)i;
    return -1;
}

/* ---- JSON to struct --------------------------------------------------------- */

static int fill_rec(jctx_t *x, const pg_codec_rec_t *rec, json_t *j, void *dst,
                    int depth);

/* The value of a field (an optional's value branch, already untagged). */
static int fill_value(jctx_t *x, const pg_codec_field_t *f, json_t *j, void *dst,
                      int depth)
{
    const pg_codec_slot_t *slot = f->slot;
    char *at = (char *)dst + slot->off;
    switch (slot->kind) {
    case PG_K_STR:
    case PG_K_OPT_STR:
        if (!json_is_string(j))
            return jfail(x, "expected a string");
        /* jansson has checked the UTF-8 and refused \u0000; the string lives
         * as long as the document. */
        pg_codec_put_ptr(dst, slot->off, json_string_value(j));
        return 0;
    case PG_K_LONG:
    case PG_K_OPT_LONG: {
        if (!json_is_integer(j))
            return jfail(x, "expected a long");
        int64_t v = json_integer_value(j);
        if (slot->kind == PG_K_LONG) {
            memcpy(at, &v, sizeof(v));
        } else {
            pg_opt_long_t o = {true, v};
            memcpy(at, &o, sizeof(o));
        }
        return 0;
    }
    case PG_K_ENUM:
    case PG_K_OPT_ENUM: {
        if (!json_is_string(j))
            return jfail(x, "expected a symbol of %s", f->en->name);
        int i = symbol_index(f->en, json_string_value(j));
        if (i < 0)
            return jfail(x, "%s is not a symbol of %s", json_string_value(j),
                         f->en->name);
        int e = f->en->to_c[i];
        memcpy(at, &e, sizeof(e));
        return 0;
    }
    case PG_K_OPT_DOUBLE: {
        if (!json_is_number(j))
            return jfail(x, "expected a double");
        double v = json_number_value(j);
        memcpy(at, &v, sizeof(v));
        return 0;
    }
    case PG_K_ARRAY: {
        if (!json_is_array(j))
            return jfail(x, "expected an array");
        size_t n = json_array_size(j), i;
        size_t size = f->sub->layout->size;
        char *items = n > 0 ? pg_arena_calloc(x->arena, n, size) : NULL;
        json_t *item;
        if (n > 0 && items == NULL)
            return nomem(x);
        json_array_foreach(j, i, item)
        {
            size_t mark = path_push(x, "[%zu]", i);
            int rc = fill_rec(x, f->sub, item, items + i * size, depth + 1);
            if (rc != 0)
                return rc;
            path_pop(x, mark);
        }
        pg_codec_put_ptr(dst, slot->off, items);
        memcpy((char *)dst + slot->aux, &n, sizeof(n));
        return 0;
    }
    case PG_K_RECORD:
        return fill_rec(x, f->sub, j, at, depth + 1);
    }
    return jfail(x, "unsupported field");
}

/* Could j be the value of f's value branch, judged by its JSON shape? */
static bool fits(const pg_codec_field_t *f, json_t *j)
{
    switch (f->slot->kind) {
    case PG_K_OPT_STR:
        return json_is_string(j);
    case PG_K_OPT_LONG:
        return json_is_integer(j);
    case PG_K_OPT_DOUBLE:
        return json_is_number(j);
    case PG_K_OPT_ENUM:
        return json_is_string(j) && symbol_index(f->en, json_string_value(j)) >= 0;
    default:
        return false;
    }
}

static int fill_field(jctx_t *x, const pg_codec_field_t *f, json_t *j, void *dst,
                      int depth)
{
    const pg_codec_slot_t *slot = f->slot;
    const char *tag = branch_tag(f);
    if (tag == NULL)
        return fill_value(x, f, j, dst, depth);
    if (json_is_null(j))
        return 0; /* the struct is zero: null */
    bool tagged = false;
    if (json_object_size(j) == 1) {
        void *it = json_object_iter(j);
        if ((tagged = tag_matches(tag, json_object_iter_key(it))))
            j = json_object_iter_value(it);
    }
    /* A tagged value is that branch's, and its errors say why; an untagged
     * one must fit the branch. */
    if (!tagged && !fits(f, j))
        return jfail(x, "the value fits no branch of the union");
    int rc = fill_value(x, f, j, dst, depth);
    if (rc == 0 && (slot->kind == PG_K_OPT_ENUM || slot->kind == PG_K_OPT_DOUBLE)) {
        bool present = true;
        memcpy((char *)dst + slot->aux, &present, sizeof(present));
    }
    return rc;
}

static int fill_rec(jctx_t *x, const pg_codec_rec_t *rec, json_t *j, void *dst,
                    int depth)
{
    const char *key;
    json_t *val;
    if (depth > PG_MAX_DEPTH)
        return jfail(x, "nested deeper than %d", PG_MAX_DEPTH);
    if (!json_is_object(j))
        return jfail(x, "expected an object for %s", rec->name);
    /* A misspelt optional field would otherwise vanish into its default. */
    json_object_foreach(j, key, val)
    {
        size_t i = 0;
        while (i < rec->n && strcmp(rec->fields[i].name, key) != 0)
            i++;
        if (i == rec->n)
            return jfail(x, "%s has no field %s", rec->name, key);
    }
    for (size_t i = 0; i < rec->n; i++) {
        const pg_codec_field_t *f = &rec->fields[i];
        json_t *fj = json_object_get(j, f->name);
        size_t mark = path_push(x, "%s%s", x->path_len ? "." : "", f->name);
        int rc = 0;
        if (fj != NULL)
            rc = fill_field(x, f, fj, dst, depth);
        else if (!f->null_default) {
            path_pop(x, mark);
            return jfail(x, "missing field %s", f->name);
        }
        if (rc != 0)
            return rc;
        path_pop(x, mark);
    }
    return 0;
}

int pg_codec_from_json(const pg_codec_t *c, int version, pg_record_type_t t,
                       const char *json, size_t len, pg_buf_t *out, char *errbuf,
                       size_t errlen)
{
    jctx_t x = {.errbuf = errbuf, .errlen = errlen};
    json_error_t jerr;
    pg_record_t rec;
    int rc;

    if ((unsigned)t >= PG_REC_COUNT)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "record type %d is unknown", (int)t);
    const pg_codec_schema_t *s = pg_codec_schema(c, version, t);
    if (s == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "schema version %d has no %s", version,
                             pg_record_type_name(t));
    if (json == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD, "no JSON text");
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "JSON line %d column %d: %s", jerr.line, jerr.column,
                             jerr.text);
    if ((x.arena = pg_arena_new(4096)) == NULL) {
        json_decref(root);
        return pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM, "out of memory");
    }
    memset(&rec, 0, sizeof(rec));
    rec.type = t;
    rc = fill_rec(&x, s->root, root, &rec.u, 0);
    if (rc == 0)
        rc = pg_codec_write(s, &rec.u, out, errbuf, errlen);
    pg_arena_destroy(x.arena);
    json_decref(root);
    return rc;
}

/* ---- Struct to JSON --------------------------------------------------------- */

static json_t *rec_json(jctx_t *x, const pg_codec_rec_t *rec, const void *src, int *rc,
                        int depth);

static json_t *value_json(jctx_t *x, const pg_codec_field_t *f, const void *src,
                          int *rc, int depth)
{
    const pg_codec_slot_t *slot = f->slot;
    const char *at = (const char *)src + slot->off;
    switch (slot->kind) {
    case PG_K_STR:
    case PG_K_OPT_STR: {
        const char *s = pg_codec_get_ptr(src, slot->off);
        return json_string(s);
    }
    case PG_K_LONG: {
        int64_t v;
        memcpy(&v, at, sizeof(v));
        return json_integer(v);
    }
    case PG_K_OPT_LONG: {
        pg_opt_long_t v;
        memcpy(&v, at, sizeof(v));
        return json_integer(v.value);
    }
    case PG_K_ENUM:
    case PG_K_OPT_ENUM: {
        int e;
        memcpy(&e, at, sizeof(e));
        if (e < 0 || (size_t)e >= f->en->n_c || f->en->from_c[e] < 0) {
            *rc = jfail(x, "value %d is not a symbol of %s in version %d", e,
                        f->en->name, x->version);
            return NULL;
        }
        return json_string(f->en->symbols[f->en->from_c[e]]);
    }
    case PG_K_OPT_DOUBLE: {
        double v;
        memcpy(&v, at, sizeof(v));
        json_t *j = json_real(v);
        /* jansson has no NaN or infinity, and neither has strict JSON. */
        if (j == NULL)
            *rc = jfail(x, "%g has no JSON form", v);
        return j;
    }
    case PG_K_ARRAY: {
        size_t n;
        const char *items = pg_codec_get_ptr(src, slot->off);
        memcpy(&n, (const char *)src + slot->aux, sizeof(n));
        json_t *a = json_array();
        if (a == NULL)
            return NULL;
        for (size_t i = 0; i < n; i++) {
            json_t *item =
                rec_json(x, f->sub, items + i * f->sub->layout->size, rc, depth + 1);
            if (item == NULL || json_array_append_new(a, item) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case PG_K_RECORD:
        return rec_json(x, f->sub, at, rc, depth + 1);
    }
    return NULL;
}

static bool field_present(const pg_codec_field_t *f, const void *src)
{
    const pg_codec_slot_t *slot = f->slot;
    bool present = true;
    if (slot->kind == PG_K_OPT_STR) {
        present = pg_codec_get_ptr(src, slot->off) != NULL;
    } else if (slot->kind == PG_K_OPT_LONG) {
        pg_opt_long_t v;
        memcpy(&v, (const char *)src + slot->off, sizeof(v));
        present = v.present;
    } else if (slot->kind == PG_K_OPT_ENUM || slot->kind == PG_K_OPT_DOUBLE) {
        memcpy(&present, (const char *)src + slot->aux, sizeof(present));
    }
    return present;
}

static json_t *rec_json(jctx_t *x, const pg_codec_rec_t *rec, const void *src, int *rc,
                        int depth)
{
    if (depth > PG_MAX_DEPTH) {
        *rc = jfail(x, "nested deeper than %d", PG_MAX_DEPTH);
        return NULL;
    }
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    for (size_t i = 0; i < rec->n; i++) {
        const pg_codec_field_t *f = &rec->fields[i];
        const char *tag = branch_tag(f);
        json_t *v;
        if (tag != NULL && !field_present(f, src)) {
            v = json_null();
        } else {
            v = value_json(x, f, src, rc, depth);
            if (v != NULL && tag != NULL) {
                json_t *tagged = json_object();
                if (tagged == NULL || json_object_set_new(tagged, tag, v) != 0) {
                    json_decref(tagged);
                    v = NULL;
                } else {
                    v = tagged;
                }
            }
        }
        if (v == NULL || json_object_set_new(o, f->name, v) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

int pg_codec_to_json(const pg_codec_t *c, int version, const uint8_t *buf, size_t len,
                     const pg_codec_limits_t *lim, char **json_out,
                     pg_record_type_t *type_out, char *errbuf, size_t errlen)
{
    jctx_t x = {.errbuf = errbuf, .errlen = errlen};
    pg_record_t rec;
    json_t *j = NULL;
    int rc;

    *json_out = NULL;
    if ((x.arena = pg_arena_new(4096)) == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM, "out of memory");
    rc = pg_codec_decode(c, buf, len, lim, x.arena, &rec, errbuf, errlen);
    const pg_codec_schema_t *s = rc == 0 ? pg_codec_schema(c, version, rec.type) : NULL;
    if (rc == 0 && s == NULL)
        rc = pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                           "schema version %d has no %s", version,
                           pg_record_type_name(rec.type));
    if (rc == 0) {
        x.version = s->version;
        j = rec_json(&x, s->root, &rec.u, &rc, 0);
        if (j == NULL && rc == 0)
            rc = pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM,
                               "out of memory building JSON");
    }
    if (j != NULL) {
        /* One line, ASCII only (\u escapes), fields in schema order. */
        *json_out = json_dumps(j, JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER);
        rc = *json_out != NULL ? 0
                               : pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM,
                                               "out of memory dumping JSON");
    }
    if (rc == 0 && type_out != NULL)
        *type_out = rec.type;
    json_decref(j);
    pg_arena_destroy(x.arena);
    return rc;
}

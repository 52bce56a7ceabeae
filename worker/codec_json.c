/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Avro's JSON encoding, for the `pinguard avro` tools and for tests: JSON text
 * to single-object bytes and back. Both directions walk the codec's compiled
 * schema graph next to an avro-c generic value, so they follow exactly the
 * schemas the binary codec uses.
 *
 * Input is forgiving where the intent is unambiguous: a union value may come
 * untagged when exactly one non-null branch fits, a named branch may be tagged
 * by its short name, and a missing field takes its schema default. Output is
 * strict Avro JSON (branches tagged by full name, as fastavro and Java expect;
 * avro-c's own avro_value_to_json tags them by short name, which both reject).
 */
#include "codec_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_DEPTH PG_MAX_DEPTH

typedef struct {
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

/* The name a union branch is tagged with in Avro JSON. */
static const char *type_name(const pg_codec_node_t *n)
{
    switch (n->type) {
    case AVRO_NULL:
        return "null";
    case AVRO_BOOLEAN:
        return "boolean";
    case AVRO_INT32:
        return "int";
    case AVRO_INT64:
        return "long";
    case AVRO_FLOAT:
        return "float";
    case AVRO_DOUBLE:
        return "double";
    case AVRO_BYTES:
        return "bytes";
    case AVRO_STRING:
        return "string";
    case AVRO_ARRAY:
        return "array";
    case AVRO_MAP:
        return "map";
    default:
        return n->name != NULL ? n->name : "?";
    }
}

static bool tag_matches(const pg_codec_node_t *n, const char *tag)
{
    const char *full = type_name(n);
    if (strcmp(full, tag) == 0)
        return true;
    if (n->name == NULL)
        return false;
    const char *dot = strrchr(n->name, '.');
    return dot != NULL && strcmp(dot + 1, tag) == 0;
}

static int symbol_index(const pg_codec_node_t *n, const char *sym)
{
    for (size_t i = 0; i < n->n; i++)
        if (strcmp(n->names[i], sym) == 0)
            return (int)i;
    return -1;
}

/* Could j be a value of n, judged by its JSON shape alone? */
static bool fits(const pg_codec_node_t *n, json_t *j)
{
    switch (n->type) {
    case AVRO_NULL:
        return json_is_null(j);
    case AVRO_BOOLEAN:
        return json_is_boolean(j);
    case AVRO_INT32:
        return json_is_integer(j) && json_integer_value(j) >= INT32_MIN &&
               json_integer_value(j) <= INT32_MAX;
    case AVRO_INT64:
        return json_is_integer(j);
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
        return json_is_number(j);
    case AVRO_STRING:
        return json_is_string(j);
    case AVRO_ENUM:
        return json_is_string(j) && symbol_index(n, json_string_value(j)) >= 0;
    case AVRO_ARRAY:
        return json_is_array(j);
    case AVRO_MAP:
    case AVRO_RECORD:
        return json_is_object(j);
    default:
        return false;
    }
}

static int fill(jctx_t *x, const pg_codec_node_t *n, json_t *j, avro_value_t *v,
                int depth);

static int internal(jctx_t *x)
{
    jfail(x, "avro-c: %s", avro_strerror());
    return PG_CODEC_EINTERNAL;
}

static int fill_branch(jctx_t *x, const pg_codec_node_t *n, int branch, json_t *j,
                       avro_value_t *v, int depth)
{
    avro_value_t bv;
    if (avro_value_set_branch(v, branch, &bv) != 0)
        return internal(x);
    return fill(x, n->kids[branch], j, &bv, depth + 1);
}

static int fill_union(jctx_t *x, const pg_codec_node_t *n, json_t *j, avro_value_t *v,
                      int depth)
{
    if (json_is_null(j)) {
        if (n->null_branch < 0)
            return jfail(x, "null is not one of the union's branches");
        return fill_branch(x, n, n->null_branch, j, v, depth);
    }
    if (json_is_object(j) && json_object_size(j) == 1) {
        void *it = json_object_iter(j);
        const char *tag = json_object_iter_key(it);
        for (size_t i = 0; i < n->n; i++)
            if (tag_matches(n->kids[i], tag))
                return fill_branch(x, n, (int)i, json_object_iter_value(it), v, depth);
    }
    int found = -1, count = 0;
    for (size_t i = 0; i < n->n; i++) {
        if ((int)i != n->null_branch && fits(n->kids[i], j)) {
            found = (int)i;
            count++;
        }
    }
    if (count == 0)
        return jfail(x, "the value fits no branch of the union");
    if (count > 1)
        return jfail(
            x, "the value fits %d branches of the union; tag it, as in {\"%s\": ...}",
            count, type_name(n->kids[found]));
    return fill_branch(x, n, found, j, v, depth);
}

static int fill_record(jctx_t *x, const pg_codec_node_t *n, json_t *j, avro_value_t *v,
                       int depth)
{
    const char *key;
    json_t *val;
    if (!json_is_object(j))
        return jfail(x, "expected an object for %s", n->name);
    /* A misspelt optional field would otherwise vanish into its default. */
    json_object_foreach(j, key, val)
    {
        size_t i = 0;
        while (i < n->n && strcmp(n->names[i], key) != 0)
            i++;
        if (i == n->n)
            return jfail(x, "%s has no field %s", n->name, key);
    }
    for (size_t i = 0; i < n->n; i++) {
        avro_value_t fv;
        json_t *fj = json_object_get(j, n->names[i]);
        size_t mark = path_push(x, "%s%s", x->path_len ? "." : "", n->names[i]);
        int rc;
        if (avro_value_get_by_index(v, i, &fv, NULL) != 0)
            return internal(x);
        if (fj != NULL) {
            rc = fill(x, n->kids[i], fj, &fv, depth + 1);
        } else if (n->defaults[i] != NULL) {
            /* A union's default is a value of its first branch, untagged. */
            if (n->kids[i]->type == AVRO_UNION)
                rc = fill_branch(x, n->kids[i], 0, n->defaults[i], &fv, depth + 1);
            else
                rc = fill(x, n->kids[i], n->defaults[i], &fv, depth + 1);
        } else {
            path_pop(x, mark);
            return jfail(x, "missing field %s", n->names[i]);
        }
        if (rc != 0)
            return rc;
        path_pop(x, mark);
    }
    return 0;
}

static int fill(jctx_t *x, const pg_codec_node_t *n, json_t *j, avro_value_t *v,
                int depth)
{
    int rc = 0;
    if (depth > MAX_DEPTH)
        return jfail(x, "nested deeper than %d", MAX_DEPTH);
    if (n->type != AVRO_UNION && n->type != AVRO_RECORD && !fits(n, j)) {
        if (n->type == AVRO_ENUM && json_is_string(j))
            return jfail(x, "%s is not a symbol of %s", json_string_value(j), n->name);
        return jfail(x, "expected %s%s", n->type == AVRO_ENUM ? "a symbol of " : "a ",
                     type_name(n));
    }
    switch (n->type) {
    case AVRO_NULL:
        rc = avro_value_set_null(v);
        break;
    case AVRO_BOOLEAN:
        rc = avro_value_set_boolean(v, json_is_true(j));
        break;
    case AVRO_INT32:
        rc = avro_value_set_int(v, (int32_t)json_integer_value(j));
        break;
    case AVRO_INT64:
        rc = avro_value_set_long(v, json_integer_value(j));
        break;
    case AVRO_FLOAT:
        rc = avro_value_set_float(v, (float)json_number_value(j));
        break;
    case AVRO_DOUBLE:
        rc = avro_value_set_double(v, json_number_value(j));
        break;
    case AVRO_STRING:
        /* jansson has checked the UTF-8 and refused \u0000. The size counts
         * the NUL, as avro-c wants. */
        rc = avro_value_set_string_len(v, json_string_value(j),
                                       json_string_length(j) + 1);
        break;
    case AVRO_ENUM:
        rc = avro_value_set_enum(v, symbol_index(n, json_string_value(j)));
        break;
    case AVRO_ARRAY: {
        size_t i;
        json_t *item;
        json_array_foreach(j, i, item)
        {
            avro_value_t iv;
            size_t mark = path_push(x, "[%zu]", i);
            if (avro_value_append(v, &iv, NULL) != 0)
                return internal(x);
            if ((rc = fill(x, n->kids[0], item, &iv, depth + 1)) != 0)
                return rc;
            path_pop(x, mark);
        }
        return 0;
    }
    case AVRO_MAP: {
        const char *key;
        json_t *item;
        json_object_foreach(j, key, item)
        {
            avro_value_t iv;
            size_t mark = path_push(x, "[\"%s\"]", key);
            if (avro_value_add(v, key, &iv, NULL, NULL) != 0)
                return internal(x);
            if ((rc = fill(x, n->kids[0], item, &iv, depth + 1)) != 0)
                return rc;
            path_pop(x, mark);
        }
        return 0;
    }
    case AVRO_RECORD:
        return fill_record(x, n, j, v, depth);
    case AVRO_UNION:
        return fill_union(x, n, j, v, depth);
    default:
        return jfail(x, "%s values have no JSON form here", type_name(n));
    }
    return rc == 0 ? 0 : internal(x);
}

int pg_codec_from_json(pg_codec_t *c, pg_record_type_t t, const char *json, size_t len,
                       pg_buf_t *out, char *errbuf, size_t errlen)
{
    jctx_t x = {.errbuf = errbuf, .errlen = errlen};
    json_error_t jerr;
    json_t *root = NULL;
    int rc;

    if ((unsigned)t >= PG_REC_COUNT)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "record type %d is unknown", (int)t);
    if (json == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD, "no JSON text");
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return pg_codec_fail(errbuf, errlen, PG_CODEC_EFIELD,
                             "JSON line %d column %d: %s", jerr.line, jerr.column,
                             jerr.text);
    pg_codec_schema_t *s = &c->rec[t];
    rc = avro_value_reset(&s->value) == 0 ? 0 : internal(&x);
    if (rc == 0)
        rc = fill(&x, s->root, root, &s->value, 0);
    if (rc == 0)
        rc = pg_codec_write(c, t, out, errbuf, errlen);
    avro_value_reset(&s->value);
    json_decref(root);
    return rc;
}

/* ---- Binary to JSON ---------------------------------------------------- */

static json_t *to_json(jctx_t *x, const pg_codec_node_t *n, avro_value_t *v, int *rc,
                       int depth);

static json_t *nomem(jctx_t *x, int *rc)
{
    *rc = PG_CODEC_ENOMEM;
    jfail(x, "out of memory building JSON");
    return NULL;
}

static json_t *avro_failed(jctx_t *x, int *rc)
{
    *rc = internal(x);
    return NULL;
}

static json_t *to_json_container(jctx_t *x, const pg_codec_node_t *n, avro_value_t *v,
                                 int *rc, int depth)
{
    size_t count;
    json_t *out = n->type == AVRO_ARRAY ? json_array() : json_object();
    if (out == NULL)
        return nomem(x, rc);
    if (avro_value_get_size(v, &count) != 0) {
        json_decref(out);
        return avro_failed(x, rc);
    }
    for (size_t i = 0; i < count; i++) {
        avro_value_t cv;
        const char *key = NULL;
        const pg_codec_node_t *cn = n->type == AVRO_RECORD ? n->kids[i] : n->kids[0];
        if (avro_value_get_by_index(v, i, &cv, &key) != 0) {
            json_decref(out);
            return avro_failed(x, rc);
        }
        json_t *cj = to_json(x, cn, &cv, rc, depth + 1);
        if (cj == NULL) {
            json_decref(out);
            return NULL;
        }
        int bad = n->type == AVRO_ARRAY ? json_array_append_new(out, cj)
                                        : json_object_set_new(out, key, cj);
        if (bad) {
            json_decref(out);
            return nomem(x, rc);
        }
    }
    return out;
}

static json_t *to_json(jctx_t *x, const pg_codec_node_t *n, avro_value_t *v, int *rc,
                       int depth)
{
    json_t *j = NULL;
    if (depth > MAX_DEPTH) {
        *rc = jfail(x, "nested deeper than %d", MAX_DEPTH);
        return NULL;
    }
    switch (n->type) {
    case AVRO_NULL:
        j = json_null();
        break;
    case AVRO_BOOLEAN: {
        int b;
        if (avro_value_get_boolean(v, &b) != 0)
            return avro_failed(x, rc);
        j = json_boolean(b);
        break;
    }
    case AVRO_INT32: {
        int32_t i;
        if (avro_value_get_int(v, &i) != 0)
            return avro_failed(x, rc);
        j = json_integer(i);
        break;
    }
    case AVRO_INT64: {
        int64_t l;
        if (avro_value_get_long(v, &l) != 0)
            return avro_failed(x, rc);
        j = json_integer(l);
        break;
    }
    case AVRO_FLOAT:
    case AVRO_DOUBLE: {
        float f = 0;
        double d = 0;
        if (n->type == AVRO_FLOAT ? avro_value_get_float(v, &f)
                                  : avro_value_get_double(v, &d))
            return avro_failed(x, rc);
        if (n->type == AVRO_FLOAT)
            d = f;
        /* jansson has no NaN or infinity, and neither has strict JSON. */
        if ((j = json_real(d)) == NULL) {
            *rc = jfail(x, "%g has no JSON form", d);
            return NULL;
        }
        return j;
    }
    case AVRO_STRING: {
        const char *s;
        size_t size;
        if (avro_value_get_string(v, &s, &size) != 0)
            return avro_failed(x, rc);
        j = json_stringn(s, size > 0 ? size - 1 : 0);
        break;
    }
    case AVRO_ENUM: {
        int e;
        if (avro_value_get_enum(v, &e) != 0)
            return avro_failed(x, rc);
        if (e < 0 || (size_t)e >= n->n) {
            *rc = jfail(x, "enum index %d out of range", e);
            return NULL;
        }
        j = json_string(n->names[e]);
        break;
    }
    case AVRO_ARRAY:
    case AVRO_MAP:
    case AVRO_RECORD:
        return to_json_container(x, n, v, rc, depth);
    case AVRO_UNION: {
        int disc;
        avro_value_t bv;
        if (avro_value_get_discriminant(v, &disc) != 0 ||
            avro_value_get_current_branch(v, &bv) != 0 || disc < 0 ||
            (size_t)disc >= n->n)
            return avro_failed(x, rc);
        const pg_codec_node_t *bn = n->kids[disc];
        json_t *inner = to_json(x, bn, &bv, rc, depth + 1);
        if (inner == NULL || bn->type == AVRO_NULL)
            return inner;
        j = json_object();
        if (j == NULL || json_object_set_new(j, type_name(bn), inner) != 0) {
            json_decref(j);
            return nomem(x, rc);
        }
        return j;
    }
    default:
        *rc = jfail(x, "%s values have no JSON form here", type_name(n));
        return NULL;
    }
    return j != NULL ? j : nomem(x, rc);
}

int pg_codec_to_json(pg_codec_t *c, const uint8_t *buf, size_t len,
                     const pg_codec_limits_t *lim, char **json_out,
                     pg_record_type_t *type_out, char *errbuf, size_t errlen)
{
    jctx_t x = {.errbuf = errbuf, .errlen = errlen};
    pg_record_type_t t;
    json_t *j = NULL;
    int rc;

    *json_out = NULL;
    if ((rc = pg_codec_check(c, buf, len, lim, &t, errbuf, errlen)) != 0)
        return rc;
    if ((rc = pg_codec_read(c, t, buf, len, errbuf, errlen)) != 0)
        return rc;
    j = to_json(&x, c->rec[t].root, &c->rec[t].value, &rc, 0);
    if (j != NULL) {
        /* One line, ASCII only (\u escapes), fields in schema order. */
        *json_out = json_dumps(j, JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER);
        rc = *json_out != NULL ? 0
                               : pg_codec_fail(errbuf, errlen, PG_CODEC_ENOMEM,
                                               "out of memory dumping JSON");
    }
    if (rc == 0 && type_out != NULL)
        *type_out = t;
    json_decref(j);
    avro_value_reset(&c->rec[t].value);
    return rc;
}

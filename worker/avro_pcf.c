/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Parsing Canonical Form and CRC-64-AVRO (Avro specification, "Schema
 * Resolution" / "Parsing Canonical Form for Schemas"), and the resolution of
 * named-type references across .avsc files. One walk over the schema's JSON
 * builds two trees at once: the self-contained schema that avro-c parses and
 * the canonical form that is fingerprinted, so the two can never disagree
 * about where a named type is defined.
 */
#include "avro_pcf.h"

#include "status.h"
#include "util.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CRC64_AVRO_EMPTY UINT64_C(0xc15d213aa4d7a795)
/* Schemas are ours, but pg_avro_pcf also takes operator input: the recursion
 * is bounded by PG_MAX_DEPTH rather than trusting the nesting. */
#define MAX_DEPTH PG_MAX_DEPTH

typedef struct {
    pg_avro_lookup_fn lookup;
    void *user;
    json_t *defined; /* set of full names already defined, as an object */
    char *errbuf;
    size_t errlen;
} rctx_t;

static int resolve(rctx_t *x, json_t *in, const char *ns, int depth, json_t **inl,
                   json_t **pcf);

__attribute__((format(printf, 2, 3))) static int fail(rctx_t *x, const char *fmt, ...)
{
    if (x->errbuf != NULL && x->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->errbuf, x->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

uint64_t pg_avro_crc64(const void *p, size_t n)
{
    /* Bitwise rather than table-driven: fingerprints are computed once per
     * schema, and a table would be either a global or 2 KiB per call. */
    const unsigned char *b = p;
    uint64_t fp = CRC64_AVRO_EMPTY;
    for (size_t i = 0; i < n; i++) {
        fp ^= b[i];
        for (int k = 0; k < 8; k++)
            fp = (fp >> 1) ^ (CRC64_AVRO_EMPTY & (0 - (fp & 1)));
    }
    return fp;
}

static bool is_primitive(const char *t)
{
    static const char *const prims[] = {"null",  "boolean", "int",   "long",
                                        "float", "double",  "bytes", "string"};
    for (size_t i = 0; i < sizeof(prims) / sizeof(prims[0]); i++)
        if (strcmp(t, prims[i]) == 0)
            return true;
    return false;
}

/* Full name of `name` seen inside namespace `ns` (NULL or "" for none). The
 * result is malloc'd. */
static char *qualify(const char *name, const char *ns)
{
    if (strchr(name, '.') != NULL || ns == NULL || ns[0] == '\0')
        return strdup(name);
    size_t nl = strlen(ns), ml = strlen(name);
    char *s = malloc(nl + 1 + ml + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, ns, nl);
    s[nl] = '.';
    memcpy(s + nl + 1, name, ml + 1);
    return s;
}

/* Namespace part of a full name, malloc'd ("" when there is none). */
static char *namespace_of(const char *full)
{
    const char *dot = strrchr(full, '.');
    return dot == NULL ? strdup("") : strndup(full, (size_t)(dot - full));
}

static int set_new(rctx_t *x, json_t *obj, const char *key, json_t *val)
{
    if (val == NULL || json_object_set_new(obj, key, val) != 0)
        return fail(x, "out of memory building schema JSON");
    return 0;
}

/* A bare type name: a primitive, a type defined earlier, or one to fetch. */
static int resolve_name(rctx_t *x, const char *name, const char *ns, int depth,
                        json_t **inl, json_t **pcf)
{
    if (is_primitive(name)) {
        *inl = json_string(name);
        *pcf = json_string(name);
        return (*inl && *pcf) ? 0 : fail(x, "out of memory");
    }
    int rc = -1;
    char *full = qualify(name, ns), *fns = NULL;
    json_t *def = NULL;
    if (full == NULL) {
        rc = fail(x, "out of memory");
        goto out;
    }
    if (json_object_get(x->defined, full) != NULL) {
        *inl = json_string(full);
        *pcf = json_string(full);
        rc = (*inl && *pcf) ? 0 : fail(x, "out of memory");
        goto out;
    }
    const char *text = x->lookup ? x->lookup(full, x->user) : NULL;
    if (text == NULL) {
        rc = fail(x, "unknown type %s", full);
        goto out;
    }
    json_error_t jerr;
    def = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (def == NULL) {
        rc = fail(x, "schema of %s, line %d: %s", full, jerr.line, jerr.text);
        goto out;
    }
    fns = namespace_of(full);
    if (fns == NULL) {
        rc = fail(x, "out of memory");
        goto out;
    }
    if (resolve(x, def, fns, depth + 1, inl, pcf) != 0)
        goto out;
    /* A file that defines some other name would send us round in circles. */
    if (json_object_get(x->defined, full) == NULL) {
        rc = fail(x, "the schema looked up for %s does not define it", full);
        goto out;
    }
    rc = 0;
out:
    json_decref(def);
    free(full);
    free(fns);
    return rc;
}

static int resolve_fields(rctx_t *x, json_t *fields, const char *ns, int depth,
                          json_t *inl_fields, json_t *pcf_fields)
{
    size_t i;
    json_t *f;
    json_array_foreach(fields, i, f)
    {
        json_t *name = json_object_get(f, "name");
        json_t *type = json_object_get(f, "type");
        if (!json_is_object(f) || !json_is_string(name) || type == NULL)
            return fail(x, "field %zu has no name or type", i);
        json_t *ifield = json_copy(f); /* keeps default, doc, order, aliases */
        json_t *pfield = json_object();
        if (ifield == NULL || pfield == NULL ||
            json_array_append_new(inl_fields, ifield) ||
            json_array_append_new(pcf_fields, pfield) ||
            json_object_set(pfield, "name", name) != 0)
            return fail(x, "out of memory building schema JSON");
        json_t *it = NULL, *pt = NULL;
        if (resolve(x, type, ns, depth + 1, &it, &pt) != 0)
            return -1;
        if (set_new(x, ifield, "type", it) != 0) {
            json_decref(pt);
            return -1;
        }
        if (set_new(x, pfield, "type", pt) != 0)
            return -1;
    }
    return 0;
}

/* record, error, enum, fixed: defines a name, which later occurrences use. */
static int resolve_named(rctx_t *x, json_t *in, const char *type, const char *ns,
                         int depth, json_t *inl, json_t *pcf)
{
    json_t *jname = json_object_get(in, "name");
    json_t *jns = json_object_get(in, "namespace");
    if (!json_is_string(jname))
        return fail(x, "a %s without a name", type);
    const char *name = json_string_value(jname);
    const char *space = json_is_string(jns) ? json_string_value(jns) : ns;
    int rc = -1;
    char *full = qualify(name, space), *fns = NULL;
    if (full == NULL || (fns = namespace_of(full)) == NULL) {
        rc = fail(x, "out of memory");
        goto out;
    }
    if (json_object_get(x->defined, full) != NULL) {
        rc = fail(x, "type %s is defined twice", full);
        goto out;
    }
    /* Defined before its fields are walked, so that it may refer to itself. */
    if (json_object_set_new(x->defined, full, json_true()) != 0) {
        rc = fail(x, "out of memory");
        goto out;
    }
    /* The inlined copy carries the full name and no namespace attribute;
     * where the full name has no dot, an explicit empty namespace stops an
     * enclosing one from being applied to it. */
    json_object_del(inl, "namespace");
    if (set_new(x, inl, "name", json_string(full)) != 0 ||
        set_new(x, pcf, "name", json_string(full)) != 0 ||
        set_new(x, pcf, "type", json_string(type)) != 0)
        goto out;
    if (fns[0] == '\0' && ns != NULL && ns[0] != '\0' &&
        set_new(x, inl, "namespace", json_string("")) != 0)
        goto out;
    if (strcmp(type, "record") == 0 || strcmp(type, "error") == 0) {
        json_t *fields = json_object_get(in, "fields");
        if (!json_is_array(fields)) {
            rc = fail(x, "record %s has no fields array", full);
            goto out;
        }
        json_t *ifields = json_array(), *pfields = json_array();
        if (set_new(x, inl, "fields", ifields) != 0 ||
            set_new(x, pcf, "fields", pfields) != 0)
            goto out;
        if (resolve_fields(x, fields, fns, depth, ifields, pfields) != 0)
            goto out;
    } else if (strcmp(type, "enum") == 0) {
        json_t *symbols = json_object_get(in, "symbols");
        if (!json_is_array(symbols)) {
            rc = fail(x, "enum %s has no symbols array", full);
            goto out;
        }
        if (set_new(x, pcf, "symbols", json_deep_copy(symbols)) != 0)
            goto out;
    } else {
        json_t *size = json_object_get(in, "size");
        if (!json_is_integer(size)) {
            rc = fail(x, "fixed %s has no integer size", full);
            goto out;
        }
        if (set_new(x, pcf, "size", json_integer(json_integer_value(size))) != 0)
            goto out;
    }
    rc = 0;
out:
    free(full);
    free(fns);
    return rc;
}

static int resolve_object(rctx_t *x, json_t *in, const char *ns, int depth,
                          json_t **inl, json_t **pcf)
{
    json_t *jtype = json_object_get(in, "type");
    if (json_is_object(jtype) || json_is_array(jtype))
        return resolve(x, jtype, ns, depth + 1, inl, pcf); /* {"type": {...}} */
    if (!json_is_string(jtype))
        return fail(x, "a schema object without a type");
    const char *type = json_string_value(jtype);
    if (is_primitive(type)) {
        /* [PRIMITIVES]: {"type": "long", "logicalType": ...} is just "long". */
        *inl = json_deep_copy(in);
        *pcf = json_string(type);
        return (*inl && *pcf) ? 0 : fail(x, "out of memory");
    }
    bool named = strcmp(type, "record") == 0 || strcmp(type, "error") == 0 ||
                 strcmp(type, "enum") == 0 || strcmp(type, "fixed") == 0;
    const char *child = strcmp(type, "array") == 0 ? "items"
                        : strcmp(type, "map") == 0 ? "values"
                                                   : NULL;
    if (!named && child == NULL)
        return resolve_name(x, type, ns, depth, inl, pcf); /* {"type": "a.B"} */

    /* A shallow copy: every attribute that holds a schema is replaced below,
     * the rest (doc, default, symbols) is shared read-only with the input. */
    *inl = json_copy(in);
    *pcf = json_object();
    if (*inl == NULL || *pcf == NULL)
        return fail(x, "out of memory");
    if (named)
        return resolve_named(x, in, type, ns, depth, *inl, *pcf);

    json_t *sub = json_object_get(in, child), *isub = NULL, *psub = NULL;
    if (sub == NULL)
        return fail(x, "an %s without %s", type, child);
    if (set_new(x, *pcf, "type", json_string(type)) != 0 ||
        resolve(x, sub, ns, depth + 1, &isub, &psub) != 0)
        return -1;
    if (set_new(x, *inl, child, isub) != 0) {
        json_decref(psub);
        return -1;
    }
    return set_new(x, *pcf, child, psub);
}

/* May leave partial trees in *inl and *pcf on failure; resolve() frees them. */
static int resolve_any(rctx_t *x, json_t *in, const char *ns, int depth, json_t **inl,
                       json_t **pcf)
{
    if (depth > MAX_DEPTH)
        return fail(x, "schema nested deeper than %d levels", MAX_DEPTH);
    if (json_is_string(in))
        return resolve_name(x, json_string_value(in), ns, depth, inl, pcf);
    if (json_is_object(in))
        return resolve_object(x, in, ns, depth, inl, pcf);
    if (!json_is_array(in))
        return fail(x, "a schema must be a string, an object or an array");
    /* A union: its branches are schemas in their own right. */
    *inl = json_array();
    *pcf = json_array();
    if (*inl == NULL || *pcf == NULL)
        return fail(x, "out of memory");
    size_t i;
    json_t *b;
    json_array_foreach(in, i, b)
    {
        json_t *ib = NULL, *pb = NULL;
        if (resolve(x, b, ns, depth + 1, &ib, &pb) != 0)
            return -1;
        if (json_array_append_new(*inl, ib) != 0) {
            json_decref(pb);
            return fail(x, "out of memory");
        }
        if (json_array_append_new(*pcf, pb) != 0)
            return fail(x, "out of memory");
    }
    return 0;
}

/* Either both trees are built, or neither is left behind. */
static int resolve(rctx_t *x, json_t *in, const char *ns, int depth, json_t **inl,
                   json_t **pcf)
{
    *inl = *pcf = NULL;
    if (resolve_any(x, in, ns, depth, inl, pcf) == 0)
        return 0;
    json_decref(*inl);
    json_decref(*pcf);
    *inl = *pcf = NULL;
    return -1;
}

int pg_avro_resolve(const char *json, size_t len, pg_avro_lookup_fn lookup, void *user,
                    char **inlined_out, char **pcf_out, char *errbuf, size_t errlen)
{
    rctx_t x = {.lookup = lookup, .user = user, .errbuf = errbuf, .errlen = errlen};
    json_t *in = NULL, *inl = NULL, *pcf = NULL;
    char *inl_s = NULL, *pcf_s = NULL;
    int rc = PG_INPUT;
    json_error_t jerr;

    if (inlined_out != NULL)
        *inlined_out = NULL;
    if (pcf_out != NULL)
        *pcf_out = NULL;
    in = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (in == NULL) {
        fail(&x, "schema JSON, line %d column %d: %s", jerr.line, jerr.column,
             jerr.text);
        goto out;
    }
    x.defined = json_object();
    if (x.defined == NULL) {
        fail(&x, "out of memory");
        rc = PG_FATAL;
        goto out;
    }
    if (resolve(&x, in, NULL, 0, &inl, &pcf) != 0)
        goto out;
    /* [WHITESPACE] [STRINGS]: compact, and UTF-8 rather than \u escapes. */
    pcf_s = json_dumps(pcf, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    inl_s = json_dumps(inl, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (pcf_s == NULL || inl_s == NULL) {
        fail(&x, "out of memory");
        rc = PG_FATAL;
        goto out;
    }
    if (inlined_out != NULL) {
        *inlined_out = inl_s;
        inl_s = NULL;
    }
    if (pcf_out != NULL) {
        *pcf_out = pcf_s;
        pcf_s = NULL;
    }
    rc = PG_OK;
out:
    free(inl_s);
    free(pcf_s);
    json_decref(in);
    json_decref(inl);
    json_decref(pcf);
    json_decref(x.defined);
    return rc;
}

char *pg_avro_pcf(const char *json, pg_avro_lookup_fn lookup, void *user, char *errbuf,
                  size_t errlen)
{
    char *pcf = NULL;
    if (json == NULL) {
        if (errbuf != NULL && errlen > 0)
            pg_errf(errbuf, errlen, "no schema text");
        return NULL;
    }
    if (pg_avro_resolve(json, strlen(json), lookup, user, NULL, &pcf, errbuf, errlen) !=
        0)
        return NULL;
    return pcf;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the codec's files share and nobody else sees: the layout of the C
 * structs of types.h, the tables compiled from each known schema version
 * against that layout, and the one reader and one writer built on them.
 *
 *   codec_schema.c  the embedded schemas of every version, parsed by avro-c,
 *                   fingerprinted, and compiled into pg_codec_rec_t tables
 *   codec_read.c    the validating reader: bytes of any known writer -> struct
 *   codec_write.c   the writer: struct -> bytes of a chosen version
 *   codec_json.c    Avro JSON <-> struct, over the same tables
 *
 * A table is the writer-to-reader resolution of Avro, done once: each field of
 * a version's record names the slot of the C struct it lands in; a slot that
 * an older version lacks keeps its zero value, which pg_codec_new has checked
 * is the field's default (null). Enum symbols are mapped by name both ways.
 */
#ifndef PG_CODEC_INTERNAL_H
#define PG_CODEC_INTERNAL_H

#include "codec.h"
#include "util.h"

#include <stdbool.h>
#include <string.h>

/* Single-object header: C3 01 and the 8-byte fingerprint. */
#define PG_CODEC_HEADER_LEN 10
/* Every optional field is ["null", X]: pg_codec_new refuses anything else. */
#define PG_CODEC_BRANCH_NULL 0
#define PG_CODEC_BRANCH_VALUE 1

/* ---- Layout of the C structs ---------------------------------------------- */

typedef enum {
    PG_K_STR,        /* string                   -> const char * (never NULL) */
    PG_K_OPT_STR,    /* ["null", "string"]       -> const char * (NULL = null) */
    PG_K_LONG,       /* long                     -> int64_t */
    PG_K_OPT_LONG,   /* ["null", "long"]         -> pg_opt_long_t */
    PG_K_ENUM,       /* enum                     -> C enum (int) */
    PG_K_OPT_ENUM,   /* ["null", enum]           -> C enum + bool at aux */
    PG_K_OPT_DOUBLE, /* ["null", "double"]       -> double + bool at aux */
    PG_K_ARRAY,      /* array of records         -> pointer + size_t count at aux */
    PG_K_RECORD,     /* record                   -> nested struct */
} pg_codec_kind_t;

typedef struct pg_codec_layout pg_codec_layout_t;

typedef struct {
    const char *name; /* Avro field name */
    pg_codec_kind_t kind;
    size_t off;
    size_t aux;
    const pg_codec_layout_t *sub; /* PG_K_ARRAY items, PG_K_RECORD type */
    int n_symbols;                /* enums: values the C enum knows */
    bool is_id;                   /* an id: a present value must not be empty */
} pg_codec_slot_t;

struct pg_codec_layout {
    const char *full_name;
    size_t size;
    size_t n_slots;
    const pg_codec_slot_t *slots;
    int index; /* in pg_codec_layouts[] */
};

/* Every record the structs know, and the top-level ones by pg_record_type_t. */
extern const pg_codec_layout_t *const pg_codec_layouts[];
extern const size_t pg_codec_layout_count;
extern const pg_codec_layout_t *const pg_codec_top[PG_REC_COUNT];
#define PG_CODEC_MAX_SLOTS 16

/* ---- Tables compiled from one schema version -------------------------------- */

typedef struct {
    const char *name; /* full name */
    size_t n;         /* symbols of this version */
    const char **symbols;
    const int *to_c;   /* [n]: this version's index -> C value */
    size_t n_c;        /* values of the C enum */
    const int *from_c; /* [n_c]: C value -> this version's index, -1: none */
} pg_codec_enum_t;

typedef struct pg_codec_rec pg_codec_rec_t;

typedef struct {
    const char *name; /* field name in this version */
    const pg_codec_slot_t *slot;
    const pg_codec_enum_t *en; /* PG_K_ENUM, PG_K_OPT_ENUM */
    const pg_codec_rec_t *sub; /* PG_K_ARRAY items, PG_K_RECORD */
    bool null_default;         /* "default": null in this version's schema */
} pg_codec_field_t;

struct pg_codec_rec {
    const char *name; /* full name */
    const pg_codec_layout_t *layout;
    size_t n;
    const pg_codec_field_t *fields; /* in this version's field order */
    size_t min_size;                /* fewest body bytes a value takes */
};

typedef struct {
    const pg_codec_rec_t *root; /* NULL: the version has no such record */
    int version;
    uint64_t fingerprint;
    const char *pcf;
} pg_codec_schema_t;

struct pg_codec {
    pg_codec_schema_t schemas[PG_CODEC_VERSION][PG_REC_COUNT]; /* [version - 1] */
    pg_arena_t *tables; /* owns every table and string above */
};

/* snprintf into errbuf (NULL-safe) and return code. */
__attribute__((format(printf, 4, 5))) int pg_codec_fail(char *errbuf, size_t errlen,
                                                        int code, const char *fmt, ...);

/* The known schema whose fingerprint a message's header carries; NULL with
 * errbuf filled (EEMPTY, EMAGIC or EFINGERPRINT) otherwise. */
const pg_codec_schema_t *pg_codec_lookup(const pg_codec_t *c, const uint8_t *buf,
                                         size_t len, int *version_out,
                                         pg_record_type_t *type_out, int *rc_out,
                                         char *errbuf, size_t errlen);

/* The schema of a version (0: the current one) and record type, or NULL. */
const pg_codec_schema_t *pg_codec_schema(const pg_codec_t *c, int version,
                                         pg_record_type_t t);

/* The writer: appends the single-object encoding of the struct at src, whose
 * layout is s->root->layout, in the version s was compiled from. Nothing is
 * left in out on failure. */
int pg_codec_write(const pg_codec_schema_t *s, const void *src, pg_buf_t *out,
                   char *errbuf, size_t errlen);

/* Struct members are reached by offset; memcpy keeps that free of aliasing
 * and alignment assumptions. */
static inline const void *pg_codec_get_ptr(const void *base, size_t off)
{
    const void *p;
    memcpy(&p, (const char *)base + off, sizeof(p));
    return p;
}

static inline void pg_codec_put_ptr(void *base, size_t off, const void *p)
{
    memcpy((char *)base + off, &p, sizeof(p));
}

#endif

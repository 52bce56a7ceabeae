/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What codec.c (binary) and codec_json.c (JSON) share and nobody else sees:
 * the codec object, the schema graph compiled once from avro-c's schemas (so
 * that the per-message walks follow plain pointers instead of avro-c's hash
 * lookups), and the check/read/write steps both files build on.
 */
#ifndef PG_CODEC_INTERNAL_H
#define PG_CODEC_INTERNAL_H

#include "codec.h"
#include "util.h"

#include <avro.h>
#include <jansson.h>
#include <stdbool.h>

/* Single-object header: C3 01 and the 8-byte fingerprint. */
#define PG_CODEC_HEADER_LEN 10

typedef struct pg_codec_node pg_codec_node_t;
struct pg_codec_node {
    avro_type_t type;
    size_t min_size; /* fewest body bytes a value takes: bounds array counts */
    char *name;      /* full name of a record, enum or fixed */
    size_t n;        /* fields, symbols or branches; bytes of a fixed */
    pg_codec_node_t *
        *kids;         /* field types, branches; kids[0]: array items, map values */
    char **names;      /* field names or enum symbols */
    bool *is_id;       /* per field: an id string that must not be empty */
    json_t **defaults; /* per field: its default, borrowed from the schema JSON */
    int null_branch;   /* union: index of the null branch, or -1 */
};

typedef struct {
    avro_schema_t schema;
    avro_value_iface_t *iface;
    avro_value_t value; /* reused for every message; reset before and after */
    bool has_value;
    uint64_t fingerprint;
    char *pcf;
    json_t *json; /* the inlined schema; owns the defaults the nodes point to */
    pg_codec_node_t *root;
} pg_codec_schema_t;

struct pg_codec {
    pg_codec_schema_t rec[PG_REC_COUNT];
    pg_codec_node_t **nodes; /* every node of every schema, for destroy */
    size_t n_nodes, cap_nodes;
    avro_reader_t reader;
    avro_writer_t writer;
};

/* snprintf into errbuf (NULL-safe) and return code. */
__attribute__((format(printf, 4, 5))) int pg_codec_fail(char *errbuf, size_t errlen,
                                                        int code, const char *fmt, ...);

/* The header, the fingerprint and the whole body of one message, validated
 * against the limits (NULL: the defaults). Sets *type_out on success. */
int pg_codec_check(const pg_codec_t *c, const uint8_t *buf, size_t len,
                   const pg_codec_limits_t *lim, pg_record_type_t *type_out,
                   char *errbuf, size_t errlen);

/* Reads a message that pg_codec_check accepted into c->rec[t].value. */
int pg_codec_read(pg_codec_t *c, pg_record_type_t t, const uint8_t *buf, size_t len,
                  char *errbuf, size_t errlen);

/* Appends c->rec[t].value to out as a single-object message. */
int pg_codec_write(pg_codec_t *c, pg_record_type_t t, pg_buf_t *out, char *errbuf,
                   size_t errlen);

#endif

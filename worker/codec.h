/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Avro single-object encoding of the SPEC's records (C3 01, the little-endian
 * CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then
 * the Avro binary body). Pure: no I/O, no globals, so it is unit-tested and
 * fuzzed by feeding it bytes.
 *
 * Every schema version pinguard has shipped is known (schemas/v1, ...; the
 * current one in schemas/). A message of any known version is read, by Avro
 * schema resolution, into the current structs of types.h; fields its writer
 * lacked take their defaults. Messages are written in the current version
 * unless the caller names another.
 *
 * Untrusted input is read by one table-driven walker that checks every varint,
 * string/array length, union branch and enum index against the remaining
 * bytes and the caller's limits before it allocates, and requires strings to
 * be valid UTF-8. avro-c parses the schemas when the codec is built and is not
 * used per message.
 *
 * A codec is read-only once built: threads may share one.
 */
#ifndef PG_CODEC_H
#define PG_CODEC_H

#include "mem.h"
#include "status.h"
#include "types.h"

/* The detail codes of codec failures: reasons (the DLQ's pinguard-error),
 * not statuses; pg_codec_status reads any of them as a pg_status_t. Decode
 * failures are permanent for the message: the caller dead-letters it with
 * pg_codec_err_name(code) as the reason. PG_CODEC_ENOMEM and
 * PG_CODEC_EINTERNAL are the process's fault, not the message's. */
typedef enum {
    PG_CODEC_OK = 0,
    PG_CODEC_EEMPTY = -1,       /* EMPTY_MESSAGE: zero bytes */
    PG_CODEC_EMAGIC = -2,       /* BAD_MAGIC: not C3 01 or shorter than 10 bytes */
    PG_CODEC_EFINGERPRINT = -3, /* UNKNOWN_FINGERPRINT */
    PG_CODEC_ETYPE = -4,        /* UNEXPECTED_RECORD: known schema, wrong topic */
    PG_CODEC_ETRUNCATED = -5,   /* TRUNCATED_BODY: body ends inside a value */
    PG_CODEC_ELENGTH = -6,      /* BAD_LENGTH: negative, or past the message end */
    PG_CODEC_EVARINT = -7,      /* BAD_VARINT: more than 10 bytes or overflow */
    PG_CODEC_EUTF8 = -8,        /* INVALID_UTF8 */
    PG_CODEC_EUNION = -9,       /* BAD_UNION_BRANCH */
    PG_CODEC_EENUM = -10,       /* BAD_ENUM_SYMBOL */
    PG_CODEC_ETRAILING = -11,   /* TRAILING_BYTES after the body */
    PG_CODEC_ELIMIT = -12, /* LIMIT_EXCEEDED: too many items or a too-long string */
    PG_CODEC_EFIELD = -13, /* INVALID_FIELD: an id that is empty, or bad JSON input */
    PG_CODEC_ENOMEM = -14, /* OUT_OF_MEMORY */
    PG_CODEC_EINTERNAL = -15, /* INTERNAL_ERROR */
} pg_codec_err_t;

typedef struct {
    size_t max_string; /* longest string value in bytes (ids, kinds, errors) */
    size_t max_items;  /* most items in one array (e.g. migrations) */
} pg_codec_limits_t;

#define PG_CODEC_LIMITS_DEFAULT                                                        \
    ((pg_codec_limits_t){.max_string = PG_MAX_STRING, .max_items = 10000})

/* The current schema version: what pinguard writes. Versions 1 to this one
 * are read. */
#define PG_CODEC_VERSION 2

typedef struct pg_codec pg_codec_t;

/* Parses the embedded schemas of every version, computes their fingerprints
 * and compiles the tables, checking each against the C structs. Returns NULL
 * and fills errbuf on failure. Caller owns the codec. */
pg_codec_t *pg_codec_new(char *errbuf, size_t errlen);
void pg_codec_destroy(pg_codec_t *c); /* NULL-safe */

/* "DrsAdvice", ...; NULL for an invalid type. */
const char *pg_record_type_name(pg_record_type_t t);
/* Accepts the short name ("DrsAdvice") or the full one ("io.pinguard.v1.DrsAdvice"). */
int pg_record_type_from_name(const char *name, pg_record_type_t *out);

/* Fingerprint and Parsing Canonical Form of a record's schema in a version
 * (0: the current one); 0 and NULL when that version has no such record. The
 * string is owned by the codec. */
uint64_t pg_codec_fingerprint(const pg_codec_t *c, int version, pg_record_type_t t);
const char *pg_codec_canonical_form(const pg_codec_t *c, int version,
                                    pg_record_type_t t);

/* The status of a codec result: PG_OK for PG_CODEC_OK, PG_FATAL for
 * PG_CODEC_ENOMEM and PG_CODEC_EINTERNAL (the process's fault), PG_INPUT for
 * every other code (the message's or argument's fault, for good). */
pg_status_t pg_codec_status(int code);

/* Stable upper-case name of an error code (the DLQ's pinguard-error prefix). */
const char *pg_codec_err_name(int code);

/* Decodes one single-object message of any known record and version into
 * *out (out->version: the writer's). Strings and arrays are allocated in
 * `arena` (caller owns it; they live until it is reset); a message that fails
 * leaves the arena as it was. Returns 0 or a pg_codec_err_t, with a one-line
 * detail in errbuf. Never allocates more than a small multiple of len. */
int pg_codec_decode(const pg_codec_t *c, const uint8_t *buf, size_t len,
                    const pg_codec_limits_t *lim, pg_arena_t *arena, pg_record_t *out,
                    char *errbuf, size_t errlen);

/* Appends the single-object encoding of rec, in the current version, to out.
 * Returns 0 or a pg_codec_err_t (EFIELD for a NULL where the schema has no
 * null); nothing is appended on failure. */
int pg_codec_encode(const pg_codec_t *c, const pg_record_t *rec, pg_buf_t *out,
                    char *errbuf, size_t errlen);

/* The same in a chosen version (0: the current one). EFIELD also for a value
 * the version cannot hold (a symbol it lacks); fields it lacks are left out. */
int pg_codec_encode_version(const pg_codec_t *c, int version, const pg_record_t *rec,
                            pg_buf_t *out, char *errbuf, size_t errlen);

/* JSON in a version's shape (Avro's JSON encoding; a union may also be given
 * untagged when its value fits, and a missing field takes its schema default)
 * to single-object bytes of that version (0: the current one) appended to out. */
int pg_codec_from_json(const pg_codec_t *c, int version, pg_record_type_t t,
                       const char *json, size_t len, pg_buf_t *out, char *errbuf,
                       size_t errlen);

/* Single-object bytes of any known version, read exactly as decode reads
 * them, to one line of Avro JSON in a version's shape (0: the current one).
 * *json_out is malloc'd; the caller frees it. *type_out may be NULL. */
int pg_codec_to_json(const pg_codec_t *c, int version, const uint8_t *buf, size_t len,
                     const pg_codec_limits_t *lim, char **json_out,
                     pg_record_type_t *type_out, char *errbuf, size_t errlen);

#endif

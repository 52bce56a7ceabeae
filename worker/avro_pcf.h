/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Schema text helpers for the codec: resolving references to named types that
 * live in other .avsc files, Avro's Parsing Canonical Form, and the
 * CRC-64-AVRO fingerprint. avro-c 1.11.1 has none of
 * these. Used only when a codec is built, never per message.
 */
#ifndef PG_AVRO_PCF_H
#define PG_AVRO_PCF_H

#include <stddef.h>
#include <stdint.h>

/* CRC-64-AVRO of a byte string (the fingerprint of a Parsing Canonical Form). */
uint64_t pg_avro_crc64(const void *p, size_t n);

/* Returns the JSON text that defines the named type `full_name`
 * ("io.pinguard.v1.DeviceRef"), or NULL when there is none. */
typedef const char *(*pg_avro_lookup_fn)(const char *full_name, void *user);

/* Resolves every reference to a named type that the schema does not define
 * itself through `lookup` (may be NULL), inlining each type at its first
 * occurrence in document order and naming it by full name afterwards, as
 * fastavro's load_schema does. *inlined_out receives that self-contained schema
 * (for avro_schema_from_json; docs and defaults kept), *pcf_out its Parsing
 * Canonical Form; either may be NULL. Both are malloc'd; the caller frees them.
 * Returns PG_OK, or with errbuf filled PG_INPUT (a schema text that cannot be
 * resolved) or PG_FATAL (out of memory at the top level; deeper, running out
 * is reported as PG_INPUT). */
int pg_avro_resolve(const char *json, size_t len, pg_avro_lookup_fn lookup, void *user,
                    char **inlined_out, char **pcf_out, char *errbuf, size_t errlen);

/* The Parsing Canonical Form of a NUL-terminated schema text, malloc'd, or NULL
 * with errbuf filled. */
char *pg_avro_pcf(const char *json, pg_avro_lookup_fn lookup, void *user, char *errbuf,
                  size_t errlen);

#endif

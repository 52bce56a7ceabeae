/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The .avsc files of schemas/ (the current version) and schemas/v1/ ... (the
 * frozen earlier ones), compiled in by cmake/embed_schemas.cmake. Each file is
 * named after the full name of the one type it defines and refers to other
 * types by full name (the layout fastavro's load_schema reads too).
 */
#ifndef PG_SCHEMAS_H
#define PG_SCHEMAS_H

#include <stddef.h>

typedef struct {
    int version;           /* N for schemas/vN/, 0 for the current schemas/ */
    const char *full_name; /* "io.pinguard.v1.DrsAdvice" */
    const char *json;
} pg_schema_file_t;

extern const pg_schema_file_t pg_schema_files[];
extern const size_t pg_schema_file_count;

#endif

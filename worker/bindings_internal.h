/*
 * The pure half of the binding cache, exposed for unit tests: turning one
 * lookup reply into a raw entry, and a raw entry into what policy reads. No
 * I/O: tests feed RESP bytes to hiredis's reader and call these.
 */
#ifndef PG_BINDINGS_INTERNAL_H
#define PG_BINDINGS_INTERNAL_H

#include "bindings.h"

#include <hiredis/hiredis.h>

/* Parses the reply of the lookup script into out; its bytes point into r (so
 * r must outlive out), its device array lives in arena. Returns 0, or
 * PG_BINDINGS_ETRANSIENT when the reply is not the script's shape. */
int pg_bindings_parse_lookup(const redisReply *r, pg_arena_t *arena, pg_vm_raw_t *out,
                             char *errbuf, size_t errlen);

/* Checks raw and copies it into out (strings in arena). A raw entry that
 * fails pg_bindings_check gives a malformed binding, not an error; errors
 * are out of memory only. */
int pg_bindings_to_binding(const pg_vm_raw_t *raw, const pg_bindings_limits_t *lim,
                           pg_arena_t *arena, pg_vm_binding_t *out, char *errbuf,
                           size_t errlen);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The pure halves of the binding cache, exposed for unit tests: the request
 * formatter and the reply parser of the lookup script. Neither does I/O, so
 * tests compare the requests with hiredis's own formatter and feed RESP bytes
 * to hiredis's reader for the replies.
 */
#ifndef PG_BINDINGS_INTERNAL_H
#define PG_BINDINGS_INTERNAL_H

#include "bindings.h"

#include <hiredis/hiredis.h>

/* Parses the reply of the lookup script into out; its bytes point into r (so
 * r must outlive out), its device array lives in arena. Returns 0, or
 * PG_RETRY when the reply is not the script's shape, PG_FATAL when out of
 * memory. */
int pg_bindings_parse_lookup(const redisReply *r, pg_arena_t *arena, pg_vm_raw_t *out,
                             char *errbuf, size_t errlen);

/* Appends the RESP of the lookups of n VMs, `chunk` VMs per script call
 * (EVALSHA sha <4 x VMs> <their four keys each: :host, :pin, :devices,
 * :generation> followed by `args`, the script's ARGV already in RESP), to
 * out. The bytes must equal what hiredis's
 * redisFormatCommandArgv makes of the same arguments; formatted by hand
 * because snprintf showed in the profile at three keys per VM. */
int pg_bindings_format_lookups(pg_buf_t *out, const char *sha, const char *args,
                               size_t args_len, size_t chunk,
                               const char *const *vm_uuids, size_t n, char *errbuf,
                               size_t errlen);

#endif

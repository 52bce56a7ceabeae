/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `pinguard sync`: the binding feed materialised into the cache. Consumes
 * topic.bindings (VmBindings records, keyed by vmUuid, compacted) in the group
 * sync.group.id and applies each record through bindings (only a greater
 * generation replaces a VM's host, devices and generation, in one atomic
 * script; a tombstone deletes them; pins and quarantine are never touched),
 * committing offsets only after Redis confirmed the batch. Undecodable or
 * invalid records go to the DLQ. `--rebuild` replays the whole topic from
 * the beginning without a group and exits once caught up. Wires codec,
 * bindings, kafka and metrics; owns no I/O itself.
 */
#ifndef PG_SYNC_H
#define PG_SYNC_H

#include "config.h"
#include "status.h"

#include <signal.h>
#include <stdbool.h>

typedef struct {
    bool rebuild;  /* replay from the beginning, exit when caught up */
    bool progress; /* a progress bar (a terminal) instead of progress lines */
} pg_sync_opts_t;

/* Runs until *stop becomes non-zero or, rebuilding, until every partition is
 * applied up to the high watermarks read at start. Returns PG_OK after a
 * clean stop or a finished rebuild, or PG_FATAL with errbuf naming the
 * fatal error. */
int pg_sync_run(const pg_config_t *cfg, const pg_sync_opts_t *opts,
                volatile sig_atomic_t *stop, char *errbuf, size_t errlen);

#endif

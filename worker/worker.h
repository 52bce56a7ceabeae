/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The `pinguard run` loop: consume a batch, decode it, read the bindings of
 * every VM it names in one Redis round trip, decide through policy, produce
 * the decisions, and finish the batch through kafka (commit, or store input
 * offsets only once the broker acknowledged them). Owns no I/O itself: it
 * wires codec, bindings, policy and kafka.
 */
#ifndef PG_WORKER_H
#define PG_WORKER_H

#include "config.h"
#include "status.h"

#include <signal.h>

/* Runs until *stop becomes non-zero (set by a signal handler) or a fatal
 * error. Returns PG_OK after a clean stop, or PG_FATAL with errbuf naming the
 * fatal error (the process should exit non-zero so its supervisor restarts
 * it). */
int pg_worker_run(const pg_config_t *cfg, volatile sig_atomic_t *stop, char *errbuf,
                  size_t errlen);

#endif

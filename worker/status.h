/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one vocabulary of outcomes every module's functions return; the
 * details go into the caller's error buffer. What a caller must decide is
 * only whether to go on, redo later, give up on this input, or stop:
 *   PG_OK     done;
 *   PG_RETRY  transient (a peer unreachable, a batch to redo): try again later;
 *   PG_INPUT  the input or argument is at fault, permanently: retrying the
 *             same cannot help (bad settings, a record too large, a bad id);
 *   PG_FATAL  the process cannot go on (out of memory, a client state that
 *             cannot be left, wrong credentials): exit, let the supervisor
 *             restart it.
 * Out of memory is always PG_FATAL, whichever module meets it.
 */
#ifndef PG_STATUS_H
#define PG_STATUS_H

typedef enum { PG_OK = 0, PG_RETRY = -1, PG_INPUT = -2, PG_FATAL = -3 } pg_status_t;

#endif

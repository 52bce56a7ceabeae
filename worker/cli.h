/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The `pinguard` command line: subcommands, their usage text, and the shared
 * configuration flags. Returns the process exit code (0 ok, 1 runtime error,
 * 2 usage) instead of exiting, so only main() exits.
 */
#ifndef PG_CLI_H
#define PG_CLI_H

#include <signal.h>

enum { PG_EXIT_OK = 0, PG_EXIT_RUNTIME = 1, PG_EXIT_USAGE = 2 };

/* `stop` is set by the caller's signal handler; `envp` is the environment. */
int pg_cli_main(int argc, char **argv, char *const *envp, volatile sig_atomic_t *stop);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Process entry: installs the signal handlers (they only set a flag), hands
 * the command line to the CLI, and is the one place that exits. SIGINT,
 * SIGTERM and SIGHUP all ask for the same graceful stop: a worker whose
 * terminal or session goes away finishes its batch and commits instead of
 * dying mid-transaction by SIGHUP's default action.
 */
#include "cli.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* Under nohup SIGHUP arrives ignored: the operator asked to outlive the
     * terminal, so it stays ignored. */
    struct sigaction old;
    if (sigaction(SIGHUP, NULL, &old) == 0 && old.sa_handler != SIG_IGN)
        sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return pg_cli_main(argc, argv, environ, &stop_requested);
}

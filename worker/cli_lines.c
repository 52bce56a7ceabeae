/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The line input of `import` and `publish`: a file or stdin read in two
 * passes. The first checks every line and changes nothing, so that a bad
 * line anywhere leaves the cache or the feed as it was; the second hands the
 * same lines over again. Input that cannot be read twice (a pipe) is kept in
 * a temporary file by the first pass. Messages name the command, the input
 * and the line.
 */
#include "cli_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_REPORTED = 10 };

int pg_cli_lines_open(pg_cli_lines_t *l, const char *verb, const char *path)
{
    bool std = strcmp(path, "-") == 0;
    *l = (pg_cli_lines_t){
        .verb = verb, .name = std ? "stdin" : path, .tty = isatty(fileno(stderr)) != 0};
    l->f = std ? stdin : fopen(path, "r");
    if (l->f == NULL) {
        fprintf(stderr, "pinguard: %s %s: %s\n", verb, l->name, strerror(errno));
        return PG_FATAL;
    }
    /* Where the input starts: stdin may come positioned inside a file. */
    l->start = ftello(l->f);
    if (l->start < 0 && (l->spool = tmpfile()) == NULL) {
        fprintf(stderr, "pinguard: %s: cannot create a temporary file: %s\n", verb,
                strerror(errno));
        pg_cli_lines_close(l);
        return PG_FATAL;
    }
    return PG_OK;
}

int pg_cli_lines_check(pg_cli_lines_t *l, pg_cli_line_fn check, void *ctx,
                       const char *nothing_done)
{
    char err[512];
    size_t bad = 0, first_bad = 0;
    for (;;) {
        ssize_t len = getline(&l->line, &l->cap, l->f);
        if (len < 0)
            break;
        l->lines++;
        if (l->spool != NULL &&
            fwrite(l->line, 1, (size_t)len, l->spool) != (size_t)len) {
            fprintf(stderr, "pinguard: %s: cannot write the temporary file\n", l->verb);
            return PG_FATAL;
        }
        if (l->tty && l->lines % 4096 == 0) {
            char text[96];
            snprintf(text, sizeof(text), "pinguard: %s: %zu lines checked", l->verb,
                     l->lines);
            pg_cli_progress(l->tty, text);
        }
        if (pg_cli_blank(l->line, (size_t)len))
            continue;
        if (check(ctx, l->line, (size_t)len, err, sizeof(err)) != PG_OK) {
            if (bad++ == 0)
                first_bad = l->lines;
            if (bad <= MAX_REPORTED) {
                pg_cli_progress(l->tty, "");
                fprintf(stderr, "pinguard: %s %s:%zu: %s\n", l->verb, l->name, l->lines,
                        err);
            }
        }
    }
    if (ferror(l->f)) {
        fprintf(stderr, "pinguard: %s %s: read error: %s\n", l->verb, l->name,
                strerror(errno));
        return PG_FATAL;
    }
    if (bad > 0) {
        pg_cli_progress(l->tty, "");
        fprintf(stderr,
                "pinguard: %s %s: %zu invalid line%s (the first is line %zu); "
                "nothing was %s\n",
                l->verb, l->name, bad, bad == 1 ? "" : "s", first_bad, nothing_done);
        return PG_FATAL;
    }
    l->in = l->spool != NULL ? l->spool : l->f;
    if (fseeko(l->in, l->spool != NULL ? 0 : l->start, SEEK_SET) != 0) {
        fprintf(stderr, "pinguard: %s %s: cannot read it again: %s\n", l->verb, l->name,
                strerror(errno));
        return PG_FATAL;
    }
    return PG_OK;
}

int pg_cli_lines_next(pg_cli_lines_t *l, const char **line, size_t *len)
{
    for (;;) {
        ssize_t n = getline(&l->line, &l->cap, l->in);
        if (n < 0)
            return ferror(l->in) ? PG_FATAL : 0;
        l->lineno++;
        if (!pg_cli_blank(l->line, (size_t)n)) {
            *line = l->line;
            *len = (size_t)n;
            return 1;
        }
    }
}

void pg_cli_lines_close(pg_cli_lines_t *l)
{
    free(l->line);
    l->line = NULL;
    if (l->spool != NULL)
        fclose(l->spool);
    if (l->f != NULL && l->f != stdin)
        fclose(l->f);
    l->spool = l->f = l->in = NULL;
}

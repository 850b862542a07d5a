/* Messages to stderr, shared by vism-guest and the ring self-test. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>

#include "vism-guest.h"

volatile sig_atomic_t g_stop;
static int g_verbose;
static char g_where[PATH_MAX + 32]; /* "script:line: " while a script runs */

void log_set_verbose(int on) { g_verbose = on; }

void log_set_where(const char *script, int line)
{
    if (script)
        snprintf(g_where, sizeof g_where, "%s:%d: ", script, line);
    else
        g_where[0] = 0;
}

void errorf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "vism-guest: %s", g_where);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void debugf(const char *fmt, ...)
{
    if (!g_verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fputs("vism-guest: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

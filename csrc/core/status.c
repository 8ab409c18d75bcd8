/* status.c — the thread-local error message behind PcStatus (see status.h), and the growable
 * arrays helper pc_grow_array. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char pc_err_buf[2048];

PcStatus pc_set_error(PcStatus code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pc_err_buf, sizeof pc_err_buf, fmt, ap);
    va_end(ap);
    return code;
}

const char *pc_last_error(void) { return pc_err_buf; }

void pc_clear_error(void) { pc_err_buf[0] = '\0'; }

PcStatus pc_grow_array(void **arr, int *cap, int need, size_t item, const char *what) {
    if (need <= *cap) return PC_OK;
    int nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *p = realloc(*arr, (size_t)nc * item);
    if (!p) return pc_set_error(PC_ERR_OOM, "%s: out of host memory", what);
    memset((char *)p + (size_t)*cap * item, 0, (size_t)(nc - *cap) * item);
    *arr = p;
    *cap = nc;
    return PC_OK;
}

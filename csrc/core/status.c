/* status.c — the thread-local error message behind PcStatus (see status.h). */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>

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

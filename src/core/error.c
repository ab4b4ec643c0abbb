/* error.c: the thread-local message behind fkda_last_error(), and status names. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

/* One buffer per thread, so that concurrent calls on different threads keep their own message. */
static _Thread_local char last_error[1024];

fkda_status fkda_fail(fkda_status status, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    vsnprintf(last_error, sizeof last_error, format, ap);
    va_end(ap);
    return status;
}

void fkda_clear_error(void) { last_error[0] = '\0'; }

const char *fkda_last_error(void) { return last_error; }

const char *fkda_status_name(fkda_status status)
{
    switch (status) {
    case FKDA_OK: return "ok";
    case FKDA_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case FKDA_ERROR_UNSUPPORTED: return "unsupported";
    case FKDA_ERROR_WORKSPACE: return "workspace";
    case FKDA_ERROR_DEVICE: return "device error";
    case FKDA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case FKDA_ERROR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

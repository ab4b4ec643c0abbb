/*
 * error.h: the thread-local "last error" behind fkda_last_error().
 *
 * Every failing path in the library ends in fkda_fail(), which formats the message and returns
 * the status, so a check reads as one line: `return fkda_fail(FKDA_ERROR_..., "q: ...", ...);`.
 */
#ifndef FKDA_CORE_ERROR_H
#define FKDA_CORE_ERROR_H

#include "flashkda.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FKDA_PRINTF_LIKE(a, b) __attribute__((format(printf, a, b)))
#else
#define FKDA_PRINTF_LIKE(a, b)
#endif

/* Records the message (printf-style) for fkda_last_error() and returns `status`. */
fkda_status fkda_fail(fkda_status status, const char *format, ...) FKDA_PRINTF_LIKE(2, 3);

/* Empties the message; every public entry point calls this first. */
void fkda_clear_error(void);

/* Returns from the calling function when a check fails. */
#define TRY(expr)                     \
    do {                              \
        fkda_status s_ = (expr);      \
        if (s_ != FKDA_OK) return s_; \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif /* FKDA_CORE_ERROR_H */

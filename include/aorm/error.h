/** @file error.h
 * aorm error codes and the one error shape every callback sees.
 *
 * Every fallible public call returns 0 on success or a negative AORM_E*
 * code. Asynchronous outcomes arrive as a `const aorm_error *` (NULL means
 * success) that is borrowed for the duration of the callback; copy it with
 * aorm_error_copy() to keep it.
 *
 * The codes come from the single X-macro list below, which also generates
 * aorm_strerror() and aorm_errname(), so a new code cannot be forgotten in
 * either.
 *
 * Handles and ownership: no handles. A `const aorm_error *` handed to a
 * callback belongs to the library and is valid only until the callback
 * returns; aorm_error_copy() makes a heap copy the caller owns and frees
 * with aorm_error_free(). Strings from aorm_strerror() / aorm_errname()
 * are static.
 *
 * Callbacks: none here. Every function of this header may be called from
 * anywhere, inside any callback, and from any thread.
 */
#ifndef AORM_ERROR_H
#define AORM_ERROR_H

#include <stddef.h>

#include "export.h"

#ifdef __cplusplus
extern "C" {
#endif

/** X(NAME, value, description). Values are stable: never renumber. */
#define AORM_ERRNO_MAP(X)                                                              \
    X(MISUSE, -1, "library misuse (NULL handle, bad argument or call in the wrong state)") \
    X(NOMEM, -2, "out of memory")                                                      \
    X(SERVER, -3, "the server reported an error (see sqlstate)")                       \
    X(CONNECT, -4, "could not connect to the server")                                  \
    X(CONNLOST, -5, "connection to the server was lost")                               \
    X(TIMEOUT, -6, "operation deadline expired; the statement was cancelled")          \
    X(POOLTIMEOUT, -7, "timed out waiting for a pooled connection")                    \
    X(CANCELED, -8, "operation cancelled because its owner was closed")                \
    X(ABORTED, -9, "not executed: an earlier statement of the same pipeline failed")   \
    X(PROTOCOL, -10, "unexpected or malformed data from the server")                   \
    X(TYPE, -11, "value does not have the requested type")                             \
    X(RANGE, -12, "row, column or value out of range")                                 \
    X(NOTFOUND, -13, "no such column, row or object")                                  \
    X(NULLVALUE, -14, "value is SQL NULL")                                             \
    X(ENCODING, -15, "invalid text encoding or embedded NUL byte")                     \
    X(CLOSED, -16, "the engine or session is closed")                                  \
    X(TXSTATE, -17, "not allowed in the current transaction state")                    \
    X(UNKNOWN_OUTCOME, -18, "connection lost during COMMIT: outcome unknown")          \
    X(COPY, -19, "COPY protocol error")                                                \
    X(UNLOADED, -20, "relationship was not loaded")                                    \
    X(IO, -21, "operating system I/O error")                                           \
    X(NOT_COMMITTED, -22, "COMMIT was never sent: the transaction did not commit")     \
    X(AUTH, -23, "authentication or TLS verification failed")

typedef enum aorm_errno {
    AORM_OK = 0,
#define AORM__ERRNO_ENUM(name, value, desc) AORM_E##name = (value),
    AORM_ERRNO_MAP(AORM__ERRNO_ENUM)
#undef AORM__ERRNO_ENUM
} aorm_errno;

/** Human-readable description of an aorm code; never NULL ("unknown error"
 * for values not in the list). */
AORM_API const char *aorm_strerror(int code);

/** Symbolic name of an aorm code ("AORM_ETIMEOUT"); never NULL. */
AORM_API const char *aorm_errname(int code);

/** The one error shape. Strings are NUL-terminated and never NULL (empty
 * when absent). `sqlstate` is the server's five-character code, or a
 * synthesized class-08 code when a connection died without one ("08006"
 * connection failure, "08001" unable to connect, "08007" lost during
 * COMMIT: outcome unknown), or "" when the error did not come from the
 * database at all (e.g. AORM_EMISUSE). */
typedef struct aorm_error {
    int code;                 /**< negative AORM_E* */
    char sqlstate[6];
    const char *message;      /**< primary message */
    const char *detail;       /**< server DETAIL, or "" */
    const char *hint;         /**< server HINT, or "" */
    const char *constraint;   /**< violated constraint name, or "" */
    const char *table;        /**< table the error refers to, or "" */
    const char *column;       /**< column the error refers to, or "" */
} aorm_error;

/** Deep copy of an error (one allocation). Returns NULL on NULL input or
 * out of memory. Free with aorm_error_free(). */
AORM_API aorm_error *aorm_error_copy(const aorm_error *err);

/** Frees a copy made by aorm_error_copy(). Accepts NULL. */
AORM_API void aorm_error_free(aorm_error *err);

/** True when err's SQLSTATE equals `state` (e.g. "23505"). False on NULL. */
AORM_API int aorm_error_is(const aorm_error *err, const char *state);

#ifdef __cplusplus
}
#endif

#endif /* AORM_ERROR_H */

/* copy_int.h -- private to src/async_engine and its tests: how the COPY
 * pump cuts a fill's data into PQputCopyData() pieces. */
#ifndef AORM_COPY_INT_H
#define AORM_COPY_INT_H

#include <stddef.h>

#include "aorm/engine.h"

/* Caps the bytes handed to libpq per PQputCopyData() call (INT_MAX, the
 * most its int length can say; 0 or more than INT_MAX restore it). For
 * tests: a small cap makes one fill go out in many pieces without the
 * test allocating gigabytes. */
void aorm__copy_set_chunk_max(aorm_copy *cp, size_t max);

/* Length of the next piece of a buffer of len bytes of which `sent` are
 * already handed over: at most max, never past the end. */
size_t aorm__copy_piece(size_t len, size_t sent, size_t max);

#endif /* AORM_COPY_INT_H */

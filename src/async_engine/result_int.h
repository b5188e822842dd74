/* result_int.h -- private to src/async_engine: the aorm_result struct and
 * the parameter-builder internals the connection code reads when it
 * sends a statement. */
#ifndef AORM_RESULT_INT_H
#define AORM_RESULT_INT_H

#include <libpq-fe.h>

#include "aorm/result.h"

/* A result wraps one PGresult (binary format). Results handed to a
 * callback are usually embedded in the operation and borrowed; a detached
 * copy owns its PGresult and is freed with aorm_result_free(). */
struct aorm_result {
    PGresult *pg;
    int nrows;
    int ncols;
    int heap; /* 1 when malloc'd by aorm_result_detach() */
};

/* Initializes r around pg (takes no ownership). */
static inline void aorm__result_init(aorm_result *r, PGresult *pg) {
    r->pg = pg;
    r->nrows = PQntuples(pg);
    r->ncols = PQnfields(pg);
    r->heap = 0;
}

/* Pointer to parameter i's bytes inside the builder (NULL for SQL NULL). */
static inline const char *aorm__params_value(const aorm_params *p, int i) {
    return p->slots[i].len < 0 ? NULL : p->data + p->slots[i].offset;
}

#endif /* AORM_RESULT_INT_H */

/* cache_hooks.h -- what the session (src/async_session) calls of the
 * second-level cache (src/cache/cache_session.c). Every hook is a no-op
 * for a session without a cache, and cheap enough to call
 * unconditionally. */
#ifndef AORM_CACHE_HOOKS_H
#define AORM_CACHE_HOOKS_H

#include <stdbool.h>
#include <stddef.h>

#include "aorm/model.h"

struct aorm__sop;
struct aorm_session;
struct aorm_stmt;

/* Start of a get / get_many: when the model is cached and the session may
 * read it from the cache, asks Redis for the keys the identity map lacks
 * and returns true: the operation is resumed later (aorm__session_resume)
 * with the hits in the identity map, and the misses go to PostgreSQL as
 * usual. Returns false when the operation goes on at once (no cache, a
 * bypass, or Redis was already asked). */
bool aorm__cache_read_start(struct aorm__sop *op);
/* A SELECT of aorm_session_query with aorm_query_options.cache: returns
 * 0 when the operation goes on to PostgreSQL at once (no query region, a
 * bypass, a statement that cannot be cached, or Redis answered a miss:
 * the rows are written back through aorm__cache_loaded), 1 when Redis was
 * asked (the operation is resumed later: aorm__session_resume), 2 when the
 * answer is there: *items (malloc'd, n + 1 slots) holds the rows. */
int aorm__cache_query_start(struct aorm__sop *op, void ***items, size_t *n);
/* A get_many that Redis (and the identity map) answered completely:
 * returns true and *objs (malloc'd, op's nkeys slots, in key order, the
 * caller frees it) when every object is unchanged since; false: the
 * session looks the keys up as usual. */
bool aorm__cache_take_answer(struct aorm__sop *op, void ***objs);
/* Rows op read from PostgreSQL after a cache miss (objs[i] may be NULL):
 * written back, conditionally, in one pipelined step. */
void aorm__cache_loaded(struct aorm__sop *op, void *const *objs, size_t n);
/* The operation is being freed: its cache state goes (or is orphaned
 * while its Redis command is out). */
void aorm__cache_op_free(void *state);

/* Collections (selectin loads, src/loaders): for the owners of one load
 * of relationship rel (of owner model m) asks Redis for their cached
 * lists and returns a ticket, or NULL when the relationship is not cached
 * or may not be read from the cache now (nothing happens then). With a
 * ticket, then(ctx, idx, hits) runs later, once, from the loop (inside
 * the session): hits[i] answers owners[i] (hit: the children, in order,
 * objects of the session; else a miss), or hits is NULL when Redis could
 * not answer (every owner a miss). It does not run when the ticket is
 * freed first. */
typedef struct aorm__coll_hit {
    void **items; /* in the session's region */
    size_t n;
    bool hit;
} aorm__coll_hit;
typedef void (*aorm__coll_then)(void *ctx, int idx, const aorm__coll_hit *hits);
void *aorm__cache_coll_start(struct aorm__sop *op, const aorm_model *m, const aorm_relationship *rel,
                             void *const *owners, size_t n, aorm__coll_then then, void *ctx, int idx);
/* The owners whose collections were then loaded from PostgreSQL (their
 * lists are set): written back, conditionally, in one step. */
void aorm__cache_coll_loaded(void *ticket, void *const *owners, size_t n);
void aorm__cache_coll_free(void *ticket);

/* Writes of the session's transaction: a row a flush wrote (deleted: the
 * row was deleted, which may cascade on the server), a table written by a
 * statement whose rows are unknown (Core INSERT/UPDATE/DELETE), an
 * explicit BEGIN. */
void aorm__cache_note_row(struct aorm_session *s, const aorm_model *m, const void *obj, bool deleted);
void aorm__cache_note_stmt(struct aorm_session *s, const struct aorm_stmt *q);
void aorm__cache_note_begin(struct aorm_session *s);
/* End of the transaction: committed (or outcome unknown): the
 * invalidation is sent; rolled back: it is dropped. */
void aorm__cache_tx_commit(struct aorm_session *s);
void aorm__cache_tx_discard(struct aorm_session *s);
/* The session is being destroyed. */
void aorm__cache_session_free(struct aorm_session *s);

#endif /* AORM_CACHE_HOOKS_H */

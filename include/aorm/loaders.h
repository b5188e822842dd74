/** @file loaders.h
 * eager relationship loading: selectin, joined and raise.
 *
 * On an event loop a relationship cannot be loaded lazily: reading it
 * would have to wait for the database. aorm therefore loads relationships
 * eagerly, in batches, as a query asks, and reading one that was not
 * loaded is an error (AORM_EUNLOADED) that names the loader option that
 * would have loaded it -- never a hidden query.
 *
 * A load plan is a tree of options, usually a static constant:
 *
 *   static const aorm_load_plan *with_books_and_tags =
 *       AORM_PLAN(AORM_SELECTIN_THEN(author, books, AORM_SELECTIN(book, tags)));
 *
 *   aorm_query_options qo = {.load = with_books_and_tags};
 *   aorm_session_query(s, aorm_select(&author_model), &qo, on_authors, user);
 *
 * selectin: one statement per relationship per depth,
 *   `WHERE key = ANY($1)` with every key of that depth as ONE binary array
 *   parameter (a stable prepared statement whatever the number of keys;
 *   no chunking, no parameter-count limit). All loads of one depth are
 *   sent in the same loop turn, so they travel in one pipeline: depth d
 *   costs one round trip whatever the number of relationships or rows.
 *   Many-to-one targets already in the identity map are not queried again.
 *   Collections are ordered by the relationship's AORM_ORDER_BY, else by
 *   the target's primary key.
 * joined: a LEFT OUTER JOIN added to the query itself (only for loads at
 *   the first level of a plan; deeper joined loads run as selectin).
 *   Parents repeated by a collection join are de-duplicated. A target
 *   already in the query (a self-referential relationship such as
 *   employee.manager, or a model joined twice) is joined under the
 *   relationship's name as its alias: `LEFT JOIN "employees" AS "manager"`.
 * raise: the default of every relationship (AORM_LOAD_RAISE): reading it
 *   unloaded is AORM_EUNLOADED.
 *
 * Defaults: a relationship declared with `.lazy = AORM_LOAD_SELECTIN` (or
 * JOINED) is loaded by every query of its model that names no plan of
 * its own; the targets' own defaults follow, up to three levels deep,
 * never walking straight back along the inverse relationship. A query
 * with a plan uses exactly that plan.
 *
 * Relationships are read through AORM_GET_REL (or aorm_rel_get), which
 * checks the load state; reading the struct field directly is allowed
 * but unchecked. Keys: single-column or composite (model.h's _COMPOSITE
 * macros); a selectin load binds each key column as one array parameter
 * (`c = ANY($1)`, or `(c1, c2) IN (SELECT * FROM unnest($1, $2))` for a
 * composite key), so its key columns must be int2, int4, int8, text or
 * uuid. Joined loads take keys of any type.
 *
 * Handles and ownership: a load plan is a constant the caller keeps valid
 * until the operation using it has called back (a `static const` plan is
 * the usual form). Objects and lists a load fills belong to the session.
 * aorm_advisor_report() returns a malloc'd string the caller frees.
 *
 * Callbacks: aorm_session_load() calls back with the session's
 * aorm_session_cb contract (session.h); AORM_GET_REL and aorm_rel_get()
 * may be called from any callback (they never query).
 *
 * C only: AORM_PLAN and the AORM_SELECTIN / AORM_JOINED macros build C11
 * compound literals; a C++ program declares its plans in a C file.
 */
#ifndef AORM_LOADERS_H
#define AORM_LOADERS_H

#include <stdbool.h>
#include <stddef.h>

#include "export.h"
#include "model.h"
#include "session.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aorm_load {
    const aorm_model *model;          /**< the model owning the relationship */
    size_t offset;                    /**< the relationship's field */
    aorm_loader_kind strategy;        /**< AORM_LOAD_SELECTIN, AORM_LOAD_JOINED (RAISE: skip) */
    const struct aorm_load *children; /**< loads of the relationship's target objects */
    int nchildren;
} aorm_load;

struct aorm_load_plan {
    const aorm_load *loads;
    int n;
};

#define AORM__LOADS(...) ((const aorm_load[]){__VA_ARGS__})
#define AORM__NLOADS(...) ((int)(sizeof(AORM__LOADS(__VA_ARGS__)) / sizeof(aorm_load)))

/** S.f loaded with selectin / joined; the _THEN forms load the target
 * objects' relationships too. */
#define AORM_SELECTIN(S, f) {.model = &S##_model, .offset = offsetof(S, f), .strategy = AORM_LOAD_SELECTIN}
#define AORM_JOINED(S, f) {.model = &S##_model, .offset = offsetof(S, f), .strategy = AORM_LOAD_JOINED}
#define AORM_SELECTIN_THEN(S, f, ...)                                                            \
    {.model = &S##_model, .offset = offsetof(S, f), .strategy = AORM_LOAD_SELECTIN,              \
     .children = AORM__LOADS(__VA_ARGS__), .nchildren = AORM__NLOADS(__VA_ARGS__)}
#define AORM_JOINED_THEN(S, f, ...)                                                              \
    {.model = &S##_model, .offset = offsetof(S, f), .strategy = AORM_LOAD_JOINED,                \
     .children = AORM__LOADS(__VA_ARGS__), .nchildren = AORM__NLOADS(__VA_ARGS__)}

/** A plan from loads of the root model: a pointer usable in a static const
 * initializer and in aorm_query_options.load. */
#define AORM_PLAN(...) (&(const aorm_load_plan){AORM__LOADS(__VA_ARGS__), AORM__NLOADS(__VA_ARGS__)})

/** Checks a plan against the models (each load names a relationship of the
 * model it is applied to; children apply to its target). Returns 0 or
 * AORM_EMISUSE with a message in msg. The session checks plans itself
 * before running them. */
AORM_API int aorm_load_plan_validate(const aorm_model *root, const aorm_load_plan *plan, char *msg, size_t cap);

/** Loads the plan's relationships for objects already in the session (all
 * of the plan's root model), batched exactly as for a query: the C
 * counterpart of awaiting an attribute. Already loaded relationships are
 * loaded again (their collections refreshed). cb runs once. The plan is
 * read after the call returns: it must stay valid until cb (a static
 * constant; an AORM_PLAN written inside a function body lives only in
 * that block). */
AORM_API int aorm_session_load(aorm_session *s, void *const *objs, size_t n, const aorm_load_plan *plan,
                               aorm_session_cb cb, void *user);

/** Reads a relationship of a session object: *out becomes the target
 * object (many-to-one; NULL when the foreign key is NULL) or a pointer to
 * the aorm_list (collections). Returns 0, or AORM_EUNLOADED when it was
 * never loaded (the message, from aorm_session_errmsg(), names the model,
 * the relationship and the loader option to use), or AORM_EMISUSE. */
AORM_API int aorm_rel_get(aorm_session *s, const void *obj, const aorm_relationship *rel, void **out);
/** aorm_rel_get() that also names its call site, which the N+1 advisor
 * reports for an unloaded read (file may be NULL). AORM_GET_REL passes
 * __FILE__ and __LINE__; call it directly from a wrapper of your own. */
AORM_API int aorm_rel_get_at(aorm_session *s, const void *obj, const aorm_relationship *rel, void **out,
                             const char *file, int line);
#define AORM_GET_REL(s, S, obj, f, out) \
    aorm_rel_get_at((s), (obj), AORM_REL(S, f), (void **)(out), __FILE__, __LINE__)

/** 1 when the relationship of obj is loaded, 0 when not, negative on misuse. */
AORM_API int aorm_rel_loaded(const aorm_session *s, const void *obj, const aorm_relationship *rel);

/** The message of the session's last AORM_EUNLOADED (or misuse) from
 * aorm_rel_get; "" when none. */
AORM_API const char *aorm_session_errmsg(const aorm_session *s);

/* ---- the N+1 advisor ----------------------------------------------------------------
 * Counts, per call site, reads of unloaded relationships (through
 * AORM_GET_REL), and reports the loader options that would remove them.
 * On by default in debug builds, off otherwise; process-wide. */
AORM_API void aorm_advisor_enable(bool on);
AORM_API void aorm_advisor_reset(void);
/** Number of unloaded reads recorded since the last reset. */
AORM_API long aorm_advisor_count(void);
/** A malloc'd report, one line per call site, most frequent first:
 * "file.c:42: 1000 reads of unloaded author.books -> add
 * AORM_SELECTIN(author, books) to the query's load plan". */
AORM_API char *aorm_advisor_report(void);

#ifdef __cplusplus
}
#endif

#endif /* AORM_LOADERS_H */

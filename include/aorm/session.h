/** @file session.h
 * the AsyncSession: identity map, unit of work, lazy
 * transactions, deferred operations.
 *
 * A session turns rows into objects and object changes into SQL without
 * ever blocking the loop. Every call queues an operation and returns at
 * once; the operations of one session run in the order they were queued,
 * and their callbacks fire exactly once each, later, in that order.
 * Operations of many sessions issued in the same loop turn share the
 * engine's pipelines.
 *
 * Pipelining: what a session queues in one loop turn goes out in one
 * pipeline write when it can. Behind an operation whose statement is out
 * and that only waits for its answer, the next ones are sent at once if
 * each is one statement whose answer needs nothing before it: gets,
 * get_many, queries without a load plan (in autocommit or in the
 * transaction), and, inside the transaction, executes and the COMMIT
 * (nothing is sent behind a COMMIT). A flush, a load plan, a savepoint, a
 * rollback, an explicit begin, or a statement that would begin the
 * transaction waits for what is in front of it, as before. So a
 * statement queued in the same turn is built from the session's state of
 * that turn: it does not see what the callbacks in front of it change
 * (their autoflush included); queue it from the callback that must run
 * first when it should. Inside the transaction, an operation sent behind a
 * statement that fails answers AORM_ETXSTATE (the server skipped it), the
 * COMMIT too: the session is rollback-required, as it would have been
 * had each waited. Gets of one model queued one after the other are sent
 * as one `pk = ANY($1)` statement (not with a second-level cache).
 *
 * Objects. The session allocates, owns and frees the objects it loads and
 * the ones created through it (aorm_session_new_object): they live in the
 * session's arena until aorm_session_free(). Your struct is untouched:
 * the session keeps each object's state (transient, pending, persistent,
 * deleted, detached), its loaded snapshot and its relationship load state
 * beside it. Change detection compares fields with the snapshot at flush:
 * just assign struct fields. Strings are treated as immutable values:
 * assign a new pointer (aorm_session_strdup() puts a copy in the arena; a
 * pointer to memory you own is copied into the arena at flush), never
 * write into a string the session gave you.
 *
 * Identity map: at most one object per (model, primary key) per session.
 * Loading a row whose object is already present returns that object and
 * leaves its pending changes alone (unless populate_existing is asked).
 *
 * Transactions are lazy. Reads run in autocommit on shared, pipelined
 * connections until the session first writes (flush, or executes a
 * statement that is not a plain SELECT: Core writes and any raw SQL, which
 * the session cannot inspect), begins explicitly, or locks rows (FOR
 * UPDATE); from then on the session holds one
 * connection until commit or rollback. A failed statement inside a
 * transaction puts the session in the *rollback required* state: every
 * operation except rollback fails with AORM_ETXSTATE until
 * aorm_session_rollback(). So does a BEGIN that fails (no connection
 * within the pool timeout, a refused BEGIN): nothing then runs outside
 * the transaction that was asked for. So does the loss of the held
 * connection, even while the session has nothing in flight (its backend
 * terminated): aorm_session_rollback_required() says so as soon as the
 * engine has seen it, the next operation fails with AORM_ECONNLOST
 * (SQLSTATE 08006), and a commit with AORM_ENOT_COMMITTED.
 *
 * Commit outcomes: a commit either succeeds, or its error says whether
 * anything was committed. AORM_EUNKNOWN_OUTCOME (SQLSTATE 08007): the
 * COMMIT was sent and its answer never came; the rows may or may not be
 * there. Objects the transaction inserted or deleted then leave the
 * session (DETACHED, keys kept, never inserted again: look the rows up to
 * find out), the objects it updated are expired. Any other error means
 * nothing was committed: a COMMIT refused by the server (a deferred
 * constraint, a serialization failure) or never sent
 * (AORM_ENOT_COMMITTED, e.g. the connection was lost before it) leaves
 * the objects as a rollback does.
 *
 * Callbacks: aorm_session_cb arguments may be NULL (the outcome is then
 * not reported); query, get and execute callbacks may not. Closing a
 * session calls pending callbacks from inside aorm_session_free().
 *
 * Engine: a session belongs to its engine. Freeing the engine first
 * cancels the session's work (each callback once with AORM_ECANCELED,
 * from inside aorm_engine_free(); a COMMIT in flight gets
 * AORM_EUNKNOWN_OUTCOME), ends its transaction, and leaves the session a
 * shell: every later call fails with AORM_ECLOSED (object creation
 * returns NULL) until aorm_session_free(), which is still required and
 * safe.
 *
 * Handles and ownership (in short; the paragraphs above say more):
 *   - aorm_session: made by aorm_session_new(), owned by the caller, freed
 *     with aorm_session_free() (NULL accepted), before or after its engine.
 *   - objects, their strings and relationship lists: owned by the session,
 *     valid until it is freed (an expunged object's memory too).
 *   - the aorm_objects array, aorm_result and aorm_error handed to a
 *     callback: borrowed for that callback's duration.
 *   - statements passed to the session are taken over by it.
 *
 * Callbacks, what they may call: every session callback runs on the
 * loop's thread, once, never inside the call that queued it, and may call
 * any function of this session (queue the next operation, commit, free
 * it: the memory goes when the callback returns), of other sessions and of
 * the engine, aorm_engine_free() included.
 */
#ifndef AORM_SESSION_H
#define AORM_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"
#include "export.h"
#include "model.h"
#include "sql.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aorm_session aorm_session;
typedef struct aorm_load_plan aorm_load_plan; /**< see loaders.h */

typedef enum aorm_object_state {
    AORM_TRANSIENT = 0, /**< created through the session, not added */
    AORM_PENDING,       /**< added: INSERT at the next flush */
    AORM_PERSISTENT,    /**< has a row; changes are flushed as UPDATE */
    AORM_DELETED,       /**< marked for DELETE at the next flush */
    AORM_DETACHED       /**< expunged, deleted and flushed, or inserted/deleted by a transaction
                             whose COMMIT outcome is unknown; never written again by the session */
} aorm_object_state;

typedef struct aorm_session_options {
    bool expire_on_commit;      /**< expire every object after commit (false) */
    bool autoflush;             /**< flush pending changes before each query (true) */
    double statement_timeout;   /**< deadline of each statement, 0 = engine default */
    size_t arena_block;         /**< arena block size in bytes (64 KiB) */
    struct aorm_cache *cache;   /**< second-level cache to read through (cache.h), or NULL */
} aorm_session_options;

AORM_API void aorm_session_options_init(aorm_session_options *o);

/** Creates a session on an engine (o may be NULL). Returns NULL on out of
 * memory. */
AORM_API aorm_session *aorm_session_new(aorm_engine *e, const aorm_session_options *o);

/** Closes the session: every queued or running operation calls back once
 * with AORM_ECANCELED (a commit whose COMMIT is already sent with
 * AORM_EUNKNOWN_OUTCOME), its statements in flight are cancelled in the
 * engine (their answers are dropped), an open transaction is rolled
 * back, the held connection is released and every object and string of
 * the session is freed. Accepts NULL. May be called from a callback of
 * the session (the memory is released when that callback returns), and
 * after the session's engine has been freed. */
AORM_API void aorm_session_free(aorm_session *s);

/** The session's engine, or NULL once that engine has been freed. */
AORM_API aorm_engine *aorm_session_engine(const aorm_session *s);
AORM_API void aorm_session_set_data(aorm_session *s, void *data);
AORM_API void *aorm_session_data(const aorm_session *s);

/* ---- objects ------------------------------------------------------------------ */

/** A new zeroed object of model m, owned by the session, TRANSIENT. NULL on
 * out of memory. Its INSERT writes every column with the value its field
 * holds, zero, false and NULL included, also in a column that declares a
 * server_default: only a SERIAL / IDENTITY field left 0 is generated by
 * the server, and only the columns you leave to the server with
 * aorm_object_use_default() take their defaults. */
AORM_API void *aorm_session_new_object(aorm_session *s, const aorm_model *m);

/** Leaves a column of a new object (TRANSIENT or PENDING) to its server
 * default: col is AORM_COL(S, field) of the object's model and must
 * declare a server_default; NULL means every column of the model that
 * declares one. At the INSERT, such a column is left out while its field
 * is still empty (0, false, NULL), and the value the server gave it is
 * read back into the field (INSERT ... RETURNING) when the flush
 * succeeds. A field you set to something else before the flush is
 * written all the same: a value the program set is never replaced. A
 * rollback of the INSERT empties the field again, so that the next
 * INSERT leaves it to the server again. Returns 0, AORM_EMISUSE (not a
 * new object of this session, not a column of its model, no server
 * default) or AORM_ENOMEM. */
AORM_API int aorm_object_use_default(aorm_session *s, void *obj, const aorm_expr *col);
/** Undoes aorm_object_use_default() for col (NULL: every column): the
 * INSERT writes the field's value, whatever it is (the initial state of
 * every column). Same returns. */
AORM_API int aorm_object_use_value(aorm_session *s, void *obj, const aorm_expr *col);
/** A copy of str (or NULL) in the session's arena. */
AORM_API char *aorm_session_strdup(aorm_session *s, const char *str);
/** Memory in the session's arena, freed with the session. */
AORM_API void *aorm_session_alloc(aorm_session *s, size_t n);

/** Appends obj to a relationship collection of a session object (the
 * items array is grown in the session's arena; loaded collections may be
 * appended to the same way). Returns 0 or AORM_ENOMEM / AORM_EMISUSE. */
AORM_API int aorm_session_list_append(aorm_session *s, aorm_list *list, void *obj);

AORM_API aorm_object_state aorm_object_state_of(const aorm_session *s, const void *obj);
/** The model of a session object, or NULL when obj is not one. */
AORM_API const aorm_model *aorm_object_model(const aorm_session *s, const void *obj);
/** True when a persistent object's fields differ from its snapshot. */
AORM_API bool aorm_object_modified(const aorm_session *s, const void *obj);

/** TRANSIENT -> PENDING (and, through save-update cascades, every object
 * reachable from it by relationships). Persistent objects: no-op. */
AORM_API int aorm_session_add(aorm_session *s, void *obj);
/** PERSISTENT -> DELETED (cascading where declared); PENDING -> TRANSIENT. */
AORM_API int aorm_session_delete(aorm_session *s, void *obj);
/** Forgets the object: DETACHED, out of the identity map. Its memory stays
 * valid until the session is freed. */
AORM_API int aorm_session_expunge(aorm_session *s, void *obj);
AORM_API void aorm_session_expunge_all(aorm_session *s);
/** Marks a persistent object's columns stale: the next query that returns
 * its row overwrites them (as with populate_existing). */
AORM_API int aorm_session_expire(aorm_session *s, void *obj);

/* ---- queries ---------------------------------------------------------------------- */

/** The objects of one query, in result order; borrowed for the callback
 * (the objects themselves belong to the session and stay). */
typedef struct aorm_objects {
    void **items;
    size_t len;
} aorm_objects;

typedef void (*aorm_objects_cb)(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user);
typedef void (*aorm_object_cb)(aorm_session *s, void *obj, const aorm_error *err, void *user);
typedef void (*aorm_session_cb)(aorm_session *s, const aorm_error *err, void *user);
typedef void (*aorm_rows_cb)(aorm_session *s, aorm_result *res, const aorm_error *err, void *user);

/** Options of one query. The load plan is read while the operation runs,
 * after the call returns: it must stay valid until the callback (declare
 * plans as static constants, as loaders.h shows). */
typedef struct aorm_query_options {
    const aorm_load_plan *load;  /**< relationships to load eagerly (loaders.h), or NULL */
    bool populate_existing;      /**< overwrite objects already in the session */
    double deadline;             /**< per statement, 0 = session default */
    bool cache;                  /**< aorm_session_query: answer from the query region of the
                                      statement's model (aorm_cache_query, cache.h) when the
                                      session has a cache; ignored otherwise */
} aorm_query_options;

/** Fills every field with its default: no load plan, objects already in the
 * session kept, the session's deadline (the same as passing NULL options). */
AORM_API void aorm_query_options_init(aorm_query_options *o);

/** Runs a SELECT of a model (aorm_select(&m) plus where/order/joins...) and
 * hands over its objects through the identity map. Takes over q (freed by
 * the session, also on error). opts may be NULL. */
AORM_API int aorm_session_query(aorm_session *s, aorm_stmt *q, const aorm_query_options *opts,
                                aorm_objects_cb cb, void *user);

/** Runs any Core or raw statement in the session's context (its
 * transaction, if one is open) and hands over the raw result (scalars,
 * row tuples, RETURNING, bulk UPDATEs). Takes over q. */
AORM_API int aorm_session_execute(aorm_session *s, aorm_stmt *q, aorm_rows_cb cb, void *user);
/** aorm_session_execute of a prepared statement (sql.h) with its values
 * bound now: nothing is compiled; p stays the caller's (it may be bound
 * again and executed again at once, even before this one's answer).
 * AORM_EMISUSE when a placeholder has no value. */
AORM_API int aorm_session_execute_prepared(aorm_session *s, aorm_prepared *p, aorm_rows_cb cb, void *user);

/** The object of model m whose primary key equals the key fields of `key`
 * (a struct of model m with its primary-key fields set; composite keys
 * work the same). Answered from the identity map without any statement
 * when the object is there; obj is NULL (and err NULL) when no row
 * exists. */
AORM_API int aorm_session_get(aorm_session *s, const aorm_model *m, const void *key,
                              const aorm_query_options *opts, aorm_object_cb cb, void *user);
/** Several keys at once: one statement for those not in the identity map,
 * `pk = ANY($1)`, or for a composite key `(pk1, pk2) IN (SELECT * FROM
 * unnest($1, $2))` (key columns of type int2, int4, int8, text or uuid;
 * AORM_EMISUSE otherwise). objs->items[i] answers keys[i] (NULL when
 * missing). */
AORM_API int aorm_session_get_many(aorm_session *s, const aorm_model *m, const void *const *keys, size_t n,
                                   const aorm_query_options *opts, aorm_objects_cb cb, void *user);
/** Options of aorm_session_stream(). */
typedef struct aorm_stream_options {
    int batch;    /**< rows per batch (1000) */
    bool release; /**< objects are not kept by the session (false): see aorm_session_stream */
} aorm_stream_options;

AORM_API void aorm_stream_options_init(aorm_stream_options *o);

/** A batch of a stream (objs, err NULL): return AORM_STREAM_NEXT,
 * AORM_STREAM_PAUSE (then aorm_session_stream_resume) or AORM_STREAM_STOP
 * (engine.h). The end (objs NULL): err NULL when every row was handed
 * over or the stream was stopped, else the failure; its return value is
 * ignored. */
typedef int (*aorm_stream_objects_cb)(aorm_session *s, aorm_objects *objs, const aorm_error *err, void *user);

/** Streams the objects of a SELECT of a model (takes over q) in batches,
 * through a server-side cursor inside the session's transaction (begun
 * if none is open, as a locking read does: commit or roll back after),
 * with at most two batches in memory (aorm_conn_stream). Without
 * release, the objects go through the identity map and stay in the
 * session like any loaded object. With release, they never enter it:
 * each batch's objects (plain structs, aorm_object_state_of() says
 * DETACHED) are valid until the callback returns and their memory is
 * reused for the next batch, so a stream of any length runs in constant
 * memory. Load plans do not apply. Operations queued behind the stream
 * run after its end. Returns 0 or a negative code (cb never runs). */
AORM_API int aorm_session_stream(aorm_session *s, aorm_stmt *q, const aorm_stream_options *o,
                                 aorm_stream_objects_cb cb, void *user);
/** Ends a pause of the session's running stream (the next batch comes
 * later, from the loop). Returns 0 or AORM_EMISUSE (no paused stream). */
AORM_API int aorm_session_stream_resume(aorm_session *s);

/** Re-reads the object's columns from the database (overwriting changes). */
AORM_API int aorm_session_refresh(aorm_session *s, void *obj, aorm_session_cb cb, void *user);

/* ---- unit of work and transactions ----------------------------------------------- */

/** Sends every pending change in foreign-key order as one pipeline on the
 * session's transaction (beginning it if needed): INSERTs of new objects
 * (keys generated by the server are filled in, and so are the foreign
 * keys of their children), UPDATEs of changed columns only, DELETEs. On
 * failure the whole flush is rolled back on the server, the session is in
 * rollback-required state and err names the SQLSTATE and constraint. */
AORM_API int aorm_session_flush(aorm_session *s, aorm_session_cb cb, void *user);
/** Flush, then COMMIT; releases the connection. A failed flush leaves the
 * session rollback-required (nothing was committed). A failed COMMIT ends
 * the transaction: AORM_EUNKNOWN_OUTCOME when it was sent and never
 * answered (what the transaction inserted or deleted is DETACHED, what it
 * updated expired, see the top of this file), any other error when
 * nothing was committed (the objects as after a rollback;
 * AORM_ENOT_COMMITTED when the COMMIT could not be sent). */
AORM_API int aorm_session_commit(aorm_session *s, aorm_session_cb cb, void *user);
/** ROLLBACK (if a transaction is open), release the connection, discard
 * pending changes: new objects become TRANSIENT again, deleted ones
 * PERSISTENT, and modified persistent objects are expired. */
AORM_API int aorm_session_rollback(aorm_session *s, aorm_session_cb cb, void *user);

/** Begins a transaction now (for an isolation level, read-only mode, or to
 * lock rows); without it the first flush begins one. If it fails (e.g.
 * AORM_EPOOLTIMEOUT), the session is rollback-required: no later
 * statement runs in another transaction or in autocommit until
 * aorm_session_rollback(). The same holds for a transaction begun by a
 * flush or a locking query. */
AORM_API int aorm_session_begin(aorm_session *s, const aorm_tx_options *tx, aorm_session_cb cb, void *user);
/** SAVEPOINT; the matching release/rollback come from
 * aorm_session_release_nested / aorm_session_rollback_nested. */
AORM_API int aorm_session_begin_nested(aorm_session *s, aorm_session_cb cb, void *user);
AORM_API int aorm_session_release_nested(aorm_session *s, aorm_session_cb cb, void *user);
AORM_API int aorm_session_rollback_nested(aorm_session *s, aorm_session_cb cb, void *user);

/** True from the start of a transaction (explicit, or by a first write)
 * to its commit or rollback, a failed one included. */
AORM_API bool aorm_session_in_transaction(const aorm_session *s);
/** True when only aorm_session_rollback() may follow: a statement or the
 * BEGIN of the transaction failed, or its connection was lost (seen by
 * the engine, even with nothing in flight). */
AORM_API bool aorm_session_rollback_required(const aorm_session *s);

/** Statements this session has sent (for tests and the N+1 advisor). */
AORM_API uint64_t aorm_session_statements(const aorm_session *s);


/* ---- callback chaining ---------------------------------------------------------------
 *
 * A chain runs steps one after another, each seeing the outcome of the
 * previous one, with a single `done` callback that gets the first failure
 * (the remaining steps are skipped) or NULL after the last step:
 *
 *   static int find(aorm_chain *c, void *u) { return aorm_chain_get(c, &author_model, &(author){.id = 42}); }
 *   static int load(aorm_chain *c, void *u) {
 *       author *a = aorm_chain_object(c);
 *       aorm_chain_keep(c, 0, a);                       // for later steps
 *       return aorm_chain_load(c, (void *[]){a}, 1, plan_books);  // loaders.h
 *   }
 *   static int edit(aorm_chain *c, void *u) {
 *       author *a = aorm_chain_kept(c, 0);
 *       ((book *)a->books.items[0])->title = "New title";
 *       return aorm_chain_commit(c);
 *   }
 *   aorm_chain_run(s, AORM_STEPS(find, load, edit), on_done, user);
 *
 * A step queues at most one operation with an aorm_chain_*() call and
 * returns its result (0), or returns 0 without queuing anything (the next
 * step runs at once), or returns a negative code to stop the chain: done
 * then gets that code. aorm_chain_fail() stops it with a message. */
typedef struct aorm_chain aorm_chain;
typedef int (*aorm_step_fn)(aorm_chain *c, void *user);

#define AORM_STEPS(...) ((const aorm_step_fn[]){__VA_ARGS__}), \
    ((int)(sizeof((const aorm_step_fn[]){__VA_ARGS__}) / sizeof(aorm_step_fn)))

/** Runs the steps (copied) on s. done runs exactly once. Returns 0 or a
 * negative code (done never runs then). */
AORM_API int aorm_chain_run(aorm_session *s, const aorm_step_fn *steps, int nsteps, aorm_session_cb done, void *user);

/** Runs the steps as one transaction: BEGIN (with tx, may be NULL) before
 * the first step and COMMIT after the last. BEGIN is not waited for: it
 * goes out in one write with the first step's statement (a BEGIN the
 * server refuses fails that statement, and the attempt). When the transaction fails
 * with a serialization failure (40001) or a deadlock (40P01), it is
 * rolled back, the session's identity map is cleared (objects from the
 * failed attempt must not be reused) and the steps run again from the
 * first, up to max_attempts times in all; done gets the last error if
 * every attempt failed. Steps must not commit or roll back themselves. */
AORM_API int aorm_session_run_transaction(aorm_session *s, const aorm_tx_options *tx, int max_attempts,
                                          const aorm_step_fn *steps, int nsteps, aorm_session_cb done, void *user);

/** Operations a step may queue (one per step). */
AORM_API int aorm_chain_get(aorm_chain *c, const aorm_model *m, const void *key);
AORM_API int aorm_chain_query(aorm_chain *c, aorm_stmt *q, const aorm_query_options *opts);
AORM_API int aorm_chain_execute(aorm_chain *c, aorm_stmt *q);
AORM_API int aorm_chain_flush(aorm_chain *c);
AORM_API int aorm_chain_commit(aorm_chain *c);
AORM_API int aorm_chain_rollback(aorm_chain *c);
AORM_API int aorm_chain_begin(aorm_chain *c, const aorm_tx_options *tx);
/* (plan type from loaders.h; the plan must stay valid until the step ends) */
AORM_API int aorm_chain_load(aorm_chain *c, void *const *objs, size_t n, const aorm_load_plan *plan);
/** Stops the chain: done gets `code` (AORM_EMISUSE when not negative)
 * with this message. */
AORM_API int aorm_chain_fail(aorm_chain *c, int code, const char *message);

/** The previous step's outcome: the object of a get (NULL when no row),
 * the objects of a query (the array is valid during the next step), the
 * result of an execute (valid during the next step). */
AORM_API void *aorm_chain_object(const aorm_chain *c);
AORM_API aorm_objects *aorm_chain_objects(aorm_chain *c);
AORM_API aorm_result *aorm_chain_result(const aorm_chain *c);
AORM_API aorm_session *aorm_chain_session(const aorm_chain *c);
AORM_API void *aorm_chain_user(const aorm_chain *c);
/** Values carried across steps: 8 slots, valid until the chain ends (not
 * inside `done`: keep what done needs in your own user data). */
AORM_API void aorm_chain_keep(aorm_chain *c, int slot, void *value);
AORM_API void *aorm_chain_kept(const aorm_chain *c, int slot);
/** Attempt number of aorm_session_run_transaction (1 for the first). */
AORM_API int aorm_chain_attempt(const aorm_chain *c);

#ifdef __cplusplus
}
#endif

#endif /* AORM_SESSION_H */

/** @file migrate.h
 * migrations: versioned revision files, applied under a polled advisory
 * lock, checksummed, and written from the models by autogenerate.
 *
 * A migration directory holds revision files (`*.sql`). Each one opens
 * with a header and has an up and a down section:
 *
 *   -- revision: 3f2a9c1b7d10
 *   -- parents: 1a2b3c4d5e6f            (none for a root; two or more: a merge)
 *   -- message: add books.isbn
 *   -- transaction: false               (optional: run without a transaction)
 *
 *   -- migrate:up
 *   ALTER TABLE books ADD COLUMN isbn text;
 *
 *   -- migrate:down
 *   ALTER TABLE books DROP COLUMN isbn;
 *
 * The parents make a graph: branches (two revisions with one parent) and
 * merges (a revision with several parents). A head is a revision no other
 * names as its parent; `upgrade` without a target wants exactly one head
 * ("heads" upgrades to all of them).
 *
 * The database records what it has applied in a history table (default
 * "aorm_migrate_history"): one row per applied revision with the SHA-256
 * of its file. Before any run the runner compares: a file whose content
 * changed after it was applied, or an applied revision whose file is gone,
 * stops the run (AORM_MIGRATE_TAMPERED / AORM_MIGRATE_MISSING) until the
 * file is restored or `repair` records what the directory now holds.
 *
 * Each revision runs in its own transaction (BEGIN, SET LOCAL lock_timeout
 * and statement_timeout, its statements, the history row, COMMIT): a
 * failure rolls back that revision alone, the ones before it stay
 * applied, and the report names the file, the line, the statement and
 * the SQLSTATE. A lock timeout (55P03) is retried with a growing delay.
 * A file with `-- transaction: false` runs statement by statement in
 * autocommit, for what cannot run in a transaction block (CREATE INDEX
 * CONCURRENTLY); it gets statement_timeout but no lock_timeout (a
 * CONCURRENTLY build waits for older transactions by design, and a lock
 * timeout in its later phases would leave an INVALID index) and is not
 * retried. A transactional file that says CONCURRENTLY (other than REFRESH
 * MATERIALIZED VIEW CONCURRENTLY, which may run in a transaction), or any
 * file that holds BEGIN / COMMIT / ROLLBACK itself, is refused when it is
 * read, before anything runs.
 *
 * Two runners (two deploys): every command that writes takes a session
 * advisory lock first, on a connection of its own held for the run, by
 * polling pg_try_advisory_lock() every lock_poll seconds up to lock_wait;
 * a blocking pg_advisory_lock() would sit in a transaction with a
 * snapshot, and CREATE INDEX CONCURRENTLY of the runner holding the lock
 * waits for every such snapshot: a deadlock. The second runner finds the
 * history complete once it has the lock and reports nothing to do.
 *
 * Everything runs on the engine's loop: a command queues its work and
 * returns; its callback runs once, later. Revision files are read (local,
 * small files, blocking reads) when a command starts. A run needs two
 * connections of the engine at once (the lock's and the work's), a role
 * that may change the schema, and a direct connection to PostgreSQL: not
 * through PgBouncer in transaction mode, where a session lock means
 * nothing (an engine with the pgbouncer option refuses it).
 *
 * Statements are split at top-level semicolons, with PostgreSQL's lexical
 * rules for strings, quoted identifiers, dollar quotes and comments; a
 * function body written with BEGIN ATOMIC ... END (which holds bare
 * semicolons) must be dollar-quoted instead.
 *
 * Handles and ownership: aorm_migrate is made by aorm_migrate_new() and
 * owned by the caller, who frees it with aorm_migrate_free() (NULL
 * accepted) before the engine and the loop. Options are copied except the
 * model list, which must outlive the handle. One command runs at a time
 * per handle; it holds up to two of the engine's connections until its
 * callback. A report is borrowed for its callback's duration; text from
 * aorm_migrate_history() / aorm_migrate_heads() is the caller's to free().
 *
 * Callbacks: a command's callback runs once, on the loop's thread, never
 * inside the call that started it (except with AORM_ECANCELED from inside
 * aorm_migrate_free()), and may start the next command on the handle or
 * free it. The log callback must not call the handle. */
#ifndef AORM_MIGRATE_H
#define AORM_MIGRATE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"
#include "export.h"
#include "loop.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aorm_migrate aorm_migrate;

typedef struct aorm_migrate_options {
    /** The directory of revision files. Copied. Required. */
    const char *directory;
    /** History table name (in the search path's first schema):
     * "aorm_migrate_history". Copied. */
    const char *history_table;
    /** The models autogenerate and check compare with the database (only
     * models without an explicit schema). Not copied: must outlive the
     * handle. */
    const aorm_model *const *models;
    int nmodels;
    double lock_timeout;      /**< SET LOCAL lock_timeout of each transactional revision, s (5) */
    double statement_timeout; /**< SET statement_timeout of each revision, s; 0 none (300) */
    int lock_retries;         /**< retries of a revision that failed on a lock timeout (5) */
    double retry_delay;       /**< first delay before such a retry, s; doubled each time (0.5) */
    double lock_wait;         /**< how long a runner waits for the advisory lock, s (120) */
    double lock_poll;         /**< interval between pg_try_advisory_lock() polls, s (0.2) */
    int64_t lock_key;         /**< advisory lock key; 0: derived from the history table name */
    /** Offline: upgrade, downgrade and stamp write the SQL they would run
     * (a psql script, history writes included) to the report's text and
     * run nothing, take no lock and create no table. With an engine, the
     * plan starts from the database's history; without one (NULL engine),
     * from an empty database. */
    bool offline;
    /** Progress lines ("applying 3f2a9c1b7d10 add books.isbn"), at
     * AORM_LOG_INFO; NULL: none. */
    aorm_log_fn log;
    void *log_user;
} aorm_migrate_options;

/** Fills every field with its default (directory NULL). */
AORM_API void aorm_migrate_options_init(aorm_migrate_options *o);

/** What went wrong, beyond the aorm_error (NONE when nothing did). */
typedef enum aorm_migrate_problem {
    AORM_MIGRATE_OK = 0,
    AORM_MIGRATE_BAD_FILE,       /**< a revision file could not be read or parsed */
    AORM_MIGRATE_BAD_GRAPH,      /**< duplicate ids, unknown parents, a cycle */
    AORM_MIGRATE_MULTIPLE_HEADS, /**< more than one head and no target that says which */
    AORM_MIGRATE_UNKNOWN_TARGET, /**< the target names no revision (or an ambiguous prefix) */
    AORM_MIGRATE_TAMPERED,       /**< an applied file changed since it was applied */
    AORM_MIGRATE_MISSING,        /**< an applied revision has no file */
    AORM_MIGRATE_LOCK_WAIT,      /**< another runner held the lock for longer than lock_wait */
    AORM_MIGRATE_FAILED,         /**< a statement of a revision failed (see file, line, statement) */
    AORM_MIGRATE_NOT_AT_HEAD,    /**< autogenerate: the database has pending revisions */
    AORM_MIGRATE_DRIFT,          /**< check: models and database differ (not an error) */
    AORM_MIGRATE_DATABASE        /**< any other failure talking to the database */
} aorm_migrate_problem;

/** The outcome of a command; borrowed for the duration of the callback.
 * Strings are never NULL ("" when absent). */
typedef struct aorm_migrate_report {
    aorm_migrate_problem problem;
    /** One line saying what happened or what went wrong, with the file,
     * line, SQLSTATE and statement for a failed revision. */
    const char *message;
    /** Command output: the status listing, the differences found by
     * check and autogenerate, the offline SQL, what stamp and repair
     * changed. */
    const char *text;
    /** Revisions applied (upgrade) or reverted (downgrade), in order. */
    const char *const *done;
    int ndone;
    bool nothing_to_do;       /**< the history already was what the command asked for */
    bool drift;               /**< check: the models and the database differ */
    const char *revision;     /**< the failing (or, for new, the written) revision */
    const char *file;         /**< its file (for new: the file written) */
    const char *statement;    /**< the failing statement */
    int line;                 /**< the statement's first line in the file */
} aorm_migrate_report;

/** A command's outcome: err is NULL on success (check with drift is a
 * success: see r->drift), else the error (a server error keeps its
 * SQLSTATE). r is never NULL. May free the handle. */
typedef void (*aorm_migrate_cb)(aorm_migrate *m, const aorm_migrate_report *r, const aorm_error *err,
                                void *user);

/** A handle over a directory. `e` may be NULL for the commands that need
 * no database (history, heads, new without autogenerate, offline runs
 * from an empty database). Returns NULL on out of memory or a missing
 * directory option, with the reason in errmsg (may be NULL). */
AORM_API aorm_migrate *aorm_migrate_new(aorm_loop *loop, aorm_engine *e, const aorm_migrate_options *o,
                                        char *errmsg, size_t errcap);

/** Frees the handle. A command still running is called back with
 * AORM_ECANCELED (and a NULL handle) from inside this call; its work stops
 * at the next step on its own (a revision already sent completes or rolls
 * back, an open transaction is rolled back, the lock is released), so the
 * engine and the loop must outlive it until then: free the engine after
 * the handle, and the engine's freeing ends whatever is left. Accepts
 * NULL. May be called from inside the command's callback. */
AORM_API void aorm_migrate_free(aorm_migrate *m);

/* Commands. Each returns 0 (cb runs once, later) or a negative code (cb
 * never runs): AORM_EMISUSE for a NULL argument, a command already
 * running on this handle, a command that needs the engine the handle
 * lacks, or check/autogenerate without models (or with a model that names
 * its own schema: they compare the search path's first schema only);
 * AORM_ENOMEM. Targets: a revision id or a unique prefix of one,
 * "head" (the single head), "heads" (all of them), "base" (nothing
 * applied: downgrade and stamp only). */

/** Applies every revision the target needs that is not applied yet, in
 * graph order (parents first). target NULL means "head". */
AORM_API int aorm_migrate_upgrade(aorm_migrate *m, const char *target, aorm_migrate_cb cb, void *user);
/** Reverts every applied revision that the target does not need,
 * children first. */
AORM_API int aorm_migrate_downgrade(aorm_migrate *m, const char *target, aorm_migrate_cb cb, void *user);
/** Makes the history say the target and its ancestors are applied (and
 * nothing else), running no revision. */
AORM_API int aorm_migrate_stamp(aorm_migrate *m, const char *target, aorm_migrate_cb cb, void *user);
/** Lists every revision as applied or pending, the heads, and any
 * tampered or missing file (r->problem says the first). */
AORM_API int aorm_migrate_status(aorm_migrate *m, aorm_migrate_cb cb, void *user);
/** Records the current checksum of every applied file that changed, and
 * forgets applied revisions whose file is gone; r->text lists each. */
AORM_API int aorm_migrate_repair(aorm_migrate *m, aorm_migrate_cb cb, void *user);
/** Compares the models with the database (tables, columns with type,
 * nullability and default, primary keys, foreign keys, unique
 * constraints, indexes) and looks for pending revisions: r->drift and the
 * differences in r->text. */
AORM_API int aorm_migrate_check(aorm_migrate *m, aorm_migrate_cb cb, void *user);

enum {
    /** new: diff the models against the database and write the SQL */
    AORM_MIGRATE_AUTOGENERATE = 1u << 0,
    /** new: accept several heads and make the revision their merge */
    AORM_MIGRATE_MERGE = 1u << 1
};

/** Writes a new revision file whose parents are the current heads (one,
 * or several with AORM_MIGRATE_MERGE). With AORM_MIGRATE_AUTOGENERATE its
 * up and down sections hold the differences between the models and the
 * database (which must be at its heads); what cannot be decided (a
 * rename, a table or column the models no longer have) is written as a
 * commented hint, never as a drop. No differences: no file, and
 * r->nothing_to_do. r->file is the path written, r->revision its id,
 * r->text the differences (autogenerate). */
AORM_API int aorm_migrate_create(aorm_migrate *m, const char *message, unsigned flags, aorm_migrate_cb cb,
                                 void *user);

/** The directory's revisions in graph order, one per line ("id  parents
 * -> message", heads marked), and the heads alone. Synchronous (files
 * only). On success *out is malloc'd text; on failure the reason is in
 * errmsg. Returns 0 or a negative code. */
AORM_API int aorm_migrate_history(aorm_migrate *m, char **out, char *errmsg, size_t errcap);
AORM_API int aorm_migrate_heads(aorm_migrate *m, char **out, char *errmsg, size_t errcap);

/** The handle's user data slot (never touched by aorm). */
AORM_API void aorm_migrate_set_data(aorm_migrate *m, void *data);
AORM_API void *aorm_migrate_data(const aorm_migrate *m);

#ifdef __cplusplus
}
#endif

#endif /* AORM_MIGRATE_H */

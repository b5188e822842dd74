/** @file engine.h
 * the async engine: a pool of non-blocking PostgreSQL
 * connections driven by an aorm_loop, always in pipeline mode.
 *
 * Every statement is queued and returns at once; at the loop's before-poll
 * stage everything queued in that turn is written as one pipeline per
 * connection; results come back in binary format and are handed to the
 * statement's callback, exactly once, never from inside the call that
 * queued it.
 *
 * Two ways to run statements:
 *   - aorm_engine_execute(): autocommit. Statements of many callers share
 *     the pooled connections and their pipelines; each statement is its
 *     own implicit transaction (it gets its own pipeline sync), unless it
 *     is flagged AORM_EXEC_READONLY, in which case it may share a sync with
 *     other read-only statements (an error in one of them makes the server
 *     skip the rest, which the engine then re-sends: they were never run).
 *   - aorm_engine_acquire(): a held connection (aorm_conn) for a
 *     transaction: begin, statements, savepoints, commit or rollback, COPY.
 *     Released with aorm_conn_release(); a connection released dirty (open
 *     transaction, unread results) is rolled back or discarded, never
 *     handed to the next caller as it is.
 *
 * Host names: libpq looks them up blocking, so before each connection
 * attempt the engine looks up every `host` entry that is not an address
 * or a socket directory (PGHOST too) on its helper threads, all at once,
 * and hands libpq every address found, A and AAAA, in getaddrinfo's
 * order, each once, as a `hostaddr` list, with `host` (and a `port`
 * list) repeated to match: host=a,b where a has two addresses becomes
 * host=a,a,b hostaddr=x1,x2,y, so libpq tries them all in order and TLS
 * verification, the password file and Kerberos still see the name. An
 * address or a socket directory keeps its entry with an empty hostaddr
 * slot. A name that cannot be resolved is left out of a multi-host list
 * (a warning); with none left, the attempt fails with AORM_ECONNECT. A
 * lookup still unanswered at connect_timeout fails the attempt with
 * AORM_ECONNECT ("could not resolve host name "x": timed out after N s")
 * and its late answer is ignored. With `hostaddr` given nothing is looked
 * up; a host that only a service file names is left to libpq (blocking).
 *
 * Up to 16 lookups run at once on their own threads, so the pool's
 * connections resolve together. aorm_engine_free() never waits for a
 * helper thread: one still stuck in a lookup finishes on its own and its
 * answer is dropped.
 *
 * Threading: one loop, one thread. The engine's helper threads never
 * touch user state or call user callbacks.
 *
 * Handles and ownership (every _free accepts NULL):
 *   - aorm_engine: made by aorm_engine_new(), owned by the caller, freed
 *     with aorm_engine_free() (before the aorm_loop). It owns every
 *     connection, the pool, the prepared-statement caches and every
 *     queued statement.
 *   - aorm_conn: a held connection, lent to the caller by
 *     aorm_engine_acquire() / aorm_owner_acquire() until
 *     aorm_conn_release(); the engine still owns it. Invalid after its
 *     release, its owner's cancel, or aorm_engine_free().
 *   - aorm_owner: a cancel group the caller owns (aorm_owner_free(),
 *     before or after the engine).
 *   - aorm_copy: the COPY stream, lent to the fill callback for the
 *     duration of each call.
 *   - aorm_result / aorm_error in callbacks: borrowed for the callback's
 *     duration (result.h, error.h).
 *   - Strings and parameters passed to a call are copied before it
 *     returns, the conninfo included.
 *
 * Callbacks (all on the loop's thread, never from inside the call that
 * queued the work, each exactly once; a call that fails returns a
 * negative code and never calls back):
 *   - aorm_result_cb, aorm_conn_cb: may call any function of the engine,
 *     aorm_engine_free() included (the engine is then freed when the
 *     callback returns), and queue new work.
 *   - aorm_copy_fill_fn: only the aorm_copy_*() writers of its aorm_copy;
 *     it must not free the engine.
 *   - aorm_log_fn: must not call the engine at all.
 *   - aorm_owner_close_fn: may free the owner; must not call the engine.
 *
 * Conventions (every header): deadlines and timeouts are seconds as a
 * double. An engine-wide or client-wide default (statement_timeout,
 * command_timeout) uses 0 for "none"; a per-operation deadline uses 0 for
 * "the default above me" and a negative value for "none". Counts (pool
 * sizes, pipeline depths) are int; sizes in bytes are size_t.
 */
#ifndef AORM_ENGINE_H
#define AORM_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "export.h"
#include "loop.h"
#include "result.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aorm_engine aorm_engine;
typedef struct aorm_conn aorm_conn;
typedef struct aorm_copy aorm_copy;

/* ---- logging ------------------------------------------------------------ */

typedef enum aorm_log_level {
    AORM_LOG_ERROR = 0, /**< a connection failed, a statement failed */
    AORM_LOG_WARN = 1,  /**< reconnects, discarded connections, server WARNINGs */
    AORM_LOG_INFO = 2,  /**< connections opened and closed, server NOTICEs and INFOs */
    AORM_LOG_SQL = 3,   /**< the SQL echo: text, duration, rows, parameters */
    AORM_LOG_DEBUG = 4  /**< pipelines written, prepared statements */
} aorm_log_level;

/** Receives one message (NUL-terminated, no trailing newline). Called on
 * the loop's thread; must not call back into the engine. */
typedef void (*aorm_log_fn)(aorm_log_level level, const char *message, void *user);

/* ---- options ------------------------------------------------------------ */

typedef struct aorm_engine_options {
    /** libpq conninfo: "key=value ..." or a postgresql:// URI, including
     * multi-host lists and target_session_attrs. Copied. Required. */
    const char *conninfo;
    int pool_size;              /**< connections kept open (default 10) */
    int max_overflow;           /**< extra connections under load (default 10) */
    double idle_timeout;        /**< seconds an idle connection beyond pool_size stays open to be
                                     reused before it is closed (30); 0 closes it at once */
    double pool_timeout;        /**< seconds a statement or acquire waits for a connection (30),
                                     also while the pool reconnects after a loss or restart; when
                                     no connection could be opened in that time the caller gets
                                     AORM_ECONNECT with the last attempt's error (AORM_EAUTH, for
                                     refused credentials or certificates, at once) */
    double recycle;             /**< close connections older than this many seconds; 0 never (0) */
    bool pre_ping;              /**< check a connection idle for > 1 s before reusing it (false) */
    bool lifo;                  /**< reuse the most recently used idle connection first (true) */
    double connect_timeout;     /**< seconds for one connection attempt (10) */
    double statement_timeout;   /**< default deadline of every statement in seconds; 0 none (0) */
    int prepared_cache_size;    /* named prepared statements kept per connection; 0 sends
                                   every statement unnamed, for PgBouncer in transaction
                                   mode (256) */
    bool pgbouncer;             /* behind PgBouncer in pool_mode=transaction (false): every
                                   statement unnamed (as prepared_cache_size 0), and statements
                                   that would leave session state on a server connection the
                                   next transaction may not get (SET or RESET without LOCAL,
                                   LISTEN, session advisory locks, CREATE TEMP, PREPARE, DECLARE
                                   ... WITH HOLD) are refused with AORM_EMISUSE when queued, the
                                   reason logged at AORM_LOG_ERROR. Pipelining, deadlines (a
                                   transaction-local statement_timeout in the statement's own
                                   sync group), transactions and COPY work as usual. */
    int max_pipeline;           /**< statements in flight per connection (1024) */
    double reconnect_min;       /**< first reconnect delay after a failure, seconds (0.05) */
    double reconnect_max;       /**< backoff ceiling, seconds (2) */
    aorm_log_fn log;            /**< NULL: nothing is logged */
    void *log_user;
    aorm_log_level log_level;   /**< most verbose level passed to log (AORM_LOG_WARN) */
    bool echo;                  /**< log every statement at AORM_LOG_SQL (false) */
    bool echo_params;           /* include parameter values in the echo; when false they
                                   are shown as "$n redacted" (false); a statement flagged
                                   AORM_EXEC_SENSITIVE is always redacted. The conninfo's
                                   password is never logged, and the engine's copies of
                                   the conninfo are wiped when it is freed. */
    size_t max_param_bytes;     /**< largest total size of one statement's parameters; a larger
                                     statement is refused with AORM_ERANGE when queued (64 MiB;
                                     0: no bound but the server's 1 GiB). Each parameter byte is
                                     copied three times on the loop's thread (the builder, the
                                     queued statement, libpq's send buffer), about 2 ms per MiB
                                     into fresh memory on a small machine: a 100 MiB value stalls
                                     the loop for several hundred ms. Stream bulk data with COPY
                                     (aorm_engine_copy: bounded chunks) instead. */
} aorm_engine_options;

/** Fills every field with its default (conninfo NULL). */
AORM_API void aorm_engine_options_init(aorm_engine_options *o);

/* ---- engine ------------------------------------------------------------- */

/** Creates an engine on `loop`. No connection is opened until the first
 * statement (or aorm_engine_warm()). Returns NULL when the conninfo
 * cannot be parsed or on out of memory (the reason goes to the log
 * callback). The loop must outlive the engine. */
AORM_API aorm_engine *aorm_engine_new(aorm_loop *loop, const aorm_engine_options *o);

/** Fails every queued and in-flight operation with AORM_ECANCELED (each
 * callback exactly once, from inside this call; a COMMIT already sent
 * gets AORM_EUNKNOWN_OUTCOME, one not yet sent AORM_ENOT_COMMITTED),
 * closes every connection and frees the engine. Held connections become
 * invalid; owners become empty handles (see aorm_owner_free). Accepts NULL.
 * May be called from inside an engine callback: the engine is then freed
 * when that callback returns. */
AORM_API void aorm_engine_free(aorm_engine *e);

/** Opens connections until pool_size are open or connecting. Returns 0. */
AORM_API int aorm_engine_warm(aorm_engine *e);

AORM_API aorm_loop *aorm_engine_loop(const aorm_engine *e);
AORM_API void aorm_engine_set_data(aorm_engine *e, void *data);
AORM_API void *aorm_engine_data(const aorm_engine *e);

/** Counters since the engine was created. A statement re-sent after a
 * pipeline abort or a stale plan counts again in `statements`; a COPY
 * counts as one statement; PREPAREs are counted in `prepares` only. */
typedef struct aorm_engine_stats {
    uint64_t statements;     /**< statements sent to the server */
    uint64_t round_trips;    /**< pipeline writes (one per connection per dispatch) */
    uint64_t syncs;          /**< pipeline syncs sent */
    uint64_t prepares;       /**< statements prepared */
    uint64_t prepared_hits;  /**< statements run from the prepared cache */
    uint64_t resent;         /**< read-only statements re-sent after a pipeline abort */
    uint64_t connects;       /**< successful connections */
    uint64_t connect_failures;
    uint64_t connections_lost;
    uint64_t cancels;        /**< statements the server stopped at their deadline (57014) */
    uint64_t discarded;      /**< connections closed because they could not be reused */
    uint64_t overflow_opened; /**< connections opened beyond pool_size (churn when it keeps growing) */
    uint64_t overflow_closed; /**< connections beyond pool_size closed after idle_timeout */
    uint64_t pool_waits;     /**< statements and acquires that had to wait for a connection */
    int open;                /**< connections open or connecting */
    int idle;                /**< open connections with nothing in flight and not held */
    int held;                /**< connections held by aorm_conn */
    int waiting;             /**< statements and acquires waiting for a connection */
} aorm_engine_stats;

AORM_API void aorm_engine_stats_get(const aorm_engine *e, aorm_engine_stats *out);

/* ---- statements --------------------------------------------------------- */

enum {
    /** The statement only reads: it may share a pipeline sync (one implicit
     * transaction) with other read-only statements, and is re-sent when
     * another statement's error made the server skip it. */
    AORM_EXEC_READONLY = 1u << 0,
    /** Never use a named prepared statement for this one. */
    AORM_EXEC_UNPREPARED = 1u << 1,
    /** Results in text format instead of binary. */
    AORM_EXEC_TEXT_RESULT = 1u << 2,
    /** The parameters are secrets (passwords, tokens): they never appear
     * in the echo, even with echo_params, and a server error of this
     * statement keeps its code, SQLSTATE, constraint, table and column
     * names but not its message, detail or hint, which may quote values.
     * The SQL text is echoed as usual: keep secrets in parameters. */
    AORM_EXEC_SENSITIVE = 1u << 3
};

/** Per-statement options. A deadline stops its own statement and no
 * other: the statement's remaining time is sent ahead of it, in the same
 * pipeline, as a statement_timeout for it alone (set_config with
 * is_local; a statement with a deadline outside a transaction block gets
 * a sync group of its own, and on a held connection the previous value
 * is restored right after it), so the server stops it by itself; no
 * cancel request is ever sent, so nothing can reach a neighbour or the
 * holder's COMMIT. When the deadline expires the caller gets AORM_ETIMEOUT
 * (57014) at once; the late answer is read and dropped, and a shared
 * connection takes no new work until it has come. A server that has not
 * answered max(5 s, connect_timeout) after the deadline costs the
 * connection (discarded; the statements behind it fail with
 * AORM_ECONNLOST). Inside a transaction block the server's timeout aborts
 * the transaction (25P02 for what follows, until the rollback). The
 * price: one small extra statement in the same write, never a round
 * trip. */
typedef struct aorm_owner aorm_owner;

typedef struct aorm_exec_options {
    unsigned flags;     /**< AORM_EXEC_* */
    double deadline;    /**< seconds from submission; 0 engine default; < 0 none */
    aorm_owner *owner;  /**< cancel group the statement belongs to; NULL: none (on a held
                             connection: the connection's owner, if it was acquired through one) */
} aorm_exec_options;

/** Fills every field with its default: no flags, the engine's deadline, no
 * owner (the same as passing NULL options). */
AORM_API void aorm_exec_options_init(aorm_exec_options *o);

/** Outcome of a statement: exactly one of res / err is non-NULL. Both are
 * borrowed for the duration of the callback (aorm_result_detach() keeps
 * the result). May call any engine function, including aorm_engine_free. */
typedef void (*aorm_result_cb)(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);

/** Queues an autocommit statement. `params` (may be NULL) and `sql` are
 * copied; `opts` may be NULL. Returns 0 (cb will run once, later) or a
 * negative code (cb will never run): AORM_EMISUSE, AORM_ENOMEM, AORM_ECLOSED,
 * or the params builder's sticky error. Statements may be queued before
 * the loop runs: the first loop turn sends them. Errors of statements that
 * could not reach the server (AORM_ECONNECT, AORM_EPOOLTIMEOUT) carry the
 * last connection failure in `detail`. */
AORM_API int aorm_engine_execute(aorm_engine *e, const char *sql, const aorm_params *params,
                                 const aorm_exec_options *opts, aorm_result_cb cb, void *user);

/** Moves a borrowed result to the heap so that it outlives its callback;
 * free it with aorm_result_free(). Returns NULL on out of memory. */
AORM_API aorm_result *aorm_result_detach(aorm_result *r);
/** Frees a detached result. Accepts NULL (and ignores borrowed results). */
AORM_API void aorm_result_free(aorm_result *r);

/* ---- held connections and transactions ----------------------------------- */

typedef void (*aorm_conn_cb)(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user);

/** Asks for a connection of one's own. cb receives it (or an error such as
 * AORM_EPOOLTIMEOUT) later. Returns 0 or a negative code. */
AORM_API int aorm_engine_acquire(aorm_engine *e, aorm_conn_cb cb, void *user);

/** Queues a statement on a held connection; statements of one connection
 * run in the order they were queued. Same contract as
 * aorm_engine_execute(). */
AORM_API int aorm_conn_execute(aorm_conn *c, const char *sql, const aorm_params *params,
                               const aorm_exec_options *opts, aorm_result_cb cb, void *user);

typedef enum aorm_isolation {
    AORM_ISO_DEFAULT = 0, AORM_ISO_READ_COMMITTED, AORM_ISO_REPEATABLE_READ, AORM_ISO_SERIALIZABLE
} aorm_isolation;

typedef struct aorm_tx_options {
    aorm_isolation isolation;
    bool read_only;
    bool deferrable;
} aorm_tx_options;

/** Fills every field with its default: the server's isolation level, read
 * write, not deferrable (the same as passing NULL options). */
AORM_API void aorm_tx_options_init(aorm_tx_options *o);

/** BEGIN (opts may be NULL), COMMIT, ROLLBACK, and savepoints by name (the
 * name is quoted as an identifier). Each queues one statement with the
 * usual contract. The outcome of a COMMIT follows one rule: sent and
 * never answered (the connection lost, a protocol error, the engine freed,
 * its owner cancelled) fails with AORM_EUNKNOWN_OUTCOME (08007): it may
 * or may not have committed; never sent fails with AORM_ENOT_COMMITTED:
 * it did not. A COMMIT of a transaction in which a statement failed fails
 * with AORM_ESERVER and SQLSTATE 25P02 (the server rolled it back, or
 * skipped the COMMIT: roll back). ROLLBACK and ROLLBACK TO SAVEPOINT start
 * a new pipeline sync group, so they run even right behind a failed
 * statement. */
AORM_API int aorm_conn_begin(aorm_conn *c, const aorm_tx_options *opts, aorm_result_cb cb, void *user);
AORM_API int aorm_conn_commit(aorm_conn *c, aorm_result_cb cb, void *user);
AORM_API int aorm_conn_rollback(aorm_conn *c, aorm_result_cb cb, void *user);
AORM_API int aorm_conn_savepoint(aorm_conn *c, const char *name, aorm_result_cb cb, void *user);
AORM_API int aorm_conn_release_savepoint(aorm_conn *c, const char *name, aorm_result_cb cb, void *user);
AORM_API int aorm_conn_rollback_to(aorm_conn *c, const char *name, aorm_result_cb cb, void *user);

typedef enum aorm_tx_status {
    AORM_TX_IDLE = 0,   /**< no transaction open */
    AORM_TX_ACTIVE,     /**< statements in flight */
    AORM_TX_INTRANS,    /**< inside a transaction block */
    AORM_TX_INERROR,    /**< inside a failed transaction block: roll back */
    AORM_TX_UNKNOWN     /**< connection lost */
} aorm_tx_status;

/** Transaction state as of the last answer from the server. Inside the
 * callback of one of the connection's statements it is the state that
 * statement left behind (IDLE, INTRANS or INERROR, also for transactions
 * opened and closed with raw SQL, and after a savepoint rollback),
 * whatever is queued after it; elsewhere ACTIVE while statements are
 * queued or unanswered. */
AORM_API aorm_tx_status aorm_conn_tx_status(const aorm_conn *c);
/** True once the connection has been lost; every later statement fails
 * with AORM_ECONNLOST. */
AORM_API bool aorm_conn_broken(const aorm_conn *c);

/** Gives the connection back. Statements already queued still complete
 * and call back. An open transaction is rolled back first; a broken
 * connection is closed. The handle is invalid after this call. Accepts
 * NULL. */
AORM_API void aorm_conn_release(aorm_conn *c);

/* ---- owners: cancelling a caller's work as a whole ------------------------ */

/** An owner is a cancel group: the statements, acquires and held
 * connections of one caller (a request of a server, a session), so that
 * the caller can go away without any of its callbacks firing later on
 * freed memory. Statements join it through aorm_exec_options.owner,
 * held connections through aorm_owner_acquire() (their statements then
 * belong to it as well).
 *
 * Ownership: the caller owns the handle and frees it with
 * aorm_owner_free(), before or after the engine: an owner outlives its
 * engine as an empty handle (aorm_owner_engine() then returns NULL). */

/** Called once when the engine an owner belongs to is freed (its work has
 * been called back with AORM_ECANCELED by then). It may free the owner;
 * it must not call the engine. */
typedef void (*aorm_owner_close_fn)(aorm_owner *o, void *user);

/** A new, empty owner on e. Returns NULL on out of memory or when e is
 * NULL or closing. */
AORM_API aorm_owner *aorm_owner_new(aorm_engine *e);

/** Cancels everything the owner has queued or in flight: each callback
 * runs once, now, from inside this call, in submission order, with
 * AORM_ECANCELED (a COMMIT already sent gets AORM_EUNKNOWN_OUTCOME, one
 * not yet sent AORM_ENOT_COMMITTED). Statements not yet sent are never
 * sent; answers to those already sent are read and dropped (the server
 * finishes them, or their deadline stops them). Connections held through
 * the owner are released (rolled back) and their handles become invalid.
 * The owner stays usable for new work. May be called from inside any
 * engine callback; accepts NULL and an orphaned owner. */
AORM_API void aorm_owner_cancel(aorm_owner *o);

/** aorm_owner_cancel(), then frees the owner (deferred while a call of
 * it is on the stack). Accepts NULL; allowed after the engine is freed. */
AORM_API void aorm_owner_free(aorm_owner *o);

/** The owner's engine, or NULL from the moment aorm_engine_free() starts
 * (while it calls back the owner's work) and after. */
AORM_API aorm_engine *aorm_owner_engine(const aorm_owner *o);

/** Sets the callback run when the engine is freed (NULL to clear). */
AORM_API void aorm_owner_on_close(aorm_owner *o, aorm_owner_close_fn fn, void *user);

/** Like aorm_engine_acquire(); the connection and its statements belong
 * to o. Returns AORM_ECLOSED when o's engine is gone. */
AORM_API int aorm_owner_acquire(aorm_owner *o, aorm_conn_cb cb, void *user);

/* ---- COPY FROM STDIN (binary) ------------------------------------------- */

/** Fills the COPY stream: append rows with aorm_copy_row() and the
 * aorm_copy_*() field writers, then return 1 when more rows will follow
 * (called again once the buffered data is written), 0 when done, or a
 * negative value to abort the COPY (the statement then fails and nothing
 * is loaded). Append about 64 KiB per call for best throughput. */
typedef int (*aorm_copy_fill_fn)(aorm_copy *cp, void *user);

/** Runs `sql` (a "COPY table (cols) FROM STDIN (FORMAT binary)"
 * statement) on a pooled connection (aorm_engine_copy) or a held one
 * (aorm_conn_copy), streaming what `fill` produces without blocking the
 * loop. cb gets the COPY's result (aorm_result_affected() = rows).
 * `fill` is called only from the loop, once the server has accepted the
 * COPY (never from inside these calls), and never after cb has run;
 * fill_user must stay valid until cb runs. The binary header and trailer
 * are written by aorm. */
AORM_API int aorm_engine_copy(aorm_engine *e, const char *sql, aorm_copy_fill_fn fill, void *fill_user,
                              aorm_result_cb cb, void *user);
AORM_API int aorm_conn_copy(aorm_conn *c, const char *sql, aorm_copy_fill_fn fill, void *fill_user,
                            aorm_result_cb cb, void *user);

/** Row and field writers (binary COPY format). Each returns 0 or
 * AORM_ENOMEM / AORM_EENCODING. */
AORM_API int aorm_copy_row(aorm_copy *cp, int nfields);
AORM_API int aorm_copy_null(aorm_copy *cp);
AORM_API int aorm_copy_bool(aorm_copy *cp, bool v);
AORM_API int aorm_copy_int2(aorm_copy *cp, int16_t v);
AORM_API int aorm_copy_int4(aorm_copy *cp, int32_t v);
AORM_API int aorm_copy_int8(aorm_copy *cp, int64_t v);
AORM_API int aorm_copy_float4(aorm_copy *cp, float v);
AORM_API int aorm_copy_float8(aorm_copy *cp, double v);
AORM_API int aorm_copy_text(aorm_copy *cp, const char *s, size_t len);
AORM_API int aorm_copy_bytea(aorm_copy *cp, const void *data, size_t len);
/** A field already in binary form (len bytes). */
AORM_API int aorm_copy_raw(aorm_copy *cp, const void *data, size_t len);
/** Bytes appended since the buffer was last handed to the connection
 * (the current call's chunk, plus the header on the first call). */
AORM_API size_t aorm_copy_buffered(const aorm_copy *cp);

/* ---- streaming a large result in batches --------------------------------- */

/** What a stream callback returns after a batch. */
enum {
    AORM_STREAM_NEXT = 0,  /**< hand over the next batch when it is there */
    AORM_STREAM_PAUSE = 1, /**< nothing more until aorm_stream_resume() */
    AORM_STREAM_STOP = 2   /**< close the cursor: no more batches; the end call follows */
};

typedef struct aorm_stream aorm_stream;

/** Called once per batch with `batch` (borrowed for the call; detach it to
 * keep it) and err NULL: return AORM_STREAM_*. Called once more at the
 * end, with batch NULL: err NULL when every row was handed over or the
 * stream was stopped, else the failure (the statement's error; inside a
 * transaction the transaction is then aborted: roll back). The stream
 * handle is invalid after the end call. */
typedef int (*aorm_stream_fn)(aorm_conn *c, aorm_result *batch, const aorm_error *err, void *user);

/** Runs `sql` (a SELECT; params may be NULL) through a server-side cursor
 * on a held connection inside its transaction (aorm_conn_begin() first: a
 * cursor lives in a transaction block), handing the rows over `batch` at
 * a time (FETCH FORWARD batch). Memory: at most two batches at once, the
 * one handed over and the next, fetched while the callback works (none
 * while paused: the rows wait on the server). DECLARE and the first FETCH
 * go out in one write; each later batch costs at most one round trip,
 * overlapped with the callback. Stopping (AORM_STREAM_STOP) closes the
 * cursor and leaves the connection and its transaction usable. *out (may
 * be NULL) receives the handle for aorm_stream_resume(). Returns 0 (fn
 * runs later, never inside this call) or a negative code (fn never runs):
 * AORM_EMISUSE (batch < 1), AORM_ENOMEM, the codes of aorm_conn_execute().
 *
 * Why a cursor and not libpq's single-row mode: a batch of rows is one
 * PGresult instead of one per row (bench stream_rows measures both), the
 * connection never holds a half-read result (pausing or stopping needs no
 * cancel and no drain), and other statements of the transaction can run
 * between batches. */
AORM_API int aorm_conn_stream(aorm_conn *c, const char *sql, const aorm_params *params, int batch,
                              aorm_stream_fn fn, void *user, aorm_stream **out);
/** Ends a pause: the next batch is handed over (later, from the loop, never
 * inside this call). Returns 0, or AORM_EMISUSE when the stream is not
 * paused. */
AORM_API int aorm_stream_resume(aorm_stream *st);
/** Stops the stream from outside its callback (a paused one included):
 * what is kept is dropped, the cursor closed, and the end call follows
 * (later, from the loop). Stop or resume a paused stream before
 * releasing its connection. Returns 0, or AORM_EMISUSE after the end. */
AORM_API int aorm_stream_stop(aorm_stream *st);

#ifdef __cplusplus
}
#endif

#endif /* AORM_ENGINE_H */

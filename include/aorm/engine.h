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
 * Host names: libpq resolves them synchronously, so the engine resolves
 * every `host` that is not an address or a socket directory on its helper
 * thread before it connects, and passes the address as `hostaddr` (the
 * name is kept for TLS and Kerberos). The same thread sends cancel
 * requests, which libpq 15 can only send blocking.
 *
 * Threading: one loop, one thread. The engine's helper thread never
 * touches user state or calls user callbacks. */
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
    int pool_size;              /**< connections kept open (default 5) */
    int max_overflow;           /**< extra connections under load (default 10) */
    double pool_timeout;        /**< seconds a statement or acquire waits for a connection (30) */
    double recycle;             /**< close connections older than this many seconds; 0 never (0) */
    bool pre_ping;              /**< check a connection idle for > 1 s before reusing it (false) */
    bool lifo;                  /**< reuse the most recently used idle connection first (true) */
    double connect_timeout;     /**< seconds for one connection attempt (10) */
    double statement_timeout;   /**< default deadline of every statement in seconds; 0 none (0) */
    int prepared_cache_size;    /* named prepared statements kept per connection; 0 sends
                                   every statement unnamed, for PgBouncer in transaction
                                   mode (256) */
    int max_pipeline;           /**< statements in flight per connection (1024) */
    double reconnect_min;       /**< first reconnect delay after a failure, seconds (0.05) */
    double reconnect_max;       /**< backoff ceiling, seconds (2) */
    aorm_log_fn log;            /**< NULL: nothing is logged */
    void *log_user;
    aorm_log_level log_level;   /**< most verbose level passed to log (AORM_LOG_WARN) */
    bool echo;                  /**< log every statement at AORM_LOG_SQL (false) */
    bool echo_params;           /* include parameter values in the echo; when false they
                                   are shown as "$n redacted" (false) */
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
 * callback exactly once, from inside this call), closes every connection
 * and frees the engine. Held connections become invalid. Accepts NULL.
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
    uint64_t cancels;        /**< cancel requests sent after a deadline */
    uint64_t discarded;      /**< connections closed because they could not be reused */
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
    AORM_EXEC_TEXT_RESULT = 1u << 2
};

/** Per-statement options. When a deadline expires the caller gets
 * AORM_ETIMEOUT at once; the statement is cancelled on the server (a
 * cancel request from the helper thread, sent when the statement heads
 * its connection's pipeline) and the connection takes no new work until
 * it has drained, or is discarded. PostgreSQL cancels whatever runs when
 * the request arrives: if the expired statement finishes just before,
 * the next statement of that pipeline may be the one cancelled (57014). */
typedef struct aorm_exec_options {
    unsigned flags;   /**< AORM_EXEC_* */
    double deadline;  /**< seconds from submission; 0 engine default; < 0 none */
} aorm_exec_options;

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

/** BEGIN (opts may be NULL), COMMIT, ROLLBACK, and savepoints by name (the
 * name is quoted as an identifier). Each queues one statement with the
 * usual contract. A COMMIT whose connection is lost before the answer
 * fails with AORM_EUNKNOWN_OUTCOME (SQLSTATE 08007); a COMMIT of a
 * transaction in which a statement failed fails with SQLSTATE 25P02
 * (the server rolled it back). ROLLBACK and ROLLBACK TO SAVEPOINT start
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

/** Transaction state as of the last answer from the server. */
AORM_API aorm_tx_status aorm_conn_tx_status(const aorm_conn *c);
/** True once the connection has been lost; every later statement fails
 * with AORM_ECONNLOST. */
AORM_API bool aorm_conn_broken(const aorm_conn *c);

/** Gives the connection back. Statements already queued still complete
 * and call back. An open transaction is rolled back first; a broken
 * connection is closed. The handle is invalid after this call. Accepts
 * NULL. */
AORM_API void aorm_conn_release(aorm_conn *c);

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

#ifdef __cplusplus
}
#endif

#endif /* AORM_ENGINE_H */

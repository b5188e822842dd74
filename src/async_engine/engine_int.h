/* engine_int.h -- private to src/async_engine: operations, connections,
 * prepared statements and the engine that ties them together.
 *
 * Life of an operation (aorm__op):
 *   queued   in the engine's autocommit queue, or in a held connection's
 *            pending list, until the before-poll stage;
 *   sent     one or more protocol items (PREPARE, QUERY, SYNC) in the
 *            connection's in-flight ring, answered strictly in order;
 *   done     its callback has run (result, error, timeout or cancel).
 * An operation is freed when it is done and no in-flight item refers to it
 * any more: a timed-out statement's late answer is read and dropped, never
 * handed to anyone. */
#ifndef AORM_ENGINE_INT_H
#define AORM_ENGINE_INT_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "aorm/engine.h"
#include "async_engine/result_int.h"
#include "util/util.h"

typedef struct aorm__op aorm__op;
typedef struct aorm__stmt aorm__stmt;
typedef struct aorm__worker aorm__worker;
typedef struct aorm__lat {
    uint64_t hash; /* of the statement text and parameter types */
    float us;      /* recent service time, microseconds */
} aorm__lat;

/* What resolving one connection's host list found: per entry of the
 * engine's host list (e->hosts), the addresses in getaddrinfo order,
 * without duplicates, comma-separated; NULL for an entry that needed no
 * lookup; "" for one whose lookup failed (the entry is left out).
 * err: the failures, "; "-separated, or NULL. */
typedef struct aorm__resolved {
    int n;
    char **addrs;
    const char *err;
} aorm__resolved;

#define AORM__NEVER 1e300 /* deadline of an operation that has none */
#define AORM__CONNECT_SLICE 0.004 /* seconds of connection steps per loop turn (conn.c on_io) */
#define AORM__LAT_SLOTS 1024 /* statement texts whose service time dispatch remembers */
/* internal exec flag: start a new sync group before this statement */
#define AORM__EXEC_NEW_GROUP (1u << 30)

typedef enum op_kind {
    OP_QUERY,   /* a statement with parameters */
    OP_COPY,    /* COPY FROM STDIN, streamed from a fill callback */
    OP_ACQUIRE  /* a request for a held connection */
} op_kind;

typedef enum op_role {
    ROLE_USER,     /* a caller's statement */
    ROLE_BEGIN,    /* BEGIN: opens a transaction block */
    ROLE_COMMIT,   /* COMMIT: outcome unknown if the connection is lost */
    ROLE_END,      /* ROLLBACK: closes the transaction block */
    ROLE_INTERNAL  /* the engine's own (rollback on release, DEALLOCATE): no callback */
} op_role;

struct aorm__op {
    aorm__op *next;        /* engine queue / pending list link */
    aorm_engine *e;
    aorm_conn *held;       /* NULL for autocommit */
    uint8_t kind;          /* op_kind */
    uint8_t role;          /* op_role */
    bool done;             /* callback delivered (or never to be: internal) */
    bool queued;           /* in a queue, not yet sent */
    uint8_t resends;       /* times re-sent after a pipeline abort or stale plan */
    uint16_t nitems;       /* in-flight items referring to this op */
    unsigned flags;        /* AORM_EXEC_* */
    double submitted;      /* loop time at submission */
    double deadline;       /* absolute loop time, AORM__NEVER for none */
    union {
        aorm_result_cb result;
        aorm_conn_cb conn;
    } cb;
    void *user;

    /* statement */
    const char *sql;
    size_t sql_len;
    uint64_t hash;         /* of sql and parameter types, for the statement cache */
    int nparams;
    const char **values;
    int *lengths;
    int *formats;
    Oid *types;
    PGresult *res;         /* the statement's result, once read */
    PGresult *prep_err;    /* a failed PREPARE's error, reported instead of "aborted" */

    /* COPY */
    aorm_copy_fill_fn fill;
    void *fill_user;
    aorm_conn *auto_release; /* engine-level COPY: give the connection back after */

    /* owner (cancel group): linked while its callback is still due */
    aorm_owner *owner;
    aorm__op *owner_prev, *owner_next;
    bool cancelling;       /* being cancelled: taken out of its queue */
    bool waited;           /* counted once in stats.pool_waits */
    float expect_us;       /* service time expected when sent (< 0: unknown), see aorm__lat_* */
    double sent_mono;      /* monotonic time it was last sent */
    double server_timeout; /* seconds of statement_timeout sent with it (send_deadline) */

    _Alignas(8) char storage[]; /* parameter arrays (pointers first: aligned), sql and values */
};

/* ---- prepared statements (per connection, bounded LRU) ----------------- */

typedef enum stmt_state {
    STMT_PREPARING, /* Parse sent, not yet confirmed */
    STMT_READY,     /* confirmed by the server */
    STMT_FAILED     /* Parse failed or was skipped: must not be used */
} stmt_state;

struct aorm__stmt {
    aorm__stmt *hnext;               /* hash chain */
    aorm__stmt *lru_prev, *lru_next; /* most recently used first */
    uint64_t hash;
    int refs;                        /* in-flight items using it */
    uint64_t prep_group;             /* sync group its PREPARE was sent in */
    uint8_t state;                   /* stmt_state */
    bool cached;                     /* still in the cache (else freed at refs == 0) */
    int nparams;
    Oid *types;
    size_t sql_len;
    char *sql;
    char name[24];
    char storage[];
};

typedef struct aorm__stmt_cache {
    aorm__stmt **buckets;
    uint32_t nbuckets;               /* power of two */
    int count;
    int cap;
    aorm__stmt *lru_head, *lru_tail;
    uint64_t next_id;
} aorm__stmt_cache;

/* ---- connections -------------------------------------------------------- */

typedef enum conn_state {
    CONN_RESOLVING,  /* host names being looked up on the helper threads */
    CONN_CONNECTING, /* PQconnectPoll in progress; the watcher waits for what it asked */
    CONN_READY,      /* connected, in pipeline mode */
    CONN_COPY,       /* out of pipeline mode, streaming a COPY */
    CONN_BROKEN      /* lost; kept only while an aorm_conn holder still has it */
} conn_state;

typedef enum item_kind {
    IT_PREPARE, /* Parse of op->stmt */
    IT_QUERY,   /* Bind/Execute of op */
    IT_SYNC,    /* pipeline sync point */
    IT_DISCARD, /* an internal statement whose answer is ignored */
    IT_DEALLOC  /* DEALLOCATE of an evicted statement: re-queued if it did not run */
} item_kind;

typedef struct aorm__item {
    uint8_t kind;     /* item_kind */
    aorm__op *op;     /* IT_PREPARE, IT_QUERY */
    aorm__stmt *stmt; /* IT_PREPARE, and IT_QUERY of a prepared statement */
    PGresult *res;    /* IT_QUERY / IT_PREPARE: first result, until the item ends */
    char *name;       /* IT_DEALLOC: the statement's name (owned) */
} aorm__item;

struct aorm_conn {
    aorm_engine *e;
    aorm_conn *prev, *next;  /* engine's list of connections */
    uint64_t id;
    conn_state state;
    PGconn *pg;
    aorm_io *io;
    aorm_timer *timer;       /* connect timeout, deadlines, drain limit */
    double timer_at;
    double created;          /* loop time */
    double last_used;        /* monotonic time (aorm__mono_now) the pipeline last went idle */

    bool held;               /* handed to an aorm_conn holder */
    bool releasing;          /* holder let go: clean up, then back to the pool */
    bool draining;           /* no new autocommit work (an expired statement unanswered, or a hand-over) */
    bool reserved;           /* promised to an acquire waiter once drained */
    bool in_tx;              /* a transaction block is (being) opened */
    bool writing;            /* output not fully flushed: write watcher on */
    bool dead;               /* freed once the current handler unwinds */
    int busy;                /* handler depth on this connection */
    aorm_tx_status txs;

    /* in-flight protocol items, a ring in send order */
    aorm__item *items;
    uint32_t ihead, icount, icap;
    int inflight_ops;        /* queries and COPY in flight */
    int unknown_inflight;    /* of those, with no service time known yet */
    double expect_us;        /* expected service time of the others, summed */
    double last_answer;      /* monotonic time of the last statement answered */
    uint64_t reads;          /* input reads so far */
    uint64_t last_answer_read; /* the read that delivered the last answer */

    aorm_owner *owner;       /* held through this owner, or NULL */

    /* statements queued on a held connection */
    aorm__op *pend_head, *pend_tail;
    aorm_conn *dirty_next;   /* engine list of held conns with pending work */
    bool in_dirty;

    aorm__stmt_cache stmts;
    uint64_t sync_group;     /* incremented by every sync: statements between two share a group */
    char **deallocs;         /* evicted statements to DEALLOCATE in a group of their own */
    int ndeallocs, cap_deallocs;

    /* COPY in progress */
    aorm__op *copy_op;
    aorm_copy *copy;
    bool copy_started;       /* server answered CopyInResponse */
    bool copy_ended;         /* PQputCopyEnd sent */

    /* per-dispatch scratch */
    bool touched;            /* got work this dispatch */
    uint64_t checked_turn;   /* dispatch in which it was last checked alive */
    aorm_conn *grave_next;   /* engine's graveyard: freed when the dispatch ends */
    bool group_open;         /* statements sent since the last sync */
    aorm_conn *touched_next;
};

/* ---- the engine --------------------------------------------------------- */

struct aorm_engine {
    aorm_loop *loop;
    aorm_engine_options o;
    char *conninfo;
    /* conninfo parsed once into libpq keyword/value arrays. When some host
     * entry needs a name lookup, every connection attempt resolves them on
     * the helper threads and connects with its own copy of these arrays,
     * host (and a port list) expanded to one entry per address found, plus
     * a hostaddr list (conn.c, connect_begin). */
    const char **kw;
    const char **val;
    int nkw;
    int host_index;          /* of "host" in kw, -1 when absent */
    int port_index;          /* of "port" in kw, -1 when absent */
    int nhosts;              /* entries of the host list */
    char **hosts;            /* each entry, split at commas */
    bool *lookup;            /* per entry: a name to resolve (not an address, a socket dir or empty) */
    int nlookups;            /* entries with a name to resolve; 0: connect with kw/val as they are */
    char **ports;            /* per entry when port is a list of nhosts values, else NULL */

    aorm_conn *conns;        /* every connection */
    int nconns;              /* including connecting and broken-but-held */
    int nheld;
    uint64_t next_conn_id;

    aorm__op *q_head, *q_tail; /* autocommit statements waiting for a connection */
    int q_len;
    aorm__op *acq_head, *acq_tail; /* acquire requests */
    int acq_len;
    aorm_conn *dirty;        /* held connections with pending statements */

    aorm_timer *timer;       /* pool-wait expiry and reconnect backoff */
    double timer_at;
    double backoff;          /* current reconnect delay, 0 when healthy */
    double next_connect_at;  /* no automatic connect before this */
    int connecting;

    aorm__worker *worker;    /* helper threads for host name lookups */

    char last_connect_error[512]; /* why the last connection attempt failed */
    int last_connect_code;   /* AORM_ECONNECT or AORM_EAUTH for that failure */
    double warn_at[2];       /* pool_warn: no warning of each kind before this */
    int warn_count[2];       /* occurrences since the last warning of each kind */
    aorm_engine_stats stats;
    void *data;
    int depth;               /* engine code on the stack (callbacks may free) */
    aorm_conn *cb_conn;      /* held connection whose statement's callback is running */
    aorm_owner *owners;      /* every owner created on this engine */
    /* recent service time per statement text (by hash), for dispatch: a
     * direct-mapped table, an entry overwritten by a colliding statement */
    aorm__lat lat[AORM__LAT_SLOTS];
    double rtt_us;           /* the round trip alone, estimated (aorm__lat_answered) */
    double connect_turn;     /* loop time of the turn connect_spent is for */
    double connect_spent;    /* seconds spent in connection steps in that turn */
    bool in_dispatch;
    uint64_t turn;           /* dispatches so far */
    double turn_mono;        /* monotonic time at the start of the current dispatch */
    aorm_conn *graveyard;    /* connections freed during the dispatch, freed after it */
    bool rescan;             /* a connection may be coming back (release, drain) */
    bool dirty_during_dispatch; /* a held connection got work while dispatching */
    bool free_pending;
    bool closing;
    /* host groups (hosts.c): a router has `group` and no connections of
     * its own; a server's engine has `router` (and its index there) */
    struct aorm__hosts *group;
    aorm_engine *router;
    int group_index;
};

/* ---- cross-file internals ------------------------------------------------ */

/* engine.c */
void aorm__engine_log(aorm_engine *e, aorm_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void aorm__op_deliver(aorm__op *op, aorm_result *res, const aorm_error *err);
void aorm__op_fail(aorm__op *op, int code, const char *sqlstate, const char *msg);
void aorm__op_release(aorm__op *op);
void aorm__op_requeue(aorm__op *op);
void aorm__op_requeue_held(aorm__op *op);
void aorm__lat_sent(aorm_conn *c, aorm__op *op);
void aorm__lat_answered(aorm_conn *c, aorm__op *op, bool ran);
void aorm__engine_conn_ready(aorm_engine *e, aorm_conn *c);
void aorm__engine_conn_gone(aorm_engine *e, aorm_conn *c, bool connect_failed);
void aorm__engine_enter(aorm_engine *e);
void aorm__engine_bury(aorm_engine *e);
void aorm__engine_leave(aorm_engine *e);
void aorm__error_from_pg(aorm_error *err, const PGresult *r);

/* conn.c */
aorm_conn *aorm__conn_new(aorm_engine *e);
void aorm__conn_start(aorm_conn *c);
void aorm__conn_free(aorm_conn *c);
void aorm__conn_lost(aorm_conn *c, int code, const char *msg);
void aorm__conn_lost_first(aorm_conn *c, int code, const char *msg, aorm__op *first, const aorm_error *first_err);
void aorm__op_fail_lost(aorm__op *op, int code, const char *msg, bool sent);
int aorm__conn_send(aorm_conn *c, aorm__op *op);
int aorm__conn_sync(aorm_conn *c);
int aorm__conn_flush(aorm_conn *c);
int aorm__conn_send_deallocs(aorm_conn *c);
bool aorm__conn_idle(const aorm_conn *c);
bool aorm__conn_check_alive(aorm_conn *c);
double aorm__mono_now(void);
void aorm__conn_arm_timer(aorm_conn *c, double at);
void aorm__conn_resolved(aorm_conn *c, const aorm__resolved *r);

/* stmt.c */
void aorm__stmt_cache_init(aorm__stmt_cache *sc, int cap);
void aorm__stmt_cache_free(aorm__stmt_cache *sc);
aorm__stmt *aorm__stmt_lookup(aorm__stmt_cache *sc, const aorm__op *op);
aorm__stmt *aorm__stmt_insert(aorm__stmt_cache *sc, const aorm__op *op, aorm__stmt **evicted, bool *full);
void aorm__stmt_forget(aorm__stmt_cache *sc, aorm__stmt *s);
void aorm__stmt_unref(aorm__stmt *s);
uint64_t aorm__stmt_hash(const char *sql, size_t len, const Oid *types, int n);

/* worker.c: the helper threads that look up host names (see worker.c).
 * Freeing never waits for a thread. */
aorm__worker *aorm__worker_new(aorm_engine *e);
void aorm__worker_free(aorm__worker *w);
/* Looks up every e->lookup name of connection conn_id at once;
 * aorm__conn_resolved() follows when all have answered. */
int aorm__worker_resolve(aorm__worker *w, uint64_t conn_id);
/* Gives up connection conn_id's lookups (its connect timeout passed):
 * their answers will be ignored. Writes "could not resolve host name
 * \"x\": timed out after N s" for the first unanswered name into msg. */
void aorm__worker_resolve_timeout(aorm__worker *w, uint64_t conn_id, char *msg, size_t cap);

/* owner.c */
void aorm__owner_link(aorm_owner *o, aorm__op *op);
void aorm__owner_unlink(aorm__op *op);
void aorm__owners_orphan(aorm_engine *e);

/* hosts.c: the router's side of the public calls (e->group set) */
typedef struct aorm__hosts aorm__hosts;
int aorm__hosts_execute(aorm_engine *e, const char *sql, const aorm_params *params,
                        const aorm_exec_options *opts, aorm_result_cb cb, void *user);
int aorm__hosts_acquire(aorm_engine *e, aorm_owner *o, aorm_conn_cb cb, void *user);
int aorm__hosts_copy(aorm_engine *e, const char *sql, aorm_copy_fill_fn fill, void *fill_user,
                     aorm_result_cb cb, void *user);
int aorm__hosts_warm(aorm_engine *e);
void aorm__hosts_stats(const aorm_engine *e, aorm_engine_stats *out);
void aorm__hosts_free(aorm_engine *e);
/* a COMMIT was queued on c, a connection of a server's engine (c->e->router) */
void aorm__hosts_commit_queued(aorm_conn *c);
/* a router owner is cancelled: its calls still parked there fail (ECANCELED) */
void aorm__hosts_unpark(aorm_engine *router, aorm_owner *owner);

/* owner.c: owners on a router. A router owner keeps one owner per server
 * (made on first use), which its cancel and free cover, and the
 * read-your-writes state of its user. */
typedef struct aorm__owner_rw {
    uint64_t lsn;        /* last write position known */
    int pending;         /* writes whose position has not come back yet */
    bool primary;        /* every read to the primary */
    double primary_until; /* reads to the primary until this loop time (a position lost) */
    /* the position shared through Redis (hosts.c, aorm_owner_set_consistency_key) */
    char *fleet_key;     /* prefix + the application's key, or NULL */
    int fleet_state;     /* AORM__FLEET_ASK / _ASKING / _KNOWN */
    unsigned fleet_gen;  /* bumped by every key change */
    struct aorm__fleet_get *fleet_get; /* the GET in flight, or NULL */
} aorm__owner_rw;
enum { AORM__FLEET_ASK = 0, AORM__FLEET_ASKING, AORM__FLEET_KNOWN };
/* the GET of a consistency key in flight; owner cleared when the owner goes */
typedef struct aorm__fleet_get {
    aorm_owner *owner;
    struct aorm__hosts *hs;
    unsigned gen;
} aorm__fleet_get;
aorm_owner *aorm__owner_sub(aorm_owner *o, int host); /* NULL on out of memory */
aorm_owner *aorm__owner_parent(const aorm_owner *o);  /* the router owner of a server owner, or NULL */
aorm__owner_rw *aorm__owner_rw_of(aorm_owner *o);        /* NULL unless o is a router owner */

/* pgbouncer.c: AORM_EMISUSE (and the reason logged) when e->o.pgbouncer and
 * sql would leave session state on a pooled server connection; else 0 */
int aorm__pgbouncer_check(aorm_engine *e, const char *sql);

/* copy.c */
aorm_copy *aorm__copy_new(void);
void aorm__copy_free(aorm_copy *cp);
int aorm__copy_pump(aorm_conn *c);

#endif /* AORM_ENGINE_INT_H */

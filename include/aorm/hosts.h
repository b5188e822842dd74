/** @file hosts.h
 * host groups: one engine handle over a primary and its streaming
 * replicas, with a pool per server, routing, read-your-writes and failover.
 *
 * aorm_engine_new_hosts() returns an ordinary aorm_engine handle (a
 * router) that owns one engine (pool) per server and sends each call to
 * one of them:
 *   - aorm_engine_execute() of a statement flagged AORM_EXEC_READONLY (the
 *     session and Core flag their reads so) goes where `reads` says
 *     (prefer-standby by default), among the servers in rotation;
 *   - every other statement, aorm_engine_acquire() / aorm_owner_acquire()
 *     (transactions), aorm_engine_copy() and statements flagged
 *     AORM_EXEC_PRIMARY go to the primary (a read-write server).
 * What each server is, is asked on the loop, never assumed from the order
 * of the list: every check_interval each server answers
 * pg_is_in_recovery(), transaction_read_only and its WAL position
 * (pg_current_wal_insert_lsn() on a primary, pg_last_wal_replay_lsn() on a
 * standby). A server whose check fails is down and out of the rotation
 * until a check succeeds again. Statements wait (at most pool_timeout)
 * for the first answers; after that, with no primary known, writes fail at
 * once (on a later loop turn) with AORM_ECONNECT "no primary server ...";
 * a standby promoted meanwhile is found by the next check and takes the
 * writes without a restart. Statements already sent to a server that
 * goes away fail as they would on a plain engine (AORM_ECONNLOST,
 * AORM_EUNKNOWN_OUTCOME for a COMMIT in flight), and the server is checked
 * again at once.
 *
 * Read-your-writes (per owner: a session's reads are its owner's): when a
 * transaction held through an owner commits, the commit's WAL position
 * comes back in the same round trip (a `SELECT pg_current_wal_insert_lsn()`
 * pipelined right behind the COMMIT); until it has come the owner's reads
 * go to the primary, afterwards only to a standby whose last seen replay
 * position has reached it (that standby's own position, not any
 * standby's), else to the primary. An autocommit write through the owner
 * records its position the same way, one statement later. The position can
 * be read and set (aorm_owner_commit_lsn / aorm_owner_set_commit_lsn) to
 * carry it across processes by hand. A standby whose replay is more than
 * max_lag seconds behind the primary leaves the rotation until it catches
 * up.
 *
 * Shared positions (read-your-writes for the whole fleet): with `redis`
 * set, an owner (or session) given a consistency key by the application
 * (aorm_owner_set_consistency_key: a user id, a cookie) shares its
 * positions with every router using the same Redis and prefix. When a
 * write position of that owner comes back, the router raises
 * `redis_prefix + key` to it in one EVAL (a Lua script that keeps the
 * greater of the stored and the new position, both as 16 hex digits, and
 * sets the expiry to redis_ttl either way). The first routed read of an
 * owner after its key was set waits for one GET of the key (at most
 * redis_deadline, on the loop: nothing blocks) and is then routed by the
 * greater of the owner's own position and the stored one, as are its
 * later reads; writes, transactions and reads of owners without a key
 * never wait for Redis. When the GET fails (Redis down, stopped or slower
 * than redis_deadline, the breaker open, a value that is not a position),
 * that read goes to the primary: a read is never served stale because
 * Redis was unavailable; the next read of the owner asks again. A missing
 * key means no recorded write within redis_ttl. Limits: the position is
 * stored one Redis round trip after the write's position came back (so
 * after the COMMIT's callback): a read elsewhere that starts before that
 * may miss it; a failed store is not retried (a warning is logged);
 * after redis_ttl without writes a standby still more than redis_ttl
 * behind would be trusted, so keep redis_ttl above max_lag.
 *
 * aorm_engine_stats_get() on a router sums its servers' counters; its
 * `statements` leaves out the router's own checks and position fetches.
 * The router keeps a timer running (the checks) until it is freed.
 *
 * Handles and ownership: the router is made by aorm_engine_new_hosts() and
 * freed with aorm_engine_free() like any engine; it owns the servers'
 * engines (aorm_hosts_engine() lends one: never free it). Owners made on
 * the router (aorm_owner_new) are the caller's, as usual. A connection
 * acquired through the router belongs to the primary's engine:
 * aorm_conn functions work on it as on any held connection. The Redis
 * client of `redis` stays the caller's: the router only queues commands
 * on it, and it must be freed after the router (its callbacks still due
 * then come back as AORM_ECANCELED and are absorbed).
 *
 * Callbacks: the router calls a statement's or an acquire's callback with
 * the router as `e`, with the usual contract (once, never from inside the
 * call, may free the router). Statements queued on a held connection call
 * back with the primary's engine as `e`. aorm_log_fn as for engines.
 */
#ifndef AORM_HOSTS_H
#define AORM_HOSTS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine.h"
#include "export.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/** What a server must be to take a statement (libpq's target_session_attrs). */
typedef enum aorm_target_attrs {
    AORM_TARGET_ANY = 0,        /**< any server up */
    AORM_TARGET_READ_WRITE,     /**< transaction_read_only off (a primary that takes writes) */
    AORM_TARGET_READ_ONLY,      /**< transaction_read_only on (a standby, or a read-only primary) */
    AORM_TARGET_PRIMARY,        /**< not in recovery */
    AORM_TARGET_STANDBY,        /**< in recovery; none up: the statement fails */
    AORM_TARGET_PREFER_STANDBY  /**< a standby in rotation, else the primary */
} aorm_target_attrs;

typedef enum aorm_balance {
    AORM_BALANCE_RANDOM = 0,  /**< a random server among those that qualify */
    AORM_BALANCE_LEAST_BUSY   /**< the one with the fewest statements in flight and waiting */
} aorm_balance;

/** A statement flag (aorm_exec_options.flags): run on the primary even
 * when it is flagged AORM_EXEC_READONLY. */
#define AORM_EXEC_PRIMARY (1u << 16)

typedef struct aorm_hosts_options {
    /** One conninfo per server (copied); or NULL and `conninfo` below. */
    const char *const *servers;
    int nservers;
    /** A single conninfo whose host (and port) lists name the servers,
     * split into one conninfo per host (its other settings repeated;
     * target_session_attrs and load_balance settings dropped: the router
     * decides). Used when `servers` is NULL. */
    const char *conninfo;
    /** The pool settings of every server's engine (its conninfo ignored). */
    aorm_engine_options engine;
    aorm_target_attrs reads;    /**< where reads go (AORM_TARGET_PREFER_STANDBY) */
    aorm_target_attrs writes;   /**< AORM_TARGET_READ_WRITE or AORM_TARGET_PRIMARY (READ_WRITE) */
    aorm_balance balance;       /**< among the servers that qualify (AORM_BALANCE_LEAST_BUSY) */
    double check_interval;      /**< seconds between two checks of a server (0.5) */
    double check_timeout;       /**< seconds a check may take before its server counts as down (2) */
    double max_lag;             /**< seconds of replay lag behind the primary after which a
                                     standby leaves the rotation; 0 no bound (10) */
    bool read_your_writes;      /**< track each owner's last write position (true) */
    /** Read-your-writes across processes ("Shared positions" above): the
     * Redis client (the caller's; it must outlive the router) that keeps
     * each consistency key's last write position; NULL: none (NULL). */
    struct aorm_redis *redis;
    const char *redis_prefix;   /**< key prefix, copied ("aorm:ryw:"; the sandbox ACL allows aorm:*) */
    double redis_ttl;           /**< seconds a position is kept after its last write; keep it above
                                     max_lag (60) */
    double redis_deadline;      /**< seconds a read waits for the GET before it goes to the primary;
                                     0: the client's command_timeout (0.2) */
} aorm_hosts_options;

/** Fills every field with its default (no servers; engine options as
 * aorm_engine_options_init). */
AORM_API void aorm_hosts_options_init(aorm_hosts_options *o);

/** Creates a router over the servers. Nothing is opened until the first
 * statement (or aorm_engine_warm()); the first checks start then. Returns
 * NULL when a conninfo cannot be parsed, there is no server, or on out of
 * memory. */
AORM_API aorm_engine *aorm_engine_new_hosts(aorm_loop *loop, const aorm_hosts_options *o);

/** True for an engine made by aorm_engine_new_hosts(). */
AORM_API bool aorm_engine_is_router(const aorm_engine *e);

typedef enum aorm_host_role {
    AORM_HOST_UNKNOWN = 0, /**< not checked yet */
    AORM_HOST_DOWN,        /**< its last check failed */
    AORM_HOST_PRIMARY,     /**< not in recovery */
    AORM_HOST_STANDBY      /**< in recovery */
} aorm_host_role;

typedef struct aorm_host_status {
    aorm_host_role role;
    bool read_only;          /**< transaction_read_only at the last check */
    bool in_rotation;        /**< takes reads now (up, and a standby within max_lag) */
    uint64_t lsn;            /**< WAL position at the last check: insert (primary) or replay (standby) */
    double lag;              /**< seconds its replay is behind the primary (standby), else 0 */
    double checked_at;       /**< loop time of the last answer or failure */
    uint64_t routed;         /**< statements and acquires routed to it */
    uint64_t checks;         /**< checks answered */
    const char *last_error;  /**< why its last check failed ("" if none); valid until the next check */
} aorm_host_status;

/** Number of servers of a router (0 for a plain engine). */
AORM_API int aorm_hosts_count(const aorm_engine *router);
/** Server i's state. Returns 0, or AORM_EMISUSE (not a router, i out of range). */
AORM_API int aorm_hosts_status(const aorm_engine *router, int i, aorm_host_status *out);
/** Server i's own engine (lent; NULL when out of range). */
AORM_API aorm_engine *aorm_hosts_engine(const aorm_engine *router, int i);
/** Index of the primary as last checked, or -1 when none is known. */
AORM_API int aorm_hosts_primary(const aorm_engine *router);
/** Checks every server now (answers arrive later). Returns 0 or AORM_EMISUSE. */
AORM_API int aorm_hosts_check(aorm_engine *router);

/** Read-your-writes position of an owner on a router (0: none yet). */
AORM_API uint64_t aorm_owner_commit_lsn(const aorm_owner *o);
/** Raises the owner's position to lsn (a position kept elsewhere, e.g. in
 * Redis for the user); a lower value is ignored. */
AORM_API void aorm_owner_set_commit_lsn(aorm_owner *o, uint64_t lsn);
/** Names the owner's consistency key (copied; NULL clears it): the
 * positions of its writes are kept in Redis under redis_prefix + key, and
 * its next routed read first reads the key (see "Shared positions").
 * Setting a key (even the same one) makes the next read ask again.
 * Returns 0, AORM_EMISUSE (not an owner of a router, or the router has no
 * redis client, or an empty key) or AORM_ENOMEM. */
AORM_API int aorm_owner_set_consistency_key(aorm_owner *o, const char *key);
/** Sends every read of the owner to the primary (on) or lets them be
 * routed again (off). */
AORM_API void aorm_owner_use_primary(aorm_owner *o, bool on);

struct aorm_session;
/** The same for a session on a router (its owner): every later read of
 * the session goes to the primary (on), or is routed again (off). */
AORM_API void aorm_session_use_primary(struct aorm_session *s, bool on);
/** aorm_owner_set_consistency_key() for the session's owner. */
AORM_API int aorm_session_set_consistency_key(struct aorm_session *s, const char *key);
/** The session's read-your-writes position (aorm_owner_commit_lsn of its owner). */
AORM_API uint64_t aorm_session_commit_lsn(const struct aorm_session *s);

#ifdef __cplusplus
}
#endif

#endif /* AORM_HOSTS_H */

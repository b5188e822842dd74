/** @file cache.h
 * the second-level cache: rows of chosen models kept in Redis, shared by
 * every process of a fleet, read before PostgreSQL, invalidated after
 * COMMIT.
 *
 * A cache is one Redis connection (aorm_redis, redis.h) on the caller's
 * loop, and the regions declared on it. A session created with
 * aorm_session_options.cache set reads through it:
 *
 *   aorm_cache_options co;
 *   aorm_cache_options_init(&co);
 *   co.redis.unix_path = "/run/redis.sock";
 *   aorm_cache *cache = aorm_cache_new(loop, &co);
 *   aorm_cache_model(cache, &author_model, NULL);      // a region for authors, defaults
 *
 *   aorm_session_options so;
 *   aorm_session_options_init(&so);
 *   so.cache = cache;
 *   aorm_session *s = aorm_session_new(engine, &so);
 *   aorm_session_get_many(s, &author_model, keys, n, NULL, on_authors, user);
 *
 * Read path of aorm_session_get and aorm_session_get_many for a cached
 * model: the identity map first; the keys it lacks in one MGET (which
 * also reads the table's generation counters); the keys Redis lacks in
 * one PostgreSQL statement (`= ANY`); the rows PostgreSQL returned
 * written back in one pipelined, conditional step with the region's TTL.
 * Never one statement or one Redis command per key. Misses of one key by
 * several sessions of a process at once become one PostgreSQL read: the
 * later ones wait for the first one's row (stampede control on one loop).
 *
 * Keys are `PREFIX r:REGION:LAYOUT:KEYBYTES`, where LAYOUT is a
 * hash of the model's columns (names, types, sizes, order, nullability):
 * a process with a changed model never reads a value written by an old
 * one. Values are a compact, versioned binary encoding of the row; a value
 * that does not decode exactly (short, long, wrong layout, checksum) is a
 * miss, never an error.
 *
 * Invalidation: a session collects the rows and tables its flushes write
 * (and the tables of Core INSERT/UPDATE/DELETE statements it executes).
 * Nothing is sent before COMMIT succeeds; after it, one pipeline bumps
 * the generation counter of each written table (INCR, O(1), no key sets,
 * no SCAN) and deletes the written rows' keys. A rollback sends nothing.
 * A COMMIT whose outcome is unknown is treated as committed. Raw SQL
 * writes are invisible to the session: call aorm_cache_invalidate_model()
 * after them (also for tables only a query or collection region reads).
 *
 * The race every cache has is closed: a reader that missed and read
 * PostgreSQL before a writer's commit writes its (old) row back only if
 * the table's generation is still the one it read from Redis before its
 * PostgreSQL read (one EVAL checks and writes); a writer bumps the
 * generation before it deletes keys, in the same pipeline.
 *
 * A session sees its own writes: while it has pending changes, or has
 * flushed writes to a table in its open transaction, it reads that
 * model from PostgreSQL. A session inside an explicitly begun transaction
 * (aorm_session_begin: an isolation level or row locks) never reads from
 * the cache; queries with populate_existing do not either.
 *
 * Never in the way: every cache command has the cache's deadline. Redis
 * down, stopped, slow or answering garbage makes reads go to PostgreSQL
 * within that deadline, without an error to the caller; the connection's
 * circuit breaker then refuses at once for its cooldown (redis.h). An
 * invalidation that fails is kept in a bounded queue and retried; while
 * it waits, this process reads the tables it names from PostgreSQL. When
 * the queue overflows, the cache is disabled (every read bypasses it)
 * until Redis answers again and every registered table's generations
 * have been bumped: stale rows are never served by this process, and by
 * other processes at most for the region's TTL.
 *
 * Cached queries (aorm_cache_query, aorm_query_options.cache) and leases
 * against stampedes across processes (aorm_cache_region_options.lease):
 * see those declarations.
 *
 * Redis: run it with maxmemory-policy volatile-lru, volatile-lfu,
 * volatile-ttl or noeviction. Generation keys (`P g:TABLE`, `P h:TABLE`)
 * have no TTL and must never be evicted while values written under them
 * live; values and leases always have a TTL.
 *
 * When a commit is seen elsewhere: the session's commit callback runs
 * once PostgreSQL answered COMMIT; the invalidation is then queued on the
 * cache's connection and goes out in that loop turn's pipeline, so
 * another process may still read the old row from Redis for about one
 * Redis round trip after the callback (never longer than the deadline
 * while Redis answers, the TTL when it does not). This process reads a
 * table with an unacknowledged invalidation from PostgreSQL.
 *
 * Free order: the sessions that use the cache, the cache, the engine,
 * the loop.
 *
 * Handles and ownership (every _free accepts NULL):
 *   - aorm_cache: made by aorm_cache_new(), owned by the caller, freed
 *     with aorm_cache_free() after every session that reads through it
 *     and before the aorm_loop. It owns its Redis connection
 *     (aorm_cache_redis() lends it), its regions and every invalidation
 *     not yet acknowledged.
 *   - aorm_cache_region: made by aorm_cache_model(), owned by the cache
 *     (freed with it); the caller only passes it around.
 *   - The cache keeps pointers to the models it was given: they must
 *     outlive it (models are static constants).
 *
 * Callbacks: the cache has none of its own. Session callbacks of
 * operations answered through the cache run as any session callback
 * (session.h) and may call anything there; aorm_cache_free() must not be
 * called from inside a callback of a session that uses the cache. The
 * Redis connection's callbacks (redis.h) apply to commands the caller
 * sends on aorm_cache_redis() itself.
 *
 * Threading: one loop, one thread, as the rest of aorm. */
#ifndef AORM_CACHE_H
#define AORM_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "loop.h"
#include "model.h"
#include "redis.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aorm_cache aorm_cache;
typedef struct aorm_cache_region aorm_cache_region;

/* ---- the cache ---------------------------------------------------------------- */

typedef struct aorm_cache_options {
    aorm_redis_options redis; /**< the data connection (aorm_redis_options_init defaults; its
                                   command_timeout is replaced by `deadline`) */
    const char *prefix;       /**< prefix of every key ("aorm:c:"); copied. With an ACL user,
                                   its key pattern must cover it */
    double deadline;          /**< seconds for every cache command (0.1) */
    size_t retry_max;         /**< failed invalidations kept for retry (1024); past that the
                                   cache is disabled until Redis answers again */
    double retry_interval;    /**< seconds between retries of failed invalidations (0.05) */
} aorm_cache_options;

/** Fills every field with its default. */
AORM_API void aorm_cache_options_init(aorm_cache_options *o);

/** Creates a cache on `loop` and starts connecting to Redis. Returns NULL
 * on invalid options (those of aorm_redis_new, an empty prefix) or out of
 * memory. The loop must outlive the cache; so must every session that
 * uses it (free the sessions first). */
AORM_API aorm_cache *aorm_cache_new(aorm_loop *loop, const aorm_cache_options *o);

/** Frees the cache, its regions and its connection; invalidations not yet
 * acknowledged are dropped (their tables then rely on the TTL). Accepts
 * NULL. Not from inside a callback of a session that uses the cache. */
AORM_API void aorm_cache_free(aorm_cache *c);

/** The cache's Redis connection (for its statistics, or commands of your
 * own under the prefix). */
AORM_API aorm_redis *aorm_cache_redis(aorm_cache *c);

/* ---- regions ------------------------------------------------------------------ */

typedef enum aorm_cache_strategy {
    AORM_CACHE_READ_WRITE = 0, /**< rows change: write-backs are conditional on the table's generation */
    AORM_CACHE_READ_ONLY = 1   /**< rows never change once written (reference data, append-only
                                    tables): write-backs are plain SETs. Writes through a session
                                    still invalidate, so a mistake is never served stale */
} aorm_cache_strategy;

typedef struct aorm_cache_region_options {
    const char *name;              /**< key part; NULL: the model's table name; copied, no ':' */
    double ttl;                    /**< seconds a value lives in Redis (300) */
    aorm_cache_strategy strategy;  /**< AORM_CACHE_READ_WRITE */
    size_t near_max_entries;       /**< near cache (process memory) entries; 0: none (0) */
    size_t near_max_bytes;         /**< near cache bytes; 0: no byte bound */
    double lease;                  /**< rows regions: seconds a load lease lives; 0: no leases (0).
                                        With leases, a process that misses a key first takes
                                        `SET P l:KEY TOKEN NX PX lease`; only the holder reads
                                        PostgreSQL, writes back and releases it (compare and
                                        delete); other processes that miss the key meanwhile
                                        re-read Redis every 5 ms, on the loop's timers, until the
                                        value is there or lease_wait has passed, then read
                                        PostgreSQL themselves */
    double lease_wait;             /**< seconds at most a miss waits for another process's lease
                                        (0.05) */
} aorm_cache_region_options;

AORM_API void aorm_cache_region_options_init(aorm_cache_region_options *o);

/** Declares the region of model m (o may be NULL: defaults). One region
 * per model; m must stay valid as long as the cache. Returns the region,
 * or NULL on misuse (m already has one, a model without a primary key,
 * a name with ':') or out of memory. */
AORM_API aorm_cache_region *aorm_cache_model(aorm_cache *c, const aorm_model *m,
                                              const aorm_cache_region_options *o);

/** Declares the region of a collection relationship (one-to-many or
 * many-to-many) rel of model m, e.g. AORM_REL(author, books): selectin
 * loads of it (loaders.h) read each owner's children from Redis, in
 * order, in one MGET per level, and PostgreSQL only for the owners Redis
 * lacks. A value holds the children's rows themselves, and is valid only
 * while the generations of the tables the list depends on (the target's
 * table; for many-to-many also the association table) are the ones it was
 * written under: any committed write to those tables retires every list
 * of the region. Default name "<table>.<relationship>". Returns NULL on
 * misuse (not a collection of m, declared twice, a name with ':') or out
 * of memory. */
AORM_API aorm_cache_region *aorm_cache_collection(aorm_cache *c, const aorm_model *m, const aorm_relationship *rel,
                                                   const aorm_cache_region_options *o);

/** Declares the query region of model m: aorm_session_query() with
 * aorm_query_options.cache set, on a SELECT of m, reads its answer from
 * Redis. The key is the region's prefix and a 128-bit hash of the
 * compiled SQL text, its parameters (types, formats, bytes) and the
 * model's layout; the value holds the rows of the answer, in order, and
 * the generations of every table the statement reads (its FROM and JOIN
 * tables, those of its subqueries and CTEs) as they were before the
 * PostgreSQL read. A committed write to any of those tables (through a
 * session of any process whose cache declares a query region or a region
 * of that table) retires it. Statements with raw SQL parts, row locks, or
 * more than 16 tables are never cached; a cached statement must be a
 * function of its tables and parameters (no now(), random(), sequences).
 * Write-backs are conditional on the generations, as for rows. Returns
 * NULL on misuse (m already has a query region, a name with ':') or out
 * of memory. The near-cache fields of o are ignored. */
AORM_API aorm_cache_region *aorm_cache_query(aorm_cache *c, const aorm_model *m, const aorm_cache_region_options *o);

/** The region of model m, or NULL. */
AORM_API aorm_cache_region *aorm_cache_region_of(const aorm_cache *c, const aorm_model *m);

/** After writes the session cannot see (raw SQL, other programs): bumps
 * m's table generations, so that no row, list or query answer read from
 * it before is read again. Returns 0 (queued; retried like any
 * invalidation) or AORM_EMISUSE (no region reads m's table; with a query
 * region declared, any table qualifies). */
AORM_API int aorm_cache_invalidate_model(aorm_cache *c, const aorm_model *m);

/* ---- statistics ----------------------------------------------------------------- */

typedef struct aorm_cache_stats {
    uint64_t hits;               /**< keys answered by Redis */
    uint64_t near_hits;          /**< keys answered by the near cache */
    uint64_t misses;             /**< keys Redis did not have (or held an undecodable value for) */
    uint64_t coalesced;          /**< of the misses: answered by another session's PostgreSQL read of
                                      the same key in this process, already under way */
    uint64_t writebacks;         /**< rows written back after a miss */
    uint64_t writebacks_refused; /**< write-backs dropped: the table changed since the read */
    uint64_t invalidations;      /**< keys deleted and tables bumped after commits */
    uint64_t bypasses;           /**< reads sent to PostgreSQL without asking Redis (breaker open,
                                      disabled, pending invalidation, own writes) */
    uint64_t errors;             /**< cache commands that failed (timeouts, lost connections, garbage) */
    uint64_t retries;            /**< invalidations sent again after a failure */
    size_t retry_queued;         /**< invalidations waiting to be retried now */
    bool disabled;               /**< the retry queue overflowed: bypassed until recovered */
    aorm_redis_breaker breaker;  /**< the connection's breaker state now */
    uint64_t lease_waits;        /**< keys whose miss waited for another process's lease */
    uint64_t lease_hits;         /**< of those: answered from Redis once the holder wrote back */
} aorm_cache_stats;

/** Counters of one region (r) since it was declared. */
AORM_API void aorm_cache_region_stats(const aorm_cache_region *r, aorm_cache_stats *out);
/** The sums over every region of the cache. */
AORM_API void aorm_cache_stats_get(const aorm_cache *c, aorm_cache_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* AORM_CACHE_H */

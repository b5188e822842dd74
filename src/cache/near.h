/* near.h -- the near cache (a bounded in-process LRU of Redis values) and
 * the tracker that keeps it coherent with Redis (client-side caching in
 * RESP2 redirect mode). Internal to src/cache/.
 *
 * The near cache stores copies of keys and values, bounded by a number of
 * entries and a number of bytes, each entry with its own expiry time.
 * get/put/del are O(1) (an open-addressing table hashed with XXH3 and an
 * LRU list). It knows nothing of Redis: the cache drops entries when the
 * tracker reports an invalidation.
 *
 * The one race a near cache must close: a value read from Redis on the
 * data connection, while the invalidation of a later change of that key
 * arrives on the tracker's connection and is handled first (two sockets:
 * nothing orders them). The invalidation finds nothing to drop, then the
 * old value is put and would stay until its TTL. So a put is conditional:
 * take aorm__near_seq() before sending the read, and store the reply with
 * aorm__near_put_after(.., seen): it refuses when that key was dropped (by
 * aorm__near_del) or the whole cache cleared since `seen`. The cache
 * additionally stores only while aorm__tracker_ready() and while
 * aorm__tracker_epoch() still equals the value taken with the read.
 *
 * Threading: one loop, one thread; nothing here is thread-safe. */
#ifndef AORM_CACHE_NEAR_H
#define AORM_CACHE_NEAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aorm/loop.h"
#include "aorm/redis.h"

/* ---- the near cache ----------------------------------------------------------- */

typedef struct aorm__near aorm__near;

typedef struct aorm__near_stats {
    size_t entries;         /* entries stored now */
    size_t bytes;           /* bytes they account for: key + value + AORM__NEAR_OVERHEAD each */
    uint64_t hits;          /* gets that returned a value */
    uint64_t misses;        /* gets that found nothing, or an expired entry */
    uint64_t expired;       /* of the misses: entries found expired (and dropped) */
    uint64_t evictions;     /* entries dropped to make room (LRU order) */
    uint64_t invalidations; /* entries dropped by aorm__near_del */
    uint64_t flushes;       /* aorm__near_clear calls */
    uint64_t refused;       /* puts refused: too large, or invalidated since `seen` */
} aorm__near_stats;

/* Bytes counted per entry on top of its key and value. */
#define AORM__NEAR_OVERHEAD 64u

/* A near cache holding at most max_entries entries (> 0) and max_bytes
 * bytes as counted above (0: no byte bound). Returns NULL for
 * max_entries 0 or out of memory. Free with aorm__near_free (accepts
 * NULL). */
aorm__near *aorm__near_new(size_t max_entries, size_t max_bytes);
void aorm__near_free(aorm__near *n);

/* The value stored for key, or NULL (not there, or expired at `now`: an
 * expired entry is dropped). *vlen receives its length. The pointer is
 * borrowed until the next call on this near cache. A hit makes the entry
 * the most recently used. `now` is the clock expires_at was given in (the
 * loop's aorm_loop_now). */
const void *aorm__near_get(aorm__near *n, const void *key, size_t klen, double now, size_t *vlen);

/* Stores a copy of key and value, replacing any entry of that key, until
 * expires_at (same clock as now; <= 0: no expiry), evicting least recently
 * used entries to stay within the bounds. Returns 0 when stored, 1 when
 * not stored (one entry larger than max_bytes, or already expired; the
 * old entry of that key is dropped then), AORM_ENOMEM. */
int aorm__near_put(aorm__near *n, const void *key, size_t klen, const void *val, size_t vlen, double expires_at,
                   double now);

/* The invalidation sequence: grows by one with every aorm__near_del and
 * aorm__near_clear. Take it before sending the read whose reply will be
 * put with aorm__near_put_after. */
uint64_t aorm__near_seq(const aorm__near *n);

/* aorm__near_put, unless key was dropped by aorm__near_del or the cache
 * cleared after `seen` was taken (returns 1 then, and stores nothing).
 * The last AORM__NEAR_HISTORY dels are remembered; a put whose `seen` is
 * older than that history is refused too (conservative). */
#define AORM__NEAR_HISTORY 4096u
int aorm__near_put_after(aorm__near *n, const void *key, size_t klen, const void *val, size_t vlen, double expires_at,
                         double now, uint64_t seen);

/* Drops the entry of key (when there is one; counted as an invalidation)
 * and records the key in the invalidation history (always, present or
 * not: a read of it may be in flight). */
void aorm__near_del(aorm__near *n, const void *key, size_t klen);

/* Drops every entry (counted as a flush); puts of reads taken before are
 * refused. */
void aorm__near_clear(aorm__near *n);

void aorm__near_stats_get(const aorm__near *n, aorm__near_stats *out);

/* ---- the tracker: invalidations from Redis ------------------------------------- */

typedef struct aorm__tracker aorm__tracker;

/* Invalidation callback: key (klen bytes, not NUL-terminated) changed in
 * Redis; key NULL: drop everything (the tracking connection or the data
 * connection was lost, tracking had to be re-established, or the server
 * was flushed). Runs from the loop, never inside a tracker call. May call
 * aorm__tracker_free. */
typedef void (*aorm__tracker_cb)(void *user, const char *key, size_t klen);

/* Starts tracking keys that begin with one of the n prefixes (n >= 1,
 * copied), in broadcast mode, for the connection data_conn (an aorm_redis
 * of the caller, which must outlive the tracker): opens a second
 * connection with the same options o (its own on_ready/on_lost hooks are
 * not used), asks its CLIENT ID, SUBSCRIBEs it to __redis__:invalidate,
 * and has data_conn send CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX ...
 * (first, on each of its connections, and again whenever the id changes).
 * Broadcast mode reports every change of a key that starts with a prefix,
 * by any client, this process's data connection included (no NOLOOP): a
 * value the cache writes back comes back as an invalidation of its key.
 * Returns NULL on bad arguments (no prefix, an empty one, two that
 * overlap: one a prefix of the other, which the server refuses) or out of
 * memory. */
aorm__tracker *aorm__tracker_new(aorm_loop *loop, const aorm_redis_options *o, aorm_redis *data_conn,
                                 const char *const *prefixes, int n, aorm__tracker_cb cb, void *user);

/* True while invalidations are guaranteed to arrive: the tracker's
 * connection is subscribed, and data_conn's current connection confirmed
 * CLIENT TRACKING with that connection's id. Only then may the near cache
 * be trusted and filled. */
bool aorm__tracker_ready(const aorm__tracker *t);

/* Grows by one each time readiness changes and with each drop-everything
 * callback: a value read under one epoch may be put only while the epoch
 * is unchanged (and the tracker ready). */
uint64_t aorm__tracker_epoch(const aorm__tracker *t);

typedef struct aorm__tracker_stats {
    uint64_t messages;      /* invalidation messages received */
    uint64_t keys;          /* keys they named */
    uint64_t flushes;       /* drop-everything callbacks */
    uint64_t tracking_ok;   /* CLIENT TRACKING ON confirmed */
    uint64_t tracking_fail; /* CLIENT TRACKING refused or lost */
    long long client_id;    /* the tracker connection's id; 0 none */
} aorm__tracker_stats;
void aorm__tracker_stats_get(const aorm__tracker *t, aorm__tracker_stats *out);

/* The tracker's own connection (for statistics and tests). */
aorm_redis *aorm__tracker_conn(const aorm__tracker *t);

/* Stops tracking: removes its hooks from data_conn, queues CLIENT
 * TRACKING OFF there when tracking was on (no callback), and closes its
 * own connection (no callback of the tracker runs). Accepts NULL; may be
 * called from inside its callback. */
void aorm__tracker_free(aorm__tracker *t);

#endif /* AORM_CACHE_NEAR_H */

/* redis_int.h -- what the cache module adds to an aorm_redis beyond the
 * public API (include/aorm/redis.h). Internal to src/cache/. */
#ifndef AORM_CACHE_REDIS_INT_H
#define AORM_CACHE_REDIS_INT_H

#include "aorm/redis.h"

/* Adds one more pair of connection hooks (besides the options' on_ready /
 * on_lost), run after the ones added before it, with the same contract.
 * Either may be NULL. Returns 0, AORM_EMISUSE or AORM_ENOMEM. A hook added
 * while a connection is ready runs at the next one. */
int aorm__redis_hook_add(aorm_redis *r, aorm_redis_conn_cb on_ready, aorm_redis_conn_cb on_lost, void *user);

/* Removes the hooks added with the same three values (safe from inside a
 * hook: the removed one is not called again). */
void aorm__redis_hook_remove(aorm_redis *r, aorm_redis_conn_cb on_ready, aorm_redis_conn_cb on_lost, void *user);

/* The number of connections that became ready so far: a value taken when
 * a command is queued tells, in its callback, whether the connection it
 * ran on is still the current one. */
uint64_t aorm__redis_conn_gen(const aorm_redis *r);

/* True while a connection is ready for commands (the stats' `connected`,
 * without copying the stats). */
bool aorm__redis_connected(const aorm_redis *r);

#endif /* AORM_CACHE_REDIS_INT_H */

/* cache_int.h -- private to src/cache/cache*.c: the cache handle, its
 * regions and tables, the row encoding, and what the session's hooks
 * (cache_session.c) and the invalidation pipeline (cache.c) share.
 *
 * Keys (all under the cache's prefix P):
 *   P g:<table>   the table's generation: bumped by every committed write
 *                 to the table. Write-backs are conditional on it.
 *   P h:<table>   the table's row generation: bumped by writes whose rows
 *                 are not known one by one (Core statements, cascades,
 *                 aorm_cache_invalidate_model, recovery). Every row value
 *                 carries the row generation it was written under; a value
 *                 with another one is a miss.
 *   P r:<region>:<layout>:<key bytes>   one row.
 * A committed flush sends, in this order on the one connection: INCR of
 * each written table's g (and h when needed), then one DEL of the rows'
 * keys. A write-back that reaches Redis after the INCR is refused; one
 * that came before it is deleted by the DEL. */
#ifndef AORM_CACHE_INT_H
#define AORM_CACHE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "aorm/cache.h"
#include "aorm/engine.h"
#include "cache/near.h"
#include "util/util.h"

/* Value format version: the first byte of every value. */
#define AORM__CACHE_VFMT 1

typedef struct aorm__ctable {
    struct aorm__ctable *next;
    char *name;      /* "schema.table" or "table" */
    aorm__buf gkey;  /* P g:<table> */
    aorm__buf hkey;  /* P h:<table> */
    int unacked;     /* invalidations of this table sent or queued, not yet acknowledged */
} aorm__ctable;

typedef enum aorm__region_kind {
    AORM__REGION_ROWS, /* rows of a model, by primary key */
    AORM__REGION_COLL, /* a relationship collection of an owner model: its children's rows, in order */
    AORM__REGION_QUERY /* answers of SELECTs of a model: their rows, in order (cache_query.c) */
} aorm__region_kind;

struct aorm_cache_region {
    aorm_cache_region *next;
    aorm_cache *cache;
    aorm__region_kind kind;
    const aorm_model *m;   /* the rows' model (COLL: the relationship's target) */
    const aorm_model *owner;        /* COLL: the model owning the relationship */
    const aorm_relationship *rel;   /* COLL */
    struct aorm__ctable *deps[2];   /* COLL: tables whose generations the lists depend on */
    int ndeps;
    char *name;
    double ttl;
    aorm_cache_strategy strategy;
    uint64_t layout;       /* hash of the model's columns */
    aorm__buf kprefix;     /* P r:<name>:<layout hex>: (COLL: P c:...) */
    aorm__ctable *table;
    size_t near_max_entries, near_max_bytes;
    aorm__near *near;      /* the near cache, or NULL */
    double lease, lease_wait; /* ROWS: load leases across processes (0: none) */
    aorm_cache_stats st;
};

typedef struct aorm__inval aorm__inval;

/* A key one operation is reading from PostgreSQL after a miss, and the
 * operations of other sessions waiting for that row instead of reading it
 * themselves (cache_session.c). */
typedef struct aorm__load aorm__load;
#define AORM__LOAD_BUCKETS 1024

struct aorm_cache {
    aorm_loop *loop;
    aorm_redis *r;
    char *prefix;
    size_t prefix_len;
    double deadline;
    size_t retry_max;
    double retry_interval;
    aorm_log_fn log;
    void *log_user;
    aorm_log_level log_level;
    aorm_redis_options ropts; /* the connection's options, strings copied (the tracker opens its own) */
    aorm__tracker *tracker;   /* keeps the near caches coherent; made with the first near region */
    aorm_cache_region *regions;
    aorm__ctable *tables;
    int nqueries;             /* query regions: every table a session writes gets bumped */
    char lease_token[48];     /* this cache's lease value ("" until the first lease) */
    const char **scr_argv;    /* argument scratch of read commands (copied by the Redis client) */
    size_t *scr_lens;
    size_t scr_cap;
    aorm__load *loads[AORM__LOAD_BUCKETS]; /* keys being read from PostgreSQL, by key hash */
    aorm__inval *retry_head, *retry_tail; /* failed invalidations, oldest first */
    size_t nretry;
    aorm_timer *retry_timer;
    bool disabled;    /* the retry queue overflowed */
    bool recovering;  /* the full bump of a disabled cache is in flight */
    bool freeing;
    uint64_t errors, retries, invalidations; /* cache-level (invalidation) counters */
};

/* One committed transaction's invalidation (or a recovery bump): the
 * tables to bump and the row keys to delete. */
struct aorm__inval {
    aorm__inval *next;
    aorm_cache *c;
    aorm__ctable **tables;
    bool *all_rows;
    size_t ntables, cap_tables;
    aorm__buf keys;      /* concatenated keys... */
    size_t *klen;        /* ...and their lengths */
    size_t nkeys, cap_keys;
    int out;             /* commands of this attempt not yet answered */
    bool failed;         /* one of them failed */
    bool recovery;       /* the full bump that ends the disabled state */
    bool queued;         /* on the retry queue */
};

/* ---- cache.c ----------------------------------------------------------------- */

/* The region of model m (NULL when none). */
aorm_cache_region *aorm__cache_region(const aorm_cache *c, const aorm_model *m);
/* The table of model m when some region depends on it (NULL: none). */
aorm__ctable *aorm__cache_table(const aorm_cache *c, const aorm_model *m);
/* The collection region of relationship rel of model m (NULL when none). */
aorm_cache_region *aorm__cache_coll_region(const aorm_cache *c, const aorm_model *m, const aorm_relationship *rel);
/* The query region of model m (NULL when none). */
aorm_cache_region *aorm__cache_query_region(const aorm_cache *c, const aorm_model *m);
/* The table of model m, made when missing (NULL: out of memory). */
aorm__ctable *aorm__cache_table_make(aorm_cache *c, const aorm_model *m);
/* The table whose generation a session's write to m's table must bump:
 * aorm__cache_table, or made when the cache has query regions (a cached
 * query may read any table). */
aorm__ctable *aorm__cache_table_written(aorm_cache *c, const aorm_model *m);
/* Appends the key bytes (primary-key columns) of obj, a struct of m. */
int aorm__cache_key_bytes(const aorm_model *m, const void *obj, aorm__buf *b);
/* Appends region rg's key of the row whose key fields are in obj to b.
 * Returns 0 or -1 (out of memory, or a key type without an encoding). */
int aorm__cache_row_key(const aorm_cache_region *rg, const void *obj, aorm__buf *b);
/* Appends the encoded row (stamp = the row generation it is written
 * under). Returns 0 or -1. */
int aorm__cache_encode(const aorm_cache_region *rg, const void *obj, uint64_t stamp, aorm__buf *b);
/* Decodes a value into obj (a zeroed struct or an object to overwrite):
 * strings go through alloc. Returns 0, or -1 when the value is not
 * exactly a row of this layout with this stamp (obj is then untouched). */
int aorm__cache_decode(const aorm_cache_region *rg, const char *v, size_t len, uint64_t stamp, void *obj,
                       const aorm_allocator *alloc);
/* The row generation a value was written under (0 for a value too short
 * to hold one: it then fails decoding anyway). */
uint64_t aorm__cache_value_stamp(const char *v, size_t len);
/* Whether the near cache of rg may be read and filled now. */
bool aorm__cache_near_ok(const aorm_cache_region *rg);
/* An integer generation as Redis holds it ("12"; NULL / "" is 0). */
uint64_t aorm__cache_gen_value(const char *s, size_t len);
/* An invalidation being built (NULL on out of memory). */
aorm__inval *aorm__inval_new(aorm_cache *c);
void aorm__inval_free(aorm__inval *iv);
int aorm__inval_table(aorm__inval *iv, aorm__ctable *t, bool all_rows);
int aorm__inval_key(aorm__inval *iv, const char *k, size_t len);
/* Sends iv (it is then the cache's: freed when acknowledged, retried when
 * it fails). Tables it names count as unacknowledged until then. */
void aorm__inval_send(aorm__inval *iv);
/* Whether reads of region rg may use Redis now (not disabled, no
 * unacknowledged invalidation of its table, breaker not open). */
bool aorm__cache_usable(const aorm_cache_region *rg);
/* Test seam (cache_session.c): when set, every write-back is handed to
 * it instead of being sent, and goes out when it calls send(job) (once).
 * Lets a test put a writer's commit between a reader's PostgreSQL read
 * and its write-back. */
extern void (*aorm__cache_wb_gate)(void (*send)(void *job), void *job);
/* The session object for a row value of region rg (stamp 0): the
 * identity map's (the session's copy wins, an expired one is refreshed)
 * or a new one; NULL when the value does not decode or the map's object
 * is detached (cache_session.c). */
struct aorm_session;
void *aorm__cache_child_object(struct aorm_session *s, aorm_cache_region *rg, const char *v, size_t len);
/* Whether s wrote one of tabs[0..n) in its open transaction, or is in
 * an explicitly begun one (cache_session.c). */
bool aorm__cache_session_wrote(struct aorm_session *s, aorm__ctable *const *tabs, int n);
/* Read tickets (op->cache) start with their kind. */
enum { AORM__TICKET_READ = 0, AORM__TICKET_QUERY = 1 };
/* cache_query.c: the query ticket's side of aorm__cache_loaded and
 * aorm__cache_op_free. */
struct aorm__sop;
void aorm__cache_query_loaded(struct aorm__sop *op, void *const *objs, size_t n);
void aorm__cache_query_free(void *ticket);
/* The conditional write-back script (EVAL). */
const char *aorm__cache_wb_script(void);
void aorm__cache_logf(aorm_cache *c, aorm_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* AORM_CACHE_INT_H */

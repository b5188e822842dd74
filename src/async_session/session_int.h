/* session_int.h -- private to src/async_session (and read by src/loaders
 * through loaders' own needs): object headers, the identity map, session
 * operations and the session itself.
 *
 * Every object the session owns is laid out as [aorm__obj header][user
 * struct] in the session's arena; the user only ever sees the struct.
 * aorm__obj_of() finds the header again and checks its magic, so a
 * pointer that is not a session object is refused (AORM_EMISUSE) rather
 * than trusted. */
#ifndef AORM_SESSION_INT_H
#define AORM_SESSION_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "aorm/session.h"
#include "async_session/region.h"
#include "cache/cache_hooks.h"
#include "mapping/mapping.h"

#define AORM__OBJ_MAGIC 0x616f726du /* "aorm" */

enum {
    OBJ_IN_MAP = 1u << 0,   /* in the identity map */
    OBJ_EXPIRED = 1u << 1,  /* columns stale: the next load overwrites them */
    OBJ_ADDED = 1u << 2,    /* on the session's tracked list */
    OBJ_SEEN = 1u << 3      /* scratch mark for one pass (de-duplication) */
};

typedef struct aorm__obj {
    uint64_t *defaults;           /* bit i: column i is left to its server default at INSERT (region), or NULL */
    struct aorm__obj *track_next; /* session's tracked objects (new, deleted, persistent) */
    const aorm_model *model;
    void *snapshot;               /* column bytes as last loaded / flushed (NULL: new) */
    aorm_list *rel_snap;          /* per relationship: the collection as loaded/flushed (or NULL) */
    uint64_t key_hash;
    uint32_t magic;               /* AORM__OBJ_MAGIC; the object lies in its session's region */
    uint8_t state;                /* aorm_object_state */
    uint8_t flags;
    uint16_t pad_;
    uint32_t loaded_rels;         /* bit i: relationship i of the model is loaded */
    uint32_t seq;                 /* creation order, for stable flush order */
} aorm__obj;

_Static_assert(sizeof(aorm__obj) % 16 == 0, "object header keeps the struct 16-byte aligned");
_Static_assert(sizeof(aorm__obj) == 64, "object header: one cache line");

/* Bytes of a model's struct that hold columns: [0, colspan). Snapshots
 * keep only these (relationship fields after them need no snapshot). */
static inline size_t aorm__colspan(const aorm_model *m) {
    size_t end = 0;
    for (int i = 0; i < m->ncolumns; i++) {
        size_t e = m->columns[i].offset + m->columns[i].size;
        if (e > end) end = e;
    }
    return end;
}

static inline void *aorm__obj_data(aorm__obj *h) { return (char *)h + sizeof(aorm__obj); }

/* Does the object leave column i to its server default (see
 * aorm_object_use_default)? */
static inline bool aorm__obj_uses_default(const aorm__obj *h, int i) {
    return h->defaults && ((h->defaults[i >> 6] >> (i & 63)) & 1u);
}

/* The header of an object the session itself produced (from its identity
 * map, its own lists): no checks. */
static inline aorm__obj *aorm__obj_hdr(void *obj) { return (aorm__obj *)((char *)obj - sizeof(aorm__obj)); }

/* The header of a session object, or NULL when obj is not one of s's.
 * For pointers that come from the caller (arguments, relationship fields
 * and lists the caller may have filled): the pointer is first checked to
 * lie inside the session's own memory, so nothing outside it is read. */
aorm__obj *aorm__obj_of(const aorm_session *s, const void *obj);

/* ---- identity map --------------------------------------------------------- */

/* One slot of the identity map: the object and its key hash, side by
 * side, so that probing compares hashes without reading object headers. */
typedef struct aorm__idmap_slot {
    uint64_t hash;
    aorm__obj *h; /* NULL: empty */
} aorm__idmap_slot;

typedef struct aorm__idmap {
    aorm__idmap_slot *slots;
    uint32_t nslots; /* power of two (0 before the first put); at most half full */
    uint32_t count;
} aorm__idmap;

void aorm__idmap_init(aorm__idmap *m);
void aorm__idmap_free(aorm__idmap *m);
/* Hash of the primary key fields of obj (a struct of model m). */
uint64_t aorm__key_hash(const aorm_model *m, const void *obj);
/* aorm__key_hash of a model whose key is one INT8 or INT4 column, from
 * the key's value: a 64-bit finalizer (MurmurHash3's), a handful of
 * instructions instead of a library call per row. */
static inline uint64_t aorm__int_key_hash(const aorm_model *m, int64_t key) {
    uint64_t x = (uint64_t)key ^ (uint64_t)(uintptr_t)m;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}
/* The object of model m whose key equals the key fields of `key`. */
aorm__obj *aorm__idmap_find(aorm__idmap *map, const aorm_model *m, const void *key, uint64_t hash);
/* The same for a model whose key is one INT8 or INT4 column, declared
 * first (the caller checked): compares the field itself. */
aorm__obj *aorm__idmap_find_int(aorm__idmap *map, const aorm_model *m, int64_t key, uint64_t hash);
int aorm__idmap_put(aorm__idmap *map, aorm__obj *h);
int aorm__idmap_reserve(aorm__idmap *map, size_t more);
static inline void aorm__idmap_prefetch(const aorm__idmap *map, uint64_t hash) {
    if (map->nslots) __builtin_prefetch(&map->slots[hash & (map->nslots - 1)]);
}
void aorm__idmap_remove(aorm__idmap *map, aorm__obj *h);

/* ---- the session -------------------------------------------------------------- */

typedef enum sop_kind {
    SOP_QUERY, SOP_EXECUTE, SOP_GET, SOP_GET_MANY, SOP_REFRESH,
    SOP_FLUSH, SOP_COMMIT, SOP_ROLLBACK, SOP_BEGIN,
    SOP_SAVEPOINT, SOP_RELEASE_SAVEPOINT, SOP_ROLLBACK_SAVEPOINT,
    SOP_LOAD,   /* explicit relationship load (loaders.h) */
    SOP_STREAM, /* aorm_session_stream */
    SOP_NOOP    /* answers in queue order: chains start on it */
} sop_kind;

typedef struct aorm__sop aorm__sop;

/* A queued session operation. */
struct aorm__sop {
    aorm__sop *next;
    aorm_session *s;
    sop_kind kind;
    union {
        aorm_objects_cb objects;
        aorm_object_cb object;
        aorm_session_cb done;
        aorm_rows_cb rows;
        aorm_stream_objects_cb stream;
    } cb;
    void *user;
    aorm_stmt *stmt;          /* owned */
    aorm_query_options qo;
    const aorm_model *model;
    void *key;                /* GET: region copy of the key struct */
    void **keys;              /* GET_MANY: region copies */
    size_t nkeys;
    void *obj;                /* REFRESH */
    aorm_tx_options tx;
    bool has_tx;
    int phase;                /* step within a multi-step operation */
    bool answered;            /* its callback has run */
    int pending;              /* statements of this operation still out */
    aorm_error *err;          /* first failure, copied (for multi-statement operations) */
    void *ext;                /* per-kind state (flush plan, load plan run)... */
    void (*ext_free)(void *); /* ...and how to free it if the operation dies first */
    void *cache;              /* second-level cache state of a get / get_many (cache_hooks.h) */
    /* pipelining (see "the operation queue" in session.c) */
    bool sent_all;            /* every statement of it is out: later operations may be sent behind it */
    bool ahead;               /* started while an earlier operation was still unanswered */
    bool in_ahead;            /* on the session's ahead list (not yet its turn) */
    bool in_tx;               /* its statement went down the held connection */
    bool lazy;                /* SOP_BEGIN: answers once BEGIN is queued, not when it is answered */
    bool rider;               /* SOP_GET merged into an earlier get's statement: it sends nothing */
    bool covered;             /* rider: that statement succeeded, the identity map has the answer */
    bool early;               /* its answer came before its turn and waits in early_* */
    int nriders;              /* SOP_GET: riders answered by its statement (the next ones in order) */
    int early_code;           /* early answer: an error that could not be copied (out of memory) */
    aorm_error *early_err;    /* early answer: the error (copied)... */
    void *early_obj;          /* ...or the object of a get... */
    void **early_items;       /* ...or the objects of a query (malloc'd) */
    size_t early_n;
};

typedef enum tx_state {
    TX_NONE,      /* autocommit reads on shared connections */
    TX_ACQUIRING, /* waiting for a connection of its own */
    TX_ACTIVE,    /* holding a connection inside BEGIN */
    TX_FAILED     /* rollback required: a statement failed inside the transaction, BEGIN
                     failed (or no connection could be had for it), or the held
                     connection was lost */
} tx_state;

struct get_sql_entry {
    struct get_sql_entry *next;
    const aorm_model *model;
    const char *sql;
};

struct aorm_session {
    aorm_engine *e;           /* NULL once the engine has been freed */
    aorm_owner *owner;        /* every engine call of the session goes through it */
    aorm_loop *loop;
    aorm_session_options o;
    aorm__region region;
    aorm__idmap idmap;
    aorm__obj *tracked;       /* every object that is or was pending/persistent/deleted */
    uint32_t next_seq;
    uint32_t npending;        /* PENDING objects */
    uint32_t ndeleted;        /* DELETED objects */
    struct get_sql_entry *get_sqls; /* compiled primary-key lookups, per model */
    void *scratch;            /* a key struct buffer for row lookups */
    size_t scratch_size;

    aorm__sop *q_head, *q_tail;
    aorm__sop *running;
    aorm__sop *a_head, *a_tail; /* started behind `running`, answered in this order after it */
    bool start_scheduled;     /* a soon callback will start the next operation */
    bool pumping;             /* pump() is on the stack: it picks up what is queued meanwhile */

    tx_state tx;
    aorm_conn *conn;          /* held while in a transaction */
    int savepoints;
    /* objects inserted / deleted by flushes of the current transaction,
     * so that a rollback can restore their states */
    aorm__obj **tx_new;
    size_t tx_nnew, tx_new_cap;
    aorm__obj **tx_del;
    size_t tx_ndel, tx_del_cap;

    uint64_t statements;
    char errmsg[256];         /* last aorm_rel_get message */
    char decode_msg[320];     /* the last value that could not be loaded: model, column, both types */
    void *data;
    void *cache_tx;           /* the transaction's writes, for the cache's invalidation (cache_hooks.h) */
    int depth;                /* session code on the stack */
    int begins_out;           /* BEGIN answers still to come (they point at the session) */
    bool closing;
    bool free_pending;
    bool engine_gone;         /* the engine is being freed or is gone: every operation is cancelled */
};

/* Options of one statement of op: its deadline (the query's, else the
 * session's), flags, and the session's owner (so that freeing the
 * session or the engine cancels it). */
static inline aorm_exec_options aorm__session_xo(const aorm_session *s, const aorm__sop *op, unsigned flags) {
    aorm_exec_options xo = {.flags = flags,
                            .deadline = op->qo.deadline != 0 ? op->qo.deadline : s->o.statement_timeout,
                            .owner = s->owner};
    return xo;
}

/* session.c, for flush.c and the loaders */
int aorm__session_send(aorm_session *s, aorm__sop *op, aorm_stmt *q, aorm_result_cb cb);
void aorm__session_op_done(aorm_session *s, aorm__sop *op);
void aorm__session_enter(aorm_session *s);
void aorm__session_leave(aorm_session *s);
/* Start of every engine callback carrying op: false when the session is
 * closing (op already answered; freed with its ext after its last
 * statement is back). */
bool aorm__op_arrived(aorm__sop *op);
int aorm__session_noop(aorm_session *s, aorm_session_cb cb, void *user);
/* Starts op again from the top (the second-level cache resumes a get or
 * get_many this way once Redis has answered). Call inside session_enter. */
void aorm__session_resume(aorm__sop *op);
/* For rows that come from the second-level cache: a new persistent
 * object of m (zeroed, key hash set, not yet in the identity map; NULL on
 * out of memory), filled by the caller, then adopted: snapshot taken, put
 * in the identity map and tracked. Returns 0 or AORM_ENOMEM. */
aorm__obj *aorm__session_new_row(aorm_session *s, const aorm_model *m, uint64_t hash);
int aorm__session_adopt_row(aorm_session *s, aorm__obj *h);
/* aorm_session_begin() whose callback runs as soon as BEGIN is queued on
 * the held connection, so that the next operation's statements share its
 * round trip (a refused BEGIN fails them instead: rollback required). */
int aorm__session_begin_lazy(aorm_session *s, const aorm_tx_options *tx, aorm_session_cb cb, void *user);
void aorm__session_fail_tx(aorm_session *s);
void aorm__session_ensure_tx(aorm_session *s, aorm__sop *op, void (*then)(aorm__sop *op, const aorm_error *err));
/* Rows of res (a result of q) as objects of m through the identity map,
 * into out[0..nrows). Returns 0 or a negative code with msg set. */
int aorm__session_materialize(aorm_session *s, const aorm_stmt *q, const aorm_result *res,
                              const aorm_model *m, bool populate, void **out);
int aorm__model_positions(const aorm_stmt *q, const aorm_model *m, int *pos);
/* How the columns of one result go into objects of a model. */
enum { RP_GENERIC, RP_INT8, RP_INT4, RP_OPT_INT4, RP_FLOAT8, RP_TEXT };
#define AORM__RP_INLINE 16
typedef struct aorm__rowplan_col {
    const aorm_column *c;
    int pos;
    uint32_t oid;
    uint8_t fast;
} aorm__rowplan_col;
typedef struct aorm__rowplan {
    const aorm_model *m;
    struct pg_result *pg;
    aorm__rowplan_col *cols; /* key columns first */
    int n, npk;
    int nrows;
    bool whole_key;          /* every primary-key column is in the result */
    size_t colspan;          /* snapshot size: aorm__colspan(m) */
    aorm__rowplan_col inline_cols[AORM__RP_INLINE];
} aorm__rowplan;
int aorm__rowplan_init(aorm__rowplan *rp, const aorm_result *res, const aorm_model *m, const int *pos);
/* Every row of the plan's result as an object, through the identity map,
 * into out[0..nrows) (NULL for a row whose key is NULL): the one-pass path
 * with prefetching for a leading int4/int8 key, else row by row. No
 * memory is reserved here (aorm__session_materialize does that for
 * results whose rows are mostly new objects). Returns 0 or a negative
 * code. */
int aorm__session_materialize_rows(aorm_session *s, const aorm__rowplan *rp, bool populate, void **out);
void aorm__rowplan_free(aorm__rowplan *rp);
int aorm__session_materialize_row(aorm_session *s, const aorm__rowplan *rp, int r, bool populate, void **out);
void aorm__session_take_snapshot(aorm_session *s, aorm__obj *h);
/* h's default bitmap, allocated (zeroed) in the region when it has none;
 * NULL on out of memory. */
uint64_t *aorm__obj_defaults(aorm_session *s, aorm__obj *h);
bool aorm__obj_changed(const aorm__obj *h);
void aorm__session_cascade(aorm_session *s, aorm__obj *h, int depth);
int aorm__field_value_expr(const aorm_column *c, const void *obj, aorm_expr *out);

/* src/loaders/loaders.c */
typedef void (*aorm__load_then)(aorm__sop *op, void **roots, size_t n, const aorm_error *err);
int aorm__loaders_prepare_query(aorm__sop *op);
const aorm_load_plan *aorm__loaders_default_plan(aorm_session *s, const aorm_model *m);
void aorm__loaders_after_query(aorm__sop *op, const aorm_result *res, void **roots, size_t n, aorm__load_then then);
void aorm__loaders_start_explicit(aorm__sop *op, void **objs, size_t n, aorm__load_then then);

/* flush.c */
void aorm__flush_start(aorm__sop *op, void (*then)(aorm__sop *op, const aorm_error *err));
bool aorm__session_has_changes(aorm_session *s);
void aorm__flush_rollback_states(aorm_session *s);
void aorm__flush_commit_states(aorm_session *s);
/* After a COMMIT whose outcome is unknown: rows the transaction inserted
 * or deleted may or may not exist, so their objects leave the session
 * (DETACHED: never inserted again), objects it updated are expired, and
 * changes never flushed are discarded as by a rollback. */
void aorm__flush_unknown_states(aorm_session *s);

#endif /* AORM_SESSION_INT_H */

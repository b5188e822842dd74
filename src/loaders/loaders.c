/* loaders.c -- eager loading of relationships: selectin (one `= ANY($1)`
 * statement per relationship per depth), joined (LEFT OUTER JOIN folded
 * into the query) and raise (reading an unloaded relationship is an
 * error), plus the N+1 advisor.
 *
 * A load runs level by level. Every load of a level is built and sent in
 * the same loop turn -- the engine then writes them as one pipeline, on
 * the session's connection when it is in a transaction -- and the next
 * level starts when the last answer of this one is in. Objects go through
 * the session's identity map like any query's rows.
 *
 * This module reads and writes the session's object headers (load state,
 * collection snapshots) through async_session/session_int.h: the two
 * modules share that private state by design. Owns: the load run (level
 * arrays, malloc'd) until it calls back. */
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>

#include "aorm/loaders.h"
#include "async_session/session_int.h"

/* ---- helpers ---------------------------------------------------------------------- */

typedef struct ptr_vec {
    void **v;
    size_t n, cap;
} ptr_vec;

static int vec_push(ptr_vec *a, void *p) {
    if (a->n == a->cap) {
        size_t c = a->cap ? a->cap * 2 : 64;
        void **n = realloc(a->v, c * sizeof(void *));
        if (!n) return -1;
        a->v = n;
        a->cap = c;
    }
    a->v[a->n++] = p;
    return 0;
}

/* A pointer set (open addressing) for de-duplicating objects. */
typedef struct ptr_set {
    void **slots;
    size_t cap, n;
} ptr_set;

static int set_add(ptr_set *s, void *p) { /* 1 added, 0 present, -1 oom */
    if ((s->n + 1) * 2 > s->cap) {
        size_t c = s->cap ? s->cap * 2 : 128;
        void **ns = calloc(c, sizeof(void *));
        if (!ns) return -1;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slots[i]) continue;
            size_t h = ((uintptr_t)s->slots[i] >> 4) * 0x9e3779b97f4a7c15ull & (c - 1);
            while (ns[h]) h = (h + 1) & (c - 1);
            ns[h] = s->slots[i];
        }
        free(s->slots);
        s->slots = ns;
        s->cap = c;
    }
    size_t h = ((uintptr_t)p >> 4) * 0x9e3779b97f4a7c15ull & (s->cap - 1);
    while (s->slots[h]) {
        if (s->slots[h] == p) return 0;
        h = (h + 1) & (s->cap - 1);
    }
    s->slots[h] = p;
    s->n++;
    return 1;
}

static void set_free(ptr_set *s) {
    free(s->slots);
    memset(s, 0, sizeof(*s));
}

static int rel_index(const aorm_model *m, const aorm_relationship *r) { return (int)(r - m->relationships); }

static void mark_loaded(aorm__obj *h, int i) {
    if (i < 32) h->loaded_rels |= 1u << i;
}

/* ---- plans --------------------------------------------------------------------------- */

static int validate_loads(const aorm_model *m, const aorm_load *loads, int n, int depth, char *msg, size_t cap) {
    if (depth > 16) {
        snprintf(msg, cap, "load plan deeper than 16 levels");
        return AORM_EMISUSE;
    }
    for (int i = 0; i < n; i++) {
        const aorm_load *l = &loads[i];
        if (l->model != m) {
            snprintf(msg, cap, "load plan: a load of %s is applied to %s objects", l->model ? l->model->name : "?",
                     m->name);
            return AORM_EMISUSE;
        }
        const aorm_relationship *r = aorm_model_relationship_at(m, l->offset);
        if (!r) {
            snprintf(msg, cap, "load plan: %s has no relationship at that field", m->name);
            return AORM_EMISUSE;
        }
        aorm__keymap km, rem;
        if (aorm__rel_keymap(m, r, 0, &km) < 0 ||
            (r->kind == AORM_MANY_TO_MANY && aorm__rel_keymap(m, r, 1, &rem) < 0)) {
            snprintf(msg, cap, "load plan: the keys of %s.%s do not resolve (check the models with aorm_model_validate)",
                     m->name, r->name);
            return AORM_EMISUSE;
        }
        /* a selectin load sends the keys it reads as arrays: the owners'
         * foreign keys (many-to-one) or their primary key (collections) */
        for (int k = 0; k < km.n && l->strategy != AORM_LOAD_JOINED; k++) {
            const aorm_column *c = r->kind == AORM_MANY_TO_ONE ? km.from[k] : km.to[k];
            if (!aorm__field_array_type(c)) {
                snprintf(msg, cap,
                         "load plan: %s.%s: key column %s is not int2/int4/int8/text/uuid, which selectin loads "
                         "need (use AORM_JOINED for this relationship)",
                         m->name, r->name, c->name);
                return AORM_EMISUSE;
            }
        }
        int rc = validate_loads(r->target, l->children, l->nchildren, depth + 1, msg, cap);
        if (rc < 0) return rc;
    }
    return 0;
}

int aorm_load_plan_validate(const aorm_model *root, const aorm_load_plan *plan, char *msg, size_t cap) {
    char dummy[8];
    if (!msg || cap == 0) {
        msg = dummy;
        cap = sizeof(dummy);
    }
    msg[0] = '\0';
    if (!root || !plan || (plan->n > 0 && !plan->loads)) {
        snprintf(msg, cap, "load plan: NULL model or plan");
        return AORM_EMISUSE;
    }
    return validate_loads(root, plan->loads, plan->n, 0, msg, cap);
}

/* ---- default plans from the relationships' own loaders ----------------------------- */

/* Loads of m's relationships declared with a default loader (lazy =
 * SELECTIN or JOINED), following their targets' defaults up to `depth`
 * levels and never walking straight back along the inverse relationship
 * (author.books then book.author would loop). Returns the count written
 * to out (region memory), or a negative code. */
static int default_loads(aorm_session *s, const aorm_model *m, const aorm_relationship *from, int depth,
                         aorm_load **out) {
    *out = NULL;
    if (depth == 0) return 0;
    int n = 0;
    for (int i = 0; i < m->nrelationships; i++) {
        const aorm_relationship *r = &m->relationships[i];
        if (r->lazy == AORM_LOAD_RAISE) continue;
        if (from && from->back_populates && strcmp(from->back_populates, r->name) == 0) continue;
        n++;
    }
    if (n == 0) return 0;
    aorm_load *loads = aorm__region_calloc(&s->region, (size_t)n * sizeof(aorm_load));
    if (!loads) return AORM_ENOMEM;
    int k = 0;
    for (int i = 0; i < m->nrelationships; i++) {
        const aorm_relationship *r = &m->relationships[i];
        if (r->lazy == AORM_LOAD_RAISE) continue;
        if (from && from->back_populates && strcmp(from->back_populates, r->name) == 0) continue;
        aorm_load *ld = &loads[k++];
        ld->model = m;
        ld->offset = r->offset;
        ld->strategy = depth == 3 ? r->lazy : AORM_LOAD_SELECTIN; /* joined only at the first level */
        aorm_load *children;
        int nc = default_loads(s, r->target, r, depth - 1, &children);
        if (nc < 0) return nc;
        ld->children = children;
        ld->nchildren = nc;
    }
    *out = loads;
    return n;
}

/* The plan a query of m gets when it names none: the relationships'
 * default loaders, or NULL when every relationship raises. */
const aorm_load_plan *aorm__loaders_default_plan(aorm_session *s, const aorm_model *m) {
    aorm_load *loads;
    int n = default_loads(s, m, NULL, 3, &loads);
    if (n <= 0) return NULL;
    aorm_load_plan *p = aorm__region_alloc(&s->region, sizeof(*p));
    if (!p) return NULL;
    p->loads = loads;
    p->n = n;
    return p;
}

/* ---- a load run -------------------------------------------------------------------------- */

typedef struct level_item {
    const aorm_load *ld;
    const aorm_relationship *rel;
    int ri;               /* relationship index in its model */
    ptr_vec owners;       /* distinct owner objects */
    ptr_vec found;        /* distinct target objects (owners of the children loads) */
    ptr_set found_set;
    aorm_stmt *q;         /* the statement, kept for result positions */
    bool joined_done;     /* resolved from the root query's own rows */
    void *cache;          /* second-level cache ticket of a cached collection (cache_hooks.h) */
    bool cache_asked;     /* the cache was asked: owners are now the ones it lacked */
} level_item;

typedef aorm__load_then load_then;

typedef struct load_run {
    aorm__sop *op;
    void **roots;         /* owned */
    size_t nroots;
    load_then then;
    level_item *items;
    int nitems;
    int out;
    aorm_error *err;
} load_run;

static void level_free(load_run *r) {
    for (int i = 0; i < r->nitems; i++) {
        aorm__cache_coll_free(r->items[i].cache);
        free(r->items[i].owners.v);
        free(r->items[i].found.v);
        set_free(&r->items[i].found_set);
        aorm_stmt_free(r->items[i].q);
    }
    free(r->items);
    r->items = NULL;
    r->nitems = 0;
}

static void run_free(load_run *r) {
    level_free(r);
    free(r->roots);
    aorm_error_free(r->err);
    free(r);
}

static void run_free_cb(void *p) { run_free(p); }

static void record(load_run *r, int code, const char *sqlstate, const char *msg) {
    if (r->err) return;
    aorm_error e = {.code = code, .message = msg, .detail = "", .hint = "", .constraint = "", .table = "",
                    .column = ""};
    snprintf(e.sqlstate, sizeof(e.sqlstate), "%s", sqlstate ? sqlstate : "");
    r->err = aorm_error_copy(&e);
}

static int add_found(level_item *it, void *obj) {
    int rc = set_add(&it->found_set, obj);
    if (rc < 0) return rc;
    return rc == 1 ? vec_push(&it->found, obj) : 0;
}

static void finish(load_run *r) {
    aorm__sop *op = r->op;
    op->ext = NULL;
    op->ext_free = NULL;
    void **roots = r->roots;
    size_t n = r->nroots;
    r->roots = NULL;
    load_then then = r->then;
    aorm_error *err = r->err;
    r->err = NULL;
    run_free(r);
    then(op, roots, n, err);
    free(roots);
    aorm_error_free(err);
}

/* The key value of column c of obj as an int64 (int columns). */
static int64_t int_of(const aorm_column *c, const void *obj) {
    const void *f = aorm__cfield(c, obj);
    if (c->flags & AORM_NULLABLE) {
        if (c->type == AORM_INT4) return ((const aorm_opt_int32 *)f)->value;
        if (c->type == AORM_INT2) return ((const aorm_opt_int16 *)f)->value;
        return ((const aorm_opt_int64 *)f)->value;
    }
    return c->type == AORM_INT4 ? *(const int32_t *)f : c->type == AORM_INT2 ? *(const int16_t *)f : *(const int64_t *)f;
}

static bool int_type(aorm_type t) { return t == AORM_INT8 || t == AORM_INT4 || t == AORM_INT2; }

/* Does obj hold NULL in any of the key's `from` columns? (A foreign key
 * with a NULL column points at nothing.) */
static bool key_has_null(const aorm__keymap *km, const void *obj) {
    for (int i = 0; i < km->n; i++)
        if (aorm__field_is_null(km->from[i], obj)) return true;
    return false;
}

/* Builds in buf a struct of model m (the key's `to` side) whose primary
 * key holds the values of the key's `from` columns of obj: the object
 * those columns point at, ready for an identity-map lookup. */
static void *key_from(const aorm_model *m, const aorm__keymap *km, const void *obj, void *buf) {
    memset(buf, 0, m->size);
    for (int i = 0; i < km->n; i++) aorm__field_copy_value(km->to[i], buf, km->from[i], obj);
    return buf;
}

/* Objects with distinct values in columns cols[0..n) (open addressing on
 * a hash of those values): the owners whose many-to-one keys are sent. */
typedef struct key_set {
    struct key_slot {
        uint64_t hash;
        void *obj;
    } *slots;
    size_t cap, n;
} key_set;

static bool same_key(const aorm_column *const *cols, int n, const void *a, const void *b) {
    for (int i = 0; i < n; i++)
        if (!aorm__field_equal(cols[i], a, b)) return false;
    return true;
}

static int key_set_add(key_set *ks, const aorm_column *const *cols, int n, uint64_t hash, void *obj) {
    if ((ks->n + 1) * 2 > ks->cap) {
        size_t c = ks->cap ? ks->cap * 2 : 128;
        struct key_slot *ns = calloc(c, sizeof(*ns));
        if (!ns) return -1;
        for (size_t i = 0; i < ks->cap; i++) {
            if (!ks->slots[i].obj) continue;
            size_t h = ks->slots[i].hash & (c - 1);
            while (ns[h].obj) h = (h + 1) & (c - 1);
            ns[h] = ks->slots[i];
        }
        free(ks->slots);
        ks->slots = ns;
        ks->cap = c;
    }
    size_t h = hash & (ks->cap - 1);
    for (; ks->slots[h].obj; h = (h + 1) & (ks->cap - 1))
        if (ks->slots[h].hash == hash && same_key(cols, n, ks->slots[h].obj, obj)) return 0;
    ks->slots[h] = (struct key_slot){hash, obj};
    ks->n++;
    return 1;
}

static int order_by_cols(aorm_stmt *q, const aorm_model *m, const aorm_column *const *cols, int n) {
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        aorm_expr c = {.kind = AORM_X_COLUMN, .model = m, .offset = cols[i]->offset};
        rc = aorm_order_by(q, &c, 0);
    }
    return rc;
}

static void send_level(load_run *r);

/* Collections: empty every owner's list, mark it loaded. */
static void reset_collections(aorm_session *s, level_item *it) {
    for (size_t i = 0; i < it->owners.n; i++) {
        aorm_list *l = (aorm_list *)((char *)it->owners.v[i] + it->rel->offset);
        l->items = NULL;
        l->len = l->cap = 0;
        mark_loaded(aorm__obj_hdr(it->owners.v[i]), it->ri); /* owners are the session's */
    }
}

/* Sets owner's collection to the group and snapshots it (for the flush's
 * many-to-many and orphan bookkeeping). */
static int set_collection(aorm_session *s, level_item *it, void *owner, void **group, size_t n) {
    aorm_list *l = (aorm_list *)((char *)owner + it->rel->offset);
    void **items = n ? aorm__region_alloc(&s->region, n * sizeof(void *)) : NULL;
    if (n && !items) return AORM_ENOMEM;
    if (n) memcpy(items, group, n * sizeof(void *));
    l->items = items;
    l->len = l->cap = n;
    aorm__obj *h = aorm__obj_hdr(owner); /* owners are the session's */
    if (!h->rel_snap) {
        h->rel_snap = aorm__region_calloc(&s->region, (size_t)h->model->nrelationships * sizeof(aorm_list));
        if (!h->rel_snap) return AORM_ENOMEM;
    }
    void **snap = n ? aorm__region_alloc(&s->region, n * sizeof(void *)) : NULL;
    if (n && !snap) return AORM_ENOMEM;
    if (n) memcpy(snap, group, n * sizeof(void *));
    h->rel_snap[it->ri] = (aorm_list){snap, n, n};
    return 0;
}

/* Many-to-one: point each owner at its target (now in the identity map). */
static int assign_targets(aorm_session *s, level_item *it) {
    const aorm_relationship *rel = it->rel;
    aorm__keymap km;
    void *buf = aorm__region_alloc(&s->region, rel->target->size);
    if (!buf) return AORM_ENOMEM;
    if (aorm__rel_keymap(it->ld->model, rel, 0, &km) < 0) return AORM_EMISUSE;
    for (size_t i = 0; i < it->owners.n; i++) {
        void *owner = it->owners.v[i];
        void *target = NULL;
        if (!key_has_null(&km, owner)) {
            void *key = key_from(rel->target, &km, owner, buf);
            aorm__obj *th = aorm__idmap_find(&s->idmap, rel->target, key, aorm__key_hash(rel->target, key));
            if (th && th->state != AORM_DETACHED) target = aorm__obj_data(th);
        }
        *(void **)((char *)owner + rel->offset) = target;
        mark_loaded(aorm__obj_hdr(owner), it->ri);
        if (target && add_found(it, target) < 0) return AORM_ENOMEM;
    }
    return 0;
}

typedef struct item_ref {
    load_run *run;
    int index;
} item_ref;

static void on_level_rows(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);

/* Builds and sends the statement of one level item; resolves it at once
 * when no statement is needed. Returns 0 or a negative code. */
static int send_item(load_run *r, int idx) {
    aorm__sop *op = r->op;
    aorm_session *s = op->s;
    level_item *it = &r->items[idx];
    const aorm_relationship *rel = it->rel;
    const aorm_model *owner_m = it->ld->model;
    const aorm_model *tm = rel->target;
    aorm__keymap km, rem;
    int rc = aorm__rel_keymap(owner_m, rel, 0, &km);
    if (rc == 0 && rel->kind == AORM_MANY_TO_MANY) rc = aorm__rel_keymap(owner_m, rel, 1, &rem);
    if (rc < 0) return rc;
    ptr_vec keyed = {0}; /* owners whose keys go into the statement */

    if (rel->kind == AORM_MANY_TO_ONE) {
        void *buf = aorm__region_alloc(&s->region, tm->size);
        key_set seen = {0};
        if (!buf) return AORM_ENOMEM;
        for (size_t i = 0; i < it->owners.n && rc == 0; i++) {
            void *owner = it->owners.v[i];
            if (key_has_null(&km, owner)) continue;
            void *key = key_from(tm, &km, owner, buf);
            uint64_t hash = aorm__key_hash(tm, key);
            aorm__obj *th = aorm__idmap_find(&s->idmap, tm, key, hash);
            if (th && !(th->flags & OBJ_EXPIRED)) continue; /* already here: not queried again */
            /* distinct keys only: the owners of one target share it */
            int added = key_set_add(&seen, km.from, km.n, hash, owner);
            if (added < 0 || (added == 1 && vec_push(&keyed, owner) < 0)) rc = AORM_ENOMEM;
        }
        free(seen.slots);
        if (rc == 0 && keyed.n == 0) return assign_targets(s, it); /* everything was in the identity map */
    } else {
        reset_collections(s, it);
        if (it->owners.n == 0) return 0;
    }
    if (rc < 0) {
        free(keyed.v);
        return rc;
    }

    aorm_stmt *q = aorm_select(tm);
    if (!q) {
        free(keyed.v);
        return AORM_ENOMEM;
    }
    const aorm_column *tpk[AORM_KEY_MAX];
    int ntpk = aorm_model_pk_count(tm);
    for (int i = 0; i < ntpk && i < AORM_KEY_MAX; i++) tpk[i] = aorm_model_pk(tm, i);
    if (rel->kind == AORM_MANY_TO_ONE) {
        /* WHERE target.pk = ANY(owners' FKs) */
        rc = aorm__where_key_in(q, tm, km.to, km.from, km.n, keyed.v, keyed.n);
    } else if (rel->kind == AORM_ONE_TO_MANY) {
        /* WHERE target.fk = ANY(owners' keys) ORDER BY target.fk: grouped by owner */
        rc = aorm__where_key_in(q, tm, km.from, km.to, km.n, it->owners.v, it->owners.n);
        if (rc == 0) rc = order_by_cols(q, tm, km.from, km.n);
    } else { /* many-to-many: target JOIN secondary ON secondary.remote = target.pk */
        const aorm_model *sm = rel->secondary;
        for (int i = 0; i < km.n && rc == 0; i++) { /* the owner's key, to group rows by */
            aorm_expr loc = {.kind = AORM_X_COLUMN, .model = sm, .offset = km.from[i]->offset};
            rc = aorm_select_add(q, &loc);
        }
        if (rc == 0) rc = aorm__join_key(q, sm, sm, tm, &rem); /* ON secondary.remote = target.pk */
        if (rc == 0) rc = aorm__where_key_in(q, sm, km.from, km.to, km.n, it->owners.v, it->owners.n);
        if (rc == 0) rc = order_by_cols(q, sm, km.from, km.n);
    }
    if (rc == 0 && rel->kind != AORM_MANY_TO_ONE) {
        if (rel->has_order_by) {
            aorm_expr ord = {.kind = AORM_X_COLUMN, .model = tm, .offset = rel->order_by};
            rc = aorm_order_by(q, &ord, rel->order_desc ? AORM_DESC : 0);
        }
        /* then the target's key: deterministic among equal order-by values */
        if (rc == 0) rc = order_by_cols(q, tm, tpk, ntpk);
    }
    free(keyed.v);
    if (rc < 0) {
        aorm_stmt_free(q);
        return rc;
    }
    if ((rc = aorm_stmt_compile(q)) < 0) {
        aorm_stmt_free(q);
        return rc;
    }
    item_ref *ref = malloc(sizeof(*ref));
    if (!ref) {
        aorm_stmt_free(q);
        return AORM_ENOMEM;
    }
    ref->run = r;
    ref->index = idx;
    it->q = q;
    /* The statement is kept (positions); the engine copied what it needs. */
    aorm_exec_options xo = aorm__session_xo(s, op, AORM_EXEC_READONLY); /* in the session's cancel group */
    rc = s->conn ? aorm_stmt_execute_on(s->conn, q, &xo, on_level_rows, ref)
                 : aorm_stmt_execute(s->e, q, &xo, on_level_rows, ref);
    if (rc < 0) {
        free(ref);
        return rc;
    }
    s->statements++;
    op->pending++;
    r->out++;
    return 0;
}

static int absorb_rows(load_run *r, level_item *it, aorm_result *res) {
    aorm_session *s = r->op->s;
    const aorm_relationship *rel = it->rel;
    const aorm_model *tm = rel->target;
    int nrows = aorm_result_nrows(res);
    int pos_stack[32];
    int *pos = tm->ncolumns <= 32 ? pos_stack : malloc((size_t)tm->ncolumns * sizeof(int));
    if (!pos) return AORM_ENOMEM;
    aorm__model_positions(it->q, tm, pos);
    aorm__rowplan rp;
    int rc = aorm__rowplan_init(&rp, res, tm, pos);
    if (pos != pos_stack) free(pos);
    pos = NULL;
    if (rc < 0) return rc;
    aorm__idmap_reserve(&s->idmap, (size_t)nrows);
    /* the rows' objects first, in one pass (the fast path for integer
     * keys), then the grouping */
    void **objs = malloc(((size_t)nrows + 1) * sizeof(void *));
    if (!objs) {
        rc = AORM_ENOMEM;
        goto out;
    }
    if ((rc = aorm__session_materialize_rows(s, &rp, r->op->qo.populate_existing, objs)) < 0) goto out;
    if (rel->kind == AORM_MANY_TO_ONE) {
        rc = assign_targets(s, it);
        goto out;
    }
    /* collections: rows come ordered by owner key; group them */
    const aorm_model *om = it->ld->model;
    aorm__keymap km; /* child FK (one-to-many) or association local columns -> owner's key */
    if ((rc = aorm__rel_keymap(om, rel, 0, &km)) < 0) goto out;
    int owner_col[AORM_KEY_MAX]; /* many-to-many: where the association's local columns are */
    const aorm_model *key_m = rel->kind == AORM_ONE_TO_MANY ? tm : rel->secondary;
    for (int i = 0; i < km.n && rel->kind == AORM_MANY_TO_MANY; i++) {
        aorm_expr loc = {.kind = AORM_X_COLUMN, .model = key_m, .offset = km.from[i]->offset};
        owner_col[i] = aorm_stmt_column(it->q, &loc);
    }
    /* one integer column: rows of one owner come together, so a key
     * equal to the previous row's is the same owner, without a lookup */
    const aorm_column *key_col = km.from[0];
    bool int_key = km.n == 1 && int_type(key_col->type);
    const aorm_relationship *back =
        rel->kind == AORM_ONE_TO_MANY && rel->back_populates ? aorm_model_relationship(tm, rel->back_populates) : NULL;
    int back_i = back ? rel_index(tm, back) : -1;
    void *kbuf = aorm__region_alloc(&s->region, key_m->size);
    void *obuf = aorm__region_alloc(&s->region, om->size);
    ptr_vec group = {0};
    void *cur_owner = NULL;
    int64_t prev_key = 0;
    bool have_prev = false;
    struct pg_result *pg = aorm_result_pgresult(res);
    if (!kbuf || !obuf) {
        rc = AORM_ENOMEM;
        goto out;
    }
    aorm_allocator alloc = {aorm__region_alloc_fn, &s->region};
    for (int row = 0; row < nrows; row++) {
        void *child = objs[row];
        if (!child) continue; /* a NULL key */
        /* the owner's key: the child's FK columns (one-to-many) or the
         * association's local columns read from the row (many-to-many) */
        const void *key_src = child;
        int64_t ik = 0;
        bool fast = false;
        if (rel->kind == AORM_ONE_TO_MANY) {
            fast = int_key && !aorm__field_is_null(key_col, child);
            if (fast) ik = int_of(key_col, child);
        } else if (int_key && !(key_col->flags & AORM_NULLABLE) && PQfformat(pg, owner_col[0]) == 1 &&
                   !PQgetisnull(pg, row, owner_col[0]) &&
                   PQgetlength(pg, row, owner_col[0]) ==
                       (key_col->type == AORM_INT8 ? 8 : key_col->type == AORM_INT4 ? 4 : 2)) {
            const char *v = PQgetvalue(pg, row, owner_col[0]);
            ik = key_col->type == AORM_INT8   ? (int64_t)aorm__get_be64(v)
                 : key_col->type == AORM_INT4 ? (int32_t)aorm__get_be32(v)
                                              : (int16_t)(((unsigned char)v[0] << 8) | (unsigned char)v[1]);
            fast = true;
            if (!have_prev || ik != prev_key) { /* a new owner: its key struct for the lookup */
                memset(kbuf, 0, key_m->size);
                if (key_col->type == AORM_INT8) *(int64_t *)aorm__field(key_col, kbuf) = ik;
                else if (key_col->type == AORM_INT4) *(int32_t *)aorm__field(key_col, kbuf) = (int32_t)ik;
                else *(int16_t *)aorm__field(key_col, kbuf) = (int16_t)ik;
            }
            key_src = kbuf;
        } else {
            memset(kbuf, 0, key_m->size);
            for (int i = 0; i < km.n && rc >= 0; i++) {
                const char *v;
                int len;
                if ((rc = aorm_result_raw(res, row, owner_col[i], &v, &len)) >= 0)
                    rc = aorm__field_load(km.from[i], kbuf, aorm_result_col_type(res, owner_col[i]), v, len, &alloc);
            }
            if (rc < 0) break;
            key_src = kbuf;
        }
        void *owner;
        if (fast && have_prev && ik == prev_key) {
            owner = cur_owner;
        } else if (key_has_null(&km, key_src)) {
            owner = NULL;
            have_prev = false;
        } else {
            void *okey = key_from(om, &km, key_src, obuf);
            aorm__obj *oh = aorm__idmap_find(&s->idmap, om, okey, aorm__key_hash(om, okey));
            owner = oh ? aorm__obj_data(oh) : NULL;
            prev_key = ik;
            have_prev = fast;
        }
        if (owner != cur_owner) {
            if (cur_owner && (rc = set_collection(s, it, cur_owner, group.v, group.n)) < 0) break;
            group.n = 0;
            cur_owner = owner;
        }
        if (!owner) continue;
        if (vec_push(&group, child) < 0 || add_found(it, child) < 0) {
            rc = AORM_ENOMEM;
            break;
        }
        if (back && back->kind == AORM_MANY_TO_ONE) {
            *(void **)((char *)child + back->offset) = owner;
            mark_loaded(aorm__obj_hdr(child), back_i);
        }
        rc = 0;
    }
    if (rc >= 0 && cur_owner) rc = set_collection(s, it, cur_owner, group.v, group.n);
    free(group.v);
out:
    free(objs);
    aorm__rowplan_free(&rp);
    return rc < 0 ? rc : 0;
}

/* Next level: children loads of this level's items, applied to the
 * objects each item produced. */
static void next_level(load_run *r) {
    int n = 0;
    for (int i = 0; i < r->nitems; i++) n += r->items[i].ld->nchildren;
    if (n == 0 || r->err) {
        finish(r);
        return;
    }
    level_item *next = calloc((size_t)n, sizeof(*next));
    if (!next) {
        record(r, AORM_ENOMEM, "", "out of memory");
        finish(r);
        return;
    }
    int k = 0;
    for (int i = 0; i < r->nitems; i++) {
        level_item *it = &r->items[i];
        for (int c = 0; c < it->ld->nchildren; c++) {
            level_item *ni = &next[k++];
            ni->ld = &it->ld->children[c];
            ni->rel = aorm_model_relationship_at(ni->ld->model, ni->ld->offset);
            ni->ri = rel_index(ni->ld->model, ni->rel);
            for (size_t o = 0; o < it->found.n; o++)
                if (vec_push(&ni->owners, it->found.v[o]) < 0) record(r, AORM_ENOMEM, "", "out of memory");
        }
    }
    level_free(r);
    r->items = next;
    r->nitems = n;
    send_level(r);
}

static void on_level_rows(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    item_ref *ref = user;
    load_run *r = ref->run;
    int idx = ref->index;
    free(ref);
    aorm__sop *op = r->op;
    aorm_session *s = op->s;
    aorm__session_enter(s);
    if (!aorm__op_arrived(op)) { /* closing: the run goes with the operation */
        aorm__session_leave(s);
        return;
    }
    if (err) {
        if (s->conn) aorm__session_fail_tx(s);
        if (!r->err) r->err = aorm_error_copy(err);
    } else if (!r->err) {
        level_item *it = &r->items[idx];
        int rc = absorb_rows(r, it, res);
        if (rc < 0) record(r, rc, "", "a relationship row could not be loaded");
        else aorm__cache_coll_loaded(it->cache, it->owners.v, it->owners.n); /* written back */
    }
    if (--r->out == 0) next_level(r);
    aorm__session_leave(s);
}

/* The second-level cache answered the lists of a cached collection: the
 * owners it had get their children (as a statement would have set them),
 * the others go to PostgreSQL in the item's statement. */
static void on_cached_lists(void *ctx, int idx, const aorm__coll_hit *hits) {
    load_run *r = ctx;
    aorm_session *s = r->op->s;
    level_item *it = &r->items[idx];
    const aorm_relationship *rel = it->rel;
    const aorm_relationship *back =
        rel->kind == AORM_ONE_TO_MANY && rel->back_populates ? aorm_model_relationship(rel->target, rel->back_populates)
                                                             : NULL;
    int back_i = back ? rel_index(rel->target, back) : -1;
    size_t keep = 0;
    for (size_t i = 0; i < it->owners.n && !r->err; i++) {
        void *owner = it->owners.v[i];
        if (!hits || !hits[i].hit) {
            it->owners.v[keep++] = owner;
            continue;
        }
        int rc = set_collection(s, it, owner, hits[i].items, hits[i].n);
        mark_loaded(aorm__obj_hdr(owner), it->ri);
        for (size_t k = 0; k < hits[i].n && rc == 0; k++) {
            void *child = hits[i].items[k];
            if (add_found(it, child) < 0) rc = AORM_ENOMEM;
            if (back && back->kind == AORM_MANY_TO_ONE) {
                *(void **)((char *)child + back->offset) = owner;
                mark_loaded(aorm__obj_hdr(child), back_i);
            }
        }
        if (rc < 0) record(r, rc, "", "a cached relationship could not be loaded");
    }
    it->owners.n = keep;
    it->cache_asked = true;
    if (!r->err && keep > 0) {
        int rc = send_item(r, idx);
        if (rc < 0) record(r, rc, "", "a relationship load could not be sent");
    }
    if (--r->out == 0) next_level(r);
}

static void send_level(load_run *r) {
    for (int i = 0; i < r->nitems && !r->err; i++) {
        level_item *it = &r->items[i];
        if (it->joined_done) continue;
        if (!it->cache_asked && it->rel->kind != AORM_MANY_TO_ONE &&
            (it->cache = aorm__cache_coll_start(r->op, it->ld->model, it->rel, it->owners.v, it->owners.n,
                                                on_cached_lists, r, i)) != NULL) {
            r->out++; /* on_cached_lists sends what Redis lacked */
            continue;
        }
        int rc = send_item(r, i);
        if (rc < 0) record(r, rc, "", "a relationship load could not be sent");
    }
    if (r->out == 0) next_level(r);
}

/* Starts loading plan for owners (root objects of the plan's model). */
static load_run *run_new(aorm__sop *op, void **roots, size_t n, const aorm_load_plan *plan, load_then then) {
    load_run *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->op = op;
    r->roots = roots;
    r->nroots = n;
    r->then = then;
    r->items = calloc((size_t)(plan->n ? plan->n : 1), sizeof(level_item));
    if (!r->items) {
        free(r);
        return NULL;
    }
    r->nitems = plan->n;
    ptr_set distinct = {0};
    for (int i = 0; i < plan->n; i++) {
        level_item *it = &r->items[i];
        it->ld = &plan->loads[i];
        it->rel = aorm_model_relationship_at(it->ld->model, it->ld->offset);
        it->ri = rel_index(it->ld->model, it->rel);
    }
    /* owners: the roots, without NULLs (missing keys) or repeats (joins) */
    ptr_vec owners = {0};
    for (size_t k = 0; k < n; k++) {
        if (!roots[k]) continue;
        int a = set_add(&distinct, roots[k]);
        if (a < 0 || (a == 1 && vec_push(&owners, roots[k]) < 0)) record(r, AORM_ENOMEM, "", "out of memory");
    }
    set_free(&distinct);
    for (int i = 0; i < plan->n; i++) {
        ptr_vec *o = &r->items[i].owners;
        o->v = owners.n ? malloc(owners.n * sizeof(void *)) : NULL;
        if (owners.n && !o->v) {
            record(r, AORM_ENOMEM, "", "out of memory");
            continue;
        }
        if (owners.n) memcpy(o->v, owners.v, owners.n * sizeof(void *));
        o->n = o->cap = owners.n;
    }
    free(owners.v);
    op->ext = r;
    op->ext_free = run_free_cb;
    return r;
}

/* ---- joined loads (first level, folded into the query) -------------------------------- */

/* The alias under which the joined load `ld` of plan joins its target, or
 * NULL when the target joins under its own table name: a target already
 * in the query (the root itself for a self-referential relationship such
 * as employee.manager, or the target of an earlier joined load) is joined
 * again under the relationship's name (with "_j" appended when a table of
 * the query has that name). buf holds the alias (cap bytes). */
static const char *joined_alias(const aorm_model *root, const aorm_load_plan *plan, const aorm_load *ld, char *buf,
                                size_t cap) {
    const aorm_model *in[64];
    int n = 0;
    in[n++] = root;
    for (int i = 0; i < plan->n; i++) {
        const aorm_load *l = &plan->loads[i];
        if (l->strategy != AORM_LOAD_JOINED) continue;
        const aorm_relationship *rel = aorm_model_relationship_at(l->model, l->offset);
        bool seen = false;
        for (int k = 0; k < n; k++) seen |= in[k] == rel->target || (rel->secondary && in[k] == rel->secondary);
        if (l == ld) {
            if (!seen) return NULL;
            const char *name = rel->name && *rel->name ? rel->name : "joined";
            bool clash = false;
            for (int k = 0; k < n; k++) clash |= strcmp(in[k]->table, name) == 0;
            snprintf(buf, cap, "%s%s", name, clash ? "_j" : "");
            return buf;
        }
        if (!seen && n < 63) in[n++] = rel->target;
        if (rel->secondary && n < 64) in[n++] = rel->secondary;
    }
    return NULL;
}

int aorm__loaders_prepare_query(aorm__sop *op) {
    const aorm_load_plan *plan = op->qo.load;
    if (!plan || !op->stmt) return 0;
    const aorm_model *root = op->model ? op->model : aorm_stmt_model(op->stmt);
    int rc = aorm_load_plan_validate(root, plan, op->s->errmsg, sizeof(op->s->errmsg));
    if (rc < 0) return rc;
    for (int i = 0; i < plan->n; i++) {
        const aorm_load *ld = &plan->loads[i];
        if (ld->strategy != AORM_LOAD_JOINED) continue;
        const aorm_relationship *rel = aorm_model_relationship_at(ld->model, ld->offset);
        char buf[128];
        const char *alias = joined_alias(root, plan, ld, buf, sizeof(buf));
        if (alias) {
            if ((rc = aorm_select_add_alias(op->stmt, rel->target, alias)) < 0) return rc;
            if ((rc = aorm_join_rel_alias(op->stmt, rel, alias, true)) < 0) return rc;
            continue;
        }
        if ((rc = aorm_select_add_model(op->stmt, rel->target)) < 0) return rc;
        if ((rc = aorm_join_rel(op->stmt, rel, true)) < 0) return rc;
    }
    return aorm_stmt_compile(op->stmt);
}

typedef struct pair {
    void *owner;
    void *target;
    int row;
} pair;

/* Joined collections are ordered like selectin ones: by owner, then the
 * relationship's order-by field (else the target's key), then row. */
static int pair_cmp(const void *a, const void *b, void *arg) {
    const pair *x = a, *y = b;
    const aorm_relationship *rel = arg;
    if (x->owner != y->owner) return (uintptr_t)x->owner < (uintptr_t)y->owner ? -1 : 1;
    const aorm_model *tm = rel->target;
    const aorm_column *oc = rel->has_order_by ? aorm_model_column_at(tm, rel->order_by) : aorm_model_pk(tm, 0);
    if (oc && x->target != y->target) {
        int c = aorm__field_compare(oc, x->target, y->target);
        if (c != 0) return rel->has_order_by && rel->order_desc ? -c : c;
        for (int i = 0; i < tm->ncolumns; i++) { /* then the whole primary key */
            const aorm_column *pk = &tm->columns[i];
            if ((pk->flags & AORM_PK) && pk != oc && (c = aorm__field_compare(pk, x->target, y->target)) != 0)
                return c;
        }
    }
    return x->row - y->row;
}

/* Fills first-level joined relationships from the query's own rows. */
static int absorb_joined(load_run *r, const aorm_result *res, void **rows_owner, int nrows) {
    aorm_session *s = r->op->s;
    for (int i = 0; i < r->nitems; i++) {
        level_item *it = &r->items[i];
        if (it->ld->strategy != AORM_LOAD_JOINED) continue;
        it->joined_done = true;
        const aorm_model *tm = it->rel->target;
        int pos_stack[32];
        int *pos = tm->ncolumns <= 32 ? pos_stack : malloc((size_t)tm->ncolumns * sizeof(int));
        if (!pos) return AORM_ENOMEM;
        char abuf[128];
        const aorm_model *root = r->op->model ? r->op->model : aorm_stmt_model(r->op->stmt);
        const char *alias = joined_alias(root, r->op->qo.load, it->ld, abuf, sizeof(abuf));
        if (alias) {
            for (int c = 0; c < tm->ncolumns; c++) {
                aorm_expr col = {.kind = AORM_X_COLUMN, .model = tm, .offset = tm->columns[c].offset, .alias = alias};
                pos[c] = aorm_stmt_column(r->op->stmt, &col);
            }
        } else {
            aorm__model_positions(r->op->stmt, tm, pos);
        }
        aorm__rowplan rp;
        int np = 0;
        int rc = aorm__rowplan_init(&rp, res, tm, pos);
        if (pos != pos_stack) free(pos);
        if (rc < 0) return rc;
        pair *pairs = malloc(((size_t)nrows + 1) * sizeof(pair));
        if (!pairs) rc = AORM_ENOMEM;
        for (int row = 0; row < nrows && rc >= 0; row++) {
            void *t = NULL;
            rc = aorm__session_materialize_row(s, &rp, row, r->op->qo.populate_existing, &t);
            if (rc > 0 && rows_owner[row]) pairs[np++] = (pair){rows_owner[row], t, row};
        }
        aorm__rowplan_free(&rp);
        if (rc < 0) {
            free(pairs);
            return rc;
        }
        if (it->rel->kind == AORM_MANY_TO_ONE) {
            for (size_t o = 0; o < it->owners.n; o++) {
                *(void **)((char *)it->owners.v[o] + it->rel->offset) = NULL;
                mark_loaded(aorm__obj_hdr(it->owners.v[o]), it->ri);
            }
            for (int p = 0; p < np; p++) {
                *(void **)((char *)pairs[p].owner + it->rel->offset) = pairs[p].target;
                if (add_found(it, pairs[p].target) < 0) rc = AORM_ENOMEM;
            }
        } else {
            reset_collections(s, it);
            qsort_r(pairs, (size_t)np, sizeof(pair), pair_cmp, (void *)it->rel);
            ptr_vec group = {0};
            ptr_set seen = {0};
            for (int p = 0; p < np && rc >= 0; p++) {
                /* a collection may repeat a target when another joined
                 * collection multiplies the rows: keep the first */
                if (set_add(&seen, pairs[p].target) == 1 && vec_push(&group, pairs[p].target) < 0) rc = AORM_ENOMEM;
                if (add_found(it, pairs[p].target) < 0) rc = AORM_ENOMEM;
                if (p + 1 == np || pairs[p + 1].owner != pairs[p].owner) {
                    if (rc >= 0) rc = set_collection(s, it, pairs[p].owner, group.v, group.n);
                    group.n = 0;
                    set_free(&seen);
                }
            }
            free(group.v);
            set_free(&seen);
        }
        free(pairs);
        if (rc < 0) return rc;
    }
    return 0;
}

/* After the root query: roots (one per row, owned by the run from here)
 * are loaded along the plan, then then(op, roots, n, err) runs. */
void aorm__loaders_after_query(aorm__sop *op, const aorm_result *res, void **roots, size_t n, load_then then) {
    load_run *r = run_new(op, roots, n, op->qo.load, then);
    if (!r) {
        aorm_error e = {.code = AORM_ENOMEM, .message = "out of memory", .detail = "", .hint = "",
                        .constraint = "", .table = "", .column = ""};
        then(op, roots, n, &e);
        free(roots);
        return;
    }
    if (res && !r->err) {
        int rc = absorb_joined(r, res, roots, (int)n);
        if (rc < 0) record(r, rc, "", "a joined relationship could not be loaded");
    }
    send_level(r);
}

/* ---- explicit loads ------------------------------------------------------------------ */

void aorm__loaders_start_explicit(aorm__sop *op, void **objs, size_t n, load_then then) {
    char msg[200];
    const aorm_load_plan *plan = op->qo.load;
    const aorm_model *root = op->model;
    int rc = aorm_load_plan_validate(root, plan, msg, sizeof(msg));
    if (rc < 0) {
        aorm_error e = {.code = rc, .message = msg, .detail = "", .hint = "", .constraint = "", .table = "",
                        .column = ""};
        then(op, objs, n, &e);
        free(objs);
        return;
    }
    aorm__loaders_after_query(op, NULL, objs, n, then);
}

/* ---- reading relationships, and the advisor ------------------------------------------- */

typedef struct advice {
    const char *file;
    int line;
    const aorm_model *model;
    const aorm_relationship *rel;
    long count;
} advice;

static pthread_mutex_t advisor_mu = PTHREAD_MUTEX_INITIALIZER;
static advice *advices;
static int nadvice, advice_cap;
static long advisor_total;
#ifdef AORM_DEBUG
static bool advisor_on = true;
#else
static bool advisor_on = false;
#endif

void aorm_advisor_enable(bool on) {
    pthread_mutex_lock(&advisor_mu);
    advisor_on = on;
    pthread_mutex_unlock(&advisor_mu);
}

void aorm_advisor_reset(void) {
    pthread_mutex_lock(&advisor_mu);
    free(advices);
    advices = NULL;
    nadvice = advice_cap = 0;
    advisor_total = 0;
    pthread_mutex_unlock(&advisor_mu);
}

long aorm_advisor_count(void) {
    pthread_mutex_lock(&advisor_mu);
    long n = advisor_total;
    pthread_mutex_unlock(&advisor_mu);
    return n;
}

static void advise(const char *file, int line, const aorm_model *m, const aorm_relationship *rel) {
    pthread_mutex_lock(&advisor_mu);
    if (!advisor_on) goto out;
    advisor_total++;
    for (int i = 0; i < nadvice; i++) {
        advice *a = &advices[i];
        if (a->line == line && a->rel == rel && a->model == m && strcmp(a->file, file) == 0) {
            a->count++;
            goto out;
        }
    }
    if (nadvice == advice_cap) {
        int cap = advice_cap ? advice_cap * 2 : 16;
        advice *n = realloc(advices, (size_t)cap * sizeof(*n));
        if (!n) goto out;
        advices = n;
        advice_cap = cap;
    }
    advices[nadvice++] = (advice){file, line, m, rel, 1};
out:
    pthread_mutex_unlock(&advisor_mu);
}

static int advice_cmp(const void *a, const void *b) {
    const advice *x = a, *y = b;
    return x->count < y->count ? 1 : x->count > y->count ? -1 : 0;
}

char *aorm_advisor_report(void) {
    pthread_mutex_lock(&advisor_mu);
    aorm__buf b = {0};
    qsort(advices, (size_t)nadvice, sizeof(*advices), advice_cmp);
    for (int i = 0; i < nadvice; i++) {
        const advice *a = &advices[i];
        char line[512];
        int n = snprintf(line, sizeof(line),
                         "%s:%d: %ld read%s of unloaded %s.%s -> add AORM_SELECTIN(%s, %s) to the query's load plan\n",
                         a->file, a->line, a->count, a->count == 1 ? "" : "s", a->model->name, a->rel->name,
                         a->model->name, a->rel->name);
        if (n > 0) aorm__buf_append(&b, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    }
    aorm__buf_putc(&b, '\0');
    pthread_mutex_unlock(&advisor_mu);
    return b.data;
}

int aorm_rel_loaded(const aorm_session *s, const void *obj, const aorm_relationship *rel) {
    aorm__obj *h = aorm__obj_of(s, obj);
    if (!h || !rel || rel < h->model->relationships || rel >= h->model->relationships + h->model->nrelationships)
        return AORM_EMISUSE;
    int i = rel_index(h->model, rel);
    return i < 32 && (h->loaded_rels & (1u << i)) ? 1 : 0;
}

int aorm_rel_get_at(aorm_session *s, const void *obj, const aorm_relationship *rel, void **out, const char *file,
                    int line) {
    if (!s || !out) return AORM_EMISUSE;
    aorm__obj *h = aorm__obj_of(s, obj);
    if (!h || !rel || rel < h->model->relationships || rel >= h->model->relationships + h->model->nrelationships) {
        snprintf(s->errmsg, sizeof(s->errmsg), "aorm_rel_get: not a session object, or not a relationship of its model");
        return AORM_EMISUSE;
    }
    int i = rel_index(h->model, rel);
    bool loaded = (i < 32 && (h->loaded_rels & (1u << i))) || h->state == AORM_PENDING || h->state == AORM_TRANSIENT;
    if (!loaded) {
        snprintf(s->errmsg, sizeof(s->errmsg),
                 "%s.%s is not loaded, and loading it lazily would block the loop: load it with "
                 "AORM_SELECTIN(%s, %s) (or AORM_JOINED) in the query's load plan, or with aorm_session_load()",
                 h->model->name, rel->name, h->model->name, rel->name);
        advise(file ? file : "(call site unknown: use AORM_GET_REL)", line, h->model, rel);
        return AORM_EUNLOADED;
    }
    void *field = (char *)aorm__obj_data(h) + rel->offset;
    *out = rel->kind == AORM_MANY_TO_ONE ? *(void **)field : field;
    return 0;
}

int aorm_rel_get(aorm_session *s, const void *obj, const aorm_relationship *rel, void **out) {
    return aorm_rel_get_at(s, obj, rel, out, NULL, 0);
}

const char *aorm_session_errmsg(const aorm_session *s) { return s ? s->errmsg : ""; }

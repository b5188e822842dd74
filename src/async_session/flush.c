/* flush.c -- the unit of work: turns the session's object changes into
 * SQL and sends them as one pipeline on the session's transaction.
 *
 * A flush runs in up to two round trips:
 *   1. keys: new objects whose primary key the server generates (SERIAL or
 *      IDENTITY, field still 0) get their keys first when anything depends
 *      on them (children, association rows) or when there are several
 *      rows of the model: one `SELECT nextval(...) FROM generate_series`
 *      per model, all in one pipeline. A single independent new row gets
 *      its key from INSERT ... RETURNING instead, and skips this step.
 *   2. writes, in one pipeline, in foreign-key order: INSERTs parents
 *      first (one statement per model and set of columns left to the
 *      server: VALUES for one row, unnest arrays for many, COPY for large
 *      batches that leave nothing to the server), association rows,
 *      UPDATEs of the changed columns of each modified object, then
 *      DELETEs children first.
 * An INSERT writes every field's value, zero and false included. It
 * leaves a column to the server only for a SERIAL/IDENTITY field still 0
 * and for a column the program left to its server default
 * (aorm_object_use_default) whose field is still empty; those values come
 * back with RETURNING and go into the objects (left_to_server,
 * read_back).
 * Foreign keys of children are filled from their parents' keys (and from
 * collections: a book in author->books gets author_id = author->id) before
 * the writes are built.
 *
 * Nothing in the session changes until every statement has answered: on
 * success objects move to their new states and get new snapshots; on
 * failure they stay as they were, the transaction is marked failed
 * (rollback required) and the caller gets the first error.
 *
 * Owns: the flush plan (arrays of object headers, malloc'd, freed at the
 * end). Must not: send anything before the keys it depends on are known. */
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>

#include "async_session/session_int.h"

/* Multi-row inserts of at least this many rows use COPY. */
#define COPY_THRESHOLD 1000

typedef void (*flush_then)(aorm__sop *op, const aorm_error *err);

typedef struct model_batch {
    const aorm_model *m;
    aorm__obj **news;
    size_t nnew, cap_new;
    aorm__obj **dels;
    size_t ndel, cap_del;
    int64_t *keys;        /* prefetched keys */
    size_t nkeys;
    int order;            /* topological position */
    bool need_keys;       /* generated keys must be fetched first */
    int copy_seq;         /* 1-based order of this batch's COPY among the flush's, 0: none */
} model_batch;

typedef struct link_rows {
    const aorm_relationship *rel; /* many-to-many */
    void **rows;                  /* association structs (region) to insert */
    size_t n, cap;
    void **gone;                  /* association structs to delete */
    size_t ngone, cap_gone;
    size_t filled;                /* rows whose keys fill_links has set */
} link_rows;

/* One INSERT statement: new objects of one model that leave the same
 * columns to the server (left_to_server). */
typedef struct insert_group {
    const aorm_model *m;
    aorm__obj **objs;
    size_t n, cap;
    bool *omit;   /* per column of m: left out of the INSERT */
    bool any;     /* some column is: RETURNING reads the server's values back */
} insert_group;

typedef struct flush_run {
    aorm__sop *op;
    flush_then then;
    model_batch *batches;
    int nbatches;
    aorm__obj **dirty;
    size_t ndirty, cap_dirty;
    link_rows *links;
    int nlinks;
    int out;             /* statements not yet answered */
    aorm_error *err;     /* first failure */
    /* COPYs are filled one after another, in the order they were sent:
     * copy_cur is the sequence number of the one being filled */
    int copies_sent;
    int copy_cur;
    size_t copy_pos;     /* next object of that batch */
    aorm_params scratch; /* one field at a time, for COPY rows */
    /* INSERT ... RETURNING statements in the order they were sent (their
     * answers come back in that order); ret_next is the next to answer */
    insert_group *rets;
    int nrets, cap_rets;
    int ret_next;
} flush_run;

/* ---- helpers ------------------------------------------------------------------- */

static int push_ptr(void ***arr, size_t *n, size_t *cap, void *p) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        void **a = realloc(*arr, c * sizeof(void *));
        if (!a) return -1;
        *arr = a;
        *cap = c;
    }
    (*arr)[(*n)++] = p;
    return 0;
}

static model_batch *batch_for(flush_run *f, const aorm_model *m) {
    for (int i = 0; i < f->nbatches; i++)
        if (f->batches[i].m == m) return &f->batches[i];
    model_batch *b = realloc(f->batches, (size_t)(f->nbatches + 1) * sizeof(*b));
    if (!b) return NULL;
    f->batches = b;
    b = &f->batches[f->nbatches++];
    memset(b, 0, sizeof(*b));
    b->m = m;
    return b;
}

static link_rows *links_for(flush_run *f, const aorm_relationship *r) {
    for (int i = 0; i < f->nlinks; i++)
        if (f->links[i].rel == r) return &f->links[i];
    link_rows *l = realloc(f->links, (size_t)(f->nlinks + 1) * sizeof(*l));
    if (!l) return NULL;
    f->links = l;
    l = &f->links[f->nlinks++];
    memset(l, 0, sizeof(*l));
    l->rel = r;
    return l;
}

static void run_free(flush_run *f) {
    for (int i = 0; i < f->nbatches; i++) {
        free(f->batches[i].news);
        free(f->batches[i].dels);
        free(f->batches[i].keys);
    }
    for (int i = 0; i < f->nlinks; i++) {
        free(f->links[i].rows);
        free(f->links[i].gone);
    }
    for (int i = 0; i < f->nrets; i++) {
        free(f->rets[i].objs);
        free(f->rets[i].omit);
    }
    free(f->rets);
    free(f->batches);
    free(f->links);
    free(f->dirty);
    aorm_error_free(f->err);
    aorm_params_free(&f->scratch);
    free(f);
}

/* A primary-key column whose value the server generates: SERIAL or
 * IDENTITY, of an integer type. */
static bool is_generated(const aorm_column *c) {
    return (c->flags & AORM_PK) && (c->flags & (AORM_SERIAL | AORM_IDENTITY)) &&
           (c->type == AORM_INT8 || c->type == AORM_INT4 || c->type == AORM_INT2);
}

/* m's generated key column (the only key column, or one of a composite
 * key such as (tenant, id bigserial)), or NULL. */
static const aorm_column *generated_col(const aorm_model *m) {
    for (int i = 0; i < m->ncolumns; i++)
        if (is_generated(&m->columns[i])) return &m->columns[i];
    return NULL;
}

static bool generated_key(const aorm_model *m) { return generated_col(m) != NULL; }

static int64_t int_field(const aorm_column *c, const void *obj) {
    const void *f = aorm__cfield(c, obj);
    switch (c->type) {
    case AORM_INT2: return *(const int16_t *)f;
    case AORM_INT4: return *(const int32_t *)f;
    default: return *(const int64_t *)f;
    }
}

static void set_int_field(const aorm_column *c, void *obj, int64_t v) {
    void *f = aorm__field(c, obj);
    switch (c->type) {
    case AORM_INT2: *(int16_t *)f = (int16_t)v; break;
    case AORM_INT4: *(int32_t *)f = (int32_t)v; break;
    default: *(int64_t *)f = v; break;
    }
}

/* A child's foreign-key columns take its parent's key (km: child's columns
 * -> parent's primary key). */
static void copy_key(const aorm__keymap *km, void *child, const void *parent) {
    for (int i = 0; i < km->n; i++) aorm__field_copy_value(km->from[i], child, km->to[i], parent);
}

/* Does the child's foreign key hold the parent's key? */
static bool key_matches(const aorm__keymap *km, const void *child, const void *parent) {
    for (int i = 0; i < km->n; i++)
        if (!aorm__field_same_value(km->from[i], child, km->to[i], parent)) return false;
    return true;
}

/* False while the server has yet to generate the object's key. */
static bool key_known(const aorm__obj *h) {
    const aorm_model *m = h->model;
    /* fast path for the usual integer key in first position */
    const aorm_column *g = m->ncolumns > 0 && is_generated(&m->columns[0]) ? &m->columns[0] : generated_col(m);
    return !g || int_field(g, (const char *)h + sizeof(aorm__obj)) != 0;
}

/* ---- 1. collect -------------------------------------------------------------------- */

bool aorm__session_has_changes(aorm_session *s) {
    if (s->npending || s->ndeleted) return true;
    for (aorm__obj *h = s->tracked; h; h = h->track_next) {
        if (h->state != AORM_PERSISTENT) continue;
        if (aorm__obj_changed(h)) return true;
        /* collections changed since loaded */
        for (int i = 0; h->rel_snap && i < h->model->nrelationships; i++) {
            const aorm_relationship *r = &h->model->relationships[i];
            if (r->kind == AORM_MANY_TO_ONE || !(h->loaded_rels & (1u << i))) continue;
            const aorm_list *now = (const aorm_list *)((const char *)h + sizeof(aorm__obj) + r->offset);
            const aorm_list *was = &h->rel_snap[i];
            if (now->len != was->len || (now->len && memcmp(now->items, was->items, now->len * sizeof(void *))))
                return true;
        }
        /* a relationship pointer moved without the FK field */
        for (int i = 0; i < h->model->nrelationships; i++) {
            const aorm_relationship *r = &h->model->relationships[i];
            if (r->kind != AORM_MANY_TO_ONE) continue;
            void *t = *(void **)((char *)h + sizeof(aorm__obj) + r->offset);
            aorm__obj *th = aorm__obj_of(s, t);
            if (!th) continue;
            if (th->state == AORM_TRANSIENT || th->state == AORM_PENDING) return true;
            aorm__keymap km;
            if (aorm__rel_keymap(h->model, r, 0, &km) == 0 && !key_matches(&km, aorm__obj_data(h), aorm__obj_data(th)))
                return true;
        }
    }
    return false;
}

/* Children take their parents' keys: many-to-one pointers and one-to-many
 * collections both set the child's FK field (and the inverse pointer). */
static void sync_foreign_keys(aorm_session *s) {
    for (aorm__obj *h = s->tracked; h; h = h->track_next) {
        if (h->state != AORM_PENDING && h->state != AORM_PERSISTENT) continue;
        void *obj = aorm__obj_data(h);
        for (int i = 0; i < h->model->nrelationships; i++) {
            const aorm_relationship *r = &h->model->relationships[i];
            aorm__keymap km;
            if (r->kind == AORM_MANY_TO_MANY || aorm__rel_keymap(h->model, r, 0, &km) < 0) continue;
            if (r->kind == AORM_MANY_TO_ONE) {
                aorm__obj *th = aorm__obj_of(s, *(void **)((char *)obj + r->offset));
                if (th && key_known(th) && th->state != AORM_DELETED) copy_key(&km, obj, aorm__obj_data(th));
            } else {
                aorm_list *l = (aorm_list *)((char *)obj + r->offset);
                const aorm_relationship *back =
                    r->back_populates ? aorm_model_relationship(r->target, r->back_populates) : NULL;
                for (size_t k = 0; k < l->len; k++) {
                    aorm__obj *ch = aorm__obj_of(s, l->items[k]);
                    if (!ch || ch->state == AORM_DELETED) continue;
                    if (key_known(h)) copy_key(&km, l->items[k], obj);
                    if (back && back->kind == AORM_MANY_TO_ONE)
                        *(void **)((char *)l->items[k] + back->offset) = obj;
                }
            }
        }
    }
}

/* Association rows for many-to-many collections: every link of a new
 * owner, and for loaded collections the links added/removed since load. */
static int collect_links(aorm_session *s, flush_run *f) {
    for (aorm__obj *h = s->tracked; h; h = h->track_next) {
        if (h->state != AORM_PENDING && h->state != AORM_PERSISTENT) continue;
        void *obj = aorm__obj_data(h);
        for (int i = 0; i < h->model->nrelationships; i++) {
            const aorm_relationship *r = &h->model->relationships[i];
            if (r->kind != AORM_MANY_TO_MANY) continue;
            const aorm_list *now = (const aorm_list *)((char *)obj + r->offset);
            const aorm_list *was = (h->state == AORM_PERSISTENT && h->rel_snap && (h->loaded_rels & (1u << i)))
                                       ? &h->rel_snap[i]
                                       : NULL;
            if (h->state == AORM_PERSISTENT && !was && now->len == 0) continue;
            aorm__keymap loc, rem;
            if (aorm__rel_keymap(h->model, r, 0, &loc) < 0 || aorm__rel_keymap(h->model, r, 1, &rem) < 0)
                return AORM_EMISUSE;
            link_rows *lr = NULL;
            for (size_t k = 0; k < now->len; k++) {
                bool existed = false;
                for (size_t j = 0; was && j < was->len; j++)
                    if (was->items[j] == now->items[k]) existed = true;
                if (existed) continue;
                /* a collection never loaded has no snapshot: every item
                 * in it is taken as added */
                aorm__obj *th = aorm__obj_of(s, now->items[k]);
                if (!th || th->state == AORM_DELETED) continue;
                void *row = aorm__region_calloc(&s->region, r->secondary->size);
                if (!row) return AORM_ENOMEM;
                if (!lr && !(lr = links_for(f, r))) return AORM_ENOMEM;
                /* keys are filled once they are known (fill_links) */
                if (push_ptr(&lr->rows, &lr->n, &lr->cap, row) < 0) return AORM_ENOMEM;
            }
            for (size_t j = 0; was && j < was->len; j++) {
                bool still = false;
                for (size_t k = 0; k < now->len; k++)
                    if (was->items[j] == now->items[k]) still = true;
                if (still) continue;
                void *row = aorm__region_calloc(&s->region, r->secondary->size);
                if (!row) return AORM_ENOMEM;
                if (!lr && !(lr = links_for(f, r))) return AORM_ENOMEM;
                copy_key(&loc, row, obj);
                copy_key(&rem, row, was->items[j]);
                if (push_ptr(&lr->gone, &lr->ngone, &lr->cap_gone, row) < 0) return AORM_ENOMEM;
            }
        }
    }
    return 0;
}

/* Fills the association rows' keys once every key is known. Rows were
 * collected in the same order as this walk produces them. */
static void fill_links(aorm_session *s, flush_run *f) {
    for (aorm__obj *h = s->tracked; h; h = h->track_next) {
        if (h->state != AORM_PENDING && h->state != AORM_PERSISTENT) continue;
        void *obj = aorm__obj_data(h);
        for (int i = 0; i < h->model->nrelationships; i++) {
            const aorm_relationship *r = &h->model->relationships[i];
            if (r->kind != AORM_MANY_TO_MANY) continue;
            link_rows *lr = NULL;
            for (int li = 0; li < f->nlinks; li++)
                if (f->links[li].rel == r) lr = &f->links[li];
            if (!lr) continue;
            const aorm_list *now = (const aorm_list *)((char *)obj + r->offset);
            const aorm_list *was = (h->state == AORM_PERSISTENT && h->rel_snap && (h->loaded_rels & (1u << i)))
                                       ? &h->rel_snap[i]
                                       : NULL;
            if (h->state == AORM_PERSISTENT && !was && now->len == 0) continue;
            aorm__keymap loc, rem;
            if (aorm__rel_keymap(h->model, r, 0, &loc) < 0 || aorm__rel_keymap(h->model, r, 1, &rem) < 0) continue;
            for (size_t k = 0; k < now->len; k++) {
                bool existed = false;
                for (size_t j = 0; was && j < was->len; j++)
                    if (was->items[j] == now->items[k]) existed = true;
                if (existed) continue;
                aorm__obj *th = aorm__obj_of(s, now->items[k]);
                if (!th || th->state == AORM_DELETED) continue;
                void *row = lr->rows[lr->filled++];
                copy_key(&loc, row, obj);
                copy_key(&rem, row, now->items[k]);
            }
        }
    }
}

/* Topological order of the models involved: a model comes after every
 * model its foreign keys reference. Returns AORM_EMISUSE on a cycle. */
static int order_batches(flush_run *f, char *msg, size_t cap) {
    int n = f->nbatches;
    for (int i = 0; i < n; i++) f->batches[i].order = -1;
    for (int pos = 0; pos < n; pos++) {
        int pick = -1;
        for (int i = 0; i < n && pick < 0; i++) {
            model_batch *b = &f->batches[i];
            if (b->order >= 0) continue;
            bool ready = true;
            for (int k = 0; k < b->m->nforeign_keys && ready; k++) {
                const aorm_model *t = b->m->foreign_keys[k].target;
                if (t == b->m) continue; /* self-reference: rows of one statement, see below */
                for (int j = 0; j < n; j++)
                    if (j != i && f->batches[j].m == t && f->batches[j].order < 0) ready = false;
            }
            if (ready) pick = i;
        }
        if (pick < 0) {
            int w = snprintf(msg, cap, "flush: foreign-key cycle between");
            for (int i = 0; i < n; i++)
                if (f->batches[i].order < 0 && w > 0 && (size_t)w < cap)
                    w += snprintf(msg + w, cap - (size_t)w, " %s", f->batches[i].m->table);
            return AORM_EMISUSE;
        }
        f->batches[pick].order = pos;
    }
    /* sort by order */
    for (int i = 1; i < n; i++) {
        model_batch t = f->batches[i];
        int j = i - 1;
        while (j >= 0 && f->batches[j].order > t.order) {
            f->batches[j + 1] = f->batches[j];
            j--;
        }
        f->batches[j + 1] = t;
    }
    return 0;
}

/* ---- completion ------------------------------------------------------------------------ */

static void keep_left_columns(aorm_session *s, flush_run *f);

/* What the flush wrote, for the second-level cache's invalidation after
 * COMMIT: every row by its key (an update by its old key and, should the
 * key have changed, its new one), and the tables of association rows. */
static void note_cache_writes(aorm_session *s, flush_run *f) {
    for (int i = 0; i < f->nbatches; i++) {
        model_batch *b = &f->batches[i];
        for (size_t k = 0; k < b->nnew; k++) aorm__cache_note_row(s, b->m, aorm__obj_data(b->news[k]), false);
        for (size_t k = 0; k < b->ndel; k++) aorm__cache_note_row(s, b->m, aorm__obj_data(b->dels[k]), true);
    }
    for (size_t k = 0; k < f->ndirty; k++) {
        aorm__obj *h = f->dirty[k];
        aorm__cache_note_row(s, h->model, h->snapshot, false);
        aorm__cache_note_row(s, h->model, aorm__obj_data(h), false);
    }
    for (int i = 0; i < f->nlinks; i++)
        if (f->links[i].n || f->links[i].ngone) aorm__cache_note_row(s, f->links[i].rel->secondary, NULL, false);
}

static void apply_success(aorm_session *s, flush_run *f) {
    if (s->cache_tx || s->o.cache) note_cache_writes(s, f);
    keep_left_columns(s, f);
    for (int i = 0; i < f->nbatches; i++) {
        model_batch *b = &f->batches[i];
        for (size_t k = 0; k < b->nnew; k++) {
            aorm__obj *h = b->news[k];
            h->state = AORM_PERSISTENT;
            s->npending--;
            h->key_hash = aorm__key_hash(h->model, aorm__obj_data(h));
            aorm__session_take_snapshot(s, h);
            if (!(h->flags & OBJ_IN_MAP)) aorm__idmap_put(&s->idmap, h);
            push_ptr((void ***)&s->tx_new, &s->tx_nnew, &s->tx_new_cap, h);
        }
        for (size_t k = 0; k < b->ndel; k++) {
            aorm__obj *h = b->dels[k];
            h->state = AORM_DETACHED;
            s->ndeleted--;
            aorm__idmap_remove(&s->idmap, h);
            push_ptr((void ***)&s->tx_del, &s->tx_ndel, &s->tx_del_cap, h);
        }
    }
    for (size_t k = 0; k < f->ndirty; k++) aorm__session_take_snapshot(s, f->dirty[k]);
    /* new objects' collections are complete: they are loaded, and their
     * contents become the baseline like any loaded collection's */
    for (int i = 0; i < f->nbatches; i++) {
        model_batch *b = &f->batches[i];
        for (size_t k = 0; k < b->nnew; k++) {
            aorm__obj *h = b->news[k];
            for (int r = 0; r < h->model->nrelationships && r < 32; r++) h->loaded_rels |= 1u << r;
            if (!h->rel_snap && h->model->nrelationships > 0)
                h->rel_snap = aorm__region_calloc(&s->region, (size_t)h->model->nrelationships * sizeof(aorm_list));
        }
    }
    /* collections as flushed become the new baseline */
    for (aorm__obj *h = s->tracked; h; h = h->track_next) {
        if (h->state != AORM_PERSISTENT || !h->rel_snap) continue;
        for (int i = 0; i < h->model->nrelationships; i++) {
            const aorm_relationship *r = &h->model->relationships[i];
            if (r->kind == AORM_MANY_TO_ONE || !(h->loaded_rels & (1u << i))) continue;
            const aorm_list *now = (const aorm_list *)((char *)h + sizeof(aorm__obj) + r->offset);
            aorm_list *was = &h->rel_snap[i];
            was->items = now->len ? aorm__region_alloc(&s->region, now->len * sizeof(void *)) : NULL;
            if (now->len && was->items) memcpy(was->items, now->items, now->len * sizeof(void *));
            was->len = was->items || !now->len ? now->len : 0;
        }
    }
    /* children removed on the server by a cascade DELETE of their parent
     * (collection not loaded) leave the session too */
    for (int i = 0; i < f->nbatches; i++) {
        model_batch *b = &f->batches[i];
        for (int r = 0; b->ndel && r < b->m->nrelationships; r++) {
            const aorm_relationship *rel = &b->m->relationships[r];
            if (rel->kind != AORM_ONE_TO_MANY || !(rel->cascade & AORM_CASCADE_DELETE)) continue;
            aorm__keymap km;
            if (aorm__rel_keymap(b->m, rel, 0, &km) < 0) continue;
            for (aorm__obj *h = s->tracked; h; h = h->track_next) {
                if (h->model != rel->target || h->state != AORM_PERSISTENT) continue;
                for (size_t k = 0; k < b->ndel; k++) {
                    if (key_matches(&km, aorm__obj_data(h), aorm__obj_data(b->dels[k]))) {
                        h->state = AORM_DETACHED;
                        aorm__idmap_remove(&s->idmap, h);
                        push_ptr((void ***)&s->tx_del, &s->tx_ndel, &s->tx_del_cap, h);
                        break;
                    }
                }
            }
        }
    }
}

/* The flush failed: values read back into new objects that stay new go
 * again (those fields were empty before: left to the server), so that
 * the next INSERT leaves them to the server again. */
static void undo_read_back(flush_run *f) {
    for (int j = 0; j < f->nrets; j++) {
        const insert_group *g = &f->rets[j];
        for (size_t k = 0; k < g->n; k++)
            for (int i = 0; i < g->m->ncolumns; i++) {
                const aorm_column *c = &g->m->columns[i];
                if (g->omit[i] && !(c->flags & AORM_PK)) memset(aorm__field(c, aorm__obj_data(g->objs[k])), 0, c->size);
            }
    }
}

/* Inserted objects remember which columns took the server's values (bit
 * set) and forget the others' marks: a rollback empties the former again
 * (aorm__flush_rollback_states). */
static void keep_left_columns(aorm_session *s, flush_run *f) {
    for (int i = 0; i < f->nbatches; i++)
        for (size_t k = 0; k < f->batches[i].nnew; k++) {
            aorm__obj *h = f->batches[i].news[k];
            if (h->defaults) memset(h->defaults, 0, (((size_t)h->model->ncolumns + 63) / 64) * sizeof(uint64_t));
        }
    for (int j = 0; j < f->nrets; j++) {
        const insert_group *g = &f->rets[j];
        for (size_t k = 0; k < g->n; k++)
            for (int i = 0; i < g->m->ncolumns; i++) {
                if (!g->omit[i] || (g->m->columns[i].flags & AORM_PK)) continue;
                uint64_t *bits = aorm__obj_defaults(s, g->objs[k]);
                if (bits) bits[i >> 6] |= UINT64_C(1) << (i & 63);
            }
    }
}

static void finish(flush_run *f) {
    aorm__sop *op = f->op;
    aorm_session *s = op->s;
    op->ext = NULL;
    op->ext_free = NULL;
    if (f->err) {
        undo_read_back(f);
        aorm__session_fail_tx(s);
        f->then(op, f->err);
    } else {
        apply_success(s, f);
        f->then(op, NULL);
    }
    run_free(f);
}

static void record_error(flush_run *f, const aorm_error *err) {
    if (!f->err) f->err = aorm_error_copy(err);
}

static void on_write(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm__sop *op = user;
    aorm_session *s = op->s;
    aorm__session_enter(s);
    if (!aorm__op_arrived(op)) { /* closing: the plan goes with the operation */
        aorm__session_leave(s);
        return;
    }
    flush_run *f = op->ext;
    if (err) {
        /* the pipeline aborted what followed the failing statement: report
         * the statement that failed, not the ones skipped because of it */
        if (!f->err || (f->err->code == AORM_EABORTED && err->code != AORM_EABORTED)) {
            aorm_error_free(f->err);
            f->err = aorm_error_copy(err);
        }
    }
    if (--f->out == 0) finish(f);
    aorm__session_leave(s);
}

/* The columns an INSERT RETURNs, in order: every key column, then the
 * other columns the group left to the server. Returns how many (cols
 * holds m->ncolumns entries) and the number of key columns in *npk. */
static int returned_columns(const insert_group *g, const aorm_column **cols, int *npk) {
    const aorm_model *m = g->m;
    int n = 0;
    *npk = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < m->ncolumns; i++) {
            bool pk = (m->columns[i].flags & AORM_PK) != 0;
            if (pass == 0 ? !pk : (pk || !g->omit[i])) continue;
            cols[n++] = &m->columns[i];
            if (pk) (*npk)++;
        }
    return n;
}

/* Loads what the server generated for the group's rows (the RETURNING of
 * its INSERT) into the objects: a generated key when one row's key was
 * not known yet, server defaults, identity values. Several rows are
 * matched to their objects by key (every key is known before a multi-row
 * INSERT), expected in the order sent. Returns 0 or a negative code. */
static int read_back(aorm_session *s, const insert_group *g, const aorm_result *res) {
    const aorm_model *m = g->m;
    PGresult *pg = aorm_result_pgresult(res);
    if (!pg || PQntuples(pg) < 0 || (size_t)PQntuples(pg) != g->n) return AORM_EPROTOCOL;
    const aorm_column **cols = malloc((size_t)m->ncolumns * sizeof(*cols));
    void *key = g->n > 1 ? calloc(1, m->size) : NULL;
    int rc = !cols || (g->n > 1 && !key) ? AORM_ENOMEM : 0;
    int npk = 0;
    int nret = rc == 0 ? returned_columns(g, cols, &npk) : 0;
    if (rc == 0 && PQnfields(pg) != nret) rc = AORM_EPROTOCOL;
    aorm_allocator alloc = {aorm__region_alloc_fn, &s->region};
    size_t expect = 0; /* the object the next row should belong to */
    for (int r = 0; rc == 0 && r < (int)g->n; r++) {
        aorm__obj *h = g->objs[0];
        int from = 0;
        if (g->n > 1) {
            memset(key, 0, m->size);
            for (int j = 0; j < npk && rc == 0; j++)
                rc = aorm__field_load(cols[j], key, (uint32_t)PQftype(pg, j),
                                      PQgetisnull(pg, r, j) ? NULL : PQgetvalue(pg, r, j),
                                      PQgetisnull(pg, r, j) ? -1 : PQgetlength(pg, r, j), &alloc);
            h = NULL;
            for (size_t t = 0; rc == 0 && t < g->n && !h; t++) {
                size_t cand = (expect + t) % g->n;
                bool same = true;
                for (int j = 0; j < npk && same; j++)
                    same = aorm__field_equal(cols[j], key, aorm__obj_data(g->objs[cand]));
                if (same) {
                    h = g->objs[cand];
                    expect = cand + 1;
                }
            }
            if (rc == 0 && !h) rc = AORM_EPROTOCOL; /* a returned row that matches no object */
            from = npk;
        }
        for (int j = from; j < nret && rc == 0; j++)
            rc = aorm__field_load(cols[j], aorm__obj_data(h), (uint32_t)PQftype(pg, j),
                                  PQgetisnull(pg, r, j) ? NULL : PQgetvalue(pg, r, j),
                                  PQgetisnull(pg, r, j) ? -1 : PQgetlength(pg, r, j), &alloc);
    }
    free(cols);
    free(key);
    return rc;
}

/* INSERT ... RETURNING: the values the server generated come back into
 * the objects of the group the statement wrote. */
static void on_insert_returning(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm__sop *op = user;
    flush_run *f = op->ext;
    if (f && !op->s->closing && f->ret_next < f->nrets) {
        const insert_group *g = &f->rets[f->ret_next++];
        int rc = err ? 0 : read_back(op->s, g, res);
        if (rc < 0) {
            aorm_error e2 = {.code = rc, .message = "flush: the values the server generated could not be read back",
                             .detail = "", .hint = "", .constraint = "", .table = g->m->table, .column = ""};
            record_error(f, &e2);
        }
    }
    on_write(e, res, err, user);
}

/* ---- 2. writes ---------------------------------------------------------------------- */

static int send_stmt(aorm_session *s, flush_run *f, aorm_stmt *q, aorm_result_cb cb) {
    int rc = q ? aorm_stmt_error(q) : AORM_ENOMEM;
    if (rc == 0) rc = aorm__session_send(s, f->op, q, cb);
    aorm_stmt_free(q);
    if (rc == 0) f->out++;
    return rc;
}

static int copy_rows(flush_run *f, model_batch *b, aorm_copy *cp);

static int copy_fill(aorm_copy *cp, void *user) {
    aorm__sop *op = user;
    flush_run *f = op->ext;
    if (!f) return -1; /* the session closed under the COPY */
    model_batch *b = NULL;
    for (int i = 0; i < f->nbatches && !b; i++)
        if (f->batches[i].copy_seq == f->copy_cur) b = &f->batches[i];
    if (!b) return -1;
    int rc = copy_rows(f, b, cp);
    if (rc <= 0) { /* this COPY is complete (or failed): the next one starts from its first row */
        f->copy_cur++;
        f->copy_pos = 0;
    }
    return rc;
}

/* Writes rows of batch b into cp until its buffer is full: 1 when rows
 * remain, 0 when all are written, -1 on a field that cannot be encoded. */
static int copy_rows(flush_run *f, model_batch *b, aorm_copy *cp) {
    const aorm_model *m = b->m;
    while (f->copy_pos < b->nnew && aorm_copy_buffered(cp) < 65536) {
        const void *obj = aorm__obj_data(b->news[f->copy_pos++]);
        if (aorm_copy_row(cp, m->ncolumns) < 0) return -1;
        for (int i = 0; i < m->ncolumns; i++) {
            const aorm_column *c = &m->columns[i];
            aorm_params_reset(&f->scratch);
            if (aorm__field_param(c, obj, &f->scratch) < 0) return -1;
            const aorm_param_slot *sl = &f->scratch.slots[0];
            int rc = sl->len < 0 ? aorm_copy_null(cp)
                                 : aorm_copy_raw(cp, f->scratch.data + sl->offset, (size_t)sl->len);
            if (rc < 0) return -1;
        }
    }
    return f->copy_pos < b->nnew ? 1 : 0;
}

static int send_copy(aorm_session *s, flush_run *f, int bi) {
    model_batch *b = &f->batches[bi];
    aorm__buf sql = {0};
    int rc = AORM_ENOMEM;
    if (aorm__buf_append(&sql, "COPY ", 5) < 0) goto out;
    if (b->m->schema && (aorm__quote_ident(&sql, b->m->schema) < 0 || aorm__buf_putc(&sql, '.') < 0)) goto out;
    if (aorm__quote_ident(&sql, b->m->table) < 0 || aorm__buf_append(&sql, " (", 2) < 0) goto out;
    for (int i = 0; i < b->m->ncolumns; i++)
        if ((i && aorm__buf_append(&sql, ", ", 2) < 0) || aorm__quote_ident(&sql, b->m->columns[i].name) < 0) goto out;
    if (aorm__buf_append(&sql, ") FROM STDIN (FORMAT binary)", 29) < 0) goto out;
    if (f->copies_sent == 0) f->copy_cur = 1;
    b->copy_seq = ++f->copies_sent;
    rc = aorm_conn_copy(s->conn, sql.data, copy_fill, f->op, on_write, f->op);
    if (rc == 0) {
        f->out++;
        f->op->pending++;
        s->statements++;
    }
out:
    aorm__buf_free(&sql);
    return rc;
}

/* A column the INSERT of a new object leaves to the server: a SERIAL or
 * IDENTITY column whose field is 0 (the server generates it), and a
 * column with a server default that the program left to it
 * (aorm_object_use_default) and whose field is still empty (zero, false,
 * NULL). Every other column is written with its field's value, zero and
 * false included: a value the program set is never replaced by a
 * default. */
static bool left_to_server(const aorm__obj *h, int i) {
    const aorm_column *c = &h->model->columns[i];
    const void *obj = (const char *)h + sizeof(aorm__obj);
    if (c->flags & (AORM_SERIAL | AORM_IDENTITY)) return aorm__field_unset(c, obj);
    if (!c->server_default || !aorm__obj_uses_default(h, i)) return false;
    return (c->flags & AORM_NULLABLE) ? aorm__field_is_null(c, obj) : aorm__field_unset(c, obj);
}

static bool self_referencing(const aorm_model *m) {
    for (int k = 0; k < m->nforeign_keys; k++)
        if (m->foreign_keys[k].target == m) return true;
    return false;
}

static void groups_free(insert_group *gs, int n) {
    for (int i = 0; i < n; i++) {
        free(gs[i].objs);
        free(gs[i].omit);
    }
    free(gs);
}

/* Splits batch b's new objects (in creation order) into groups that leave
 * the same columns to the server: one statement each. Rows of a
 * self-referencing model keep their creation order across statements
 * (a parent created before its child is inserted before it), so only
 * consecutive rows share a group; other models have one group per set of
 * columns. Returns 0 or AORM_ENOMEM. */
static int group_inserts(const model_batch *b, insert_group **out, int *nout) {
    const aorm_model *m = b->m;
    size_t nc = (size_t)m->ncolumns;
    bool runs = self_referencing(m);
    bool *omit = malloc(nc + 1);
    insert_group *gs = NULL;
    int ng = 0, cap = 0;
    int rc = omit ? 0 : AORM_ENOMEM;
    for (size_t k = 0; k < b->nnew && rc == 0; k++) {
        aorm__obj *h = b->news[k];
        bool any = false;
        for (size_t i = 0; i < nc; i++) any |= omit[i] = left_to_server(h, (int)i);
        insert_group *g = NULL;
        for (int j = runs ? ng - 1 : 0; j >= 0 && j < ng && !g; j++)
            if (memcmp(gs[j].omit, omit, nc) == 0) g = &gs[j];
        if (!g) {
            if (ng == cap) {
                int c2 = cap ? cap * 2 : 2;
                insert_group *n2 = realloc(gs, (size_t)c2 * sizeof(*n2));
                if (!n2) {
                    rc = AORM_ENOMEM;
                    break;
                }
                gs = n2;
                cap = c2;
            }
            g = &gs[ng++];
            *g = (insert_group){.m = m, .omit = malloc(nc + 1), .any = any};
            if (!g->omit) {
                rc = AORM_ENOMEM;
                break;
            }
            memcpy(g->omit, omit, nc);
        }
        if (push_ptr((void ***)&g->objs, &g->n, &g->cap, h) < 0) rc = AORM_ENOMEM;
    }
    free(omit);
    if (rc < 0) {
        groups_free(gs, ng);
        return rc;
    }
    *out = gs;
    *nout = ng;
    return 0;
}

/* One INSERT for group g. A group that leaves columns to the server gets
 * RETURNING (keys, then those columns) and moves into f->rets, where its
 * answer finds it (on_insert_returning). */
static int send_group(aorm_session *s, flush_run *f, insert_group *g) {
    const aorm_model *m = g->m;
    aorm_stmt *q = aorm_insert(m);
    const void **objs = malloc(g->n * sizeof(void *));
    if (!q || !objs) {
        aorm_stmt_free(q);
        free(objs);
        return AORM_ENOMEM;
    }
    for (size_t k = 0; k < g->n; k++) objs[k] = aorm__obj_data(g->objs[k]);
    aorm__insert_objects_cols(q, objs, g->n, g->omit); /* an error stays in q: send_stmt returns it */
    free(objs);
    aorm_result_cb cb = on_write;
    if (g->any) {
        if (f->nrets == f->cap_rets) {
            int c2 = f->cap_rets ? f->cap_rets * 2 : 4;
            insert_group *r2 = realloc(f->rets, (size_t)c2 * sizeof(*r2));
            if (!r2) {
                aorm_stmt_free(q);
                return AORM_ENOMEM;
            }
            f->rets = r2;
            f->cap_rets = c2;
        }
        const aorm_column **cols = malloc((size_t)m->ncolumns * sizeof(*cols));
        if (!cols) {
            aorm_stmt_free(q);
            return AORM_ENOMEM;
        }
        int npk;
        int nret = returned_columns(g, cols, &npk);
        for (int j = 0; j < nret; j++)
            aorm_returning(q, &(aorm_expr){.kind = AORM_X_COLUMN, .model = m, .offset = cols[j]->offset});
        free(cols);
        cb = on_insert_returning;
    }
    int rc = send_stmt(s, f, q, cb);
    if (rc == 0 && g->any) {
        f->rets[f->nrets++] = *g;
        g->objs = NULL;
        g->omit = NULL;
    }
    return rc;
}

static int send_inserts(aorm_session *s, flush_run *f, int bi) {
    model_batch *b = &f->batches[bi];
    if (b->nnew == 0) return 0;
    insert_group *gs;
    int ng;
    int rc = group_inserts(b, &gs, &ng);
    if (rc < 0) return rc;
    /* COPY writes every column: only for rows that leave none to the server */
    if (ng == 1 && !gs[0].any && b->nnew >= COPY_THRESHOLD && !b->m->schema) {
        groups_free(gs, ng);
        return send_copy(s, f, bi);
    }
    for (int j = 0; j < ng && rc == 0; j++) rc = send_group(s, f, &gs[j]);
    groups_free(gs, ng);
    return rc;
}

static int send_update(aorm_session *s, flush_run *f, aorm__obj *h) {
    const aorm_model *m = h->model;
    void *obj = aorm__obj_data(h);
    aorm_stmt *q = aorm_update(m);
    if (!q) return AORM_ENOMEM;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if ((c->flags & AORM_PK) || aorm__field_equal(c, obj, h->snapshot)) continue;
        /* strings the caller assigned move into the session before they
         * become the snapshot */
        if (c->type == AORM_TEXT || c->type == AORM_NUMERIC || c->type == AORM_JSON || c->type == AORM_JSONB) {
            char **fp = aorm__field(c, obj);
            if (*fp && !(*fp = aorm__region_strdup(&s->region, *fp))) {
                aorm_stmt_free(q);
                return AORM_ENOMEM;
            }
        } else if (aorm__type_elem(c->type)) { /* arrays too (and the in-place edited ones: harmless) */
            aorm_allocator alloc = {aorm__region_alloc_fn, &s->region};
            if (aorm__field_own_array(c, obj, &alloc) < 0) {
                aorm_stmt_free(q);
                return AORM_ENOMEM;
            }
        }
        aorm_expr col = {.kind = AORM_X_COLUMN, .model = m, .offset = c->offset};
        aorm_expr val;
        aorm__field_value_expr(c, obj, &val);
        aorm_set(q, &col, &val);
    }
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if (!(c->flags & AORM_PK)) continue;
        aorm_expr col = {.kind = AORM_X_COLUMN, .model = m, .offset = c->offset};
        aorm_expr val;
        aorm__field_value_expr(c, h->snapshot, &val); /* the row as it was loaded */
        aorm_expr eq = {.kind = AORM_X_BINARY, .op = AORM_OP_EQ, .a = &col, .b = &val};
        aorm_where(q, &eq);
    }
    return send_stmt(s, f, q, on_write);
}

static int send_link_inserts(aorm_session *s, flush_run *f) {
    for (int i = 0; i < f->nlinks; i++) {
        link_rows *l = &f->links[i];
        if (l->n == 0) continue;
        aorm_stmt *q = aorm_insert(l->rel->secondary);
        if (!q) return AORM_ENOMEM;
        /* A link row sets its key columns only: any other column with a
         * server default (or a generated key) is left to the server. */
        const aorm_model *sm = l->rel->secondary;
        bool *omit = calloc((size_t)sm->ncolumns, sizeof(bool));
        if (!omit) {
            aorm_stmt_free(q);
            return AORM_ENOMEM;
        }
        for (int k = 0; k < sm->ncolumns; k++) omit[k] = aorm__field_unset(&sm->columns[k], l->rows[0]);
        aorm__insert_objects_cols(q, (const void *const *)l->rows, l->n, omit);
        free(omit);
        int rc = send_stmt(s, f, q, on_write);
        if (rc < 0) return rc;
    }
    return 0;
}

static int send_link_deletes(aorm_session *s, flush_run *f) {
    for (int i = 0; i < f->nlinks; i++) {
        link_rows *l = &f->links[i];
        const aorm_model *sm = l->rel->secondary;
        for (size_t k = 0; k < l->ngone; k++) {
            aorm_stmt *q = aorm_delete(sm);
            if (!q) return AORM_ENOMEM;
            for (int c = 0; c < sm->ncolumns; c++) {
                const aorm_column *col = &sm->columns[c];
                if (!(col->flags & AORM_PK)) continue;
                aorm_expr ce = {.kind = AORM_X_COLUMN, .model = sm, .offset = col->offset};
                aorm_expr v;
                aorm__field_value_expr(col, l->gone[k], &v);
                aorm_expr eq = {.kind = AORM_X_BINARY, .op = AORM_OP_EQ, .a = &ce, .b = &v};
                aorm_where(q, &eq);
            }
            int rc = send_stmt(s, f, q, on_write);
            if (rc < 0) return rc;
        }
    }
    return 0;
}

/* Sends DELETE FROM dm WHERE (cols) match the key (src columns) of one of
 * objs[0..n): one statement whatever n, `col = ANY($1)` for a single
 * column and `(c1, c2) IN (SELECT * FROM unnest($1, $2))` for several;
 * one statement per object when a key column has no array form. */
static int send_key_delete(aorm_session *s, flush_run *f, const aorm_model *dm, const aorm_column *const *cols,
                           const aorm_column *const *src, int k, void *const *objs, size_t n) {
    bool arrays = true;
    for (int i = 0; i < k; i++)
        if (!aorm__field_array_type(src[i])) arrays = false;
    if (!arrays) {
        for (size_t o = 0; o < n; o++) {
            aorm_stmt *q = aorm_delete(dm);
            if (!q) return AORM_ENOMEM;
            for (int i = 0; i < k; i++) {
                aorm_expr ce = {.kind = AORM_X_COLUMN, .model = dm, .offset = cols[i]->offset};
                aorm_expr v;
                aorm__field_value_expr(src[i], objs[o], &v);
                aorm_expr eq = {.kind = AORM_X_BINARY, .op = AORM_OP_EQ, .a = &ce, .b = &v};
                aorm_where(q, &eq);
            }
            int rc = send_stmt(s, f, q, on_write);
            if (rc < 0) return rc;
        }
        return 0;
    }
    aorm_stmt *q = aorm_delete(dm);
    if (!q) return AORM_ENOMEM;
    aorm__where_key_in(q, dm, cols, src, k, objs, n); /* an error stays in q: send_stmt returns it */
    return send_stmt(s, f, q, on_write);
}

/* DELETE of a model's deleted objects, preceded by what must go before
 * them: association rows of their many-to-many collections, and rows of
 * one-to-many children with delete cascade (loaded or not). */
static int send_deletes(aorm_session *s, flush_run *f, model_batch *b) {
    if (b->ndel == 0) return 0;
    const aorm_model *m = b->m;
    void **objs = malloc(b->ndel * sizeof(void *));
    if (!objs) return AORM_ENOMEM;
    for (size_t k = 0; k < b->ndel; k++) objs[k] = aorm__obj_data(b->dels[k]);
    int rc = 0;
    /* dependents first */
    for (int i = 0; i < m->nrelationships && rc == 0; i++) {
        const aorm_relationship *r = &m->relationships[i];
        const aorm_model *dm;
        if (r->kind == AORM_MANY_TO_MANY) dm = r->secondary;
        else if (r->kind == AORM_ONE_TO_MANY && (r->cascade & AORM_CASCADE_DELETE)) dm = r->target;
        else continue;
        aorm__keymap km; /* dependent's columns -> this model's key */
        if (aorm__rel_keymap(m, r, 0, &km) < 0) continue;
        rc = send_key_delete(s, f, dm, km.from, km.to, km.n, objs, b->ndel);
    }
    if (rc == 0) {
        const aorm_column *pk[AORM_KEY_MAX];
        int npk = aorm_model_pk_count(m);
        if (npk < 1 || npk > AORM_KEY_MAX) rc = AORM_EMISUSE;
        for (int i = 0; i < npk && rc == 0; i++) pk[i] = aorm_model_pk(m, i);
        if (rc == 0) rc = send_key_delete(s, f, m, pk, pk, npk, objs, b->ndel);
    }
    free(objs);
    return rc;
}

static void send_writes(flush_run *f) {
    aorm__sop *op = f->op;
    aorm_session *s = op->s;
    sync_foreign_keys(s); /* keys just arrived: children take them */
    fill_links(s, f);
    /* modified persistent objects, now that foreign keys are synced */
    for (aorm__obj *h = s->tracked; h; h = h->track_next)
        if (h->state == AORM_PERSISTENT && aorm__obj_changed(h))
            if (push_ptr((void ***)&f->dirty, &f->ndirty, &f->cap_dirty, h) < 0) goto oom;
    /* strings of new objects move into the session's region */
    for (int i = 0; i < f->nbatches; i++) {
        model_batch *b = &f->batches[i];
        for (int c = 0; c < b->m->ncolumns; c++) {
            const aorm_column *col = &b->m->columns[c];
            if (aorm__type_elem(col->type)) { /* arrays of new objects move in too */
                aorm_allocator alloc = {aorm__region_alloc_fn, &s->region};
                for (size_t k = 0; k < b->nnew; k++)
                    if (aorm__field_own_array(col, aorm__obj_data(b->news[k]), &alloc) < 0) goto oom;
                continue;
            }
            if (col->type != AORM_TEXT && col->type != AORM_NUMERIC && col->type != AORM_JSON && col->type != AORM_JSONB)
                continue;
            for (size_t k = 0; k < b->nnew; k++) {
                char **fp = aorm__field(col, aorm__obj_data(b->news[k]));
                if (*fp && !(*fp = aorm__region_strdup(&s->region, *fp))) goto oom;
            }
        }
    }
    int rc = 0;
    for (int i = 0; i < f->nbatches && rc == 0; i++) rc = send_inserts(s, f, i);
    if (rc == 0) rc = send_link_inserts(s, f);
    for (size_t k = 0; k < f->ndirty && rc == 0; k++) rc = send_update(s, f, f->dirty[k]);
    if (rc == 0) rc = send_link_deletes(s, f);
    for (int i = f->nbatches - 1; i >= 0 && rc == 0; i--) rc = send_deletes(s, f, &f->batches[i]);
    if (rc < 0) {
        aorm_error err = {.code = rc, .message = "flush: a statement could not be queued", .detail = "",
                          .hint = "", .constraint = "", .table = "", .column = ""};
        record_error(f, &err);
    }
    if (f->out == 0) finish(f);
    return;
oom: {
    aorm_error err = {.code = AORM_ENOMEM, .message = "out of memory", .detail = "", .hint = "",
                      .constraint = "", .table = "", .column = ""};
    record_error(f, &err);
    if (f->out == 0) finish(f);
}
}

/* ---- 1b. keys ------------------------------------------------------------------------- */

static void on_keys(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm__sop *op = user;
    aorm_session *s = op->s;
    aorm__session_enter(s);
    if (!aorm__op_arrived(op)) {
        aorm__session_leave(s);
        return;
    }
    flush_run *f = op->ext;
    if (err) {
        record_error(f, err);
    } else {
        /* which batch: the first one still waiting for its keys */
        for (int i = 0; i < f->nbatches; i++) {
            model_batch *b = &f->batches[i];
            if (!b->need_keys || b->keys) continue;
            int n = aorm_result_nrows(res);
            b->keys = malloc(((size_t)n + 1) * sizeof(int64_t));
            if (!b->keys || (size_t)n < b->nnew) {
                aorm_error e2 = {.code = AORM_EPROTOCOL, .message = "flush: fewer keys than rows", .detail = "",
                                 .hint = "", .constraint = "", .table = "", .column = ""};
                record_error(f, &e2);
                break;
            }
            const aorm_column *pk = generated_col(b->m);
            size_t k = 0;
            for (size_t j = 0; j < b->nnew; j++) {
                if (key_known(b->news[j])) continue;
                int64_t id;
                aorm_result_int64(res, (int)k++, 0, &id);
                set_int_field(pk, aorm__obj_data(b->news[j]), id);
            }
            b->nkeys = k;
            break;
        }
    }
    if (--f->out == 0) {
        if (f->err) finish(f);
        else send_writes(f);
    }
    aorm__session_leave(s);
}

static void fetch_keys(flush_run *f) {
    aorm__sop *op = f->op;
    aorm_session *s = op->s;
    for (int i = 0; i < f->nbatches; i++) {
        model_batch *b = &f->batches[i];
        if (!b->need_keys) continue;
        size_t missing = 0;
        for (size_t k = 0; k < b->nnew; k++)
            if (!key_known(b->news[k])) missing++;
        if (missing == 0) {
            b->need_keys = false;
            continue;
        }
        aorm__buf table = {0};
        if (b->m->schema && (aorm__quote_ident(&table, b->m->schema) < 0 || aorm__buf_putc(&table, '.') < 0)) goto oom;
        if (aorm__quote_ident(&table, b->m->table) < 0 || aorm__buf_putc(&table, '\0') < 0) goto oom;
        /* the sequence is resolved once (the OFFSET 0 subquery keeps the
         * planner from re-evaluating the lookup for every row) */
        aorm_stmt *q = aorm_raw("SELECT nextval(s.seq) FROM (SELECT pg_get_serial_sequence(:t, :c)::regclass AS seq "
                                "OFFSET 0) s, generate_series(1, :n)");
        aorm_bind(q, "t", aorm_text(table.data));
        aorm_bind(q, "c", aorm_text(generated_col(b->m)->name));
        aorm_bind(q, "n", aorm_int4((int32_t)missing));
        aorm__buf_free(&table);
        if (send_stmt(s, f, q, on_keys) < 0) goto oom;
        continue;
    oom:
        aorm__buf_free(&table);
        {
            aorm_error err = {.code = AORM_ENOMEM, .message = "out of memory", .detail = "", .hint = "",
                              .constraint = "", .table = "", .column = ""};
            record_error(f, &err);
        }
        break;
    }
    if (f->out == 0) {
        if (f->err) finish(f);
        else send_writes(f);
    }
}

/* Children removed from a loaded one-to-many collection: deleted when the
 * relationship declares delete-orphan, detached from the parent (FK set to
 * NULL) when the FK is nullable, and otherwise an error: a NOT NULL
 * foreign key cannot be left pointing at a parent that disowned it. */
static int process_orphans(aorm_session *s, char *msg, size_t cap) {
    for (aorm__obj *h = s->tracked; h; h = h->track_next) {
        if ((h->state != AORM_PERSISTENT && h->state != AORM_DELETED) || !h->rel_snap) continue;
        for (int i = 0; i < h->model->nrelationships; i++) {
            const aorm_relationship *r = &h->model->relationships[i];
            if (r->kind != AORM_ONE_TO_MANY || !(h->loaded_rels & (1u << i))) continue;
            const aorm_list *now = (const aorm_list *)((char *)h + sizeof(aorm__obj) + r->offset);
            const aorm_list *was = &h->rel_snap[i];
            aorm__keymap km;
            if (aorm__rel_keymap(h->model, r, 0, &km) < 0) continue;
            bool nullable = true; /* every FK column can take NULL */
            for (int c = 0; c < km.n; c++)
                if (!(km.from[c]->flags & AORM_NULLABLE)) nullable = false;
            for (size_t j = 0; j < was->len; j++) {
                bool still = false;
                for (size_t k = 0; k < now->len && !still; k++) still = now->items[k] == was->items[j];
                if (still) continue;
                aorm__obj *ch = aorm__obj_of(s, was->items[j]);
                if (!ch || ch->state != AORM_PERSISTENT) continue;
                if (r->cascade & AORM_CASCADE_DELETE_ORPHAN) {
                    ch->state = AORM_DELETED;
                    s->ndeleted++;
                } else if (nullable) {
                    for (int c = 0; c < km.n; c++) /* a zeroed aorm_opt_* or pointer is NULL */
                        memset(aorm__field(km.from[c], was->items[j]), 0, km.from[c]->size);
                } else if (h->state == AORM_PERSISTENT) {
                    /* still pointing at this parent? then it was only removed from the list */
                    snprintf(msg, cap,
                             "flush: a %s was removed from %s.%s but its foreign key cannot be NULL: "
                             "delete it, move it to another parent, or declare AORM_CASCADE_DELETE_ORPHAN",
                             r->target->name, h->model->name, r->name);
                    if (key_matches(&km, was->items[j], aorm__obj_data(h))) return AORM_EMISUSE;
                }
            }
        }
    }
    return 0;
}

/* ---- start ----------------------------------------------------------------------------- */

static void run_free_cb(void *p) { run_free(p); }

static void plan_and_send(aorm__sop *op, const aorm_error *err);

void aorm__flush_start(aorm__sop *op, flush_then then) {
    aorm_session *s = op->s;
    flush_run *f = calloc(1, sizeof(*f));
    if (!f) {
        aorm_error e = {.code = AORM_ENOMEM, .message = "out of memory", .detail = "", .hint = "",
                        .constraint = "", .table = "", .column = ""};
        then(op, &e);
        return;
    }
    f->op = op;
    f->then = then;
    aorm_params_init(&f->scratch);
    op->ext = f;
    op->ext_free = run_free_cb;
    /* save-update cascades for relationships set after aorm_session_add */
    for (aorm__obj *h = s->tracked; h; h = h->track_next)
        if (h->state == AORM_PENDING || h->state == AORM_PERSISTENT) aorm__session_cascade(s, h, 0);
    aorm__session_ensure_tx(s, op, plan_and_send);
}

static void plan_and_send(aorm__sop *op, const aorm_error *err) {
    aorm_session *s = op->s;
    flush_run *f = op->ext;
    if (err) {
        record_error(f, err);
        finish(f);
        return;
    }
    char msg[256];
    int rc = process_orphans(s, msg, sizeof(msg));
    if (rc < 0) {
        aorm_error e = {.code = rc, .message = msg, .detail = "", .hint = "", .constraint = "", .table = "",
                        .column = ""};
        record_error(f, &e);
        finish(f);
        return;
    }
    sync_foreign_keys(s); /* keys already known flow to children now */
    for (aorm__obj *h = s->tracked; h && rc == 0; h = h->track_next) {
        if (h->state == AORM_PENDING) {
            model_batch *b = batch_for(f, h->model);
            if (!b || push_ptr((void ***)&b->news, &b->nnew, &b->cap_new, h) < 0) rc = AORM_ENOMEM;
        } else if (h->state == AORM_DELETED) {
            model_batch *b = batch_for(f, h->model);
            if (!b || push_ptr((void ***)&b->dels, &b->ndel, &b->cap_del, h) < 0) rc = AORM_ENOMEM;
        }
    }
    /* new objects in creation order (the tracked list is newest first) */
    for (int i = 0; i < f->nbatches; i++) {
        model_batch *b = &f->batches[i];
        for (size_t a = 0, z = b->nnew ? b->nnew - 1 : 0; a < z; a++, z--) {
            aorm__obj *t = b->news[a];
            b->news[a] = b->news[z];
            b->news[z] = t;
        }
    }
    if (rc == 0) rc = collect_links(s, f);
    /* association models are part of the order too */
    for (int i = 0; i < f->nlinks && rc == 0; i++)
        if (!batch_for(f, f->links[i].rel->secondary)) rc = AORM_ENOMEM;
    if (rc == 0 && (rc = order_batches(f, msg, sizeof(msg))) < 0) {
        aorm_error e = {.code = rc, .message = msg, .detail = "", .hint = "", .constraint = "", .table = "",
                        .column = ""};
        record_error(f, &e);
        finish(f);
        return;
    }
    if (rc < 0) {
        aorm_error e = {.code = rc, .message = aorm_strerror(rc), .detail = "", .hint = "", .constraint = "",
                        .table = "", .column = ""};
        record_error(f, &e);
        finish(f);
        return;
    }
    /* which batches need their keys before anything else can be written */
    bool dependents = f->nlinks > 0;
    for (int i = 0; i < f->nbatches; i++)
        for (int j = 0; j < f->nbatches; j++)
            for (int k = 0; k < f->batches[j].m->nforeign_keys; k++)
                if (f->batches[j].nnew && f->batches[j].m->foreign_keys[k].target == f->batches[i].m)
                    dependents = true;
    for (int i = 0; i < f->nbatches; i++) {
        model_batch *b = &f->batches[i];
        if (b->nnew == 0 || !generated_key(b->m)) continue;
        b->need_keys = b->nnew > 1 || dependents;
    }
    fetch_keys(f);
}

/* ---- transaction end ---------------------------------------------------------------------- */

static void discard_unflushed(aorm_session *s);

void aorm__flush_commit_states(aorm_session *s) {
    aorm__cache_tx_commit(s); /* after COMMIT, never before */
    for (size_t i = 0; i < s->tx_nnew; i++) s->tx_new[i]->defaults = NULL; /* their rows exist for good */
    s->tx_nnew = s->tx_ndel = 0;
}

void aorm__flush_rollback_states(aorm_session *s) {
    aorm__cache_tx_discard(s); /* nothing was committed: nothing to invalidate */
    /* rows inserted in the transaction are gone: their objects are new
     * again (keys cleared when the server generated them) */
    for (size_t i = 0; i < s->tx_nnew; i++) {
        aorm__obj *h = s->tx_new[i];
        if (h->state != AORM_PERSISTENT) continue;
        aorm__idmap_remove(&s->idmap, h);
        h->state = AORM_TRANSIENT;
        if (generated_key(h->model)) set_int_field(generated_col(h->model), aorm__obj_data(h), 0);
        /* values the server generated for it are gone with the row: the
         * columns are left to the server again */
        for (int c = 0; h->defaults && c < h->model->ncolumns; c++)
            if (aorm__obj_uses_default(h, c))
                memset(aorm__field(&h->model->columns[c], aorm__obj_data(h)), 0, h->model->columns[c].size);
        h->snapshot = NULL;
    }
    for (size_t i = 0; i < s->tx_ndel; i++) {
        aorm__obj *h = s->tx_del[i];
        if (h->state != AORM_DETACHED) continue;
        h->state = AORM_PERSISTENT;
        aorm__idmap_put(&s->idmap, h);
    }
    discard_unflushed(s);
}

void aorm__flush_unknown_states(aorm_session *s) {
    aorm__cache_tx_commit(s); /* it may have committed */
    /* rows inserted in the transaction may exist: their objects keep
     * their keys (so the program can look the rows up) but leave the
     * session, DETACHED, which aorm_session_add refuses, so no flush ever
     * inserts them a second time */
    for (size_t i = 0; i < s->tx_nnew; i++) {
        aorm__obj *h = s->tx_new[i];
        if (h->state != AORM_PERSISTENT) continue;
        aorm__idmap_remove(&s->idmap, h);
        h->state = AORM_DETACHED;
    }
    /* rows deleted in the transaction may be gone: their objects stay
     * DETACHED; rows updated in it are expired with every other
     * persistent object below (their snapshots hold the flushed values,
     * so nothing looks modified and no UPDATE is sent again) */
    discard_unflushed(s);
}

/* The end of a failed transaction: changes never flushed are discarded:
 * pending objects become transient, deleted ones persistent again, and
 * modified fields go back to their last known values (then expire: the
 * next query that returns the row reloads it). Consumes the transaction's
 * lists. */
static void discard_unflushed(aorm_session *s) {
    for (aorm__obj *h = s->tracked; h; h = h->track_next) {
        if (h->state == AORM_PENDING) {
            h->state = AORM_TRANSIENT;
        } else if (h->state == AORM_DELETED) {
            h->state = AORM_PERSISTENT;
        }
        if (h->state != AORM_PERSISTENT) continue;
        if (h->snapshot) { /* column bytes only: restore column by column */
            void *obj = aorm__obj_data(h);
            for (int i = 0; i < h->model->ncolumns; i++) {
                const aorm_column *c = &h->model->columns[i];
                memcpy((char *)obj + c->offset, (const char *)h->snapshot + c->offset, c->size);
            }
        }
        h->flags |= OBJ_EXPIRED;
    }
    s->npending = s->ndeleted = 0;
    s->tx_nnew = s->tx_ndel = 0;
}

/* session.c -- the AsyncSession: objects, the operation queue, queries
 * through the identity map, and lazy transactions.
 *
 * Operations of one session are answered one at a time, in the order
 * they were queued. An operation starts when the previous one has called
 * back -- or earlier, when everything in front of it has sent its
 * statements and it is one statement whose answer needs nothing else
 * (pump, can_go_ahead): then its statement shares the pipeline write of
 * those in front, and its answer waits for its turn. The first operation
 * of an idle session is started from the loop's soon queue, so that
 * nothing ever calls back from inside the call that queued it; later ones
 * start from the previous operation's completion.
 *
 * Transactions are lazy: statements go to the engine in autocommit until
 * the session needs a transaction (flush, begin, FOR UPDATE); it then
 * acquires a connection, queues BEGIN and sends everything after it down
 * that connection's pipeline without waiting for BEGIN's answer.
 *
 * Owns: the region with every object and string, the identity map, the
 * queued operations and, during a transaction, the held connection.
 * Must not: block, or answer an operation before the ones queued before
 * it. */
#include <libpq-fe.h>
#include <stdio.h>

#include "aorm/loaders.h"
#include "async_session/session_int.h"

static void start_next(aorm_session *s);
static void soon_start(void *arg);
static void early_drop(aorm__sop *op);
static void ahead_unlink(aorm_session *s, aorm__sop *op);
static void session_destroy(aorm_session *s);
static void cancel_queued(aorm_session *s, const char *msg);

void aorm_query_options_init(aorm_query_options *o) {
    if (o) memset(o, 0, sizeof(*o));
}

void aorm_session_options_init(aorm_session_options *o) {
    memset(o, 0, sizeof(*o));
    o->autoflush = true;
    o->arena_block = 65536;
}

static void on_engine_closed(aorm_owner *o, void *user);

aorm_session *aorm_session_new(aorm_engine *e, const aorm_session_options *o) {
    if (!e) return NULL;
    aorm_session *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    /* the session's cancel group: freeing the session cancels its engine
     * work at once, and freeing the engine first tells the session */
    if (!(s->owner = aorm_owner_new(e))) {
        free(s);
        return NULL;
    }
    aorm_owner_on_close(s->owner, on_engine_closed, s);
    s->e = e;
    s->loop = aorm_engine_loop(e);
    if (o) s->o = *o;
    else aorm_session_options_init(&s->o);
    aorm__region_init(&s->region, s->o.arena_block);
    aorm__idmap_init(&s->idmap);
    return s;
}

aorm_engine *aorm_session_engine(const aorm_session *s) {
    return s && !s->engine_gone ? aorm_owner_engine(s->owner) : NULL;
}

/* The session can take no new work: it is being freed, or its engine is
 * (or is gone). */
static bool session_closed(const aorm_session *s) {
    return s->closing || s->engine_gone || !aorm_owner_engine(s->owner);
}

/* True once the engine is being freed (aorm_owner_engine says NULL from
 * the start of aorm_engine_free, while the engine calls back the work it
 * cancels) or is gone: from then on nothing of the session may start. */
static bool engine_closing(aorm_session *s) {
    if (!s->engine_gone && !aorm_owner_engine(s->owner)) s->engine_gone = true;
    return s->engine_gone;
}
void aorm_session_set_data(aorm_session *s, void *data) { if (s) s->data = data; }
void *aorm_session_data(const aorm_session *s) { return s ? s->data : NULL; }
uint64_t aorm_session_statements(const aorm_session *s) { return s ? s->statements : 0; }
bool aorm_session_in_transaction(const aorm_session *s) { return s && s->tx != TX_NONE; }
/* A held connection that the engine found lost (its read watcher saw the
 * end of the stream, or a statement failed on it) takes the transaction
 * with it, even while nothing of the session was in flight. */
static bool held_conn_lost(const aorm_session *s) {
    return s->tx == TX_ACTIVE && s->conn && aorm_conn_broken(s->conn);
}
bool aorm_session_rollback_required(const aorm_session *s) {
    return s && (s->tx == TX_FAILED || held_conn_lost(s));
}

/* ---- objects ------------------------------------------------------------------ */

aorm__obj *aorm__obj_of(const aorm_session *s, const void *obj) {
    if (!s || !obj || (uintptr_t)obj < sizeof(aorm__obj)) return NULL;
    const aorm__obj *h = (const aorm__obj *)((const char *)obj - sizeof(aorm__obj));
    if (!aorm__region_contains(&s->region, h, sizeof(aorm__obj))) return NULL;
    /* inside this session's region, so a magic match is one of its objects */
    return h->magic == AORM__OBJ_MAGIC ? (aorm__obj *)h : NULL;
}

static aorm__obj *obj_alloc(aorm_session *s, const aorm_model *m) {
    aorm__obj *h = aorm__region_alloc(&s->region, sizeof(aorm__obj) + m->size);
    if (!h) return NULL;
    memset(h, 0, sizeof(aorm__obj) + m->size);
    h->magic = AORM__OBJ_MAGIC;
    h->model = m;
    h->seq = ++s->next_seq;
    h->state = AORM_TRANSIENT;
    return h;
}

static void track(aorm_session *s, aorm__obj *h) {
    if (h->flags & OBJ_ADDED) return;
    h->flags |= OBJ_ADDED;
    h->track_next = s->tracked;
    s->tracked = h;
}

void *aorm_session_new_object(aorm_session *s, const aorm_model *m) {
    if (!s || !m || session_closed(s)) return NULL;
    aorm__obj *h = obj_alloc(s, m);
    return h ? aorm__obj_data(h) : NULL;
}

char *aorm_session_strdup(aorm_session *s, const char *str) {
    return s ? aorm__region_strdup(&s->region, str) : NULL;
}

void *aorm_session_alloc(aorm_session *s, size_t n) { return s ? aorm__region_alloc(&s->region, n) : NULL; }

int aorm_session_list_append(aorm_session *s, aorm_list *list, void *obj) {
    if (!s || !list || !obj) return AORM_EMISUSE;
    if (list->len == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 8;
        void **items = aorm__region_alloc(&s->region, cap * sizeof(void *));
        if (!items) return AORM_ENOMEM;
        if (list->len) memcpy(items, list->items, list->len * sizeof(void *));
        list->items = items; /* the old array stays in the arena: collections never shrink it */
        list->cap = cap;
    }
    list->items[list->len++] = obj;
    return 0;
}

aorm_object_state aorm_object_state_of(const aorm_session *s, const void *obj) {
    aorm__obj *h = aorm__obj_of(s, obj);
    return h ? (aorm_object_state)h->state : AORM_DETACHED;
}

const aorm_model *aorm_object_model(const aorm_session *s, const void *obj) {
    aorm__obj *h = aorm__obj_of(s, obj);
    return h ? h->model : NULL;
}

bool aorm__obj_changed(const aorm__obj *h) {
    if (!h->snapshot) return true;
    const void *obj = (const char *)h + sizeof(aorm__obj);
    for (int i = 0; i < h->model->ncolumns; i++)
        if (!aorm__field_equal(&h->model->columns[i], obj, h->snapshot)) return true;
    return false;
}

bool aorm_object_modified(const aorm_session *s, const void *obj) {
    aorm__obj *h = aorm__obj_of(s, obj);
    return h && h->state == AORM_PERSISTENT && aorm__obj_changed(h);
}

void aorm__session_take_snapshot(aorm_session *s, aorm__obj *h) {
    size_t span = aorm__colspan(h->model);
    if (!h->snapshot) h->snapshot = aorm__region_alloc(&s->region, span);
    if (!h->snapshot) return;
    memcpy(h->snapshot, aorm__obj_data(h), span);
    /* arrays: the snapshot keeps its own copy, so that an element changed
     * in place is seen as a change (failing that, it shares: a missed
     * in-place change, never a wrong write) */
    aorm_allocator alloc = {aorm__region_alloc_fn, &s->region};
    for (int i = 0; i < h->model->ncolumns; i++)
        if (aorm__type_elem(h->model->columns[i].type))
            (void)aorm__field_own_array(&h->model->columns[i], h->snapshot, &alloc);
}

/* Save-update cascade: objects reachable through relationships of an added
 * object are added too (unless the relationship opts out). */
void aorm__session_cascade(aorm_session *s, aorm__obj *h, int depth) {
    if (depth > 64) return; /* object graphs deeper than this are added by the flush's own scan */
    void *obj = aorm__obj_data(h);
    for (int i = 0; i < h->model->nrelationships; i++) {
        const aorm_relationship *r = &h->model->relationships[i];
        if (r->cascade & AORM_CASCADE_NONE) continue;
        void *field = (char *)obj + r->offset;
        if (r->kind == AORM_MANY_TO_ONE) {
            void *t = *(void **)field;
            aorm__obj *th = aorm__obj_of(s, t);
            if (th && th->state == AORM_TRANSIENT) {
                th->state = AORM_PENDING;
                s->npending++;
                track(s, th);
                aorm__session_cascade(s, th, depth + 1);
            }
        } else {
            aorm_list *l = field;
            for (size_t k = 0; k < l->len; k++) {
                aorm__obj *th = aorm__obj_of(s, l->items[k]);
                if (th && th->state == AORM_TRANSIENT) {
                    th->state = AORM_PENDING;
                    s->npending++;
                    track(s, th);
                    aorm__session_cascade(s, th, depth + 1);
                }
            }
        }
    }
}

int aorm_session_add(aorm_session *s, void *obj) {
    if (!s) return AORM_EMISUSE;
    if (session_closed(s)) return AORM_ECLOSED;
    aorm__obj *h = aorm__obj_of(s, obj);
    if (!h) return AORM_EMISUSE;
    switch ((aorm_object_state)h->state) {
    case AORM_TRANSIENT:
        h->state = AORM_PENDING;
        s->npending++;
        track(s, h);
        break;
    case AORM_DELETED: /* un-delete */
        h->state = AORM_PERSISTENT;
        s->ndeleted--;
        break;
    case AORM_DETACHED:
        return AORM_EMISUSE; /* expunged objects cannot come back into this session */
    case AORM_PENDING:
    case AORM_PERSISTENT:
        break;
    }
    aorm__session_cascade(s, h, 0);
    return 0;
}

static void cascade_delete(aorm_session *s, aorm__obj *h, int depth);

int aorm_session_delete(aorm_session *s, void *obj) {
    if (!s) return AORM_EMISUSE;
    if (session_closed(s)) return AORM_ECLOSED;
    aorm__obj *h = aorm__obj_of(s, obj);
    if (!h) return AORM_EMISUSE;
    switch ((aorm_object_state)h->state) {
    case AORM_PENDING:
        h->state = AORM_TRANSIENT;
        s->npending--;
        return 0;
    case AORM_PERSISTENT:
        h->state = AORM_DELETED;
        s->ndeleted++;
        cascade_delete(s, h, 0);
        return 0;
    case AORM_DELETED:
        return 0;
    case AORM_TRANSIENT:
    case AORM_DETACHED:
        return AORM_EMISUSE;
    }
    return AORM_EMISUSE;
}

/* Delete cascade through loaded collections; unloaded ones are handled by
 * the flush with one DELETE ... WHERE fk = ANY(...) per relationship. */
static void cascade_delete(aorm_session *s, aorm__obj *h, int depth) {
    if (depth > 64) return;
    void *obj = aorm__obj_data(h);
    for (int i = 0; i < h->model->nrelationships; i++) {
        const aorm_relationship *r = &h->model->relationships[i];
        if (r->kind != AORM_ONE_TO_MANY || !(r->cascade & AORM_CASCADE_DELETE)) continue;
        aorm_list *l = (aorm_list *)((char *)obj + r->offset);
        /* loaded, or filled by the caller: what is in it belongs to the
         * parent (rows not in it go by the flush's DELETE by foreign key) */
        if (!(h->loaded_rels & (1u << i)) && l->len == 0) continue;
        for (size_t k = 0; k < l->len; k++) {
            aorm__obj *ch = aorm__obj_of(s, l->items[k]);
            if (ch && ch->state == AORM_PERSISTENT) {
                ch->state = AORM_DELETED;
                s->ndeleted++;
                cascade_delete(s, ch, depth + 1);
            } else if (ch && ch->state == AORM_PENDING) {
                ch->state = AORM_TRANSIENT;
                s->npending--;
            }
        }
    }
}

int aorm_session_expunge(aorm_session *s, void *obj) {
    if (!s) return AORM_EMISUSE;
    aorm__obj *h = aorm__obj_of(s, obj);
    if (!h) return AORM_EMISUSE;
    if (h->state == AORM_PENDING) s->npending--;
    if (h->state == AORM_DELETED) s->ndeleted--;
    aorm__idmap_remove(&s->idmap, h);
    h->state = AORM_DETACHED;
    return 0;
}

void aorm_session_expunge_all(aorm_session *s) {
    if (!s) return;
    /* every object in the map is tracked: removing them one by one costs
     * the number of objects, not the size of the table */
    for (aorm__obj *h = s->tracked; h; h = h->track_next) {
        if (h->state != AORM_TRANSIENT) h->state = AORM_DETACHED;
        aorm__idmap_remove(&s->idmap, h);
    }
    s->tracked = NULL; /* detached objects need no tracking; their memory stays in the region */
    s->npending = s->ndeleted = 0;
}

int aorm_session_expire(aorm_session *s, void *obj) {
    if (!s) return AORM_EMISUSE;
    aorm__obj *h = aorm__obj_of(s, obj);
    if (!h || h->state != AORM_PERSISTENT) return AORM_EMISUSE;
    h->flags |= OBJ_EXPIRED;
    return 0;
}

/* ---- columns left to the server ------------------------------------------------ */

uint64_t *aorm__obj_defaults(aorm_session *s, aorm__obj *h) {
    if (!h->defaults) {
        size_t words = ((size_t)h->model->ncolumns + 63) / 64;
        h->defaults = aorm__region_alloc(&s->region, words * sizeof(uint64_t));
        if (h->defaults) memset(h->defaults, 0, words * sizeof(uint64_t));
    }
    return h->defaults;
}

/* Sets (use) or clears the default bit of col (NULL: of every column with
 * a server default) on a new object. */
static int mark_default(aorm_session *s, void *obj, const aorm_expr *col, bool use) {
    if (!s) return AORM_EMISUSE;
    if (session_closed(s)) return AORM_ECLOSED;
    aorm__obj *h = aorm__obj_of(s, obj);
    if (!h || (h->state != AORM_TRANSIENT && h->state != AORM_PENDING)) return AORM_EMISUSE;
    const aorm_model *m = h->model;
    int from = 0, to = m->ncolumns;
    if (col) {
        const aorm_column *c =
            col->kind == AORM_X_COLUMN && col->model == m ? aorm_model_column_at(m, col->offset) : NULL;
        if (!c || !c->server_default) return AORM_EMISUSE;
        from = (int)(c - m->columns);
        to = from + 1;
    }
    if (!use && !h->defaults) return 0;
    for (int i = from; i < to; i++) {
        if (!m->columns[i].server_default) continue;
        uint64_t *bits = aorm__obj_defaults(s, h);
        if (!bits) return AORM_ENOMEM;
        if (use) bits[i >> 6] |= UINT64_C(1) << (i & 63);
        else bits[i >> 6] &= ~(UINT64_C(1) << (i & 63));
    }
    return 0;
}

int aorm_object_use_default(aorm_session *s, void *obj, const aorm_expr *col) {
    return mark_default(s, obj, col, true);
}

int aorm_object_use_value(aorm_session *s, void *obj, const aorm_expr *col) {
    return mark_default(s, obj, col, false);
}

/* ---- rows to objects ------------------------------------------------------------ */

static void *scratch_for(aorm_session *s, const aorm_model *m) {
    if (s->scratch_size < m->size) {
        void *p = realloc(s->scratch, m->size);
        if (!p) return NULL;
        s->scratch = p;
        s->scratch_size = m->size;
    }
    memset(s->scratch, 0, m->size);
    return s->scratch;
}

/* ---- row plans: how the columns of one result go into objects ------------------
 * Computed once per result: which result column feeds which field, its
 * type OID, and for the common cases a decoder that needs no dispatch. */

static uint8_t fast_kind(const aorm_column *c, uint32_t oid) {
    bool nullable = (c->flags & AORM_NULLABLE) != 0;
    switch (c->type) {
    case AORM_INT8: return !nullable && oid == AORM_T_INT8 ? RP_INT8 : RP_GENERIC;
    case AORM_INT4: return oid != AORM_T_INT4 ? RP_GENERIC : nullable ? RP_OPT_INT4 : RP_INT4;
    case AORM_FLOAT8: return !nullable && oid == AORM_T_FLOAT8 ? RP_FLOAT8 : RP_GENERIC;
    case AORM_TEXT: return oid == AORM_T_TEXT || oid == AORM_T_VARCHAR ? RP_TEXT : RP_GENERIC;
    default: return RP_GENERIC;
    }
}

int aorm__rowplan_init(aorm__rowplan *rp, const aorm_result *res, const aorm_model *m, const int *pos) {
    PGresult *pg = aorm_result_pgresult(res);
    memset(rp, 0, sizeof(*rp));
    rp->m = m;
    rp->pg = pg;
    rp->cols = m->ncolumns <= AORM__RP_INLINE ? rp->inline_cols : malloc((size_t)m->ncolumns * sizeof(*rp->cols));
    if (!rp->cols) return AORM_ENOMEM;
    /* key columns first, then the others */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < m->ncolumns; i++) {
            const aorm_column *c = &m->columns[i];
            bool pk = (c->flags & AORM_PK) != 0;
            if (pos[i] < 0 || pk != (pass == 0)) continue;
            aorm__rowplan_col *rc = &rp->cols[rp->n++];
            rc->c = c;
            rc->pos = pos[i];
            rc->oid = (uint32_t)PQftype(pg, pos[i]);
            rc->fast = PQfformat(pg, pos[i]) == 1 ? fast_kind(c, rc->oid) : RP_GENERIC;
            if (pk) rp->npk++;
        }
    }
    rp->nrows = PQntuples(pg);
    rp->whole_key = rp->npk == aorm_model_pk_count(m);
    rp->colspan = aorm__colspan(m);
    return 0;
}

void aorm__rowplan_free(aorm__rowplan *rp) {
    if (rp->cols != rp->inline_cols) free(rp->cols);
    rp->cols = NULL;
}

/* Decodes plan columns [from, to) of row `row` into obj and, when snap is
 * not NULL, into snap as well (a new object's snapshot, written as the
 * object is, never copied from it: see row_new).
 *
 * Two libpq calls per value instead of three: a NULL has length 0, so
 * PQgetisnull is asked only when the length is not what the fast decoder
 * expects (a NULL, an empty text, a malformed value) or for a column
 * without a fast decoder. Each call is a call into libpq through the PLT
 * with its own bounds checks; a large load makes millions of them. */
/* Why column pc of a row of rp's model could not be loaded (rc), named
 * in s->decode_msg for the error the caller gets. Returns rc. */
static int decode_error(aorm_session *s, const aorm__rowplan *rp, const aorm__rowplan_col *pc, int rc) {
    char pg[96];
    aorm__oid_describe(pc->oid, pg, sizeof(pg));
    char ename[160];
    const char *field = aorm__column_type_sql(pc->c, false, ename, sizeof(ename));
    snprintf(s->decode_msg, sizeof(s->decode_msg),
             "%s.%s: a value of type %s (from the server) cannot be loaded into its %s field (%s): %s", rp->m->name,
             pc->c->name, pg, field ? field : "?", aorm__type_name(pc->c->type), aorm_strerror(rc));
    return rc;
}

/* The message of a load that failed: decode_error's, else a general one. */
static const char *decode_message(const aorm_session *s) {
    return s->decode_msg[0] ? s->decode_msg : "a row could not be loaded into its object";
}

static int load_cols(aorm_session *s, const aorm__rowplan *rp, int row, void *obj, void *snap, int from, int to) {
    PGresult *pg = rp->pg;
    for (int k = from; k < to; k++) {
        const aorm__rowplan_col *pc = &rp->cols[k];
        size_t off = pc->c->offset;
        void *f = (char *)obj + off;
        const char *v = PQgetvalue(pg, row, pc->pos);
        int len = PQgetlength(pg, row, pc->pos);
        switch (pc->fast) {
        case RP_INT8: {
            if (len != 8) break;
            int64_t x = (int64_t)aorm__get_be64(v);
            *(int64_t *)f = x;
            if (snap) *(int64_t *)((char *)snap + off) = x;
            continue;
        }
        case RP_INT4: {
            if (len != 4) break;
            int32_t x = (int32_t)aorm__get_be32(v);
            *(int32_t *)f = x;
            if (snap) *(int32_t *)((char *)snap + off) = x;
            continue;
        }
        case RP_OPT_INT4: {
            if (len != 4) break;
            aorm_opt_int32 x = {.valid = true, .value = (int32_t)aorm__get_be32(v)};
            *(aorm_opt_int32 *)f = x;
            if (snap) *(aorm_opt_int32 *)((char *)snap + off) = x;
            continue;
        }
        case RP_FLOAT8: {
            if (len != 8) break;
            uint64_t u = aorm__get_be64(v);
            memcpy(f, &u, 8);
            if (snap) memcpy((char *)snap + off, &u, 8);
            continue;
        }
        case RP_TEXT: {
            if (len == 0) break;
            char *str = aorm__region_alloc(&s->region, (size_t)len + 1);
            if (!str) return AORM_ENOMEM;
            memcpy(str, v, (size_t)len);
            str[len] = '\0';
            *(char **)f = str;
            if (snap) *(char **)((char *)snap + off) = str; /* snapshots share the strings */
            continue;
        }
        default:
            break;
        }
        /* the slow way: a NULL, an empty text, a value of the wrong size, a
         * column without a fast decoder */
        bool null = PQgetisnull(pg, row, pc->pos);
        if (!null && pc->fast == RP_TEXT) {
            char *str = aorm__region_memdup(&s->region, "", 0);
            if (!str) return AORM_ENOMEM;
            *(char **)f = str;
        } else if (!null && pc->fast != RP_GENERIC) {
            return decode_error(s, rp, pc, AORM_EPROTOCOL);
        } else {
            aorm_allocator alloc = {aorm__region_alloc_fn, &s->region};
            int rc = aorm__field_load(pc->c, obj, pc->oid, null ? NULL : v, null ? -1 : len, &alloc);
            if (rc < 0) return rc == AORM_ENOMEM ? rc : decode_error(s, rp, pc, rc);
        }
        if (snap) {
            memcpy((char *)snap + off, f, pc->c->size);
            if (aorm__type_elem(pc->c->type)) { /* the snapshot's own copy (see take_snapshot) */
                aorm_allocator alloc = {aorm__region_alloc_fn, &s->region};
                if (aorm__field_own_array(pc->c, snap, &alloc) < 0) return AORM_ENOMEM;
            }
        }
    }
    return 0;
}

/* Result positions of m's columns in q (-1 when absent). Returns the
 * number of primary-key columns found. */
int aorm__model_positions(const aorm_stmt *q, const aorm_model *m, int *pos) {
    int npk = 0;
    for (int i = 0; i < m->ncolumns; i++) {
        aorm_expr col = {.kind = AORM_X_COLUMN, .model = m, .offset = m->columns[i].offset};
        pos[i] = aorm_stmt_column(q, &col);
        if ((m->columns[i].flags & AORM_PK) && pos[i] >= 0) npk++;
    }
    return npk;
}

/* Row r's object, already in the identity map: reloaded when asked
 * (populate) or expired, else left as it is (the session's state wins over
 * the row). Returns 0 or a negative code. */
static int row_existing(aorm_session *s, const aorm__rowplan *rp, int r, bool populate, aorm__obj *h) {
    if (!populate && !(h->flags & OBJ_EXPIRED)) return 0;
    int rc = load_cols(s, rp, r, aorm__obj_data(h), NULL, rp->npk, rp->n);
    if (rc < 0) return rc;
    aorm__session_take_snapshot(s, h);
    h->flags &= (uint8_t)~OBJ_EXPIRED;
    return 0;
}

/* Row r as a new persistent object, put in the identity map. `key` is a
 * struct of the model holding the row's key fields; hash is their
 * aorm__key_hash. Returns the object's header, or NULL with *rc set.
 *
 * The object's memory is fresh: every cache line of it is a write miss.
 * So it is only ever written, never read back -- the snapshot is written
 * field by field alongside the object (load_cols) instead of copied from
 * it. A read of bytes just stored in several pieces cannot be served from
 * the pending stores, and waits until every older store has reached the
 * cache, misses included: with a copy, each row waited for its own
 * object's write misses. */
static aorm__obj *row_new(aorm_session *s, const aorm__rowplan *rp, int r, const void *key, uint64_t hash,
                          int *rc) {
    const aorm_model *m = rp->m;
    /* header, object and snapshot in one allocation: the three are used
     * together, and a large load walks them in order */
    size_t osize = (m->size + 15) & ~(size_t)15;
    aorm__obj *h = aorm__region_alloc(&s->region, sizeof(aorm__obj) + osize + rp->colspan);
    if (!h) {
        *rc = AORM_ENOMEM;
        return NULL;
    }
    char *obj = aorm__obj_data(h);
    char *snap = obj + osize;
    *h = (aorm__obj){.model = m,
                     .snapshot = snap,
                     .key_hash = hash,
                     .magic = AORM__OBJ_MAGIC,
                     .state = AORM_PERSISTENT,
                     .seq = ++s->next_seq};
    memset(obj, 0, m->size);
    memset(snap, 0, rp->colspan);
    for (int k = 0; k < rp->npk; k++) {
        const aorm_column *c = rp->cols[k].c;
        memcpy(obj + c->offset, (const char *)key + c->offset, c->size);
        memcpy(snap + c->offset, (const char *)key + c->offset, c->size);
    }
    if ((*rc = load_cols(s, rp, r, obj, snap, rp->npk, rp->n)) < 0) return NULL;
    if (aorm__idmap_put(&s->idmap, h) < 0) {
        *rc = AORM_ENOMEM;
        return NULL;
    }
    track(s, h);
    return h;
}

/* Row `r` as an object of the plan's model through the identity map.
 * Returns 1 with *out set, 0 when the row's key is NULL (an outer join
 * without a match), or a negative code. The key is decoded once, into
 * scratch space, for the lookup; a new object gets it from there and
 * the other columns from the row. */
int aorm__session_materialize_row(aorm_session *s, const aorm__rowplan *rp, int r, bool populate, void **out) {
    const aorm_model *m = rp->m;
    if (r < 0 || r >= rp->nrows) return AORM_ERANGE;
    if (!rp->whole_key) return AORM_EMISUSE;
    for (int k = 0; k < rp->npk; k++)
        if (PQgetisnull(rp->pg, r, rp->cols[k].pos)) return 0;
    void *key = scratch_for(s, m);
    if (!key) return AORM_ENOMEM;
    int rc = load_cols(s, rp, r, key, NULL, 0, rp->npk);
    if (rc < 0) return rc;
    uint64_t hash = aorm__key_hash(m, key);
    aorm__obj *h = aorm__idmap_find(&s->idmap, m, key, hash);
    if (h) rc = row_existing(s, rp, r, populate, h);
    else h = row_new(s, rp, r, key, hash, &rc);
    if (rc < 0) return rc;
    *out = aorm__obj_data(h);
    return 1;
}

/* ---- large results with a one-column integer key ---------------------------------
 * The usual shape of a large load, made memory-friendly. The rows are a
 * software pipeline: the key of row r + KEY_AHEAD is decoded and hashed,
 * and its identity-map slot prefetched, while row r is materialized. By
 * the time row r is reached its slot is in cache, and so is the start of
 * its values in the PGresult (the key decode touched them): a load walks
 * the result once, not once for the hashes and again for the objects. */

#define KEY_AHEAD 16 /* a power of two; far enough to hide a memory access */

typedef struct key_ahead {
    int64_t key;
    uint64_t hash;
    int st; /* 1: key decoded, 0: NULL key, < 0: error code */
} key_ahead;

/* Decodes and hashes row r's key into *ka (its st says how it went) and
 * prefetches what row r will need: its identity-map slot and the rest of
 * its values. */
static void key_decode(const aorm__rowplan *rp, int r, aorm__idmap *map, key_ahead *ka) {
    const aorm__rowplan_col *k0 = &rp->cols[0];
    const char *v = PQgetvalue(rp->pg, r, k0->pos);
    int len = PQgetlength(rp->pg, r, k0->pos);
    if (k0->fast == RP_INT8 && len == 8) ka->key = (int64_t)aorm__get_be64(v);
    else if (k0->fast == RP_INT4 && len == 4) ka->key = (int32_t)aorm__get_be32(v);
    else {
        ka->st = PQgetisnull(rp->pg, r, k0->pos) ? 0 : AORM_EPROTOCOL;
        return;
    }
    ka->st = 1;
    ka->hash = aorm__int_key_hash(rp->m, ka->key);
    aorm__idmap_prefetch(map, ka->hash);
    /* libpq stores a row's values one after the other, after the key when
     * the key is selected first (as aorm selects it): the next two lines
     * hold the rest of a narrow row. Only a hint: a prefetch never faults. */
    __builtin_prefetch((const void *)((uintptr_t)v + 64));
    __builtin_prefetch((const void *)((uintptr_t)v + 128));
}

/* aorm__session_materialize for a plan whose only key column is the
 * model's first column, decoded by RP_INT8 or RP_INT4 (so that its hash is
 * aorm__int_key_hash). Fills out[0..nrows) (NULL for a row with a NULL
 * key). Returns 0 or a negative code; on failure out is partly filled. */
static int materialize_int_key(aorm_session *s, const aorm__rowplan *rp, bool populate, void **out) {
    const aorm__rowplan_col *k0 = &rp->cols[0];
    void *key = scratch_for(s, rp->m); /* the key field, set per row, for row_new */
    if (!key) return AORM_ENOMEM;
    void *kf = aorm__field(k0->c, key);
    key_ahead ring[KEY_AHEAD];
    int nrows = rp->nrows;
    for (int r = 0; r < nrows && r < KEY_AHEAD; r++) key_decode(rp, r, &s->idmap, &ring[r]);
    for (int r = 0; r < nrows; r++) {
        key_ahead ka = ring[r & (KEY_AHEAD - 1)];
        if (r + KEY_AHEAD < nrows) key_decode(rp, r + KEY_AHEAD, &s->idmap, &ring[r & (KEY_AHEAD - 1)]);
        if (ka.st < 0) return ka.st;
        if (ka.st == 0) {
            out[r] = NULL;
            continue;
        }
        int rc = 0;
        aorm__region_prefetch(&s->region, 1024, 256); /* a few rows ahead: see row_new on write misses */
        aorm__obj *h = aorm__idmap_find_int(&s->idmap, rp->m, ka.key, ka.hash);
        if (h) rc = row_existing(s, rp, r, populate, h);
        else {
            if (k0->fast == RP_INT8) *(int64_t *)kf = ka.key;
            else *(int32_t *)kf = (int32_t)ka.key;
            h = row_new(s, rp, r, key, ka.hash, &rc);
        }
        if (rc < 0) return rc;
        out[r] = aorm__obj_data(h);
    }
    return 0;
}

int aorm__session_materialize_rows(aorm_session *s, const aorm__rowplan *rp, bool populate, void **out) {
    /* the key aorm__int_key_hash covers: one integer column, declared first */
    const aorm__rowplan_col *k0 = rp->npk == 1 ? &rp->cols[0] : NULL;
    if (k0 && k0->c == &rp->m->columns[0] && (k0->fast == RP_INT8 || k0->fast == RP_INT4))
        return materialize_int_key(s, rp, populate, out);
    for (int r = 0; r < rp->nrows; r++) {
        int rc = aorm__session_materialize_row(s, rp, r, populate, &out[r]);
        if (rc < 0) return rc;
        if (rc == 0) out[r] = NULL;
    }
    return 0;
}

int aorm__session_materialize(aorm_session *s, const aorm_stmt *q, const aorm_result *res, const aorm_model *m,
                              bool populate, void **out) {
    int nrows = aorm_result_nrows(res);
    int pos_stack[32];
    int *pos = m->ncolumns <= 32 ? pos_stack : malloc((size_t)m->ncolumns * sizeof(int));
    if (!pos) return AORM_ENOMEM;
    aorm__rowplan rp;
    int rc = 0;
    if (aorm__model_positions(q, m, pos) != aorm_model_pk_count(m)) {
        rc = AORM_EMISUSE; /* objects need their whole primary key in the select list */
        goto out;
    }
    if ((rc = aorm__rowplan_init(&rp, res, m, pos)) < 0) goto out;
    aorm__idmap_reserve(&s->idmap, (size_t)nrows); /* best effort: put() grows if this failed */
    /* and room for the objects, faulted in at once (large results only) */
    aorm__region_reserve(&s->region, (size_t)nrows * (sizeof(aorm__obj) + ((m->size + 15) & ~(size_t)15) +
                                                      ((rp.colspan + 15) & ~(size_t)15) + 32));
    rc = aorm__session_materialize_rows(s, &rp, populate, out);
    aorm__rowplan_free(&rp);
out:
    if (pos != pos_stack) free(pos);
    return rc;
}

/* An aorm_expr holding the value of field c of obj (for key conditions). */
int aorm__field_value_expr(const aorm_column *c, const void *obj, aorm_expr *out) {
    memset(out, 0, sizeof(*out));
    out->kind = AORM_X_VALUE;
    out->type = c->type;
    const void *f = aorm__cfield(c, obj);
    bool nullable = (c->flags & AORM_NULLABLE) != 0;
    out->null = aorm__field_is_null(c, obj);
    if (out->null) return 0;
    switch (c->type) {
    case AORM_BOOL: out->v.b = nullable ? ((const aorm_opt_bool *)f)->value : *(const bool *)f; break;
    case AORM_INT2: out->v.i = nullable ? ((const aorm_opt_int16 *)f)->value : *(const int16_t *)f; break;
    case AORM_INT4:
    case AORM_DATE: out->v.i = nullable ? ((const aorm_opt_int32 *)f)->value : *(const int32_t *)f; break;
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: out->v.i = nullable ? ((const aorm_opt_int64 *)f)->value : *(const int64_t *)f; break;
    case AORM_FLOAT4: out->v.d = nullable ? ((const aorm_opt_float *)f)->value : *(const float *)f; break;
    case AORM_FLOAT8: out->v.d = nullable ? ((const aorm_opt_double *)f)->value : *(const double *)f; break;
    case AORM_TEXT:
    case AORM_NUMERIC:
    case AORM_JSON:
    case AORM_JSONB:
        out->v.s = *(char *const *)f;
        out->len = SIZE_MAX;
        break;
    case AORM_BYTEA:
        out->v.p = ((const aorm_bytes *)f)->data;
        out->len = ((const aorm_bytes *)f)->len;
        break;
    case AORM_UUID:
        out->v.p = nullable ? ((const aorm_opt_uuid *)f)->value.b : ((const aorm_uuid *)f)->b;
        out->len = 16;
        break;
    case AORM_INTERVAL: out->v.p = nullable ? (const void *)&((const aorm_opt_interval *)f)->value : f; break;
    case AORM_INET:
    case AORM_CIDR: out->v.p = nullable ? (const void *)&((const aorm_opt_inet *)f)->value : f; break;
    case AORM_ENUM:
        out->v.i = nullable ? ((const aorm_opt_int32 *)f)->value : *(const int32_t *)f;
        out->enum_type = c->enum_type;
        break;
    default: out->v.p = f; break; /* arrays: the aorm_array_* itself (copied when attached) */
    }
    return 0;
}

/* WHERE pk1 = $1 AND pk2 = $2 ... for the key fields of `key`. */
static int where_key(aorm_stmt *q, const aorm_model *m, const void *key) {
    aorm_expr cols[8], vals[8], eqs[8];
    const aorm_expr *list[8];
    int n = 0;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if (!(c->flags & AORM_PK)) continue;
        if (n == 8) return AORM_EMISUSE; /* keys of more than 8 columns are not supported */
        cols[n] = (aorm_expr){.kind = AORM_X_COLUMN, .model = m, .offset = c->offset};
        aorm__field_value_expr(c, key, &vals[n]);
        eqs[n] = (aorm_expr){.kind = AORM_X_BINARY, .op = AORM_OP_EQ, .a = &cols[n], .b = &vals[n]};
        list[n] = &eqs[n];
        n++;
    }
    if (n == 0) return AORM_EMISUSE;
    if (n == 1) return aorm_where(q, list[0]);
    aorm_expr all = {.kind = AORM_X_AND, .list = list, .n = n};
    return aorm_where(q, &all);
}

/* ---- the operation queue ---------------------------------------------------------- */

static aorm__sop *sop_new(aorm_session *s, sop_kind kind, void *user) {
    aorm__sop *op = calloc(1, sizeof(*op));
    if (!op) return NULL;
    op->s = s;
    op->kind = kind;
    op->user = user;
    return op;
}

static void sop_free(aorm__sop *op) {
    early_drop(op);
    if (op->ext && op->ext_free) op->ext_free(op->ext);
    aorm__cache_op_free(op->cache);
    aorm_stmt_free(op->stmt);
    aorm_error_free(op->err);
    free(op->keys);
    free(op);
}

/* Can an operation queued now start before the running one has
 * answered? Only behind operations whose statements are all out. */
static bool takes_more(const aorm_session *s) {
    if (!s->running) return true;
    const aorm__sop *last = s->a_tail ? s->a_tail : s->running;
    return !s->running->answered && (last->sent_all || last->early);
}

static int sop_push(aorm_session *s, aorm__sop *op) {
    op->next = NULL;
    aorm__sop *prev = s->q_tail;
    if (s->q_tail) s->q_tail->next = op;
    else s->q_head = op;
    s->q_tail = op;
    if (!s->start_scheduled && !s->pumping && takes_more(s)) {
        if (aorm_loop_soon(s->loop, soon_start, s) < 0) {
            if (s->running) return 0; /* the running operation's end starts it */
            /* undo: the caller gets the error and no callback */
            if (prev) prev->next = NULL;
            else s->q_head = NULL;
            s->q_tail = prev;
            return AORM_ENOMEM;
        }
        s->start_scheduled = true;
    }
    return 0;
}

void aorm__session_enter(aorm_session *s) { s->depth++; }
void aorm__session_leave(aorm_session *s) {
    if (--s->depth == 0 && s->free_pending && !s->running && !s->a_head && (s->begins_out == 0 || s->engine_gone))
        session_destroy(s);
}
#define session_enter aorm__session_enter
#define session_leave aorm__session_leave

/* Every engine callback that carries an operation starts here. Returns
 * false when the session is closing: the operation was already answered
 * with AORM_ECANCELED, and is freed once its last statement is back. */
bool aorm__op_arrived(aorm__sop *op) {
    aorm_session *s = op->s;
    op->pending--;
    if (!s->closing) return true;
    if (op->pending == 0 && s->running == op) {
        s->running = NULL;
        sop_free(op);
    } else if (op->pending == 0 && op->in_ahead) {
        ahead_unlink(s, op);
        sop_free(op);
    }
    return false;
}

/* Delivers op's outcome to its callback (exactly once). */
static void deliver(aorm_session *s, aorm__sop *op, void *obj, aorm_objects *objs, aorm_result *res,
                    const aorm_error *err) {
    if (op->answered) return; /* exactly once, even if closed from its own callback */
    op->answered = true;
    /* An operation the closing engine refused (ECLOSED) was cancelled by
     * the engine's free, like the work the engine called back itself */
    aorm_error gone;
    if (err && err->code == AORM_ECLOSED && !s->closing && engine_closing(s)) {
        gone = *err;
        gone.code = AORM_ECANCELED;
        gone.message = "cancelled: the engine was freed";
        err = &gone;
    }
    switch (op->kind) {
    case SOP_QUERY:
    case SOP_GET_MANY:
        op->cb.objects(s, err ? NULL : objs, err, op->user);
        break;
    case SOP_GET:
        op->cb.object(s, err ? NULL : obj, err, op->user);
        break;
    case SOP_EXECUTE:
        op->cb.rows(s, err ? NULL : res, err, op->user);
        break;
    case SOP_REFRESH:
    case SOP_FLUSH:
    case SOP_COMMIT:
    case SOP_ROLLBACK:
    case SOP_BEGIN:
    case SOP_SAVEPOINT:
    case SOP_RELEASE_SAVEPOINT:
    case SOP_ROLLBACK_SAVEPOINT:
    case SOP_LOAD:
    case SOP_NOOP:
        if (op->cb.done) op->cb.done(s, err, op->user);
        break;
    case SOP_STREAM:
        op->cb.stream(s, NULL, err, op->user); /* the end call */
        break;
    }
}

/* The running operation is finished (its callback has run): free it and
 * start the next one. */
void aorm__session_op_done(aorm_session *s, aorm__sop *op) {
    aorm__assert(s->running == op);
    s->running = NULL;
    sop_free(op);
    if (!s->closing) start_next(s);
}

static void hold_error(aorm__sop *op, const aorm_error *err);

static void finish_err(aorm_session *s, aorm__sop *op, const aorm_error *err) {
    if (s->running != op) { /* an operation started ahead: answered in its turn */
        hold_error(op, err);
        return;
    }
    deliver(s, op, NULL, NULL, NULL, err);
    aorm__session_op_done(s, op);
}

static void fail_op(aorm_session *s, aorm__sop *op, int code, const char *msg) {
    aorm_error err = {.code = code, .message = msg ? msg : aorm_strerror(code), .detail = "", .hint = "",
                      .constraint = "", .table = "", .column = ""};
    finish_err(s, op, &err);
}

static const char TX_FAILED_MSG[] = "the session's transaction failed: roll it back first";

/* The held connection is gone: the transaction went with it. The
 * operation that finds out fails with AORM_ECONNLOST (SQLSTATE 08006) and
 * the session is rollback-required from then on. */
static void fail_conn_lost(aorm_session *s, aorm__sop *op) {
    s->tx = TX_FAILED;
    aorm_error err = {.code = AORM_ECONNLOST, .sqlstate = "08006",
                      .message = "connection lost inside the transaction: the transaction is gone, roll it back",
                      .detail = "", .hint = "", .constraint = "", .table = "", .column = ""};
    finish_err(s, op, &err);
}

/* A statement the session could not hand to its held connection because
 * the connection is lost (the engine refuses it with AORM_ECONNLOST)
 * fails the transaction like a statement that failed on the server. */
static void note_send_failure(aorm_session *s, int rc) {
    if (rc == AORM_ECONNLOST && s->conn) aorm__session_fail_tx(s);
}

/* ---- sending statements ------------------------------------------------------------- */

/* A statement failed inside the transaction: the server aborted it. */
void aorm__session_fail_tx(aorm_session *s) {
    if (s->tx == TX_ACTIVE || s->tx == TX_ACQUIRING) s->tx = TX_FAILED;
}

int aorm__session_send(aorm_session *s, aorm__sop *op, aorm_stmt *q, aorm_result_cb cb) {
    aorm_exec_options xo = aorm__session_xo(s, op, 0);
    int rc;
    if (s->conn) {
        rc = aorm_stmt_execute_on(s->conn, q, &xo, cb, op);
    } else {
        /* aorm_stmt_execute flags plain SELECTs read-only by itself */
        rc = aorm_stmt_execute(s->e, q, &xo, cb, op);
    }
    if (rc == 0) {
        s->statements++;
        op->pending++;
        op->in_tx = s->conn != NULL;
    }
    return rc;
}

/* ---- transactions ----------------------------------------------------------------- */

typedef void (*tx_then)(aorm__sop *op, const aorm_error *err);

/* BEGIN's answer. It may arrive after the operation that needed the
 * transaction has finished (everything behind BEGIN is pipelined), so it
 * carries the session, not the operation; only an explicit begin waits
 * for it to answer its caller. s->begins_out keeps the session alive. */
typedef struct begin_wait {
    aorm_session *s;
    aorm__sop *op;   /* SOP_BEGIN waiting for this answer, or NULL */
    tx_then then;
} begin_wait;

static void on_begin_result(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    begin_wait *w = user;
    aorm_session *s = w->s;
    aorm__sop *op = w->op;
    tx_then then = w->then;
    free(w);
    session_enter(s);
    s->begins_out--;
    if (op) {
        if (aorm__op_arrived(op)) {
            if (err) aorm__session_fail_tx(s);
            then(op, err);
        }
    } else if (err && !s->closing) {
        aorm__session_fail_tx(s); /* the statements behind it report it too */
    }
    session_leave(s);
}

typedef struct acquire_wait {
    aorm__sop *op;
    tx_then then;
} acquire_wait;

static void on_acquired(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    acquire_wait *w = user;
    aorm__sop *op = w->op;
    tx_then then = w->then;
    free(w);
    aorm_session *s = op->s;
    session_enter(s);
    if (!aorm__op_arrived(op)) {
        if (c) aorm_conn_release(c);
    } else if (err) {
        /* the transaction the caller asked for (its isolation, read-only
         * mode) never began: nothing may run as if it had, in another
         * transaction or in autocommit, until the caller rolls back */
        s->tx = TX_FAILED;
        then(op, err);
    } else {
        s->conn = c;
        s->tx = TX_ACTIVE;
        begin_wait *bw = malloc(sizeof(*bw));
        /* an explicit begin answers with BEGIN's own outcome; a lazy one
         * (run_transaction's) as soon as BEGIN is queued */
        bool wait = op->kind == SOP_BEGIN && !op->lazy;
        int rc = AORM_ENOMEM;
        if (bw) {
            *bw = (begin_wait){s, wait ? op : NULL, then};
            rc = aorm_conn_begin(c, op->has_tx ? &op->tx : NULL, on_begin_result, bw);
            if (rc < 0) free(bw);
        }
        if (rc == 0) {
            s->statements++;
            s->begins_out++;
            if (wait) op->pending++;
        }
        if (rc < 0) {
            aorm_conn_release(c);
            s->conn = NULL;
            s->tx = TX_FAILED; /* BEGIN was refused: as above */
            aorm_error e2 = {.code = rc, .message = aorm_strerror(rc), .detail = "", .hint = "",
                             .constraint = "", .table = "", .column = ""};
            then(op, &e2);
        } else if (!wait) {
            then(op, NULL);
        }
    }
    session_leave(s);
}

/* Makes sure the session holds a connection inside BEGIN, then calls
 * then(op, NULL) (or then(op, err)). BEGIN's own answer is not waited
 * for: what follows is pipelined behind it. */
void aorm__session_ensure_tx(aorm_session *s, aorm__sop *op, tx_then then) {
    if (s->tx == TX_ACTIVE) {
        then(op, NULL);
        return;
    }
    if (s->tx == TX_FAILED) {
        aorm_error err = {.code = AORM_ETXSTATE,
                          .message = "the session's transaction failed: roll it back first",
                          .detail = "", .hint = "", .constraint = "", .table = "", .column = ""};
        then(op, &err);
        return;
    }
    acquire_wait *w = malloc(sizeof(*w));
    int rc = w ? aorm_owner_acquire(s->owner, on_acquired, w) : AORM_ENOMEM;
    if (rc < 0) {
        free(w);
        s->tx = TX_FAILED; /* a failed begin is never forgotten (see on_acquired) */
        aorm_error err = {.code = rc, .message = aorm_strerror(rc), .detail = "", .hint = "",
                          .constraint = "", .table = "", .column = ""};
        then(op, &err);
        return;
    }
    w->op = op;
    w->then = then;
    op->pending++;
    s->tx = TX_ACQUIRING;
}

/* Leaves the transaction state (the callers then restore or confirm the
 * objects' states with aorm__flush_rollback_states/commit_states, which
 * consume the transaction's lists). */
static void end_tx(aorm_session *s) {
    if (s->conn) aorm_conn_release(s->conn);
    s->conn = NULL;
    s->tx = TX_NONE;
    s->savepoints = 0;
}

/* ---- operations: queries -------------------------------------------------------------- */

static void query_send(aorm__sop *op, const aorm_error *err);
static void deliver_rows(aorm__sop *op, void **items, size_t n, const aorm_error *err);

/* The start of an engine callback that answers op's statement: enters the
 * session and returns true when there is a result to process. Returns
 * false, with the session left, when the session is closing (op already
 * answered) or the statement failed (op answered with the error, and a
 * transaction marked failed). */
/* Was op sent down the transaction behind a statement that has failed
 * since? Then it answers AORM_ETXSTATE, as it would have had it waited
 * for that failure. A cancellation (the engine is being freed) is
 * reported as such. */
static bool skipped_behind_failure(const aorm_session *s, const aorm__sop *op, const aorm_error *err) {
    return op->ahead && op->in_tx && s->tx == TX_FAILED && !(err && err->code == AORM_ECANCELED);
}

static bool answer_begins(aorm__sop *op, const aorm_error *err) {
    aorm_session *s = op->s;
    session_enter(s);
    if (!aorm__op_arrived(op)) {
        session_leave(s);
        return false;
    }
    if (skipped_behind_failure(s, op, err)) {
        /* pipelined behind a statement that failed: the server skipped
         * it, and the session answers as it would have had it waited */
        fail_op(s, op, AORM_ETXSTATE, TX_FAILED_MSG);
        session_leave(s);
        return false;
    }
    if (err) {
        if (s->conn) aorm__session_fail_tx(s);
        finish_err(s, op, err);
        session_leave(s);
        return false;
    }
    return true;
}

/* The rows of res, an answer to op's query, as objects through the
 * identity map. Returns the number of rows with *out set (malloc'd, one
 * slot more than rows), or a negative code with *msg set. */
static int query_objects(aorm_session *s, aorm__sop *op, const aorm_result *res, void ***out, const char **msg) {
    const aorm_model *m = op->model ? op->model : aorm_stmt_model(op->stmt);
    int n = aorm_result_nrows(res);
    void **items = malloc(((size_t)n + 1) * sizeof(void *));
    *msg = NULL;
    s->decode_msg[0] = '\0';
    if (!items) return AORM_ENOMEM;
    int rc = aorm__session_materialize(s, op->stmt, res, m, op->qo.populate_existing || op->kind == SOP_REFRESH,
                                       items);
    if (rc < 0) {
        free(items);
        *msg = rc == AORM_EMISUSE ? "the query does not select the model's primary key"
               : rc == AORM_ENOMEM ? NULL
                                   : decode_message(s);
        return rc;
    }
    aorm__cache_loaded(op, items, (size_t)n);
    *out = items;
    return n;
}

static int get_object(aorm_session *s, aorm__sop *op, const aorm_result *res, void **obj);

/* ---- answers out of turn ---------------------------------------------------------
 * An operation started ahead (see pump) may be answered before the ones in
 * front of it: a read on another pooled connection, a deadline expiring,
 * a statement that could not be sent. Its answer is decoded at once (the
 * rows go into the identity map) and kept in the operation; its callback
 * runs in its turn (take_early). */

enum { HOLD_ROWS, HOLD_ROW, HOLD_STATUS };

static void hold_error(aorm__sop *op, const aorm_error *err) {
    early_drop(op);
    op->early = true;
    if (!(op->early_err = aorm_error_copy(err))) op->early_code = err->code ? err->code : AORM_ENOMEM;
}

/* Start of an engine callback of op: true when op's turn has not come and
 * its answer has been kept (the callback then returns). */
static bool hold_answer(aorm__sop *op, aorm_result *res, const aorm_error *err, int how) {
    aorm_session *s = op->s;
    if (s->closing || s->running == op) return false;
    session_enter(s);
    op->pending--;
    if (err) {
        hold_error(op, err);
    } else if (how == HOLD_STATUS) {
        early_drop(op);
        op->early = true;
    } else if (how == HOLD_ROW) {
        void *obj = NULL;
        int rc = get_object(s, op, res, &obj);
        if (rc < 0) {
            aorm_error e2 = {.code = rc, .message = rc == AORM_ENOMEM ? "out of memory" : decode_message(s), .detail = "",
                             .hint = "", .constraint = "", .table = "", .column = ""};
            hold_error(op, &e2);
        } else {
            early_drop(op);
            op->early = true;
            op->early_obj = obj;
        }
    } else if (op->kind == SOP_EXECUTE) {
        /* a result the caller sees as is cannot wait (execute is sent
         * ahead only on the held connection, which answers in order) */
        aorm_error e2 = {.code = AORM_EPROTOCOL, .message = "an answer arrived out of order", .detail = "",
                         .hint = "", .constraint = "", .table = "", .column = ""};
        hold_error(op, &e2);
    } else {
        void **items = NULL;
        const char *msg;
        int n = query_objects(s, op, res, &items, &msg);
        if (n < 0) {
            aorm_error e2 = {.code = n, .message = msg ? msg : aorm_strerror(n), .detail = "", .hint = "",
                             .constraint = "", .table = "", .column = ""};
            hold_error(op, &e2);
        } else {
            early_drop(op);
            op->early = true;
            op->early_items = items;
            op->early_n = (size_t)n;
        }
    }
    session_leave(s);
    return true;
}

static void early_drop(aorm__sop *op) {
    aorm_error_free(op->early_err);
    free(op->early_items);
    op->early_err = NULL;
    op->early_items = NULL;
    op->early_obj = NULL;
    op->early_n = 0;
    op->early_code = 0;
    op->early = false;
}

static void ahead_unlink(aorm_session *s, aorm__sop *op) {
    aorm__sop *prev = NULL;
    for (aorm__sop *x = s->a_head; x; prev = x, x = x->next) {
        if (x != op) continue;
        if (prev) prev->next = x->next;
        else s->a_head = x->next;
        if (s->a_tail == x) s->a_tail = prev;
        x->next = NULL;
        x->in_ahead = false;
        return;
    }
}

static void tx_answer(aorm__sop *op, const aorm_error *err);
static void pump(aorm_session *s);

/* op has sent its last statement: only its answer is to come, and what
 * is queued behind it may be sent now (a BEGIN that just got its
 * connection lets the rest of the turn's statements join it). */
static void sent_everything(aorm_session *s, aorm__sop *op) {
    op->sent_all = true;
    if (!s->closing) pump(s);
}

/* op's turn has come and its answer is already here. */
static void take_early(aorm_session *s, aorm__sop *op) {
    aorm_error *kept = op->early_err;
    void **items = op->early_items;
    size_t n = op->early_n;
    void *obj = op->early_obj;
    aorm_error lost = {.code = op->early_code, .message = aorm_strerror(op->early_code), .detail = "",
                       .hint = "", .constraint = "", .table = "", .column = ""};
    const aorm_error *err = kept ? kept : op->early_code ? &lost : NULL;
    op->early_err = NULL;
    op->early_items = NULL;
    op->early = false;
    if (op->kind == SOP_COMMIT) {
        tx_answer(op, err);
    } else if (skipped_behind_failure(s, op, err)) {
        fail_op(s, op, AORM_ETXSTATE, TX_FAILED_MSG);
    } else if (err) {
        if (op->in_tx) aorm__session_fail_tx(s);
        finish_err(s, op, err);
    } else if (items) {
        deliver_rows(op, items, n, NULL);
    } else {
        deliver(s, op, obj, NULL, NULL, NULL);
        aorm__session_op_done(s, op);
    }
    free(items);
    aorm_error_free(kept);
}

static void on_query_rows(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm__sop *op = user;
    aorm_session *s = op->s;
    if (hold_answer(op, res, err, HOLD_ROWS)) return;
    if (!answer_begins(op, err)) return;
    if (op->kind == SOP_EXECUTE) {
        deliver(s, op, NULL, NULL, res, NULL);
        aorm__session_op_done(s, op);
        session_leave(s);
        return;
    }
    void **items = NULL;
    const char *msg;
    int n = query_objects(s, op, res, &items, &msg);
    if (n < 0) {
        fail_op(s, op, n, msg);
        session_leave(s);
        return;
    }
    if (op->qo.load) { /* relationships first; the loaders call deliver_rows */
        aorm__loaders_after_query(op, res, items, (size_t)n, deliver_rows);
    } else {
        deliver_rows(op, items, (size_t)n, NULL);
        free(items);
    }
    session_leave(s);
}

/* Answers a get_many in key order, every key looked up in the identity
 * map (where the query just put its rows): NULL for a key without a row,
 * or whose object is marked deleted, as aorm_session_get answers. Returns
 * 0, or -1 after failing op (out of memory). */
static int deliver_by_keys(aorm_session *s, aorm__sop *op, const aorm_model *m) {
    void **byk = malloc((op->nkeys + 1) * sizeof(void *));
    if (!byk) {
        fail_op(s, op, AORM_ENOMEM, NULL);
        return -1;
    }
    for (size_t k = 0; k < op->nkeys; k++) {
        aorm__obj *h = aorm__idmap_find(&s->idmap, m, op->keys[k], aorm__key_hash(m, op->keys[k]));
        byk[k] = h && h->state != AORM_DELETED ? aorm__obj_data(h) : NULL;
    }
    aorm_objects objs = {byk, op->nkeys};
    deliver(s, op, NULL, &objs, NULL, NULL);
    free(byk);
    return 0;
}

/* Answers a query-like operation with its objects (rows in order; a plan
 * with joined collections repeats parents: they are de-duplicated). Does
 * not free items. */
static void deliver_rows(aorm__sop *op, void **items, size_t n, const aorm_error *err) {
    aorm_session *s = op->s;
    const aorm_model *m = op->model ? op->model : aorm_stmt_model(op->stmt);
    if (err) {
        finish_err(s, op, err);
        return;
    }
    if (op->qo.load && n > 1) {
        /* one pass with a mark on each object header, cleared after */
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (!items[i]) continue;
            aorm__obj *h = aorm__obj_hdr(items[i]); /* ours: from the identity map */
            if (h->flags & OBJ_SEEN) continue;
            h->flags |= OBJ_SEEN;
            items[k++] = items[i];
        }
        for (size_t i = 0; i < k; i++) aorm__obj_hdr(items[i])->flags &= (uint8_t)~OBJ_SEEN;
        n = k;
    }
    switch (op->kind) {
    case SOP_GET:
        if (op->nriders > 0) {
            /* one statement answered this get and the riders behind it:
             * every answer is in the identity map now */
            aorm__sop *r = s->a_head;
            for (int i = 0; i < op->nriders && r; i++, r = r->next)
                if (r->rider) r->covered = true;
            aorm__obj *h = aorm__idmap_find(&s->idmap, m, op->key, aorm__key_hash(m, op->key));
            deliver(s, op, h && h->state != AORM_DELETED ? aorm__obj_data(h) : NULL, NULL, NULL, NULL);
        } else {
            deliver(s, op, n > 0 ? items[0] : NULL, NULL, NULL, NULL);
        }
        break;
    case SOP_GET_MANY: {
        /* answer in key order: every key looked up again, now that the
         * rows are in the identity map */
        if (deliver_by_keys(s, op, m) < 0) return;
        break;
    }
    case SOP_REFRESH:
        if (n == 0) {
            fail_op(s, op, AORM_ENOTFOUND, "the object's row no longer exists");
            return;
        }
        deliver(s, op, NULL, NULL, NULL, NULL);
        break;
    case SOP_LOAD:
        deliver(s, op, NULL, NULL, NULL, NULL);
        break;
    default: {
        aorm_objects objs = {items, n};
        deliver(s, op, NULL, &objs, NULL, NULL);
        break;
    }
    }
    aorm__session_op_done(s, op);
}

static void query_send(aorm__sop *op, const aorm_error *err) {
    aorm_session *s = op->s;
    if (err) {
        finish_err(s, op, err);
        return;
    }
    if (op->qo.load && op->phase == 0) {
        op->phase = 1;
        s->errmsg[0] = '\0';
        int prc = aorm__loaders_prepare_query(op);
        if (prc < 0) {
            fail_op(s, op, prc, s->errmsg[0] ? s->errmsg : "the load plan could not be applied to this query");
            return;
        }
    }
    int rc = aorm__session_send(s, op, op->stmt, on_query_rows);
    if (rc < 0) {
        note_send_failure(s, rc);
        fail_op(s, op, rc, aorm_stmt_error(op->stmt) ? aorm_stmt_errmsg(op->stmt) : NULL);
    } else if (!op->qo.load) {
        sent_everything(s, op);
    }
}

static void after_autoflush(aorm__sop *op, const aorm_error *err) {
    aorm_session *s = op->s;
    if (err) {
        finish_err(s, op, err);
        return;
    }
    /* a locking read needs the transaction; plain reads go wherever the
     * session is (its connection when in a transaction) */
    if (op->kind == SOP_QUERY && op->qo.cache && s->o.cache) {
        void **items = NULL;
        size_t n = 0;
        int q = aorm__cache_query_start(op, &items, &n);
        if (q == 1) return; /* resumed once Redis has answered */
        if (q == 2) {       /* answered by the query cache: no statement */
            deliver_rows(op, items, n, NULL);
            free(items);
            return;
        }
    }
    if (op->stmt && !aorm_stmt_readonly(op->stmt) && s->tx == TX_NONE)
        aorm__session_ensure_tx(s, op, query_send);
    else
        query_send(op, NULL);
}

/* A query that names no load plan gets the relationships' defaults. */
static void default_plan(aorm_session *s, aorm__sop *op) {
    if (op->qo.load || op->kind == SOP_EXECUTE || op->kind == SOP_REFRESH) return;
    const aorm_model *m = op->model ? op->model : (op->stmt ? aorm_stmt_model(op->stmt) : NULL);
    if (m) op->qo.load = aorm__loaders_default_plan(s, m);
}

static void start_query(aorm_session *s, aorm__sop *op) {
    if (op->kind == SOP_EXECUTE) aorm__cache_note_stmt(s, op->stmt); /* a Core write: its table's cache goes at commit */
    default_plan(s, op);
    if (s->tx == TX_FAILED) {
        fail_op(s, op, AORM_ETXSTATE, "the session's transaction failed: roll it back first");
        return;
    }
    if (s->o.autoflush && aorm__session_has_changes(s)) {
        aorm__flush_start(op, after_autoflush);
        return;
    }
    after_autoflush(op, NULL);
}

/* The primary-key lookup of model m, compiled once per session: gets of a
 * model all send the same text (the engine's prepared statement), only
 * the key parameters change. The select list is every column in
 * declaration order, so results map by position. */
static const char *get_sql(aorm_session *s, const aorm_model *m, const void *key) {
    for (struct get_sql_entry *g = s->get_sqls; g; g = g->next)
        if (g->model == m) return g->sql;
    aorm_stmt *q = aorm_select(m);
    const char *text = NULL;
    if (q && where_key(q, m, key) == 0 && aorm_stmt_compile(q) == 0) text = aorm_stmt_sql(q);
    struct get_sql_entry *g = text ? aorm__region_alloc(&s->region, sizeof(*g)) : NULL;
    if (g && (g->sql = aorm__region_strdup(&s->region, text)) != NULL) {
        g->model = m;
        g->next = s->get_sqls;
        s->get_sqls = g;
    } else {
        g = NULL;
    }
    aorm_stmt_free(q);
    return g ? g->sql : NULL;
}

static void on_get_rows(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user);

/* Can `r`, queued right behind the get `op`, be answered by op's
 * statement? The same model and options, and nothing else in between. */
static bool rides_with(const aorm_session *s, const aorm__sop *op, const aorm__sop *r) {
    return r->kind == SOP_GET && r->model == op->model && !r->qo.load && !r->qo.populate_existing &&
           r->qo.deadline == op->qo.deadline && !s->o.cache; /* op's model has no default load plan */
}

/* Gets of one model queued one after the other (a handler answering 20
 * ids at once) go out as one `pk = ANY($1)` statement: the gets behind
 * op leave the queue as its riders, on the ahead list right behind it,
 * and are answered from the identity map in their turns. Returns 1 when
 * the statement is out (op is then waiting for it), 0 when op has no
 * riders (it sends its own lookup), or a negative code. */
static int send_merged_get(aorm_session *s, aorm__sop *op) {
    const aorm_model *m = op->model;
    if (!s->q_head || !rides_with(s, op, s->q_head)) return 0;
    const aorm_column *pk[AORM_KEY_MAX];
    int npk = aorm_model_pk_count(m);
    if (npk < 1 || npk > AORM_KEY_MAX) return 0;
    for (int i = 0; i < npk; i++) {
        pk[i] = aorm_model_pk(m, i);
        if (!aorm__field_array_type(pk[i])) return 0;
    }
    size_t nr = 0;
    for (aorm__sop *r = s->q_head; r && rides_with(s, op, r); r = r->next) nr++;
    void **keys = malloc((nr + 1) * sizeof(void *));
    if (!keys) return 0;
    size_t nkeys = 0;
    keys[nkeys++] = op->key;
    for (size_t i = 0; i < nr; i++) {
        aorm__sop *r = s->q_head;
        s->q_head = r->next;
        if (!s->q_head) s->q_tail = NULL;
        r->next = NULL;
        r->rider = r->ahead = r->in_ahead = r->sent_all = true;
        if (s->a_tail) s->a_tail->next = r;
        else s->a_head = r;
        s->a_tail = r;
        aorm__obj *h = aorm__idmap_find(&s->idmap, m, r->key, aorm__key_hash(m, r->key));
        if (!h || (h->flags & OBJ_EXPIRED)) keys[nkeys++] = r->key;
    }
    op->nriders = (int)nr;
    aorm__assert(!op->stmt);
    op->stmt = aorm_select(m);
    int rc = op->stmt ? aorm__where_key_in(op->stmt, m, pk, pk, npk, keys, nkeys) : AORM_ENOMEM;
    free(keys);
    if (rc == 0) rc = aorm__session_send(s, op, op->stmt, on_query_rows);
    if (rc < 0) {
        op->nriders = 0; /* the riders, not covered, send their own lookups in their turns */
        note_send_failure(s, rc);
        return rc;
    }
    sent_everything(s, op);
    return 1;
}

static void start_get(aorm_session *s, aorm__sop *op) {
    const aorm_model *m = op->model;
    if (s->tx == TX_FAILED) {
        fail_op(s, op, AORM_ETXSTATE, "the session's transaction failed: roll it back first");
        return;
    }
    if (op->covered) {
        /* a rider: the statement of the get in front of it has put its
         * row, if there is one, in the identity map */
        aorm__obj *h = aorm__idmap_find(&s->idmap, m, op->key, aorm__key_hash(m, op->key));
        bool found = h && !(h->flags & OBJ_EXPIRED) && h->state != AORM_DELETED;
        deliver(s, op, found ? aorm__obj_data(h) : NULL, NULL, NULL, NULL);
        aorm__session_op_done(s, op);
        return;
    }
    if (aorm__cache_read_start(op)) return; /* resumed once Redis has answered */
    aorm__obj *h = aorm__idmap_find(&s->idmap, m, op->key, aorm__key_hash(m, op->key));
    if (h && !(h->flags & OBJ_EXPIRED) && !op->qo.populate_existing) {
        /* the identity map answers: no statement */
        deliver(s, op, h->state == AORM_DELETED ? NULL : aorm__obj_data(h), NULL, NULL, NULL);
        aorm__session_op_done(s, op);
        return;
    }
    if (s->tx == TX_FAILED) {
        fail_op(s, op, AORM_ETXSTATE, "the session's transaction failed: roll it back first");
        return;
    }
    default_plan(s, op);
    if (!op->qo.load && !(s->o.autoflush && aorm__session_has_changes(s))) {
        if (!op->qo.populate_existing) {
            int mrc = send_merged_get(s, op);
            if (mrc > 0) return;
            if (mrc < 0) {
                fail_op(s, op, mrc, "cannot send the primary-key lookup");
                return;
            }
        }
        /* the common case: a cached statement text and the key as parameters */
        const char *sql = get_sql(s, m, op->key);
        aorm_params p;
        aorm_params_init(&p);
        for (int i = 0; i < m->ncolumns && sql; i++)
            if (m->columns[i].flags & AORM_PK) aorm__field_param(&m->columns[i], op->key, &p);
        aorm_exec_options xo = aorm__session_xo(s, op, AORM_EXEC_READONLY);
        int rc = !sql ? AORM_ENOMEM
                 : s->conn ? aorm_conn_execute(s->conn, sql, &p, &xo, on_get_rows, op)
                           : aorm_engine_execute(s->e, sql, &p, &xo, on_get_rows, op);
        aorm_params_free(&p);
        if (rc < 0) {
            note_send_failure(s, rc);
            fail_op(s, op, rc, "cannot send the primary-key lookup");
            return;
        }
        s->statements++;
        op->pending++;
        op->in_tx = s->conn != NULL;
        sent_everything(s, op);
        return;
    }
    op->stmt = aorm_select(m);
    int rc = op->stmt ? where_key(op->stmt, m, op->key) : AORM_ENOMEM;
    if (rc < 0) {
        fail_op(s, op, rc, "cannot build the primary-key lookup");
        return;
    }
    start_query(s, op);
}

/* The object of res, the answer to op's primary-key lookup (every
 * column, in declaration order), through the identity map: *obj, NULL
 * when there is no row. Returns 0 or a negative code. */
static int get_object(aorm_session *s, aorm__sop *op, const aorm_result *res, void **obj) {
    const aorm_model *m = op->model;
    int pos_stack[32] = {0};
    int *pos = m->ncolumns <= 32 ? pos_stack : malloc((size_t)m->ncolumns * sizeof(int));
    if (!pos) return AORM_ENOMEM;
    for (int i = 0; i < m->ncolumns; i++) pos[i] = i; /* every column, in order */
    *obj = NULL;
    s->decode_msg[0] = '\0';
    aorm__rowplan rp;
    int rc = aorm__rowplan_init(&rp, res, m, pos);
    if (rc == 0 && aorm_result_nrows(res) > 0) rc = aorm__session_materialize_row(s, &rp, 0, op->qo.populate_existing, obj);
    if (rc != AORM_ENOMEM || rp.cols) aorm__rowplan_free(&rp);
    if (pos != pos_stack) free(pos);
    if (rc >= 0) aorm__cache_loaded(op, obj, *obj ? 1 : 0);
    return rc < 0 ? rc : 0;
}

static void on_get_rows(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm__sop *op = user;
    aorm_session *s = op->s;
    if (hold_answer(op, res, err, HOLD_ROW)) return;
    if (!answer_begins(op, err)) return;
    void *obj = NULL;
    int rc = get_object(s, op, res, &obj);
    if (rc < 0) fail_op(s, op, rc, rc == AORM_ENOMEM ? NULL : decode_message(s));
    else {
        deliver(s, op, obj, NULL, NULL, NULL);
        aorm__session_op_done(s, op);
    }
    session_leave(s);
}

static void start_get_many(aorm_session *s, aorm__sop *op) {
    const aorm_model *m = op->model;
    if (s->tx == TX_FAILED) {
        fail_op(s, op, AORM_ETXSTATE, "the session's transaction failed: roll it back first");
        return;
    }
    if (aorm__cache_read_start(op)) return; /* resumed once Redis has answered */
    void **cached = NULL;
    if (op->cache && aorm__cache_take_answer(op, &cached)) { /* Redis answered every key */
        aorm_objects objs = {cached, op->nkeys};
        deliver(s, op, NULL, &objs, NULL, NULL);
        free(cached);
        aorm__session_op_done(s, op);
        return;
    }
    /* the keys the identity map cannot answer go into one statement */
    const aorm_column *pk[AORM_KEY_MAX];
    int npk = aorm_model_pk_count(m);
    for (int i = 0; i < npk; i++) pk[i] = aorm_model_pk(m, i);
    size_t missing = 0;
    void **keys = malloc((op->nkeys + 1) * sizeof(void *));
    if (!keys) {
        fail_op(s, op, AORM_ENOMEM, NULL);
        return;
    }
    for (size_t k = 0; k < op->nkeys; k++) {
        aorm__obj *h = aorm__idmap_find(&s->idmap, m, op->keys[k], aorm__key_hash(m, op->keys[k]));
        if (h && !(h->flags & OBJ_EXPIRED) && !op->qo.populate_existing) continue;
        keys[missing++] = op->keys[k];
    }
    if (missing == 0) {
        free(keys);
        if (deliver_by_keys(s, op, m) == 0) aorm__session_op_done(s, op);
        return;
    }
    /* `pk = ANY($1)`, or `(pk1, pk2) IN (SELECT * FROM unnest($1, $2))` */
    op->stmt = aorm_select(m);
    int rc = op->stmt ? aorm__where_key_in(op->stmt, m, pk, pk, npk, keys, missing) : AORM_ENOMEM;
    free(keys);
    if (rc < 0) {
        fail_op(s, op, rc, "cannot build the key lookup");
        return;
    }
    start_query(s, op);
}

static void start_refresh(aorm_session *s, aorm__sop *op) {
    aorm__obj *h = aorm__obj_of(s, op->obj);
    if (!h || h->state != AORM_PERSISTENT) {
        fail_op(s, op, AORM_EMISUSE, "only persistent objects can be refreshed");
        return;
    }
    op->model = h->model;
    op->stmt = aorm_select(h->model);
    int rc = op->stmt ? where_key(op->stmt, h->model, op->obj) : AORM_ENOMEM;
    if (rc < 0) {
        fail_op(s, op, rc, "cannot build the primary-key lookup");
        return;
    }
    op->qo.populate_existing = true;
    after_autoflush(op, NULL); /* no autoflush: it would write what refresh discards */
}

/* ---- operations: transactions ------------------------------------------------------------ */

/* A COMMIT's error says nothing was committed when the server answered
 * it (ESERVER: a deferred constraint, a serialization failure, 25P02
 * after a failed statement), when it was never sent (ENOT_COMMITTED), or
 * when the server skipped it (EABORTED). Anything else (UNKNOWN_OUTCOME,
 * and, to be safe, any code the engine might report for a COMMIT cut off
 * after it was sent) leaves the outcome unknown. */
static bool commit_outcome_known(const aorm_error *err) {
    return err->code == AORM_ESERVER || err->code == AORM_ENOT_COMMITTED || err->code == AORM_EABORTED;
}

/* The COMMIT never reached the server: the transaction ends as a rollback
 * (the engine rolls back the released connection) and the caller gets
 * AORM_ENOT_COMMITTED. */
static void not_committed(aorm_session *s, aorm__sop *op, const char *msg) {
    aorm__flush_rollback_states(s);
    end_tx(s);
    fail_op(s, op, AORM_ENOT_COMMITTED, msg);
}

/* The answer to a transaction statement of op, in op's turn (inside
 * session_enter). */
static void tx_answer(aorm__sop *op, const aorm_error *err) {
    aorm_session *s = op->s;
    switch (op->kind) {
    case SOP_COMMIT:
        if (op->ahead && s->tx == TX_FAILED && err && commit_outcome_known(err)) {
            /* pipelined behind a statement that failed: the server
             * rolled back, and the session stays rollback-required, as
             * if the COMMIT had waited for that failure */
            fail_op(s, op, AORM_ETXSTATE, TX_FAILED_MSG);
            return;
        }
        end_tx(s);
        if (err && commit_outcome_known(err)) {
            /* the server refused the COMMIT (deferred constraint,
             * serialization failure) or it was never sent: nothing was
             * committed, the objects are as after a rollback */
            aorm__flush_rollback_states(s);
        } else if (err) {
            /* sent and unanswered: committed or not, nobody knows. What
             * the transaction wrote leaves the session, so that nothing
             * is written twice */
            aorm__flush_unknown_states(s);
        } else {
            aorm__flush_commit_states(s);
            if (s->o.expire_on_commit)
                for (aorm__obj *h = s->tracked; h; h = h->track_next)
                    if (h->state == AORM_PERSISTENT) h->flags |= OBJ_EXPIRED;
        }
        break;
    case SOP_ROLLBACK:
        end_tx(s);
        aorm__flush_rollback_states(s);
        break;
    case SOP_SAVEPOINT:
        if (!err) s->savepoints++;
        else aorm__session_fail_tx(s);
        break;
    case SOP_RELEASE_SAVEPOINT:
    case SOP_ROLLBACK_SAVEPOINT:
        if (!err) {
            s->savepoints--;
            if (op->kind == SOP_ROLLBACK_SAVEPOINT && s->tx == TX_FAILED) s->tx = TX_ACTIVE;
        } else {
            aorm__session_fail_tx(s);
        }
        break;
    default:
        break;
    }
    finish_err(s, op, err);
}

static void on_tx_stmt(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    aorm__sop *op = user;
    aorm_session *s = op->s;
    if (hold_answer(op, res, err, HOLD_STATUS)) return;
    session_enter(s);
    if (aorm__op_arrived(op)) tx_answer(op, err);
    session_leave(s);
}

static void commit_send(aorm__sop *op, const aorm_error *err) {
    aorm_session *s = op->s;
    if (err) {
        finish_err(s, op, err);
        return;
    }
    if (!s->conn) { /* nothing was ever written: nothing to commit */
        aorm__flush_commit_states(s);
        finish_err(s, op, NULL);
        return;
    }
    int rc = aorm_conn_commit(s->conn, on_tx_stmt, op);
    if (rc == 0) op->phase = 1; /* the COMMIT is out: from now on its outcome may be unknown */
    if (rc < 0 && s->running != op) {
        /* started ahead: the transaction ends in its turn, as a rollback */
        aorm_error e2 = {.code = AORM_ENOT_COMMITTED, .message = "COMMIT could not be sent: nothing was committed",
                         .detail = "", .hint = "", .constraint = "", .table = "", .column = ""};
        hold_error(op, &e2);
    } else if (rc < 0) {
        /* refused before anything was sent (e.g. the connection was
         * already known to be lost): the outcome is known, nothing
         * committed, and releasing the connection rolls back */
        not_committed(s, op, rc == AORM_ECONNLOST ? "connection lost before COMMIT: nothing was committed"
                                                  : "COMMIT could not be sent: nothing was committed");
    } else {
        s->statements++;
        op->pending++;
        op->in_tx = true;
    }
}

static void start_commit(aorm_session *s, aorm__sop *op) {
    if (s->tx == TX_FAILED) {
        fail_op(s, op, AORM_ETXSTATE, "the session's transaction failed: roll it back first");
        return;
    }
    if (held_conn_lost(s)) { /* lost while the session had nothing on it */
        not_committed(s, op, "connection lost before COMMIT: nothing was committed");
        return;
    }
    if (aorm__session_has_changes(s)) aorm__flush_start(op, commit_send);
    else commit_send(op, NULL);
}

static void start_rollback(aorm_session *s, aorm__sop *op) {
    if (!s->conn) {
        end_tx(s);
        aorm__flush_rollback_states(s);
        finish_err(s, op, NULL);
        return;
    }
    int rc = aorm_conn_rollback(s->conn, on_tx_stmt, op);
    if (rc < 0) { /* connection lost: the server rolled back on its own */
        end_tx(s);
        aorm__flush_rollback_states(s);
        finish_err(s, op, NULL);
    } else {
        s->statements++;
        op->pending++;
    }
}

static void begin_done(aorm__sop *op, const aorm_error *err) { finish_err(op->s, op, err); }

static void savepoint_send(aorm__sop *op, const aorm_error *err) {
    aorm_session *s = op->s;
    if (err) {
        finish_err(s, op, err);
        return;
    }
    char name[32];
    int depth = op->kind == SOP_SAVEPOINT ? s->savepoints + 1 : s->savepoints;
    snprintf(name, sizeof(name), "aorm_sp_%d", depth);
    int rc;
    if (op->kind == SOP_SAVEPOINT) rc = aorm_conn_savepoint(s->conn, name, on_tx_stmt, op);
    else if (op->kind == SOP_RELEASE_SAVEPOINT) rc = aorm_conn_release_savepoint(s->conn, name, on_tx_stmt, op);
    else rc = aorm_conn_rollback_to(s->conn, name, on_tx_stmt, op);
    if (rc < 0) {
        note_send_failure(s, rc);
        fail_op(s, op, rc, NULL);
    } else {
        s->statements++;
        op->pending++;
    }
}

/* ---- operations: streams -------------------------------------------------------------- */

typedef struct stream_run {
    aorm_stream *st;      /* the engine's stream, until its end call */
    aorm__region batch;   /* release: the current batch's objects and strings, in buf first */
    void *buf;            /* release: the batch memory, reused by every batch */
    size_t buf_size;
    int size;
    bool release;
    bool paused;
} stream_run;

static void stream_run_free(void *p) {
    stream_run *x = p;
    aorm__region_free(&x->batch);
    free(x->buf);
    free(x);
}

/* The rows of a batch as plain structs in the batch region (release):
 * decoded as the identity map's objects are (load_cols), the region
 * swapped in for the strings. Returns 0 or a negative code. */
static int stream_decode_released(aorm_session *s, aorm__sop *op, stream_run *x, const aorm_result *res,
                                  void **items) {
    const aorm_model *m = aorm_stmt_model(op->stmt);
    int pos_stack[32];
    int *pos = m->ncolumns <= 32 ? pos_stack : malloc((size_t)m->ncolumns * sizeof(int));
    if (!pos) return AORM_ENOMEM;
    aorm__model_positions(op->stmt, m, pos);
    aorm__rowplan rp;
    int rc = aorm__rowplan_init(&rp, res, m, pos);
    /* the previous batch is gone: its memory is reused (the stream's own
     * block, allocated once; what a batch of wide rows needs beyond it
     * comes in blocks freed with the batch) */
    if (!x->buf) {
        x->buf_size = (size_t)x->size * (((m->size + 15) & ~(size_t)15) + 32);
        if (!(x->buf = aorm__calloc_prefaulted(x->buf_size))) rc = AORM_ENOMEM;
    }
    aorm__bump_free(&x->batch);
    aorm__bump_init(&x->batch, x->buf, x->buf ? x->buf_size : 0, 65536, 1u << 20, 16384, false);
    aorm__region saved = s->region;
    s->region = x->batch;
    for (int r = 0; rc == 0 && r < rp.nrows; r++) {
        /* outside the session's region: aorm__obj_of() does not know it
         * (DETACHED), so it needs no header */
        void *obj = aorm__region_alloc(&s->region, m->size);
        if (!obj) {
            rc = AORM_ENOMEM;
            break;
        }
        memset(obj, 0, m->size);
        items[r] = obj;
        rc = load_cols(s, &rp, r, obj, NULL, 0, rp.n);
    }
    x->batch = s->region;
    s->region = saved;
    if (rc != AORM_ENOMEM || rp.cols) aorm__rowplan_free(&rp);
    if (pos != pos_stack) free(pos);
    return rc;
}

static int on_stream(aorm_conn *c, aorm_result *batch, const aorm_error *err, void *user) {
    aorm__sop *op = user;
    aorm_session *s = op->s;
    stream_run *x = op->ext;
    (void)c;
    session_enter(s);
    if (!batch) { /* the end */
        x->st = NULL;
        if (aorm__op_arrived(op)) {
            if (err && s->conn) aorm__session_fail_tx(s);
            finish_err(s, op, err);
        }
        session_leave(s);
        return AORM_STREAM_STOP;
    }
    int what = AORM_STREAM_STOP;
    if (s->closing || op->answered) goto out;
    int n = aorm_result_nrows(batch);
    void **items = malloc(((size_t)n + 1) * sizeof(void *));
    int rc = items ? 0 : AORM_ENOMEM;
    s->decode_msg[0] = '\0';
    if (rc == 0 && x->release) rc = stream_decode_released(s, op, x, batch, items);
    else if (rc == 0) rc = aorm__session_materialize(s, op->stmt, batch, aorm_stmt_model(op->stmt), false, items);
    if (rc < 0) {
        /* the stream stops; its end answers the operation with this error */
        free(items);
        aorm_error e2 = {.code = rc, .message = rc == AORM_ENOMEM ? "out of memory" : decode_message(s), .detail = "",
                         .hint = "", .constraint = "", .table = "", .column = ""};
        deliver(s, op, NULL, NULL, NULL, &e2);
        goto out;
    }
    aorm_objects objs = {items, (size_t)n};
    what = op->cb.stream(s, &objs, NULL, op->user);
    free(items);
    if (s->closing) what = AORM_STREAM_STOP;
    else if (what == AORM_STREAM_PAUSE) x->paused = true;
    else if (what != AORM_STREAM_NEXT) what = AORM_STREAM_STOP;
out:
    session_leave(s);
    return what;
}

static void stream_send(aorm__sop *op, const aorm_error *err) {
    aorm_session *s = op->s;
    stream_run *x = op->ext;
    if (err) {
        finish_err(s, op, err);
        return;
    }
    int rc = aorm_conn_stream(s->conn, aorm_stmt_sql(op->stmt), aorm_stmt_params(op->stmt), x->size, on_stream, op,
                              &x->st);
    if (rc < 0) {
        note_send_failure(s, rc);
        fail_op(s, op, rc, NULL);
        return;
    }
    s->statements += 2; /* DECLARE and the first FETCH; later FETCHes are the stream's own */
    op->pending++;
}

static void stream_begin(aorm__sop *op, const aorm_error *err) {
    if (err) {
        finish_err(op->s, op, err);
        return;
    }
    aorm__session_ensure_tx(op->s, op, stream_send); /* a cursor lives in a transaction */
}

static void start_stream(aorm_session *s, aorm__sop *op) {
    if (s->tx == TX_FAILED) {
        fail_op(s, op, AORM_ETXSTATE, TX_FAILED_MSG);
        return;
    }
    if (s->o.autoflush && aorm__session_has_changes(s)) aorm__flush_start(op, stream_begin);
    else stream_begin(op, NULL);
}

void aorm_stream_options_init(aorm_stream_options *o) {
    if (!o) return;
    memset(o, 0, sizeof(*o));
    o->batch = 1000;
}

int aorm_session_stream_resume(aorm_session *s) {
    if (!s || !s->running || s->running->kind != SOP_STREAM) return AORM_EMISUSE;
    stream_run *x = s->running->ext;
    if (!x || !x->paused || !x->st) return AORM_EMISUSE;
    x->paused = false;
    return aorm_stream_resume(x->st);
}

static void start_savepoint_op(aorm_session *s, aorm__sop *op) {
    if (op->kind != SOP_SAVEPOINT) {
        if (s->savepoints == 0) {
            fail_op(s, op, AORM_ETXSTATE, "no nested transaction is open");
            return;
        }
        savepoint_send(op, NULL);
        return;
    }
    if (s->tx == TX_FAILED) {
        fail_op(s, op, AORM_ETXSTATE, "the session's transaction failed: roll it back first");
        return;
    }
    if (aorm__session_has_changes(s)) { /* changes before the savepoint belong before it */
        aorm__flush_start(op, savepoint_send);
        return;
    }
    aorm__session_ensure_tx(s, op, savepoint_send);
}

static void start_op(aorm_session *s, aorm__sop *op) {
    /* the engine saw the held connection go while the session had nothing
     * on it: the first operation to need it finds out (a commit says that
     * nothing was committed, see start_commit; a rollback just ends) */
    if (held_conn_lost(s) && op->kind != SOP_COMMIT && op->kind != SOP_ROLLBACK && op->kind != SOP_NOOP) {
        fail_conn_lost(s, op);
        return;
    }
    switch (op->kind) {
    case SOP_QUERY:
    case SOP_EXECUTE:
        start_query(s, op);
        break;
    case SOP_GET:
        start_get(s, op);
        break;
    case SOP_GET_MANY:
        start_get_many(s, op);
        break;
    case SOP_REFRESH:
        start_refresh(s, op);
        break;
    case SOP_FLUSH:
        if (s->tx == TX_FAILED) fail_op(s, op, AORM_ETXSTATE, "the session's transaction failed: roll it back first");
        else if (!aorm__session_has_changes(s)) finish_err(s, op, NULL);
        else aorm__flush_start(op, begin_done);
        break;
    case SOP_COMMIT:
        start_commit(s, op);
        break;
    case SOP_ROLLBACK:
        start_rollback(s, op);
        break;
    case SOP_BEGIN:
        if (s->tx != TX_NONE) fail_op(s, op, AORM_ETXSTATE, "a transaction is already open");
        else {
            aorm__cache_note_begin(s); /* its isolation may not be read committed: no cache reads in it */
            aorm__session_ensure_tx(s, op, begin_done);
        }
        break;
    case SOP_SAVEPOINT:
    case SOP_RELEASE_SAVEPOINT:
    case SOP_ROLLBACK_SAVEPOINT:
        start_savepoint_op(s, op);
        break;
    case SOP_LOAD:
        if (s->tx == TX_FAILED) {
            fail_op(s, op, AORM_ETXSTATE, "the session's transaction failed: roll it back first");
        } else {
            void **objs = op->keys; /* the objects to load for */
            op->keys = NULL;
            aorm__loaders_start_explicit(op, objs, op->nkeys, deliver_rows);
        }
        break;
    case SOP_STREAM:
        start_stream(s, op);
        break;
    case SOP_NOOP:
        finish_err(s, op, NULL);
        break;
    }
}

/* Can op, next in the queue, be started now, behind operations that
 * have sent everything and wait for their answers? Only an operation that
 * sends one statement and has nothing to answer before that statement's
 * own answer: a read (in autocommit, or on the held connection), a Core
 * or raw statement or a COMMIT inside the transaction. Nothing that
 * flushes first, loads relationships, needs a connection of its own or is
 * answered without a statement (its answer would come before its turn),
 * and nothing in a failed transaction. */
static bool can_go_ahead(aorm_session *s, aorm__sop *op) {
    if (s->closing || engine_closing(s) || held_conn_lost(s)) return false;
    if (s->tx != TX_NONE && s->tx != TX_ACTIVE) return false;
    bool in_tx = s->tx == TX_ACTIVE && s->conn;
    switch (op->kind) {
    case SOP_GET: {
        if (s->o.cache) return false; /* the second-level cache may answer it first */
        default_plan(s, op);
        if (op->qo.load || op->qo.populate_existing) return false;
        if (s->o.autoflush && aorm__session_has_changes(s)) return false;
        aorm__obj *h = aorm__idmap_find(&s->idmap, op->model, op->key, aorm__key_hash(op->model, op->key));
        return !h || (h->flags & OBJ_EXPIRED);
    }
    case SOP_GET_MANY: {
        if (s->o.cache) return false;
        default_plan(s, op);
        if (op->qo.load || op->qo.populate_existing) return false;
        if (s->o.autoflush && aorm__session_has_changes(s)) return false;
        for (size_t k = 0; k < op->nkeys; k++) {
            aorm__obj *h = aorm__idmap_find(&s->idmap, op->model, op->keys[k], aorm__key_hash(op->model, op->keys[k]));
            if (!h || (h->flags & OBJ_EXPIRED)) return true; /* a statement will be sent */
        }
        return false;
    }
    case SOP_QUERY:
        if (s->o.cache && op->qo.cache) return false; /* the query cache may answer it first */
        default_plan(s, op);
        if (op->qo.load || (s->o.autoflush && aorm__session_has_changes(s))) return false;
        return aorm_stmt_readonly(op->stmt) || in_tx;
    case SOP_EXECUTE:
        /* its result goes to the caller as it came: only the held
         * connection, which answers in order, keeps that order */
        return in_tx && !(s->o.autoflush && aorm__session_has_changes(s));
    case SOP_COMMIT:
        /* nothing is started behind it: what follows a COMMIT runs
         * outside its transaction (see sent_all) */
        return in_tx && !aorm__session_has_changes(s);
    case SOP_REFRESH:
    case SOP_FLUSH:
    case SOP_ROLLBACK:
    case SOP_BEGIN:
    case SOP_SAVEPOINT:
    case SOP_RELEASE_SAVEPOINT:
    case SOP_ROLLBACK_SAVEPOINT:
    case SOP_LOAD:
    case SOP_STREAM:
    case SOP_NOOP:
        return false;
    }
    return false;
}

/* Runs the queue: starts the next operation when none is running, and
 * behind a running operation whose statements are all out starts the
 * following ones too (can_go_ahead), so that what a session queues in one
 * loop turn goes out in one pipeline write. Operations started ahead wait
 * on the ahead list; each is answered in its turn, when the one in front
 * of it has called back (take_early when its answer came first). A rider
 * (a get merged into the statement of the get in front of it) starts in
 * its turn, and the identity map answers it.
 *
 * Iterative: a call from inside it (an operation that finishes at once,
 * a callback that queues more) returns at once and the loop here picks
 * the work up, so a long queue never deepens the stack. Call inside
 * session_enter. */
static void pump(aorm_session *s) {
    if (s->pumping) return;
    s->pumping = true;
    while (!s->closing) {
        if (!s->running && s->a_head) {
            aorm__sop *op = s->a_head;
            s->a_head = op->next;
            if (!s->a_head) s->a_tail = NULL;
            op->next = NULL;
            op->in_ahead = false;
            s->running = op;
            if (op->answered) { /* cancelled while waiting (the engine was freed) */
                aorm__assert(op->pending == 0);
                s->running = NULL;
                sop_free(op);
            } else if (op->early) {
                take_early(s, op);
            } else if (op->rider) {
                start_op(s, op);
            }
            continue;
        }
        if (!s->running) {
            if (engine_closing(s)) {
                cancel_queued(s, "cancelled: the engine was freed");
                break;
            }
            aorm__sop *op = s->q_head;
            if (!op) break;
            s->q_head = op->next;
            if (!s->q_head) s->q_tail = NULL;
            s->running = op;
            start_op(s, op);
            continue;
        }
        if (!s->q_head || !takes_more(s) || !can_go_ahead(s, s->q_head)) break;
        aorm__sop *op = s->q_head;
        s->q_head = op->next;
        if (!s->q_head) s->q_tail = NULL;
        op->next = NULL;
        op->ahead = op->in_ahead = true;
        if (s->a_tail) s->a_tail->next = op;
        else s->a_head = op;
        s->a_tail = op;
        start_op(s, op);
    }
    s->pumping = false;
}

static void start_next(aorm_session *s) { pump(s); }

void aorm__session_resume(aorm__sop *op) {
    aorm__assert(op->s->running == op);
    start_op(op->s, op);
}

aorm__obj *aorm__session_new_row(aorm_session *s, const aorm_model *m, uint64_t hash) {
    /* header, object and snapshot in one allocation, as row_new does */
    size_t osize = (m->size + 15) & ~(size_t)15, span = aorm__colspan(m);
    aorm__obj *h = aorm__region_alloc(&s->region, sizeof(aorm__obj) + osize + span);
    if (!h) return NULL;
    *h = (aorm__obj){.model = m,
                     .snapshot = (char *)aorm__obj_data(h) + osize,
                     .key_hash = hash,
                     .magic = AORM__OBJ_MAGIC,
                     .state = AORM_PERSISTENT,
                     .seq = ++s->next_seq};
    memset(aorm__obj_data(h), 0, m->size);
    return h;
}

int aorm__session_adopt_row(aorm_session *s, aorm__obj *h) {
    aorm__session_take_snapshot(s, h);
    if (!h->snapshot || aorm__idmap_put(&s->idmap, h) < 0) return AORM_ENOMEM;
    track(s, h);
    return 0;
}

static void soon_start(void *arg) {
    aorm_session *s = arg;
    s->start_scheduled = false;
    session_enter(s);
    start_next(s);
    session_leave(s);
}

/* ---- public operations --------------------------------------------------------------- */

static int check_open(const aorm_session *s) {
    if (!s) return AORM_EMISUSE;
    if (session_closed(s)) return AORM_ECLOSED;
    return 0;
}

int aorm_session_query(aorm_session *s, aorm_stmt *q, const aorm_query_options *opts, aorm_objects_cb cb,
                       void *user) {
    int rc = check_open(s);
    if (rc == 0 && (!q || !cb)) rc = AORM_EMISUSE;
    if (rc == 0 && (rc = aorm_stmt_compile(q)) == 0 && !aorm_stmt_model(q)) rc = AORM_EMISUSE;
    aorm__sop *op = rc == 0 ? sop_new(s, SOP_QUERY, user) : NULL;
    if (rc == 0 && !op) rc = AORM_ENOMEM;
    if (rc < 0) {
        aorm_stmt_free(q);
        return rc;
    }
    op->stmt = q;
    op->cb.objects = cb;
    if (opts) op->qo = *opts;
    if ((rc = sop_push(s, op)) < 0) sop_free(op);
    return rc;
}

int aorm_session_execute(aorm_session *s, aorm_stmt *q, aorm_rows_cb cb, void *user) {
    int rc = check_open(s);
    if (rc == 0 && (!q || !cb)) rc = AORM_EMISUSE;
    if (rc == 0) rc = aorm_stmt_compile(q);
    aorm__sop *op = rc == 0 ? sop_new(s, SOP_EXECUTE, user) : NULL;
    if (rc == 0 && !op) rc = AORM_ENOMEM;
    if (rc < 0) {
        aorm_stmt_free(q);
        return rc;
    }
    op->stmt = q;
    op->cb.rows = cb;
    if ((rc = sop_push(s, op)) < 0) sop_free(op);
    return rc;
}

int aorm_session_stream(aorm_session *s, aorm_stmt *q, const aorm_stream_options *o, aorm_stream_objects_cb cb,
                        void *user) {
    int rc = check_open(s);
    if (rc == 0 && (!q || !cb || (o && o->batch < 0))) rc = AORM_EMISUSE;
    if (rc == 0 && (rc = aorm_stmt_compile(q)) == 0 && !aorm_stmt_model(q)) rc = AORM_EMISUSE;
    aorm__sop *op = rc == 0 ? sop_new(s, SOP_STREAM, user) : NULL;
    stream_run *x = op ? calloc(1, sizeof(*x)) : NULL;
    if (rc == 0 && !x) rc = AORM_ENOMEM;
    if (rc < 0) {
        if (op) sop_free(op);
        aorm_stmt_free(q);
        return rc;
    }
    x->size = o && o->batch > 0 ? o->batch : 1000;
    x->release = o && o->release;
    aorm__region_init(&x->batch, s->o.arena_block);
    op->ext = x;
    op->ext_free = stream_run_free;
    op->stmt = q;
    op->model = aorm_stmt_model(q);
    op->cb.stream = cb;
    if ((rc = sop_push(s, op)) < 0) sop_free(op);
    return rc;
}

static void *copy_key(aorm_session *s, const aorm_model *m, const void *key) {
    /* the whole struct is copied; only key fields are read. Text keys are
     * copied too, since the caller's string may not outlive the call. */
    void *k = aorm__region_alloc(&s->region, m->size);
    if (!k) return NULL;
    memcpy(k, key, m->size);
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if (!(c->flags & AORM_PK)) continue;
        if (c->type == AORM_TEXT || c->type == AORM_NUMERIC || c->type == AORM_JSON || c->type == AORM_JSONB) {
            char **f = (char **)aorm__field(c, k);
            if (*f && !(*f = aorm__region_strdup(&s->region, *f))) return NULL;
        }
    }
    return k;
}

int aorm_session_get(aorm_session *s, const aorm_model *m, const void *key, const aorm_query_options *opts,
                     aorm_object_cb cb, void *user) {
    int rc = check_open(s);
    if (rc < 0) return rc;
    if (!m || !key || !cb || aorm_model_pk_count(m) == 0) return AORM_EMISUSE;
    aorm__sop *op = sop_new(s, SOP_GET, user);
    if (!op) return AORM_ENOMEM;
    op->model = m;
    op->cb.object = cb;
    if (opts) op->qo = *opts;
    if (!(op->key = copy_key(s, m, key))) {
        sop_free(op);
        return AORM_ENOMEM;
    }
    if ((rc = sop_push(s, op)) < 0) sop_free(op);
    return rc;
}

int aorm_session_get_many(aorm_session *s, const aorm_model *m, const void *const *keys, size_t n,
                          const aorm_query_options *opts, aorm_objects_cb cb, void *user) {
    int rc = check_open(s);
    if (rc < 0) return rc;
    int npk = aorm_model_pk_count(m);
    if (!m || (!keys && n) || !cb || npk < 1 || npk > AORM_KEY_MAX) return AORM_EMISUSE;
    for (int i = 0; i < npk; i++) /* each key column goes in as one array parameter */
        if (!aorm__field_array_type(aorm_model_pk(m, i))) return AORM_EMISUSE;
    aorm__sop *op = sop_new(s, SOP_GET_MANY, user);
    if (!op) return AORM_ENOMEM;
    op->model = m;
    op->cb.objects = cb;
    if (opts) op->qo = *opts;
    op->keys = malloc((n + 1) * sizeof(void *));
    if (!op->keys) {
        sop_free(op);
        return AORM_ENOMEM;
    }
    op->nkeys = n;
    for (size_t i = 0; i < n; i++) {
        if (!keys[i] || !(op->keys[i] = copy_key(s, m, keys[i]))) {
            sop_free(op);
            return keys[i] ? AORM_ENOMEM : AORM_EMISUSE;
        }
    }
    if ((rc = sop_push(s, op)) < 0) sop_free(op);
    return rc;
}

static int push_simple(aorm_session *s, sop_kind kind, aorm_session_cb cb, void *user, void *obj) {
    int rc = check_open(s);
    if (rc < 0) return rc;
    aorm__sop *op = sop_new(s, kind, user);
    if (!op) return AORM_ENOMEM;
    op->cb.done = cb;
    op->obj = obj;
    if ((rc = sop_push(s, op)) < 0) sop_free(op);
    return rc;
}

int aorm_session_refresh(aorm_session *s, void *obj, aorm_session_cb cb, void *user) {
    if (s && !aorm__obj_of(s, obj)) return AORM_EMISUSE;
    return push_simple(s, SOP_REFRESH, cb, user, obj);
}
int aorm_session_load(aorm_session *s, void *const *objs, size_t n, const aorm_load_plan *plan,
                      aorm_session_cb cb, void *user) {
    int rc = check_open(s);
    if (rc < 0) return rc;
    if (!plan || (!objs && n) || plan->n < 1) return AORM_EMISUSE;
    const aorm_model *m = plan->loads[0].model;
    for (size_t i = 0; i < n; i++) {
        aorm__obj *h = aorm__obj_of(s, objs[i]);
        if (!h || h->model != m || h->state != AORM_PERSISTENT) return AORM_EMISUSE;
    }
    aorm__sop *op = sop_new(s, SOP_LOAD, user);
    if (!op) return AORM_ENOMEM;
    op->cb.done = cb;
    op->model = m;
    op->qo.load = plan;
    op->keys = malloc((n + 1) * sizeof(void *));
    if (!op->keys) {
        sop_free(op);
        return AORM_ENOMEM;
    }
    if (n) memcpy(op->keys, objs, n * sizeof(void *));
    op->nkeys = n;
    if ((rc = sop_push(s, op)) < 0) sop_free(op);
    return rc;
}

int aorm__session_noop(aorm_session *s, aorm_session_cb cb, void *user) {
    return push_simple(s, SOP_NOOP, cb, user, NULL);
}
int aorm_session_flush(aorm_session *s, aorm_session_cb cb, void *user) {
    return push_simple(s, SOP_FLUSH, cb, user, NULL);
}
int aorm_session_commit(aorm_session *s, aorm_session_cb cb, void *user) {
    return push_simple(s, SOP_COMMIT, cb, user, NULL);
}
int aorm_session_rollback(aorm_session *s, aorm_session_cb cb, void *user) {
    return push_simple(s, SOP_ROLLBACK, cb, user, NULL);
}
int aorm_session_begin_nested(aorm_session *s, aorm_session_cb cb, void *user) {
    return push_simple(s, SOP_SAVEPOINT, cb, user, NULL);
}
int aorm_session_release_nested(aorm_session *s, aorm_session_cb cb, void *user) {
    return push_simple(s, SOP_RELEASE_SAVEPOINT, cb, user, NULL);
}
int aorm_session_rollback_nested(aorm_session *s, aorm_session_cb cb, void *user) {
    return push_simple(s, SOP_ROLLBACK_SAVEPOINT, cb, user, NULL);
}

static int push_begin(aorm_session *s, const aorm_tx_options *tx, bool lazy, aorm_session_cb cb, void *user) {
    int rc = check_open(s);
    if (rc < 0) return rc;
    aorm__sop *op = sop_new(s, SOP_BEGIN, user);
    if (!op) return AORM_ENOMEM;
    op->cb.done = cb;
    op->lazy = lazy;
    if (tx) {
        op->tx = *tx;
        op->has_tx = true;
    }
    if ((rc = sop_push(s, op)) < 0) sop_free(op);
    return rc;
}

int aorm_session_begin(aorm_session *s, const aorm_tx_options *tx, aorm_session_cb cb, void *user) {
    return push_begin(s, tx, false, cb, user);
}

int aorm__session_begin_lazy(aorm_session *s, const aorm_tx_options *tx, aorm_session_cb cb, void *user) {
    return push_begin(s, tx, true, cb, user);
}

/* ---- closing -------------------------------------------------------------------------- */

/* Answers every queued (not started) operation with ECANCELED, in
 * order. A callback may free the session: the queue is then empty. */
static void cancel_queued(aorm_session *s, const char *msg) {
    aorm_error err = {.code = AORM_ECANCELED, .message = msg, .detail = "", .hint = "",
                      .constraint = "", .table = "", .column = ""};
    while (s->q_head) {
        aorm__sop *op = s->q_head;
        s->q_head = op->next;
        if (!s->q_head) s->q_tail = NULL;
        deliver(s, op, NULL, NULL, NULL, &err);
        sop_free(op);
    }
}

static void cancel_all(aorm_session *s) {
    aorm_error err = {.code = AORM_ECANCELED, .message = "session closed", .detail = "", .hint = "",
                      .constraint = "", .table = "", .column = ""};
    aorm__sop *run = s->running;
    if (run && run->kind == SOP_STREAM && run->ext && ((stream_run *)run->ext)->st)
        aorm_stream_stop(((stream_run *)run->ext)->st); /* a paused stream has nothing in flight to cancel */
    if (run && !run->answered) {
        /* statements of it still out hold a pointer to it: it stays
         * parked in `running` until the last of them is back (op_arrived).
         * A COMMIT already sent may commit all the same: its caller is
         * told the outcome is unknown, not that it was cancelled. */
        aorm_error unknown = {.code = AORM_EUNKNOWN_OUTCOME, .sqlstate = "08007",
                              .message = "session closed with its COMMIT in flight: outcome unknown", .detail = "",
                              .hint = "", .constraint = "", .table = "", .column = ""};
        if (run->kind == SOP_COMMIT && run->phase == 1) aorm__cache_tx_commit(s); /* it may commit */
        deliver(s, run, NULL, NULL, NULL, run->kind == SOP_COMMIT && run->phase == 1 ? &unknown : &err);
        if (run->pending == 0) {
            s->running = NULL;
            sop_free(run);
        }
    }
    /* an answered running operation is inside its own callback: the code
     * that answered it finishes it (aorm__session_op_done) */
    /* operations started ahead, in order: each answered once; those with
     * statements still out stay on the list until the last is back */
    for (;;) { /* a callback may end operations of the list (freeing the engine): look again each time */
        aorm__sop *op = s->a_head;
        while (op && op->answered) op = op->next;
        if (!op) break;
        aorm_error unknown = {.code = AORM_EUNKNOWN_OUTCOME, .sqlstate = "08007",
                              .message = "session closed with its COMMIT in flight: outcome unknown",
                              .detail = "", .hint = "", .constraint = "", .table = "", .column = ""};
        bool sent_commit = op->kind == SOP_COMMIT && op->phase == 1;
        if (sent_commit) aorm__cache_tx_commit(s); /* it may commit */
        deliver(s, op, NULL, NULL, NULL, sent_commit ? &unknown : &err);
    }
    for (aorm__sop *op = s->a_head, *next; op; op = next) { /* no callbacks from here on */
        next = op->next;
        early_drop(op);
        if (op->pending == 0) {
            ahead_unlink(s, op);
            sop_free(op);
        }
    }
    cancel_queued(s, "session closed");
}

/* The engine is being freed: its work, this session's included, has been
 * called back (ECANCELED; a COMMIT in flight EUNKNOWN_OUTCOME). The held
 * connection went with it, and the transaction (the server rolls it
 * back); whatever is still queued is cancelled, and every later call on
 * the session fails with AORM_ECLOSED. The owner handle stays for
 * aorm_session_free. */
static void on_engine_closed(aorm_owner *o, void *user) {
    aorm_session *s = user;
    session_enter(s);
    s->engine_gone = true;
    s->e = NULL;
    s->conn = NULL; /* the handle died with the engine */
    if (s->tx != TX_NONE) aorm__flush_rollback_states(s);
    s->tx = TX_NONE;
    s->savepoints = 0;
    if (s->start_scheduled) {
        aorm_loop_soon_cancel(s->loop, soon_start, s);
        s->start_scheduled = false;
    }
    if (!s->closing) {
        aorm__sop *run = s->running;
        if (run && !run->answered) {
            /* nothing will answer it any more */
            aorm_error err = {.code = AORM_ECANCELED, .message = "cancelled: the engine was freed", .detail = "",
                              .hint = "", .constraint = "", .table = "", .column = ""};
            deliver(s, run, NULL, NULL, NULL, &err);
            if (s->running == run && s->depth == 1) {
                s->running = NULL;
                sop_free(run);
            }
        }
        /* operations started ahead: their statements were called back
         * with the engine's cancellation (kept, as early answers) */
        while (!s->closing) { /* aorm_session_free from a callback takes the list over */
            aorm__sop *op = s->a_head;
            while (op && op->answered) op = op->next;
            if (!op) break;
            aorm_error err = {.code = AORM_ECANCELED, .message = "cancelled: the engine was freed", .detail = "",
                              .hint = "", .constraint = "", .table = "", .column = ""};
            early_drop(op);
            deliver(s, op, NULL, NULL, NULL, &err);
        }
        for (aorm__sop *op = s->a_head, *next; op && !s->closing && s->depth == 1 && !s->running; op = next) {
            next = op->next;
            early_drop(op);
            if (op->pending == 0) {
                ahead_unlink(s, op);
                sop_free(op);
            }
        }
        if (!s->running && !s->a_head && !s->closing) cancel_queued(s, "cancelled: the engine was freed");
    }
    session_leave(s);
}

static void session_destroy(aorm_session *s) {
    if (s->start_scheduled) aorm_loop_soon_cancel(s->loop, soon_start, s);
    aorm__cache_session_free(s);
    if (s->conn) aorm_conn_release(s->conn); /* rolled back by the engine */
    s->conn = NULL;
    aorm__assert(!s->running && !s->a_head);
    aorm_owner_free(s->owner); /* nothing of it is left in the engine: cancelled in aorm_session_free */
    aorm__idmap_free(&s->idmap);
    aorm__region_free(&s->region);
    free(s->tx_new);
    free(s->tx_del);
    free(s->scratch);
    free(s);
}

void aorm_session_free(aorm_session *s) {
    if (!s || s->closing) return;
    s->closing = true;
    s->depth++;
    cancel_all(s);
    s->depth--;
    if (s->conn) { /* rolled back by the engine */
        aorm_conn_release(s->conn);
        s->conn = NULL;
    }
    /* the engine calls back every statement of the session still out, now
     * (op_arrived frees the parked running operation after the last), and
     * drops their answers when they come */
    s->depth++;
    aorm_owner_cancel(s->owner);
    s->depth--;
    if (s->engine_gone && s->running && s->running->answered && s->depth == 0) {
        /* the engine is gone: nothing will ever come back for it */
        aorm__sop *run = s->running;
        s->running = NULL;
        sop_free(run);
    }
    while (s->engine_gone && s->a_head && s->depth == 0) {
        aorm__sop *op = s->a_head;
        ahead_unlink(s, op);
        sop_free(op);
    }
    if (s->running || s->a_head || s->depth > 0 || (s->begins_out > 0 && !s->engine_gone)) {
        /* inside a callback of the session, or statements still out hold
         * pointers to the running operation: the session goes when the
         * callback returns or the last of them is back */
        s->free_pending = true;
        return;
    }
    session_destroy(s);
}

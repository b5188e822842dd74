/* stmt.c -- Core statements: creation, the arena, sticky errors and every
 * builder call (select lists, joins, where, order, insert rows, sets,
 * returning...).
 *
 * A builder call checks its arguments, deep-copies the expressions it is
 * given into the statement's arena (expr.c) and records what it was asked;
 * nothing is turned into SQL text here (compile.c does that, once, when
 * the statement is compiled). Any builder call drops the compiled text.
 *
 * Errors are sticky: the first failure is kept with a message and every
 * later builder call returns it without doing anything, except that
 * subqueries passed in are still taken over (freed with the statement),
 * so a failed chain never leaks. A NULL statement is AORM_EMISUSE, never
 * a crash.
 *
 * Must not: talk to the engine, or keep any pointer into caller memory
 * (models excepted: they are static descriptions that outlive statements). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapping/mapping.h"
#include "sql/sql_int.h"

/* =========================================================================
 * Arena
 * ========================================================================= */

#define ARENA_BLOCK_MIN 4096u
#define ARENA_BLOCK_MAX 65536u
/* Larger requests get a block of their own, leaving the bump block as is. */
#define ARENA_BIG 1024u

void aorm__arena_init(aorm__arena *a, void *first, size_t size) {
    aorm__bump_init(a, first, size, ARENA_BLOCK_MIN, ARENA_BLOCK_MAX, ARENA_BIG, false);
}

void aorm__arena_free(aorm__arena *a) { aorm__bump_free(a); }

void *aorm__arena_alloc(aorm__arena *a, size_t n) {
    return aorm__bump_alloc(a, n ? n : 1); /* never the same pointer twice */
}

/* Grows an arena array of `size`-byte elements to hold at least need
 * (doubling). The old copy is abandoned in the arena. */
static int arena_grow(aorm__arena *a, void **v, int *cap, int need, size_t size) {
    if (need <= *cap) return 0;
    int ncap = *cap ? *cap : 4;
    while (ncap < need) {
        if (ncap > INT32_MAX / 2) return AORM_ENOMEM;
        ncap *= 2;
    }
    if ((size_t)ncap > SIZE_MAX / size) return AORM_ENOMEM;
    void *n = aorm__arena_alloc(a, (size_t)ncap * size);
    if (!n) return AORM_ENOMEM;
    if (*cap) memcpy(n, *v, (size_t)*cap * size);
    *v = n;
    *cap = ncap;
    return 0;
}

static char *arena_strdup(aorm__arena *a, const char *s) {
    size_t n = strlen(s) + 1;
    char *d = aorm__arena_alloc(a, n);
    if (d) memcpy(d, s, n);
    return d;
}

/* =========================================================================
 * Errors
 * ========================================================================= */

int aorm__sql_failv(aorm_stmt *q, int code, const char *fmt, va_list ap) {
    q->compiled = false;
    if (q->error) return q->error;
    q->error = code;
    q->errmsg = aorm_strerror(code);
    if (fmt && code != AORM_ENOMEM) {
        va_list ap2;
        va_copy(ap2, ap);
        int n = vsnprintf(NULL, 0, fmt, ap2);
        va_end(ap2);
        if (n >= 0) {
            char *m = aorm__arena_alloc(&q->arena, (size_t)n + 1);
            if (m) {
                vsnprintf(m, (size_t)n + 1, fmt, ap);
                q->errmsg = m;
            }
        }
    }
    return code;
}

int aorm__sql_fail(aorm_stmt *q, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = aorm__sql_failv(q, code, fmt, ap);
    va_end(ap);
    return rc;
}

#define OOM(q) aorm__sql_fail((q), AORM_ENOMEM, NULL)

static const char *kind_name(aorm__stmt_kind k) {
    switch (k) {
    case AORM__SELECT: return "SELECT";
    case AORM__INSERT: return "INSERT";
    case AORM__UPDATE: return "UPDATE";
    case AORM__DELETE: return "DELETE";
    case AORM__RAW: return "raw SQL";
    case AORM__COMPOUND: return "set operation";
    }
    return "?";
}

/* Entry check of a builder call that takes expressions: a NULL or failed
 * statement still takes over the subqueries of e (and of e2). */
static int enter(aorm_stmt *q, const aorm_expr *e, const aorm_expr *e2) {
    if (!q) {
        aorm__sql_take_subs(NULL, e, e2);
        return AORM_EMISUSE;
    }
    if (q->owner) {
        /* Frozen: its parent may already have compiled it. */
        aorm__sql_take_subs(q, e, e2);
        return AORM_EMISUSE;
    }
    q->compiled = false;
    if (q->error) {
        aorm__sql_take_subs(q, e, e2);
        return q->error;
    }
    return 0;
}

/* Fails q when it is not one of the kinds in the mask (1 << kind). */
static int need_kind(aorm_stmt *q, unsigned mask, const char *fn) {
    if (mask & (1u << q->kind)) return 0;
    return aorm__sql_fail(q, AORM_EMISUSE, "%s is not allowed on a %s statement", fn, kind_name(q->kind));
}
#define K(k) (1u << (k))

/* =========================================================================
 * Life cycle
 * ========================================================================= */

const aorm_column *aorm__sql_column_at(const aorm_model *m, size_t offset) {
    for (int i = 0; i < m->ncolumns; i++)
        if (m->columns[i].offset == offset) return &m->columns[i];
    return NULL;
}

aorm_stmt *aorm__sql_new(aorm__stmt_kind kind, const aorm_model *m) {
    aorm_stmt *q = malloc(sizeof(*q));
    if (!q) return NULL;
    memset(q, 0, offsetof(aorm_stmt, inline_mem));
    q->kind = kind;
    q->model = m;
    q->from_explicit = m != NULL;
    q->errmsg = "";
    aorm_params_init(&q->rows);
    aorm_params_init(&q->params);
    aorm__arena_init(&q->arena, q->inline_mem, sizeof(q->inline_mem));
    return q;
}

void aorm__sql_destroy(aorm_stmt *q) {
    if (!q) return;
    aorm_stmt *s = q->subs;
    while (s) {
        aorm_stmt *next = s->next_sub;
        aorm__sql_destroy(s);
        s = next;
    }
    aorm__buf_free(&q->sql);
    aorm__buf_free(&q->qual);
    aorm_params_free(&q->params);
    aorm_params_free(&q->rows);
    free(q->named);
    aorm__arena_free(&q->arena);
    free(q);
}

void aorm_stmt_free(aorm_stmt *q) {
    /* A subquery belongs to its parent, which frees it. */
    if (!q || q->owner) return;
    aorm__sql_destroy(q);
}

int aorm_stmt_error(const aorm_stmt *q) { return q ? q->error : AORM_EMISUSE; }

const char *aorm_stmt_errmsg(const aorm_stmt *q) {
    if (!q) return "NULL statement";
    return q->error ? q->errmsg : "";
}

const aorm_model *aorm_stmt_model(const aorm_stmt *q) { return q ? q->model : NULL; }

bool aorm_stmt_readonly(const aorm_stmt *q) {
    return q && (q->kind == AORM__SELECT || q->kind == AORM__COMPOUND) && !q->has_lock && !q->locking_sub;
}

/* =========================================================================
 * Lists
 * ========================================================================= */

static int push_expr(aorm_stmt *q, aorm__exprs *l, const aorm_expr *e) {
    if (arena_grow(&q->arena, (void **)&l->v, &l->cap, l->n + 1, sizeof(*l->v))) return OOM(q);
    l->v[l->n++] = e;
    return 0;
}

static uint32_t name_hash(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static bool names_has(const aorm__items *it, const char *name) {
    if (!it->set_cap) return false;
    unsigned mask = it->set_cap - 1;
    for (unsigned i = name_hash(name) & mask;; i = (i + 1) & mask) {
        if (!it->set[i]) return false;
        if (strcmp(it->set[i], name) == 0) return true;
    }
}

static void names_put(aorm__items *it, const char *name) {
    unsigned mask = it->set_cap - 1;
    unsigned i = name_hash(name) & mask;
    while (it->set[i]) {
        if (strcmp(it->set[i], name) == 0) return;
        i = (i + 1) & mask;
    }
    it->set[i] = name;
    it->set_len++;
}

static int names_add(aorm_stmt *q, aorm__items *it, const char *name) {
    if ((it->set_len + 1) * 2 > it->set_cap) {
        unsigned cap = it->set_cap ? it->set_cap * 2 : 16;
        while ((it->set_len + 1) * 2 > cap) cap *= 2;
        const char **old = it->set;
        unsigned old_cap = it->set_cap;
        it->set = aorm__arena_alloc(&q->arena, cap * sizeof(*it->set));
        if (!it->set) {
            it->set = old;
            return OOM(q);
        }
        memset(it->set, 0, cap * sizeof(*it->set));
        it->set_cap = cap;
        it->set_len = 0;
        for (unsigned i = 0; i < old_cap; i++)
            if (old[i]) names_put(it, old[i]);
    }
    names_put(it, name);
    return 0;
}

bool aorm__sql_items_has(const aorm__items *it, const char *name) { return names_has(it, name); }

/* Default output name PostgreSQL gives a function call. */
static const char *call_name(const aorm_expr *e) {
    if (e->op != AORM_FN_NAMED) return aorm__sql_fn_name(e->op);
    const char *dot = strchr(e->name, '.');
    return dot ? dot + 1 : e->name;
}

/* Default output name PostgreSQL gives an expression entry. */
static const char *expr_name(const aorm_expr *e) {
    if (e->kind == AORM_X_CALL) return call_name(e);
    if (e->kind == AORM_X_OVER) e = e->a;
    if (e->kind == AORM_X_CALL) return call_name(e);
    if (e->kind == AORM_X_CASE) return "case";
    if (e->kind == AORM_X_REF) return e->name;
    if (e->kind == AORM_X_FUNC) return aorm__sql_fn_name(e->op);
    if (e->kind == AORM_X_EXISTS) return "exists";
    return "?column?";
}

/* Appends one entry built from the copied expression e (a column, a
 * labelled expression or any other expression). A later entry whose
 * output name is taken gets a label of its own: "<table>_<column>" for a
 * column, "<name>_<k>" otherwise (k from 2 up until free); entries
 * PostgreSQL calls "?column?" are left alone. */
static int items_add(aorm_stmt *q, aorm__items *it, const aorm_expr *e, const aorm_model *m,
                     const aorm_column *col, const char *alias) {
    if (arena_grow(&q->arena, (void **)&it->v, &it->cap, it->n + 1, sizeof(*it->v))) return OOM(q);
    aorm__item item = {.e = e, .model = m, .col = col, .alias = alias};
    if (e && e->kind == AORM_X_LABEL) {
        const aorm_expr *in = e->a;
        if (in->kind == AORM_X_COLUMN) {
            item.model = in->model;
            item.col = in->v.p;
            item.alias = in->alias;
        }
        item.name = e->label;
        item.as = true;
    } else if (e && e->kind == AORM_X_COLUMN) {
        item.e = NULL;
        item.model = e->model;
        item.col = e->v.p;
        item.alias = e->alias;
        item.name = item.col->name;
    } else if (e) {
        item.name = expr_name(e);
    } else {
        item.name = col->name;
    }
    /* "?column?" is no name anyone looks up: such entries keep it. */
    bool anonymous = !item.as && !item.col && strcmp(item.name, "?column?") == 0;
    if (anonymous) {
        it->v[it->n++] = item;
        return 0;
    }
    if (!item.as && names_has(it, item.name)) {
        const char *base = item.name;
        char *label = NULL;
        if (item.col) {
            const char *from = item.alias ? item.alias : item.model->table;
            size_t n = strlen(from) + 1 + strlen(item.col->name) + 1;
            label = aorm__arena_alloc(&q->arena, n);
            if (!label) return OOM(q);
            snprintf(label, n, "%s_%s", from, item.col->name);
            base = label;
        }
        if (!label || names_has(it, label)) {
            size_t n = strlen(base) + 24;
            char *l2 = aorm__arena_alloc(&q->arena, n);
            if (!l2) return OOM(q);
            for (int k = 2;; k++) {
                snprintf(l2, n, "%s_%d", base, k);
                if (!names_has(it, l2)) break;
            }
            label = l2;
        }
        item.name = label;
        item.as = true;
    }
    if (names_add(q, it, item.name)) return q->error;
    it->v[it->n++] = item;
    return 0;
}

static int items_add_model(aorm_stmt *q, aorm__items *it, const aorm_model *m, const char *alias) {
    if (arena_grow(&q->arena, (void **)&it->v, &it->cap, it->n + m->ncolumns, sizeof(*it->v)))
        return OOM(q);
    for (int i = 0; i < m->ncolumns; i++) {
        int rc = items_add(q, it, NULL, m, &m->columns[i], alias);
        if (rc) return rc;
    }
    return 0;
}

/* The model of the first column met in e (depth first) that is not seen
 * through an alias, or NULL. */
static const aorm_model *first_model(const aorm_expr *e) {
    if (!e) return NULL;
    if (e->kind == AORM_X_COLUMN) return e->alias ? NULL : e->model;
    const aorm_model *m;
    if ((m = first_model(e->a)) || (m = first_model(e->b)) || (m = first_model(e->c))) return m;
    for (int i = 0; i < e->n && e->list; i++)
        if ((m = first_model(e->list[i]))) return m;
    return NULL;
}

/* Copies e; its subqueries are taken over whatever happens. */
#define copy aorm__sql_copy

static const char *join_name(const aorm__join *j) {
    return j->alias ? j->alias : j->cte ? j->cte : j->model ? j->model->table : "";
}

/* True when a FROM item of q goes by `name`. */
static bool name_taken(const aorm_stmt *q, const char *name) {
    const char *base = q->from_alias ? q->from_alias : q->from_cte ? q->from_cte : q->model ? q->model->table : NULL;
    if (base && strcmp(base, name) == 0) return true;
    for (int i = 0; i < q->njoins; i++)
        if (strcmp(join_name(&q->joins[i]), name) == 0) return true;
    return false;
}

static bool has_from(const aorm_stmt *q) { return q->model || q->from_sub || q->from_cte; }

static int check_model(aorm_stmt *q, const aorm_model *m, const char *fn) {
    if (!m) return aorm__sql_fail(q, AORM_EMISUSE, "%s: NULL model", fn);
    if (!m->table || !*m->table || m->ncolumns <= 0 || !m->columns)
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: model %s has no table name or no columns", fn,
                              m->name ? m->name : "(unnamed)");
    for (int i = 0; i < m->ncolumns; i++)
        if (!m->columns[i].name || !*m->columns[i].name)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: column %d of %s has no name", fn, i, m->table);
    return 0;
}

/* =========================================================================
 * SELECT
 * ========================================================================= */

aorm_stmt *aorm_select(const aorm_model *m) {
    if (!m) return NULL;
    aorm_stmt *q = aorm__sql_new(AORM__SELECT, m);
    if (!q) return NULL;
    if (check_model(q, m, "aorm_select") == 0) items_add_model(q, &q->items, m, NULL);
    return q;
}

aorm_stmt *aorm_select_alias(const aorm_model *m, const char *alias) {
    if (!m) return NULL;
    aorm_stmt *q = aorm__sql_new(AORM__SELECT, m);
    if (!q) return NULL;
    if (check_model(q, m, "aorm_select_alias") || aorm__sql_check_name(q, alias, "alias", "aorm_select_alias"))
        return q;
    if (!(q->from_alias = arena_strdup(&q->arena, alias))) {
        OOM(q);
        return q;
    }
    items_add_model(q, &q->items, m, q->from_alias);
    return q;
}

int aorm_select_add_alias(aorm_stmt *q, const aorm_model *m, const char *alias) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), "aorm_select_add_alias"))) return rc;
    if ((rc = check_model(q, m, "aorm_select_add_alias")) ||
        (rc = aorm__sql_check_name(q, alias, "alias", "aorm_select_add_alias")))
        return rc;
    const char *a = arena_strdup(&q->arena, alias);
    if (!a) return OOM(q);
    return items_add_model(q, &q->items, m, a);
}

aorm_stmt *aorm_select_exprs(const aorm_expr *const *exprs, int n) {
    aorm_stmt *q = aorm__sql_new(AORM__SELECT, NULL);
    if (!q) {
        for (int i = 0; exprs && i < n; i++) aorm__sql_take_subs(NULL, exprs[i], NULL);
        return NULL;
    }
    if (n < 0 || (n > 0 && !exprs)) {
        aorm__sql_fail(q, AORM_EMISUSE, "aorm_select_exprs: no expression array for %d entries", n);
        return q;
    }
    for (int i = 0; i < n; i++) aorm_select_add(q, exprs[i]);
    return q;
}

int aorm_select_add(aorm_stmt *q, const aorm_expr *e) {
    int rc = enter(q, e, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), "aorm_select_add"))) {
        aorm__sql_take_subs(q, e, NULL);
        return rc;
    }
    const aorm_expr *c;
    if ((rc = copy(q, e, AORM__CP_LABEL, "aorm_select_add", &c))) return rc;
    if (!has_from(q) && !q->from_explicit) q->model = first_model(c);
    return items_add(q, &q->items, c, NULL, NULL, NULL);
}

int aorm_select_add_model(aorm_stmt *q, const aorm_model *m) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), "aorm_select_add_model"))) return rc;
    if ((rc = check_model(q, m, "aorm_select_add_model"))) return rc;
    if (!has_from(q) && !q->from_explicit) q->model = m;
    return items_add_model(q, &q->items, m, NULL);
}

static int add_join(aorm_stmt *q, aorm__join j, const char *fn);

/* The FROM of a SELECT: model m under alias (or its own name), a
 * subquery, or a CTE. On UPDATE / DELETE: one more FROM / USING item. */
static int set_from(aorm_stmt *q, const aorm_model *m, const char *alias, aorm_stmt *sub, const char *cte,
                    const char *fn) {
    const char *a = alias ? arena_strdup(&q->arena, alias) : NULL;
    const char *n = cte ? arena_strdup(&q->arena, cte) : NULL;
    if ((alias && !a) || (cte && !n)) return OOM(q);
    if (q->kind != AORM__SELECT)
        return add_join(q, (aorm__join){.model = m, .sub = sub, .cte = n, .alias = a, .comma = true}, fn);
    const char *name = a ? a : n ? n : m->table;
    if (q->from_explicit && (m != q->model || sub || cte || (a == NULL) != (q->from_alias == NULL) ||
                             (a && strcmp(a, q->from_alias) != 0)))
        return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): the statement's FROM is already given", fn, name);
    for (int i = 0; i < q->njoins; i++)
        if (strcmp(join_name(&q->joins[i]), name) == 0)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): a joined item already goes by that name", fn, name);
    q->model = m;
    q->from_alias = a;
    q->from_sub = sub;
    q->from_cte = n;
    q->from_explicit = true;
    return 0;
}

int aorm_from(aorm_stmt *q, const aorm_model *m) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT) | K(AORM__UPDATE) | K(AORM__DELETE), "aorm_from"))) return rc;
    if ((rc = check_model(q, m, "aorm_from"))) return rc;
    return set_from(q, m, NULL, NULL, NULL, "aorm_from");
}

int aorm_from_alias(aorm_stmt *q, const aorm_model *m, const char *alias) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT) | K(AORM__UPDATE) | K(AORM__DELETE), "aorm_from_alias"))) return rc;
    if ((rc = check_model(q, m, "aorm_from_alias")) || (rc = aorm__sql_check_name(q, alias, "alias", "aorm_from_alias")))
        return rc;
    return set_from(q, m, alias, NULL, NULL, "aorm_from_alias");
}

/* Takes sub over for q (or frees it when q is NULL). */
static int take_query(aorm_stmt *q, aorm_stmt *sub, const char *fn) {
    if (!q) {
        if (sub && !sub->owner) aorm__sql_destroy(sub);
        return AORM_EMISUSE;
    }
    return aorm__sql_take_stmt(q, sub, K(AORM__SELECT) | K(AORM__RAW) | K(AORM__COMPOUND), fn);
}

/* enter() for calls that hand over a statement: sub is taken over (or
 * freed) whatever happens. */
static int enter_sub(aorm_stmt *q, aorm_stmt *sub, unsigned kinds, const char *fn) {
    int rc = enter(q, NULL, NULL);
    if (rc) {
        if (!q || q->owner) {
            if (sub && !sub->owner) aorm__sql_destroy(sub);
        } else {
            take_query(q, sub, fn);
        }
        return rc;
    }
    if ((rc = take_query(q, sub, fn))) return rc;
    return need_kind(q, kinds, fn);
}

int aorm_from_select(aorm_stmt *q, aorm_stmt *sub, const char *alias) {
    int rc = enter_sub(q, sub, K(AORM__SELECT) | K(AORM__UPDATE) | K(AORM__DELETE), "aorm_from_select");
    if (rc) return rc;
    if ((rc = aorm__sql_check_name(q, alias, "alias", "aorm_from_select"))) return rc;
    return set_from(q, NULL, alias, sub, NULL, "aorm_from_select");
}

int aorm_from_cte(aorm_stmt *q, const char *name) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT) | K(AORM__UPDATE) | K(AORM__DELETE), "aorm_from_cte"))) return rc;
    if ((rc = aorm__sql_check_name(q, name, "CTE name", "aorm_from_cte"))) return rc;
    return set_from(q, NULL, NULL, NULL, name, "aorm_from_cte");
}

int aorm_distinct(aorm_stmt *q) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), "aorm_distinct"))) return rc;
    if (q->distinct_on.n) return aorm__sql_fail(q, AORM_EMISUSE, "aorm_distinct: the statement has DISTINCT ON");
    q->distinct = true;
    return 0;
}

int aorm_distinct_on(aorm_stmt *q, const aorm_expr *e) {
    int rc = enter(q, e, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), "aorm_distinct_on"))) {
        aorm__sql_take_subs(q, e, NULL);
        return rc;
    }
    if (q->distinct) {
        aorm__sql_take_subs(q, e, NULL);
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_distinct_on: the statement is SELECT DISTINCT");
    }
    const aorm_expr *c;
    if ((rc = copy(q, e, 0, "aorm_distinct_on", &c))) return rc;
    return push_expr(q, &q->distinct_on, c);
}

/* =========================================================================
 * WITH and set operations
 * ========================================================================= */

static int with(aorm_stmt *q, const char *name, aorm_stmt *sub, bool recursive, const char *fn) {
    int rc = enter(q, NULL, NULL);
    if (rc) {
        if (q && !q->owner) aorm__sql_take_stmt(q, sub, ~0u, fn);
        else if (sub && !sub->owner) aorm__sql_destroy(sub);
        return rc;
    }
    unsigned kinds = K(AORM__SELECT) | K(AORM__COMPOUND) | K(AORM__RAW) | K(AORM__INSERT) | K(AORM__UPDATE) |
                     K(AORM__DELETE);
    if ((rc = aorm__sql_take_stmt(q, sub, kinds, fn))) return rc;
    if ((rc = need_kind(q, kinds & ~K(AORM__RAW), fn))) return rc;
    if ((rc = aorm__sql_check_name(q, name, "CTE name", fn))) return rc;
    for (int i = 0; i < q->nctes; i++)
        if (strcmp(q->ctes[i].name, name) == 0)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: the statement already has a CTE \"%s\"", fn, name);
    const char *n = arena_strdup(&q->arena, name);
    if (!n || arena_grow(&q->arena, (void **)&q->ctes, &q->cap_ctes, q->nctes + 1, sizeof(*q->ctes))) return OOM(q);
    q->ctes[q->nctes++] = (aorm__cte){n, sub};
    if (recursive) q->recursive = true;
    return 0;
}

int aorm_with(aorm_stmt *q, const char *name, aorm_stmt *sub) { return with(q, name, sub, false, "aorm_with"); }

int aorm_with_recursive(aorm_stmt *q, const char *name, aorm_stmt *sub) {
    return with(q, name, sub, true, "aorm_with_recursive");
}

static aorm_stmt *compound(aorm_stmt *a, aorm_stmt *b, int op, bool all) {
    static const char *const names[] = {"", "aorm_union", "aorm_intersect", "aorm_except"};
    if (!a || !b || a == b) {
        if (a && !a->owner) aorm__sql_destroy(a);
        if (b && b != a && !b->owner) aorm__sql_destroy(b);
        return NULL;
    }
    aorm_stmt *q = aorm__sql_new(AORM__COMPOUND, NULL);
    if (!q) {
        if (!a->owner) aorm__sql_destroy(a);
        if (!b->owner) aorm__sql_destroy(b);
        return NULL;
    }
    q->setop = op;
    q->setop_all = all;
    unsigned kinds = K(AORM__SELECT) | K(AORM__COMPOUND) | K(AORM__RAW);
    /* both are taken over (or refused into q's error and freed with it) */
    if (aorm__sql_take_stmt(q, a, kinds, names[op]) == 0) q->arms[0] = a;
    else if (!a->owner) aorm__sql_destroy(a);
    if (aorm__sql_take_stmt(q, b, kinds, names[op]) == 0) q->arms[1] = b;
    else if (!b->owner) aorm__sql_destroy(b);
    return q;
}

aorm_stmt *aorm_union(aorm_stmt *a, aorm_stmt *b) { return compound(a, b, AORM__SETOP_UNION, false); }
aorm_stmt *aorm_union_all(aorm_stmt *a, aorm_stmt *b) { return compound(a, b, AORM__SETOP_UNION, true); }
aorm_stmt *aorm_intersect(aorm_stmt *a, aorm_stmt *b) { return compound(a, b, AORM__SETOP_INTERSECT, false); }
aorm_stmt *aorm_intersect_all(aorm_stmt *a, aorm_stmt *b) { return compound(a, b, AORM__SETOP_INTERSECT, true); }
aorm_stmt *aorm_except(aorm_stmt *a, aorm_stmt *b) { return compound(a, b, AORM__SETOP_EXCEPT, false); }
aorm_stmt *aorm_except_all(aorm_stmt *a, aorm_stmt *b) { return compound(a, b, AORM__SETOP_EXCEPT, true); }

const aorm__items *aorm__sql_outputs(const aorm_stmt *q) {
    switch (q->kind) {
    case AORM__SELECT: return &q->items;
    case AORM__INSERT:
    case AORM__UPDATE:
    case AORM__DELETE: return &q->ret;
    case AORM__COMPOUND: return q->arms[0] ? aorm__sql_outputs(q->arms[0]) : NULL;
    case AORM__RAW: return NULL;
    }
    return NULL;
}

static int add_join(aorm_stmt *q, aorm__join j, const char *fn) {
    const char *name = join_name(&j);
    if (!j.comma && !has_from(q))
        return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): the statement has no FROM yet", fn, name);
    if (name_taken(q, name)) {
        if (j.model && !j.alias)
            return aorm__sql_fail(q, AORM_EMISUSE,
                                  "%s(%s): the model is already part of the statement (for a self-join, join it "
                                  "again under an alias: aorm_join_alias, aorm_join_rel_alias)",
                                  fn, name);
        return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): a FROM item of the statement already goes by that name", fn,
                              name);
    }
    if (arena_grow(&q->arena, (void **)&q->joins, &q->cap_joins, q->njoins + 1, sizeof(*q->joins)))
        return OOM(q);
    q->joins[q->njoins++] = j;
    return 0;
}

static int join_expr(aorm_stmt *q, const aorm_model *m, const aorm_expr *on, bool outer, const char *fn) {
    int rc = enter(q, on, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), fn)) || (rc = check_model(q, m, fn))) {
        aorm__sql_take_subs(q, on, NULL);
        return rc;
    }
    const aorm_expr *c;
    if ((rc = copy(q, on, 0, fn, &c))) return rc;
    return add_join(q, (aorm__join){.model = m, .on = c, .outer = outer}, fn);
}

int aorm_join(aorm_stmt *q, const aorm_model *m, const aorm_expr *on) {
    return join_expr(q, m, on, false, "aorm_join");
}

int aorm_left_join(aorm_stmt *q, const aorm_model *m, const aorm_expr *on) {
    return join_expr(q, m, on, true, "aorm_left_join");
}

/* The shared part of the aorm_join_alias / _select / _cte calls, after
 * enter(): checks, copies on (NULL allowed) and adds the item. */
static int join_item(aorm_stmt *q, aorm__join j, const char *alias, const char *cte, const aorm_expr *on,
                     unsigned flags, const char *fn) {
    int rc;
    if ((rc = need_kind(q, K(AORM__SELECT), fn))) goto fail;
    if (flags & ~(unsigned)(AORM_JOIN_LEFT | AORM_JOIN_LATERAL)) {
        rc = aorm__sql_fail(q, AORM_EMISUSE, "%s: invalid flags 0x%x", fn, flags);
        goto fail;
    }
    if ((flags & AORM_JOIN_LATERAL) && !j.sub) {
        rc = aorm__sql_fail(q, AORM_EMISUSE, "%s: LATERAL only goes with a subquery (aorm_join_select)", fn);
        goto fail;
    }
    if ((alias && (rc = aorm__sql_check_name(q, alias, "alias", fn))) ||
        (cte && (rc = aorm__sql_check_name(q, cte, "CTE name", fn))))
        goto fail;
    if ((alias && !(j.alias = arena_strdup(&q->arena, alias))) || (cte && !(j.cte = arena_strdup(&q->arena, cte)))) {
        rc = OOM(q);
        goto fail;
    }
    j.outer = (flags & AORM_JOIN_LEFT) != 0;
    j.lateral = (flags & AORM_JOIN_LATERAL) != 0;
    if (on && (rc = copy(q, on, 0, fn, &j.on))) return rc;
    return add_join(q, j, fn);
fail:
    aorm__sql_take_subs(q, on, NULL);
    return rc;
}

int aorm_join_alias(aorm_stmt *q, const aorm_model *m, const char *alias, const aorm_expr *on, unsigned flags) {
    int rc = enter(q, on, NULL);
    if (rc) return rc;
    if ((rc = check_model(q, m, "aorm_join_alias")) ||
        (rc = aorm__sql_check_name(q, alias, "alias", "aorm_join_alias"))) {
        aorm__sql_take_subs(q, on, NULL);
        return rc;
    }
    return join_item(q, (aorm__join){.model = m}, alias, NULL, on, flags, "aorm_join_alias");
}

int aorm_join_select(aorm_stmt *q, aorm_stmt *sub, const char *alias, const aorm_expr *on, unsigned flags) {
    int rc = enter_sub(q, sub, K(AORM__SELECT), "aorm_join_select");
    if (!rc && !(rc = aorm__sql_check_name(q, alias, "alias", "aorm_join_select")))
        return join_item(q, (aorm__join){.sub = sub}, alias, NULL, on, flags, "aorm_join_select");
    aorm__sql_take_subs(q && !q->owner ? q : NULL, on, NULL);
    return rc;
}

int aorm_join_cte(aorm_stmt *q, const char *name, const char *alias, const aorm_expr *on, unsigned flags) {
    int rc = enter(q, on, NULL);
    if (rc) return rc;
    return join_item(q, (aorm__join){0}, alias, name ? name : "", on, flags, "aorm_join_cte");
}

static aorm_expr *col_node(aorm_stmt *q, const aorm_model *m, const aorm_column *col, const char *alias) {
    aorm_expr *n = aorm__arena_alloc(&q->arena, sizeof(*n));
    if (!n) return NULL;
    memset(n, 0, sizeof(*n));
    n->kind = AORM_X_COLUMN;
    n->model = m;
    n->offset = col->offset;
    n->v.p = col;
    n->alias = alias;
    return n;
}

/* One side of a key condition: a model under an alias (or its name). */
typedef struct side {
    const aorm_model *m;
    const char *alias;
} side;

/* `ta.fa = tb.fb` as a copied expression. */
static const aorm_expr *eq_node(aorm_stmt *q, side a, const aorm_column *ca, side b, const aorm_column *cb) {
    aorm_expr *x = col_node(q, a.m, ca, a.alias), *y = col_node(q, b.m, cb, b.alias);
    aorm_expr *n = aorm__arena_alloc(&q->arena, sizeof(*n));
    if (!x || !y || !n) return NULL;
    memset(n, 0, sizeof(*n));
    n->kind = AORM_X_BINARY;
    n->op = AORM_OP_EQ;
    n->a = x;
    n->b = y;
    return n;
}

/* The join condition of a key: to.to[i] = from.from[i] for each column
 * pair (the other way round with from_first: the joined table's column
 * is written first), ANDed when there are several. */
static const aorm_expr *key_eq(aorm_stmt *q, side from, side to, const aorm__keymap *km, int i, bool from_first) {
    return from_first ? eq_node(q, from, km->from[i], to, km->to[i]) : eq_node(q, to, km->to[i], from, km->from[i]);
}

static const aorm_expr *key_on(aorm_stmt *q, side from, side to, const aorm__keymap *km, bool from_first) {
    if (km->n == 1) return key_eq(q, from, to, km, 0, from_first);
    const aorm_expr **l = aorm__arena_alloc(&q->arena, (size_t)km->n * sizeof(*l));
    aorm_expr *n = aorm__arena_alloc(&q->arena, sizeof(*n));
    if (!l || !n) return NULL;
    for (int i = 0; i < km->n; i++)
        if (!(l[i] = key_eq(q, from, to, km, i, from_first))) return NULL;
    memset(n, 0, sizeof(*n));
    n->kind = AORM_X_AND;
    n->list = l;
    n->n = km->n;
    return n;
}

int aorm__join_key(aorm_stmt *q, const aorm_model *joined, const aorm_model *from, const aorm_model *to,
                   const aorm__keymap *km) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), "aorm_join")) || (rc = check_model(q, joined, "aorm_join"))) return rc;
    if (!km || km->n < 1) return aorm__sql_fail(q, AORM_EMISUSE, "aorm_join: a key without columns");
    const aorm_expr *on = key_on(q, (side){from, NULL}, (side){to, NULL}, km, true);
    if (!on) return OOM(q);
    return add_join(q, (aorm__join){.model = joined, .on = on}, "aorm_join");
}

static int bad_keys(aorm_stmt *q, const aorm_model *m, const char *rel) {
    return aorm__sql_fail(q, AORM_EMISUSE,
                          "aorm_join_rel(%s): the relationship's keys do not resolve on %s (aorm_model_validate "
                          "says why)",
                          rel, m->name ? m->name : m->table);
}

/* The FROM item of the statement whose model declares rel (by address,
 * or by an equal descriptor): the first one, in FROM order; m NULL when
 * there is none. */
static side rel_owner(const aorm_stmt *q, const aorm_relationship *rel) {
    int n = q->njoins + 1;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            const aorm_model *m = i == 0 ? q->model : q->joins[i - 1].model;
            if (!m) continue;
            for (int k = 0; k < m->nrelationships; k++) {
                const aorm_relationship *r = &m->relationships[k];
                if (pass == 0 ? r == rel
                              : (r->offset == rel->offset && r->kind == rel->kind && r->target == rel->target &&
                                 r->name && rel->name && strcmp(r->name, rel->name) == 0))
                    return (side){m, i == 0 ? q->from_alias : q->joins[i - 1].alias};
            }
        }
    }
    return (side){NULL, NULL};
}

static int join_rel(aorm_stmt *q, const aorm_relationship *rel, const char *alias, bool outer, const char *fn) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), fn))) return rc;
    if (!rel) return aorm__sql_fail(q, AORM_EMISUSE, "%s: NULL relationship", fn);
    if (alias) {
        if ((rc = aorm__sql_check_name(q, alias, "alias", fn))) return rc;
        if (!(alias = arena_strdup(&q->arena, alias))) return OOM(q);
    }
    const char *rn = rel->name ? rel->name : "?";
    side o = rel_owner(q, rel);
    const aorm_model *m = o.m;
    if (!m)
        return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): the relationship does not belong to a model of the statement",
                              fn, rn);
    const aorm_model *t = rel->target;
    if (!t || check_model(q, t, fn)) return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): no target", fn, rn);
    side ts = {t, alias};
    const aorm_expr *on;
    aorm__keymap km;
    switch (rel->kind) {
    case AORM_MANY_TO_ONE:
        /* JOIN target ON target.pk = this.fk */
        if (aorm__rel_keymap(m, rel, 0, &km) < 0) return bad_keys(q, m, rn);
        if (!(on = key_on(q, o, ts, &km, false))) return OOM(q);
        return add_join(q, (aorm__join){.model = t, .alias = alias, .on = on, .outer = outer}, fn);
    case AORM_ONE_TO_MANY:
        /* JOIN target ON target.fk = this.pk */
        if (aorm__rel_keymap(m, rel, 0, &km) < 0) return bad_keys(q, m, rn);
        if (!(on = key_on(q, ts, o, &km, true))) return OOM(q);
        return add_join(q, (aorm__join){.model = t, .alias = alias, .on = on, .outer = outer}, fn);
    case AORM_MANY_TO_MANY: {
        const aorm_model *s = rel->secondary;
        if (!s || check_model(q, s, fn)) return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): no secondary model", fn, rn);
        side ss = {s, NULL};
        /* JOIN secondary ON secondary.local = this.pk JOIN target ON target.pk = secondary.remote */
        if (aorm__rel_keymap(m, rel, 0, &km) < 0) return bad_keys(q, m, rn);
        if (!(on = key_on(q, ss, o, &km, true))) return OOM(q);
        if (name_taken(q, alias ? alias : t->table))
            return aorm__sql_fail(q, AORM_EMISUSE,
                                  "%s(%s): %s is already part of the statement (join it under an alias: "
                                  "aorm_join_rel_alias)",
                                  fn, rn, alias ? alias : t->table);
        if ((rc = add_join(q, (aorm__join){.model = s, .on = on, .outer = outer}, fn))) return rc;
        if (aorm__rel_keymap(m, rel, 1, &km) < 0) return bad_keys(q, m, rn);
        if (!(on = key_on(q, ss, ts, &km, false))) return OOM(q);
        return add_join(q, (aorm__join){.model = t, .alias = alias, .on = on, .outer = outer}, fn);
    }
    }
    return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): unknown relationship kind %d", fn, rn, (int)rel->kind);
}

int aorm_join_rel(aorm_stmt *q, const aorm_relationship *rel, bool outer) {
    return join_rel(q, rel, NULL, outer, "aorm_join_rel");
}

int aorm_join_rel_alias(aorm_stmt *q, const aorm_relationship *rel, const char *alias, bool outer) {
    return join_rel(q, rel, alias ? alias : "", outer, "aorm_join_rel_alias");
}

static int add_cond(aorm_stmt *q, aorm__exprs *l, const aorm_expr *cond, unsigned kinds, const char *fn) {
    int rc = enter(q, cond, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, kinds, fn))) {
        aorm__sql_take_subs(q, cond, NULL);
        return rc;
    }
    const aorm_expr *c;
    if ((rc = copy(q, cond, 0, fn, &c))) return rc;
    return push_expr(q, l, c);
}

int aorm_where(aorm_stmt *q, const aorm_expr *cond) {
    return add_cond(q, q ? &q->where : NULL, cond, K(AORM__SELECT) | K(AORM__UPDATE) | K(AORM__DELETE),
                    "aorm_where");
}

int aorm_group_by(aorm_stmt *q, const aorm_expr *e) {
    return add_cond(q, q ? &q->group : NULL, e, K(AORM__SELECT), "aorm_group_by");
}

int aorm_having(aorm_stmt *q, const aorm_expr *cond) {
    return add_cond(q, q ? &q->having : NULL, cond, K(AORM__SELECT), "aorm_having");
}

int aorm_order_by(aorm_stmt *q, const aorm_expr *e, unsigned flags) {
    int rc = enter(q, e, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT) | K(AORM__COMPOUND), "aorm_order_by"))) {
        aorm__sql_take_subs(q, e, NULL);
        return rc;
    }
    if ((flags & ~(unsigned)(AORM_DESC | AORM_NULLS_FIRST | AORM_NULLS_LAST)) ||
        ((flags & AORM_NULLS_FIRST) && (flags & AORM_NULLS_LAST))) {
        aorm__sql_take_subs(q, e, NULL);
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_order_by: invalid flags 0x%x", flags);
    }
    const aorm_expr *c;
    if ((rc = copy(q, e, 0, "aorm_order_by", &c))) return rc;
    if (arena_grow(&q->arena, (void **)&q->order, &q->cap_order, q->norder + 1, sizeof(*q->order))) return OOM(q);
    q->order[q->norder++] = (aorm__order){c, flags};
    return 0;
}

static int limit_offset(aorm_stmt *q, int64_t n, bool offset) {
    const char *fn = offset ? "aorm_offset" : "aorm_limit";
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT) | K(AORM__COMPOUND), fn))) return rc;
    if (n < 0) return aorm__sql_fail(q, AORM_EMISUSE, "%s: negative count %" PRId64, fn, n);
    if (offset) {
        q->has_offset = true;
        q->offset = n;
    } else {
        q->has_limit = true;
        q->limit = n;
    }
    return 0;
}

int aorm_limit(aorm_stmt *q, int64_t n) { return limit_offset(q, n, false); }
int aorm_offset(aorm_stmt *q, int64_t n) { return limit_offset(q, n, true); }

int aorm_for_update(aorm_stmt *q, unsigned flags) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__SELECT), "aorm_for_update"))) return rc;
    if ((flags & ~(unsigned)(AORM_LOCK_SHARE | AORM_LOCK_NOWAIT | AORM_LOCK_SKIP_LOCKED)) ||
        ((flags & AORM_LOCK_NOWAIT) && (flags & AORM_LOCK_SKIP_LOCKED)))
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_for_update: invalid flags 0x%x (NOWAIT and SKIP LOCKED "
                                               "exclude each other)",
                              flags);
    q->has_lock = true;
    q->lock = flags;
    return 0;
}

/* =========================================================================
 * INSERT / UPDATE / DELETE
 * ========================================================================= */

static aorm_stmt *dml_new(aorm__stmt_kind kind, const aorm_model *m, const char *fn) {
    if (!m) return NULL;
    aorm_stmt *q = aorm__sql_new(kind, m);
    if (q) check_model(q, m, fn);
    return q;
}

aorm_stmt *aorm_insert(const aorm_model *m) { return dml_new(AORM__INSERT, m, "aorm_insert"); }
aorm_stmt *aorm_update(const aorm_model *m) { return dml_new(AORM__UPDATE, m, "aorm_update"); }
aorm_stmt *aorm_delete(const aorm_model *m) { return dml_new(AORM__DELETE, m, "aorm_delete"); }

int aorm_insert_object(aorm_stmt *q, const void *obj) {
    const void *objs[1] = {obj};
    return aorm_insert_objects(q, objs, 1);
}

int aorm_insert_objects(aorm_stmt *q, const void *const *objs, size_t n) {
    return aorm__insert_objects_cols(q, objs, n, NULL);
}

static const aorm_column *target_column(aorm_stmt *q, const aorm_expr *e, const char *fn);

/* Column i of the INSERT's model is left out of object row obj: a
 * SERIAL/IDENTITY column whose field is 0, or one given to
 * aorm_insert_use_default(). A server_default alone changes nothing: the
 * field's value is written, zero and NULL included (as a session does). */
static bool server_fills(const aorm_stmt *q, int i, const void *obj) {
    const aorm_column *col = &q->model->columns[i];
    if (q->use_default && q->use_default[i]) return true;
    return (col->flags & (AORM_SERIAL | AORM_IDENTITY)) && aorm__field_unset(col, obj);
}

int aorm_insert_use_default(aorm_stmt *q, const aorm_expr *col) {
    int rc = enter(q, col, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__INSERT), "aorm_insert_use_default"))) {
        aorm__sql_take_subs(q, col, NULL);
        return rc;
    }
    const aorm_expr *c;
    if ((rc = copy(q, col, 0, "aorm_insert_use_default", &c))) return rc;
    const aorm_column *tc = target_column(q, c, "aorm_insert_use_default");
    if (!tc) return q->error;
    if (!tc->server_default && !(tc->flags & (AORM_SERIAL | AORM_IDENTITY)))
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_insert_use_default: column \"%s\" of %s has no server default",
                              tc->name, q->model->table);
    if (q->nrows || q->isel)
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_insert_use_default(%s): call it before adding the rows",
                              q->model->table);
    if (!q->use_default) {
        q->use_default = aorm__arena_alloc(&q->arena, (size_t)q->model->ncolumns * sizeof(bool));
        if (!q->use_default) return OOM(q);
        memset(q->use_default, 0, (size_t)q->model->ncolumns * sizeof(bool));
    }
    q->use_default[tc - q->model->columns] = true;
    return 0;
}

int aorm_insert_select(aorm_stmt *q, const aorm_expr *const *cols, int n, aorm_stmt *sub) {
    const char *fn = "aorm_insert_select";
    int rc = enter_sub(q, sub, K(AORM__INSERT), fn);
    if (rc) {
        if (n > 0 && cols) aorm__sql_take_subs_list(q && !q->owner ? q : NULL, cols, n);
        return rc;
    }
    const aorm_model *m = q->model;
    if (q->nrows || q->sets.n || q->isel) {
        aorm__sql_take_subs_list(q, cols, n);
        return aorm__sql_fail(q, AORM_EMISUSE, "%s(%s): the INSERT already has its rows", fn, m->table);
    }
    if (n < 0 || (n > 0 && !cols)) return aorm__sql_fail(q, AORM_EMISUSE, "%s: no column array for %d columns", fn, n);
    const aorm_column **v = aorm__arena_alloc(&q->arena, (size_t)(n ? n : 1) * sizeof(*v));
    if (!v) {
        aorm__sql_take_subs_list(q, cols, n);
        return OOM(q);
    }
    for (int i = 0; i < n; i++) {
        const aorm_expr *c;
        rc = copy(q, cols[i], 0, fn, &c);
        if (!rc && !(v[i] = target_column(q, c, fn))) rc = q->error;
        for (int k = 0; !rc && k < i; k++)
            if (v[k] == v[i]) rc = aorm__sql_fail(q, AORM_EMISUSE, "%s: column \"%s\" is listed twice", fn, v[i]->name);
        if (rc) {
            aorm__sql_take_subs_list(q, cols + i + 1, n - i - 1);
            return rc;
        }
    }
    q->icols = v;
    q->nicols = n;
    q->isel = sub;
    return 0;
}

int aorm__insert_objects_cols(aorm_stmt *q, const void *const *objs, size_t n, const bool *omit) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__INSERT), "aorm_insert_objects"))) return rc;
    const aorm_model *m = q->model;
    if (q->isel)
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_insert_objects(%s): the INSERT takes its rows from a query",
                              m->table);
    if (!objs || n == 0) return aorm__sql_fail(q, AORM_EMISUSE, "aorm_insert_objects(%s): no objects", m->table);
    if (q->nrows)
        return aorm__sql_fail(q, AORM_EMISUSE,
                              "aorm_insert_objects(%s): rows were already added (pass every object in one call)",
                              m->table);
    if (q->sets.n)
        return aorm__sql_fail(q, AORM_EMISUSE,
                              "aorm_insert_objects(%s): cannot be combined with aorm_set values", m->table);
    for (size_t r = 0; r < n; r++)
        if (!objs[r])
            return aorm__sql_fail(q, AORM_EMISUSE, "aorm_insert_objects(%s): object %zu is NULL", m->table, r);
    /* The column set is the caller's (omit), or comes from the first row;
     * then every other row must leave the same columns to the server, or
     * the statement's shape would depend on the data. */
    const aorm_column **cols = aorm__arena_alloc(&q->arena, (size_t)m->ncolumns * sizeof(*cols));
    if (!cols) return OOM(q);
    int k = 0;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *col = &m->columns[i];
        bool unset = omit ? omit[i] : server_fills(q, i, objs[0]);
        for (size_t r = 1; r < n && !omit; r++)
            if (server_fills(q, i, objs[r]) != unset)
                return aorm__sql_fail(q, AORM_EMISUSE,
                                      "aorm_insert_objects(%s): object %zu %s column \"%s\" but object 0 %s; every "
                                      "row of a multi-row insert must set the same columns",
                                      m->table, r, unset ? "sets" : "leaves to the server", col->name,
                                      unset ? "does not" : "does");
        if (!unset) cols[k++] = col;
    }
    if (k == 0 && n > 1)
        return aorm__sql_fail(q, AORM_EMISUSE,
                              "aorm_insert_objects(%s): every column is left to the server; insert such rows one "
                              "at a time",
                              m->table);
    aorm_params_reset(&q->rows);
    /* Types without an unnest() form (arrays, enums, interval, inet) make
     * a multi-row insert a VALUES list: k parameters per row. */
    bool by_rows = false;
    for (int i = 0; i < k && n > 1; i++) by_rows = by_rows || !aorm__type_unnest_ok(cols[i]->type);
    if (by_rows && (size_t)k * n > 65535)
        return aorm__sql_fail(q, AORM_EMISUSE,
                              "aorm_insert_objects(%s): %zu rows of %d columns need more than 65535 parameters "
                              "(array, enum, interval or inet columns go as VALUES rows); insert fewer at a time",
                              m->table, n, k);
    for (size_t r = 0; by_rows && r < n && rc == 0; r++)
        for (int i = 0; i < k && rc == 0; i++) {
            rc = aorm__field_param(cols[i], objs[r], &q->rows);
            if (rc) {
                aorm_params_reset(&q->rows);
                if (rc == AORM_ENOMEM) return OOM(q);
                return aorm__sql_fail(q, rc, "aorm_insert_objects(%s): object %zu, column \"%s\": %s", m->table,
                                      r, cols[i]->name, aorm_strerror(rc));
            }
        }
    for (int i = 0; i < k && !by_rows; i++) {
        rc = n == 1 ? aorm__field_param(cols[i], objs[0], &q->rows)
                    : aorm__field_param_array(cols[i], objs, n, &q->rows);
        if (rc) {
            aorm_params_reset(&q->rows);
            if (rc == AORM_ENOMEM) return OOM(q);
            return aorm__sql_fail(q, rc, "aorm_insert_objects(%s): column \"%s\": %s", m->table, cols[i]->name,
                                  aorm_strerror(rc));
        }
    }
    q->icols = cols;
    q->nicols = k;
    q->nrows = n;
    return 0;
}

/* The column of the statement's model that e (a copy) names, or NULL
 * with the error recorded. */
static const aorm_column *target_column(aorm_stmt *q, const aorm_expr *e, const char *fn) {
    if (e->kind != AORM_X_COLUMN) {
        aorm__sql_fail(q, AORM_EMISUSE, "%s: the target must be a column (AORM_COL)", fn);
        return NULL;
    }
    if (e->model != q->model) {
        const aorm_column *c = e->v.p;
        aorm__sql_fail(q, AORM_EMISUSE, "%s: column %s.%s is not a column of %s, the statement's table", fn,
                       e->model->table, c->name, q->model->table);
        return NULL;
    }
    return e->v.p;
}

/* Copies the conflict columns. On failure every subquery of the list
 * (which should hold columns only) has been taken over all the same. */
static int cols_list(aorm_stmt *q, const aorm_expr *const *cols, int n, const char *fn) {
    if (n < 0 || (n > 0 && !cols)) return aorm__sql_fail(q, AORM_EMISUSE, "%s: no column array for %d columns", fn, n);
    const aorm_column **v = aorm__arena_alloc(&q->arena, (size_t)(n ? n : 1) * sizeof(*v));
    if (!v) {
        aorm__sql_take_subs_list(q, cols, n);
        return OOM(q);
    }
    for (int i = 0; i < n; i++) {
        const aorm_expr *c;
        int rc = copy(q, cols[i], 0, fn, &c); /* takes cols[i]'s subqueries, whatever happens */
        if (!rc && !(v[i] = target_column(q, c, fn))) rc = q->error;
        if (rc) {
            aorm__sql_take_subs_list(q, cols + i + 1, n - i - 1);
            return rc;
        }
    }
    q->ccols = v;
    q->nccols = n;
    return 0;
}

static int on_conflict(aorm_stmt *q, const aorm_expr *const *cols, int n, int what, const char *fn) {
    int rc = enter(q, NULL, NULL);
    if (!rc && !(rc = need_kind(q, K(AORM__INSERT), fn))) {
        if (q->conflict) rc = aorm__sql_fail(q, AORM_EMISUSE, "%s: ON CONFLICT was already given", fn);
        else if (what == AORM__CONFLICT_UPDATE && n == 0)
            rc = aorm__sql_fail(q, AORM_EMISUSE, "%s: DO UPDATE needs the conflict columns", fn);
        else if (!(rc = cols_list(q, cols, n, fn))) q->conflict = what;
        else return rc; /* cols_list took the list's subqueries */
    }
    /* A refused call still consumes the subqueries it was handed: q takes
     * them over (a NULL q frees them). */
    if (rc && n > 0 && cols) aorm__sql_take_subs_list(q, cols, n);
    return rc;
}

static int on_conflict_constraint(aorm_stmt *q, const char *name, int what, const char *fn) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__INSERT), fn))) return rc;
    if (q->conflict) return aorm__sql_fail(q, AORM_EMISUSE, "%s: ON CONFLICT was already given", fn);
    if ((rc = aorm__sql_check_name(q, name, "constraint name", fn))) return rc;
    if (!(q->conflict_constraint = arena_strdup(&q->arena, name))) return OOM(q);
    q->conflict = what;
    return 0;
}

int aorm_on_conflict_constraint_do_nothing(aorm_stmt *q, const char *name) {
    return on_conflict_constraint(q, name, AORM__CONFLICT_NOTHING, "aorm_on_conflict_constraint_do_nothing");
}

int aorm_on_conflict_constraint_do_update(aorm_stmt *q, const char *name) {
    return on_conflict_constraint(q, name, AORM__CONFLICT_UPDATE, "aorm_on_conflict_constraint_do_update");
}

int aorm_on_conflict_do_nothing(aorm_stmt *q, const aorm_expr *const *cols, int n) {
    return on_conflict(q, cols, n, AORM__CONFLICT_NOTHING, "aorm_on_conflict_do_nothing");
}

int aorm_on_conflict_do_update(aorm_stmt *q, const aorm_expr *const *cols, int n) {
    return on_conflict(q, cols, n, AORM__CONFLICT_UPDATE, "aorm_on_conflict_do_update");
}

int aorm_set(aorm_stmt *q, const aorm_expr *col, const aorm_expr *value) {
    int rc = enter(q, col, value);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__INSERT) | K(AORM__UPDATE), "aorm_set"))) {
        aorm__sql_take_subs(q, col, NULL);
        aorm__sql_take_subs(q, value, NULL);
        return rc;
    }
    bool upd = q->kind == AORM__INSERT && q->conflict == AORM__CONFLICT_UPDATE;
    if (q->kind == AORM__INSERT && !upd && (q->nrows || q->isel)) {
        aorm__sql_take_subs(q, col, value);
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_set(%s): the INSERT already has object rows", q->model->table);
    }
    const aorm_expr *c, *v;
    if ((rc = copy(q, col, 0, "aorm_set", &c))) {
        aorm__sql_take_subs(q, value, NULL);
        return rc;
    }
    if ((rc = copy(q, value, upd ? AORM__CP_EXCLUDED : 0, "aorm_set", &v))) return rc;
    const aorm_column *tc = target_column(q, c, "aorm_set");
    if (!tc) return q->error;
    aorm__sets *s = upd ? &q->upd : &q->sets;
    for (int i = 0; i < s->n; i++)
        if (s->v[i].col == tc)
            return aorm__sql_fail(q, AORM_EMISUSE, "aorm_set: column \"%s\" is set twice", tc->name);
    if (arena_grow(&q->arena, (void **)&s->v, &s->cap, s->n + 1, sizeof(*s->v))) return OOM(q);
    s->v[s->n++] = (aorm__set){tc, v};
    return 0;
}

int aorm_returning(aorm_stmt *q, const aorm_expr *e) {
    int rc = enter(q, e, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__INSERT) | K(AORM__UPDATE) | K(AORM__DELETE), "aorm_returning"))) {
        aorm__sql_take_subs(q, e, NULL);
        return rc;
    }
    const aorm_expr *c;
    if ((rc = copy(q, e, AORM__CP_LABEL, "aorm_returning", &c))) return rc;
    return items_add(q, &q->ret, c, NULL, NULL, NULL);
}

int aorm_returning_all(aorm_stmt *q) {
    int rc = enter(q, NULL, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__INSERT) | K(AORM__UPDATE) | K(AORM__DELETE), "aorm_returning_all"))) return rc;
    return items_add_model(q, &q->ret, q->model, NULL);
}

/* =========================================================================
 * Raw text
 * ========================================================================= */

aorm_stmt *aorm_raw(const char *sql) {
    if (!sql) return NULL;
    aorm_stmt *q = aorm__sql_new(AORM__RAW, NULL);
    if (!q) return NULL;
    char *t = arena_strdup(&q->arena, sql);
    if (!t) {
        OOM(q);
        return q;
    }
    q->text = t;
    q->text_len = strlen(t);
    aorm__sql_raw_parse(q);
    return q;
}

int aorm_bind(aorm_stmt *q, const char *name, const aorm_expr *value) {
    int rc = enter(q, value, NULL);
    if (rc) return rc;
    if ((rc = need_kind(q, K(AORM__RAW), "aorm_bind"))) {
        aorm__sql_take_subs(q, value, NULL);
        return rc;
    }
    if (!name) {
        aorm__sql_take_subs(q, value, NULL);
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_bind: NULL name");
    }
    if (*name == ':') name++;
    size_t len = strlen(name);
    int k = -1;
    for (int i = 0; i < q->nnames; i++)
        if (q->names[i].len == len && memcmp(q->names[i].name, name, len) == 0) k = i;
    if (k < 0) {
        aorm__sql_take_subs(q, value, NULL);
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_bind: the raw SQL has no placeholder :%s (unused bind)", name);
    }
    const aorm_expr *c;
    if ((rc = copy(q, value, 0, "aorm_bind", &c))) return rc;
    if (c->kind != AORM_X_VALUE && c->kind != AORM_X_ARRAY)
        return aorm__sql_fail(q, AORM_EMISUSE, "aorm_bind(:%s): only values can be bound (aorm_int8(), aorm_text()...)",
                              name);
    /* Binding a name again replaces its value. */
    q->names[k].value = c;
    return 0;
}

/* =========================================================================
 * Compiling
 * ========================================================================= */

int aorm_stmt_compile(aorm_stmt *q) {
    if (!q) return AORM_EMISUSE;
    if (q->error) return q->error;
    if (q->owner) return AORM_EMISUSE; /* a subquery: its parent compiles it */
    if (q->compiled) return 0;
    int rc = aorm__sql_compile(q);
    if (rc) return rc;
    q->compiled = true;
    return 0;
}

const char *aorm_stmt_sql(const aorm_stmt *q) { return q && q->compiled ? q->sql.data : NULL; }

const aorm_params *aorm_stmt_params(const aorm_stmt *q) { return q && q->compiled ? &q->params : NULL; }

/* expr.c -- copying expression trees into a statement.
 *
 * Expressions arrive as compound literals on the caller's stack (see the
 * macros of sql.h) and must not be referenced after the builder call
 * returns, so every node, string and array is copied into the statement's
 * arena here, and checked on the way: unknown kinds and operators,
 * columns the model does not declare, NUL bytes in text, values out of
 * range of their type, labels or EXCLUDED where they cannot go. A copied
 * COLUMN node keeps its resolved `const aorm_column *` in v.p, so the
 * compiler never searches a model again.
 *
 * Subqueries (aorm_in_select, aorm_exists, aorm_scalar) are statements
 * handed over by the caller: the statement the expression is attached to
 * becomes their owner, also when the attach fails, and frees them with
 * itself (aorm__sql_take_stmt, also used for CTEs, FROM subqueries and
 * the arms of set operations).
 *
 * Names from the caller are checked here: aliases and column names of
 * aorm_ref (1 to 63 bytes, quoted when compiled, so any text is safe);
 * function and type names, which must be identifiers. Window functions
 * must sit right under an OVER, and the helper nodes of windows and CASE
 * (lists, sort keys, frames, bounds, WHEN) only where they belong.
 *
 * Must not: keep any pointer into the caller's expression, or change the
 * statement beyond its arena, its subquery list and its error. */
#include <limits.h>
#include <string.h>

#include "mapping/mapping.h"
#include "sql/sql_int.h"

/* Deeper trees are refused rather than risking the stack. */
#define MAX_DEPTH 500

typedef struct cp {
    aorm_stmt *q;
    unsigned flags;
    const char *what;
    const aorm_expr *over_fn; /* the caller's function node under the OVER being copied */
} cp;

static const char *type_name(aorm_type t) {
    switch (t) {
    case AORM_BOOL: return "bool";
    case AORM_INT2: return "int2";
    case AORM_INT4: return "int4";
    case AORM_INT8: return "int8";
    case AORM_FLOAT4: return "float4";
    case AORM_FLOAT8: return "float8";
    case AORM_NUMERIC: return "numeric";
    case AORM_TEXT: return "text";
    case AORM_BYTEA: return "bytea";
    case AORM_DATE: return "date";
    case AORM_TIMESTAMP: return "timestamp";
    case AORM_TIMESTAMPTZ: return "timestamptz";
    case AORM_UUID: return "uuid";
    case AORM_JSON: return "json";
    case AORM_JSONB: return "jsonb";
    case AORM_INTERVAL: return "interval";
    case AORM_INET: return "inet";
    case AORM_CIDR: return "cidr";
    case AORM_ENUM: return "enum";
    case AORM_BOOL_ARRAY: return "bool[]";
    case AORM_INT2_ARRAY: return "int2[]";
    case AORM_INT4_ARRAY: return "int4[]";
    case AORM_INT8_ARRAY: return "int8[]";
    case AORM_FLOAT4_ARRAY: return "float4[]";
    case AORM_FLOAT8_ARRAY: return "float8[]";
    case AORM_NUMERIC_ARRAY: return "numeric[]";
    case AORM_TEXT_ARRAY: return "text[]";
    case AORM_UUID_ARRAY: return "uuid[]";
    case AORM_TIMESTAMPTZ_ARRAY: return "timestamptz[]";
    }
    return "?";
}

static bool is_ancestor(const aorm_stmt *q, const aorm_stmt *s) {
    for (const aorm_stmt *a = q; a; a = a->owner)
        if (a == s) return true;
    return false;
}

static void adopt(aorm_stmt *q, aorm_stmt *sub) {
    sub->owner = q;
    sub->next_sub = q->subs;
    q->subs = sub;
    /* A subquery that locks rows, one that writes (a data-modifying CTE),
     * or raw text (which may do anything), makes every enclosing
     * statement not read-only. */
    if ((sub->kind != AORM__SELECT && sub->kind != AORM__COMPOUND) || sub->has_lock || sub->locking_sub)
        for (aorm_stmt *a = q; a; a = a->owner) a->locking_sub = true;
}

/* Calls visit(sub, ctx) for every subquery node of e, at any depth: a
 * tree too deep to be copied (refused by copy_node) still hands over the
 * subqueries buried in it. Iterative, with its own stack (inline, then
 * heap), so depth costs no C stack; the number of nodes visited is
 * bounded so that a cyclic graph handed in by mistake cannot loop. */
#define WALK_MAX_NODES (1 << 22)

static void walk_subs(const aorm_expr *e, void (*visit)(aorm_stmt *sub, void *ctx), void *ctx) {
    const aorm_expr *inline_stack[64];
    const aorm_expr **st = inline_stack;
    size_t n = 0, cap = 64, visits = 0;
    if (e) st[n++] = e;
    while (n > 0 && visits++ < WALK_MAX_NODES) {
        e = st[--n];
        const aorm_expr *kids[3] = {NULL, NULL, NULL};
        const aorm_expr *const *list = NULL;
        int nlist = 0;
        switch (e->kind) {
        case AORM_X_IN_SELECT:
        case AORM_X_EXISTS:
        case AORM_X_SUBQUERY:
            if (e->sub) visit(e->sub, ctx);
            kids[0] = e->a;
            break;
        case AORM_X_OVER: /* a, b, c and the frame in list */
        case AORM_X_CALL:
        case AORM_X_LIST:
        case AORM_X_CASE:
        case AORM_X_SORT:
        case AORM_X_FRAME:
        case AORM_X_BOUND:
        case AORM_X_WHEN:
        case AORM_X_CAST:
        case AORM_X_QUANT:
            kids[0] = e->a;
            kids[1] = e->b;
            kids[2] = e->c;
            list = e->list;
            nlist = e->list ? e->n : 0;
            if (nlist < 0) nlist = 0;
            break;
        case AORM_X_REF: break;
        case AORM_X_BINARY:
        case AORM_X_BETWEEN:
        case AORM_X_ANY:
        case AORM_X_NOT:
        case AORM_X_IS_NULL:
        case AORM_X_IS_NOT_NULL:
        case AORM_X_FUNC:
        case AORM_X_LABEL:
        case AORM_X_EXCLUDED: /* takes a column, but may be handed anything */
            kids[0] = e->a;
            kids[1] = e->b;
            kids[2] = e->c;
            break;
        case AORM_X_AND:
        case AORM_X_OR:
        case AORM_X_TUPLE_IN:
            list = e->list;
            nlist = e->list ? e->n : 0;
            break;
        case AORM_X_COLUMN:
        case AORM_X_VALUE:
        case AORM_X_ARRAY:
            break;
        }
        size_t more = 3 + (nlist > 0 ? (size_t)nlist : 0);
        if (cap - n < more) {
            size_t ncap = cap;
            while (ncap - n < more) ncap *= 2;
            const aorm_expr **ns = malloc(ncap * sizeof(*ns));
            if (!ns) break; /* out of memory: what is left stays unowned */
            memcpy(ns, st, n * sizeof(*ns));
            if (st != inline_stack) free(st);
            st = ns;
            cap = ncap;
        }
        for (int i = 0; i < 3; i++)
            if (kids[i]) st[n++] = kids[i];
        for (int i = 0; i < nlist; i++)
            if (list[i]) st[n++] = list[i];
    }
    if (st != inline_stack) free(st);
}

typedef struct take_ctx {
    aorm_stmt *q;
} take_ctx;

static void take_visit(aorm_stmt *sub, void *ctx) {
    aorm_stmt *q = ((take_ctx *)ctx)->q;
    if (!sub->owner && !is_ancestor(q, sub)) adopt(q, sub);
}

static void take_subs(aorm_stmt *q, const aorm_expr *e) {
    take_ctx c = {q};
    walk_subs(e, take_visit, &c);
}

/* Marks subqueries collected for freeing, so that one passed twice in the
 * same expression is freed once. */
static char trash_mark;
#define TRASH ((aorm_stmt *)(void *)&trash_mark)

static void collect_visit(aorm_stmt *sub, void *ctx) {
    aorm_stmt **list = ctx;
    if (sub->owner) return;
    sub->owner = TRASH;
    sub->next_sub = *list;
    *list = sub;
}

static void collect_subs(aorm_stmt **list, const aorm_expr *e) { walk_subs(e, collect_visit, list); }

void aorm__sql_take_subs(aorm_stmt *q, const aorm_expr *e, const aorm_expr *e2) {
    if (q) {
        take_subs(q, e);
        take_subs(q, e2);
        return;
    }
    aorm_stmt *list = NULL;
    collect_subs(&list, e);
    collect_subs(&list, e2);
    while (list) {
        aorm_stmt *next = list->next_sub;
        list->next_sub = NULL;
        aorm__sql_destroy(list);
        list = next;
    }
}

static int fail_nomem(cp *c) { return aorm__sql_fail(c->q, AORM_ENOMEM, NULL); }

static void *alloc(cp *c, size_t n) { return aorm__arena_alloc(&c->q->arena, n); }
static void *arena_alloc_fn(void *arena, size_t n) { return aorm__arena_alloc(arena, n); }

/* Text-like values: the given length (or strlen), NUL-terminated copy. */
static int copy_text(cp *c, const aorm_expr *e, aorm_expr *n) {
    const char *s = e->v.s;
    if (!s) {
        if (e->len == SIZE_MAX) {
            n->null = true;
            return 0;
        }
        if (e->len != 0)
            return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: %s value with a NULL pointer and length %zu", c->what,
                                  type_name(e->type), e->len);
        s = "";
    }
    size_t len = e->len == SIZE_MAX ? strlen(s) : e->len;
    if (e->len != SIZE_MAX && memchr(s, '\0', len))
        return aorm__sql_fail(c->q, AORM_EENCODING,
                              "%s: %s value contains a NUL byte (PostgreSQL text cannot hold one)", c->what,
                              type_name(e->type));
    if (len > (size_t)INT32_MAX - 1)
        return aorm__sql_fail(c->q, AORM_ERANGE, "%s: %s value of %zu bytes is too long", c->what,
                              type_name(e->type), len);
    char *d = alloc(c, len + 1);
    if (!d) return fail_nomem(c);
    memcpy(d, s, len);
    d[len] = '\0';
    n->v.s = d;
    n->len = len;
    if (e->type == AORM_NUMERIC) {
        /* Checked now, so that a malformed decimal is reported by the call
         * that received it. */
        aorm_params t;
        aorm_params_init(&t);
        int rc = aorm_params_numeric(&t, d);
        aorm_params_free(&t);
        if (rc)
            return aorm__sql_fail(c->q, rc == AORM_ENOMEM ? AORM_ENOMEM : AORM_EENCODING,
                                  "%s: malformed numeric value \"%.40s\"", c->what, d);
    }
    return 0;
}

static const char *copy_str(cp *c, const char *s);

static int copy_value(cp *c, const aorm_expr *e, aorm_expr *n) {
    n->type = e->type;
    n->null = e->null;
    if (e->name) { /* aorm_param: a named placeholder, its value bound later */
        if (!*e->name) return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: aorm_param with an empty name", c->what);
        if (e->type < AORM_BOOL || e->type > AORM_TYPE_LAST)
            return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: aorm_param \"%.40s\" of unknown type %d", c->what,
                                  e->name, (int)e->type);
        if (!(n->name = copy_str(c, e->name))) return fail_nomem(c);
        n->null = true;
        n->enum_type = e->enum_type;
        return 0;
    }
    if (e->type < AORM_BOOL || e->type > AORM_TYPE_LAST)
        return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: unknown value type %d", c->what, (int)e->type);
    if (e->null) return 0;
    switch (e->type) {
    case AORM_BOOL: n->v.b = e->v.b; return 0;
    case AORM_INT2:
        if (e->v.i < INT16_MIN || e->v.i > INT16_MAX) goto range;
        n->v.i = e->v.i;
        return 0;
    case AORM_INT4:
    case AORM_DATE:
        if (e->v.i < INT32_MIN || e->v.i > INT32_MAX) goto range;
        n->v.i = e->v.i;
        return 0;
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: n->v.i = e->v.i; return 0;
    case AORM_FLOAT4:
    case AORM_FLOAT8: n->v.d = e->v.d; return 0;
    case AORM_TEXT:
    case AORM_JSON:
    case AORM_JSONB:
    case AORM_NUMERIC: return copy_text(c, e, n);
    case AORM_BYTEA: {
        if (!e->v.p && e->len)
            return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: bytea value with a NULL pointer and length %zu", c->what,
                                  e->len);
        if (e->len == SIZE_MAX || e->len > (size_t)INT32_MAX)
            return aorm__sql_fail(c->q, AORM_ERANGE, "%s: bytea value needs a length that fits (got %zu)", c->what,
                                  e->len);
        void *d = alloc(c, e->len);
        if (!d) return fail_nomem(c);
        if (e->len) memcpy(d, e->v.p, e->len);
        n->v.p = d;
        n->len = e->len;
        return 0;
    }
    case AORM_UUID: {
        if (!e->v.p) {
            n->null = true;
            return 0;
        }
        void *d = alloc(c, 16);
        if (!d) return fail_nomem(c);
        memcpy(d, e->v.p, 16);
        n->v.p = d;
        n->len = 16;
        return 0;
    }
    case AORM_INTERVAL:
    case AORM_INET:
    case AORM_CIDR: {
        size_t sz = e->type == AORM_INTERVAL ? sizeof(aorm_interval) : sizeof(aorm_inet);
        if (!e->v.p) {
            n->null = true;
            return 0;
        }
        void *d = alloc(c, sz);
        if (!d) return fail_nomem(c);
        memcpy(d, e->v.p, sz);
        n->v.p = d;
        return 0;
    }
    case AORM_ENUM:
        if (!e->enum_type)
            return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: enum value without its aorm_enum", c->what);
        if (e->v.i < INT32_MIN || e->v.i > INT32_MAX || !aorm__enum_label(e->enum_type, (int32_t)e->v.i))
            return aorm__sql_fail(c->q, AORM_EENCODING, "%s: %lld is not a value of enum %s", c->what,
                                  (long long)e->v.i, e->enum_type->name ? e->enum_type->name : "?");
        n->v.i = e->v.i;
        n->enum_type = e->enum_type;
        return 0;
    default: { /* arrays: the aorm_array_* and its elements (and strings) into the arena */
        if (!e->v.p) {
            n->null = true;
            return 0;
        }
        aorm_array_int64 *d = alloc(c, sizeof(*d)); /* every aorm_array_* has this layout */
        if (!d) return fail_nomem(c);
        memcpy(d, e->v.p, sizeof(*d));
        aorm_column col = {.name = "value", .type = e->type, .size = sizeof(*d)};
        aorm_allocator al = {arena_alloc_fn, &c->q->arena};
        if (aorm__field_own_array(&col, d, &al)) return fail_nomem(c);
        n->v.p = d;
        return 0;
    }
    }
    return 0;
range:
    return aorm__sql_fail(c->q, AORM_ERANGE, "%s: value %lld out of range for %s", c->what, (long long)e->v.i,
                          type_name(e->type));
}

/* IN-list arrays: int4, int8, text and uuid elements. Text arrays carry
 * their NULL elements as NULL pointers (the NULL flags folded in). */
static int copy_array(cp *c, const aorm_expr *e, aorm_expr *n) {
    size_t cnt = e->len, width;
    n->type = e->type;
    switch (e->type) {
    case AORM_INT4: width = 4; break;
    case AORM_INT8: width = 8; break;
    case AORM_UUID: width = 16; break;
    case AORM_TEXT: width = sizeof(char *); break;
    default:
        return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: arrays of %s are not supported (int4, int8, text, uuid)",
                              c->what, type_name(e->type));
    }
    if (cnt > (size_t)INT32_MAX / 32)
        return aorm__sql_fail(c->q, AORM_ERANGE, "%s: array of %zu elements is too long", c->what, cnt);
    if (!e->v.p && cnt)
        return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: array of %zu elements with a NULL pointer", c->what, cnt);
    n->len = cnt;
    if (e->type == AORM_TEXT) {
        const char *const *src = e->v.p;
        size_t total = 0;
        for (size_t i = 0; i < cnt; i++)
            if (src[i] && !(e->nulls && e->nulls[i])) total += strlen(src[i]) + 1;
        const char **v = alloc(c, cnt * sizeof(*v) + 1);
        char *buf = alloc(c, total + 1);
        if (!v || !buf) return fail_nomem(c);
        for (size_t i = 0; i < cnt; i++) {
            if (!src[i] || (e->nulls && e->nulls[i])) {
                v[i] = NULL;
                continue;
            }
            size_t l = strlen(src[i]) + 1;
            memcpy(buf, src[i], l);
            v[i] = buf;
            buf += l;
        }
        n->v.p = v;
        return 0;
    }
    void *v = alloc(c, cnt * width + 1);
    if (!v) return fail_nomem(c);
    if (cnt) memcpy(v, e->v.p, cnt * width);
    n->v.p = v;
    if (e->nulls && cnt) {
        bool *nl = alloc(c, cnt * sizeof(bool));
        if (!nl) return fail_nomem(c);
        memcpy(nl, e->nulls, cnt * sizeof(bool));
        n->nulls = nl;
    }
    return 0;
}

static const char *stmt_kind_name(aorm__stmt_kind k) {
    switch (k) {
    case AORM__SELECT: return "a SELECT";
    case AORM__INSERT: return "an INSERT";
    case AORM__UPDATE: return "an UPDATE";
    case AORM__DELETE: return "a DELETE";
    case AORM__RAW: return "raw text";
    case AORM__COMPOUND: return "a set operation";
    }
    return "?";
}

int aorm__sql_take_stmt(aorm_stmt *q, aorm_stmt *sub, unsigned kinds, const char *what) {
    if (!sub) return aorm__sql_fail(q, AORM_EMISUSE, "%s: NULL statement", what);
    if (is_ancestor(q, sub))
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: a statement cannot be part of itself", what);
    if (sub->owner)
        return aorm__sql_fail(q, AORM_EMISUSE,
                              "%s: the statement already belongs to a statement (a subquery is attached once)", what);
    adopt(q, sub);
    if (!(kinds & (1u << sub->kind)))
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: %s cannot go here (a subquery must be a SELECT%s)", what,
                              stmt_kind_name(sub->kind),
                              (kinds & (1u << AORM__DELETE)) ? ", a set operation, raw text or a data-modifying statement"
                                                             : ", a set operation or raw text");
    if (sub->error) return aorm__sql_fail(q, sub->error, "%s: subquery: %s", what, sub->errmsg);
    return 0;
}

#define QUERY_KINDS ((1u << AORM__SELECT) | (1u << AORM__RAW) | (1u << AORM__COMPOUND))

static int take_sub(cp *c, aorm_stmt *sub) {
    if (!sub) return aorm__sql_fail(c->q, AORM_EMISUSE, "%s: NULL subquery statement", c->what);
    return aorm__sql_take_stmt(c->q, sub, QUERY_KINDS, c->what);
}

int aorm__sql_check_name(aorm_stmt *q, const char *name, const char *what, const char *fn) {
    if (!name || !*name) return aorm__sql_fail(q, AORM_EMISUSE, "%s: empty %s", fn, what);
    size_t n = strlen(name);
    if (n > 63)
        return aorm__sql_fail(q, AORM_EMISUSE,
                              "%s: %s \"%.20s...\" is %zu bytes long (at most 63: PostgreSQL would cut it)", fn,
                              what, name, n);
    return 0;
}

/* A function or type name: identifier parts [A-Za-z_][A-Za-z0-9_]* of at
 * most 63 bytes, at most one "schema." before the name, and (types) an
 * optional "[]" at the end. */
static bool sql_name_ok(const char *s, bool type) {
    int parts = 0;
    for (;;) {
        size_t len = 0;
        if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_')) return false;
        while ((s[len] >= 'a' && s[len] <= 'z') || (s[len] >= 'A' && s[len] <= 'Z') || s[len] == '_' ||
               (s[len] >= '0' && s[len] <= '9'))
            len++;
        if (len > 63) return false;
        s += len;
        parts++;
        if (*s == '.' && parts == 1) {
            s++;
            continue;
        }
        if (type && s[0] == '[' && s[1] == ']' && s[2] == '\0') return true;
        return *s == '\0';
    }
}

static const char *copy_str(cp *c, const char *s) {
    size_t l = strlen(s) + 1;
    char *d = alloc(c, l);
    if (d) memcpy(d, s, l);
    return d;
}

static int copy_node(cp *c, const aorm_expr *e, int depth, const aorm_expr **out);

static int copy_child(cp *c, const aorm_expr *e, int depth, const aorm_expr **out) {
    return copy_node(c, e, depth + 1, out);
}

/* A function call: the arguments' count is checked for SQL's own forms
 * and the window functions (which must sit right under an OVER); a
 * named function's name must be an identifier. */
static int copy_call(cp *c, const aorm_expr *e, aorm_expr *n, int depth) {
    aorm_stmt *q = c->q;
    int lo = 0, hi = 0;
    bool window = false;
    switch (e->op) {
    case AORM_FN_COALESCE:
    case AORM_FN_GREATEST:
    case AORM_FN_LEAST: lo = 1, hi = 1000; break;
    case AORM_FN_NULLIF: lo = hi = 2; break;
    case AORM_FN_ROW_NUMBER:
    case AORM_FN_RANK:
    case AORM_FN_DENSE_RANK:
    case AORM_FN_PERCENT_RANK:
    case AORM_FN_CUME_DIST: window = true; break;
    case AORM_FN_NTILE:
    case AORM_FN_FIRST_VALUE:
    case AORM_FN_LAST_VALUE: lo = hi = 1, window = true; break;
    case AORM_FN_NTH_VALUE: lo = hi = 2, window = true; break;
    case AORM_FN_LAG:
    case AORM_FN_LEAD: lo = 1, hi = 3, window = true; break;
    case AORM_FN_NAMED:
        if (!e->name || !sql_name_ok(e->name, false))
            return aorm__sql_fail(q, AORM_EMISUSE,
                                  "%s: aorm_func: \"%.40s\" is not a function name (an identifier "
                                  "[A-Za-z_][A-Za-z0-9_]*, optionally schema-qualified)",
                                  c->what, e->name ? e->name : "(null)");
        if (!(n->name = copy_str(c, e->name))) return fail_nomem(c);
        lo = 0, hi = 1000;
        break;
    default: return aorm__sql_fail(q, AORM_EMISUSE, "%s: unknown function %d", c->what, (int)e->op);
    }
    if (window && c->over_fn != e)
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: a window function needs aorm_over()", c->what);
    if (e->n < lo || e->n > hi || (e->n > 0 && !e->list))
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: function %d takes %d to %d arguments (got %d)", c->what,
                              (int)e->op, lo, hi, e->n);
    const aorm_expr **l = alloc(c, (size_t)(e->n ? e->n : 1) * sizeof(*l));
    if (!l) return fail_nomem(c);
    int rc = 0;
    for (int i = 0; i < e->n && !rc; i++) rc = copy_child(c, e->list[i], depth, &l[i]);
    n->list = l;
    n->n = e->n;
    return rc;
}

/* A PARTITION BY or window ORDER BY list; sort keys only in the latter. */
static int copy_wlist(cp *c, const aorm_expr *e, bool order, int depth, const aorm_expr **out) {
    aorm_stmt *q = c->q;
    if (e->kind != AORM_X_LIST || e->n < 1 || !e->list)
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: aorm_over: the %s must be a non-empty aorm_list() (or NULL)",
                              c->what, order ? "ORDER BY" : "PARTITION BY");
    aorm_expr *n = alloc(c, sizeof(*n));
    const aorm_expr **l = alloc(c, (size_t)e->n * sizeof(*l));
    if (!n || !l) return fail_nomem(c);
    memset(n, 0, sizeof(*n));
    n->kind = AORM_X_LIST;
    int rc = 0;
    for (int i = 0; i < e->n && !rc; i++) {
        const aorm_expr *x = e->list[i];
        if (x && x->kind == AORM_X_SORT) {
            unsigned f = (unsigned)x->n;
            if (!order) return aorm__sql_fail(q, AORM_EMISUSE, "%s: PARTITION BY takes no sort order", c->what);
            if ((f & ~(unsigned)(AORM_DESC | AORM_NULLS_FIRST | AORM_NULLS_LAST)) ||
                ((f & AORM_NULLS_FIRST) && (f & AORM_NULLS_LAST)))
                return aorm__sql_fail(q, AORM_EMISUSE, "%s: aorm_sort: invalid flags 0x%x", c->what, f);
            aorm_expr *sn = alloc(c, sizeof(*sn));
            if (!sn) return fail_nomem(c);
            memset(sn, 0, sizeof(*sn));
            sn->kind = AORM_X_SORT;
            sn->n = (int)f;
            rc = copy_child(c, x->a, depth + 1, &sn->a);
            l[i] = sn;
        } else {
            rc = copy_child(c, x, depth, &l[i]);
        }
    }
    n->list = l;
    n->n = e->n;
    *out = n;
    return rc;
}

static int copy_bound(cp *c, const aorm_expr *e, bool start, int depth, const aorm_expr **out) {
    aorm_stmt *q = c->q;
    if (!e || e->kind != AORM_X_BOUND || e->n < AORM_BOUND_UNBOUNDED_PRECEDING ||
        e->n > AORM_BOUND_UNBOUNDED_FOLLOWING)
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: a frame bound must be aorm_preceding(), aorm_current_row()...",
                              c->what);
    if ((start && e->n == AORM_BOUND_UNBOUNDED_FOLLOWING) || (!start && e->n == AORM_BOUND_UNBOUNDED_PRECEDING))
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: a frame cannot %s at UNBOUNDED %s", c->what,
                              start ? "start" : "end", start ? "FOLLOWING" : "PRECEDING");
    bool off = e->n == AORM_BOUND_PRECEDING || e->n == AORM_BOUND_FOLLOWING;
    if (off != (e->a != NULL))
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: frame bound %d %s an offset", c->what, e->n,
                              off ? "needs" : "takes no");
    aorm_expr *n = alloc(c, sizeof(*n));
    if (!n) return fail_nomem(c);
    memset(n, 0, sizeof(*n));
    n->kind = AORM_X_BOUND;
    n->n = e->n;
    *out = n;
    return off ? copy_child(c, e->a, depth, &n->a) : 0;
}

static int copy_over(cp *c, const aorm_expr *e, aorm_expr *n, int depth) {
    aorm_stmt *q = c->q;
    const aorm_expr *f = e->a;
    if (!f || !(f->kind == AORM_X_FUNC || (f->kind == AORM_X_CALL && f->op >= AORM_FN_ROW_NUMBER &&
                                           f->op <= AORM_FN_NAMED)))
        return aorm__sql_fail(q, AORM_EMISUSE,
                              "%s: aorm_over() takes a window function, an aggregate or aorm_func()", c->what);
    const aorm_expr *saved = c->over_fn;
    c->over_fn = f;
    int rc = copy_child(c, f, depth, &n->a);
    c->over_fn = saved;
    if (rc) return rc;
    if (e->b && (rc = copy_wlist(c, e->b, false, depth + 1, &n->b))) return rc;
    if (e->c && (rc = copy_wlist(c, e->c, true, depth + 1, &n->c))) return rc;
    if (e->n) {
        const aorm_expr *fr = e->n == 1 && e->list ? e->list[0] : NULL;
        if (!fr || fr->kind != AORM_X_FRAME || fr->n < AORM_FRAME_ROWS || fr->n > AORM_FRAME_GROUPS)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: aorm_over_frame: the frame must be aorm_rows(), "
                                                   "aorm_range() or aorm_groups()",
                                  c->what);
        aorm_expr *fn = alloc(c, sizeof(*fn));
        const aorm_expr **l = alloc(c, sizeof(*l));
        if (!fn || !l) return fail_nomem(c);
        memset(fn, 0, sizeof(*fn));
        fn->kind = AORM_X_FRAME;
        fn->n = fr->n;
        if ((rc = copy_bound(c, fr->a, true, depth + 2, &fn->a))) return rc;
        if (fr->b && (rc = copy_bound(c, fr->b, false, depth + 2, &fn->b))) return rc;
        l[0] = fn;
        n->list = l;
        n->n = 1;
    }
    return 0;
}

static int copy_node(cp *c, const aorm_expr *e, int depth, const aorm_expr **out) {
    aorm_stmt *q = c->q;
    if (!e) return aorm__sql_fail(q, AORM_EMISUSE, "%s: NULL expression", c->what);
    if (depth > MAX_DEPTH)
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: expression nested deeper than %d levels", c->what, MAX_DEPTH);
    aorm_expr *n = alloc(c, sizeof(*n));
    if (!n) return fail_nomem(c);
    memset(n, 0, sizeof(*n));
    n->kind = e->kind;
    n->op = e->op;
    int rc = 0;
    switch (e->kind) {
    case AORM_X_COLUMN: {
        if (!e->model) return aorm__sql_fail(q, AORM_EMISUSE, "%s: column without a model", c->what);
        if (!e->model->table || !*e->model->table)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: model %s has no table name", c->what,
                                  e->model->name ? e->model->name : "?");
        const aorm_column *col = aorm__sql_column_at(e->model, e->offset);
        if (!col)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: model %s (table \"%s\") has no column at offset %zu",
                                  c->what, e->model->name ? e->model->name : "?",
                                  e->model->table, e->offset);
        if (!col->name || !*col->name)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: the column at offset %zu of %s has no name", c->what,
                                  e->offset, e->model->table);
        n->model = e->model;
        n->offset = e->offset;
        n->v.p = col;
        if (e->alias) {
            if ((rc = aorm__sql_check_name(q, e->alias, "alias", c->what))) return rc;
            if (!(n->alias = copy_str(c, e->alias))) return fail_nomem(c);
        }
        break;
    }
    case AORM_X_REF:
        if (!e->name) return aorm__sql_fail(q, AORM_EMISUSE, "%s: aorm_ref() without a column name", c->what);
        if ((rc = aorm__sql_check_name(q, e->name, "column name", c->what))) return rc;
        if (e->alias && (rc = aorm__sql_check_name(q, e->alias, "alias", c->what))) return rc;
        if (!(n->name = copy_str(c, e->name)) || (e->alias && !(n->alias = copy_str(c, e->alias))))
            return fail_nomem(c);
        break;
    case AORM_X_CALL: rc = copy_call(c, e, n, depth); break;
    case AORM_X_OVER: rc = copy_over(c, e, n, depth); break;
    case AORM_X_CASE: {
        if (e->n < 1 || !e->list)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: CASE without any aorm_when()", c->what);
        const aorm_expr **l = alloc(c, (size_t)e->n * sizeof(*l));
        if (!l) return fail_nomem(c);
        for (int i = 0; i < e->n && !rc; i++) {
            const aorm_expr *w = e->list[i];
            if (!w || w->kind != AORM_X_WHEN)
                return aorm__sql_fail(q, AORM_EMISUSE, "%s: CASE entry %d is not aorm_when() / aorm_else()", c->what,
                                      i + 1);
            if (!w->a && (i != e->n - 1 || i == 0))
                return aorm__sql_fail(q, AORM_EMISUSE,
                                      "%s: aorm_else() goes last in a CASE, after at least one aorm_when()", c->what);
            aorm_expr *wn = alloc(c, sizeof(*wn));
            if (!wn) return fail_nomem(c);
            memset(wn, 0, sizeof(*wn));
            wn->kind = AORM_X_WHEN;
            if (w->a) rc = copy_child(c, w->a, depth + 1, &wn->a);
            if (!rc) rc = copy_child(c, w->b, depth + 1, &wn->b);
            l[i] = wn;
        }
        n->list = l;
        n->n = e->n;
        break;
    }
    case AORM_X_CAST:
        if (e->name) {
            if (!sql_name_ok(e->name, true))
                return aorm__sql_fail(q, AORM_EMISUSE,
                                      "%s: aorm_cast_name: \"%.40s\" is not a type name (an identifier, "
                                      "optionally schema-qualified, optionally ending in [])",
                                      c->what, e->name);
            if (!(n->name = copy_str(c, e->name))) return fail_nomem(c);
        } else if (e->type < AORM_BOOL || e->type > AORM_TYPE_LAST) {
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: aorm_cast to unknown type %d", c->what, (int)e->type);
        }
        n->type = e->type;
        rc = copy_child(c, e->a, depth, &n->a);
        break;
    case AORM_X_SUBQUERY:
        if ((rc = take_sub(c, e->sub))) break;
        n->sub = e->sub;
        break;
    case AORM_X_QUANT:
        if (e->op < AORM_OP_EQ || e->op > AORM_OP_NOT_ILIKE)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: ANY/ALL takes a comparison operator (got %d)", c->what,
                                  (int)e->op);
        if (e->n != 0 && e->n != 1)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: ANY/ALL: invalid quantifier %d", c->what, e->n);
        n->n = e->n;
        if (!(rc = copy_child(c, e->a, depth, &n->a))) rc = copy_child(c, e->b, depth, &n->b);
        break;
    case AORM_X_LIST:
    case AORM_X_SORT:
    case AORM_X_FRAME:
    case AORM_X_BOUND:
    case AORM_X_WHEN:
        return aorm__sql_fail(q, AORM_EMISUSE, "%s: %s only goes in %s", c->what,
                              e->kind == AORM_X_LIST    ? "aorm_list()"
                              : e->kind == AORM_X_SORT  ? "aorm_sort()/aorm_asc()/aorm_desc()"
                              : e->kind == AORM_X_FRAME ? "a frame (aorm_rows()...)"
                              : e->kind == AORM_X_BOUND ? "a frame bound"
                                                        : "aorm_when()/aorm_else()",
                              e->kind == AORM_X_WHEN ? "aorm_case()" : "aorm_over() / aorm_over_frame()");
    case AORM_X_VALUE: rc = copy_value(c, e, n); break;
    case AORM_X_ARRAY: rc = copy_array(c, e, n); break;
    case AORM_X_BINARY:
        if (!(e->op >= AORM_OP_EQ && e->op <= AORM_OP_DIV) && !(e->op >= AORM_OP_MOD && e->op <= AORM_OP_OVERLAPS))
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: unknown binary operator %d", c->what, (int)e->op);
        if (!(rc = copy_child(c, e->a, depth, &n->a))) rc = copy_child(c, e->b, depth, &n->b);
        break;
    case AORM_X_AND:
    case AORM_X_OR: {
        if (e->n < 0 || (e->n > 0 && !e->list))
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: AND/OR list without its %d elements", c->what, e->n);
        const aorm_expr **l = alloc(c, (size_t)(e->n ? e->n : 1) * sizeof(*l));
        if (!l) return fail_nomem(c);
        for (int i = 0; i < e->n && !rc; i++) rc = copy_child(c, e->list[i], depth, &l[i]);
        n->list = l;
        n->n = e->n;
        break;
    }
    case AORM_X_TUPLE_IN: {
        int k = e->n / 2;
        if (e->n < 2 || e->n % 2 || k > AORM_KEY_MAX || !e->list)
            return aorm__sql_fail(q, AORM_EMISUSE,
                                  "%s: aorm_tuple_in takes 1 to %d expressions and as many arrays (got %d arguments)",
                                  c->what, AORM_KEY_MAX, e->n);
        for (int i = 0; i < e->n; i++) {
            const aorm_expr *x = e->list[i];
            if (!x) return aorm__sql_fail(q, AORM_EMISUSE, "%s: aorm_tuple_in: NULL argument", c->what);
            if ((i >= k) != (x->kind == AORM_X_ARRAY))
                return aorm__sql_fail(q, AORM_EMISUSE,
                                      "%s: aorm_tuple_in: argument %d must %s (expressions first, then arrays)",
                                      c->what, i + 1, i >= k ? "be an array" : "not be an array");
            if (i > k && x->len != e->list[k]->len)
                return aorm__sql_fail(q, AORM_EMISUSE, "%s: aorm_tuple_in: arrays of different lengths (%zu, %zu)",
                                      c->what, e->list[k]->len, x->len);
        }
        const aorm_expr **l = alloc(c, (size_t)e->n * sizeof(*l));
        if (!l) return fail_nomem(c);
        for (int i = 0; i < e->n && !rc; i++) rc = copy_child(c, e->list[i], depth, &l[i]);
        n->list = l;
        n->n = e->n;
        break;
    }
    case AORM_X_NOT:
    case AORM_X_IS_NULL:
    case AORM_X_IS_NOT_NULL: rc = copy_child(c, e->a, depth, &n->a); break;
    case AORM_X_BETWEEN:
        if (!(rc = copy_child(c, e->a, depth, &n->a)) && !(rc = copy_child(c, e->b, depth, &n->b)))
            rc = copy_child(c, e->c, depth, &n->c);
        break;
    case AORM_X_ANY:
        if (e->op != AORM_OP_EQ && e->op != AORM_OP_NE)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: ANY takes = or <> (got operator %d)", c->what, (int)e->op);
        if (!e->b || e->b->kind != AORM_X_ARRAY)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: the right side of ANY must be an array", c->what);
        if (!(rc = copy_child(c, e->a, depth, &n->a))) rc = copy_child(c, e->b, depth, &n->b);
        break;
    case AORM_X_IN_SELECT:
        if ((rc = take_sub(c, e->sub))) break;
        n->sub = e->sub;
        rc = copy_child(c, e->a, depth, &n->a);
        break;
    case AORM_X_EXISTS:
        if ((rc = take_sub(c, e->sub))) break;
        n->sub = e->sub;
        break;
    case AORM_X_FUNC:
        if (e->op < AORM_FN_COUNT || e->op > AORM_FN_MAX)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: unknown aggregate %d", c->what, (int)e->op);
        if (e->a) rc = copy_child(c, e->a, depth, &n->a);
        else if (e->op != AORM_FN_COUNT)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: aggregate without an argument", c->what);
        break;
    case AORM_X_EXCLUDED:
        if (!(c->flags & AORM__CP_EXCLUDED))
            return aorm__sql_fail(q, AORM_EMISUSE,
                                  "%s: EXCLUDED.column only goes in aorm_set() after aorm_on_conflict_do_update()",
                                  c->what);
        if (!e->a || e->a->kind != AORM_X_COLUMN)
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: aorm_excluded() takes a column", c->what);
        rc = copy_child(c, e->a, depth, &n->a);
        break;
    case AORM_X_LABEL:
        if (depth != 0 || !(c->flags & AORM__CP_LABEL))
            return aorm__sql_fail(q, AORM_EMISUSE, "%s: a label only goes at the top of a select or RETURNING entry",
                                  c->what);
        if (!e->label || !*e->label) return aorm__sql_fail(q, AORM_EMISUSE, "%s: empty label", c->what);
        {
            size_t l = strlen(e->label) + 1;
            char *s = alloc(c, l);
            if (!s) return fail_nomem(c);
            memcpy(s, e->label, l);
            n->label = s;
        }
        rc = copy_child(c, e->a, depth, &n->a);
        break;
    default: return aorm__sql_fail(q, AORM_EMISUSE, "%s: unknown expression kind %d", c->what, (int)e->kind);
    }
    if (rc) return rc;
    *out = n;
    return 0;
}

void aorm__sql_take_subs_list(aorm_stmt *q, const aorm_expr *const *l, int n) {
    if (!l || n <= 0) return;
    if (q) {
        for (int i = 0; i < n; i++) take_subs(q, l[i]);
        return;
    }
    /* one collection for the whole list: a subquery met twice is freed once */
    aorm_stmt *list = NULL;
    for (int i = 0; i < n; i++) collect_subs(&list, l[i]);
    while (list) {
        aorm_stmt *next = list->next_sub;
        list->next_sub = NULL;
        aorm__sql_destroy(list);
        list = next;
    }
}

int aorm__sql_copy(aorm_stmt *q, const aorm_expr *e, unsigned flags, const char *what, const aorm_expr **out) {
    cp c = {q, flags, what, NULL};
    int rc = copy_node(&c, e, 0, out);
    if (rc) aorm__sql_take_subs(q, e, NULL);
    return rc;
}

/* compile.c -- Core statements to PostgreSQL text with $n placeholders.
 *
 * One pass over the statement writes the text into the statement's
 * buffer and appends every value, in order of appearance, to its
 * parameter builder, so $n numbering is the textual order (subqueries
 * continue their parent's sequence). Identifiers always go through
 * aorm__quote_ident and are qualified ("books"."title", with the schema
 * first when the model has one); values are always parameters, never
 * text. Equal statement shapes therefore give byte-identical text.
 *
 * Parentheses: an operand that is itself an operator expression
 * (comparison, arithmetic, NOT, IS NULL, BETWEEN, ANY, IN) is wrapped in
 * parentheses; AND/OR wrap only nested AND/OR lists (everything else
 * binds tighter); the top of a clause (WHERE, ON, HAVING, a select entry,
 * a SET value, an ORDER BY key, an aggregate's argument) is not wrapped:
 *   and(eq(a, 1), or(eq(b, 2), eq(c, 3)))
 *       WHERE "t"."a" = $1 AND ("t"."b" = $2 OR "t"."c" = $3)
 *   gt(mul(add(a, 1), 2), 3)
 *       WHERE (("t"."a" + $1) * $2) > $3
 * Meaning never depends on PostgreSQL's precedence table.
 *
 * CASE, CAST, function calls, window functions (`f(...) OVER (...)`) and
 * subqueries delimit themselves and are never wrapped; ANY / ALL are.
 *
 * Columns are checked here, not when attached, because FROM and joins may
 * come after the expressions that use them: a column must belong to a
 * FROM item of the statement or (in a subquery) of an enclosing one. A
 * FROM item goes by one name: its alias, else a CTE's name, else a
 * model's table; AORM_COL(S, f) names the item of model S under its own
 * table name, AORM_ACOL / aorm_ref an item by its name. Names used on a
 * subquery or a CTE that is a Core statement are checked against its
 * output list (a raw one's output is unknown: the server checks). A
 * statement of a set operation, a CTE or a subquery is compiled in its
 * own scope, above which its owner's scope stays visible (CTEs of an
 * enclosing statement are found the same way). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapping/mapping.h"
#include "sql/sql_int.h"

typedef struct scope {
    const aorm_stmt *q;
    const struct scope *up;
} scope;

typedef struct cc {
    aorm_stmt *root;  /* errors are recorded here */
    aorm__buf *b;
    aorm_params *p;
    const scope *sc;  /* innermost statement first */
    bool oom;
    /* The quoted, qualified name of the model met last: column references
     * repeat it, and quoting is the costliest step of a compile. */
    const aorm_model *qual_model;
    aorm__buf *qual;
} cc;

static void put(cc *c, const char *s, size_t n) {
    if (aorm__buf_append(c->b, s, n) < 0) c->oom = true;
}

#define LIT(c, s) put((c), (s), sizeof(s) - 1)

static void ident(cc *c, const char *s) {
    if (!s || !*s) {
        aorm__sql_fail(c->root, AORM_EMISUSE, "empty identifier in a model");
        return;
    }
    if (aorm__quote_ident(c->b, s) < 0) c->oom = true;
}

static void table(cc *c, const aorm_model *m) {
    if (m != c->qual_model) {
        aorm__buf *saved = c->b;
        c->qual->len = 0;
        c->b = c->qual;
        if (m->schema) {
            ident(c, m->schema);
            LIT(c, ".");
        }
        ident(c, m->table);
        c->b = saved;
        c->qual_model = m;
    }
    put(c, c->qual->data, c->qual->len);
}

static void number(cc *c, int n) {
    char tmp[16];
    int i = (int)sizeof(tmp);
    unsigned u = (unsigned)n;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    tmp[--i] = '$';
    put(c, tmp + i, sizeof(tmp) - (size_t)i);
}

/* One FROM item of a statement, seen the same way whatever its place:
 * the first FROM item, a join, an UPDATE FROM / DELETE USING item, or
 * the table an INSERT / UPDATE / DELETE writes. */
typedef struct fitem {
    const aorm_model *model;
    const aorm_stmt *sub;
    const char *cte;
    const char *alias;
} fitem;

static const char *fitem_name(const fitem *f) {
    return f->alias ? f->alias : f->cte ? f->cte : f->model ? f->model->table : "";
}

/* Item i of q: -1 the first (FROM / the written table), then the joins.
 * Returns false when there is no such item. */
static bool fitem_at(const aorm_stmt *q, int i, fitem *f) {
    if (i >= 0) {
        if (i >= q->njoins) return false;
        const aorm__join *j = &q->joins[i];
        *f = (fitem){j->model, j->sub, j->cte, j->alias};
        return true;
    }
    switch (q->kind) {
    case AORM__SELECT:
        *f = (fitem){q->model, q->from_sub, q->from_cte, q->from_alias};
        return q->model || q->from_sub || q->from_cte;
    case AORM__INSERT:
    case AORM__UPDATE:
    case AORM__DELETE: *f = (fitem){q->model, NULL, NULL, NULL}; return q->model != NULL;
    case AORM__RAW:
    case AORM__COMPOUND: return false;
    }
    return false;
}

/* The CTE called name, defined by a statement of the scope, or NULL. */
static const aorm_stmt *cte_lookup(const cc *c, const char *name) {
    for (const scope *s = c->sc; s; s = s->up)
        for (int i = 0; i < s->q->nctes; i++)
            if (strcmp(s->q->ctes[i].name, name) == 0) return s->q->ctes[i].stmt;
    return NULL;
}

/* The output list of the derived table or CTE of f, when known. */
static const aorm__items *fitem_outputs(const cc *c, const fitem *f) {
    const aorm_stmt *s = f->sub ? f->sub : f->cte ? cte_lookup(c, f->cte) : NULL;
    return s ? aorm__sql_outputs(s) : NULL;
}

/* Finds the FROM item called `name` (alias NULL: the model m under its
 * own name), innermost statement first. */
static bool find_item(const cc *c, const aorm_model *m, const char *name, fitem *out) {
    for (const scope *s = c->sc; s; s = s->up) {
        fitem f;
        for (int i = -1; fitem_at(s->q, i, &f); i++) {
            if (!name) {
                if (f.model == m && !f.alias) goto found;
            } else if (strcmp(fitem_name(&f), name) == 0) {
                goto found;
            }
            continue;
        found:
            *out = f;
            return true;
        }
    }
    return false;
}

static void item_ref(cc *c, const fitem *f) {
    if (f->model && !f->alias) table(c, f->model);
    else ident(c, fitem_name(f));
}

/* A column name looked up in a derived table's or CTE's known outputs. */
static void check_output(cc *c, const fitem *f, const char *col) {
    const aorm__items *it = fitem_outputs(c, f);
    if (it && !aorm__sql_items_has(it, col))
        aorm__sql_fail(c->root, AORM_EMISUSE, "column \"%s\": %s \"%s\" has no output column of that name", col,
                       f->sub ? "the subquery" : "the CTE", fitem_name(f));
}

static void column(cc *c, const aorm_model *m, const aorm_column *col, const char *alias) {
    fitem f;
    if (!find_item(c, m, alias, &f)) {
        const aorm_stmt *q = c->sc->q;
        if (alias) {
            aorm__sql_fail(c->root, AORM_EMISUSE, "column %s.%s: no FROM item of the statement is called \"%s\"",
                           alias, col->name, alias);
            return;
        }
        const char *where = q->kind == AORM__SELECT     ? "neither the FROM model nor a joined model"
                            : q->kind == AORM__COMPOUND ? "a set operation's ORDER BY names output columns: aorm_name()"
                                                        : "not the table the statement writes";
        aorm__sql_fail(c->root, AORM_EMISUSE,
                       "column %s.%s: model %s (table \"%s\") is not part of the statement (%s)", m->table,
                       col->name, m->name ? m->name : "?", m->table, where);
        return;
    }
    if (f.model && f.model != m) {
        aorm__sql_fail(c->root, AORM_EMISUSE, "column %s.%s: \"%s\" is an alias of %s, not of %s", alias, col->name,
                       alias, f.model->table, m->table);
        return;
    }
    if (!f.model) check_output(c, &f, col->name);
    item_ref(c, &f);
    LIT(c, ".");
    ident(c, col->name);
}

/* aorm_ref(alias, name) / aorm_name(name) */
static void ref(cc *c, const aorm_expr *e) {
    if (!e->alias) {
        ident(c, e->name);
        return;
    }
    fitem f;
    if (!find_item(c, NULL, e->alias, &f)) {
        aorm__sql_fail(c->root, AORM_EMISUSE, "aorm_ref(\"%s\", \"%s\"): no FROM item of the statement is called \"%s\"",
                       e->alias, e->name, e->alias);
        return;
    }
    if (!f.model) check_output(c, &f, e->name);
    item_ref(c, &f);
    LIT(c, ".");
    ident(c, e->name);
}

/* A type the copy should have refused: recorded in the builder (an
 * invalid format is its AORM_EMISUSE), so numbering errors cannot pass. */
static int bad_param(aorm_params *p) {
    aorm__assert(!"value type not checked when copied");
    return aorm_params_raw(p, 0, NULL, 0, -1);
}

int aorm__sql_param(aorm_params *p, const aorm_expr *e) {
    if (e->kind == AORM_X_ARRAY) {
        size_t n = e->len;
        switch (e->type) {
        case AORM_INT4: return aorm_params_int4_array(p, e->v.p, e->nulls, n);
        case AORM_INT8: return aorm_params_int8_array(p, e->v.p, e->nulls, n);
        case AORM_UUID: return aorm_params_uuid_array(p, e->v.p, e->nulls, n);
        case AORM_TEXT: return aorm_params_text_array(p, e->v.p, n);
        default: break;
        }
        return bad_param(p);
    }
    if (e->null) return aorm_params_null(p, aorm__type_oid(e->type));
    switch (e->type) {
    case AORM_BOOL: return aorm_params_bool(p, e->v.b);
    case AORM_INT2: return aorm_params_int2(p, (int16_t)e->v.i);
    case AORM_INT4: return aorm_params_int4(p, (int32_t)e->v.i);
    case AORM_INT8: return aorm_params_int8(p, e->v.i);
    case AORM_FLOAT4: return aorm_params_float4(p, (float)e->v.d);
    case AORM_FLOAT8: return aorm_params_float8(p, e->v.d);
    case AORM_NUMERIC: return aorm_params_numeric(p, e->v.s);
    case AORM_TEXT: return aorm_params_text_n(p, e->v.s, e->len);
    case AORM_BYTEA: return aorm_params_bytea(p, e->v.p, e->len);
    case AORM_DATE: return aorm_params_date(p, (int32_t)e->v.i);
    case AORM_TIMESTAMP: return aorm_params_timestamp(p, e->v.i);
    case AORM_TIMESTAMPTZ: return aorm_params_timestamptz(p, e->v.i);
    case AORM_UUID: return aorm_params_uuid(p, e->v.p);
    case AORM_JSON:
    case AORM_JSONB: {
        int rc = aorm__json_check(false, e->v.s, e->len);
        if (rc) return p->error ? p->error : (p->error = rc);
        return e->type == AORM_JSON ? aorm_params_json(p, e->v.s, e->len) : aorm_params_jsonb(p, e->v.s, e->len);
    }
    case AORM_ENUM: {
        int32_t v = (int32_t)e->v.i;
        return aorm__value_param(e->type, e->enum_type, &v, p);
    }
    default: return aorm__value_param(e->type, NULL, e->v.p, p); /* interval, inet, cidr, arrays */
    }
}

static void param(cc *c, const aorm_expr *e) {
    aorm__sql_param(c->p, e); /* a failure stays in the builder: checked at the end */
    number(c, c->p->count);
    if (e->kind != AORM_X_VALUE || !e->name) return;
    aorm_stmt *r = c->root; /* a named placeholder: its slot, for aorm_stmt_prepare */
    if (r->nnamed == r->cap_named) {
        int cap = r->cap_named ? r->cap_named * 2 : 4;
        struct aorm__named *g = realloc(r->named, (size_t)cap * sizeof(*g));
        if (!g) {
            c->oom = true;
            return;
        }
        r->named = g;
        r->cap_named = cap;
    }
    r->named[r->nnamed++] =
        (struct aorm__named){.name = e->name, .slot = c->p->count - 1, .type = e->type, .enum_type = e->enum_type};
}

static void emit(cc *c, const aorm_expr *e);
static void stmt_body(cc *c, aorm_stmt *q);

static bool compound(const aorm_expr *e) {
    switch (e->kind) {
    case AORM_X_BINARY:
    case AORM_X_AND:
    case AORM_X_OR:
    case AORM_X_NOT:
    case AORM_X_IS_NULL:
    case AORM_X_IS_NOT_NULL:
    case AORM_X_BETWEEN:
    case AORM_X_ANY:
    case AORM_X_TUPLE_IN:
    case AORM_X_QUANT:
    case AORM_X_IN_SELECT: return true;
    case AORM_X_REF:
    case AORM_X_CALL:
    case AORM_X_OVER:
    case AORM_X_LIST:
    case AORM_X_SORT:
    case AORM_X_FRAME:
    case AORM_X_BOUND:
    case AORM_X_CASE:
    case AORM_X_WHEN:
    case AORM_X_CAST:
    case AORM_X_SUBQUERY: return false;
    case AORM_X_COLUMN:
    case AORM_X_VALUE:
    case AORM_X_ARRAY:
    case AORM_X_EXISTS:
    case AORM_X_FUNC:
    case AORM_X_EXCLUDED:
    case AORM_X_LABEL: return false;
    }
    return true;
}

static void operand(cc *c, const aorm_expr *e) {
    if (compound(e)) {
        LIT(c, "(");
        emit(c, e);
        LIT(c, ")");
    } else {
        emit(c, e);
    }
}

/* Conditions joined by AND / OR; nested lists wrapped. */
static void logic(cc *c, const aorm_expr *const *v, int n, bool and) {
    if (n == 0) {
        if (and) LIT(c, "TRUE");
        else LIT(c, "FALSE");
        return;
    }
    for (int i = 0; i < n; i++) {
        if (i) {
            if (and) LIT(c, " AND ");
            else LIT(c, " OR ");
        }
        if (v[i]->kind == AORM_X_AND || v[i]->kind == AORM_X_OR) {
            LIT(c, "(");
            emit(c, v[i]);
            LIT(c, ")");
        } else {
            emit(c, v[i]);
        }
    }
}

static void subquery(cc *c, aorm_stmt *s) {
    scope sc = {s, c->sc};
    const scope *saved = c->sc;
    c->sc = &sc;
    LIT(c, "(");
    if (s->kind == AORM__RAW) {
        if (aorm__sql_raw_emit(s, c->root, c->b, c->p) == AORM_ENOMEM) c->oom = true;
    } else {
        stmt_body(c, s);
    }
    LIT(c, ")");
    c->sc = saved;
}

static const char *binop(aorm_op op) {
    switch (op) {
    case AORM_OP_EQ: return " = ";
    case AORM_OP_NE: return " <> ";
    case AORM_OP_LT: return " < ";
    case AORM_OP_LE: return " <= ";
    case AORM_OP_GT: return " > ";
    case AORM_OP_GE: return " >= ";
    case AORM_OP_LIKE: return " LIKE ";
    case AORM_OP_ILIKE: return " ILIKE ";
    case AORM_OP_NOT_LIKE: return " NOT LIKE ";
    case AORM_OP_NOT_ILIKE: return " NOT ILIKE ";
    case AORM_OP_ADD: return " + ";
    case AORM_OP_SUB: return " - ";
    case AORM_OP_MUL: return " * ";
    case AORM_OP_DIV: return " / ";
    case AORM_OP_MOD: return " % ";
    case AORM_OP_CONCAT: return " || ";
    case AORM_OP_JSON_GET: return " -> ";
    case AORM_OP_JSON_GET_TEXT: return " ->> ";
    case AORM_OP_JSON_PATH: return " #> ";
    case AORM_OP_JSON_PATH_TEXT: return " #>> ";
    case AORM_OP_HAS_KEY: return " ? ";
    case AORM_OP_CONTAINS: return " @> ";
    case AORM_OP_CONTAINED_BY: return " <@ ";
    case AORM_OP_OVERLAPS: return " && ";
    default: return aorm__sql_fn_name(op);
    }
}

const char *aorm__sql_fn_name(aorm_op op) {
    switch (op) {
    case AORM_FN_COUNT:
    case AORM_FN_COUNT_DISTINCT: return "count";
    case AORM_FN_SUM: return "sum";
    case AORM_FN_AVG: return "avg";
    case AORM_FN_MIN: return "min";
    case AORM_FN_MAX: return "max";
    case AORM_FN_COALESCE: return "coalesce";
    case AORM_FN_NULLIF: return "nullif";
    case AORM_FN_GREATEST: return "greatest";
    case AORM_FN_LEAST: return "least";
    case AORM_FN_ROW_NUMBER: return "row_number";
    case AORM_FN_RANK: return "rank";
    case AORM_FN_DENSE_RANK: return "dense_rank";
    case AORM_FN_PERCENT_RANK: return "percent_rank";
    case AORM_FN_CUME_DIST: return "cume_dist";
    case AORM_FN_NTILE: return "ntile";
    case AORM_FN_LAG: return "lag";
    case AORM_FN_LEAD: return "lead";
    case AORM_FN_FIRST_VALUE: return "first_value";
    case AORM_FN_LAST_VALUE: return "last_value";
    case AORM_FN_NTH_VALUE: return "nth_value";
    default: return "?";
    }
}

/* A function or type name checked by the copy: each dot-separated part
 * quoted; a type's "[]" suffix kept as it is. */
static void sql_name(cc *c, const char *name) {
    size_t n = strlen(name);
    bool array = n > 2 && name[n - 2] == '[' && name[n - 1] == ']';
    if (array) n -= 2;
    const char *dot = memchr(name, '.', n);
    char part[64];
    const char *p = name;
    for (int k = 0; k < 2 && p; k++) {
        size_t len = dot && k == 0 ? (size_t)(dot - name) : n - (size_t)(p - name);
        if (len >= sizeof(part)) len = sizeof(part) - 1; /* cannot happen: checked at most 63 */
        memcpy(part, p, len);
        part[len] = '\0';
        ident(c, part);
        if (dot && k == 0) {
            LIT(c, ".");
            p = dot + 1;
        } else {
            p = NULL;
        }
    }
    if (array) LIT(c, "[]");
}

static void exprs_list(cc *c, const aorm_expr *const *v, int n) {
    for (int i = 0; i < n; i++) {
        if (i) LIT(c, ", ");
        emit(c, v[i]);
    }
}

static void sort_flags(cc *c, unsigned f) {
    if (f & AORM_DESC) LIT(c, " DESC");
    if (f & AORM_NULLS_FIRST) LIT(c, " NULLS FIRST");
    if (f & AORM_NULLS_LAST) LIT(c, " NULLS LAST");
}

static void bound(cc *c, const aorm_expr *b) {
    switch (b->n) {
    case AORM_BOUND_UNBOUNDED_PRECEDING: LIT(c, "UNBOUNDED PRECEDING"); return;
    case AORM_BOUND_PRECEDING:
        operand(c, b->a);
        LIT(c, " PRECEDING");
        return;
    case AORM_BOUND_CURRENT_ROW: LIT(c, "CURRENT ROW"); return;
    case AORM_BOUND_FOLLOWING:
        operand(c, b->a);
        LIT(c, " FOLLOWING");
        return;
    case AORM_BOUND_UNBOUNDED_FOLLOWING: LIT(c, "UNBOUNDED FOLLOWING"); return;
    }
}

static void over(cc *c, const aorm_expr *e) {
    emit(c, e->a);
    LIT(c, " OVER (");
    bool sp = false;
    if (e->b) {
        LIT(c, "PARTITION BY ");
        exprs_list(c, e->b->list, e->b->n);
        sp = true;
    }
    if (e->c) {
        if (sp) LIT(c, " ");
        LIT(c, "ORDER BY ");
        for (int i = 0; i < e->c->n; i++) {
            const aorm_expr *k = e->c->list[i];
            if (i) LIT(c, ", ");
            if (k->kind == AORM_X_SORT) {
                emit(c, k->a);
                sort_flags(c, (unsigned)k->n);
            } else {
                emit(c, k);
            }
        }
        sp = true;
    }
    if (e->n == 1) {
        const aorm_expr *f = e->list[0];
        if (sp) LIT(c, " ");
        if (f->n == AORM_FRAME_ROWS) LIT(c, "ROWS ");
        else if (f->n == AORM_FRAME_RANGE) LIT(c, "RANGE ");
        else LIT(c, "GROUPS ");
        if (f->b) {
            LIT(c, "BETWEEN ");
            bound(c, f->a);
            LIT(c, " AND ");
            bound(c, f->b);
        } else {
            bound(c, f->a);
        }
    }
    LIT(c, ")");
}

static void emit(cc *c, const aorm_expr *e) {
    switch (e->kind) {
    case AORM_X_COLUMN: column(c, e->model, e->v.p, e->alias); return;
    case AORM_X_VALUE:
    case AORM_X_ARRAY: param(c, e); return;
    case AORM_X_BINARY: {
        operand(c, e->a);
        const char *op = binop(e->op);
        put(c, op, strlen(op));
        operand(c, e->b);
        return;
    }
    case AORM_X_AND:
    case AORM_X_OR: logic(c, e->list, e->n, e->kind == AORM_X_AND); return;
    case AORM_X_NOT:
        LIT(c, "NOT ");
        operand(c, e->a);
        return;
    case AORM_X_IS_NULL:
        operand(c, e->a);
        LIT(c, " IS NULL");
        return;
    case AORM_X_IS_NOT_NULL:
        operand(c, e->a);
        LIT(c, " IS NOT NULL");
        return;
    case AORM_X_BETWEEN:
        operand(c, e->a);
        LIT(c, " BETWEEN ");
        operand(c, e->b);
        LIT(c, " AND ");
        operand(c, e->c);
        return;
    case AORM_X_ANY:
        if (e->op == AORM_OP_NE) LIT(c, "NOT (");
        operand(c, e->a);
        LIT(c, " = ANY(");
        param(c, e->b);
        LIT(c, ")");
        if (e->op == AORM_OP_NE) LIT(c, ")");
        return;
    case AORM_X_IN_SELECT:
        operand(c, e->a);
        LIT(c, " IN ");
        subquery(c, e->sub);
        return;
    case AORM_X_TUPLE_IN: {
        /* unnest in FROM with several arrays zips them into rows */
        int k = e->n / 2;
        LIT(c, "(");
        for (int i = 0; i < k; i++) {
            if (i) LIT(c, ", ");
            operand(c, e->list[i]);
        }
        LIT(c, ") IN (SELECT * FROM unnest(");
        for (int i = k; i < e->n; i++) {
            if (i > k) LIT(c, ", ");
            param(c, e->list[i]);
        }
        LIT(c, "))");
        return;
    }
    case AORM_X_EXISTS:
        LIT(c, "EXISTS ");
        subquery(c, e->sub);
        return;
    case AORM_X_FUNC: {
        const char *fn = binop(e->op);
        put(c, fn, strlen(fn));
        LIT(c, "(");
        if (!e->a) LIT(c, "*");
        else {
            if (e->op == AORM_FN_COUNT_DISTINCT) LIT(c, "DISTINCT ");
            emit(c, e->a);
        }
        LIT(c, ")");
        return;
    }
    case AORM_X_EXCLUDED: {
        const aorm_stmt *q = c->sc->q;
        const aorm_column *col = e->a->v.p;
        if (q->kind != AORM__INSERT || e->a->model != q->model) {
            aorm__sql_fail(c->root, AORM_EMISUSE, "EXCLUDED.%s: not a column of the INSERT's table", col->name);
            return;
        }
        LIT(c, "EXCLUDED.");
        ident(c, col->name);
        return;
    }
    case AORM_X_LABEL: emit(c, e->a); return;
    case AORM_X_REF: ref(c, e); return;
    case AORM_X_CALL: {
        if (e->op == AORM_FN_NAMED) {
            sql_name(c, e->name);
        } else {
            const char *fn = binop(e->op);
            put(c, fn, strlen(fn));
        }
        LIT(c, "(");
        exprs_list(c, e->list, e->n);
        LIT(c, ")");
        return;
    }
    case AORM_X_OVER: over(c, e); return;
    case AORM_X_CASE:
        LIT(c, "CASE");
        for (int i = 0; i < e->n; i++) {
            const aorm_expr *w = e->list[i];
            if (w->a) {
                LIT(c, " WHEN ");
                emit(c, w->a);
                LIT(c, " THEN ");
            } else {
                LIT(c, " ELSE ");
            }
            emit(c, w->b);
        }
        LIT(c, " END");
        return;
    case AORM_X_CAST:
        LIT(c, "CAST(");
        emit(c, e->a);
        LIT(c, " AS ");
        if (e->name) {
            sql_name(c, e->name);
        } else {
            const char *t = aorm__type_sql(e->type, false);
            if (t) put(c, t, strlen(t));
            else aorm__sql_fail(c->root, AORM_EMISUSE, "CAST to unknown type %d", (int)e->type);
        }
        LIT(c, ")");
        return;
    case AORM_X_SUBQUERY: subquery(c, e->sub); return;
    case AORM_X_QUANT: {
        operand(c, e->a);
        const char *op = binop(e->op);
        put(c, op, strlen(op));
        if (e->n) LIT(c, "ALL");
        else LIT(c, "ANY");
        if (e->b->kind == AORM_X_SUBQUERY) {
            LIT(c, " ");
            subquery(c, e->b->sub);
        } else {
            LIT(c, "(");
            emit(c, e->b);
            LIT(c, ")");
        }
        return;
    }
    case AORM_X_LIST:
    case AORM_X_SORT:
    case AORM_X_FRAME:
    case AORM_X_BOUND:
    case AORM_X_WHEN: aorm__assert(!"helper node outside its place"); return;
    }
}

/* Top-level conditions of WHERE / HAVING (several calls are ANDed). */
static void conds(cc *c, const aorm__exprs *l) {
    if (l->n == 1) emit(c, l->v[0]);
    else logic(c, l->v, l->n, true);
}

static void items(cc *c, const aorm__items *it) {
    for (int i = 0; i < it->n; i++) {
        const aorm__item *x = &it->v[i];
        if (i) LIT(c, ", ");
        if (x->e) emit(c, x->e);
        else column(c, x->model, x->col, x->alias);
        if (x->as) {
            LIT(c, " AS ");
            ident(c, x->name);
        }
    }
}

static void limit_param(cc *c, int64_t v) {
    aorm_params_int8(c->p, v);
    number(c, c->p->count);
}

/* One FROM item: a table [AS alias], (subquery) AS alias, a CTE [AS alias]. */
static void from_item(cc *c, const aorm_model *m, aorm_stmt *sub, const char *cte, const char *alias) {
    if (sub) {
        subquery(c, sub);
    } else if (cte) {
        if (!cte_lookup(c, cte))
            aorm__sql_fail(c->root, AORM_EMISUSE, "FROM \"%s\": the statement has no CTE of that name (aorm_with)",
                           cte);
        ident(c, cte);
    } else {
        table(c, m);
    }
    if (alias) {
        LIT(c, " AS ");
        ident(c, alias);
    }
}

static void joins(cc *c, const aorm_stmt *q) {
    for (int i = 0; i < q->njoins; i++) {
        const aorm__join *j = &q->joins[i];
        if (j->comma) {
            LIT(c, ", ");
            from_item(c, j->model, j->sub, j->cte, j->alias);
            continue;
        }
        if (!j->on && !j->outer) LIT(c, " CROSS JOIN ");
        else if (j->outer) LIT(c, " LEFT JOIN ");
        else LIT(c, " JOIN ");
        if (j->lateral) LIT(c, "LATERAL ");
        from_item(c, j->model, j->sub, j->cte, j->alias);
        if (j->on) {
            LIT(c, " ON ");
            emit(c, j->on);
        } else if (j->outer) {
            LIT(c, " ON TRUE");
        }
    }
}

static void order_limit(cc *c, const aorm_stmt *q) {
    for (int i = 0; i < q->norder; i++) {
        if (i) LIT(c, ", ");
        else LIT(c, " ORDER BY ");
        emit(c, q->order[i].e);
        sort_flags(c, q->order[i].flags);
    }
    if (q->has_limit) {
        LIT(c, " LIMIT ");
        limit_param(c, q->limit);
    }
    if (q->has_offset) {
        LIT(c, " OFFSET ");
        limit_param(c, q->offset);
    }
}

static void select_body(cc *c, aorm_stmt *q) {
    LIT(c, "SELECT ");
    if (q->distinct) LIT(c, "DISTINCT ");
    if (q->distinct_on.n) {
        LIT(c, "DISTINCT ON (");
        exprs_list(c, q->distinct_on.v, q->distinct_on.n);
        LIT(c, ") ");
    }
    if (q->items.n) items(c, &q->items);
    else LIT(c, "1");
    if (q->model || q->from_sub || q->from_cte) {
        LIT(c, " FROM ");
        from_item(c, q->model, q->from_sub, q->from_cte, q->from_alias);
    }
    joins(c, q);
    if (q->where.n) {
        LIT(c, " WHERE ");
        conds(c, &q->where);
    }
    for (int i = 0; i < q->group.n; i++) {
        if (i) LIT(c, ", ");
        else LIT(c, " GROUP BY ");
        emit(c, q->group.v[i]);
    }
    if (q->having.n) {
        LIT(c, " HAVING ");
        conds(c, &q->having);
    }
    order_limit(c, q);
    if (q->has_lock) {
        if (q->lock & AORM_LOCK_SHARE) LIT(c, " FOR SHARE");
        else LIT(c, " FOR UPDATE");
        if (q->lock & AORM_LOCK_NOWAIT) LIT(c, " NOWAIT");
        if (q->lock & AORM_LOCK_SKIP_LOCKED) LIT(c, " SKIP LOCKED");
    }
}

static void compound_body(cc *c, aorm_stmt *q) {
    static const char *const ops[] = {"", " UNION ", " INTERSECT ", " EXCEPT "};
    subquery(c, q->arms[0]);
    put(c, ops[q->setop], strlen(ops[q->setop]));
    if (q->setop_all) LIT(c, "ALL ");
    subquery(c, q->arms[1]);
    order_limit(c, q);
}

static void with_clause(cc *c, const aorm_stmt *q) {
    if (!q->nctes) return;
    LIT(c, "WITH ");
    if (q->recursive) LIT(c, "RECURSIVE ");
    for (int i = 0; i < q->nctes; i++) {
        if (i) LIT(c, ", ");
        ident(c, q->ctes[i].name);
        LIT(c, " AS ");
        subquery(c, q->ctes[i].stmt);
    }
    LIT(c, " ");
}

static void col_names(cc *c, const aorm_column *const *cols, int n) {
    LIT(c, " (");
    for (int i = 0; i < n; i++) {
        if (i) LIT(c, ", ");
        ident(c, cols[i]->name);
    }
    LIT(c, ")");
}

/* One encoded row value (or column array) moved into the output. */
static void row_param(cc *c, const aorm_params *src, int i) {
    const aorm_param_slot *s = &src->slots[i];
    if (s->len < 0) aorm_params_raw(c->p, s->type, NULL, 0, s->format);
    else aorm_params_raw(c->p, s->type, src->data + s->offset, (size_t)s->len, s->format);
    number(c, c->p->count);
}

static void sets(cc *c, const aorm__sets *s) {
    for (int i = 0; i < s->n; i++) {
        if (i) LIT(c, ", ");
        ident(c, s->v[i].col->name);
        LIT(c, " = ");
        emit(c, s->v[i].value);
    }
}

static void returning(cc *c, const aorm_stmt *q) {
    if (!q->ret.n) return;
    LIT(c, " RETURNING ");
    items(c, &q->ret);
}

static void insert_body(cc *c, aorm_stmt *q) {
    LIT(c, "INSERT INTO ");
    table(c, q->model);
    if (q->isel) {
        if (q->nicols) col_names(c, q->icols, q->nicols);
        LIT(c, " ");
        /* the query, unparenthesized, in its own scope */
        scope sc = {q->isel, c->sc};
        const scope *saved = c->sc;
        c->sc = &sc;
        if (q->isel->kind == AORM__RAW) {
            if (aorm__sql_raw_emit(q->isel, c->root, c->b, c->p) == AORM_ENOMEM) c->oom = true;
        } else {
            stmt_body(c, q->isel);
        }
        c->sc = saved;
    } else if (q->nrows && q->nicols) {
        col_names(c, q->icols, q->nicols);
        /* one value per column (one row, or one unnest() array per column),
         * or -- for column types without an unnest() form (arrays, enums,
         * interval, inet) -- one value per column per row, row after row */
        bool by_rows = q->nrows > 1 && (size_t)q->rows.count == (size_t)q->nicols * q->nrows;
        aorm__assert(q->rows.count == q->nicols || by_rows);
        if (q->nrows == 1 || by_rows) {
            LIT(c, " VALUES ");
            for (size_t r = 0; r < q->nrows; r++) {
                if (r) LIT(c, ", ");
                LIT(c, "(");
                for (int i = 0; i < q->nicols; i++) {
                    if (i) LIT(c, ", ");
                    row_param(c, &q->rows, (int)(r * (size_t)q->nicols) + i);
                }
                LIT(c, ")");
            }
        } else {
            LIT(c, " SELECT * FROM unnest(");
            for (int i = 0; i < q->nicols; i++) {
                if (i) LIT(c, ", ");
                row_param(c, &q->rows, i);
                LIT(c, "::");
                const char *t = aorm__type_sql(q->icols[i]->type, false);
                if (!t) {
                    aorm__sql_fail(c->root, AORM_EMISUSE, "column \"%s\" has an unknown type %d",
                                   q->icols[i]->name, (int)q->icols[i]->type);
                    return;
                }
                put(c, t, strlen(t));
                LIT(c, "[]");
            }
            LIT(c, ")");
        }
    } else if (q->sets.n) {
        LIT(c, " (");
        for (int i = 0; i < q->sets.n; i++) {
            if (i) LIT(c, ", ");
            ident(c, q->sets.v[i].col->name);
        }
        LIT(c, ") VALUES (");
        for (int i = 0; i < q->sets.n; i++) {
            if (i) LIT(c, ", ");
            emit(c, q->sets.v[i].value);
        }
        LIT(c, ")");
    } else {
        LIT(c, " DEFAULT VALUES");
    }
    if (q->conflict) {
        LIT(c, " ON CONFLICT");
        if (q->conflict_constraint) {
            LIT(c, " ON CONSTRAINT ");
            ident(c, q->conflict_constraint);
        }
        if (q->nccols) col_names(c, q->ccols, q->nccols);
        if (q->conflict == AORM__CONFLICT_NOTHING) {
            LIT(c, " DO NOTHING");
        } else {
            if (!q->upd.n)
                aorm__sql_fail(c->root, AORM_EMISUSE,
                               "ON CONFLICT DO UPDATE without any aorm_set() after aorm_on_conflict_do_update()");
            LIT(c, " DO UPDATE SET ");
            sets(c, &q->upd);
        }
    }
    returning(c, q);
}

static void stmt_body(cc *c, aorm_stmt *q) {
    with_clause(c, q);
    switch (q->kind) {
    case AORM__SELECT: select_body(c, q); return;
    case AORM__COMPOUND: compound_body(c, q); return;
    case AORM__INSERT: insert_body(c, q); return;
    case AORM__UPDATE:
        if (!q->sets.n) aorm__sql_fail(c->root, AORM_EMISUSE, "UPDATE %s without any aorm_set()", q->model->table);
        LIT(c, "UPDATE ");
        table(c, q->model);
        LIT(c, " SET ");
        sets(c, &q->sets);
        if (q->njoins) {
            LIT(c, " FROM ");
            for (int i = 0; i < q->njoins; i++) {
                const aorm__join *j = &q->joins[i];
                if (i) LIT(c, ", ");
                from_item(c, j->model, j->sub, j->cte, j->alias);
            }
        }
        if (q->where.n) {
            LIT(c, " WHERE ");
            conds(c, &q->where);
        }
        returning(c, q);
        return;
    case AORM__DELETE:
        LIT(c, "DELETE FROM ");
        table(c, q->model);
        if (q->njoins) {
            LIT(c, " USING ");
            for (int i = 0; i < q->njoins; i++) {
                const aorm__join *j = &q->joins[i];
                if (i) LIT(c, ", ");
                from_item(c, j->model, j->sub, j->cte, j->alias);
            }
        }
        if (q->where.n) {
            LIT(c, " WHERE ");
            conds(c, &q->where);
        }
        returning(c, q);
        return;
    case AORM__RAW:
        if (aorm__sql_raw_emit(q, c->root, c->b, c->p) == AORM_ENOMEM) c->oom = true;
        return;
    }
}

unsigned long aorm__sql_compiles;

int aorm__sql_compile(aorm_stmt *q) {
    aorm__sql_compiles++;
    q->nnamed = 0;
    q->sql.len = 0;
    aorm_params_reset(&q->params);
    scope sc = {q, NULL};
    cc c = {q, &q->sql, &q->params, &sc, false, NULL, &q->qual};
    /* Room for a typical statement at once, instead of doubling from 64. */
    if (aorm__buf_reserve(&q->sql, 512) < 0) return aorm__sql_fail(q, AORM_ENOMEM, NULL);
    stmt_body(&c, q);
    if (aorm__buf_putc(&q->sql, '\0') < 0) c.oom = true;
    else q->sql.len--;
    if (q->error) return q->error;
    if (c.oom) return aorm__sql_fail(q, AORM_ENOMEM, NULL);
    int pe = aorm_params_error(&q->params);
    if (pe)
        return aorm__sql_fail(q, pe, "parameters: %s%s", aorm_strerror(pe),
                              pe == AORM_ERANGE ? " (more than 65535 parameters, or a value too large)" : "");
    return 0;
}

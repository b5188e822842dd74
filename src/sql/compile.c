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
 * Columns are checked here, not when attached, because FROM and joins may
 * come after the expressions that use them: a column must belong to the
 * statement's model, one of its joined models, or (in a subquery) to a
 * model of an enclosing statement. */
#include <stdio.h>
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

static bool model_in(const aorm_stmt *q, const aorm_model *m) {
    if (q->model == m) return true;
    for (int i = 0; i < q->njoins; i++)
        if (q->joins[i].model == m) return true;
    return false;
}

static void column(cc *c, const aorm_model *m, const aorm_column *col) {
    const scope *s = c->sc;
    for (; s; s = s->up)
        if (model_in(s->q, m)) break;
    if (!s) {
        const aorm_stmt *q = c->sc->q;
        const char *where = q->kind == AORM__SELECT ? "neither the FROM model nor a joined model"
                                                    : "not the table the statement writes";
        aorm__sql_fail(c->root, AORM_EMISUSE,
                       "column %s.%s: model %s (table \"%s\") is not part of the statement (%s)", m->table,
                       col->name, m->name ? m->name : "?", m->table, where);
        return;
    }
    table(c, m);
    LIT(c, ".");
    ident(c, col->name);
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
    case AORM_JSON: return aorm_params_json(p, e->v.s, e->len);
    case AORM_JSONB: return aorm_params_jsonb(p, e->v.s, e->len);
    }
    return bad_param(p);
}

static void param(cc *c, const aorm_expr *e) {
    aorm__sql_param(c->p, e); /* a failure stays in the builder: checked at the end */
    number(c, c->p->count);
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
    case AORM_X_IN_SELECT: return true;
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
    case AORM_FN_COUNT:
    case AORM_FN_COUNT_DISTINCT: return "count";
    case AORM_FN_SUM: return "sum";
    case AORM_FN_AVG: return "avg";
    case AORM_FN_MIN: return "min";
    case AORM_FN_MAX: return "max";
    }
    return "?";
}

static void emit(cc *c, const aorm_expr *e) {
    switch (e->kind) {
    case AORM_X_COLUMN: column(c, e->model, e->v.p); return;
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
        else column(c, x->model, x->col);
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

static void select_body(cc *c, aorm_stmt *q) {
    LIT(c, "SELECT ");
    if (q->distinct) LIT(c, "DISTINCT ");
    if (q->items.n) items(c, &q->items);
    else LIT(c, "1");
    if (q->model) {
        LIT(c, " FROM ");
        table(c, q->model);
    }
    for (int i = 0; i < q->njoins; i++) {
        if (q->joins[i].outer) LIT(c, " LEFT JOIN ");
        else LIT(c, " JOIN ");
        table(c, q->joins[i].model);
        LIT(c, " ON ");
        emit(c, q->joins[i].on);
    }
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
    for (int i = 0; i < q->norder; i++) {
        if (i) LIT(c, ", ");
        else LIT(c, " ORDER BY ");
        emit(c, q->order[i].e);
        unsigned f = q->order[i].flags;
        if (f & AORM_DESC) LIT(c, " DESC");
        if (f & AORM_NULLS_FIRST) LIT(c, " NULLS FIRST");
        if (f & AORM_NULLS_LAST) LIT(c, " NULLS LAST");
    }
    if (q->has_limit) {
        LIT(c, " LIMIT ");
        limit_param(c, q->limit);
    }
    if (q->has_offset) {
        LIT(c, " OFFSET ");
        limit_param(c, q->offset);
    }
    if (q->has_lock) {
        if (q->lock & AORM_LOCK_SHARE) LIT(c, " FOR SHARE");
        else LIT(c, " FOR UPDATE");
        if (q->lock & AORM_LOCK_NOWAIT) LIT(c, " NOWAIT");
        if (q->lock & AORM_LOCK_SKIP_LOCKED) LIT(c, " SKIP LOCKED");
    }
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
    if (q->nrows && q->nicols) {
        col_names(c, q->icols, q->nicols);
        aorm__assert(q->rows.count == q->nicols);
        if (q->nrows == 1) {
            LIT(c, " VALUES (");
            for (int i = 0; i < q->nicols; i++) {
                if (i) LIT(c, ", ");
                row_param(c, &q->rows, i);
            }
            LIT(c, ")");
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
    switch (q->kind) {
    case AORM__SELECT: select_body(c, q); return;
    case AORM__INSERT: insert_body(c, q); return;
    case AORM__UPDATE:
        if (!q->sets.n) aorm__sql_fail(c->root, AORM_EMISUSE, "UPDATE %s without any aorm_set()", q->model->table);
        LIT(c, "UPDATE ");
        table(c, q->model);
        LIT(c, " SET ");
        sets(c, &q->sets);
        if (q->where.n) {
            LIT(c, " WHERE ");
            conds(c, &q->where);
        }
        returning(c, q);
        return;
    case AORM__DELETE:
        LIT(c, "DELETE FROM ");
        table(c, q->model);
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

int aorm__sql_compile(aorm_stmt *q) {
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

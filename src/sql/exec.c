/* exec.c -- running Core statements on the engine and reading their rows
 * back into objects.
 *
 * Execution is compile-then-hand-over: the engine copies the text and the
 * parameters when it queues the statement, so the caller may free the
 * statement as soon as aorm_stmt_execute() returns. A plain SELECT is
 * flagged AORM_EXEC_READONLY (it may then share a pipeline sync and be
 * re-sent after another statement's error); anything that locks or
 * writes, or embeds raw text, is not.
 *
 * Loading maps a model's columns to result positions through the
 * statement's own select / RETURNING list (never by name, so duplicate
 * names in joins cannot confuse it), and hands each raw binary value to
 * the mapping module's aorm__field_load. Raw statements have no such list:
 * their columns are found by name in the result. Values are decoded from
 * the binary format; a text-format column is loaded only where its text
 * is its binary form (text-like types), and is AORM_ETYPE otherwise.
 *
 * Must not: keep the result or the object past the call. */
#include <string.h>

#include <libpq-fe.h>

#include "mapping/mapping.h"
#include "sql/sql_int.h"

static int prepare(aorm_stmt *q, const aorm_exec_options *o, aorm_exec_options *out) {
    if (!q) return AORM_EMISUSE;
    int rc = aorm_stmt_compile(q);
    if (rc) return rc;
    if (q->nnamed) return AORM_EMISUSE; /* named placeholders: aorm_stmt_prepare() binds them */
    if (o) *out = *o;
    else memset(out, 0, sizeof(*out));
    if (aorm_stmt_readonly(q)) out->flags |= AORM_EXEC_READONLY;
    return 0;
}

int aorm_stmt_execute(aorm_engine *e, aorm_stmt *q, const aorm_exec_options *o, aorm_result_cb cb, void *user) {
    aorm_exec_options opts;
    int rc = prepare(q, o, &opts);
    if (rc) return rc;
    if (!e) return AORM_EMISUSE;
    return aorm_engine_execute(e, q->sql.data, &q->params, &opts, cb, user);
}

int aorm_stmt_execute_on(aorm_conn *c, aorm_stmt *q, const aorm_exec_options *o, aorm_result_cb cb, void *user) {
    aorm_exec_options opts;
    int rc = prepare(q, o, &opts);
    if (rc) return rc;
    if (!c) return AORM_EMISUSE;
    return aorm_conn_execute(c, q->sql.data, &q->params, &opts, cb, user);
}

/* The list whose entries are the result's columns: the select list,
 * RETURNING or a set operation's first arm's; NULL for raw text. */
static const aorm__items *result_items(const aorm_stmt *q) { return aorm__sql_outputs(q); }

static bool same_alias(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

/* Position of column (m, offset), searching from `hint` on and wrapping,
 * so that loading a model whose columns are listed in order costs one
 * comparison per column. */
static int find_column(const aorm__items *it, const aorm_model *m, const char *alias, size_t offset, int hint) {
    int n = it->n;
    if (hint < 0 || hint >= n) hint = 0;
    for (int k = 0; k < n; k++) {
        int j = hint + k < n ? hint + k : hint + k - n;
        const aorm__item *x = &it->v[j];
        if (x->col && x->model == m && x->col->offset == offset && same_alias(x->alias, alias)) return j;
    }
    return AORM_ENOTFOUND;
}

int aorm_stmt_label(const aorm_stmt *q, const char *label) {
    if (!q || !label) return AORM_EMISUSE;
    const aorm__items *it = result_items(q);
    if (!it) return AORM_ENOTFOUND;
    for (int i = 0; i < it->n; i++)
        if (strcmp(it->v[i].name, label) == 0) return i;
    return AORM_ENOTFOUND;
}

int aorm_stmt_column(const aorm_stmt *q, const aorm_expr *col) {
    if (!q || !col) return AORM_EMISUSE;
    if (col->kind == AORM_X_LABEL) return col->label ? aorm_stmt_label(q, col->label) : AORM_EMISUSE;
    if (col->kind != AORM_X_COLUMN || !col->model) return AORM_EMISUSE;
    const aorm__items *it = result_items(q);
    if (!it) return AORM_ENOTFOUND;
    return find_column(it, col->model, col->alias, col->offset, 0);
}

/* The type OID under which a column's values can be handed to
 * aorm__field_load, which decodes the binary format: the column's own
 * type for a binary column; for a text-format column (a statement run
 * with AORM_EXEC_TEXT_RESULT) only the types whose text form is their
 * binary form (jsonb's text is read as json, it has no version byte),
 * and 0 for every other one -- the int2 "42" decoded as binary would
 * silently be 13362. */
static uint32_t load_type(const aorm_result *r, int pos) {
    uint32_t oid = aorm_result_col_type(r, pos);
    if (PQfformat(aorm_result_pgresult(r), pos) != 0) return oid;
    switch (oid) {
    case AORM_T_TEXT:
    case AORM_T_VARCHAR:
    case AORM_T_BPCHAR:
    case AORM_T_NAME:
    case AORM_T_UNKNOWN:
    case AORM_T_JSON: return oid;
    case AORM_T_JSONB: return AORM_T_JSON;
    default: return 0;
    }
}

static int load_one(const aorm_result *r, int row, int pos, const aorm_column *col, void *obj,
                    const aorm_allocator *alloc) {
    const char *data;
    int len;
    int rc = aorm_result_raw(r, row, pos, &data, &len);
    if (rc) return rc;
    uint32_t oid = load_type(r, pos);
    /* NULL reads the same in either format */
    if (!oid && len >= 0) return AORM_ETYPE;
    return aorm__field_load(col, obj, oid ? oid : aorm_result_col_type(r, pos), data, len, alloc);
}

int aorm_stmt_load(const aorm_stmt *q, const aorm_result *r, int row, const aorm_model *m, void *obj,
                   const aorm_allocator *alloc) {
    return aorm_stmt_load_alias(q, r, row, m, NULL, obj, alloc);
}

int aorm_stmt_load_alias(const aorm_stmt *q, const aorm_result *r, int row, const aorm_model *m, const char *alias,
                         void *obj, const aorm_allocator *alloc) {
    if (!q || !r || !m || !obj) return AORM_EMISUSE;
    if (row < 0 || row >= aorm_result_nrows(r)) return AORM_ERANGE;
    const aorm__items *it = result_items(q);
    int ncols = aorm_result_ncols(r);
    int hint = 0;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *col = &m->columns[i];
        int pos;
        if (it) {
            pos = find_column(it, m, alias, col->offset, hint);
            if (pos < 0) continue;
            hint = pos + 1;
            if (pos >= ncols) return AORM_ERANGE; /* not this statement's result */
        } else {
            pos = aorm_result_col(r, col->name);
            if (pos < 0) continue;
        }
        int rc = load_one(r, row, pos, col, obj, alloc);
        if (rc) return rc;
    }
    return 0;
}

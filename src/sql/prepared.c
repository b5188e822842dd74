/* prepared.c -- Core statements compiled once (aorm_stmt_prepare) and
 * executed again with new values for their named placeholders.
 *
 * A prepared statement copies the compiled text and parameters of its
 * statement; each placeholder's slot holds a typed NULL there. An
 * execution rebuilds the parameter list slot by slot: a named slot takes
 * its name's bound value, the others their compiled value. Nothing of the
 * expression tree is kept, so the statement may be freed at once.
 *
 * Owns: the text, the compiled parameters, the names and their values
 * (one aorm_params of one value per name). Must not: compile again. */
#include <stdlib.h>
#include <string.h>

#include "mapping/mapping.h"
#include "aorm/session.h"
#include "sql/sql_int.h"

typedef struct pname {
    char *name;
    aorm_type type;
    const aorm_enum *enum_type;
    bool bound;
    aorm_params value; /* one value once bound */
} pname;

struct aorm_prepared {
    char *sql;
    aorm_params base;  /* as compiled */
    int *slot_name;    /* per slot: index into names, or -1 */
    pname *names;
    int nnames;
    bool readonly;
    aorm_params run;   /* scratch of the last execution */
};

void aorm_prepared_free(aorm_prepared *p) {
    if (!p) return;
    for (int i = 0; i < p->nnames; i++) {
        free(p->names[i].name);
        aorm_params_free(&p->names[i].value);
    }
    free(p->names);
    free(p->slot_name);
    aorm_params_free(&p->base);
    aorm_params_free(&p->run);
    free(p->sql);
    free(p);
}

/* Appends slot i of src to dst, as it is. */
static int copy_slot(aorm_params *dst, const aorm_params *src, int i) {
    const aorm_param_slot *s = &src->slots[i];
    if (s->len < 0) return aorm_params_raw(dst, s->type, NULL, 0, s->format);
    return aorm_params_raw(dst, s->type, src->data + s->offset, (size_t)s->len, s->format);
}

aorm_prepared *aorm_stmt_prepare(aorm_stmt *q) {
    if (!q || aorm_stmt_compile(q)) return NULL;
    aorm_prepared *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    aorm_params_init(&p->base);
    aorm_params_init(&p->run);
    int n = q->params.count;
    p->sql = strdup(q->sql.data);
    p->slot_name = malloc(((size_t)n + 1) * sizeof(int));
    p->names = calloc((size_t)q->nnamed + 1, sizeof(pname));
    p->readonly = aorm_stmt_readonly(q);
    if (!p->sql || !p->slot_name || !p->names) goto oom;
    for (int i = 0; i < n; i++) {
        p->slot_name[i] = -1;
        if (copy_slot(&p->base, &q->params, i)) goto oom;
    }
    for (int k = 0; k < q->nnamed; k++) {
        const struct aorm__named *nm = &q->named[k];
        int j = 0;
        while (j < p->nnames && strcmp(p->names[j].name, nm->name) != 0) j++;
        if (j == p->nnames) {
            pname *x = &p->names[p->nnames++];
            if (!(x->name = strdup(nm->name))) goto oom;
            x->type = nm->type;
            x->enum_type = nm->enum_type;
            aorm_params_init(&x->value);
        } else if (p->names[j].type != nm->type) {
            aorm__sql_fail(q, AORM_EMISUSE, "aorm_stmt_prepare: placeholder \"%.40s\" is used with two types",
                           nm->name);
            aorm_prepared_free(p);
            return NULL;
        }
        p->slot_name[nm->slot] = j;
    }
    return p;
oom:
    aorm_prepared_free(p);
    return NULL;
}

const char *aorm_prepared_sql(const aorm_prepared *p) { return p ? p->sql : NULL; }

static bool is_int(aorm_type t) { return t == AORM_INT2 || t == AORM_INT4 || t == AORM_INT8; }

int aorm_prepared_bind(aorm_prepared *p, const char *name, const aorm_expr *v) {
    if (!p || !name || !v || v->kind != AORM_X_VALUE || v->name) return AORM_EMISUSE;
    pname *x = NULL;
    for (int i = 0; i < p->nnames && !x; i++)
        if (strcmp(p->names[i].name, name) == 0) x = &p->names[i];
    if (!x) return AORM_EMISUSE;
    aorm_expr e = *v;
    if (e.type != x->type) {
        if (!(is_int(e.type) && is_int(x->type))) return AORM_EMISUSE;
        e.type = x->type; /* a narrower integer: range-checked below */
    }
    if (!e.null && x->type == AORM_INT2 && (e.v.i < INT16_MIN || e.v.i > INT16_MAX)) return AORM_ERANGE;
    if (!e.null && x->type == AORM_INT4 && (e.v.i < INT32_MIN || e.v.i > INT32_MAX)) return AORM_ERANGE;
    if (x->type == AORM_ENUM && !e.enum_type) e.enum_type = x->enum_type;
    if ((x->type == AORM_TEXT || x->type == AORM_JSON || x->type == AORM_JSONB) && !e.null && e.v.s &&
        e.len == SIZE_MAX)
        e.len = strlen(e.v.s);
    if (!e.null && (x->type == AORM_TEXT || x->type == AORM_NUMERIC || x->type == AORM_JSON ||
                    x->type == AORM_JSONB) && !e.v.s)
        e.null = true;
    aorm_params_reset(&x->value);
    int rc = aorm__sql_param(&x->value, &e);
    if (rc == 0) rc = aorm_params_error(&x->value);
    x->bound = rc == 0;
    if (rc) aorm_params_reset(&x->value);
    return rc;
}

int aorm_prepared_bind_int4(aorm_prepared *p, const char *name, int32_t v) { return aorm_prepared_bind(p, name, aorm_int4(v)); }
int aorm_prepared_bind_int8(aorm_prepared *p, const char *name, int64_t v) { return aorm_prepared_bind(p, name, aorm_int8(v)); }
int aorm_prepared_bind_float8(aorm_prepared *p, const char *name, double v) {
    return aorm_prepared_bind(p, name, aorm_float8(v));
}
int aorm_prepared_bind_text(aorm_prepared *p, const char *name, const char *v) {
    return aorm_prepared_bind(p, name, v ? aorm_text(v) : aorm_null(AORM_TEXT));
}
int aorm_prepared_bind_bool(aorm_prepared *p, const char *name, bool v) { return aorm_prepared_bind(p, name, aorm_bool(v)); }

int aorm_prepared_bind_null(aorm_prepared *p, const char *name) {
    if (!p || !name) return AORM_EMISUSE;
    for (int i = 0; i < p->nnames; i++)
        if (strcmp(p->names[i].name, name) == 0)
            return aorm_prepared_bind(p, name, aorm_null(p->names[i].type));
    return AORM_EMISUSE;
}

/* The parameters of one execution appended to dst. */
static int build_params(const aorm_prepared *p, aorm_params *dst) {
    for (int i = 0; i < p->nnames; i++)
        if (!p->names[i].bound) return AORM_EMISUSE;
    for (int i = 0; i < p->base.count; i++) {
        int j = p->slot_name[i];
        int rc = j < 0 ? copy_slot(dst, &p->base, i) : copy_slot(dst, &p->names[j].value, 0);
        if (rc) return rc;
    }
    return 0;
}

/* The parameters of one execution into p->run, and the options. */
static int build_run(aorm_prepared *p, const aorm_exec_options *o, aorm_exec_options *out) {
    aorm_params_reset(&p->run);
    int rc = build_params(p, &p->run);
    if (rc) return rc;
    if (o) *out = *o;
    else memset(out, 0, sizeof(*out));
    if (p->readonly) out->flags |= AORM_EXEC_READONLY;
    return 0;
}

int aorm_prepared_execute(aorm_engine *e, aorm_prepared *p, const aorm_exec_options *o, aorm_result_cb cb,
                          void *user) {
    if (!e || !p) return AORM_EMISUSE;
    aorm_exec_options opts;
    int rc = build_run(p, o, &opts);
    if (rc) return rc;
    return aorm_engine_execute(e, p->sql, &p->run, &opts, cb, user);
}

int aorm_prepared_execute_on(aorm_conn *c, aorm_prepared *p, const aorm_exec_options *o, aorm_result_cb cb,
                             void *user) {
    if (!c || !p) return AORM_EMISUSE;
    aorm_exec_options opts;
    int rc = build_run(p, o, &opts);
    if (rc) return rc;
    return aorm_conn_execute(c, p->sql, &p->run, &opts, cb, user);
}

aorm_stmt *aorm_prepared_stmt(aorm_prepared *p) {
    if (!p) return NULL;
    aorm_stmt *q = aorm__sql_new(AORM__RAW, NULL);
    if (!q) return NULL;
    size_t n = strlen(p->sql);
    int rc = aorm__buf_append(&q->sql, p->sql, n + 1) < 0 ? AORM_ENOMEM : 0;
    q->sql.len = n;
    if (rc == 0) rc = build_params(p, &q->params);
    if (rc) {
        aorm_stmt_free(q);
        return NULL;
    }
    q->compiled = true; /* the text is final: nothing is compiled again */
    return q;
}

int aorm_session_execute_prepared(aorm_session *s, aorm_prepared *p, aorm_rows_cb cb, void *user) {
    if (!s || !p || !cb) return AORM_EMISUSE;
    for (int i = 0; i < p->nnames; i++)
        if (!p->names[i].bound) return AORM_EMISUSE;
    aorm_stmt *q = aorm_prepared_stmt(p);
    if (!q) return AORM_ENOMEM;
    return aorm_session_execute(s, q, cb, user);
}

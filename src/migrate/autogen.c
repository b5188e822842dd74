/* autogen.c -- the differences between the models and the database, as
 * up and down SQL.
 *
 * How the models are compared with pg_catalog: the runner creates the
 * models' tables with aorm_ddl_create_sql() in a scratch schema, inside a
 * transaction that it rolls back, and reads that schema with the same
 * catalog query (aorm__mig_snapshot_sql) as the live one. Both sides are
 * therefore described by the server itself -- format_type() for types,
 * pg_get_expr() for defaults, pg_get_constraintdef() and
 * pg_get_indexdef() for keys and indexes -- and compared as text, with no
 * second copy of the rules by which models become DDL (ddl.c keeps those:
 * type names, constraint and index names, the indexes of foreign keys).
 * The query runs with search_path set to the schema it reads, so names
 * come out unqualified on both sides (pg_get_indexdef() always qualifies
 * the table: the query strips that schema).
 *
 * What is written: missing tables (ddl.c's CREATE TABLE and indexes),
 * added columns, changed types (USING col::type), nullability, defaults,
 * identity; primary keys, unique constraints and foreign keys added,
 * changed or dropped; indexes likewise. A table or a column the models no
 * longer have is never dropped: the revision gets a commented hint (with
 * the rename it may have been, when a new table or column has the same
 * shape), and check keeps reporting it. The down section undoes the up
 * section in reverse order.
 *
 * Owns: nothing beyond its buffers. Must not: talk to the database (the
 * runner does). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aorm/result.h"
#include "aorm/sql.h"
#include "mapping/mapping.h"
#include "migrate/migrate_int.h"

/* Tables of the schema being read (search_path = that schema), except the
 * history table ($1); their columns, keys and the indexes that are no
 * key's. */
const char aorm__mig_snapshot_sql[] =
    "WITH s AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema()), "
    "t AS (SELECT c.oid, c.relname FROM pg_class c, s WHERE c.relnamespace = s.oid AND c.relkind IN ('r', 'p') "
    "AND c.relname <> $1) "
    "SELECT 'T' AS kind, t.relname::text AS tab, t.relname::text AS name, '' AS a0, '' AS a1, '' AS a2, '' AS a3 "
    "FROM t "
    "UNION ALL SELECT 'C', t.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), "
    "CASE WHEN a.attnotnull THEN 't' ELSE 'f' END, coalesce(pg_get_expr(d.adbin, d.adrelid), ''), "
    "a.attidentity::text "
    "FROM t JOIN pg_attribute a ON a.attrelid = t.oid "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "WHERE a.attnum > 0 AND NOT a.attisdropped "
    "UNION ALL SELECT 'K', t.relname::text, k.conname::text, k.contype::text, pg_get_constraintdef(k.oid), '', '' "
    "FROM t JOIN pg_constraint k ON k.conrelid = t.oid WHERE k.contype IN ('p', 'u', 'f') "
    "UNION ALL SELECT 'I', t.relname::text, i.relname::text, "
    "replace(pg_get_indexdef(i.oid), ' ON ' || quote_ident(current_schema()) || '.', ' ON '), '', '', '' "
    "FROM t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid "
    "WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.oid AND k.conrelid = t.oid "
    "AND k.contype IN ('p', 'u', 'x')) "
    "ORDER BY 1, 2, 3";

void aorm__mig_snapshot_free(mig_snapshot *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->v[i].table);
        free(s->v[i].name);
        for (int k = 0; k < 4; k++) free(s->v[i].a[k]);
    }
    free(s->v);
    memset(s, 0, sizeof(*s));
}

int aorm__mig_snapshot_read(const aorm_result *r, mig_snapshot *out) {
    memset(out, 0, sizeof(*out));
    int n = aorm_result_nrows(r);
    if (n > 0 && !(out->v = calloc((size_t)n, sizeof(*out->v)))) return AORM_ENOMEM;
    for (int i = 0; i < n; i++) {
        mig_obj *o = &out->v[out->n++];
        const char *s[7];
        for (int c = 0; c < 7; c++) {
            if (aorm_result_text(r, i, c, &s[c], NULL) < 0) s[c] = "";
        }
        o->kind = s[0][0];
        o->table = aorm__strdup(s[1]);
        o->name = aorm__strdup(s[2]);
        bool ok = o->table && o->name;
        for (int k = 0; k < 4; k++) ok = (o->a[k] = aorm__strdup(s[3 + k])) && ok;
        if (!ok) {
            aorm__mig_snapshot_free(out);
            return AORM_ENOMEM;
        }
    }
    return 0;
}

/* =========================================================================
 * Writing
 * ========================================================================= */

/* Phases of an up section; the down section runs them backwards. */
enum { PH_TABLES, PH_COLUMNS, PH_DROP_FK, PH_DROP_KEYS, PH_DROP_INDEXES, PH_ADD_KEYS, PH_ADD_FK, PH_ADD_INDEXES,
       PH_N };

typedef struct out {
    aorm__buf up[PH_N], down[PH_N];
    aorm__buf hints; /* comment lines, at the top of the up section */
    aorm__buf *list;
    int count;
    int err;
} out;

static void put(out *o, aorm__buf *b, const char *s) {
    if (!o->err && aorm__buf_append(b, s, strlen(s)) < 0) o->err = AORM_ENOMEM;
}

static void put_ident(out *o, aorm__buf *b, const char *s) {
    if (!o->err && aorm__quote_ident(b, s) < 0) o->err = AORM_ENOMEM;
}

__attribute__((format(printf, 3, 4))) static void putf(out *o, aorm__buf *b, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        put(o, b, tmp);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        o->err = AORM_ENOMEM;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    put(o, b, big);
    free(big);
}

/* "ALTER TABLE "t" " */
static void alter(out *o, aorm__buf *b, const char *table) {
    put(o, b, "ALTER TABLE ");
    put_ident(o, b, table);
    put(o, b, " ");
}

static void alter_column(out *o, aorm__buf *b, const char *table, const char *col) {
    alter(o, b, table);
    put(o, b, "ALTER COLUMN ");
    put_ident(o, b, col);
    put(o, b, " ");
}

/* Writes the hint text as "-- " lines (text may hold newlines). */
static void hint(out *o, const char *text) {
    put(o, &o->hints, "-- ");
    for (const char *p = text; *p; p++) {
        char c[2] = {*p, 0};
        put(o, &o->hints, c);
        if (*p == '\n' && p[1]) put(o, &o->hints, "-- ");
    }
    if (!*text || text[strlen(text) - 1] != '\n') put(o, &o->hints, "\n");
}

static mig_obj *find(mig_snapshot *s, char kind, const char *table, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (s->v[i].kind == kind && !strcmp(s->v[i].table, table) && (!name || !strcmp(s->v[i].name, name)))
            return &s->v[i];
    return NULL;
}

static const aorm_model *model_of(const aorm_model *const *models, int n, const char *table) {
    for (int i = 0; i < n; i++)
        if (!models[i]->schema && !strcmp(models[i]->table, table)) return models[i];
    return NULL;
}

/* Same columns (names and types, in order) in tables a of sa and b of sb? */
static bool same_shape(mig_snapshot *sa, const char *a, mig_snapshot *sb, const char *b) {
    int i = 0, j = 0;
    for (;;) {
        while (i < sa->n && !(sa->v[i].kind == 'C' && !strcmp(sa->v[i].table, a))) i++;
        while (j < sb->n && !(sb->v[j].kind == 'C' && !strcmp(sb->v[j].table, b))) j++;
        if (i == sa->n || j == sb->n) return i == sa->n && j == sb->n;
        if (strcmp(sa->v[i].name, sb->v[j].name) || strcmp(sa->v[i].a[0], sb->v[j].a[0])) return false;
        i++, j++;
    }
}

/* ADD COLUMN from the model's declaration (serial and identity as DDL
 * writes them), else from the image. */
static void add_column(out *o, const aorm_model *m, const mig_obj *w) {
    aorm__buf *b = &o->up[PH_COLUMNS];
    const aorm_column *c = m ? aorm_model_column(m, w->name) : NULL;
    if (!strcmp(w->a[1], "t") && !w->a[2][0] && !w->a[3][0] && !(c && (c->flags & AORM_SERIAL))) {
        char h[512];
        snprintf(h, sizeof h,
                 "%s.%s is NOT NULL without a default: the ADD COLUMN fails on a table that has rows "
                 "(add it nullable, fill it, then SET NOT NULL)",
                 w->table, w->name);
        hint(o, h);
    }
    alter(o, b, w->table);
    put(o, b, "ADD COLUMN ");
    put_ident(o, b, w->name);
    put(o, b, " ");
    if (c) {
        char tname[200];
        const char *t = aorm__column_type_sql(c, (c->flags & AORM_SERIAL) != 0, tname, sizeof tname);
        put(o, b, t ? t : w->a[0]);
        if (!(c->flags & AORM_NULLABLE)) put(o, b, " NOT NULL");
        if (c->flags & AORM_IDENTITY) put(o, b, " GENERATED BY DEFAULT AS IDENTITY");
        if (c->server_default) {
            put(o, b, " DEFAULT ");
            put(o, b, c->server_default);
        }
    } else {
        put(o, b, w->a[0]);
        if (!strcmp(w->a[1], "t")) put(o, b, " NOT NULL");
        if (w->a[2][0]) {
            put(o, b, " DEFAULT ");
            put(o, b, w->a[2]);
        }
    }
    put(o, b, ";\n");
    alter(o, &o->down[PH_COLUMNS], w->table);
    put(o, &o->down[PH_COLUMNS], "DROP COLUMN ");
    put_ident(o, &o->down[PH_COLUMNS], w->name);
    put(o, &o->down[PH_COLUMNS], ";\n");
    putf(o, o->list, "+ column %s.%s %s\n", w->table, w->name, w->a[0]);
    o->count++;
}

static const char *identity_sql(const char *v) {
    return !strcmp(v, "a") ? "ADD GENERATED ALWAYS AS IDENTITY" : "ADD GENERATED BY DEFAULT AS IDENTITY";
}

static void change_column(out *o, const mig_obj *w, const mig_obj *h) {
    aorm__buf *u = &o->up[PH_COLUMNS], *d = &o->down[PH_COLUMNS];
    if (strcmp(w->a[0], h->a[0])) {
        alter_column(o, u, w->table, w->name);
        putf(o, u, "TYPE %s USING ", w->a[0]);
        put_ident(o, u, w->name);
        putf(o, u, "::%s;\n", w->a[0]);
        alter_column(o, d, w->table, w->name);
        putf(o, d, "TYPE %s USING ", h->a[0]);
        put_ident(o, d, w->name);
        putf(o, d, "::%s;\n", h->a[0]);
        putf(o, o->list, "~ column %s.%s: type %s -> %s\n", w->table, w->name, h->a[0], w->a[0]);
        o->count++;
    }
    if (strcmp(w->a[3], h->a[3])) {
        if (h->a[3][0]) {
            alter_column(o, u, w->table, w->name);
            put(o, u, "DROP IDENTITY;\n");
        }
        if (w->a[3][0]) {
            alter_column(o, u, w->table, w->name);
            putf(o, u, "%s;\n", identity_sql(w->a[3]));
            alter_column(o, d, w->table, w->name);
            put(o, d, "DROP IDENTITY;\n");
        }
        if (h->a[3][0]) {
            alter_column(o, d, w->table, w->name);
            putf(o, d, "%s;\n", identity_sql(h->a[3]));
        }
        putf(o, o->list, "~ column %s.%s: identity '%s' -> '%s'\n", w->table, w->name, h->a[3], w->a[3]);
        o->count++;
    }
    /* an identity column's default is the identity's, not an expression */
    if (strcmp(w->a[2], h->a[2]) && !w->a[3][0] && !h->a[3][0]) {
        alter_column(o, u, w->table, w->name);
        if (w->a[2][0]) putf(o, u, "SET DEFAULT %s;\n", w->a[2]);
        else put(o, u, "DROP DEFAULT;\n");
        alter_column(o, d, w->table, w->name);
        if (h->a[2][0]) putf(o, d, "SET DEFAULT %s;\n", h->a[2]);
        else put(o, d, "DROP DEFAULT;\n");
        putf(o, o->list, "~ column %s.%s: default '%s' -> '%s'\n", w->table, w->name, h->a[2], w->a[2]);
        o->count++;
    }
    if (strcmp(w->a[1], h->a[1])) {
        bool nn = !strcmp(w->a[1], "t");
        alter_column(o, u, w->table, w->name);
        put(o, u, nn ? "SET NOT NULL;\n" : "DROP NOT NULL;\n");
        alter_column(o, d, w->table, w->name);
        put(o, d, nn ? "DROP NOT NULL;\n" : "SET NOT NULL;\n");
        putf(o, o->list, "~ column %s.%s: %s\n", w->table, w->name, nn ? "now NOT NULL" : "now nullable");
        o->count++;
    }
}

static int key_add_phase(const mig_obj *k) { return k->a[0][0] == 'f' ? PH_ADD_FK : PH_ADD_KEYS; }
static int key_drop_phase(const mig_obj *k) { return k->a[0][0] == 'f' ? PH_DROP_FK : PH_DROP_KEYS; }

static void add_constraint(out *o, aorm__buf *b, const mig_obj *k) {
    alter(o, b, k->table);
    put(o, b, "ADD CONSTRAINT ");
    put_ident(o, b, k->name);
    putf(o, b, " %s;\n", k->a[1]);
}

static void drop_constraint(out *o, aorm__buf *b, const mig_obj *k) {
    alter(o, b, k->table);
    put(o, b, "DROP CONSTRAINT ");
    put_ident(o, b, k->name);
    put(o, b, ";\n");
}

static void drop_index(out *o, aorm__buf *b, const mig_obj *i) {
    put(o, b, "DROP INDEX ");
    put_ident(o, b, i->name);
    put(o, b, ";\n");
}

static const char *key_word(const mig_obj *k) {
    return k->a[0][0] == 'p' ? "primary key" : k->a[0][0] == 'u' ? "unique constraint" : "foreign key";
}

int aorm__mig_diff(const aorm_model *const *models, int nmodels, mig_snapshot *want, mig_snapshot *have,
                   aorm__buf *up, aorm__buf *down, aorm__buf *list, char *msg, size_t cap) {
    out o = {.list = list};
    const aorm_model **fresh = calloc((size_t)nmodels + 1, sizeof(*fresh));
    if (!fresh) return AORM_ENOMEM;
    int nfresh = 0;
    for (int i = 0; i < want->n; i++) want->v[i].matched = false;
    for (int i = 0; i < have->n; i++) have->v[i].matched = false;

    /* tables */
    for (int i = 0; i < want->n; i++) {
        mig_obj *w = &want->v[i];
        if (w->kind != 'T') continue;
        mig_obj *h = find(have, 'T', w->table, NULL);
        if (h) {
            w->matched = h->matched = true;
            continue;
        }
        const aorm_model *m = model_of(models, nmodels, w->table);
        if (m) fresh[nfresh++] = m;
        putf(&o, list, "+ table %s\n", w->table);
        o.count++;
        /* everything of a new table comes with its CREATE */
        for (int j = 0; j < want->n; j++)
            if (!strcmp(want->v[j].table, w->table)) want->v[j].matched = true;
    }
    if (nfresh) {
        char *c = NULL, *d = NULL;
        int rc = aorm_ddl_create_sql(fresh, nfresh, 0, &c, msg, cap);
        if (rc == 0) rc = aorm_ddl_drop_sql(fresh, nfresh, 0, &d, msg, cap);
        if (rc == 0) {
            put(&o, &o.up[PH_TABLES], c);
            put(&o, &o.down[PH_TABLES], d);
        }
        free(c);
        free(d);
        if (rc) {
            free(fresh);
            for (int p = 0; p < PH_N; p++) aorm__buf_free(&o.up[p]), aorm__buf_free(&o.down[p]);
            aorm__buf_free(&o.hints);
            return rc;
        }
    }
    /* tables the models do not have: hints only */
    for (int i = 0; i < have->n; i++) {
        mig_obj *h = &have->v[i];
        if (h->kind != 'T' || h->matched) continue;
        char text[1024];
        int k = snprintf(text, sizeof text, "table %s is in the database but not in the models; not dropped.\n",
                         h->table);
        for (int j = 0; j < nfresh; j++)
            if (same_shape(have, h->table, want, fresh[j]->table) && k > 0 && (size_t)k < sizeof text)
                k += snprintf(text + k, sizeof text - (size_t)k,
                              "If it was renamed to %s, replace that CREATE TABLE with:\n"
                              "  ALTER TABLE \"%s\" RENAME TO \"%s\";\n",
                              fresh[j]->table, h->table, fresh[j]->table);
        if (k > 0 && (size_t)k < sizeof text)
            snprintf(text + k, sizeof text - (size_t)k, "To drop it:  DROP TABLE \"%s\";", h->table);
        hint(&o, text);
        putf(&o, list, "? table %s is not in the models\n", h->table);
        o.count++;
        for (int j = 0; j < have->n; j++)
            if (!strcmp(have->v[j].table, h->table)) have->v[j].matched = true;
    }
    /* columns of tables on both sides */
    for (int i = 0; i < want->n; i++) {
        mig_obj *w = &want->v[i];
        if (w->kind != 'C' || w->matched) continue;
        w->matched = true;
        mig_obj *h = find(have, 'C', w->table, w->name);
        if (!h) {
            add_column(&o, model_of(models, nmodels, w->table), w);
            continue;
        }
        h->matched = true;
        change_column(&o, w, h);
    }
    for (int i = 0; i < have->n; i++) {
        mig_obj *h = &have->v[i];
        if (h->kind != 'C' || h->matched) continue;
        h->matched = true;
        char text[1024];
        int k = snprintf(text, sizeof text, "column %s.%s is in the database but not in the models; not dropped.\n",
                         h->table, h->name);
        for (int j = 0; j < want->n; j++) {
            mig_obj *w = &want->v[j];
            if (w->kind == 'C' && !strcmp(w->table, h->table) && !find(have, 'C', w->table, w->name) &&
                !strcmp(w->a[0], h->a[0]) && k > 0 && (size_t)k < sizeof text)
                k += snprintf(text + k, sizeof text - (size_t)k,
                              "If it was renamed to %s, replace that ADD COLUMN with:\n"
                              "  ALTER TABLE \"%s\" RENAME COLUMN \"%s\" TO \"%s\";\n",
                              w->name, h->table, h->name, w->name);
        }
        if (k > 0 && (size_t)k < sizeof text)
            snprintf(text + k, sizeof text - (size_t)k, "To drop it:  ALTER TABLE \"%s\" DROP COLUMN \"%s\";",
                     h->table, h->name);
        hint(&o, text);
        putf(&o, list, "? column %s.%s is not in the models\n", h->table, h->name);
        o.count++;
    }
    /* keys and indexes */
    for (int i = 0; i < want->n; i++) {
        mig_obj *w = &want->v[i];
        if ((w->kind != 'K' && w->kind != 'I') || w->matched) continue;
        w->matched = true;
        mig_obj *h = find(have, w->kind, w->table, w->name);
        bool same = h && !strcmp(w->a[0], h->a[0]) && !strcmp(w->a[1], h->a[1]);
        if (h) h->matched = true;
        if (same) continue;
        if (w->kind == 'K') {
            if (h) {
                drop_constraint(&o, &o.up[key_drop_phase(h)], h);
                add_constraint(&o, &o.down[key_drop_phase(h)], h);
            }
            add_constraint(&o, &o.up[key_add_phase(w)], w);
            drop_constraint(&o, &o.down[key_add_phase(w)], w);
            putf(&o, list, "%c %s %s on %s: %s\n", h ? '~' : '+', key_word(w), w->name, w->table, w->a[1]);
        } else {
            if (h) {
                drop_index(&o, &o.up[PH_DROP_INDEXES], h);
                putf(&o, &o.down[PH_DROP_INDEXES], "%s;\n", h->a[0]);
            }
            putf(&o, &o.up[PH_ADD_INDEXES], "%s;\n", w->a[0]);
            drop_index(&o, &o.down[PH_ADD_INDEXES], w);
            putf(&o, list, "%c index %s: %s\n", h ? '~' : '+', w->name, w->a[0]);
        }
        o.count++;
    }
    for (int i = 0; i < have->n; i++) {
        mig_obj *h = &have->v[i];
        if ((h->kind != 'K' && h->kind != 'I') || h->matched) continue;
        h->matched = true;
        if (h->kind == 'K') {
            drop_constraint(&o, &o.up[key_drop_phase(h)], h);
            add_constraint(&o, &o.down[key_drop_phase(h)], h);
            putf(&o, list, "- %s %s on %s\n", key_word(h), h->name, h->table);
        } else {
            drop_index(&o, &o.up[PH_DROP_INDEXES], h);
            putf(&o, &o.down[PH_DROP_INDEXES], "%s;\n", h->a[0]);
            putf(&o, list, "- index %s on %s\n", h->name, h->table);
        }
        o.count++;
    }

    if (!o.err && o.hints.len && aorm__buf_append(up, o.hints.data, o.hints.len) < 0) o.err = AORM_ENOMEM;
    for (int p = 0; p < PH_N && !o.err; p++)
        if (o.up[p].len && aorm__buf_append(up, o.up[p].data, o.up[p].len) < 0) o.err = AORM_ENOMEM;
    for (int p = PH_N - 1; p >= 0 && !o.err; p--)
        if (o.down[p].len && aorm__buf_append(down, o.down[p].data, o.down[p].len) < 0) o.err = AORM_ENOMEM;
    for (int p = 0; p < PH_N; p++) {
        aorm__buf_free(&o.up[p]);
        aorm__buf_free(&o.down[p]);
    }
    aorm__buf_free(&o.hints);
    free(fresh);
    if (o.err) {
        snprintf(msg, cap, "out of memory");
        return o.err;
    }
    return o.count;
}

/* ddl.c -- CREATE / DROP statements for models, and running them.
 *
 * aorm_ddl_create_sql() writes, for a list of models: one CREATE TABLE per
 * model in dependency order (a table comes after every table it
 * references), then the indexes; every statement ends with ";\n", so the
 * text is also a valid script. aorm_ddl_create_all() runs the same
 * statements in one transaction on a held connection.
 *
 * Foreign keys are written inline, as table constraints of the CREATE
 * TABLE, never as a later ALTER TABLE ... ADD CONSTRAINT. The dependency
 * order guarantees every referenced table exists by then (a table may also
 * reference itself), and a cycle between tables -- the only case that would
 * need a later ALTER -- is refused with AORM_EMISUSE naming the tables. The
 * point is idempotence: with AORM_DDL_IF_NOT_EXISTS a re-run skips whole
 * tables (CREATE TABLE IF NOT EXISTS) and indexes (CREATE INDEX IF NOT
 * EXISTS), and there is no ALTER that would fail with "constraint already
 * exists" or would need a DO block probing pg_constraint. (Like any
 * CREATE TABLE IF NOT EXISTS, a re-run does not migrate a table that
 * already exists with another shape.)
 *
 * Names, as PostgreSQL would choose them by default, so that error reports
 * name the constraint the reader expects: "<table>_pkey",
 * "<table>_<column>_key" for UNIQUE columns, "<table>_<column>_fkey" for
 * foreign keys, "<table>_<column>_idx" for indexes (an aorm_index without
 * a name uses its first column). A foreign-key column gets an index unless
 * it already leads the primary key, a UNIQUE constraint or a declared
 * index. PostgreSQL keeps only the first 63 bytes of a name, so two
 * generated names that differ after that (two long tables sharing a
 * prefix, two long columns of one table) would become one, and the second
 * CREATE would fail, or be skipped under IF NOT EXISTS. A generated name
 * longer than 63 bytes is therefore written as its first bytes (cut at a
 * UTF-8 character boundary), "_" and 8 hex digits of a hash of the whole
 * name: 63 bytes at most, distinct, and the same on every run. Names the
 * model gives (tables, columns, declared indexes) are written as given;
 * two declared index names equal in their first 63 bytes are refused.
 *
 * Every identifier is quoted with aorm__quote_ident(). The one piece of
 * text written as is, is a column's server_default: an SQL expression
 * written by the model's author ("now()", "'{}'::jsonb"). It is part of
 * the program, like the SQL of a hand-written statement, and must never
 * be built from user input.
 *
 * Owns: the script text while it is built, and a running job's copy of the
 * statements and of the first error. Must not: call the job's callback
 * from inside aorm_ddl_*_all(); release its connection while the engine is
 * closing (the engine frees held connections itself then). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <xxhash.h>

#include "aorm/error.h"
#include "aorm/sql.h"
#include "mapping/mapping.h"
#include "mapping/mapping_int.h"

#define DDL_FLAGS (AORM_DDL_IF_NOT_EXISTS | AORM_DDL_IF_EXISTS | AORM_DDL_CASCADE)

/* =========================================================================
 * The script: text plus where each statement ends
 * ========================================================================= */

typedef struct script {
    aorm__buf b;
    int err;        /* sticky: first failure while writing */
    size_t *ends;   /* offset of each statement's terminating ';' */
    int n;
    int cap;
} script;

static void script_free(script *s) {
    aorm__buf_free(&s->b);
    free(s->ends);
    memset(s, 0, sizeof(*s));
}

static void put(script *s, const char *text) {
    if (!s->err && aorm__buf_append(&s->b, text, strlen(text)) < 0) s->err = AORM_ENOMEM;
}

/* Validated models have no empty names; one would be misuse, not a lack
 * of memory. */
static void put_ident(script *s, const char *ident) {
    if (s->err) return;
    if (!ident || !*ident) s->err = AORM_EMISUSE;
    else if (aorm__quote_ident(&s->b, ident) < 0) s->err = AORM_ENOMEM;
}

/* Bytes of a name PostgreSQL keeps (NAMEDATALEN - 1). */
#define PG_NAME_MAX 63

/* The length of the longest prefix of s (n bytes) that fits in max bytes
 * without splitting a UTF-8 character: what the server keeps of a long
 * name (pg_mbcliplen). */
static size_t clip_len(const char *s, size_t n, size_t max) {
    if (n <= max) return n;
    size_t k = max;
    /* s[k] is the first byte dropped: inside a character, back off to
     * that character's first byte */
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return k;
}

/* Shortens the generated name in `name` (NUL-terminated, in place) to the
 * form described at the top when it is longer than PG_NAME_MAX bytes. */
static void fit_name(char *name) {
    size_t n = strlen(name);
    if (n <= PG_NAME_MAX) return;
    uint32_t h = (uint32_t)XXH3_64bits(name, n);
    size_t keep = clip_len(name, n, PG_NAME_MAX - 9);
    snprintf(name + keep, 10, "_%08x", (unsigned)h);
}

/* A name made of the given parts (a NULL-terminated list), e.g.
 * ("books", "_", "author_id", "_fkey", NULL), quoted as one identifier. */
static void put_name(script *s, ...) {
    if (s->err) return;
    aorm__buf tmp = {0};
    va_list ap;
    va_start(ap, s);
    int rc = 0;
    for (const char *part; rc == 0 && (part = va_arg(ap, const char *));)
        rc = aorm__buf_append(&tmp, part, strlen(part));
    va_end(ap);
    if (rc == 0) rc = aorm__buf_putc(&tmp, '\0');
    if (rc < 0) {
        s->err = AORM_ENOMEM;
    } else {
        fit_name(tmp.data);
        put_ident(s, tmp.data);
    }
    aorm__buf_free(&tmp);
}

/* "schema"."table", or "table" for the search path. */
static void put_table(script *s, const aorm_model *m) {
    if (m->schema) {
        put_ident(s, m->schema);
        put(s, ".");
    }
    put_ident(s, m->table);
}

/* "c1", "c2" for fields f[0..n) of m. */
static void put_columns(script *s, const aorm_model *m, const size_t *f, int n) {
    for (int i = 0; i < n; i++) {
        if (i) put(s, ", ");
        put_ident(s, aorm_model_column_at(m, f[i])->name);
    }
}

/* <table>_<c1>_<c2>..<suffix> as an identifier (PostgreSQL's own naming
 * for constraints over columns c1, c2...). */
static void put_key_name(script *s, const aorm_model *m, const size_t *f, int n, const char *suffix) {
    if (s->err) return;
    aorm__buf tmp = {0};
    int rc = aorm__buf_append(&tmp, m->table, strlen(m->table));
    for (int i = 0; i < n && rc == 0; i++) {
        const char *c = aorm_model_column_at(m, f[i])->name;
        if ((rc = aorm__buf_putc(&tmp, '_')) == 0) rc = aorm__buf_append(&tmp, c, strlen(c));
    }
    if (rc == 0) rc = aorm__buf_append(&tmp, suffix, strlen(suffix));
    if (rc == 0) rc = aorm__buf_putc(&tmp, '\0');
    if (rc < 0) {
        s->err = AORM_ENOMEM;
    } else {
        fit_name(tmp.data);
        put_ident(s, tmp.data);
    }
    aorm__buf_free(&tmp);
}

/* Ends the current statement with ";\n". */
static void end_stmt(script *s) {
    if (s->err) return;
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 16;
        size_t *e = realloc(s->ends, (size_t)cap * sizeof(*e));
        if (!e) {
            s->err = AORM_ENOMEM;
            return;
        }
        s->ends = e;
        s->cap = cap;
    }
    s->ends[s->n++] = s->b.len;
    put(s, ";\n");
}

/* =========================================================================
 * Checks and dependency order
 * ========================================================================= */

__attribute__((format(printf, 3, 4))) static int fail(char *msg, size_t cap, const char *fmt, ...) {
    if (msg && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, cap, fmt, ap);
        va_end(ap);
    }
    return AORM_EMISUSE;
}

static bool same_table(const aorm_model *a, const aorm_model *b) {
    if (strcmp(a->table, b->table) != 0) return false;
    if (!a->schema || !b->schema) return !a->schema && !b->schema;
    return strcmp(a->schema, b->schema) == 0;
}

/* Index in models of the model m references through its k-th foreign
 * key, or -1 when the target is not in the list (it must exist already). */
static int fk_target_index(const aorm_model *const *models, int n, const aorm_model *m, int k) {
    for (int j = 0; j < n; j++)
        if (models[j] == m->foreign_keys[k].target) return j;
    return -1;
}

/* Does model i reference model j (j != i)? */
static bool depends(const aorm_model *const *models, int n, int i, int j) {
    const aorm_model *m = models[i];
    for (int k = 0; k < m->nforeign_keys; k++)
        if (i != j && fk_target_index(models, n, m, k) == j) return true;
    return false;
}

/* Writes "a" -> "b" -> ... -> "a" for a cycle among the models not yet
 * placed: every one of them references another one not yet placed
 * (otherwise it would have been placed), so following those references
 * from any of them must come back to a table already seen. */
static int report_cycle(const aorm_model *const *models, int n, const bool *placed, char *msg, size_t cap) {
    int *path = malloc((size_t)n * sizeof(*path));
    int *pos = malloc((size_t)n * sizeof(*pos));
    if (!path || !pos) {
        free(path);
        free(pos);
        return fail(msg, cap, "foreign keys form a cycle between tables");
    }
    for (int i = 0; i < n; i++) pos[i] = -1;
    int cur = 0;
    while (placed[cur]) cur++;
    int len = 0;
    while (pos[cur] < 0) {
        pos[cur] = len;
        path[len++] = cur;
        int next = -1;
        for (int j = 0; j < n && next < 0; j++)
            if (!placed[j] && depends(models, n, cur, j)) next = j;
        aorm__assert(next >= 0);
        cur = next;
    }
    aorm__buf b = {0};
    const char *lead = "foreign keys form a cycle between tables (break it with a nullable column "
                       "and no foreign key, or create one constraint by hand): ";
    int ok = aorm__buf_append(&b, lead, strlen(lead));
    for (int k = pos[cur]; k <= len && ok == 0; k++) {
        int i = k < len ? path[k] : cur;
        ok = aorm__quote_ident(&b, models[i]->table);
        if (ok == 0 && k < len) ok = aorm__buf_append(&b, " -> ", 4);
    }
    if (ok == 0) ok = aorm__buf_putc(&b, '\0');
    int rc = fail(msg, cap, "%s", ok == 0 ? b.data : "foreign keys form a cycle between tables");
    aorm__buf_free(&b);
    free(path);
    free(pos);
    return rc;
}

/* Validates the list and fills order[] (indexes into models) so that each
 * model comes after the models it references; among models free to go,
 * the one listed first goes first, so the output follows the caller's
 * order as far as the foreign keys allow. */
static int prepare(const aorm_model *const *models, int n, unsigned flags, int *order, char *msg, size_t cap) {
    if (msg && cap) msg[0] = '\0';
    if (n < 0 || (n > 0 && !models)) return fail(msg, cap, "no model list");
    if (flags & ~(unsigned)DDL_FLAGS) return fail(msg, cap, "unknown DDL flags 0x%x", flags & ~(unsigned)DDL_FLAGS);
    for (int i = 0; i < n; i++) {
        if (!models[i]) return fail(msg, cap, "model %d of the list is NULL", i + 1);
        int rc = aorm_model_validate(models[i], msg, cap);
        if (rc) return rc;
        for (int j = 0; j < i; j++)
            if (models[j] == models[i] || same_table(models[j], models[i]))
                return fail(msg, cap, "models %s and %s both map table %s", models[j]->name, models[i]->name,
                            models[i]->table);
        /* A referenced table outside the list must exist already, but its
         * name is written here: its model must be sound too (an empty
         * schema or table name would otherwise surface as a failure to
         * quote it). */
        for (int k = 0; k < models[i]->nforeign_keys; k++) {
            const aorm_model *t = models[i]->foreign_keys[k].target;
            if (t && fk_target_index(models, n, models[i], k) < 0 && (rc = aorm_model_validate(t, msg, cap)))
                return rc;
        }
    }
    bool *placed = calloc((size_t)n + 1, sizeof(*placed));
    if (!placed) return AORM_ENOMEM;
    for (int k = 0; k < n; k++) {
        int pick = -1;
        for (int i = 0; i < n && pick < 0; i++) {
            if (placed[i]) continue;
            bool ready = true;
            for (int j = 0; j < n && ready; j++)
                if (!placed[j] && depends(models, n, i, j)) ready = false;
            if (ready) pick = i;
        }
        if (pick < 0) {
            int rc = report_cycle(models, n, placed, msg, cap);
            free(placed);
            return rc;
        }
        placed[pick] = true;
        order[k] = pick;
    }
    free(placed);
    return 0;
}

/* =========================================================================
 * CREATE
 * ========================================================================= */

static const char *on_delete_sql(aorm_fk_action a) {
    switch (a) {
    case AORM_FK_NO_ACTION: return "NO ACTION";
    case AORM_FK_CASCADE: return "CASCADE";
    case AORM_FK_SET_NULL: return "SET NULL";
    case AORM_FK_RESTRICT: return "RESTRICT";
    }
    return "NO ACTION";
}

/* ---- enum types -------------------------------------------------------------
 * Every enum type a column of the listed models uses, once (the same
 * descriptor, or another one with the same schema and name), created
 * before the first table and dropped after the last. */

static void put_enum_name(script *s, const aorm_enum *e) {
    if (!e) {
        if (!s->err) s->err = AORM_EMISUSE;
        return;
    }
    if (e->schema) {
        put_ident(s, e->schema);
        put(s, ".");
    }
    put_ident(s, e->name);
}

static bool same_enum(const aorm_enum *a, const aorm_enum *b) {
    if (a == b) return true;
    bool sa = a->schema != NULL, sb = b->schema != NULL;
    return sa == sb && (!sa || strcmp(a->schema, b->schema) == 0) && strcmp(a->name, b->name) == 0;
}

/* The enum types of models[0..n), in the order their columns appear
 * (models in `order`); *out malloc'd (NULL when none). */
static int list_enums(const aorm_model *const *models, int n, const int *order, const aorm_enum ***out, int *count) {
    *out = NULL;
    *count = 0;
    int cap = 0;
    for (int k = 0; k < n; k++) {
        const aorm_model *m = models[order[k]];
        for (int i = 0; i < m->ncolumns; i++) {
            const aorm_enum *e = m->columns[i].type == AORM_ENUM ? m->columns[i].enum_type : NULL;
            if (!e || !e->name) continue;
            bool seen = false;
            for (int j = 0; j < *count && !seen; j++) seen = same_enum((*out)[j], e);
            if (seen) continue;
            if (*count == cap) {
                cap = cap ? cap * 2 : 4;
                const aorm_enum **g = realloc((void *)*out, (size_t)cap * sizeof(*g));
                if (!g) {
                    free((void *)*out);
                    *out = NULL;
                    return AORM_ENOMEM;
                }
                *out = g;
            }
            (*out)[(*count)++] = e;
        }
    }
    return 0;
}

static void put_literal(script *s, const char *text) {
    put(s, "'");
    for (const char *c = text; *c && !s->err; c++) {
        char one[3] = {*c, *c == '\'' ? '\'' : 0, 0};
        put(s, one);
    }
    put(s, "'");
}

/* CREATE TYPE name AS ENUM ('a', 'b'); with AORM_DDL_IF_NOT_EXISTS inside
 * a DO block that ignores duplicate_object (CREATE TYPE has no IF NOT
 * EXISTS). */
static void create_enum(script *s, const aorm_enum *e, unsigned flags) {
    bool guarded = (flags & AORM_DDL_IF_NOT_EXISTS) != 0;
    for (int i = 0; guarded && i < e->n && !s->err; i++)
        if (e->labels[i] && strstr(e->labels[i], "$aorm$")) s->err = AORM_EMISUSE;
    if (guarded) put(s, "DO $aorm$ BEGIN ");
    put(s, "CREATE TYPE ");
    put_enum_name(s, e);
    put(s, " AS ENUM (");
    for (int i = 0; i < e->n; i++) {
        if (i) put(s, ", ");
        if (!e->labels[i]) {
            if (!s->err) s->err = AORM_EMISUSE;
            break;
        }
        put_literal(s, e->labels[i]);
    }
    put(s, ")");
    if (guarded) put(s, "; EXCEPTION WHEN duplicate_object THEN NULL; END $aorm$");
    end_stmt(s);
}

static void create_table(script *s, const aorm_model *m, unsigned flags) {
    put(s, (flags & AORM_DDL_IF_NOT_EXISTS) ? "CREATE TABLE IF NOT EXISTS " : "CREATE TABLE ");
    put_table(s, m);
    put(s, " (");
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        put(s, i ? ",\n    " : "\n    ");
        put_ident(s, c->name);
        put(s, " ");
        if (c->type == AORM_ENUM) {
            put_enum_name(s, c->enum_type);
        } else {
            const char *t = aorm__type_sql(c->type, (c->flags & AORM_SERIAL) != 0);
            if (t) put(s, t);
            else if (!s->err) s->err = AORM_EMISUSE;
        }
        if (!(c->flags & AORM_NULLABLE)) put(s, " NOT NULL");
        if (c->flags & AORM_IDENTITY) put(s, " GENERATED BY DEFAULT AS IDENTITY");
        if (c->server_default) {
            /* the model author's SQL expression, as written (see the top) */
            put(s, " DEFAULT ");
            put(s, c->server_default);
        }
    }
    put(s, ",\n    CONSTRAINT ");
    put_name(s, m->table, "_pkey", NULL);
    put(s, " PRIMARY KEY (");
    for (int i = 0, k = 0; i < m->ncolumns; i++) {
        if (!(m->columns[i].flags & AORM_PK)) continue;
        if (k++) put(s, ", ");
        put_ident(s, m->columns[i].name);
    }
    put(s, ")");
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if (!(c->flags & AORM_UNIQUE)) continue;
        put(s, ",\n    CONSTRAINT ");
        put_name(s, m->table, "_", c->name, "_key", NULL);
        put(s, " UNIQUE (");
        put_ident(s, c->name);
        put(s, ")");
    }
    for (int k = 0; k < m->nforeign_keys; k++) {
        const aorm_foreign_key *fk = &m->foreign_keys[k];
        int n;
        const size_t *f = aorm__fk_fields(fk, &n);
        const size_t *tf = aorm__fk_target_fields(fk, &n);
        put(s, ",\n    CONSTRAINT ");
        put_key_name(s, m, f, n, "_fkey");
        put(s, " FOREIGN KEY (");
        put_columns(s, m, f, n);
        put(s, ") REFERENCES ");
        put_table(s, fk->target);
        put(s, " (");
        put_columns(s, fk->target, tf, n);
        put(s, ") ON DELETE ");
        put(s, on_delete_sql(fk->on_delete));
    }
    put(s, "\n)");
    end_stmt(s);
}

/* Index names of one script, to refuse two indexes with one name (the
 * second CREATE INDEX would fail, or be skipped by IF NOT EXISTS). */
typedef struct names {
    char **v;
    int n;
    int cap;
} names;

static void names_free(names *ns) {
    for (int i = 0; i < ns->n; i++) free(ns->v[i]);
    free(ns->v);
}

/* Adds "schema.name" (the namespace an index name lives in), with the
 * name as the server keeps it (its first 63 bytes). Returns 0, 1 when
 * already present, or AORM_ENOMEM. */
static int names_add(names *ns, const aorm_model *m, const char *name) {
    const char *schema = m->schema ? m->schema : "";
    size_t nl = clip_len(name, strlen(name), PG_NAME_MAX);
    size_t len = strlen(schema) + 1 + nl + 1;
    char *key = malloc(len);
    if (!key) return AORM_ENOMEM;
    snprintf(key, len, "%s.%.*s", schema, (int)nl, name);
    for (int i = 0; i < ns->n; i++) {
        if (strcmp(ns->v[i], key) == 0) {
            free(key);
            return 1;
        }
    }
    if (ns->n == ns->cap) {
        int cap = ns->cap ? ns->cap * 2 : 16;
        char **v = realloc(ns->v, (size_t)cap * sizeof(*v));
        if (!v) {
            free(key);
            return AORM_ENOMEM;
        }
        ns->v = v;
        ns->cap = cap;
    }
    ns->v[ns->n++] = key;
    return 0;
}

/* One CREATE INDEX over the columns at fields[0..nfields). The name is
 * `name` (generated: shortened as described at the top when too long),
 * or "<table>_<first column>_idx". */
static int create_index(script *s, names *ns, const aorm_model *m, unsigned flags, const char *name,
                        bool generated, const size_t *fields, int nfields, bool unique, char *msg, size_t cap) {
    const aorm_column *first = aorm_model_column_at(m, fields[0]);
    aorm__buf nb = {0};
    int rc = 0;
    if (name) rc = aorm__buf_append(&nb, name, strlen(name));
    else if ((rc = aorm__buf_append(&nb, m->table, strlen(m->table))) == 0 && (rc = aorm__buf_putc(&nb, '_')) == 0 &&
             (rc = aorm__buf_append(&nb, first->name, strlen(first->name))) == 0)
        rc = aorm__buf_append(&nb, "_idx", 4);
    if (rc == 0) rc = aorm__buf_putc(&nb, '\0');
    if (rc < 0) {
        aorm__buf_free(&nb);
        return AORM_ENOMEM;
    }
    if (generated || !name) fit_name(nb.data);
    rc = names_add(ns, m, nb.data);
    if (rc == 1)
        rc = fail(msg, cap,
                  "model %s: index name %s is used twice (give the aorm_index a name of its own; PostgreSQL "
                  "keeps the first 63 bytes of a name)",
                  m->name, nb.data);
    if (rc) {
        aorm__buf_free(&nb);
        return rc;
    }
    put(s, unique ? "CREATE UNIQUE INDEX " : "CREATE INDEX ");
    if (flags & AORM_DDL_IF_NOT_EXISTS) put(s, "IF NOT EXISTS ");
    put_ident(s, nb.data);
    aorm__buf_free(&nb);
    put(s, " ON ");
    put_table(s, m);
    put(s, " (");
    for (int k = 0; k < nfields; k++) {
        if (k) put(s, ", ");
        put_ident(s, aorm_model_column_at(m, fields[k])->name);
    }
    put(s, ")");
    end_stmt(s);
    return s->err;
}

static bool same_fields(const size_t *a, const size_t *b, int n);

/* Does an index the table will have anyway start with the fields f[0..n)
 * (in any order): the primary key, a UNIQUE constraint, a flagged or
 * declared index? Then a foreign key on them needs no index of its own. */
static bool leads_an_index(const aorm_model *m, const size_t *f, int n) {
    size_t lead[AORM_KEY_MAX];
    int npk = aorm_model_pk_count(m);
    if (npk >= n) {
        for (int i = 0; i < n; i++) lead[i] = aorm_model_pk(m, i)->offset;
        if (same_fields(lead, f, n)) return true;
    }
    if (n == 1) {
        const aorm_column *c = aorm_model_column_at(m, f[0]);
        if (c && (c->flags & (AORM_UNIQUE | AORM_INDEX))) return true;
    }
    for (int i = 0; i < m->nindexes; i++)
        if (m->indexes[i].nfields >= n && same_fields(m->indexes[i].fields, f, n)) return true;
    return false;
}

/* Flagged columns, declared indexes, then foreign keys no index covers
 * (a composite one gets one index over all its columns, named
 * "<table>_<c1>_<c2>_idx"). */
static int create_indexes(script *s, names *ns, const aorm_model *m, unsigned flags, char *msg, size_t cap) {
    int rc = 0;
    for (int i = 0; i < m->ncolumns && rc == 0; i++)
        if (m->columns[i].flags & AORM_INDEX)
            rc = create_index(s, ns, m, flags, NULL, true, &m->columns[i].offset, 1, false, msg, cap);
    for (int i = 0; i < m->nindexes && rc == 0; i++) {
        const aorm_index *ix = &m->indexes[i];
        rc = create_index(s, ns, m, flags, ix->name, false, ix->fields, ix->nfields, ix->unique, msg, cap);
    }
    for (int k = 0; k < m->nforeign_keys && rc == 0; k++) {
        int n;
        const size_t *f = aorm__fk_fields(&m->foreign_keys[k], &n);
        if (leads_an_index(m, f, n)) continue;
        if (n == 1) {
            rc = create_index(s, ns, m, flags, NULL, true, f, 1, false, msg, cap);
            continue;
        }
        aorm__buf name = {0};
        rc = aorm__buf_append(&name, m->table, strlen(m->table));
        for (int i = 0; i < n && rc == 0; i++) {
            const char *c = aorm_model_column_at(m, f[i])->name;
            if ((rc = aorm__buf_putc(&name, '_')) == 0) rc = aorm__buf_append(&name, c, strlen(c));
        }
        if (rc == 0) rc = aorm__buf_append(&name, "_idx", 5); /* with its NUL */
        rc = rc < 0 ? AORM_ENOMEM : create_index(s, ns, m, flags, name.data, true, f, n, false, msg, cap);
        aorm__buf_free(&name);
    }
    return rc;
}

/* Do a[0..n) and b[0..n) hold the same offsets, in any order? */
static bool same_fields(const size_t *a, const size_t *b, int n) {
    for (int i = 0; i < n; i++) {
        bool found = false;
        for (int j = 0; j < n && !found; j++) found = a[i] == b[j];
        if (!found) return false;
    }
    return true;
}

static int build_create(const aorm_model *const *models, int n, unsigned flags, script *s, char *msg,
                        size_t cap) {
    memset(s, 0, sizeof(*s));
    int *order = malloc(((size_t)n + 1) * sizeof(*order));
    if (!order) return AORM_ENOMEM;
    int rc = prepare(models, n, flags, order, msg, cap);
    const aorm_enum **enums = NULL;
    int nenums = 0;
    if (rc == 0) rc = list_enums(models, n, order, &enums, &nenums);
    for (int k = 0; k < nenums && rc == 0; k++) {
        create_enum(s, enums[k], flags);
        rc = s->err;
        if (rc == AORM_EMISUSE) fail(msg, cap, "enum type %s: a label is NULL or holds \"$aorm$\"", enums[k]->name);
    }
    free((void *)enums);
    for (int k = 0; k < n && rc == 0; k++) {
        create_table(s, models[order[k]], flags);
        rc = s->err;
    }
    names ns = {0};
    for (int k = 0; k < n && rc == 0; k++) rc = create_indexes(s, &ns, models[order[k]], flags, msg, cap);
    names_free(&ns);
    free(order);
    /* an empty list still yields a (empty) string */
    if (rc == 0 && aorm__buf_putc(&s->b, '\0') < 0) rc = AORM_ENOMEM;
    if (rc == 0) s->b.len--;
    if (rc) script_free(s);
    if (rc == AORM_ENOMEM) fail(msg, cap, "out of memory");
    if (rc == AORM_EMISUSE && msg && cap && !msg[0]) fail(msg, cap, "an empty identifier");
    return rc;
}

/* =========================================================================
 * DROP
 * ========================================================================= */

static int build_drop(const aorm_model *const *models, int n, unsigned flags, script *s, char *msg, size_t cap) {
    memset(s, 0, sizeof(*s));
    int *order = malloc(((size_t)n + 1) * sizeof(*order));
    if (!order) return AORM_ENOMEM;
    int rc = prepare(models, n, flags, order, msg, cap);
    for (int k = n - 1; k >= 0 && rc == 0; k--) {
        put(s, (flags & AORM_DDL_IF_EXISTS) ? "DROP TABLE IF EXISTS " : "DROP TABLE ");
        put_table(s, models[order[k]]);
        if (flags & AORM_DDL_CASCADE) put(s, " CASCADE");
        end_stmt(s);
        rc = s->err;
    }
    const aorm_enum **enums = NULL;
    int nenums = 0;
    if (rc == 0) rc = list_enums(models, n, order, &enums, &nenums);
    for (int k = nenums - 1; k >= 0 && rc == 0; k--) {
        put(s, (flags & AORM_DDL_IF_EXISTS) ? "DROP TYPE IF EXISTS " : "DROP TYPE ");
        put_enum_name(s, enums[k]);
        if (flags & AORM_DDL_CASCADE) put(s, " CASCADE");
        end_stmt(s);
        rc = s->err;
    }
    free((void *)enums);
    free(order);
    if (rc == 0 && aorm__buf_putc(&s->b, '\0') < 0) rc = AORM_ENOMEM;
    if (rc == 0) s->b.len--;
    if (rc) script_free(s);
    if (rc == AORM_ENOMEM) fail(msg, cap, "out of memory");
    return rc;
}

/* Hands the script's text to the caller. */
static int give_text(script *s, int rc, char **out) {
    if (rc) return rc;
    *out = s->b.data;
    s->b.data = NULL;
    script_free(s);
    return 0;
}

int aorm_ddl_create_sql(const aorm_model *const *models, int n, unsigned flags, char **out, char *errmsg,
                        size_t errcap) {
    if (!out) return fail(errmsg, errcap, "out is NULL");
    *out = NULL;
    script s;
    return give_text(&s, build_create(models, n, flags, &s, errmsg, errcap), out);
}

int aorm_ddl_drop_sql(const aorm_model *const *models, int n, unsigned flags, char **out, char *errmsg,
                      size_t errcap) {
    if (!out) return fail(errmsg, errcap, "out is NULL");
    *out = NULL;
    script s;
    return give_text(&s, build_drop(models, n, flags, &s, errmsg, errcap), out);
}

/* =========================================================================
 * Running a script: one transaction on a held connection
 *
 *   acquire -> BEGIN, statement 1..n, COMMIT  (queued together: one pipeline)
 *           -> every callback counts down; the last one (COMMIT's) decides:
 *              no error: release, then the caller's callback with COMMIT's
 *              result; an error: ROLLBACK, then release and the caller's
 *              callback with the first error.
 * Once a statement fails the server skips the rest of the pipeline (they
 * come back AORM_EABORTED), so the first error is the one that matters.
 * The connection is released before the caller's callback runs, so that the
 * callback may free the engine or start the next job on the same pool.
 * ========================================================================= */

typedef struct ddl_job {
    aorm_engine *e;
    aorm_conn *c;
    aorm_result_cb cb;
    void *user;
    char *sql;          /* the statements, each NUL-terminated */
    size_t *starts;     /* where each one starts in sql */
    int n;
    int outstanding;    /* queued operations not yet called back */
    bool began;         /* BEGIN was queued: a failure needs a ROLLBACK */
    bool failed;
    int code;           /* the first error's code */
    aorm_error *err;    /* ... and a copy of it (NULL if the copy failed) */
} ddl_job;

static void job_free(ddl_job *j) {
    free(j->sql);
    free(j->starts);
    aorm_error_free(j->err);
    free(j);
}

static void job_record(ddl_job *j, const aorm_error *err) {
    if (j->failed) return;
    j->failed = true;
    j->code = err->code;
    if (err->code == AORM_ESERVER && strcmp(err->sqlstate, "42501") == 0) {
        /* insufficient privilege: an application's role, which may read and
         * write rows but not change the schema; say what DDL needs */
        char msg[512];
        snprintf(msg, sizeof(msg),
                 "%s: DDL needs the role that owns the schema (or CREATE on it); run it with the "
                 "owner's conninfo, not the application's",
                 err->message);
        aorm_error owner = *err;
        owner.message = msg;
        j->err = aorm_error_copy(&owner);
        return;
    }
    j->err = aorm_error_copy(err);
}

static void job_record_code(ddl_job *j, int code) {
    aorm_error err = {.code = code, .message = aorm_strerror(code), .detail = "", .hint = "",
                      .constraint = "", .table = "", .column = ""};
    job_record(j, &err);
}

/* Calls the caller back with the recorded error and frees the job. */
static void job_fail(ddl_job *j) {
    aorm_error fallback = {.code = j->code, .message = aorm_strerror(j->code), .detail = "", .hint = "",
                           .constraint = "", .table = "", .column = ""};
    aorm_result_cb cb = j->cb;
    void *user = j->user;
    aorm_engine *e = j->e;
    aorm_error *err = j->err;
    j->err = NULL;
    job_free(j);
    cb(e, NULL, err ? err : &fallback, user);
    aorm_error_free(err);
}

static void on_rollback(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    ddl_job *j = user;
    /* ECANCELED: the engine is closing and frees its connections itself */
    if (!err || err->code != AORM_ECANCELED) aorm_conn_release(j->c);
    job_fail(j);
}

static void finish(ddl_job *j, aorm_result *res) {
    if (!j->failed) {
        aorm_result_cb cb = j->cb;
        void *user = j->user;
        aorm_engine *e = j->e;
        aorm_conn_release(j->c);
        job_free(j);
        cb(e, res, NULL, user);
        return;
    }
    int rc = j->began ? aorm_conn_rollback(j->c, on_rollback, j) : AORM_EMISUSE;
    if (rc == 0) return;
    /* AORM_ECLOSED: the engine is closing and frees its connections
     * itself; otherwise (a lost connection, or no BEGIN was ever queued)
     * releasing closes or returns it. */
    if (rc != AORM_ECLOSED) aorm_conn_release(j->c);
    job_fail(j);
}

static void on_step(aorm_engine *e, aorm_result *res, const aorm_error *err, void *user) {
    ddl_job *j = user;
    if (err) job_record(j, err);
    if (--j->outstanding > 0) return;
    finish(j, res);
}

static void on_acquired(aorm_engine *e, aorm_conn *c, const aorm_error *err, void *user) {
    ddl_job *j = user;
    if (err) {
        job_record(j, err);
        job_fail(j);
        return;
    }
    j->c = c;
    /* DDL runs once: keep it out of the prepared-statement cache */
    aorm_exec_options xo = {.flags = AORM_EXEC_UNPREPARED};
    int rc = aorm_conn_begin(c, NULL, on_step, j);
    if (rc == 0) {
        j->began = true;
        j->outstanding++;
    }
    for (int i = 0; i < j->n && rc == 0; i++) {
        rc = aorm_conn_execute(c, j->sql + j->starts[i], NULL, &xo, on_step, j);
        if (rc == 0) j->outstanding++;
    }
    if (rc == 0) rc = aorm_conn_commit(c, on_step, j);
    if (rc == 0) {
        j->outstanding++;
        return;
    }
    /* Nothing calls back inside the calls above, so the count is complete:
     * what was queued will still call back; the last one finishes. */
    job_record_code(j, rc);
    if (j->outstanding == 0) finish(j, NULL);
}

static int run(aorm_engine *e, script *s, aorm_result_cb cb, void *user) {
    ddl_job *j = calloc(1, sizeof(*j));
    if (!j) {
        script_free(s);
        return AORM_ENOMEM;
    }
    j->e = e;
    j->cb = cb;
    j->user = user;
    j->n = s->n;
    j->starts = malloc(((size_t)s->n + 1) * sizeof(*j->starts));
    if (!j->starts) {
        script_free(s);
        job_free(j);
        return AORM_ENOMEM;
    }
    /* Each statement's ';' becomes its terminator. */
    for (int i = 0; i < s->n; i++) {
        j->starts[i] = i ? s->ends[i - 1] + 2 : 0;
        s->b.data[s->ends[i]] = '\0';
    }
    j->sql = s->b.data;
    s->b.data = NULL;
    script_free(s);
    int rc = aorm_engine_acquire(e, on_acquired, j);
    if (rc) job_free(j);
    return rc;
}

int aorm_ddl_create_all(aorm_engine *e, const aorm_model *const *models, int n, unsigned flags,
                        aorm_result_cb cb, void *user) {
    if (!e || !cb) return AORM_EMISUSE;
    script s;
    int rc = build_create(models, n, flags, &s, NULL, 0);
    return rc ? rc : run(e, &s, cb, user);
}

int aorm_ddl_drop_all(aorm_engine *e, const aorm_model *const *models, int n, unsigned flags, aorm_result_cb cb,
                      void *user) {
    if (!e || !cb) return AORM_EMISUSE;
    script s;
    int rc = build_drop(models, n, flags, &s, NULL, 0);
    return rc ? rc : run(e, &s, cb, user);
}

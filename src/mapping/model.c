/* model.c -- model lookups, the declaration checker, and releasing the
 * strings of objects loaded with malloc.
 *
 * Models are `const` data written by the application's author; most
 * mistakes in them are caught by the declaration macros at compile time
 * (a field whose C type does not match its column type). What the
 * compiler cannot see -- relationships that do not match the foreign
 * keys, a foreign key to a column that is not a key, hand-built
 * declarations with wrong sizes -- is what aorm_model_validate() reports,
 * with the model, field and table it is about, so that a bad declaration
 * fails loudly at start-up instead of producing wrong SQL later.
 *
 * Owns nothing; every function here only reads the model. Lookups are
 * linear scans: models have tens of columns at most, and the callers
 * (statement compiler, session) cache what they need per statement. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "aorm/error.h"
#include "aorm/sql.h"
#include "mapping/mapping.h"
#include "mapping/mapping_int.h"

/* =========================================================================
 * Lookups
 * ========================================================================= */

const aorm_column *aorm_model_column_at(const aorm_model *m, size_t offset) {
    if (!m || !m->columns) return NULL;
    for (int i = 0; i < m->ncolumns; i++)
        if (m->columns[i].offset == offset) return &m->columns[i];
    return NULL;
}

const aorm_column *aorm_model_column(const aorm_model *m, const char *name) {
    if (!m || !m->columns || !name) return NULL;
    for (int i = 0; i < m->ncolumns; i++)
        if (m->columns[i].name && strcmp(m->columns[i].name, name) == 0) return &m->columns[i];
    return NULL;
}

const aorm_relationship *aorm_model_relationship(const aorm_model *m, const char *name) {
    if (!m || !m->relationships || !name) return NULL;
    for (int i = 0; i < m->nrelationships; i++)
        if (m->relationships[i].name && strcmp(m->relationships[i].name, name) == 0) return &m->relationships[i];
    return NULL;
}

const aorm_relationship *aorm_model_relationship_at(const aorm_model *m, size_t offset) {
    if (!m || !m->relationships) return NULL;
    for (int i = 0; i < m->nrelationships; i++)
        if (m->relationships[i].offset == offset) return &m->relationships[i];
    return NULL;
}

int aorm_model_pk_count(const aorm_model *m) {
    if (!m || !m->columns) return 0;
    int n = 0;
    for (int i = 0; i < m->ncolumns; i++)
        if (m->columns[i].flags & AORM_PK) n++;
    return n;
}

const aorm_column *aorm_model_pk(const aorm_model *m, int i) {
    if (!m || !m->columns || i < 0) return NULL;
    for (int k = 0; k < m->ncolumns; k++) {
        if (!(m->columns[k].flags & AORM_PK)) continue;
        if (i-- == 0) return &m->columns[k];
    }
    return NULL;
}

/* =========================================================================
 * Keys of foreign keys and relationships
 * ========================================================================= */

const size_t *aorm__fk_fields(const aorm_foreign_key *fk, int *n) {
    *n = fk->ncolumns > 0 ? fk->ncolumns : 1;
    return fk->ncolumns > 0 ? fk->offsets : &fk->offset;
}

const size_t *aorm__fk_target_fields(const aorm_foreign_key *fk, int *n) {
    *n = fk->ncolumns > 0 ? fk->ncolumns : 1;
    return fk->ncolumns > 0 ? fk->target_offsets : &fk->target_offset;
}

const size_t *aorm__rel_fields(const aorm_relationship *r, int which, int *n) {
    if (r->kind == AORM_MANY_TO_MANY) {
        if (which == 0) {
            *n = r->nlocal > 0 ? r->nlocal : 1;
            return r->nlocal > 0 ? r->secondary_locals : &r->secondary_local;
        }
        *n = r->nremote > 0 ? r->nremote : 1;
        return r->nremote > 0 ? r->secondary_remotes : &r->secondary_remote;
    }
    *n = r->nfk > 0 ? r->nfk : 1;
    return r->nfk > 0 ? r->fk_offsets : &r->fk_offset;
}

int aorm__rel_keymap(const aorm_model *owner, const aorm_relationship *r, int which, aorm__keymap *km) {
    const aorm_model *from, *to;
    switch (r->kind) {
    case AORM_MANY_TO_ONE: from = owner, to = r->target; break;
    case AORM_ONE_TO_MANY: from = r->target, to = owner; break;
    case AORM_MANY_TO_MANY:
        from = r->secondary;
        to = which == 0 ? owner : r->target;
        break;
    default: return AORM_EMISUSE;
    }
    int n;
    const size_t *f = aorm__rel_fields(r, which, &n);
    if (!from || !to || !f || n < 1 || n > AORM_KEY_MAX || n != aorm_model_pk_count(to)) return AORM_EMISUSE;
    km->n = n;
    for (int i = 0; i < n; i++) {
        km->from[i] = aorm_model_column_at(from, f[i]);
        km->to[i] = aorm_model_pk(to, i);
        if (!km->from[i] || !km->to[i]) return AORM_EMISUSE;
    }
    return 0;
}

void aorm_model_free_fields(const aorm_model *m, void *obj) {
    if (!m || !m->columns || !obj) return;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *col = &m->columns[i];
        void *f = aorm__field(col, obj);
        switch (col->type) {
        case AORM_NUMERIC:
        case AORM_TEXT:
        case AORM_JSON:
        case AORM_JSONB: {
            char *s;
            memcpy(&s, f, sizeof(s));
            free(s);
            s = NULL;
            memcpy(f, &s, sizeof(s));
            break;
        }
        case AORM_BYTEA: {
            aorm_bytes b;
            memcpy(&b, f, sizeof(b));
            free(b.data);
            b.data = NULL;
            b.len = 0;
            memcpy(f, &b, sizeof(b));
            break;
        }
        case AORM_BOOL:
        case AORM_INT2:
        case AORM_INT4:
        case AORM_INT8:
        case AORM_FLOAT4:
        case AORM_FLOAT8:
        case AORM_DATE:
        case AORM_TIMESTAMP:
        case AORM_TIMESTAMPTZ:
        case AORM_UUID:
        case AORM_INTERVAL:
        case AORM_INET:
        case AORM_CIDR:
        case AORM_ENUM: break;
        default: { /* arrays: elements and their strings are one block */
            aorm_array_int64 a; /* every aorm_array_* has this layout */
            memcpy(&a, f, sizeof(a));
            free(a.v);
            a.v = NULL;
            a.n = 0;
            memcpy(f, &a, sizeof(a));
            break;
        }
        }
    }
}

/* =========================================================================
 * Validation
 * ========================================================================= */

/* Where a validation message goes. */
typedef struct vmsg {
    char *buf;
    size_t cap;
} vmsg;

/* Writes the message and returns AORM_EMISUSE. Every message starts with
 * the model's name, so a list of models can be checked in a loop and the
 * message still says which one failed. */
__attribute__((format(printf, 2, 3))) static int fail(vmsg *v, const char *fmt, ...) {
    if (v->buf && v->cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->buf, v->cap, fmt, ap);
        va_end(ap);
    }
    return AORM_EMISUSE;
}

static const char *mname(const aorm_model *m) {
    if (!m) return "(null model)";
    return m->name && *m->name ? m->name : (m->table && *m->table ? m->table : "(unnamed model)");
}

static const char *rel_kind_name(aorm_rel_kind k) {
    switch (k) {
    case AORM_MANY_TO_ONE: return "many-to-one";
    case AORM_ONE_TO_MANY: return "one-to-many";
    case AORM_MANY_TO_MANY: return "many-to-many";
    }
    return "invalid";
}

/* A column that is unique on its own: the only PK column, a UNIQUE column,
 * or the one field of a unique declared index. Foreign keys may only
 * reference those (the server requires a unique constraint). */
static bool unique_alone(const aorm_model *m, const aorm_column *col) {
    if ((col->flags & AORM_PK) && aorm_model_pk_count(m) == 1) return true;
    if (col->flags & AORM_UNIQUE) return true;
    for (int i = 0; i < m->nindexes && m->indexes; i++) {
        const aorm_index *ix = &m->indexes[i];
        if (ix->unique && ix->nfields == 1 && ix->fields && ix->fields[0] == col->offset) return true;
    }
    return false;
}

/* The shape of the model itself: names, counts, sizes. */
static int check_shape(const aorm_model *m, vmsg *v) {
    if (!m->name || !*m->name) return fail(v, "model of table \"%s\": no struct name", m->table ? m->table : "");
    if (!m->table || !*m->table) return fail(v, "model %s: no table name", m->name);
    if (m->schema && !*m->schema) return fail(v, "model %s: empty schema name (use NULL for the search path)", m->name);
    if (m->size == 0) return fail(v, "model %s: struct size is 0", m->name);
    if (m->ncolumns < 1 || !m->columns) return fail(v, "model %s: no columns", m->name);
    if (m->nforeign_keys < 0 || (m->nforeign_keys > 0 && !m->foreign_keys))
        return fail(v, "model %s: bad foreign key list", m->name);
    if (m->nrelationships < 0 || (m->nrelationships > 0 && !m->relationships))
        return fail(v, "model %s: bad relationship list", m->name);
    if (m->nindexes < 0 || (m->nindexes > 0 && !m->indexes)) return fail(v, "model %s: bad index list", m->name);
    return 0;
}

static int check_columns(const aorm_model *m, vmsg *v) {
    const unsigned known = AORM_PK | AORM_NULLABLE | AORM_UNIQUE | AORM_SERIAL | AORM_IDENTITY | AORM_INDEX;
    int npk = 0;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if (!c->name || !*c->name) return fail(v, "model %s: column %d has no name", m->name, i + 1);
        if (!aorm__type_valid(c->type))
            return fail(v, "model %s: column %s has an invalid type (%d)", m->name, c->name, (int)c->type);
        if (c->flags & ~known)
            return fail(v, "model %s: column %s has unknown flags 0x%x", m->name, c->name, c->flags & ~known);
        if (c->type == AORM_ENUM) {
            const aorm_enum *e = c->enum_type;
            if (!e || !e->name || !*e->name || !e->labels || e->n < 1)
                return fail(v, "model %s: column %s is AORM_ENUM but has no enum_type (name, labels, n >= 1)",
                            m->name, c->name);
            for (int a = 0; a < e->n; a++) {
                if (!e->labels[a] || !*e->labels[a])
                    return fail(v, "model %s: column %s: enum %s has an empty label at %d", m->name, c->name,
                                e->name, a);
                for (int b = 0; b < a; b++) {
                    if (strcmp(e->labels[a], e->labels[b]) == 0)
                        return fail(v, "model %s: column %s: enum %s has label \"%s\" twice", m->name, c->name,
                                    e->name, e->labels[a]);
                    if (aorm__enum_value_of(e, a) == aorm__enum_value_of(e, b))
                        return fail(v, "model %s: column %s: enum %s maps two labels to C value %d", m->name,
                                    c->name, e->name, aorm__enum_value_of(e, a));
                }
            }
        } else if (c->enum_type) {
            return fail(v, "model %s: column %s has an enum_type but is %s, not AORM_ENUM", m->name, c->name,
                        aorm__type_name(c->type));
        }
        if (aorm__type_elem(c->type) && (c->flags & (AORM_PK | AORM_SERIAL | AORM_IDENTITY)))
            return fail(v, "model %s: column %s is an array (%s): it cannot be part of the primary key", m->name,
                        c->name, aorm__type_name(c->type));
        bool nullable = (c->flags & AORM_NULLABLE) != 0;
        size_t want = aorm__type_csize(c->type, nullable);
        if (c->size != want)
            return fail(v,
                        "model %s: column %s is %s%s, whose field is %zu bytes, but the field is %zu bytes "
                        "(declare it with AORM_COLUMN)",
                        m->name, c->name, aorm__type_name(c->type), nullable ? " NULLABLE" : "", want, c->size);
        if (c->offset > m->size || c->size > m->size - c->offset)
            return fail(v, "model %s: column %s lies outside the struct (offset %zu, size %zu, struct %zu)",
                        m->name, c->name, c->offset, c->size, m->size);
        for (int j = 0; j < i; j++) {
            const aorm_column *o = &m->columns[j];
            if (strcmp(o->name, c->name) == 0)
                return fail(v, "model %s: column name %s is declared twice", m->name, c->name);
            if (c->offset < o->offset + o->size && o->offset < c->offset + c->size)
                return fail(v, "model %s: columns %s and %s overlap in the struct", m->name, o->name, c->name);
        }
        bool generated = (c->flags & (AORM_SERIAL | AORM_IDENTITY)) != 0;
        if ((c->flags & AORM_SERIAL) && (c->flags & AORM_IDENTITY))
            return fail(v, "model %s: column %s is both SERIAL and IDENTITY", m->name, c->name);
        if (generated && !aorm__type_is_integer(c->type))
            return fail(v, "model %s: column %s is %s; only AORM_INT2/INT4/INT8 can be SERIAL or IDENTITY",
                        m->name, c->name, aorm__type_name(c->type));
        if (generated && nullable)
            return fail(v, "model %s: column %s cannot be both NULLABLE and SERIAL/IDENTITY", m->name, c->name);
        if (generated && c->server_default)
            return fail(v, "model %s: column %s has a server_default and is SERIAL/IDENTITY", m->name, c->name);
        if (c->server_default && !*c->server_default)
            return fail(v, "model %s: column %s has an empty server_default (use NULL for none)", m->name, c->name);
        if (c->flags & AORM_PK) {
            npk++;
            if (nullable) return fail(v, "model %s: primary-key column %s cannot be NULLABLE", m->name, c->name);
        }
    }
    if (npk == 0) return fail(v, "model %s: no primary-key column (flag one or more columns AORM_PK)", m->name);
    return 0;
}

static bool fk_types_compatible(aorm_type a, aorm_type b) {
    return a == b || (aorm__type_is_integer(a) && aorm__type_is_integer(b));
}

/* Do fields a[0..n) and b[0..n) hold the same set of offsets? */
static bool same_field_set(const size_t *a, const size_t *b, int n) {
    for (int i = 0; i < n; i++) {
        bool found = false;
        for (int j = 0; j < n && !found; j++) found = a[i] == b[j];
        if (!found) return false;
    }
    return true;
}

/* Are fields f[0..n) of m unique together: exactly the primary key, or
 * exactly the fields of a unique index (or one UNIQUE column)? Foreign
 * keys may only reference those (the server requires a unique constraint). */
static bool unique_together(const aorm_model *m, const size_t *f, int n) {
    if (n == 1) {
        const aorm_column *c = aorm_model_column_at(m, f[0]);
        return c && unique_alone(m, c);
    }
    if (aorm_model_pk_count(m) == n) {
        bool all_pk = true;
        for (int i = 0; i < n && all_pk; i++) {
            const aorm_column *c = aorm_model_column_at(m, f[i]);
            all_pk = c && (c->flags & AORM_PK);
        }
        if (all_pk) return true;
    }
    for (int i = 0; i < m->nindexes && m->indexes; i++) {
        const aorm_index *ix = &m->indexes[i];
        if (ix->unique && ix->nfields == n && ix->fields && same_field_set(ix->fields, f, n)) return true;
    }
    return false;
}

static const char *fields_text(const aorm_model *m, const size_t *f, int n, char *buf, size_t cap);

static int check_foreign_keys(const aorm_model *m, vmsg *v) {
    for (int i = 0; i < m->nforeign_keys; i++) {
        const aorm_foreign_key *fk = &m->foreign_keys[i];
        int n, tn;
        const size_t *f = aorm__fk_fields(fk, &n);
        const size_t *tf = aorm__fk_target_fields(fk, &tn);
        if (fk->ncolumns < 0 || fk->ncolumns > AORM_KEY_MAX || (fk->ncolumns > 0 && (!f || !tf)))
            return fail(v, "model %s: foreign key %d has %d columns (1 to %d)", m->name, i + 1, fk->ncolumns,
                        AORM_KEY_MAX);
        const aorm_column *c0 = aorm_model_column_at(m, f[0]);
        if (!fk->target)
            return fail(v, "model %s: foreign key on %s has no target model", m->name, c0 ? c0->name : "?");
        bool all_nullable = true;
        for (int k = 0; k < n; k++) {
            const aorm_column *c = aorm_model_column_at(m, f[k]);
            if (!c)
                return fail(v, "model %s: foreign key %d: its field (offset %zu) is not a declared column", m->name,
                            i + 1, f[k]);
            const aorm_column *t = aorm_model_column_at(fk->target, tf[k]);
            if (!t)
                return fail(v, "model %s: foreign key %s references a field of %s (offset %zu) that is not a column",
                            m->name, c->name, mname(fk->target), tf[k]);
            if (!fk_types_compatible(c->type, t->type))
                return fail(v, "model %s: foreign key %s is %s but references %s.%s, which is %s", m->name, c->name,
                            aorm__type_name(c->type), mname(fk->target), t->name, aorm__type_name(t->type));
            for (int j = 0; j < k; j++)
                if (f[j] == f[k] || tf[j] == tf[k])
                    return fail(v, "model %s: foreign key on %s lists a column twice", m->name, c0->name);
            if (!(c->flags & AORM_NULLABLE)) all_nullable = false;
        }
        char what[200], ref[200];
        const char *fname = n == 1 ? c0->name : fields_text(m, f, n, what, sizeof(what));
        if (!unique_together(fk->target, tf, n))
            return fail(v, "model %s: foreign key %s references %s, which %s neither the primary key nor UNIQUE",
                        m->name, fname, fields_text(fk->target, tf, n, ref, sizeof(ref)), n > 1 ? "are" : "is");
        if ((unsigned)fk->on_delete > (unsigned)AORM_FK_RESTRICT)
            return fail(v, "model %s: foreign key %s has an invalid on_delete action", m->name, fname);
        if (fk->on_delete == AORM_FK_SET_NULL && !all_nullable)
            return fail(v, "model %s: foreign key %s is ON DELETE SET NULL but the column%s not NULLABLE", m->name,
                        fname, n > 1 ? "s are" : " is");
        for (int j = 0; j < i; j++) {
            int on;
            const size_t *of = aorm__fk_fields(&m->foreign_keys[j], &on);
            if (on == n && same_field_set(of, f, n))
                return fail(v, "model %s: %s %s has two foreign keys", m->name, n > 1 ? "columns" : "column", fname);
        }
    }
    return 0;
}

/* The foreign key of `from` whose fields f[0..n) reference the primary
 * key of `to`, f[i] its i-th column, or NULL when there is none. */
static const aorm_foreign_key *fk_to_pk(const aorm_model *from, const size_t *f, int n, const aorm_model *to) {
    if (aorm_model_pk_count(to) != n) return NULL;
    for (int i = 0; i < from->nforeign_keys && from->foreign_keys; i++) {
        const aorm_foreign_key *fk = &from->foreign_keys[i];
        int fn, tn;
        const size_t *ff = aorm__fk_fields(fk, &fn);
        const size_t *tf = aorm__fk_target_fields(fk, &tn);
        if (fk->target != to || fn != n) continue;
        bool match = true;
        for (int k = 0; k < n && match; k++) {
            const aorm_column *pk = aorm_model_pk(to, k);
            bool pair = false;
            for (int j = 0; j < fn && !pair; j++) pair = ff[j] == f[k] && tf[j] == pk->offset;
            match = pair;
        }
        if (match) return fk;
    }
    return NULL;
}

/* Name of the column of m at offset, for messages. */
static const char *cname(const aorm_model *m, size_t offset) {
    const aorm_column *c = aorm_model_column_at(m, offset);
    return c ? c->name : "(not a column)";
}

/* "m.a" for one field of m, "m.(a, b)" for several, for messages. */
static const char *fields_text(const aorm_model *m, const size_t *f, int n, char *buf, size_t cap) {
    int w = snprintf(buf, cap, "%s.%s", mname(m), n > 1 ? "(" : "");
    for (int i = 0; i < n && w >= 0 && (size_t)w < cap; i++)
        w += snprintf(buf + w, cap - (size_t)w, "%s%s", i ? ", " : "", cname(m, f[i]));
    if (n > 1 && w >= 0 && (size_t)w < cap) snprintf(buf + w, cap - (size_t)w, ")");
    return buf;
}

/* m's primary key the same way. */
static const char *pk_text(const aorm_model *m, char *buf, size_t cap) {
    size_t f[AORM_KEY_MAX];
    int n = aorm_model_pk_count(m);
    if (n > AORM_KEY_MAX) n = AORM_KEY_MAX;
    for (int i = 0; i < n; i++) f[i] = aorm_model_pk(m, i)->offset;
    return fields_text(m, f, n, buf, cap);
}

/* Fields f[0..n) of `from` must be columns and reference `to`'s primary
 * key through a declared foreign key; `what` names them in messages. */
static int check_key_fields(const aorm_model *m, const aorm_relationship *r, const aorm_model *from, const size_t *f,
                            int n, const aorm_model *to, vmsg *v) {
    char a[200], b[200], kind[120];
    if (!f || n < 1 || n > AORM_KEY_MAX)
        return fail(v, "model %s: relationship %s: its key has %d fields (1 to %d)", m->name, r->name, n,
                    AORM_KEY_MAX);
    if (r->kind == AORM_MANY_TO_MANY) snprintf(kind, sizeof(kind), "many-to-many through %s", mname(from));
    else snprintf(kind, sizeof(kind), "%s to %s", rel_kind_name(r->kind), mname(r->target));
    for (int i = 0; i < n; i++)
        if (!aorm_model_column_at(from, f[i]))
            return fail(v, "model %s: relationship %s (%s): its foreign-key field is not a column of %s", m->name,
                        r->name, kind, mname(from));
    int npk = aorm_model_pk_count(to);
    if (npk != n)
        return fail(v,
                    "model %s: relationship %s (%s): %s has a %d-column primary key %s but the relationship names "
                    "%d foreign-key field%s, %s%s",
                    m->name, r->name, kind, mname(to), npk, pk_text(to, b, sizeof(b)), n, n == 1 ? "" : "s",
                    fields_text(from, f, n, a, sizeof(a)),
                    npk > 1 && n == 1 ? " (declare it with the _COMPOSITE relationship macro)" : "");
    if (!fk_to_pk(from, f, n, to))
        return fail(v, "model %s: relationship %s (%s) needs a foreign key from %s to %s", m->name, r->name, kind,
                    fields_text(from, f, n, a, sizeof(a)), pk_text(to, b, sizeof(b)));
    return 0;
}

static int check_relationship_keys(const aorm_model *m, const aorm_relationship *r, vmsg *v) {
    const aorm_model *t = r->target;
    int n;
    const size_t *f;
    if ((r->kind == AORM_MANY_TO_MANY && (r->nfk != 0 || r->fk_offsets)) ||
        (r->kind != AORM_MANY_TO_MANY && (r->nlocal != 0 || r->nremote != 0)) || r->nfk < 0 || r->nlocal < 0 ||
        r->nremote < 0)
        return fail(v, "model %s: relationship %s: key fields of another kind of relationship", m->name, r->name);
    switch (r->kind) {
    case AORM_MANY_TO_ONE:
        f = aorm__rel_fields(r, 0, &n);
        return check_key_fields(m, r, m, f, n, t, v);
    case AORM_ONE_TO_MANY:
        f = aorm__rel_fields(r, 0, &n);
        return check_key_fields(m, r, t, f, n, m, v);
    case AORM_MANY_TO_MANY: {
        const aorm_model *a = r->secondary;
        if (!a) return fail(v, "model %s: relationship %s (many-to-many to %s) has no secondary model", m->name,
                            r->name, mname(t));
        int nl, nr;
        const size_t *fl = aorm__rel_fields(r, 0, &nl), *fr = aorm__rel_fields(r, 1, &nr);
        for (int i = 0; i < nl && fl && fr; i++)
            for (int j = 0; j < nr; j++)
                if (fl[i] == fr[j])
                    return fail(v, "model %s: relationship %s: secondary fields are the same column %s.%s", m->name,
                                r->name, mname(a), cname(a, fl[i]));
        int rc = check_key_fields(m, r, a, fl, nl, m, v);
        return rc ? rc : check_key_fields(m, r, a, fr, nr, t, v);
    }
    }
    return fail(v, "model %s: relationship %s has an invalid kind (%d)", m->name, r->name, (int)r->kind);
}

/* Do two relationships name the same key fields (which = 0/1: local or
 * remote list of a many-to-many)? */
static bool same_rel_fields(const aorm_relationship *a, int wa, const aorm_relationship *b, int wb) {
    int na, nb;
    const size_t *fa = aorm__rel_fields(a, wa, &na), *fb = aorm__rel_fields(b, wb, &nb);
    if (na != nb || !fa || !fb) return false;
    for (int i = 0; i < na; i++)
        if (fa[i] != fb[i]) return false;
    return true;
}

static int check_back_populates(const aorm_model *m, const aorm_relationship *r, vmsg *v) {
    const aorm_model *t = r->target;
    const aorm_relationship *inv = aorm_model_relationship(t, r->back_populates);
    if (!inv)
        return fail(v, "model %s: relationship %s: back_populates \"%s\" is not a relationship of %s", m->name,
                    r->name, r->back_populates, mname(t));
    if (inv->target != m)
        return fail(v, "model %s: relationship %s: back_populates %s.%s targets %s, not %s", m->name, r->name,
                    mname(t), inv->name, mname(inv->target), m->name);
    bool inverse_kind = (r->kind == AORM_MANY_TO_ONE && inv->kind == AORM_ONE_TO_MANY) ||
                        (r->kind == AORM_ONE_TO_MANY && inv->kind == AORM_MANY_TO_ONE) ||
                        (r->kind == AORM_MANY_TO_MANY && inv->kind == AORM_MANY_TO_MANY);
    if (!inverse_kind)
        return fail(v, "model %s: relationship %s is %s but back_populates %s.%s is %s", m->name, r->name,
                    rel_kind_name(r->kind), mname(t), inv->name, rel_kind_name(inv->kind));
    bool same_keys = r->kind == AORM_MANY_TO_MANY
                         ? inv->secondary == r->secondary && same_rel_fields(inv, 0, r, 1) && same_rel_fields(inv, 1, r, 0)
                         : same_rel_fields(inv, 0, r, 0);
    if (!same_keys)
        return fail(v, "model %s: relationship %s and its back_populates %s.%s use different foreign keys",
                    m->name, r->name, mname(t), inv->name);
    if (inv->back_populates && strcmp(inv->back_populates, r->name) != 0)
        return fail(v, "model %s: relationship %s: back_populates %s.%s points back to \"%s\", not to %s", m->name,
                    r->name, mname(t), inv->name, inv->back_populates, r->name);
    return 0;
}

static int check_relationships(const aorm_model *m, vmsg *v) {
    const unsigned known = AORM_CASCADE_SAVE_UPDATE | AORM_CASCADE_DELETE | AORM_CASCADE_DELETE_ORPHAN |
                           AORM_CASCADE_NONE;
    for (int i = 0; i < m->nrelationships; i++) {
        const aorm_relationship *r = &m->relationships[i];
        if (!r->name || !*r->name) return fail(v, "model %s: relationship %d has no name", m->name, i + 1);
        if (r->kind != AORM_MANY_TO_ONE && r->kind != AORM_ONE_TO_MANY && r->kind != AORM_MANY_TO_MANY)
            return fail(v, "model %s: relationship %s has an invalid kind (%d)", m->name, r->name, (int)r->kind);
        if (!r->target) return fail(v, "model %s: relationship %s has no target model", m->name, r->name);
        size_t fsize = r->kind == AORM_MANY_TO_ONE ? sizeof(void *) : sizeof(aorm_list);
        if (r->offset > m->size || fsize > m->size - r->offset)
            return fail(v, "model %s: relationship %s lies outside the struct", m->name, r->name);
        if (aorm_model_column(m, r->name))
            return fail(v, "model %s: %s is both a column and a relationship", m->name, r->name);
        for (int c = 0; c < m->ncolumns; c++) {
            const aorm_column *col = &m->columns[c];
            if (r->offset < col->offset + col->size && col->offset < r->offset + fsize)
                return fail(v, "model %s: relationship %s overlaps column %s in the struct", m->name, r->name,
                            col->name);
        }
        for (int j = 0; j < i; j++) {
            if (strcmp(m->relationships[j].name, r->name) == 0)
                return fail(v, "model %s: relationship %s is declared twice", m->name, r->name);
            if (m->relationships[j].offset == r->offset)
                return fail(v, "model %s: relationships %s and %s share a field", m->name, m->relationships[j].name,
                            r->name);
        }
        int rc = check_relationship_keys(m, r, v);
        if (rc) return rc;
        if (r->back_populates && (rc = check_back_populates(m, r, v))) return rc;
        if (r->has_order_by) {
            if (r->kind == AORM_MANY_TO_ONE)
                return fail(v, "model %s: relationship %s is many-to-one: order_by only applies to collections",
                            m->name, r->name);
            if (!aorm_model_column_at(r->target, r->order_by))
                return fail(v, "model %s: relationship %s: order_by is not a column of %s", m->name, r->name,
                            mname(r->target));
        }
        if (r->cascade & ~known)
            return fail(v, "model %s: relationship %s has unknown cascade flags 0x%x", m->name, r->name,
                        r->cascade & ~known);
        if ((r->cascade & AORM_CASCADE_NONE) && (r->cascade & ~(unsigned)AORM_CASCADE_NONE))
            return fail(v, "model %s: relationship %s: AORM_CASCADE_NONE combined with other cascades", m->name,
                        r->name);
        if ((unsigned)r->lazy > (unsigned)AORM_LOAD_JOINED)
            return fail(v, "model %s: relationship %s has an invalid default loader", m->name, r->name);
    }
    return 0;
}

static int check_indexes(const aorm_model *m, vmsg *v) {
    for (int i = 0; i < m->nindexes; i++) {
        const aorm_index *ix = &m->indexes[i];
        const char *label = ix->name ? ix->name : "(unnamed)";
        if (ix->name && !*ix->name) return fail(v, "model %s: index %d has an empty name", m->name, i + 1);
        if (ix->nfields < 1 || !ix->fields) return fail(v, "model %s: index %s has no fields", m->name, label);
        for (int k = 0; k < ix->nfields; k++) {
            if (!aorm_model_column_at(m, ix->fields[k]))
                return fail(v, "model %s: index %s: field %d is not a column", m->name, label, k + 1);
            for (int j = 0; j < k; j++)
                if (ix->fields[j] == ix->fields[k])
                    return fail(v, "model %s: index %s lists column %s twice", m->name, label,
                                cname(m, ix->fields[k]));
        }
        for (int j = 0; j < i && ix->name; j++)
            if (m->indexes[j].name && strcmp(m->indexes[j].name, ix->name) == 0)
                return fail(v, "model %s: index name %s is declared twice", m->name, ix->name);
    }
    return 0;
}

int aorm_model_validate(const aorm_model *m, char *msg, size_t cap) {
    vmsg v = {msg, cap};
    if (msg && cap) msg[0] = '\0';
    if (!m) return fail(&v, "model is NULL");
    int rc;
    if ((rc = check_shape(m, &v)) || (rc = check_columns(m, &v)) || (rc = check_foreign_keys(m, &v)) ||
        (rc = check_relationships(m, &v)) || (rc = check_indexes(m, &v)))
        return rc;
    return 0;
}

/* fuzz_compile.c -- the Core compiler (src/sql: stmt.c, expr.c, compile.c,
 * raw.c as subqueries), driven by a small bytecode interpreter.
 *
 * The input is a program. Its first bytes declare three models whose
 * table, schema and column names are arbitrary bytes (quotes, spaces,
 * keywords, empty strings, invalid UTF-8; or, in "utf8" mode, the same
 * bytes mapped to valid UTF-8), with column types and flags picked by the
 * input, and a many-to-one / one-to-many relationship pair between the
 * first two. Then it builds one statement: SELECT, INSERT, UPDATE, DELETE
 * or raw text, and applies a list of builder calls (where, joins, order,
 * group, having, limit, locks, select lists, sets, RETURNING, ON
 * CONFLICT, object rows, binds) whose expression arguments are trees the
 * input picks node by node: columns of any model (in the statement or
 * not), values of every type (out of range, NUL bytes, malformed
 * numerics), arrays, operators (valid or not), AND/OR lists, NOT/IS
 * NULL, BETWEEN, ANY, IN/EXISTS subqueries (built the same way, raw text
 * included), aggregates, labels, EXCLUDED, tuple IN, chains deeper
 * than the copy accepts, and the reporting constructs: columns through
 * aliases, aorm_ref names, function calls (SQL's own, window functions,
 * named ones, valid or not), OVER with partition / order lists and
 * frames, CASE, CAST, scalar subqueries, ANY / ALL, the helper nodes out
 * of place; FROM items (aliases, subqueries, LATERAL, CTEs), WITH,
 * DISTINCT ON, set operations, INSERT ... SELECT, ON CONFLICT ON
 * CONSTRAINT and aorm_insert_use_default.
 *
 * Invariants, for every program:
 *   - no crash, leak or undefined behaviour (ASan, UBSan, LeakSanitizer);
 *   - a failure is sticky and one of AORM_EMISUSE / AORM_ERANGE /
 *     AORM_EENCODING with a message, never AORM_ENOMEM (nothing runs out
 *     of memory here), and compile then returns it with no text;
 *   - on success, the text lexes into SQL keywords, punctuation, $n and
 *     quoted identifiers only: no user string appears unquoted, and no
 *     string literal appears at all (values are parameters); every quoted
 *     identifier is one the program declared (table, schema, column,
 *     label) or one derived from them ("<table>_<column>" labels);
 *   - the placeholders are exactly $1..$N, first appearing in order, and
 *     N is the number of parameters; every parameter is well-formed;
 *   - the text is valid UTF-8 when every identifier was;
 *   - building the same program again gives byte-identical text and
 *     parameters (no dependence on addresses or uninitialised memory). */
#include <inttypes.h>

#include "fuzz.h"
#include "aorm/aorm.h"
#include "mapping/mapping.h"
#include "mapping/mapping_int.h"

/* ==========================================================================
 * Per-run memory: every node, string and array the program makes
 * ========================================================================== */

typedef struct pool {
    void **v;
    size_t n, cap;
} pool;

static pool P;

static void *pool_alloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    FUZZ_CHECK(p, "out of memory");
    if (P.n == P.cap) {
        P.cap = P.cap ? P.cap * 2 : 256;
        P.v = realloc(P.v, P.cap * sizeof(*P.v));
        FUZZ_CHECK(P.v, "out of memory");
    }
    P.v[P.n++] = p;
    return p;
}

static void pool_free(void) {
    for (size_t i = 0; i < P.n; i++) free(P.v[i]);
    free(P.v);
    memset(&P, 0, sizeof(P));
}

/* ==========================================================================
 * Identifiers
 * ========================================================================== */

typedef struct names {
    const char *v[256];
    int n;
} names;

static names N;       /* every identifier the program declared */
static bool all_utf8; /* ...and whether all of them are valid UTF-8 */
static bool utf8_mode;

static bool valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

/* An identifier of up to 40 input bytes (no NUL: a C string). In UTF-8
 * mode every byte >= 0x80 becomes the two-byte sequence of U+0080..U+00FF. */
static const char *ident(fuzz_in *in) {
    size_t n = fuzz_u8(in) % 41;
    char *s = pool_alloc(2 * n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = fuzz_u8(in);
        if (!b) b = '"';
        if (utf8_mode && b >= 0x80) {
            s[o++] = (char)(0xC0 | (b >> 6));
            s[o++] = (char)(0x80 | (b & 0x3F));
        } else {
            s[o++] = (char)b;
        }
    }
    s[o] = '\0';
    if (!valid_utf8((const unsigned char *)s, o)) all_utf8 = false;
    if (N.n < (int)(sizeof(N.v) / sizeof(N.v[0]))) N.v[N.n++] = s;
    return s;
}

/* ==========================================================================
 * Models: three of them, eight 32-byte field slots each
 * ========================================================================== */

#define SLOT 32
#define MAXCOLS 8
#define OBJ_SIZE (SLOT * MAXCOLS)

typedef struct fz_model {
    aorm_model m;
    aorm_column cols[MAXCOLS];
    aorm_relationship rels[1];
    aorm_foreign_key fks[1];
} fz_model;

static fz_model M[3];

static void make_model(int i, fuzz_in *in) {
    fz_model *fm = &M[i];
    memset(fm, 0, sizeof(*fm));
    uint8_t shape = fuzz_u8(in);
    fm->m.name = i == 0 ? "m0" : i == 1 ? "m1" : "m2";
    fm->m.table = ident(in);
    fm->m.schema = (shape & 1) ? ident(in) : NULL;
    fm->m.size = OBJ_SIZE;
    int nc = 1 + (shape >> 1) % MAXCOLS;
    for (int k = 0; k < nc; k++) {
        aorm_column *c = &fm->cols[k];
        uint8_t t = fuzz_u8(in), f = fuzz_u8(in);
        c->name = ident(in);
        c->offset = (size_t)k * SLOT;
        c->type = (aorm_type)(1 + t % 15);
        c->flags = f & (AORM_NULLABLE | AORM_UNIQUE | AORM_INDEX);
        if (k == 0) c->flags = AORM_PK;
        if (k == 0 && (f & 0x40) && aorm__type_is_integer(c->type)) c->flags |= AORM_SERIAL;
        if ((f & 0x80) && k > 0) c->server_default = "0";
        c->size = aorm__type_csize(c->type, (c->flags & AORM_NULLABLE) != 0);
    }
    fm->m.columns = fm->cols;
    fm->m.ncolumns = nc;
}

/* m0.fk (its column 1 when it has one) -> m1's key, and the inverse. */
static void relate(void) {
    if (M[0].m.ncolumns < 2) return;
    fz_model *a = &M[0], *b = &M[1];
    a->fks[0] = (aorm_foreign_key){.offset = a->cols[1].offset, .target = &b->m, .target_offset = 0};
    a->m.foreign_keys = a->fks;
    a->m.nforeign_keys = 1;
    a->rels[0] = (aorm_relationship){.name = "parent", .kind = AORM_MANY_TO_ONE, .offset = OBJ_SIZE - 8,
                                     .target = &b->m, .fk_offset = a->cols[1].offset};
    a->m.relationships = a->rels;
    a->m.nrelationships = 1;
    b->rels[0] = (aorm_relationship){.name = "children", .kind = AORM_ONE_TO_MANY, .offset = OBJ_SIZE - 8,
                                     .target = &a->m, .fk_offset = a->cols[1].offset};
    b->m.relationships = b->rels;
    b->m.nrelationships = 1;
}

static const aorm_model *pick_model(fuzz_in *in) { return &M[fuzz_u8(in) % 3].m; }

/* ==========================================================================
 * Expressions
 * ========================================================================== */

typedef struct budget {
    int nodes; /* nodes left for this run */
    int subs;  /* subqueries left */
} budget;

static budget B;

static aorm_expr *node(aorm_expr_kind k) {
    aorm_expr *e = pool_alloc(sizeof(*e));
    e->kind = k;
    return e;
}

static const aorm_model *current; /* the model of the statement being built */

static aorm_expr *column_expr(fuzz_in *in) {
    uint8_t w = fuzz_u8(in);
    /* mostly the statement's own model, so that what is legal gets built too */
    const fz_model *fm = &M[w % 3];
    for (int i = 0; i < 3 && (w & 0x80) && current; i++)
        if (&M[i].m == current) fm = &M[i];
    uint8_t k = fuzz_u8(in);
    aorm_expr *e = node(AORM_X_COLUMN);
    e->model = &fm->m;
    /* now and then an offset that is no column */
    e->offset = k == 0xff ? 3 : fm->cols[k % fm->m.ncolumns].offset;
    return e;
}

static char *bytes_copy(fuzz_in *in, size_t max, size_t *len) {
    const uint8_t *p = fuzz_bytes(in, max, len);
    char *s = pool_alloc(*len + 1);
    memcpy(s, p, *len);
    s[*len] = '\0';
    return s;
}

static aorm_expr *value_expr(fuzz_in *in) {
    uint8_t t = fuzz_u8(in), f = fuzz_u8(in);
    aorm_expr *e = node(AORM_X_VALUE);
    e->type = (aorm_type)(t % 17); /* 0 and 16: invalid types */
    e->null = (f & 7) == 7;
    size_t len;
    switch (e->type) {
    case AORM_BOOL: e->v.b = f & 8; break;
    case AORM_INT2:
    case AORM_INT4:
    case AORM_INT8:
    case AORM_DATE:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: e->v.i = (f & 8) ? (int64_t)fuzz_u64(in) : (int8_t)fuzz_u8(in); break;
    case AORM_FLOAT4:
    case AORM_FLOAT8: {
        uint64_t bits = fuzz_u64(in);
        memcpy(&e->v.d, &bits, sizeof(bits));
        break;
    }
    case AORM_TEXT:
    case AORM_JSON:
    case AORM_JSONB:
    case AORM_NUMERIC:
        /* explicit lengths may include NUL bytes; SIZE_MAX is strlen */
        e->v.s = bytes_copy(in, 24, &len);
        if (e->type == AORM_NUMERIC && !(f & 0x40)) {
            /* mostly decimal-looking text, so that numerics get through */
            static const char digits[] = "0123456789.-+eE";
            char *d = (char *)(uintptr_t)e->v.s;
            for (size_t i = 0; i < len; i++) d[i] = digits[(unsigned char)d[i] % 15];
        }
        e->len = (f & 8) ? len : SIZE_MAX;
        if ((f & 0x30) == 0x30) e->v.s = NULL;
        break;
    case AORM_BYTEA:
        e->v.p = bytes_copy(in, 24, &len);
        e->len = len;
        if ((f & 0x30) == 0x30) e->v.p = NULL;
        break;
    case AORM_UUID: {
        char *u = pool_alloc(16);
        size_t n;
        memcpy(u, fuzz_bytes(in, 16, &n), n);
        e->v.p = (f & 0x30) == 0x30 ? NULL : u;
        e->len = 16;
        break;
    }
    default: break;
    }
    return e;
}

static aorm_expr *array_expr(fuzz_in *in) {
    uint8_t t = fuzz_u8(in), f = fuzz_u8(in);
    static const aorm_type types[] = {AORM_INT4, AORM_INT8, AORM_TEXT, AORM_UUID, AORM_BOOL};
    aorm_expr *e = node(AORM_X_ARRAY);
    e->type = types[t % 5];
    size_t n = f % 6;
    e->len = n;
    bool *nulls = (f & 0x40) ? pool_alloc(n + 1) : NULL;
    for (size_t i = 0; nulls && i < n; i++) nulls[i] = fuzz_u8(in) & 1;
    e->nulls = nulls;
    switch (e->type) {
    case AORM_INT4: {
        int32_t *v = pool_alloc(n * 4 + 1);
        for (size_t i = 0; i < n; i++) v[i] = (int32_t)fuzz_u32(in);
        e->v.p = v;
        break;
    }
    case AORM_INT8: {
        int64_t *v = pool_alloc(n * 8 + 1);
        for (size_t i = 0; i < n; i++) v[i] = (int64_t)fuzz_u64(in);
        e->v.p = v;
        break;
    }
    case AORM_TEXT: {
        const char **v = pool_alloc(n * sizeof(char *) + 1);
        for (size_t i = 0; i < n; i++) {
            size_t len;
            v[i] = (fuzz_u8(in) & 3) == 3 ? NULL : bytes_copy(in, 12, &len);
        }
        e->v.p = v;
        break;
    }
    default: {
        char *v = pool_alloc(n * 16 + 1);
        for (size_t i = 0; i < n * 16; i++) v[i] = (char)fuzz_u8(in);
        e->v.p = v;
        break;
    }
    }
    if ((f & 0x80) && n) e->v.p = NULL; /* NULL pointer with elements: misuse */
    return e;
}

static aorm_stmt *sub_stmt(fuzz_in *in, int depth);
static aorm_stmt *any_stmt(fuzz_in *in, int depth);
static const aorm_expr *expr(fuzz_in *in, int depth);
static bool has_raw; /* the statement embeds raw text: its bytes are the caller's SQL */

/* A name for an alias, a CTE, a column of aorm_ref: mostly one the
 * program already declared (so that references meet their items), else
 * a fresh one. */
static const char *name_pick(fuzz_in *in) {
    uint8_t f = fuzz_u8(in);
    if (N.n > 0 && (f & 3)) return N.v[(f >> 2) % N.n];
    return ident(in);
}

/* Registers the dot-separated parts of a function or type name (without a
 * "[]" suffix): they are the identifiers the compiler writes. */
static void name_parts(const char *s) {
    size_t n = strlen(s);
    if (n >= 2 && s[n - 2] == '[' && s[n - 1] == ']') n -= 2;
    const char *dot = memchr(s, '.', n);
    size_t a = dot ? (size_t)(dot - s) : n;
    char *p = pool_alloc(a + 1);
    memcpy(p, s, a);
    p[a] = '\0';
    if (N.n < (int)(sizeof(N.v) / sizeof(N.v[0]))) N.v[N.n++] = p;
    if (dot) {
        size_t b = n - a - 1;
        char *q = pool_alloc(b + 1);
        memcpy(q, dot + 1, b);
        q[b] = '\0';
        if (N.n < (int)(sizeof(N.v) / sizeof(N.v[0]))) N.v[N.n++] = q;
    }
}

/* A function or type name: valid ones, near misses, or arbitrary bytes. */
static const char *sql_name_pick(fuzz_in *in) {
    static const char *const names[] = {"lower", "pg_catalog.upper", "int8", "text[]", "a.b.c", "x y", "1a", "",
                                        "f(); DROP TABLE t; --", "_x9", "a.", ".a", "s.t[]", "q\""};
    uint8_t f = fuzz_u8(in);
    const char *s = (f & 1) ? ident(in) : names[(f >> 1) % (sizeof(names) / sizeof(names[0]))];
    name_parts(s);
    return s;
}

static const aorm_expr *list_expr(fuzz_in *in, int depth, bool order);
static const aorm_expr *frame_expr(fuzz_in *in, int depth);

/* A function of AORM_X_CALL (one value past the last is no function). */
static aorm_expr *call_expr(fuzz_in *in, int depth) {
    aorm_expr *e = node(AORM_X_CALL);
    e->op = (aorm_op)(AORM_FN_COALESCE + fuzz_u8(in) % 17);
    if (e->op == AORM_FN_NAMED) e->name = (fuzz_u8(in) & 7) ? sql_name_pick(in) : NULL;
    int n = fuzz_u8(in) % 4;
    const aorm_expr **l = pool_alloc((size_t)(n ? n : 1) * sizeof(*l));
    for (int i = 0; i < n; i++) l[i] = expr(in, depth + 1);
    e->list = n || (fuzz_u8(in) & 1) ? l : NULL;
    e->n = n;
    return e;
}

/* PARTITION BY / ORDER BY lists (sort keys in the order list, mostly). */
static const aorm_expr *list_expr(fuzz_in *in, int depth, bool order) {
    aorm_expr *e = node(AORM_X_LIST);
    int n = fuzz_u8(in) % 4;
    const aorm_expr **l = pool_alloc((size_t)(n ? n : 1) * sizeof(*l));
    for (int i = 0; i < n; i++) {
        uint8_t f = fuzz_u8(in);
        if ((order && (f & 1)) || (f & 0xF0) == 0xF0) {
            aorm_expr *k = node(AORM_X_SORT);
            k->a = expr(in, depth + 1);
            k->n = (f >> 1) % 9;
            l[i] = k;
        } else {
            l[i] = expr(in, depth + 1);
        }
    }
    e->list = l;
    e->n = n;
    return e;
}

static aorm_expr *bound_expr(fuzz_in *in, int depth) {
    aorm_expr *b = node(AORM_X_BOUND);
    uint8_t f = fuzz_u8(in);
    b->n = f % 7; /* 0, 6: no bound */
    if ((b->n == AORM_BOUND_PRECEDING || b->n == AORM_BOUND_FOLLOWING) != ((f & 0x80) != 0))
        b->a = (f & 0x40) ? value_expr(in) : expr(in, depth + 1);
    return b;
}

static const aorm_expr *frame_expr(fuzz_in *in, int depth) {
    aorm_expr *e = node(AORM_X_FRAME);
    uint8_t f = fuzz_u8(in);
    e->n = f % 5; /* 0, 4: no mode */
    e->a = (f & 8) ? NULL : bound_expr(in, depth);
    if (f & 0x10) e->b = bound_expr(in, depth);
    return e;
}

static const aorm_expr *expr(fuzz_in *in, int depth) {
    if (--B.nodes <= 0 || depth > 8) return column_expr(in);
    uint8_t op = fuzz_u8(in);
    switch (op % 28) {
    case 0:
    case 1: {
        aorm_expr *e = column_expr(in);
        if ((op & 0xE0) == 0xE0) e->alias = name_pick(in); /* AORM_ACOL */
        return e;
    }
    case 2:
    case 3: return value_expr(in);
    case 4: return array_expr(in);
    case 5: {
        aorm_expr *e = node(AORM_X_BINARY);
        e->op = (aorm_op)(fuzz_u8(in) % 32); /* 0, 15..20, 31: not binary operators */
        e->a = expr(in, depth + 1);
        e->b = expr(in, depth + 1);
        return e;
    }
    case 6: {
        aorm_expr *e = node((op & 0x20) ? AORM_X_OR : AORM_X_AND);
        int n = fuzz_u8(in) % 5;
        const aorm_expr **l = pool_alloc((size_t)(n ? n : 1) * sizeof(*l));
        for (int i = 0; i < n; i++) l[i] = expr(in, depth + 1);
        e->list = l;
        e->n = n;
        return e;
    }
    case 7: {
        static const aorm_expr_kind k[] = {AORM_X_NOT, AORM_X_IS_NULL, AORM_X_IS_NOT_NULL};
        aorm_expr *e = node(k[fuzz_u8(in) % 3]);
        e->a = expr(in, depth + 1);
        return e;
    }
    case 8: {
        aorm_expr *e = node(AORM_X_BETWEEN);
        e->a = expr(in, depth + 1);
        e->b = expr(in, depth + 1);
        e->c = expr(in, depth + 1);
        return e;
    }
    case 9: {
        aorm_expr *e = node(AORM_X_ANY);
        uint8_t f = fuzz_u8(in);
        e->op = (f & 1) ? AORM_OP_NE : AORM_OP_EQ;
        if ((f & 6) == 6) e->op = AORM_OP_LT;
        e->a = expr(in, depth + 1);
        e->b = (f & 8) ? expr(in, depth + 1) : array_expr(in);
        return e;
    }
    case 10:
    case 11: {
        if (B.subs <= 0) return value_expr(in);
        B.subs--;
        aorm_expr *e = node(op % 20 == 10 ? AORM_X_IN_SELECT : AORM_X_EXISTS);
        if (e->kind == AORM_X_IN_SELECT) e->a = expr(in, depth + 1);
        e->sub = sub_stmt(in, depth + 1);
        return e;
    }
    case 12: {
        aorm_expr *e = node(AORM_X_FUNC);
        e->op = (aorm_op)(AORM_FN_COUNT + fuzz_u8(in) % 7); /* the last one is no aggregate */
        if (fuzz_u8(in) & 1) e->a = expr(in, depth + 1);
        return e;
    }
    case 13: {
        aorm_expr *e = node(AORM_X_EXCLUDED);
        e->a = (fuzz_u8(in) & 1) ? column_expr(in) : expr(in, depth + 1);
        return e;
    }
    case 14: {
        aorm_expr *e = node(AORM_X_LABEL);
        e->a = expr(in, depth + 1);
        e->label = ident(in);
        return e;
    }
    case 15: {
        aorm_expr *e = node(AORM_X_TUPLE_IN);
        int k = 1 + fuzz_u8(in) % 3;
        uint8_t f = fuzz_u8(in);
        int n = (f & 1) ? 2 * k + 1 : 2 * k; /* odd counts are misuse */
        const aorm_expr **l = pool_alloc((size_t)n * sizeof(*l));
        aorm_expr *arrays[7];
        size_t shortest = SIZE_MAX;
        for (int i = 0; i < n; i++) {
            if (i < k) {
                l[i] = expr(in, depth + 1);
            } else {
                aorm_expr *a = array_expr(in);
                arrays[i - k] = a;
                if (a->len < shortest) shortest = a->len;
                l[i] = a;
            }
        }
        /* equal lengths unless told otherwise: arrays are only ever
         * shortened, their element buffers were sized for what they had */
        for (int i = k; i < n && !(f & 2); i++) arrays[i - k]->len = shortest;
        e->list = l;
        e->n = n;
        return e;
    }
    case 16: {
        /* a chain deeper than the copy's limit, or just below it */
        int n = 480 + fuzz_u8(in) % 40;
        B.nodes -= 50;
        /* with a subquery at the bottom now and then: it must be taken over
         * even when the chain is refused */
        const aorm_expr *e = column_expr(in);
        if ((n & 3) == 0 && B.subs > 0) {
            B.subs--;
            aorm_expr *x = node(AORM_X_EXISTS);
            x->sub = sub_stmt(in, depth + 1);
            e = x;
        }
        for (int i = 0; i < n; i++) {
            aorm_expr *x = node(AORM_X_NOT);
            x->a = e;
            e = x;
        }
        return e;
    }
    case 17: return NULL; /* a NULL operand */
    case 18: {
        aorm_expr *e = node(AORM_X_REF);
        uint8_t f = fuzz_u8(in);
        if (f & 1) e->alias = name_pick(in);
        if (!(f & 0x80)) e->name = name_pick(in);
        return e;
    }
    case 19: return call_expr(in, depth);
    case 20: {
        aorm_expr *e = node(AORM_X_OVER);
        uint8_t f = fuzz_u8(in);
        if (f & 1) {
            aorm_expr *a = node(AORM_X_FUNC);
            a->op = (aorm_op)(AORM_FN_COUNT + fuzz_u8(in) % 6);
            if (fuzz_u8(in) & 1) a->a = expr(in, depth + 1);
            e->a = a;
        } else {
            e->a = (f & 0x40) ? expr(in, depth + 1) : call_expr(in, depth);
        }
        if (f & 2) e->b = list_expr(in, depth, false);
        if (f & 4) e->c = list_expr(in, depth, true);
        if (f & 8) {
            const aorm_expr **l = pool_alloc(sizeof(*l));
            l[0] = (f & 0x20) ? expr(in, depth + 1) : frame_expr(in, depth);
            e->list = l;
            e->n = 1;
        }
        return e;
    }
    case 21: {
        aorm_expr *e = node(AORM_X_CASE);
        int n = fuzz_u8(in) % 4;
        const aorm_expr **l = pool_alloc((size_t)(n ? n : 1) * sizeof(*l));
        for (int i = 0; i < n; i++) {
            uint8_t f = fuzz_u8(in);
            if ((f & 7) == 7) {
                l[i] = expr(in, depth + 1); /* not a WHEN: misuse */
                continue;
            }
            aorm_expr *w = node(AORM_X_WHEN);
            if (!(f & 8) || i + 1 < n) w->a = expr(in, depth + 1); /* ELSE last, mostly */
            w->b = expr(in, depth + 1);
            l[i] = w;
        }
        e->list = l;
        e->n = n;
        return e;
    }
    case 22: {
        aorm_expr *e = node(AORM_X_CAST);
        uint8_t f = fuzz_u8(in);
        if (f & 1) e->name = sql_name_pick(in);
        else e->type = (aorm_type)(fuzz_u8(in) % 17);
        e->a = expr(in, depth + 1);
        return e;
    }
    case 23: {
        if (B.subs <= 0) return value_expr(in);
        B.subs--;
        aorm_expr *e = node(AORM_X_SUBQUERY);
        e->sub = sub_stmt(in, depth + 1);
        return e;
    }
    case 24: {
        aorm_expr *e = node(AORM_X_QUANT);
        uint8_t f = fuzz_u8(in);
        e->op = (aorm_op)(f % 12); /* 0, 11: not comparisons */
        e->n = (f >> 4) % 3;       /* 2: no quantifier */
        e->a = expr(in, depth + 1);
        e->b = (f & 0x80) ? array_expr(in) : expr(in, depth + 1);
        return e;
    }
    case 25: {
        /* a helper node where it does not go */
        static const aorm_expr_kind k[] = {AORM_X_LIST, AORM_X_SORT, AORM_X_FRAME, AORM_X_BOUND, AORM_X_WHEN};
        aorm_expr *e = node(k[fuzz_u8(in) % 5]);
        e->a = expr(in, depth + 1);
        return e;
    }
    default: {
        aorm_expr *e = node(AORM_X_BINARY);
        e->op = (aorm_op)(AORM_OP_EQ + fuzz_u8(in) % 14);
        e->a = column_expr(in);
        e->b = (op & 0x40) ? value_expr(in) : column_expr(in);
        return e;
    }
    }
}

/* ==========================================================================
 * Statements
 * ========================================================================== */

static void fill_field(const aorm_column *c, char *obj, fuzz_in *in) {
    char *f = obj + c->offset;
    bool nullable = (c->flags & AORM_NULLABLE) != 0;
    uint8_t sel = fuzz_u8(in);
    bool valid = !nullable || (sel & 1);
    size_t len;
    switch (c->type) {
    case AORM_BOOL:
    case AORM_INT2:
    case AORM_INT4:
    case AORM_INT8:
    case AORM_FLOAT4:
    case AORM_FLOAT8:
    case AORM_DATE:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ:
    case AORM_UUID: {
        /* the opt_ forms put `valid` first and the value after it */
        size_t vsize = c->type == AORM_BOOL ? 1
                       : c->type == AORM_INT2 ? 2
                       : (c->type == AORM_INT4 || c->type == AORM_DATE || c->type == AORM_FLOAT4) ? 4
                       : c->type == AORM_UUID ? 16
                                              : 8;
        size_t at = nullable ? c->size - vsize : 0;
        if (c->type == AORM_UUID && nullable) at = 1;
        for (size_t i = 0; i < vsize; i++) f[at + i] = (char)fuzz_u8(in);
        if (c->type == AORM_BOOL) f[at] &= 1;
        if (nullable) f[0] = valid;
        break;
    }
    case AORM_NUMERIC:
    case AORM_TEXT:
    case AORM_JSON:
    case AORM_JSONB: {
        char *s = (sel & 2) ? bytes_copy(in, 16, &len) : (char *)"12.5";
        if (!valid) s = NULL;
        memcpy(f, &s, sizeof(s));
        break;
    }
    case AORM_BYTEA: {
        aorm_bytes b = {0};
        if (valid) {
            b.data = (uint8_t *)bytes_copy(in, 16, &len);
            b.len = len;
        }
        memcpy(f, &b, sizeof(b));
        break;
    }
    }
}

static void *make_object(const aorm_model *m, fuzz_in *in) {
    char *obj = pool_alloc(OBJ_SIZE);
    for (int i = 0; i < m->ncolumns; i++) fill_field(&m->columns[i], obj, in);
    return obj;
}

static const aorm_expr *const *col_list(fuzz_in *in, int *n) {
    *n = fuzz_u8(in) % 4;
    const aorm_expr **l = pool_alloc((size_t)(*n ? *n : 1) * sizeof(*l));
    for (int i = 0; i < *n; i++) l[i] = (fuzz_u8(in) & 7) == 7 ? expr(in, 1) : column_expr(in);
    return l;
}

/* One builder call. */
static void step(aorm_stmt *q, fuzz_in *in, int depth) {
    uint8_t op = fuzz_u8(in);
    switch (op % 40) {
    case 0:
    case 1: aorm_where(q, expr(in, depth)); break;
    case 2: aorm_order_by(q, expr(in, depth), fuzz_u8(in) % 9); break;
    case 3: aorm_group_by(q, expr(in, depth)); break;
    case 4: aorm_having(q, expr(in, depth)); break;
    case 5: aorm_limit(q, (int64_t)fuzz_u64(in) >> (fuzz_u8(in) % 64)); break;
    case 6: aorm_offset(q, (int64_t)(int8_t)fuzz_u8(in)); break;
    case 7: aorm_for_update(q, fuzz_u8(in) % 10); break;
    case 8: aorm_distinct(q); break;
    case 9: aorm_join(q, pick_model(in), expr(in, depth)); break;
    case 10: aorm_left_join(q, pick_model(in), expr(in, depth)); break;
    case 11: {
        uint8_t r = fuzz_u8(in);
        const aorm_relationship *rel = (r & 1) ? &M[0].rels[0] : &M[1].rels[0];
        if (!rel->name) rel = NULL;
        aorm_join_rel(q, rel, r & 2);
        break;
    }
    case 12: aorm_select_add(q, expr(in, depth)); break;
    case 13: aorm_select_add_model(q, pick_model(in)); break;
    case 14: aorm_from(q, pick_model(in)); break;
    case 15: {
        const aorm_expr *c = (fuzz_u8(in) & 7) == 7 ? expr(in, depth) : column_expr(in);
        aorm_set(q, c, expr(in, depth));
        break;
    }
    case 16: aorm_returning(q, expr(in, depth)); break;
    case 17: aorm_returning_all(q); break;
    case 18: {
        const aorm_model *m = aorm_stmt_model(q) ? aorm_stmt_model(q) : pick_model(in);
        aorm_insert_object(q, make_object(m, in));
        break;
    }
    case 19: {
        const aorm_model *m = aorm_stmt_model(q) ? aorm_stmt_model(q) : pick_model(in);
        size_t n = 1 + fuzz_u8(in) % 4;
        const void **objs = pool_alloc(n * sizeof(*objs));
        for (size_t i = 0; i < n; i++) objs[i] = make_object(m, in);
        aorm_insert_objects(q, objs, n);
        break;
    }
    case 20: {
        int n;
        const aorm_expr *const *l = col_list(in, &n);
        aorm_on_conflict_do_nothing(q, l, n);
        break;
    }
    case 21: {
        int n;
        const aorm_expr *const *l = col_list(in, &n);
        aorm_on_conflict_do_update(q, l, n);
        break;
    }
    case 22: {
        size_t len;
        char *name = bytes_copy(in, 8, &len);
        aorm_bind(q, name, expr(in, depth));
        break;
    }
    case 23: aorm_bind(q, "a", value_expr(in)); break;
    case 24: aorm_bind(q, "b", array_expr(in)); break;
    case 25: {
        /* a builder call on no statement: its subqueries are freed */
        uint8_t w = fuzz_u8(in);
        int n;
        if (w % 3 == 0) aorm_where(NULL, expr(in, depth));
        else if (w % 3 == 1) aorm_set(NULL, expr(in, depth), expr(in, depth));
        else aorm_on_conflict_do_update(NULL, col_list(in, &n), n);
        break;
    }
    case 26: {
        uint8_t f = fuzz_u8(in);
        aorm_join_alias(q, pick_model(in), name_pick(in), (f & 1) ? expr(in, depth) : NULL, f % 5);
        break;
    }
    case 27: aorm_from_alias(q, pick_model(in), name_pick(in)); break;
    case 28: aorm_select_add_alias(q, pick_model(in), name_pick(in)); break;
    case 29: {
        uint8_t r = fuzz_u8(in);
        const aorm_relationship *rel = (r & 1) ? &M[0].rels[0] : &M[1].rels[0];
        if (!rel->name) rel = NULL;
        aorm_join_rel_alias(q, rel, (r & 4) ? NULL : name_pick(in), r & 2);
        break;
    }
    case 30: aorm_distinct_on(q, expr(in, depth)); break;
    case 31: {
        uint8_t f = fuzz_u8(in);
        const char *name = name_pick(in);
        if (f & 1) aorm_with_recursive(q, name, any_stmt(in, depth));
        else aorm_with(q, name, any_stmt(in, depth));
        break;
    }
    case 32: aorm_from_cte(q, name_pick(in)); break;
    case 33: {
        uint8_t f = fuzz_u8(in);
        aorm_join_cte(q, name_pick(in), (f & 8) ? name_pick(in) : NULL, (f & 16) ? expr(in, depth) : NULL, f % 5);
        break;
    }
    case 34: {
        uint8_t f = fuzz_u8(in);
        aorm_stmt *sub = any_stmt(in, depth);
        aorm_join_select(q, sub, name_pick(in), (f & 16) ? expr(in, depth) : NULL, f % 5);
        break;
    }
    case 35: aorm_from_select(q, any_stmt(in, depth), name_pick(in)); break;
    case 36: {
        int n;
        const aorm_expr *const *l = col_list(in, &n);
        aorm_insert_select(q, l, n, any_stmt(in, depth));
        break;
    }
    case 37:
        if (fuzz_u8(in) & 1) aorm_on_conflict_constraint_do_update(q, name_pick(in));
        else aorm_on_conflict_constraint_do_nothing(q, name_pick(in));
        break;
    case 38: aorm_insert_use_default(q, (fuzz_u8(in) & 7) == 7 ? expr(in, depth) : column_expr(in)); break;
    case 39: {
        /* calls on no statement: what they are handed is freed */
        uint8_t w = fuzz_u8(in);
        if (w % 3 == 0) aorm_with(NULL, "x", any_stmt(in, depth));
        else if (w % 3 == 1) aorm_from_select(NULL, any_stmt(in, depth), "x");
        else aorm_join_select(NULL, any_stmt(in, depth), "x", expr(in, depth), 0);
        break;
    }
    default: aorm_where(q, expr(in, depth)); break;
    }
}

static const char *const raw_texts[] = {
    "SELECT 1",
    "SELECT :a",
    "SELECT * FROM t WHERE x = :a AND y = ANY(:b) OR z = :a",
    "SELECT ':a', \"b:\" FROM t WHERE c = :b -- :a",
    "SELECT $$ :a $$, :b::int",
    "SELECT 'unterminated",
};

static aorm_stmt *new_stmt(fuzz_in *in, bool sub) {
    uint8_t k = fuzz_u8(in);
    if ((k & 0xC0) == 0xC0 && B.subs > 1) {
        /* a set operation of two subqueries (any kinds: a writing one is refused) */
        B.subs -= 2;
        static aorm_stmt *(*const ops[])(aorm_stmt *, aorm_stmt *) = {aorm_union,     aorm_union_all,
                                                                      aorm_intersect, aorm_intersect_all,
                                                                      aorm_except,    aorm_except_all};
        aorm_stmt *a = sub_stmt(in, 1);
        aorm_stmt *b = (k & 0x20) ? new_stmt(in, false) : sub_stmt(in, 1);
        return ops[k % 6](a, b);
    }
    switch (k % (sub ? 4 : 8)) {
    case 0:
    case 1: return aorm_select(pick_model(in));
    case 2: {
        int n = fuzz_u8(in) % 3;
        const aorm_expr **l = pool_alloc((size_t)(n ? n : 1) * sizeof(*l));
        for (int i = 0; i < n; i++) l[i] = expr(in, 1);
        return aorm_select_exprs(l, n);
    }
    case 3: {
        has_raw = true;
        if (fuzz_u8(in) & 1) {
            size_t len;
            return aorm_raw(bytes_copy(in, 40, &len));
        }
        return aorm_raw(raw_texts[fuzz_u8(in) % (sizeof(raw_texts) / sizeof(raw_texts[0]))]);
    }
    case 4: return aorm_insert(pick_model(in));
    case 5: return aorm_update(pick_model(in));
    case 6: return aorm_delete(pick_model(in));
    default: return aorm_select(pick_model(in));
    }
}

static aorm_stmt *sub_stmt(fuzz_in *in, int depth) {
    const aorm_model *outer = current;
    aorm_stmt *s = new_stmt(in, true);
    current = aorm_stmt_model(s);
    int n = fuzz_u8(in) % 4;
    for (int i = 0; i < n && s; i++) step(s, in, depth);
    current = outer;
    return s;
}

/* A statement of any kind with a few builder calls: a CTE, an INSERT's
 * query, a FROM item. Counts against the subquery budget. */
static aorm_stmt *any_stmt(fuzz_in *in, int depth) {
    if (B.subs <= 0) return NULL;
    B.subs--;
    if (fuzz_u8(in) & 1) return sub_stmt(in, depth + 1);
    const aorm_model *outer = current;
    aorm_stmt *s = new_stmt(in, false);
    current = aorm_stmt_model(s);
    int n = fuzz_u8(in) % 4;
    for (int i = 0; i < n && s; i++) step(s, in, depth + 1);
    current = outer;
    return s;
}

/* ==========================================================================
 * Checking the output
 * ========================================================================== */

static const char *const keywords[] = {
    "WITH", "RECURSIVE", "UNION", "INTERSECT", "EXCEPT", "ALL", "CROSS", "LATERAL", "USING", "CONSTRAINT", "CASE",
    "WHEN", "THEN", "ELSE", "END", "CAST", "OVER", "PARTITION", "ROWS", "RANGE", "GROUPS", "UNBOUNDED", "PRECEDING",
    "FOLLOWING", "CURRENT", "ROW", "coalesce", "nullif", "greatest", "least", "row_number", "rank", "dense_rank",
    "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value", "last_value", "nth_value",
    "SELECT", "DISTINCT", "FROM", "JOIN", "LEFT", "ON", "WHERE", "GROUP", "BY", "HAVING", "ORDER", "ASC",
    "DESC", "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "FOR", "UPDATE", "SHARE", "NOWAIT", "SKIP", "LOCKED",
    "INSERT", "INTO", "VALUES", "DEFAULT", "SET", "DELETE", "RETURNING", "CONFLICT", "DO", "NOTHING",
    "EXCLUDED", "AND", "OR", "NOT", "IS", "NULL", "BETWEEN", "LIKE", "ILIKE", "ANY", "IN", "EXISTS", "AS",
    "TRUE", "FALSE", "unnest", "count", "sum", "avg", "min", "max",
    /* type names of multi-row inserts: unnest($1::bigint[], ...) */
    "boolean", "smallint", "integer", "bigint", "real", "double", "precision", "numeric", "text", "bytea",
    "date", "timestamp", "with", "without", "time", "zone", "uuid", "json", "jsonb", "interval", "inet", "cidr"};

static bool keyword(const char *w, size_t n) {
    for (size_t i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++)
        if (strlen(keywords[i]) == n && memcmp(keywords[i], w, n) == 0) return true;
    return false;
}

static bool in_names(const char *id, size_t n) {
    for (int i = 0; i < N.n; i++)
        if (strlen(N.v[i]) == n && memcmp(N.v[i], id, n) == 0) return true;
    /* default output names of expressions, which get suffixes when taken */
    static const char *const auto_names[] = {"count",    "sum",        "avg",          "min",        "max",
                                             "exists",   "case",       "coalesce",     "nullif",     "greatest",
                                             "least",    "row_number", "rank",         "dense_rank", "percent_rank",
                                             "cume_dist", "ntile",     "lag",          "lead",       "first_value",
                                             "last_value", "nth_value"};
    for (size_t i = 0; i < sizeof(auto_names) / sizeof(auto_names[0]); i++)
        if (strlen(auto_names[i]) == n && memcmp(auto_names[i], id, n) == 0) return true;
    return false;
}

/* "<table>_<column>" of one model, or "<alias>_<column>" (an alias is a
 * declared name): the label a duplicate column name gets. */
static bool prefix_column(const char *id, size_t n, const char *t) {
    size_t tl = strlen(t);
    if (tl + 1 >= n || memcmp(id, t, tl) != 0 || id[tl] != '_') return false;
    for (int m = 0; m < 3; m++)
        for (int k = 0; k < M[m].m.ncolumns; k++) {
            const char *c = M[m].cols[k].name;
            if (strlen(c) == n - tl - 1 && memcmp(id + tl + 1, c, n - tl - 1) == 0) return true;
        }
    return false;
}

static bool table_column(const char *id, size_t n) {
    for (int m = 0; m < 3; m++)
        if (prefix_column(id, n, M[m].m.table)) return true;
    for (int i = 0; i < N.n; i++)
        if (prefix_column(id, n, N.v[i])) return true;
    return false;
}

/* Is the unquoted identifier id (n bytes) one the program declared, or a
 * label the select list derives from them: "<table>_<column>", and either
 * of those with "_<k>" appended (see items_add in stmt.c)? */
static bool declared(const char *id, size_t n) {
    if (in_names(id, n) || table_column(id, n)) return true;
    size_t d = n;
    while (d > 0 && id[d - 1] >= '0' && id[d - 1] <= '9') d--;
    if (d == n || d < 2 || id[d - 1] != '_') return false;
    return in_names(id, d - 1) || table_column(id, d - 1);
}

/* Lexes sql: keywords, punctuation, $n, "quoted identifiers"; checks
 * that $n first appear in order and sets *nph to the highest. Raw text
 * (the caller's own SQL, kept verbatim) is not aorm's to lex: run() skips
 * statements that embed some. */
static void lex(const char *sql, int *nph) {
    int next = 1;
    size_t i = 0, n = strlen(sql);
    while (i < n) {
        unsigned char c = (unsigned char)sql[i];
        if (c == ' ') {
            i++;
        } else if (c == '"') {
            size_t s = ++i;
            char *id = malloc(n + 1);
            FUZZ_CHECK(id, "out of memory");
            size_t o = 0;
            for (;;) {
                FUZZ_CHECK(i < n, "unterminated quoted identifier in: %s", sql);
                if (sql[i] == '"') {
                    if (sql[i + 1] == '"') {
                        id[o++] = '"';
                        i += 2;
                        continue;
                    }
                    break;
                }
                id[o++] = sql[i++];
            }
            i++;
            FUZZ_CHECK(o > 0, "empty quoted identifier at %zu in: %s", s, sql);
            FUZZ_CHECK(declared(id, o), "undeclared identifier \"%.*s\" in: %s", (int)o, id, sql);
            free(id);
        } else if (c == '$') {
            size_t s = ++i;
            int v = 0;
            while (i < n && sql[i] >= '0' && sql[i] <= '9' && v < 1000000) v = v * 10 + (sql[i++] - '0');
            FUZZ_CHECK(i > s && v > 0, "a $ without a number in: %s", sql);
            FUZZ_CHECK(v <= next, "$%d before $%d in: %s", v, next, sql);
            if (v == next) next++;
        } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) {
            size_t s = i;
            while (i < n && ((sql[i] >= 'A' && sql[i] <= 'Z') || (sql[i] >= 'a' && sql[i] <= 'z') || sql[i] == '_'))
                i++;
            FUZZ_CHECK(keyword(sql + s, i - s), "unquoted word \"%.*s\" in: %s", (int)(i - s), sql + s, sql);
        } else if (strchr("(),.=<>+-*/:[]%|&?@#", (int)c) && c) {
            if (c == '*' || c == '/' || c == '-' || c == '+') {
                /* never a comment opener */
                FUZZ_CHECK(!(c == '-' && sql[i + 1] == '-') && !(c == '/' && sql[i + 1] == '*'),
                           "comment opener in: %s", sql);
            }
            i++;
        } else if (c == '1' && !(sql[i + 1] >= '0' && sql[i + 1] <= '9') &&
                   ((i >= 7 && memcmp(sql + i - 7, "SELECT ", 7) == 0) ||
                    (i >= 9 && memcmp(sql + i - 9, "DISTINCT ", 9) == 0) ||
                    (i >= 2 && memcmp(sql + i - 2, ") ", 2) == 0 && strstr(sql, "DISTINCT ON (")))) {
            i++; /* an empty select list: SELECT 1, SELECT DISTINCT ON (...) 1 */
        } else {
            FUZZ_CHECK(0, "byte 0x%02x at %zu outside any identifier in: %s", c, i, sql);
        }
    }
    *nph = next - 1;
}

/* ==========================================================================
 * The run
 * ========================================================================== */

typedef struct outcome {
    int rc;
    char *sql;
    char *params;
    size_t params_len;
} outcome;

static outcome run(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    N.n = 0;
    all_utf8 = true;
    B = (budget){200, 4};
    uint8_t mode = fuzz_u8(&in);
    utf8_mode = mode & 1;
    for (int i = 0; i < 3; i++) make_model(i, &in);
    relate();
    has_raw = false;
    current = NULL;
    aorm_stmt *q = new_stmt(&in, false);
    current = aorm_stmt_model(q);
    int nsteps = fuzz_u8(&in) % 24;
    for (int i = 0; i < nsteps && q; i++) step(q, &in, 0);
    outcome o = {0};
    if (!q) {
        o.rc = 1;
        return o;
    }
    int err = aorm_stmt_error(q);
    int rc = aorm_stmt_compile(q);
    if (err) FUZZ_CHECK(rc == err, "compile returned %s, the sticky error is %s", aorm_errname(rc), aorm_errname(err));
    o.rc = rc;
    if (rc) {
        FUZZ_CHECK(rc == AORM_EMISUSE || rc == AORM_ERANGE || rc == AORM_EENCODING, "error %s: %s", aorm_errname(rc),
                   aorm_stmt_errmsg(q));
        FUZZ_CHECK(*aorm_stmt_errmsg(q), "error %s without a message", aorm_errname(rc));
        FUZZ_CHECK(!aorm_stmt_sql(q) && !aorm_stmt_params(q), "a failed statement has text");
        FUZZ_CHECK(aorm_stmt_compile(q) == rc && aorm_stmt_error(q) == rc, "the error is not sticky");
        o.sql = strdup(aorm_stmt_errmsg(q));
        aorm_stmt_free(q);
        return o;
    }
    const char *sql = aorm_stmt_sql(q);
    const aorm_params *p = aorm_stmt_params(q);
    FUZZ_CHECK(sql && p && aorm_params_error(p) == 0, "compiled without text or parameters");
    FUZZ_CHECK(aorm_stmt_compile(q) == 0 && aorm_stmt_sql(q) == sql, "second compile differs");
    if (!has_raw) {
        int nph;
        lex(sql, &nph);
        FUZZ_CHECK(nph == aorm_params_count(p), "%d placeholders for %d parameters in: %s", nph,
                   aorm_params_count(p), sql);
        if (all_utf8) FUZZ_CHECK(valid_utf8((const unsigned char *)sql, strlen(sql)), "invalid UTF-8 out of UTF-8 in");
    }
    for (int i = 0; i < p->count; i++) {
        const aorm_param_slot *s = &p->slots[i];
        FUZZ_CHECK(s->len >= -1 && (s->len < 0 || (size_t)s->offset + (size_t)s->len <= p->len),
                   "parameter %d outside the data", i + 1);
        FUZZ_CHECK(s->format == 1, "parameter %d not binary", i + 1);
    }
    o.sql = strdup(sql);
    o.params_len = p->len + (size_t)p->count * sizeof(aorm_param_slot);
    o.params = malloc(o.params_len + 1);
    FUZZ_CHECK(o.sql && o.params, "out of memory");
    memcpy(o.params, p->slots, (size_t)p->count * sizeof(aorm_param_slot));
    if (p->len) memcpy(o.params + (size_t)p->count * sizeof(aorm_param_slot), p->data, p->len);
    aorm_stmt_free(q);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    outcome a = run(data, size);
    pool_free();
    outcome b = run(data, size);
    pool_free();
    if (getenv("AORM_FUZZ_VERBOSE"))
        fprintf(stderr, "%s: %s\n", a.rc ? aorm_errname(a.rc) : "ok", a.sql ? a.sql : "(no statement)");
    FUZZ_CHECK(a.rc == b.rc, "two builds of one program: %s then %s", aorm_errname(a.rc), aorm_errname(b.rc));
    FUZZ_CHECK((!a.sql && !b.sql) || (a.sql && b.sql && strcmp(a.sql, b.sql) == 0),
               "two builds of one program differ:\n%s\n%s", a.sql ? a.sql : "", b.sql ? b.sql : "");
    FUZZ_CHECK(a.params_len == b.params_len && (!a.params_len || memcmp(a.params, b.params, a.params_len) == 0),
               "two builds of one program bind different parameters");
    free(a.sql);
    free(b.sql);
    free(a.params);
    free(b.params);
    return 0;
}

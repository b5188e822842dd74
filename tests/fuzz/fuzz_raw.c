/* fuzz_raw.c -- the raw SQL `:name` scanner and its compile (src/sql/raw.c).
 *
 * Input: the SQL text up to the first NUL byte; the bytes after it steer
 * the binds (which value type each name gets, whether one name is left
 * unbound). Invariants:
 *   - aorm_raw() never fails with anything but AORM_EMISUSE (an
 *     unterminated literal, a positional $n), and a failed statement
 *     compiles to that same error with no text;
 *   - placeholders are in order, do not overlap, and each is `:` + a name
 *     of [A-Za-z_][A-Za-z0-9_]* that is not followed by another name byte;
 *   - with every name bound, the compiled text is the input with each
 *     placeholder replaced by $k (k = rank of the name's first
 *     appearance) and nothing else changed; there are exactly as many
 *     parameters as names, parameter k holds the value bound to name k;
 *   - one name left unbound fails the compile with AORM_EMISUSE;
 *   - the same text used as an EXISTS subquery after one parameter of the
 *     enclosing SELECT is numbered from $2 on. */
#include <inttypes.h>

#include "fuzz.h"
#include "aorm/aorm.h"
#include "sql/sql_int.h"

typedef struct fz_row {
    int64_t id;
} fz_row;

static const aorm_column fz_row_columns[] = {
    AORM_COLUMN(fz_row, id, AORM_INT8, AORM_PK),
};
static const aorm_model fz_row_model = {
    AORM_MODEL_OF(fz_row, "rows"),
    AORM_COLUMNS(fz_row_columns),
};

static bool name_start(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool name_char(unsigned char c) { return name_start(c) || (c >= '0' && c <= '9'); }

/* The expected compile of q's text with numbers starting at first. */
static char *expected_text(const aorm_stmt *q, int first) {
    size_t cap = q->text_len + (size_t)q->nph * 12 + 1;
    char *out = malloc(cap);
    FUZZ_CHECK(out, "out of memory");
    int *num = calloc((size_t)q->nnames + 1, sizeof(int));
    FUZZ_CHECK(num, "out of memory");
    int next = first;
    size_t o = 0, last = 0;
    for (int i = 0; i < q->nph; i++) {
        const aorm__raw_ph *ph = &q->ph[i];
        memcpy(out + o, q->text + last, ph->start - last);
        o += ph->start - last;
        if (!num[ph->name]) num[ph->name] = next++;
        o += (size_t)snprintf(out + o, cap - o, "$%d", num[ph->name]);
        last = ph->end;
    }
    memcpy(out + o, q->text + last, q->text_len - last);
    o += q->text_len - last;
    out[o] = '\0';
    free(num);
    return out;
}

/* Binds every name of q (skipping `skip`, -1 for none): name k gets an
 * int4 k, an int8 array {k}, or a text "k" as the steering byte says. */
static void bind_all(aorm_stmt *q, int skip, uint8_t kind) {
    for (int k = 0; k < q->nnames; k++) {
        if (k == skip) continue;
        const aorm__raw_name *nm = &q->names[k];
        /* with the optional leading colon half of the time */
        char *name = malloc(nm->len + 2);
        FUZZ_CHECK(name, "out of memory");
        size_t at = 0;
        if ((kind >> 2) & 1) name[at++] = ':';
        memcpy(name + at, nm->name, nm->len);
        name[at + nm->len] = '\0';
        int rc;
        int64_t arr[1] = {k};
        char txt[16];
        snprintf(txt, sizeof(txt), "%d", k);
        switch ((kind + k) % 3) {
        case 0: rc = aorm_bind(q, name, aorm_int4(k)); break;
        case 1: rc = aorm_bind(q, name, aorm_int8_array(arr, 1)); break;
        default: rc = aorm_bind(q, name, aorm_text(txt)); break;
        }
        FUZZ_CHECK(rc == 0, "bind %s failed: %s %s", name, aorm_errname(rc), aorm_stmt_errmsg(q));
        free(name);
    }
}

/* Parameter k of p carries the value bound to name k (see bind_all). */
static void check_params(const aorm_params *p, int first, int nnames, uint8_t kind) {
    FUZZ_CHECK(aorm_params_error(p) == 0, "params in error");
    FUZZ_CHECK(p->count == first + nnames, "%d parameters for %d names (+%d)", p->count, nnames, first);
    for (int k = 0; k < nnames; k++) {
        const aorm_param_slot *s = &p->slots[first + k];
        const char *v = p->data + s->offset;
        switch ((kind + k) % 3) {
        case 0: {
            int64_t x;
            FUZZ_CHECK(s->type == AORM_T_INT4 && aorm_decode_int(s->type, v, s->len, &x) == 0 && x == k,
                       "parameter %d is not int4 %d", first + k + 1, k);
            break;
        }
        case 1: FUZZ_CHECK(s->type == AORM_T_INT8_ARRAY, "parameter %d is not an int8 array", first + k + 1); break;
        default: {
            char txt[16];
            int l = snprintf(txt, sizeof(txt), "%d", k);
            FUZZ_CHECK(s->type == AORM_T_TEXT && s->len == l && memcmp(v, txt, (size_t)l) == 0,
                       "parameter %d is not text \"%s\"", first + k + 1, txt);
            break;
        }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    char *text = malloc(tlen + 1);
    if (!text) return 0;
    memcpy(text, data, tlen);
    text[tlen] = '\0';
    fuzz_in steer = {nul ? nul + 1 : data + size, nul ? size - tlen - 1 : 0};
    uint8_t kind = fuzz_u8(&steer);
    uint8_t skip_sel = fuzz_u8(&steer);

    aorm_stmt *q = aorm_raw(text);
    FUZZ_CHECK(q, "aorm_raw returned NULL");
    int err = aorm_stmt_error(q);
    if (err) {
        FUZZ_CHECK(err == AORM_EMISUSE, "parse error %s (%s)", aorm_errname(err), aorm_stmt_errmsg(q));
        FUZZ_CHECK(*aorm_stmt_errmsg(q), "an error without a message");
        FUZZ_CHECK(aorm_stmt_compile(q) == err && !aorm_stmt_sql(q), "a failed parse compiled");
        aorm_stmt_free(q);
        free(text);
        return 0;
    }
    FUZZ_CHECK(q->text_len == tlen, "text copied with %zu bytes of %zu", q->text_len, tlen);
    FUZZ_CHECK(q->nnames <= q->nph, "%d names for %d placeholders", q->nnames, q->nph);
    size_t prev_end = 0;
    for (int i = 0; i < q->nph; i++) {
        const aorm__raw_ph *ph = &q->ph[i];
        FUZZ_CHECK(ph->start >= prev_end && ph->end > ph->start + 1 && ph->end <= tlen,
                   "placeholder %d at [%zu, %zu) after %zu", i, ph->start, ph->end, prev_end);
        FUZZ_CHECK(text[ph->start] == ':' && name_start((unsigned char)text[ph->start + 1]),
                   "placeholder %d does not start with :name", i);
        for (size_t j = ph->start + 2; j < ph->end; j++)
            FUZZ_CHECK(name_char((unsigned char)text[j]), "placeholder %d holds byte 0x%02x", i, (unsigned char)text[j]);
        FUZZ_CHECK(!name_char((unsigned char)text[ph->end]), "placeholder %d stops inside a name", i);
        FUZZ_CHECK(ph->name >= 0 && ph->name < q->nnames, "placeholder %d names %d", i, ph->name);
        const aorm__raw_name *nm = &q->names[ph->name];
        FUZZ_CHECK(nm->len == ph->end - ph->start - 1 && memcmp(nm->name, text + ph->start + 1, nm->len) == 0,
                   "placeholder %d is not its name", i);
        prev_end = ph->end;
    }
    for (int a = 0; a < q->nnames; a++)
        for (int b = a + 1; b < q->nnames; b++)
            FUZZ_CHECK(q->names[a].len != q->names[b].len || memcmp(q->names[a].name, q->names[b].name, q->names[a].len),
                       "names %d and %d are equal", a, b);

    /* One name unbound: the compile must say so. */
    if (q->nnames && (skip_sel & 1)) {
        aorm_stmt *u = aorm_raw(text);
        FUZZ_CHECK(u && !aorm_stmt_error(u), "second parse differs");
        bind_all(u, skip_sel % q->nnames, kind);
        int rc = aorm_stmt_compile(u);
        FUZZ_CHECK(rc == AORM_EMISUSE && strstr(aorm_stmt_errmsg(u), "is not bound"), "unbound name compiled: %s",
                   aorm_errname(rc));
        aorm_stmt_free(u);
    }

    bind_all(q, -1, kind);
    int rc = aorm_stmt_compile(q);
    FUZZ_CHECK(rc == 0, "compile failed: %s %s", aorm_errname(rc), aorm_stmt_errmsg(q));
    char *want = expected_text(q, 1);
    FUZZ_CHECK(strcmp(aorm_stmt_sql(q), want) == 0, "compiled text differs:\n got %s\nwant %s", aorm_stmt_sql(q),
               want);
    check_params(aorm_stmt_params(q), 0, q->nnames, kind);
    free(want);

    /* As a subquery after one parameter of the enclosing statement. */
    aorm_stmt *sub = aorm_raw(text);
    FUZZ_CHECK(sub && !aorm_stmt_error(sub), "third parse differs");
    bind_all(sub, -1, kind);
    char *inner = expected_text(sub, 2);
    aorm_stmt *s = aorm_select(&fz_row_model);
    aorm_where(s, aorm_eq(AORM_COL(fz_row, id), aorm_int8(7)));
    aorm_where(s, aorm_exists(sub));
    rc = aorm_stmt_compile(s);
    FUZZ_CHECK(rc == 0, "subquery compile failed: %s %s", aorm_errname(rc), aorm_stmt_errmsg(s));
    const char *head = "SELECT \"rows\".\"id\" FROM \"rows\" WHERE \"rows\".\"id\" = $1 AND EXISTS (";
    const char *got = aorm_stmt_sql(s);
    size_t hl = strlen(head), il = strlen(inner);
    FUZZ_CHECK(strlen(got) == hl + il + 1 && memcmp(got, head, hl) == 0 && memcmp(got + hl, inner, il) == 0 &&
                   got[hl + il] == ')',
               "subquery text differs:\n got %s\nwant %s%s)", got, head, inner);
    check_params(aorm_stmt_params(s), 1, q->nnames, kind);
    free(inner);
    aorm_stmt_free(s);
    aorm_stmt_free(q);
    free(text);
    return 0;
}

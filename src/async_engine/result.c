/* result.c -- typed getters over a binary-format PGresult, the array
 * walker and the single-value decoders (aorm_decode_*).
 *
 * Ownership: nothing here allocates or frees. An aorm_result borrows or owns
 * its PGresult according to the engine (aorm_result_free() and
 * aorm_result_detach() live with the engine, not here); every pointer a
 * getter hands out points into that PGresult.
 *
 * Trust: the bytes of a value come from the network. Every getter checks,
 * in this order, the row/column range (AORM_ERANGE), SQL NULL
 * (AORM_ENULLVALUE), the column type (AORM_ETYPE), that the column is in
 * binary format and that the value has exactly the length its type needs
 * (AORM_EPROTOCOL), and only then decodes. Variable-length structures
 * (numeric, arrays) are walked with every length checked against the bytes
 * that remain, so a malformed value can never make us read past it.
 *
 * These functions do not block, keep no state and may be called from inside
 * any callback that has a result in hand. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <libpq-fe.h>

#include "aorm/error.h"
#include "aorm/result.h"
#include "async_engine/numeric_int.h"
#include "async_engine/result_int.h"
#include "util/util.h"

/* =========================================================================
 * Shape of the result
 * ========================================================================= */

int aorm_result_nrows(const aorm_result *r) { return r ? r->nrows : AORM_EMISUSE; }

int aorm_result_ncols(const aorm_result *r) { return r ? r->ncols : AORM_EMISUSE; }

static bool col_ok(const aorm_result *r, int col) { return r && r->pg && col >= 0 && col < r->ncols; }

/* Linear and exact on purpose: PQfnumber() folds unquoted names to lower
 * case and strips double quotes, which would make "Name" find "name". */
int aorm_result_col(const aorm_result *r, const char *name) {
    if (!r || !name) return AORM_EMISUSE;
    for (int c = 0; c < r->ncols && r->pg; c++) {
        const char *f = PQfname(r->pg, c);
        if (f && strcmp(f, name) == 0) return c;
    }
    return AORM_ENOTFOUND;
}

/* NULL when the column does not exist. */
const char *aorm_result_col_name(const aorm_result *r, int col) {
    return col_ok(r, col) ? PQfname(r->pg, col) : NULL;
}

/* 0 (no type) when the column does not exist. */
uint32_t aorm_result_col_type(const aorm_result *r, int col) {
    return col_ok(r, col) ? (uint32_t)PQftype(r->pg, col) : 0;
}

/* NULL for a NULL handle, "" for a result that carries no command tag. */
const char *aorm_result_cmd_tag(const aorm_result *r) {
    if (!r) return NULL;
    const char *tag = r->pg ? PQcmdStatus(r->pg) : NULL;
    return tag ? tag : "";
}

/* The count is the last word of the tag ("INSERT 0 5": 5), for the tags
 * whose last word is a row count; other tags ("CREATE TABLE", "BEGIN")
 * carry none. PQcmdTuples() would do the same, but which tags it knows
 * depends on the libpq version linked at run time. */
int64_t aorm_result_affected(const aorm_result *r) {
    static const char *const counted[] = {"INSERT", "UPDATE", "DELETE", "SELECT",
                                          "MOVE",   "FETCH",  "COPY",   "MERGE"};
    const char *tag = aorm_result_cmd_tag(r);
    if (!tag) return -1;
    size_t word = strcspn(tag, " ");
    bool known = false;
    for (size_t i = 0; i < AORM__ARRAY_LEN(counted); i++)
        if (strlen(counted[i]) == word && memcmp(tag, counted[i], word) == 0) known = true;
    if (!known || tag[word] != ' ') return -1;
    const char *num = strrchr(tag, ' ') + 1;
    if (!*num) return -1;
    int64_t n = 0;
    for (const char *c = num; *c; c++) {
        if (*c < '0' || *c > '9') return -1;
        if (n > (INT64_MAX - (*c - '0')) / 10) return -1;
        n = n * 10 + (*c - '0');
    }
    return n;
}

/* =========================================================================
 * Cell access
 * ========================================================================= */

static int check_cell(const aorm_result *r, int row, int col) {
    if (!r) return AORM_EMISUSE;
    if (row < 0 || row >= r->nrows || col < 0 || col >= r->ncols) return AORM_ERANGE;
    /* nrows/ncols come from the PGresult, so a result without one has no
     * cells and never gets here. */
    aorm__assert(r->pg != NULL);
    return 0;
}

int aorm_result_is_null(const aorm_result *r, int row, int col) {
    int rc = check_cell(r, row, col);
    if (rc) return rc;
    return PQgetisnull(r->pg, row, col) ? 1 : 0;
}

int aorm_result_raw(const aorm_result *r, int row, int col, const char **data, int *len) {
    if (!data || !len) return AORM_EMISUSE;
    int rc = check_cell(r, row, col);
    if (rc) return rc;
    if (PQgetisnull(r->pg, row, col)) {
        *data = NULL;
        *len = -1;
        return 0;
    }
    *data = PQgetvalue(r->pg, row, col);
    *len = PQgetlength(r->pg, row, col);
    return 0;
}

/* Type sets the getters accept, as a small list ended by 0. */
typedef struct typeset {
    uint32_t t[8];
} typeset;

static bool type_in(uint32_t type, const typeset *ts) {
    for (size_t i = 0; i < AORM__ARRAY_LEN(ts->t) && ts->t[i]; i++)
        if (ts->t[i] == type) return true;
    return false;
}

/* The common front of every typed getter: range, NULL, type, then the
 * binary format the decoders rely on. On success *type, *v and *len
 * describe the value (libpq NUL-terminates every value, so v[len] == 0)
 * and *binary tells its format; callers that pass binary == NULL accept
 * only binary values. */
static int fetch_fmt(const aorm_result *r, int row, int col, const typeset *ts, uint32_t *type,
                     const char **v, int *len, bool *binary) {
    int rc = check_cell(r, row, col);
    if (rc) return rc;
    if (PQgetisnull(r->pg, row, col)) return AORM_ENULLVALUE;
    uint32_t t = (uint32_t)PQftype(r->pg, col);
    if (!type_in(t, ts)) return AORM_ETYPE;
    bool bin = PQfformat(r->pg, col) == 1;
    if (binary) *binary = bin;
    else if (!bin) return AORM_EPROTOCOL;
    *type = t;
    *v = PQgetvalue(r->pg, row, col);
    *len = PQgetlength(r->pg, row, col);
    return 0;
}

static int fetch(const aorm_result *r, int row, int col, const typeset *ts, uint32_t *type,
                 const char **v, int *len) {
    return fetch_fmt(r, row, col, ts, type, v, len, NULL);
}

/* =========================================================================
 * Single-value decoders
 * ========================================================================= */

int aorm_decode_int(uint32_t type, const char *v, int len, int64_t *out) {
    if (!out || (!v && len > 0)) return AORM_EMISUSE;
    if (len < 0) return AORM_ENULLVALUE;
    switch (type) {
    case AORM_T_INT2:
        if (len != 2) return AORM_EPROTOCOL;
        *out = (int16_t)aorm__get_be16(v);
        return 0;
    case AORM_T_INT4:
        if (len != 4) return AORM_EPROTOCOL;
        *out = (int32_t)aorm__get_be32(v);
        return 0;
    case AORM_T_OID: /* unsigned 32-bit */
        if (len != 4) return AORM_EPROTOCOL;
        *out = (int64_t)aorm__get_be32(v);
        return 0;
    case AORM_T_INT8:
        if (len != 8) return AORM_EPROTOCOL;
        *out = (int64_t)aorm__get_be64(v);
        return 0;
    default:
        return AORM_ETYPE;
    }
}

int aorm_decode_float8(uint32_t type, const char *v, int len, double *out) {
    if (!out || (!v && len > 0)) return AORM_EMISUSE;
    if (len < 0) return AORM_ENULLVALUE;
    if (type == AORM_T_FLOAT4) {
        if (len != 4) return AORM_EPROTOCOL;
        uint32_t bits = aorm__get_be32(v);
        float f;
        memcpy(&f, &bits, sizeof(f));
        *out = (double)f;
        return 0;
    }
    if (type == AORM_T_FLOAT8) {
        if (len != 8) return AORM_EPROTOCOL;
        uint64_t bits = aorm__get_be64(v);
        memcpy(out, &bits, sizeof(*out));
        return 0;
    }
    return AORM_ETYPE;
}

/* Renders a finite numeric the way the server's get_str_from_var() does:
 * the integer part without leading zeros (at least "0"), then exactly
 * dscale fraction digits, truncating digits beyond dscale (the server has
 * already truncated on input, so a well-formed value loses nothing). When
 * out is NULL it only measures; *nonzero tells whether any digit shown is
 * not 0, which decides if a minus sign may be printed. */
static size_t render_numeric(const char *dg, int nd, int weight, int dscale, bool *nonzero,
                             char *out) {
    size_t n = 0;
#define PUT(c)                        \
    do {                              \
        if (out) out[n] = (char)(c);  \
        n++;                          \
    } while (0)
    int d;
    if (weight < 0) {
        d = weight + 1;
        PUT('0');
    } else {
        for (d = 0; d <= weight; d++) {
            int dig = d < nd ? (int)aorm__get_be16(dg + 2 * d) : 0;
            if (dig) *nonzero = true;
            /* The first group drops its leading zeros (but keeps one). */
            int div = 1000;
            bool started = d > 0;
            for (int j = 0; j < 4; j++, div /= 10) {
                int c = dig / div % 10;
                started = started || c != 0 || j == 3;
                if (started) PUT('0' + c);
            }
        }
    }
    if (dscale > 0) {
        PUT('.');
        for (int i = 0; i < dscale; d++, i += 4) {
            int dig = (d >= 0 && d < nd) ? (int)aorm__get_be16(dg + 2 * d) : 0;
            int div = 1000;
            for (int j = 0; j < 4 && i + j < dscale; j++, div /= 10) {
                int c = dig / div % 10;
                if (c) *nonzero = true;
                PUT('0' + c);
            }
        }
    }
#undef PUT
    return n;
}

/* Hands `s` of length n to the caller under the cap/need protocol. */
static int numeric_out(const char *s, size_t n, char *buf, size_t cap, size_t *need) {
    if (need) *need = n;
    if (cap < n + 1) {
        if (cap) buf[0] = '\0';
        return AORM_ERANGE;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    return (int)n;
}

int aorm_decode_numeric(const char *v, int len, char *buf, size_t cap, size_t *need) {
    if ((!buf && cap) || (!v && len > 0)) return AORM_EMISUSE;
    if (len < 0) return AORM_ENULLVALUE;
    if (len < 8) return AORM_EPROTOCOL;
    int ndigits = (int16_t)aorm__get_be16(v);
    int weight = (int16_t)aorm__get_be16(v + 2);
    uint16_t sign = aorm__get_be16(v + 4);
    int dscale = (int16_t)aorm__get_be16(v + 6);
    if (ndigits < 0 || len != 8 + 2 * ndigits) return AORM_EPROTOCOL;
    if (dscale < 0 || dscale > NUMERIC_DSCALE_MAX) return AORM_EPROTOCOL;
    switch (sign) {
    case NUMERIC_NAN: return numeric_out("NaN", 3, buf, cap, need);
    case NUMERIC_PINF: return numeric_out("Infinity", 8, buf, cap, need);
    case NUMERIC_NINF: return numeric_out("-Infinity", 9, buf, cap, need);
    case NUMERIC_POS:
    case NUMERIC_NEG: break;
    default: return AORM_EPROTOCOL;
    }
    const char *dg = v + 8;
    /* Digits are int16 in 0..9999; read unsigned, a negative one is also
     * >= NBASE. */
    for (int i = 0; i < ndigits; i++)
        if (aorm__get_be16(dg + 2 * i) >= NUMERIC_NBASE) return AORM_EPROTOCOL;
    /* The server strips leading zero digits; a value that carries some
     * would otherwise print them ("00005"), so skip them here. */
    while (ndigits > 0 && aorm__get_be16(dg) == 0) {
        dg += 2;
        ndigits--;
        weight--;
    }
    /* No digits left: the value is zero, whatever weight was sent (the
     * server sends 0); a positive weight would print leading zeros. */
    if (ndigits == 0) weight = -1;
    bool nonzero = false;
    size_t body = render_numeric(dg, ndigits, weight, dscale, &nonzero, NULL);
    /* Zero never prints as "-0": the server has no negative zero. */
    bool minus = sign == NUMERIC_NEG && nonzero;
    size_t n = body + (minus ? 1 : 0);
    if (need) *need = n;
    if (cap < n + 1) {
        if (cap) buf[0] = '\0';
        return AORM_ERANGE;
    }
    char *at = buf;
    if (minus) *at++ = '-';
    render_numeric(dg, ndigits, weight, dscale, &nonzero, at);
    buf[n] = '\0';
    /* At most 4 * 32768 integer digits, a point and 16383 fraction
     * digits: always within int. */
    return (int)n;
}

/* =========================================================================
 * Typed getters
 * ========================================================================= */

/* The fixed-size getters are one table: for each, the column types it
 * accepts, the exact length its binary value must have (0: the decoder
 * checks), and the decoder that writes *out. get() is the one
 * fetch-then-check path they all take: out, range, NULL, type, format,
 * length, then the decode. */
typedef int (*decode_fn)(uint32_t type, const char *v, int len, void *out);

static int dec_bool(uint32_t t, const char *v, int len, void *out) {
    *(bool *)out = v[0] != 0; /* like the server's boolrecv(): any non-zero byte is true */
    return 0;
}

static int dec_int16(uint32_t t, const char *v, int len, void *out) {
    int64_t x;
    int rc = aorm_decode_int(t, v, len, &x);
    if (rc == 0) *(int16_t *)out = (int16_t)x;
    return rc;
}

static int dec_int32(uint32_t t, const char *v, int len, void *out) {
    int64_t x;
    int rc = aorm_decode_int(t, v, len, &x);
    if (rc == 0) *(int32_t *)out = (int32_t)x;
    return rc;
}

static int dec_int64(uint32_t t, const char *v, int len, void *out) { return aorm_decode_int(t, v, len, out); }

static int dec_float4(uint32_t t, const char *v, int len, void *out) {
    uint32_t bits = aorm__get_be32(v);
    memcpy(out, &bits, sizeof(float));
    return 0;
}

static int dec_float8(uint32_t t, const char *v, int len, void *out) { return aorm_decode_float8(t, v, len, out); }

static int dec_be32(uint32_t t, const char *v, int len, void *out) {
    *(int32_t *)out = (int32_t)aorm__get_be32(v);
    return 0;
}

static int dec_be64(uint32_t t, const char *v, int len, void *out) {
    *(int64_t *)out = (int64_t)aorm__get_be64(v);
    return 0;
}

static int dec_uuid(uint32_t t, const char *v, int len, void *out) {
    memcpy(out, v, 16);
    return 0;
}

enum { G_BOOL, G_INT16, G_INT32, G_INT64, G_FLOAT4, G_FLOAT8, G_DATE, G_TIMESTAMP, G_UUID };

static const struct getter {
    typeset ts;
    int len;
    decode_fn decode;
} getters[] = {
    [G_BOOL] = {{{AORM_T_BOOL}}, 1, dec_bool},
    [G_INT16] = {{{AORM_T_INT2}}, 0, dec_int16},
    [G_INT32] = {{{AORM_T_INT2, AORM_T_INT4}}, 0, dec_int32},
    [G_INT64] = {{{AORM_T_INT2, AORM_T_INT4, AORM_T_INT8, AORM_T_OID}}, 0, dec_int64},
    [G_FLOAT4] = {{{AORM_T_FLOAT4}}, 4, dec_float4},
    [G_FLOAT8] = {{{AORM_T_FLOAT8, AORM_T_FLOAT4}}, 0, dec_float8},
    [G_DATE] = {{{AORM_T_DATE}}, 4, dec_be32},
    [G_TIMESTAMP] = {{{AORM_T_TIMESTAMP, AORM_T_TIMESTAMPTZ}}, 8, dec_be64},
    [G_UUID] = {{{AORM_T_UUID}}, 16, dec_uuid},
};

static int get(const aorm_result *r, int row, int col, int kind, void *out) {
    if (!out) return AORM_EMISUSE;
    const struct getter *g = &getters[kind];
    uint32_t t;
    const char *v;
    int len;
    int rc = fetch(r, row, col, &g->ts, &t, &v, &len);
    if (rc) return rc;
    if (g->len && len != g->len) return AORM_EPROTOCOL;
    return g->decode(t, v, len, out);
}

int aorm_result_bool(const aorm_result *r, int row, int col, bool *out) { return get(r, row, col, G_BOOL, out); }
int aorm_result_int16(const aorm_result *r, int row, int col, int16_t *out) { return get(r, row, col, G_INT16, out); }
int aorm_result_int32(const aorm_result *r, int row, int col, int32_t *out) { return get(r, row, col, G_INT32, out); }
int aorm_result_int64(const aorm_result *r, int row, int col, int64_t *out) { return get(r, row, col, G_INT64, out); }
int aorm_result_float4(const aorm_result *r, int row, int col, float *out) { return get(r, row, col, G_FLOAT4, out); }
int aorm_result_float8(const aorm_result *r, int row, int col, double *out) { return get(r, row, col, G_FLOAT8, out); }
int aorm_result_date(const aorm_result *r, int row, int col, int32_t *out) { return get(r, row, col, G_DATE, out); }
int aorm_result_timestamp(const aorm_result *r, int row, int col, int64_t *out) {
    return get(r, row, col, G_TIMESTAMP, out);
}
int aorm_result_uuid(const aorm_result *r, int row, int col, uint8_t out[16]) { return get(r, row, col, G_UUID, out); }

/* Variable-length values: text (either format), bytea, numeric. */
int aorm_result_text(const aorm_result *r, int row, int col, const char **s, size_t *len) {
    static const typeset ts = {{AORM_T_TEXT, AORM_T_VARCHAR, AORM_T_BPCHAR, AORM_T_NAME,
                                AORM_T_UNKNOWN, AORM_T_JSON, AORM_T_JSONB}};
    if (!s) return AORM_EMISUSE;
    if (r && col >= 0 && col < r->ncols && PQfformat(r->pg, col) == 0) {
        /* a text-format column (AORM_EXEC_TEXT_RESULT, simple queries):
         * every type has a text form, and this is it */
        int isnull = aorm_result_is_null(r, row, col);
        if (isnull < 0) return isnull;
        if (isnull) return AORM_ENULLVALUE;
        *s = PQgetvalue(r->pg, row, col);
        if (len) *len = (size_t)PQgetlength(r->pg, row, col);
        return 0;
    }
    uint32_t t;
    const char *v;
    int n;
    bool binary;
    /* Text-like values read the same in either format, so a text-format
     * result (the simple query protocol has no other) is accepted here. */
    int rc = fetch_fmt(r, row, col, &ts, &t, &v, &n, &binary);
    if (rc) return rc;
    if (t == AORM_T_JSONB && binary) {
        /* Binary jsonb is a version byte, then the text. Version 1 is the
         * only one that exists; another would be a format we cannot read. */
        if (n < 1 || v[0] != 1) return AORM_EPROTOCOL;
        v++;
        n--;
    }
    *s = v;
    if (len) *len = (size_t)n;
    return 0;
}

int aorm_result_bytea(const aorm_result *r, int row, int col, const uint8_t **data, size_t *len) {
    static const typeset ts = {{AORM_T_BYTEA}};
    if (!data || !len) return AORM_EMISUSE;
    uint32_t t;
    const char *v;
    int n;
    int rc = fetch(r, row, col, &ts, &t, &v, &n);
    if (rc) return rc;
    *data = (const uint8_t *)v;
    *len = (size_t)n;
    return 0;
}

int aorm_result_numeric(const aorm_result *r, int row, int col, char *buf, size_t cap, size_t *need) {
    static const typeset ts = {{AORM_T_NUMERIC}};
    if (!buf && cap) return AORM_EMISUSE;
    uint32_t t;
    const char *v;
    int len;
    int rc = fetch(r, row, col, &ts, &t, &v, &len);
    if (rc) return rc;
    return aorm_decode_numeric(v, len, buf, cap, need);
}

/* =========================================================================
 * Arrays
 *
 * Binary array layout: int32 ndim, int32 has-null flag (0 or 1), uint32
 * element OID, then per dimension int32 length and int32 lower bound, then
 * per element int32 length (-1 for NULL) and that many bytes. Empty arrays
 * have ndim 0 and nothing after the element OID.
 * ========================================================================= */

/* Built-in array types and their element types: a column is read as an
 * array only if its type is one of these, so an arbitrary value (a bytea,
 * say) is never mistaken for an array header. */
static const struct {
    uint32_t array, elem;
} array_types[] = {
    {1000, AORM_T_BOOL},      {1001, AORM_T_BYTEA},     {1003, AORM_T_NAME},
    {AORM_T_INT2_ARRAY, AORM_T_INT2},                   {AORM_T_INT4_ARRAY, AORM_T_INT4},
    {AORM_T_TEXT_ARRAY, AORM_T_TEXT},                   {1014, AORM_T_BPCHAR},
    {1015, AORM_T_VARCHAR},   {AORM_T_INT8_ARRAY, AORM_T_INT8},
    {1021, AORM_T_FLOAT4},    {1022, AORM_T_FLOAT8},    {1028, AORM_T_OID},
    {1115, AORM_T_TIMESTAMP}, {1182, AORM_T_DATE},      {1185, AORM_T_TIMESTAMPTZ},
    {1231, AORM_T_NUMERIC},   {AORM_T_UUID_ARRAY, AORM_T_UUID},
    {199, AORM_T_JSON},       {3807, AORM_T_JSONB},
};

static uint32_t array_elem_type(uint32_t array) {
    for (size_t i = 0; i < AORM__ARRAY_LEN(array_types); i++)
        if (array_types[i].array == array) return array_types[i].elem;
    return 0;
}

/* Steps over one element at *cur, never past end. Returns 1 with *elem /
 * *len set (NULL / -1 for SQL NULL), 0 when *cur == end, AORM_EPROTOCOL
 * when the bytes left cannot hold what the length word claims. */
static int step_elem(const char **cur, const char *end, const char **elem, int *len) {
    const char *c = *cur;
    if (c == end) return 0;
    if (c > end || end - c < 4) return AORM_EPROTOCOL;
    int32_t n = (int32_t)aorm__get_be32(c);
    c += 4;
    if (n == -1) {
        *elem = NULL;
        *len = -1;
    } else {
        if (n < 0 || n > end - c) return AORM_EPROTOCOL;
        *elem = c;
        *len = n;
        c += n;
    }
    *cur = c;
    return 1;
}

/* Parses and fully validates an array value; `expect` is the element type
 * the column's type implies (0 to accept any). */
static int parse_array(const char *v, int len, uint32_t expect, aorm_array *out) {
    if (len < 12) return AORM_EPROTOCOL;
    int32_t ndim = (int32_t)aorm__get_be32(v);
    int32_t flags = (int32_t)aorm__get_be32(v + 4);
    uint32_t elem = aorm__get_be32(v + 8);
    if (ndim < 0) return AORM_EPROTOCOL;
    if (ndim > 1) return AORM_ETYPE;
    if (flags != 0 && flags != 1) return AORM_EPROTOCOL;
    if (expect && elem != expect) return AORM_EPROTOCOL;
    aorm_array a = {.elem_type = elem, .has_nulls = flags};
    const char *end = v + len;
    if (ndim == 0) {
        if (len != 12) return AORM_EPROTOCOL;
        a.data = a.end = a.cursor = end;
        *out = a;
        return 0;
    }
    if (len < 20) return AORM_EPROTOCOL;
    int32_t count = (int32_t)aorm__get_be32(v + 12);
    /* Each element takes at least its 4-byte length word: a count larger
     * than that allows is a lie, refused before walking anything. */
    if (count < 0 || count > (len - 20) / 4) return AORM_EPROTOCOL;
    const char *cur = v + 20;
    for (int32_t i = 0; i < count; i++) {
        const char *e;
        int n;
        if (step_elem(&cur, end, &e, &n) != 1) return AORM_EPROTOCOL;
    }
    if (cur != end) return AORM_EPROTOCOL;
    a.count = count;
    a.data = a.cursor = v + 20;
    a.end = end;
    *out = a;
    return 0;
}

int aorm_decode_array(const char *v, int len, uint32_t elem, aorm_array *out) {
    if (!out || (!v && len > 0) || len < 0) return AORM_EMISUSE;
    return parse_array(v, len, elem, out);
}

int aorm_decode_interval(const char *v, int len, aorm_interval *out) {
    if (!out || (!v && len > 0)) return AORM_EMISUSE;
    if (len != 16) return AORM_EPROTOCOL;
    out->usecs = (int64_t)aorm__get_be64(v);
    out->days = (int32_t)aorm__get_be32(v + 8);
    out->months = (int32_t)aorm__get_be32(v + 12);
    return 0;
}

int aorm_decode_inet(const char *v, int len, aorm_inet *out) {
    if (!out || (!v && len > 0)) return AORM_EMISUSE;
    if (len < 4) return AORM_EPROTOCOL;
    uint8_t fam = (uint8_t)v[0], bits = (uint8_t)v[1], nb = (uint8_t)v[3];
    size_t want = fam == 2 ? 4 : fam == 3 ? 16 : 0;
    if (!want || nb != want || (size_t)len != 4 + want || bits > want * 8 || (v[2] != 0 && v[2] != 1))
        return AORM_EPROTOCOL;
    aorm_inet a;
    memset(&a, 0, sizeof(a));
    a.family = want == 4 ? AORM_INET_V4 : AORM_INET_V6;
    a.bits = bits;
    memcpy(a.addr, v + 4, want);
    *out = a;
    return 0;
}

static int raw_of(const aorm_result *r, int row, int col, uint32_t t1, uint32_t t2, const char **v, int *len) {
    int rc = check_cell(r, row, col);
    if (rc) return rc;
    if (PQgetisnull(r->pg, row, col)) return AORM_ENULLVALUE;
    uint32_t t = (uint32_t)PQftype(r->pg, col);
    if (t != t1 && t != t2) return AORM_ETYPE;
    if (PQfformat(r->pg, col) != 1) return AORM_EPROTOCOL;
    *v = PQgetvalue(r->pg, row, col);
    *len = PQgetlength(r->pg, row, col);
    return 0;
}

int aorm_result_interval(const aorm_result *r, int row, int col, aorm_interval *out) {
    const char *v;
    int len, rc;
    if (!out) return AORM_EMISUSE;
    if ((rc = raw_of(r, row, col, AORM_T_INTERVAL, AORM_T_INTERVAL, &v, &len))) return rc;
    return aorm_decode_interval(v, len, out);
}

int aorm_result_inet(const aorm_result *r, int row, int col, aorm_inet *out) {
    const char *v;
    int len, rc;
    if (!out) return AORM_EMISUSE;
    if ((rc = raw_of(r, row, col, AORM_T_INET, AORM_T_CIDR, &v, &len))) return rc;
    return aorm_decode_inet(v, len, out);
}

int aorm_result_array(const aorm_result *r, int row, int col, aorm_array *out) {
    if (!out) return AORM_EMISUSE;
    int rc = check_cell(r, row, col);
    if (rc) return rc;
    if (PQgetisnull(r->pg, row, col)) return AORM_ENULLVALUE;
    uint32_t elem = array_elem_type((uint32_t)PQftype(r->pg, col));
    if (!elem) return AORM_ETYPE;
    if (PQfformat(r->pg, col) != 1) return AORM_EPROTOCOL;
    return parse_array(PQgetvalue(r->pg, row, col), PQgetlength(r->pg, row, col), elem, out);
}

/* A zeroed cursor means "not started", so an aorm_array filled by hand
 * ({data, end, count}) iterates from its first element. */
int aorm_array_next(aorm_array *a, const char **elem, int *len) {
    if (!a || !elem || !len) return AORM_EMISUSE;
    if (!a->data || !a->end) return (a->data || a->end) ? AORM_EPROTOCOL : 0;
    if (!a->cursor) a->cursor = a->data;
    if (a->data > a->end || a->cursor < a->data) return AORM_EPROTOCOL;
    return step_elem(&a->cursor, a->end, elem, len);
}

/* Walks all a->count elements from the start (a's own cursor is left
 * alone) and hands each integer to put(). The walk must consume the
 * element bytes exactly. On error, out[] may be partly written. */
static int array_ints(const aorm_array *a, bool *nulls, int cap,
                      int (*put)(int i, int64_t v, void *out), void *out) {
    if (!a || cap < 0) return AORM_EMISUSE;
    if (a->count < 0) return AORM_EPROTOCOL;
    if (a->count > cap) return AORM_ERANGE;
    if (a->count > 0 && !out) return AORM_EMISUSE;
    switch (a->elem_type) {
    case AORM_T_INT2:
    case AORM_T_INT4:
    case AORM_T_INT8:
    case AORM_T_OID: break;
    default: return AORM_ETYPE;
    }
    if (a->count == 0) return 0;
    if (!a->data || !a->end || a->data > a->end) return AORM_EPROTOCOL;
    const char *cur = a->data;
    for (int i = 0; i < a->count; i++) {
        const char *e;
        int n;
        if (step_elem(&cur, a->end, &e, &n) != 1) return AORM_EPROTOCOL;
        int64_t x = 0;
        if (n < 0) {
            if (!nulls) return AORM_ENULLVALUE;
            nulls[i] = true;
        } else {
            int rc = aorm_decode_int(a->elem_type, e, n, &x);
            if (rc) return rc;
            if (nulls) nulls[i] = false;
        }
        int rc = put(i, x, out);
        if (rc) return rc;
    }
    if (cur != a->end) return AORM_EPROTOCOL;
    return a->count;
}

static int put_i64(int i, int64_t v, void *out) {
    ((int64_t *)out)[i] = v;
    return 0;
}

static int put_i32(int i, int64_t v, void *out) {
    if (v < INT32_MIN || v > INT32_MAX) return AORM_ERANGE;
    ((int32_t *)out)[i] = (int32_t)v;
    return 0;
}

int aorm_array_int64s(const aorm_array *a, int64_t *out, bool *nulls, int cap) {
    return array_ints(a, nulls, cap, put_i64, out);
}

/* int8 (and oid) elements are accepted and each must fit int32. */
int aorm_array_int32s(const aorm_array *a, int32_t *out, bool *nulls, int cap) {
    return array_ints(a, nulls, cap, put_i32, out);
}

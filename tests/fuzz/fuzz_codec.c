/* fuzz_codec.c -- the binary codecs: every typed result getter, the array
 * walker, the single-value decoders, loading values into model fields
 * (aorm__field_load, aorm_stmt_load), and the text-side encoders whose
 * output the decoders read back (numeric, uuid, dates, timestamps).
 *
 * The first input byte picks a mode:
 *   0..191  cells: up to 8 result columns, each with a type OID (one of
 *           the types aorm knows, or any 32-bit OID), a format (binary or
 *           text), NULL or a value of arbitrary bytes and length, put into
 *           a real PGresult (PQmakeEmptyPGresult + PQsetvalue) and read
 *           with every getter and decoder, whatever the column's type;
 *   192..223 a decimal string through aorm_params_numeric;
 *   224..239 a uuid string through aorm_params_uuid_str;
 *   240..255 dates and timestamps through the calendar helpers.
 * Invariants: getters return 0 or one of their documented codes; what
 * they return is consistent with the bytes (lengths, NUL terminators,
 * integer getters agreeing with each other, array elements inside the
 * value); a decoded numeric re-encodes and decodes to itself; an encoded
 * decimal decodes to the same number; a failed field load leaves the
 * object untouched; calendar conversions round-trip. */
#include <math.h>

#include <libpq-fe.h>

#include "fuzz.h"
#include "aorm/aorm.h"
#include "async_engine/result_int.h"
#include "mapping/mapping.h"

/* ==========================================================================
 * A model with a field of every type, plain and NULLABLE
 * ========================================================================== */

typedef struct fz_obj {
    int64_t id;
    bool b;
    int16_t i2;
    int32_t i4;
    int64_t i8;
    float f4;
    double f8;
    char *num;
    char *txt;
    aorm_bytes bin;
    int32_t day;
    int64_t ts;
    int64_t tstz;
    aorm_uuid u;
    char *js;
    char *jsb;
    aorm_opt_bool nb;
    aorm_opt_int16 ni2;
    aorm_opt_int32 ni4;
    aorm_opt_int64 ni8;
    aorm_opt_float nf4;
    aorm_opt_double nf8;
    char *nnum;
    char *ntxt;
    aorm_opt_int32 nday;
    aorm_opt_int64 nts;
    aorm_opt_uuid nu;
    char *njs;
} fz_obj;

static const aorm_column fz_obj_columns[] = {
    AORM_COLUMN(fz_obj, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(fz_obj, b, AORM_BOOL, 0),
    AORM_COLUMN(fz_obj, i2, AORM_INT2, 0),
    AORM_COLUMN(fz_obj, i4, AORM_INT4, 0),
    AORM_COLUMN(fz_obj, i8, AORM_INT8, 0),
    AORM_COLUMN(fz_obj, f4, AORM_FLOAT4, 0),
    AORM_COLUMN(fz_obj, f8, AORM_FLOAT8, 0),
    AORM_COLUMN(fz_obj, num, AORM_NUMERIC, 0),
    AORM_COLUMN(fz_obj, txt, AORM_TEXT, 0),
    AORM_COLUMN(fz_obj, bin, AORM_BYTEA, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, day, AORM_DATE, 0),
    AORM_COLUMN(fz_obj, ts, AORM_TIMESTAMP, 0),
    AORM_COLUMN(fz_obj, tstz, AORM_TIMESTAMPTZ, 0),
    AORM_COLUMN(fz_obj, u, AORM_UUID, 0),
    AORM_COLUMN(fz_obj, js, AORM_JSON, 0),
    AORM_COLUMN(fz_obj, jsb, AORM_JSONB, 0),
    AORM_COLUMN(fz_obj, nb, AORM_BOOL, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, ni2, AORM_INT2, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, ni4, AORM_INT4, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, ni8, AORM_INT8, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, nf4, AORM_FLOAT4, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, nf8, AORM_FLOAT8, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, nnum, AORM_NUMERIC, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, ntxt, AORM_TEXT, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, nday, AORM_DATE, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, nts, AORM_TIMESTAMP, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, nu, AORM_UUID, AORM_NULLABLE),
    AORM_COLUMN(fz_obj, njs, AORM_JSONB, AORM_NULLABLE),
};
static const aorm_model fz_obj_model = {
    AORM_MODEL_OF(fz_obj, "objs"),
    AORM_COLUMNS(fz_obj_columns),
};
#define NCOLS ((int)(sizeof(fz_obj_columns) / sizeof(fz_obj_columns[0])))

/* Type OIDs the cells pick from: every scalar and array type the getters
 * name, and a few they do not. */
static const uint32_t known_oids[] = {
    AORM_T_BOOL, AORM_T_BYTEA, AORM_T_NAME, AORM_T_INT8, AORM_T_INT2, AORM_T_INT4, AORM_T_TEXT, AORM_T_OID,
    AORM_T_JSON, AORM_T_FLOAT4, AORM_T_FLOAT8, AORM_T_UNKNOWN, AORM_T_BPCHAR, AORM_T_VARCHAR, AORM_T_DATE,
    AORM_T_TIMESTAMP, AORM_T_TIMESTAMPTZ, AORM_T_NUMERIC, AORM_T_UUID, AORM_T_JSONB,
    /* arrays */
    1000, 1001, 1003, AORM_T_INT2_ARRAY, AORM_T_INT4_ARRAY, AORM_T_TEXT_ARRAY, 1014, 1015, AORM_T_INT8_ARRAY,
    1021, 1022, 1028, 1115, 1182, 1185, 1231, AORM_T_UUID_ARRAY, 199, 3807,
    /* no codec */
    0, 18, 700 + 1, 1186, 1266, 3904};
#define NKNOWN ((int)(sizeof(known_oids) / sizeof(known_oids[0])))

/* ==========================================================================
 * Numeric helpers
 * ========================================================================== */

/* A decimal in canonical form: sign, significant digits (no leading or
 * trailing zeros; empty for zero) and the power of ten of the last one. */
typedef struct dec {
    bool neg;
    char *digits;
    int64_t exp10;
    int special; /* 0 finite, 1 NaN, 2 +inf, 3 -inf */
} dec;

static bool ieq(const char *a, const char *b) {
    for (; *a && *b; a++, b++) {
        char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
        char y = *b >= 'A' && *b <= 'Z' ? (char)(*b + 32) : *b;
        if (x != y) return false;
    }
    return *a == *b;
}

/* Parses a string aorm_params_numeric accepted (or a decoder's output). */
static dec dec_parse(const char *s) {
    dec d = {0};
    if (ieq(s, "NaN")) {
        d.special = 1;
        return d;
    }
    if (*s == '+' || *s == '-') d.neg = *s++ == '-';
    if (ieq(s, "Infinity") || ieq(s, "inf")) {
        d.special = d.neg ? 3 : 2;
        d.neg = false;
        return d;
    }
    size_t n = strlen(s);
    d.digits = malloc(n + 1);
    FUZZ_CHECK(d.digits, "out of memory");
    size_t k = 0;
    int64_t nfrac = 0;
    bool frac = false;
    for (; *s && *s != 'e' && *s != 'E'; s++) {
        if (*s == '.') {
            frac = true;
            continue;
        }
        d.digits[k++] = *s;
        if (frac) nfrac++;
    }
    int64_t exp = 0;
    if (*s) {
        s++;
        bool eneg = false;
        if (*s == '+' || *s == '-') eneg = *s++ == '-';
        for (; *s; s++) exp = exp * 10 + (*s - '0');
        if (eneg) exp = -exp;
    }
    d.digits[k] = '\0';
    size_t lead = 0;
    while (d.digits[lead] == '0') lead++;
    memmove(d.digits, d.digits + lead, k - lead + 1);
    k -= lead;
    d.exp10 = exp - nfrac;
    while (k > 0 && d.digits[k - 1] == '0') {
        d.digits[--k] = '\0';
        d.exp10++;
    }
    if (k == 0) {
        d.neg = false;
        d.exp10 = 0;
    }
    return d;
}

static bool dec_equal(const dec *a, const dec *b) {
    if (a->special || b->special) return a->special == b->special;
    return a->neg == b->neg && a->exp10 == b->exp10 && strcmp(a->digits, b->digits) == 0;
}

/* Decodes a binary numeric into a malloc'd string through the cap/need
 * protocol; NULL when the bytes are refused (*rc says why). */
static char *numeric_string(const char *v, int len, int *rc) {
    size_t need = 0;
    *rc = aorm_decode_numeric(v, len, NULL, 0, &need);
    if (*rc != AORM_ERANGE) {
        FUZZ_CHECK(*rc == AORM_EPROTOCOL || *rc == AORM_ENULLVALUE, "sizing call returned %s", aorm_errname(*rc));
        return NULL;
    }
    char *s = malloc(need + 1);
    FUZZ_CHECK(s, "out of memory");
    /* one byte short must be refused with an empty string */
    if (need > 0) {
        size_t n2 = 7;
        int r2 = aorm_decode_numeric(v, len, s, need, &n2);
        FUZZ_CHECK(r2 == AORM_ERANGE && s[0] == '\0' && n2 == need, "short buffer: %s", aorm_errname(r2));
    }
    *rc = aorm_decode_numeric(v, len, s, need + 1, NULL);
    FUZZ_CHECK(*rc == (int)need && strlen(s) == need, "decoded %d bytes, measured %zu", *rc, need);
    return s;
}

/* A decoded numeric string encodes, and decodes back to itself. */
static void numeric_fixpoint(const char *s) {
    aorm_params p;
    aorm_params_init(&p);
    int rc = aorm_params_numeric(&p, s);
    FUZZ_CHECK(rc == 0, "decoded numeric \"%.80s\" does not encode: %s", s, aorm_errname(rc));
    char *t = numeric_string(p.data + p.slots[0].offset, p.slots[0].len, &rc);
    FUZZ_CHECK(t && strcmp(s, t) == 0, "numeric \"%.80s\" came back as \"%.80s\"", s, t ? t : "(refused)");
    free(t);
    aorm_params_free(&p);
}

/* ==========================================================================
 * Cells
 * ========================================================================== */

static bool is_code(int rc, int a, int b, int c, int d) {
    return rc == 0 || rc == a || rc == b || rc == c || rc == d;
}

#define GETTER_CODES(rc) is_code(rc, AORM_ETYPE, AORM_ENULLVALUE, AORM_EPROTOCOL, AORM_ERANGE)

static void check_array(const aorm_result *r, int col) {
    aorm_array a;
    int rc = aorm_result_array(r, 0, col, &a);
    FUZZ_CHECK(GETTER_CODES(rc), "array getter: %s", aorm_errname(rc));
    if (rc) return;
    const char *v;
    int len;
    aorm_result_raw(r, 0, col, &v, &len);
    FUZZ_CHECK(a.count >= 0 && a.data >= v && a.end == v + len && a.data <= a.end, "array bounds");
    int n = 0;
    const char *e;
    int el;
    bool nulls_seen = false;
    while ((rc = aorm_array_next(&a, &e, &el)) == 1) {
        FUZZ_CHECK(el == -1 ? e == NULL : (e >= a.data && e + el <= a.end), "element %d outside its array", n);
        if (el == -1) nulls_seen = true;
        /* the elements through the single-value decoders of their type */
        int64_t x;
        double d;
        int erc;
        switch (a.elem_type) {
        case AORM_T_NUMERIC: {
            char *ns = numeric_string(e, el, &erc);
            if (ns) {
                numeric_fixpoint(ns);
                free(ns);
            }
            break;
        }
        case AORM_T_FLOAT4:
        case AORM_T_FLOAT8:
            erc = aorm_decode_float8(a.elem_type, e, el, &d);
            FUZZ_CHECK(is_code(erc, AORM_EPROTOCOL, AORM_ENULLVALUE, 0, 0), "float element: %s", aorm_errname(erc));
            break;
        default:
            erc = aorm_decode_int(a.elem_type, e, el, &x);
            FUZZ_CHECK(is_code(erc, AORM_EPROTOCOL, AORM_ENULLVALUE, AORM_ETYPE, 0), "int element: %s",
                       aorm_errname(erc));
            break;
        }
        n++;
    }
    FUZZ_CHECK(rc == 0 && n == a.count, "walked %d elements of %d (%s)", n, a.count, aorm_errname(rc));
    FUZZ_CHECK(aorm_array_next(&a, &e, &el) == 0, "walk does not stay at its end");
    (void)nulls_seen;
    int cap = a.count ? a.count : 1;
    int64_t *i64 = calloc((size_t)cap, sizeof(*i64));
    int32_t *i32 = calloc((size_t)cap, sizeof(*i32));
    bool *nl = calloc((size_t)cap, sizeof(*nl));
    FUZZ_CHECK(i64 && i32 && nl, "out of memory");
    int r64 = aorm_array_int64s(&a, i64, nl, cap);
    FUZZ_CHECK(r64 == a.count || GETTER_CODES(r64), "int64s: %s", aorm_errname(r64));
    if (r64 == a.count) {
        aorm_array w = a;
        w.cursor = NULL;
        for (int i = 0; i < a.count; i++) {
            FUZZ_CHECK(aorm_array_next(&w, &e, &el) == 1, "re-walk");
            int64_t x = 0;
            if (el >= 0) FUZZ_CHECK(aorm_decode_int(a.elem_type, e, el, &x) == 0 && x == i64[i], "element %d", i);
            FUZZ_CHECK(nl[i] == (el < 0), "NULL flag of element %d", i);
        }
        int r32 = aorm_array_int32s(&a, i32, nl, cap);
        FUZZ_CHECK(r32 == a.count || r32 == AORM_ERANGE, "int32s after int64s: %s", aorm_errname(r32));
        for (int i = 0; r32 == a.count && i < a.count; i++)
            FUZZ_CHECK(nl[i] || i32[i] == i64[i], "int32 element %d differs", i);
        if (a.count > 0) FUZZ_CHECK(aorm_array_int64s(&a, i64, nl, a.count - 1) == AORM_ERANGE, "cap ignored");
    }
    free(i64);
    free(i32);
    free(nl);
}

static void check_cell(const aorm_result *r, int col) {
    const char *v;
    int len;
    FUZZ_CHECK(aorm_result_raw(r, 0, col, &v, &len) == 0, "raw");
    uint32_t oid = aorm_result_col_type(r, col);
    bool binary = PQfformat(aorm_result_pgresult(r), col) == 1;
    int rc;

    bool b;
    rc = aorm_result_bool(r, 0, col, &b);
    FUZZ_CHECK(GETTER_CODES(rc), "bool: %s", aorm_errname(rc));
    int16_t i16;
    int32_t i32;
    int64_t i64;
    int r16 = aorm_result_int16(r, 0, col, &i16);
    int r32 = aorm_result_int32(r, 0, col, &i32);
    int r64 = aorm_result_int64(r, 0, col, &i64);
    FUZZ_CHECK(GETTER_CODES(r16) && GETTER_CODES(r32) && GETTER_CODES(r64), "int getters");
    if (r16 == 0) FUZZ_CHECK(r32 == 0 && i32 == i16, "int16 and int32 disagree");
    if (r32 == 0) FUZZ_CHECK(r64 == 0 && i64 == i32, "int32 and int64 disagree");
    if (r64 == 0) {
        int64_t x;
        FUZZ_CHECK(aorm_decode_int(oid, v, len, &x) == 0 && x == i64, "decode_int disagrees");
    }
    float f4;
    double f8;
    int rf4 = aorm_result_float4(r, 0, col, &f4);
    int rf8 = aorm_result_float8(r, 0, col, &f8);
    FUZZ_CHECK(GETTER_CODES(rf4) && GETTER_CODES(rf8), "float getters");
    if (rf4 == 0) FUZZ_CHECK(rf8 == 0 && (isnan(f4) ? isnan(f8) : (double)f4 == f8), "float4 and float8 disagree");

    const char *s;
    size_t sl = 12345;
    rc = aorm_result_text(r, 0, col, &s, &sl);
    FUZZ_CHECK(GETTER_CODES(rc), "text: %s", aorm_errname(rc));
    if (rc == 0) {
        FUZZ_CHECK(s >= v && s + sl == v + len && s[sl] == '\0', "text is not the value's tail");
        FUZZ_CHECK(aorm_result_text(r, 0, col, &s, NULL) == 0, "text without a length");
    }
    const uint8_t *by;
    size_t byl;
    rc = aorm_result_bytea(r, 0, col, &by, &byl);
    FUZZ_CHECK(GETTER_CODES(rc), "bytea: %s", aorm_errname(rc));
    if (rc == 0) FUZZ_CHECK((const char *)by == v && byl == (size_t)len, "bytea is not the value");

    char small[8];
    size_t need = 0;
    rc = aorm_result_numeric(r, 0, col, small, sizeof(small), &need);
    FUZZ_CHECK(rc >= 0 || GETTER_CODES(rc), "numeric: %s", aorm_errname(rc));
    if (rc >= 0) FUZZ_CHECK((size_t)rc == need && strlen(small) == need, "numeric length");
    if (rc == AORM_ERANGE && need >= sizeof(small)) {
        char *big = malloc(need + 1);
        FUZZ_CHECK(big, "out of memory");
        FUZZ_CHECK(aorm_result_numeric(r, 0, col, big, need + 1, NULL) == (int)need, "numeric with room");
        numeric_fixpoint(big);
        free(big);
    } else if (rc >= 0) {
        numeric_fixpoint(small);
    }

    int32_t day;
    rc = aorm_result_date(r, 0, col, &day);
    FUZZ_CHECK(GETTER_CODES(rc), "date: %s", aorm_errname(rc));
    if (rc == 0 && day != AORM_DATE_INFINITY && day != AORM_DATE_NEG_INFINITY) {
        int y, m, d;
        aorm_date_to_ymd(day, &y, &m, &d);
        FUZZ_CHECK(aorm_date_from_ymd(y, m, d) == day, "date %d -> %d-%d-%d does not come back", day, y, m, d);
    }
    int64_t ts;
    rc = aorm_result_timestamp(r, 0, col, &ts);
    FUZZ_CHECK(GETTER_CODES(rc), "timestamp: %s", aorm_errname(rc));
    uint8_t u[16];
    rc = aorm_result_uuid(r, 0, col, u);
    FUZZ_CHECK(GETTER_CODES(rc), "uuid: %s", aorm_errname(rc));
    if (rc == 0) FUZZ_CHECK(len == 16 && memcmp(u, v, 16) == 0, "uuid is not the value");
    check_array(r, col);

    /* The decoders alone, under every type. */
    if (len >= 0 && binary) {
        double d8;
        rc = aorm_decode_float8(oid, v, len, &d8);
        FUZZ_CHECK(is_code(rc, AORM_ETYPE, AORM_EPROTOCOL, 0, 0), "decode_float8: %s", aorm_errname(rc));
        int nrc;
        char *ns = numeric_string(v, len, &nrc);
        if (ns) {
            numeric_fixpoint(ns);
            free(ns);
        }
    }

    /* Every field of the model, plain and NULLABLE. */
    for (int k = 0; k < NCOLS; k++) {
        const aorm_column *c = &fz_obj_columns[k];
        fz_obj obj, before;
        memset(&obj, 0, sizeof(obj));
        before = obj;
        rc = aorm__field_load(c, &obj, oid, v, len, NULL);
        FUZZ_CHECK(is_code(rc, AORM_ETYPE, AORM_ENULLVALUE, AORM_EPROTOCOL, AORM_ERANGE), "load %s: %s", c->name,
                   aorm_errname(rc));
        if (rc) FUZZ_CHECK(memcmp(&obj, &before, sizeof(obj)) == 0, "a failed load of %s changed the object", c->name);
        if (rc == 0 && c->type == AORM_NUMERIC && !aorm__field_is_null(c, &obj))
            numeric_fixpoint(*(char **)aorm__field(c, &obj));
        aorm_model_free_fields(&fz_obj_model, &obj);
    }
}

static void run_cells(fuzz_in *in) {
    int ncols = 1 + fuzz_u8(in) % 8;
    PGresult *pg = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    FUZZ_CHECK(pg, "out of memory");
    PGresAttDesc attrs[8];
    char names[8][32];
    struct {
        bool null;
        const uint8_t *v;
        size_t len;
    } cells[8];
    for (int i = 0; i < ncols; i++) {
        uint8_t sel = fuzz_u8(in);
        uint8_t flags = fuzz_u8(in);
        uint32_t oid = sel < 2 * NKNOWN ? known_oids[sel % NKNOWN] : fuzz_u32(in);
        size_t max = fuzz_u16(in) % 4096;
        cells[i].null = (flags & 3) == 3;
        cells[i].v = fuzz_bytes(in, max, &cells[i].len);
        /* result column names are the model's, so aorm_stmt_load finds them */
        snprintf(names[i], sizeof(names[i]), "%s", fz_obj_columns[(flags >> 3) % NCOLS].name);
        attrs[i] = (PGresAttDesc){.name = names[i], .format = (flags & 4) ? 0 : 1, .typid = oid, .typlen = -1,
                                  .atttypmod = -1};
    }
    FUZZ_CHECK(PQsetResultAttrs(pg, ncols, attrs), "PQsetResultAttrs");
    for (int i = 0; i < ncols; i++)
        FUZZ_CHECK(PQsetvalue(pg, 0, i, cells[i].null ? NULL : (char *)(uintptr_t)cells[i].v,
                              cells[i].null ? -1 : (int)cells[i].len),
                   "PQsetvalue");
    aorm_result r;
    aorm__result_init(&r, pg);
    FUZZ_CHECK(aorm_result_nrows(&r) == 1 && aorm_result_ncols(&r) == ncols, "shape");
    for (int i = 0; i < ncols; i++) check_cell(&r, i);

    /* Out of range cells are ERANGE, never a read. */
    int32_t x;
    FUZZ_CHECK(aorm_result_int32(&r, 1, 0, &x) == AORM_ERANGE && aorm_result_int32(&r, 0, ncols, &x) == AORM_ERANGE &&
                   aorm_result_int32(&r, -1, 0, &x) == AORM_ERANGE,
               "out of range cell");

    /* The whole row into an object, columns found by name. */
    aorm_stmt *q = aorm_raw("SELECT 1");
    fz_obj obj;
    memset(&obj, 0, sizeof(obj));
    int rc = aorm_stmt_load(q, &r, 0, &fz_obj_model, &obj, NULL);
    FUZZ_CHECK(is_code(rc, AORM_ETYPE, AORM_ENULLVALUE, AORM_EPROTOCOL, AORM_ERANGE), "stmt_load: %s",
               aorm_errname(rc));
    aorm_model_free_fields(&fz_obj_model, &obj);
    aorm_stmt_free(q);
    PQclear(pg);
}

/* ==========================================================================
 * Encoders
 * ========================================================================== */

static char *input_string(fuzz_in *in, size_t max) {
    size_t n;
    const uint8_t *p = fuzz_bytes(in, max, &n);
    char *s = malloc(n + 1);
    FUZZ_CHECK(s, "out of memory");
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static void run_numeric_text(fuzz_in *in) {
    char *s = input_string(in, 1u << 16);
    aorm_params p;
    aorm_params_init(&p);
    int rc = aorm_params_numeric(&p, s);
    FUZZ_CHECK(is_code(rc, AORM_EENCODING, AORM_ERANGE, 0, 0), "numeric encoder: %s", aorm_errname(rc));
    FUZZ_CHECK(aorm_params_count(&p) == (rc == 0), "a refused numeric left a slot");
    if (rc == 0) {
        int drc;
        char *t = numeric_string(p.data + p.slots[0].offset, p.slots[0].len, &drc);
        FUZZ_CHECK(t, "encoded \"%.80s\" does not decode: %s", s, aorm_errname(drc));
        dec a = dec_parse(s), b = dec_parse(t);
        FUZZ_CHECK(dec_equal(&a, &b), "\"%.80s\" came back as \"%.80s\"", s, t);
        free(a.digits);
        free(b.digits);
        numeric_fixpoint(t);
        free(t);
    }
    aorm_params_free(&p);
    free(s);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void run_uuid_text(fuzz_in *in) {
    char *s = input_string(in, 64);
    aorm_params p;
    aorm_params_init(&p);
    int rc = aorm_params_uuid_str(&p, s);
    FUZZ_CHECK(is_code(rc, AORM_EENCODING, 0, 0, 0), "uuid encoder: %s", aorm_errname(rc));
    if (rc == 0) {
        const uint8_t *u = (const uint8_t *)p.data + p.slots[0].offset;
        FUZZ_CHECK(p.slots[0].len == 16, "uuid of %d bytes", p.slots[0].len);
        size_t n = strlen(s), k = 0;
        FUZZ_CHECK(n == 32 || n == 36, "accepted a uuid of %zu characters", n);
        for (size_t i = 0; i < n; i++) {
            if (n == 36 && (i == 8 || i == 13 || i == 18 || i == 23)) {
                FUZZ_CHECK(s[i] == '-', "accepted '%c' for a hyphen", s[i]);
                continue;
            }
            int h = hexval(s[i]);
            FUZZ_CHECK(h >= 0, "accepted a non-hex digit");
            int got = k % 2 ? u[k / 2] & 15 : u[k / 2] >> 4;
            FUZZ_CHECK(got == h, "digit %zu differs", k);
            k++;
        }
    }
    aorm_params_free(&p);
    free(s);
}

static int days_in_month(int64_t y, int m) {
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

static void run_dates(fuzz_in *in) {
    int32_t day = (int32_t)fuzz_u32(in);
    int y, m, d;
    aorm_date_to_ymd(day, &y, &m, &d);
    if (day != AORM_DATE_INFINITY && day != AORM_DATE_NEG_INFINITY) {
        FUZZ_CHECK(m >= 1 && m <= 12 && d >= 1 && d <= days_in_month(y, m), "date %d gave %d-%d-%d", day, y, m, d);
        FUZZ_CHECK(aorm_date_from_ymd(y, m, d) == day, "date %d -> %d-%d-%d does not come back", day, y, m, d);
    }
    /* any ints: no overflow, and a real calendar date comes back */
    int yy = (int32_t)fuzz_u32(in), mm = (int8_t)fuzz_u8(in), dd = (int8_t)fuzz_u8(in);
    int32_t j = aorm_date_from_ymd(yy, mm, dd);
    if (yy > -5000000 && yy < 5000000 && mm >= 1 && mm <= 12 && dd >= 1 && dd <= days_in_month(yy, mm)) {
        aorm_date_to_ymd(j, &y, &m, &d);
        FUZZ_CHECK(y == yy && m == mm && d == dd, "%d-%d-%d -> %d -> %d-%d-%d", yy, mm, dd, j, y, m, d);
        /* consecutive days are consecutive numbers */
        if (dd < days_in_month(yy, mm)) FUZZ_CHECK(aorm_date_from_ymd(yy, mm, dd + 1) == j + 1, "next day");
    }
    int64_t ts = (int64_t)fuzz_u64(in);
    int64_t unix_us = aorm_timestamp_to_unix_us(ts);
    if (ts > INT64_MIN + INT64_C(1000000000000000) && ts < INT64_MAX - INT64_C(1000000000000000))
        FUZZ_CHECK(aorm_timestamp_from_unix_us(unix_us) == ts, "timestamp %lld does not come back", (long long)ts);
    if (ts == AORM_TIMESTAMP_INFINITY || ts == AORM_TIMESTAMP_NEG_INFINITY)
        FUZZ_CHECK(unix_us == ts && aorm_timestamp_from_unix_us(ts) == ts, "infinity changed");
    else
        FUZZ_CHECK(unix_us != AORM_TIMESTAMP_INFINITY && unix_us != AORM_TIMESTAMP_NEG_INFINITY &&
                       aorm_timestamp_from_unix_us(ts) != AORM_TIMESTAMP_INFINITY &&
                       aorm_timestamp_from_unix_us(ts) != AORM_TIMESTAMP_NEG_INFINITY,
                   "a finite timestamp became infinity");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    uint8_t mode = fuzz_u8(&in);
    if (mode < 192) run_cells(&in);
    else if (mode < 224) run_numeric_text(&in);
    else if (mode < 240) run_uuid_text(&in);
    else run_dates(&in);
    return 0;
}

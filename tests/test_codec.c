/* test_codec.c -- binary codecs of result.h against a real PostgreSQL.
 *
 * Each round trip encodes values with an aorm_params builder, sends them
 * with PQexecParams() asking for binary results, wraps the PGresult in an
 * aorm_result and reads the values back with the typed getters. Where the
 * server has its own rendering (numeric, dates, uuid, jsonb) the decoded
 * value is also compared with the server's text, so both directions are
 * checked against PostgreSQL rather than against ourselves. Malformed
 * server bytes cannot be provoked through libpq, so the decoders and the
 * array walker are also fed hand-made buffers. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

#include "async_engine/result_int.h"

/* ---- helpers -------------------------------------------------------------- */

/* Sends the builder's parameters; returns the PGresult whatever its status. */
static PGresult *send_params(PGconn *c, const char *sql, const aorm_params *p) {
    cr_assert_eq(aorm_params_error(p), 0, "builder in error before sending: %s",
                 aorm_errname(aorm_params_error(p)));
    int n = aorm_params_count(p);
    size_t m = n > 0 ? (size_t)n : 1;
    Oid *types = calloc(m, sizeof(*types));
    const char **values = calloc(m, sizeof(*values));
    int *lengths = calloc(m, sizeof(*lengths));
    int *formats = calloc(m, sizeof(*formats));
    cr_assert(types && values && lengths && formats, "out of memory");
    for (int i = 0; i < n; i++) {
        types[i] = p->slots[i].type;
        values[i] = aorm__params_value(p, i);
        lengths[i] = p->slots[i].len;
        formats[i] = p->slots[i].format;
    }
    PGresult *res = PQexecParams(c, sql, n, types, values, lengths, formats, 1 /* binary results */);
    free(types);
    free(values);
    free(lengths);
    free(formats);
    return res;
}

/* Sends and asserts the statement returned rows; wraps the result in r. */
static PGresult *query(PGconn *c, const char *sql, const aorm_params *p, aorm_result *r) {
    PGresult *res = send_params(c, sql, p);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s failed: %s", sql, PQerrorMessage(c));
    aorm__result_init(r, res);
    return res;
}

/* A connection with the settings the text comparisons below rely on. */
static PGconn *conn(void) {
    PGconn *c = t_pg();
    free(t_pg_exec(c, "SET DateStyle = 'ISO, YMD'"));
    free(t_pg_exec(c, "SET TimeZone = 'UTC'"));
    free(t_pg_exec(c, "SET extra_float_digits = 3"));
    return c;
}

/* Column col of row 0 as text (asserting success); borrowed from r. */
static const char *text_at(const aorm_result *r, int row, int col) {
    const char *s = NULL;
    int rc = aorm_result_text(r, row, col, &s, NULL);
    cr_assert_eq(rc, 0, "text getter on (%d,%d): %s", row, col, aorm_errname(rc));
    return s;
}

/* Numeric column as a malloc'd string, exercising the cap/need protocol. */
static char *numeric_at(const aorm_result *r, int row, int col) {
    size_t need = 0;
    int rc = aorm_result_numeric(r, row, col, NULL, 0, &need);
    cr_assert_eq(rc, AORM_ERANGE, "sizing call must report AORM_ERANGE, got %s", aorm_errname(rc));
    char *buf = malloc(need + 1);
    cr_assert(buf, "out of memory");
    if (need > 0) {
        /* One byte short: refused, but still NUL-terminated. */
        memset(buf, 'x', need);
        rc = aorm_result_numeric(r, row, col, buf, need, NULL);
        cr_assert_eq(rc, AORM_ERANGE, "cap == need must be AORM_ERANGE, got %d", rc);
        cr_assert_eq(buf[0], '\0', "a refused buffer must hold an empty string");
    }
    size_t need2 = 0;
    rc = aorm_result_numeric(r, row, col, buf, need + 1, &need2);
    cr_assert_eq(rc, (int)need, "numeric returned %d, expected %zu", rc, need);
    cr_assert_eq(need2, need, "need changed between calls");
    cr_assert_eq(strlen(buf), need, "string length %zu != need %zu", strlen(buf), need);
    return buf;
}

/* ---- builder ---------------------------------------------------------------- */

Test(codec, builder_inline_spill_reset_free, .timeout = 30) {
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm_params_count(&p), 0, "fresh builder must be empty");
    cr_assert_eq(p.slots, p.inline_slots, "fresh builder must use its inline slots");
    cr_assert_eq(p.data, p.inline_data, "fresh builder must use its inline data");
    for (int i = 0; i < AORM_PARAMS_INLINE; i++) cr_assert_eq(aorm_params_int4(&p, i), 0, "append %d", i);
    cr_assert_eq(p.slots, p.inline_slots, "%d int4 values must fit inline", AORM_PARAMS_INLINE);

    /* Spill both the slots and the data, then check every offset still
     * points at the right bytes. */
    PGconn *c = conn();
    aorm_params_reset(&p);
    char sql[4096];
    size_t off = (size_t)snprintf(sql, sizeof(sql), "SELECT ");
    const int n = 100;
    for (int i = 0; i < n; i++) {
        char val[64];
        snprintf(val, sizeof(val), "value number %d with some padding", i);
        cr_assert_eq(aorm_params_text(&p, val), 0, "append %d", i);
        off += (size_t)snprintf(sql + off, sizeof(sql) - off, "%s$%d::text", i ? ", " : "", i + 1);
    }
    cr_assert_neq(p.slots, p.inline_slots, "100 slots must spill to the heap");
    cr_assert_neq(p.data, p.inline_data, "100 values must spill the data to the heap");
    cr_assert_eq(aorm_params_count(&p), n, "count after spill");
    aorm_result r;
    PGresult *res = query(c, sql, &p, &r);
    cr_assert_eq(aorm_result_ncols(&r), n, "one column per parameter");
    for (int i = 0; i < n; i++) {
        char val[64];
        snprintf(val, sizeof(val), "value number %d with some padding", i);
        cr_expect_str_eq(text_at(&r, 0, i), val, "parameter %d came back changed", i);
    }
    PQclear(res);

    /* reset keeps the heap memory and clears the sticky error. */
    char *heap = p.data;
    cr_assert_eq(aorm_params_text_n(&p, "a\0b", 3), AORM_EENCODING, "NUL must be refused");
    aorm_params_reset(&p);
    cr_assert_eq(aorm_params_error(&p), 0, "reset must clear the error");
    cr_assert_eq(aorm_params_count(&p), 0, "reset must empty the builder");
    cr_assert_eq(p.data, heap, "reset must keep the memory");
    aorm_params_free(&p);
    aorm_params_free(&p); /* twice is harmless */
    aorm_params_free(NULL);
    cr_assert_eq(aorm_params_int2(&p, 7), 0, "a freed builder is empty and usable");
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, builder_sticky_error_and_misuse, .timeout = 30) {
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm_params_int4(&p, 1), 0, "first append");
    cr_assert_eq(aorm_params_text_n(&p, "a\0b", 3), AORM_EENCODING, "embedded NUL must be AORM_EENCODING");
    cr_assert_eq(aorm_params_count(&p), 1, "a failed append adds no slot");
    cr_assert_eq(aorm_params_int4(&p, 2), AORM_EENCODING, "the first error is sticky");
    cr_assert_eq(aorm_params_numeric(&p, "abc"), AORM_EENCODING, "still the first error");
    cr_assert_eq(aorm_params_count(&p), 1, "appends after an error add nothing");
    cr_assert_eq(aorm_params_error(&p), AORM_EENCODING, "error is kept");
    aorm_params_free(&p);

    cr_assert_eq(aorm_params_int4(NULL, 1), AORM_EMISUSE, "NULL builder");
    cr_assert_eq(aorm_params_count(NULL), AORM_EMISUSE, "NULL builder count");
    cr_assert_eq(aorm_params_error(NULL), AORM_EMISUSE, "NULL builder error");
    aorm_params zeroed;
    memset(&zeroed, 0, sizeof(zeroed));
    cr_expect_eq(aorm_params_int4(&zeroed, 1), AORM_EMISUSE, "a builder that skipped init");
    aorm_params_free(&zeroed);
    cr_expect_eq(aorm_params_int4(&zeroed, 1), 0, "free leaves an initialized builder");
    aorm_params_free(&zeroed);

    aorm_params_init(&p);
    cr_assert_eq(aorm_params_bytea(&p, NULL, 5), AORM_EMISUSE, "(NULL, 5) bytea is misuse");
    aorm_params_reset(&p);
    cr_assert_eq(aorm_params_raw(&p, 23, "1", 1, 2), AORM_EMISUSE, "format 2 is misuse");
    aorm_params_reset(&p);
    cr_assert_eq(aorm_params_raw(&p, 25, "a\0b", 3, 0), AORM_EENCODING,
                 "text-format raw with a NUL cannot be sent as a C string");
    aorm_params_reset(&p);
    cr_assert_eq(aorm_params_uuid_str(&p, "not-a-uuid"), AORM_EENCODING, "malformed uuid");
    aorm_params_reset(&p);

    /* The protocol counts parameters in 16 bits. */
    int failed = 0;
    for (int i = 0; i < 65535; i++) failed += aorm_params_bool(&p, i & 1) != 0;
    cr_assert_eq(failed, 0, "%d of 65535 appends failed", failed);
    cr_assert_eq(aorm_params_null(&p, AORM_T_INT4), AORM_ERANGE, "the 65536th parameter must be AORM_ERANGE");
    cr_assert_eq(aorm_params_count(&p), 65535, "count stays at the limit");
    aorm_params_free(&p);
}

/* ---- scalars ---------------------------------------------------------------- */

Test(codec, bool_roundtrip, .timeout = 30) {
    PGconn *c = conn();
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_bool(&p, true);
    aorm_params_bool(&p, false);
    aorm_params_null(&p, AORM_T_BOOL);
    aorm_result r;
    PGresult *res = query(c, "SELECT $1::bool, $2::bool, $3::bool, $1::bool::text", &p, &r);
    bool b = false;
    cr_assert_eq(aorm_result_bool(&r, 0, 0, &b), 0, "true");
    cr_expect(b, "true came back false");
    cr_assert_eq(aorm_result_bool(&r, 0, 1, &b), 0, "false");
    cr_expect(!b, "false came back true");
    cr_expect_eq(aorm_result_bool(&r, 0, 2, &b), AORM_ENULLVALUE, "NULL bool");
    cr_expect_eq(aorm_result_is_null(&r, 0, 2), 1, "is_null on NULL");
    cr_expect_eq(aorm_result_is_null(&r, 0, 0), 0, "is_null on a value");
    cr_expect_str_eq(text_at(&r, 0, 3), "true", "server rendering of true");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, int_extremes, .timeout = 30) {
    PGconn *c = conn();
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int2(&p, INT16_MIN);
    aorm_params_int2(&p, INT16_MAX);
    aorm_params_int4(&p, INT32_MIN);
    aorm_params_int4(&p, INT32_MAX);
    aorm_params_int8(&p, INT64_MIN);
    aorm_params_int8(&p, INT64_MAX);
    aorm_params_null(&p, AORM_T_INT2);
    aorm_params_null(&p, AORM_T_INT4);
    aorm_params_null(&p, AORM_T_INT8);
    aorm_result r;
    PGresult *res = query(c,
                          "SELECT $1::int2, $2::int2, $3::int4, $4::int4, $5::int8, $6::int8, "
                          "$7::int2, $8::int4, $9::int8, $5::int8::text, $6::int8::text, 42::oid",
                          &p, &r);
    int16_t s;
    int32_t i;
    int64_t l;
    cr_assert_eq(aorm_result_int16(&r, 0, 0, &s), 0, "int2 min");
    cr_expect_eq(s, INT16_MIN, "int2 min: %d", s);
    cr_assert_eq(aorm_result_int16(&r, 0, 1, &s), 0, "int2 max");
    cr_expect_eq(s, INT16_MAX, "int2 max: %d", s);
    cr_assert_eq(aorm_result_int32(&r, 0, 2, &i), 0, "int4 min");
    cr_expect_eq(i, INT32_MIN, "int4 min: %d", i);
    cr_assert_eq(aorm_result_int32(&r, 0, 3, &i), 0, "int4 max");
    cr_expect_eq(i, INT32_MAX, "int4 max: %d", i);
    cr_assert_eq(aorm_result_int64(&r, 0, 4, &l), 0, "int8 min");
    cr_expect_eq(l, INT64_MIN, "int8 min: %lld", (long long)l);
    cr_assert_eq(aorm_result_int64(&r, 0, 5, &l), 0, "int8 max");
    cr_expect_eq(l, INT64_MAX, "int8 max: %lld", (long long)l);
    cr_expect_str_eq(text_at(&r, 0, 9), "-9223372036854775808", "server text of int8 min");
    cr_expect_str_eq(text_at(&r, 0, 10), "9223372036854775807", "server text of int8 max");

    /* Widening reads are accepted, narrowing ones are type errors. */
    cr_assert_eq(aorm_result_int32(&r, 0, 0, &i), 0, "int32 reads int2");
    cr_expect_eq(i, INT16_MIN, "widened int2");
    cr_assert_eq(aorm_result_int64(&r, 0, 2, &l), 0, "int64 reads int4");
    cr_expect_eq(l, INT32_MIN, "widened int4");
    cr_assert_eq(aorm_result_int64(&r, 0, 11, &l), 0, "int64 reads oid");
    cr_expect_eq(l, 42, "oid value");
    cr_expect_eq(aorm_result_int16(&r, 0, 2, &s), AORM_ETYPE, "int16 must not read int4");
    cr_expect_eq(aorm_result_int32(&r, 0, 4, &i), AORM_ETYPE, "int32 must not read int8");

    for (int col = 6; col <= 8; col++) {
        cr_expect_eq(aorm_result_int64(&r, 0, col, &l), AORM_ENULLVALUE, "NULL in column %d", col);
        cr_expect_eq(aorm_result_is_null(&r, 0, col), 1, "is_null column %d", col);
    }
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, float_extremes, .timeout = 30) {
    PGconn *c = conn();
    const float f4[] = {NAN, INFINITY, -INFINITY, -0.0f, FLT_MIN, FLT_MAX, FLT_TRUE_MIN, 1.5f};
    const double f8[] = {NAN, INFINITY, -INFINITY, -0.0, DBL_MIN, DBL_MAX, DBL_TRUE_MIN, -1e300};
    const size_t nf = sizeof(f4) / sizeof(f4[0]);
    aorm_params p;
    aorm_params_init(&p);
    for (size_t k = 0; k < nf; k++) aorm_params_float4(&p, f4[k]);
    for (size_t k = 0; k < nf; k++) aorm_params_float8(&p, f8[k]);
    aorm_params_null(&p, AORM_T_FLOAT4);
    aorm_params_null(&p, AORM_T_FLOAT8);
    aorm_result r;
    PGresult *res = query(c,
                          "SELECT $1::float4, $2::float4, $3::float4, $4::float4, $5::float4, $6::float4, "
                          "$7::float4, $8::float4, $9::float8, $10::float8, $11::float8, $12::float8, "
                          "$13::float8, $14::float8, $15::float8, $16::float8, $17::float4, $18::float8, "
                          "$3::float4::text, $12::float8::text, $10::float8::text",
                          &p, &r);
    for (size_t k = 0; k < nf; k++) {
        float got = 0;
        cr_assert_eq(aorm_result_float4(&r, 0, (int)k, &got), 0, "float4 #%zu", k);
        if (isnan(f4[k])) {
            cr_expect(isnan(got), "float4 NaN came back as %g", (double)got);
        } else {
            cr_expect(memcmp(&got, &f4[k], sizeof(got)) == 0, "float4 #%zu: sent %a, got %a", k,
                      (double)f4[k], (double)got);
        }
        double wide = 0;
        cr_assert_eq(aorm_result_float8(&r, 0, (int)k, &wide), 0, "float8 getter reads float4 #%zu", k);
        cr_expect(isnan(f4[k]) ? isnan(wide) : wide == (double)f4[k], "widened float4 #%zu", k);
    }
    for (size_t k = 0; k < nf; k++) {
        double got = 0;
        cr_assert_eq(aorm_result_float8(&r, 0, (int)(nf + k), &got), 0, "float8 #%zu", k);
        if (isnan(f8[k])) {
            cr_expect(isnan(got), "float8 NaN came back as %g", got);
        } else {
            cr_expect(memcmp(&got, &f8[k], sizeof(got)) == 0, "float8 #%zu: sent %a, got %a", k, f8[k], got);
        }
    }
    float f;
    double d;
    cr_expect_eq(aorm_result_float4(&r, 0, 16, &f), AORM_ENULLVALUE, "NULL float4");
    cr_expect_eq(aorm_result_float8(&r, 0, 17, &d), AORM_ENULLVALUE, "NULL float8");
    cr_expect_eq(aorm_result_float4(&r, 0, 8, &f), AORM_ETYPE, "float4 getter must not read float8");
    cr_expect_str_eq(text_at(&r, 0, 18), "-Infinity", "server text of float4 -inf");
    cr_expect_str_eq(text_at(&r, 0, 19), "-0", "server text of float8 -0.0");
    cr_expect_str_eq(text_at(&r, 0, 20), "Infinity", "server text of float8 +inf");
    cr_expect(signbit(-0.0), "sanity");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

/* ---- text and bytea ------------------------------------------------------- */

Test(codec, text_roundtrip, .timeout = 30) {
    PGconn *c = conn();
    static const char *const samples[] = {
        "",
        "it's a \"quoted\" string",
        "back\\slash \\\\ and \\x41",
        "$1 $2::int; DROP TABLE x; --",
        "semi;colons;;",
        "h\xc3\xa9llo \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x8e\x89", /* héllo ✓ 日本 🎉 */
    };
    const size_t ns = sizeof(samples) / sizeof(samples[0]);
    for (size_t k = 0; k < ns; k++) {
        aorm_params p;
        aorm_params_init(&p);
        cr_assert_eq(aorm_params_text(&p, samples[k]), 0, "append sample %zu", k);
        cr_assert_eq(aorm_params_text_n(&p, samples[k], strlen(samples[k])), 0, "append text_n %zu", k);
        aorm_result r;
        PGresult *res = query(c, "SELECT $1::text, $2::text, octet_length($1::text), $1::text = $2::text",
                              &p, &r);
        const char *s;
        size_t len = 0;
        cr_assert_eq(aorm_result_text(&r, 0, 0, &s, &len), 0, "text getter");
        cr_expect_eq(len, strlen(samples[k]), "sample %zu length %zu", k, len);
        cr_expect_str_eq(s, samples[k], "sample %zu changed", k);
        cr_expect_str_eq(text_at(&r, 0, 1), samples[k], "text_n sample %zu changed", k);
        int32_t olen;
        cr_assert_eq(aorm_result_int32(&r, 0, 2, &olen), 0, "octet_length");
        cr_expect_eq((size_t)olen, strlen(samples[k]), "server saw %d bytes", olen);
        bool same = false;
        cr_assert_eq(aorm_result_bool(&r, 0, 3, &same), 0, "equality");
        cr_expect(same, "text and text_n differ on the server for sample %zu", k);
        PQclear(res);
        aorm_params_free(&p);
    }

    /* The multibyte sample has 12 characters for the server. */
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text(&p, samples[5]);
    aorm_params_text(&p, NULL);
    aorm_result r;
    PGresult *res = query(c, "SELECT length($1::text), $2::text, $2::text IS NULL", &p, &r);
    int32_t chars;
    cr_assert_eq(aorm_result_int32(&r, 0, 0, &chars), 0, "length");
    cr_expect_eq(chars, 12, "server counted %d characters", chars);
    const char *s;
    cr_expect_eq(aorm_result_text(&r, 0, 1, &s, NULL), AORM_ENULLVALUE, "NULL text pointer sends NULL");
    bool isnull = false;
    cr_assert_eq(aorm_result_bool(&r, 0, 2, &isnull), 0, "IS NULL");
    cr_expect(isnull, "server did not see NULL");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, text_one_mebibyte, .timeout = 30) {
    PGconn *c = conn();
    const size_t n = 1024 * 1024;
    char *big = malloc(n + 1);
    cr_assert(big, "out of memory");
    for (size_t k = 0; k < n; k++) big[k] = (char)('a' + k % 26);
    big[n] = '\0';
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm_params_text(&p, big), 0, "1 MiB text");
    aorm_result r;
    PGresult *res = query(c, "SELECT $1::text, $1::text = left(repeat('abcdefghijklmnopqrstuvwxyz', 40330), 1048576)",
                          &p, &r);
    const char *s;
    size_t len = 0;
    cr_assert_eq(aorm_result_text(&r, 0, 0, &s, &len), 0, "text getter");
    cr_expect_eq(len, n, "length %zu", len);
    cr_expect(memcmp(s, big, n) == 0, "1 MiB text changed");
    cr_expect_eq(s[len], '\0', "value must be NUL-terminated");
    bool same = false;
    cr_assert_eq(aorm_result_bool(&r, 0, 1, &same), 0, "comparison");
    cr_expect(same, "the server holds different text");
    PQclear(res);
    aorm_params_free(&p);
    free(big);
    PQfinish(c);
}

Test(codec, text_nul_and_invalid_utf8, .timeout = 30) {
    aorm_params p;
    aorm_params_init(&p);
    cr_expect_eq(aorm_params_text_n(&p, "abc\0def", 7), AORM_EENCODING, "NUL inside text");
    cr_expect_eq(aorm_params_count(&p), 0, "nothing appended");
    aorm_params_free(&p);

    PGconn *c = conn();
    aorm_params_init(&p);
    cr_assert_eq(aorm_params_text_n(&p, "bad \xff\xfe bytes", 11), 0, "invalid UTF-8 is the server's to refuse");
    PGresult *res = send_params(c, "SELECT $1::text", &p);
    cr_assert_eq(PQresultStatus(res), PGRES_FATAL_ERROR, "invalid UTF-8 must fail");
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    cr_assert(state, "no SQLSTATE");
    cr_expect_str_eq(state, "22021", "SQLSTATE for invalid byte sequence");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, bytea_roundtrip, .timeout = 30) {
    PGconn *c = conn();
    const size_t n = 1024 * 1024;
    uint8_t *big = malloc(n);
    cr_assert(big, "out of memory");
    for (size_t k = 0; k < n; k++) big[k] = (uint8_t)(k * 7 + k / 256);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_bytea(&p, NULL, 0);
    aorm_params_bytea(&p, big, n);
    aorm_params_null(&p, AORM_T_BYTEA);
    aorm_params_bytea(&p, "\0\x01\xff", 3);
    aorm_result r;
    PGresult *res = query(c, "SELECT $1::bytea, $2::bytea, $3::bytea, length($2::bytea), $4::bytea::text", &p, &r);
    const uint8_t *d;
    size_t len = 99;
    cr_assert_eq(aorm_result_bytea(&r, 0, 0, &d, &len), 0, "empty bytea");
    cr_expect_eq(len, 0, "empty bytea has length %zu", len);
    cr_assert_eq(aorm_result_bytea(&r, 0, 1, &d, &len), 0, "big bytea");
    cr_assert_eq(len, n, "big bytea length %zu", len);
    cr_expect(memcmp(d, big, n) == 0, "big bytea changed");
    int32_t bits = 0;
    for (size_t k = 0; k < 256; k++) bits |= big[k] == 0;
    cr_expect(bits, "the sample must include NUL bytes");
    cr_expect_eq(aorm_result_bytea(&r, 0, 2, &d, &len), AORM_ENULLVALUE, "NULL bytea");
    int32_t slen;
    cr_assert_eq(aorm_result_int32(&r, 0, 3, &slen), 0, "length");
    cr_expect_eq((size_t)slen, n, "server length %d", slen);
    cr_expect_str_eq(text_at(&r, 0, 4), "\\x0001ff", "server text of bytea");
    const char *s;
    cr_expect_eq(aorm_result_text(&r, 0, 0, &s, NULL), AORM_ETYPE, "text getter must not read bytea");
    PQclear(res);
    aorm_params_free(&p);
    free(big);
    PQfinish(c);
}

/* ---- numeric ---------------------------------------------------------------- */

Test(codec, numeric_roundtrip, .timeout = 30) {
    PGconn *c = conn();
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"0", "0"},
        {"-0.000", "0.000"},
        {"123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"},
        {"1e-20", "0.00000000000000000001"},
        {"-1.5E3", "-1500"},
        {"NaN", "NaN"},
        {"nan", "NaN"},
        {"Infinity", "Infinity"},
        {"-Infinity", "-Infinity"},
        {"inf", "Infinity"},
        {"-INF", "-Infinity"},
        {"+infinity", "Infinity"},
        {"99999999.99990000", "99999999.99990000"},
        {"10000", "10000"},
        {"0.0001", "0.0001"},
        {"-0.5", "-0.5"},
        {".5", "0.5"},
        {"5.", "5"},
        {"+42", "42"},
        {"000123.4500", "123.4500"},
        {"1.23e+2", "123"},
        {"12345.6789e-2", "123.456789"},
        {"-9999.9999", "-9999.9999"},
        {"100000000", "100000000"},
        {"1E10", "10000000000"},
        {"0.00000", "0.00000"},
    };
    const size_t nc = sizeof(cases) / sizeof(cases[0]);
    for (size_t k = 0; k < nc; k++) {
        aorm_params p;
        aorm_params_init(&p);
        cr_assert_eq(aorm_params_numeric(&p, cases[k].in), 0, "encode %s", cases[k].in);
        aorm_result r;
        PGresult *res = query(c, "SELECT $1::numeric, $1::numeric::text", &p, &r);
        char *got = numeric_at(&r, 0, 0);
        cr_expect_str_eq(got, cases[k].out, "numeric %s decoded as %s", cases[k].in, got);
        cr_expect_str_eq(got, text_at(&r, 0, 1), "numeric %s: ours %s, server's %s", cases[k].in, got,
                         text_at(&r, 0, 1));
        free(got);
        PQclear(res);
        aorm_params_free(&p);
    }

    /* Values computed by the server, decoded and compared with its text. */
    aorm_params p;
    aorm_params_init(&p);
    aorm_result r;
    PGresult *res = query(c,
                          "SELECT x, x::text FROM (VALUES (1/3::numeric), (-2/3::numeric(40,30)), "
                          "(2::numeric ^ 200), (-1e-100::numeric), (1e100::numeric + 0.5), "
                          "(12.340::numeric(10,3)), (-0.0::numeric), (factorial(40)::numeric), "
                          "('-0.00001'::numeric(10,2)), (NULL::numeric)) v(x)",
                          &p, &r);
    int nrows = aorm_result_nrows(&r);
    cr_assert_eq(nrows, 10, "rows");
    for (int row = 0; row < nrows - 1; row++) {
        char *got = numeric_at(&r, row, 0);
        cr_expect_str_eq(got, text_at(&r, row, 1), "row %d: ours %s, server's %s", row, got, text_at(&r, row, 1));
        free(got);
    }
    char buf[8];
    cr_expect_eq(aorm_result_numeric(&r, nrows - 1, 0, buf, sizeof(buf), NULL), AORM_ENULLVALUE, "NULL numeric");
    cr_expect_eq(aorm_result_numeric(&r, 0, 1, buf, sizeof(buf), NULL), AORM_ETYPE, "numeric getter on text");
    cr_expect_eq(aorm_result_numeric(&r, 0, 0, NULL, 5, NULL), AORM_EMISUSE, "NULL buffer with cap");
    PQclear(res);

    /* NULL pointer sends SQL NULL. */
    aorm_params_reset(&p);
    cr_assert_eq(aorm_params_numeric(&p, NULL), 0, "NULL numeric");
    res = query(c, "SELECT $1::numeric IS NULL", &p, &r);
    bool isnull = false;
    cr_assert_eq(aorm_result_bool(&r, 0, 0, &isnull), 0, "IS NULL");
    cr_expect(isnull, "NULL numeric pointer must send NULL");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, numeric_malformed, .timeout = 30) {
    static const char *const bad[] = {"1.2.3", "", "abc", "1e", "1e+", "-", ".", "--1", "+-1", " 1",
                                      "1 ", "NaNx", "-NaN", "0x10", "1e5.5", "1,5", "infinit", "e5", "1..2"};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        aorm_params p;
        aorm_params_init(&p);
        cr_expect_eq(aorm_params_numeric(&p, bad[k]), AORM_EENCODING, "\"%s\" must be AORM_EENCODING", bad[k]);
        cr_expect_eq(aorm_params_count(&p), 0, "\"%s\" appended a slot", bad[k]);
        aorm_params_free(&p);
    }
    aorm_params p;
    aorm_params_init(&p);
    cr_expect_eq(aorm_params_numeric(&p, "1e99999999999"), AORM_ERANGE, "an exponent that cannot fit");
    aorm_params_free(&p);
}

Test(codec, numeric_decode_malformed, .timeout = 30) {
    char buf[64];
    size_t need = 0;
    /* ndigits weight sign dscale digits... */
    const char ok[] = {0, 2, 0, 0, 0x40, 0, 0, 4, 0, 12, 0x0d, (char)0x80}; /* -12.3456 */
    cr_assert_eq(aorm_decode_numeric(ok, (int)sizeof(ok), buf, sizeof(buf), &need), 8, "well-formed value");
    cr_expect_str_eq(buf, "-12.3456", "decoded");
    for (int len = 0; len < (int)sizeof(ok); len++)
        cr_expect_eq(aorm_decode_numeric(ok, len, buf, sizeof(buf), NULL), AORM_EPROTOCOL,
                     "truncated to %d bytes", len);
    char longer[sizeof(ok) + 2];
    memcpy(longer, ok, sizeof(ok));
    longer[sizeof(ok)] = longer[sizeof(ok) + 1] = 0;
    cr_expect_eq(aorm_decode_numeric(longer, (int)sizeof(longer), buf, sizeof(buf), NULL), AORM_EPROTOCOL,
                 "trailing bytes");
    const char bad_sign[] = {0, 0, 0, 0, 0x12, 0x34, 0, 0};
    cr_expect_eq(aorm_decode_numeric(bad_sign, 8, buf, sizeof(buf), NULL), AORM_EPROTOCOL, "bad sign");
    const char bad_digit[] = {0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10}; /* digit 10000 */
    cr_expect_eq(aorm_decode_numeric(bad_digit, 10, buf, sizeof(buf), NULL), AORM_EPROTOCOL, "digit >= 10000");
    const char neg_digit[] = {0, 1, 0, 0, 0, 0, 0, 0, (char)0xff, (char)0xff};
    cr_expect_eq(aorm_decode_numeric(neg_digit, 10, buf, sizeof(buf), NULL), AORM_EPROTOCOL, "negative digit");
    const char neg_ndigits[] = {(char)0xff, (char)0xff, 0, 0, 0, 0, 0, 0};
    cr_expect_eq(aorm_decode_numeric(neg_ndigits, 8, buf, sizeof(buf), NULL), AORM_EPROTOCOL, "negative ndigits");
    const char neg_dscale[] = {0, 0, 0, 0, 0, 0, (char)0xff, (char)0xff};
    cr_expect_eq(aorm_decode_numeric(neg_dscale, 8, buf, sizeof(buf), NULL), AORM_EPROTOCOL, "negative dscale");
    const char huge_ndigits[] = {0x7f, (char)0xff, 0, 0, 0, 0, 0, 0, 0, 1};
    cr_expect_eq(aorm_decode_numeric(huge_ndigits, 10, buf, sizeof(buf), NULL), AORM_EPROTOCOL,
                 "ndigits larger than the buffer");

    /* A negative value whose shown digits are all zero prints without a
     * minus sign, and leading zero digits are not printed. */
    const char neg_zero[] = {0, 1, (char)0xff, (char)0xfe, 0x40, 0, 0, 2, 0, 5}; /* -0.00000005, dscale 2 */
    cr_assert_eq(aorm_decode_numeric(neg_zero, 10, buf, sizeof(buf), NULL), 4, "negative tiny");
    cr_expect_str_eq(buf, "0.00", "never -0");
    const char lead_zero[] = {0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5}; /* digits 0000 0005, weight 1 */
    cr_assert_eq(aorm_decode_numeric(lead_zero, 12, buf, sizeof(buf), NULL), 1, "leading zero digit");
    cr_expect_str_eq(buf, "5", "leading zeros skipped");
    const char nan[] = {0, 0, 0, 0, (char)0xc0, 0, 0, 0};
    cr_assert_eq(aorm_decode_numeric(nan, 8, buf, 3, &need), AORM_ERANGE, "NaN does not fit in 3 bytes");
    cr_expect_eq(need, 3, "need for NaN");
    cr_expect_eq(buf[0], '\0', "refused buffer is terminated");
    cr_expect_eq(aorm_decode_numeric(nan, -1, buf, sizeof(buf), NULL), AORM_ENULLVALUE, "NULL value");
    cr_expect_eq(aorm_decode_numeric(NULL, 8, buf, sizeof(buf), NULL), AORM_EMISUSE, "NULL bytes");
}

/* ---- dates and times -------------------------------------------------------- */

Test(codec, date_helpers_local, .timeout = 30) {
    cr_expect_eq(aorm_date_from_ymd(2000, 1, 1), 0, "epoch");
    cr_expect_eq(aorm_date_from_ymd(1970, 1, 1), -10957, "unix epoch");
    cr_expect_eq(aorm_date_from_ymd(2000, 3, 1), 60, "leap day 2000 exists");
    cr_expect_eq(aorm_date_from_ymd(1, 1, 1), -730119, "0001-01-01");
    /* Every day over 16000 years, both directions, from well before the
     * 4713 BC start of the Julian day count. */
    int32_t prev = aorm_date_from_ymd(-9001, 12, 31);
    for (int32_t d = prev + 1; d < aorm_date_from_ymd(7000, 1, 1); d++) {
        int y, m, dd;
        aorm_date_to_ymd(d, &y, &m, &dd);
        /* Plain checks: millions of passing assertions would flood the
         * runner with events. */
        if (m < 1 || m > 12 || dd < 1 || dd > 31) cr_assert_fail("day %d gave %d-%d-%d", d, y, m, dd);
        if (aorm_date_from_ymd(y, m, dd) != d)
            cr_assert_fail("day %d -> %d-%02d-%02d does not map back", d, y, m, dd);
        if (d > prev + 1) {
            int py, pm, pd;
            aorm_date_to_ymd(d - 1, &py, &pm, &pd);
            bool next = (py == y && pm == m && pd + 1 == dd) || (py == y && pm + 1 == m && dd == 1) ||
                        (py + 1 == y && pm == 12 && m == 1 && dd == 1);
            if (!next) cr_assert_fail("%d-%d-%d is not the day after %d-%d-%d", y, m, dd, py, pm, pd);
        }
    }
    int y, m, d;
    aorm_date_to_ymd(AORM_DATE_INFINITY, &y, &m, &d);
    cr_expect_eq(y, INT_MAX, "infinity year");
    aorm_date_to_ymd(AORM_DATE_NEG_INFINITY, &y, &m, &d);
    cr_expect_eq(y, INT_MIN, "-infinity year");
    aorm_date_to_ymd(INT32_MIN + 1, &y, &m, &d); /* far past: must not overflow */
    cr_expect_eq(aorm_date_from_ymd(y, m, d), INT32_MIN + 1, "far past maps back");
    aorm_date_to_ymd(INT32_MAX - 1, &y, &m, &d);
    cr_expect_eq(aorm_date_from_ymd(y, m, d), INT32_MAX - 1, "far future maps back");

    cr_expect_eq(aorm_timestamp_from_unix_us(0), -INT64_C(946684800000000), "unix epoch");
    cr_expect_eq(aorm_timestamp_to_unix_us(0), INT64_C(946684800000000), "pg epoch");
    cr_expect_eq(aorm_timestamp_from_unix_us(AORM_TIMESTAMP_INFINITY), AORM_TIMESTAMP_INFINITY, "infinity kept");
    cr_expect_eq(aorm_timestamp_to_unix_us(AORM_TIMESTAMP_NEG_INFINITY), AORM_TIMESTAMP_NEG_INFINITY,
                 "-infinity kept");
    cr_expect_eq(aorm_timestamp_from_unix_us(INT64_MIN + 1), INT64_MIN + 1, "saturates short of -infinity");
}

Test(codec, date_roundtrip, .timeout = 30) {
    PGconn *c = conn();
    static const struct {
        int y, m, d;
        const char *text;
    } cases[] = {
        {2000, 1, 1, "2000-01-01"},   {1970, 1, 1, "1970-01-01"}, {1, 1, 1, "0001-01-01"},
        {2000, 2, 29, "2000-02-29"},  {1900, 2, 28, "1900-02-28"}, {1582, 10, 15, "1582-10-15"},
        {9999, 12, 31, "9999-12-31"}, {0, 12, 31, "0001-12-31 BC"}, {-4712, 1, 1, "4713-01-01 BC"},
        {2024, 12, 31, "2024-12-31"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        aorm_params p;
        aorm_params_init(&p);
        int32_t day = aorm_date_from_ymd(cases[k].y, cases[k].m, cases[k].d);
        aorm_params_date(&p, day);
        /* The server parses the text form itself: both must agree. */
        aorm_params_raw(&p, AORM_T_DATE, cases[k].text, strlen(cases[k].text), 0);
        aorm_result r;
        PGresult *res = query(c, "SELECT $1::date, $1::date::text, $2::date, to_char($1::date, 'YYYY-MM-DD')",
                              &p, &r);
        int32_t got;
        cr_assert_eq(aorm_result_date(&r, 0, 0, &got), 0, "date getter");
        cr_expect_eq(got, day, "date %s: sent %d got %d", cases[k].text, day, got);
        cr_expect_str_eq(text_at(&r, 0, 1), cases[k].text, "server text of %d", day);
        cr_assert_eq(aorm_result_date(&r, 0, 2, &got), 0, "date parsed by the server");
        cr_expect_eq(got, day, "server parsed %s as %d, we computed %d", cases[k].text, got, day);
        int y, m, d;
        aorm_date_to_ymd(got, &y, &m, &d);
        cr_expect(y == cases[k].y && m == cases[k].m && d == cases[k].d, "%s -> %d-%d-%d", cases[k].text, y, m, d);
        if (cases[k].y >= 1) cr_expect_str_eq(text_at(&r, 0, 3), cases[k].text, "to_char");
        PQclear(res);
        aorm_params_free(&p);
    }

    aorm_params p;
    aorm_params_init(&p);
    aorm_params_date(&p, AORM_DATE_INFINITY);
    aorm_params_date(&p, AORM_DATE_NEG_INFINITY);
    aorm_params_null(&p, AORM_T_DATE);
    aorm_result r;
    PGresult *res = query(c, "SELECT $1::date, $1::date::text, $2::date, $2::date::text, $3::date", &p, &r);
    int32_t got;
    cr_assert_eq(aorm_result_date(&r, 0, 0, &got), 0, "infinity");
    cr_expect_eq(got, AORM_DATE_INFINITY, "infinity came back as %d", got);
    cr_expect_str_eq(text_at(&r, 0, 1), "infinity", "server text");
    cr_assert_eq(aorm_result_date(&r, 0, 2, &got), 0, "-infinity");
    cr_expect_eq(got, AORM_DATE_NEG_INFINITY, "-infinity came back as %d", got);
    cr_expect_str_eq(text_at(&r, 0, 3), "-infinity", "server text");
    cr_expect_eq(aorm_result_date(&r, 0, 4, &got), AORM_ENULLVALUE, "NULL date");
    int64_t ts;
    cr_expect_eq(aorm_result_timestamp(&r, 0, 0, &ts), AORM_ETYPE, "timestamp getter on a date");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, timestamp_roundtrip, .timeout = 30) {
    PGconn *c = conn();
    const int64_t unix_us = INT64_C(1700000000123456);
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_timestamp(&p, aorm_timestamp_from_unix_us(0));
    aorm_params_timestamptz(&p, aorm_timestamp_from_unix_us(0));
    aorm_params_timestamp(&p, aorm_timestamp_from_unix_us(unix_us));
    aorm_params_timestamptz(&p, aorm_timestamp_from_unix_us(unix_us));
    aorm_params_timestamp(&p, AORM_TIMESTAMP_INFINITY);
    aorm_params_timestamptz(&p, AORM_TIMESTAMP_NEG_INFINITY);
    aorm_params_null(&p, AORM_T_TIMESTAMPTZ);
    aorm_result r;
    PGresult *res = query(c,
                          "SELECT $1::timestamp, $2::timestamptz, $3::timestamp, $4::timestamptz, "
                          "$5::timestamp, $6::timestamptz, $7::timestamptz, "
                          "$2::timestamptz = 'epoch'::timestamptz, $3::timestamp::text, "
                          "$4::timestamptz::text, $5::timestamp::text, $6::timestamptz::text, "
                          "(extract(epoch from $4::timestamptz) * 1000000)::int8",
                          &p, &r);
    int64_t ts;
    for (int col = 0; col < 2; col++) {
        cr_assert_eq(aorm_result_timestamp(&r, 0, col, &ts), 0, "epoch col %d", col);
        cr_expect_eq(aorm_timestamp_to_unix_us(ts), 0, "epoch col %d came back as %lld", col, (long long)ts);
    }
    for (int col = 2; col < 4; col++) {
        cr_assert_eq(aorm_result_timestamp(&r, 0, col, &ts), 0, "col %d", col);
        cr_expect_eq(aorm_timestamp_to_unix_us(ts), unix_us, "col %d came back as %lld", col, (long long)ts);
    }
    cr_assert_eq(aorm_result_timestamp(&r, 0, 4, &ts), 0, "infinity");
    cr_expect_eq(ts, AORM_TIMESTAMP_INFINITY, "infinity");
    cr_assert_eq(aorm_result_timestamp(&r, 0, 5, &ts), 0, "-infinity");
    cr_expect_eq(ts, AORM_TIMESTAMP_NEG_INFINITY, "-infinity");
    cr_expect_eq(aorm_result_timestamp(&r, 0, 6, &ts), AORM_ENULLVALUE, "NULL timestamptz");
    bool eq = false;
    cr_assert_eq(aorm_result_bool(&r, 0, 7, &eq), 0, "epoch comparison");
    cr_expect(eq, "server does not see the Unix epoch");
    cr_expect_str_eq(text_at(&r, 0, 8), "2023-11-14 22:13:20.123456", "timestamp text");
    cr_expect_str_eq(text_at(&r, 0, 9), "2023-11-14 22:13:20.123456+00", "timestamptz text");
    cr_expect_str_eq(text_at(&r, 0, 10), "infinity", "infinity text");
    cr_expect_str_eq(text_at(&r, 0, 11), "-infinity", "-infinity text");
    int64_t server_us;
    cr_assert_eq(aorm_result_int64(&r, 0, 12, &server_us), 0, "extract");
    cr_expect_eq(server_us, unix_us, "server's Unix microseconds %lld", (long long)server_us);
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

/* ---- uuid and json ------------------------------------------------------------ */

Test(codec, uuid_roundtrip, .timeout = 30) {
    PGconn *c = conn();
    const uint8_t u[16] = {0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8,
                           0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11};
    const char *canon = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_uuid(&p, u);
    aorm_params_uuid_str(&p, canon);
    aorm_params_uuid_str(&p, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11");
    aorm_params_uuid_str(&p, "a0eebc999c0b4ef8bb6d6bb9bd380a11");
    aorm_params_uuid(&p, NULL);
    cr_assert_eq(aorm_params_error(&p), 0, "uuid forms accepted");
    aorm_result r;
    PGresult *res = query(c, "SELECT $1::uuid, $2::uuid, $3::uuid, $4::uuid, $5::uuid, $1::uuid::text", &p, &r);
    for (int col = 0; col < 4; col++) {
        uint8_t got[16];
        cr_assert_eq(aorm_result_uuid(&r, 0, col, got), 0, "uuid col %d", col);
        cr_expect(memcmp(got, u, 16) == 0, "uuid col %d changed", col);
    }
    uint8_t got[16];
    cr_expect_eq(aorm_result_uuid(&r, 0, 4, got), AORM_ENULLVALUE, "NULL uuid");
    cr_expect_str_eq(text_at(&r, 0, 5), canon, "server text");
    PQclear(res);
    aorm_params_free(&p);

    static const char *const bad[] = {"", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
                                      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11",
                                      "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc999c0b4ef8bb6d6bb9bd380a1-",
                                      "a0eebc99-9c0b4ef8-bb6d-6bb9bd380a11-"};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        aorm_params_init(&p);
        cr_expect_eq(aorm_params_uuid_str(&p, bad[k]), AORM_EENCODING, "\"%s\" must be refused", bad[k]);
        aorm_params_free(&p);
    }
    PQfinish(c);
}

Test(codec, json_and_jsonb, .timeout = 30) {
    PGconn *c = conn();
    const char *doc = "{\"a\": [1, \"x\\\"y\"]}";
    const char *spaced = "{ \"b\":1,   \"a\" : [1,\"x\\\"y\"] }";
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_json(&p, doc, strlen(doc));
    aorm_params_jsonb(&p, doc, strlen(doc));
    aorm_params_jsonb(&p, spaced, strlen(spaced));
    aorm_params_json(&p, spaced, strlen(spaced));
    aorm_params_null(&p, AORM_T_JSONB);
    aorm_result r;
    PGresult *res = query(c,
                          "SELECT $1::json, $2::jsonb, $2::jsonb::text, $3::jsonb, $3::jsonb::text, $4::json, "
                          "$5::jsonb, $2::jsonb -> 'a' ->> 1",
                          &p, &r);
    cr_expect_str_eq(text_at(&r, 0, 0), doc, "json comes back verbatim");
    cr_expect_str_eq(text_at(&r, 0, 1), text_at(&r, 0, 2), "jsonb matches the server's text");
    cr_expect_str_eq(text_at(&r, 0, 1), doc, "this document is already in normal form");
    cr_expect_str_eq(text_at(&r, 0, 3), text_at(&r, 0, 4), "normalized jsonb matches the server's text");
    cr_expect_str_eq(text_at(&r, 0, 3), "{\"a\": [1, \"x\\\"y\"], \"b\": 1}", "normalized jsonb");
    cr_expect_str_eq(text_at(&r, 0, 5), spaced, "json keeps its spacing");
    const char *s;
    cr_expect_eq(aorm_result_text(&r, 0, 6, &s, NULL), AORM_ENULLVALUE, "NULL jsonb");
    cr_expect_str_eq(text_at(&r, 0, 7), "x\"y", "server reads the escaped string");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

/* ---- arrays ----------------------------------------------------------------- */

Test(codec, int_arrays, .timeout = 30) {
    PGconn *c = conn();
    const int32_t v4[] = {INT32_MIN, 0, 7, INT32_MAX};
    const bool n4[] = {false, true, false, false};
    const int64_t v8[] = {INT64_MIN, -1, 0, INT64_MAX, 5};
    const bool n8[] = {false, false, true, false, true};
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int4_array(&p, v4, n4, 4);
    aorm_params_int8_array(&p, v8, n8, 5);
    aorm_params_int4_array(&p, NULL, NULL, 0);
    aorm_params_int8_array(&p, v8, NULL, 0);
    aorm_params_int4_array(&p, v4, NULL, 4);
    aorm_params_null(&p, AORM_T_INT8_ARRAY);
    cr_assert_eq(aorm_params_error(&p), 0, "arrays encoded");
    aorm_result r;
    PGresult *res = query(c,
                          "SELECT $1::int4[], $2::int8[], $3::int4[], $4::int8[], $5::int4[], $6::int8[], "
                          "array_length($1::int4[], 1), cardinality($2::int8[]), cardinality($3::int4[]), "
                          "array_length($4::int8[], 1), $1::int4[]::text, $2::int8[]::text, $3::int4[]::text",
                          &p, &r);
    aorm_array a;
    cr_assert_eq(aorm_result_array(&r, 0, 0, &a), 0, "int4[]");
    cr_expect_eq(a.elem_type, AORM_T_INT4, "element type");
    cr_expect_eq(a.count, 4, "count");
    cr_expect(a.has_nulls, "has_nulls");
    const char *e;
    int len, k = 0, rc;
    while ((rc = aorm_array_next(&a, &e, &len)) == 1) {
        cr_assert_lt(k, 4, "too many elements");
        if (n4[k]) {
            cr_expect_eq(len, -1, "element %d must be NULL", k);
            cr_expect_null(e, "NULL element pointer");
        } else {
            int64_t x;
            cr_assert_eq(aorm_decode_int(a.elem_type, e, len, &x), 0, "element %d", k);
            cr_expect_eq(x, v4[k], "element %d", k);
        }
        k++;
    }
    cr_expect_eq(rc, 0, "iteration ends cleanly");
    cr_expect_eq(k, 4, "iterated %d elements", k);
    cr_expect_eq(aorm_array_next(&a, &e, &len), 0, "stays at the end");

    int32_t out32[5];
    bool nulls[5];
    cr_assert_eq(aorm_array_int32s(&a, out32, nulls, 4), 4, "int32s");
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(nulls[i], n4[i], "null flag %d", i);
        if (!n4[i]) cr_expect_eq(out32[i], v4[i], "int32s[%d]", i);
    }
    cr_expect_eq(aorm_array_int32s(&a, out32, NULL, 4), AORM_ENULLVALUE, "NULL element without nulls[]");
    cr_expect_eq(aorm_array_int32s(&a, out32, nulls, 3), AORM_ERANGE, "cap too small");

    cr_assert_eq(aorm_result_array(&r, 0, 1, &a), 0, "int8[]");
    int64_t out64[5];
    cr_assert_eq(aorm_array_int64s(&a, out64, nulls, 5), 5, "int64s");
    for (int i = 0; i < 5; i++) {
        cr_expect_eq(nulls[i], n8[i], "null flag %d", i);
        if (!n8[i]) cr_expect_eq(out64[i], v8[i], "int64s[%d]", i);
    }
    cr_expect_eq(aorm_array_int32s(&a, out32, nulls, 5), AORM_ERANGE, "INT64_MIN does not fit int32");

    for (int col = 2; col <= 3; col++) {
        cr_assert_eq(aorm_result_array(&r, 0, col, &a), 0, "empty array col %d", col);
        cr_expect_eq(a.count, 0, "empty count");
        cr_expect_eq(aorm_array_next(&a, &e, &len), 0, "empty iteration");
        cr_expect_eq(aorm_array_int64s(&a, out64, NULL, 0), 0, "empty int64s");
    }
    cr_assert_eq(aorm_result_array(&r, 0, 4, &a), 0, "no-null int4[]");
    cr_expect(!a.has_nulls, "has_nulls must be 0");
    cr_expect_eq(aorm_array_int64s(&a, out64, NULL, 5), 4, "int64s reads int4 elements");
    cr_expect_eq(out64[3], INT32_MAX, "last element");
    cr_expect_eq(aorm_result_array(&r, 0, 5, &a), AORM_ENULLVALUE, "NULL array");

    int32_t n;
    int64_t nl;
    cr_assert_eq(aorm_result_int32(&r, 0, 6, &n), 0, "array_length");
    cr_expect_eq(n, 4, "server array_length");
    cr_assert_eq(aorm_result_int32(&r, 0, 7, &n), 0, "cardinality");
    cr_expect_eq(n, 5, "server cardinality");
    cr_assert_eq(aorm_result_int32(&r, 0, 8, &n), 0, "cardinality of empty");
    cr_expect_eq(n, 0, "server cardinality of empty");
    cr_expect_eq(aorm_result_int64(&r, 0, 9, &nl), AORM_ENULLVALUE, "array_length of an empty array is NULL");
    cr_expect_str_eq(text_at(&r, 0, 10), "{-2147483648,NULL,7,2147483647}", "server text of int4[]");
    cr_expect_str_eq(text_at(&r, 0, 11), "{-9223372036854775808,-1,NULL,9223372036854775807,NULL}",
                     "server text of int8[]");
    cr_expect_str_eq(text_at(&r, 0, 12), "{}", "server text of empty");
    cr_expect_eq(aorm_result_array(&r, 0, 10, &a), AORM_ETYPE, "array getter on text");
    PQclear(res);

    /* A two-dimensional array is refused as a type the reader cannot
     * handle, not as malformed bytes. */
    aorm_params_reset(&p);
    res = query(c, "SELECT '{{1,2},{3,4}}'::int4[]", &p, &r);
    cr_expect_eq(aorm_result_array(&r, 0, 0, &a), AORM_ETYPE, "2-D array");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, text_and_uuid_arrays, .timeout = 30) {
    PGconn *c = conn();
    const char *const tv[] = {"plain", NULL, "", "with \"quotes\", {braces} and \\", "h\xc3\xa9llo \xf0\x9f\x8e\x89"};
    const uint8_t uv[3][16] = {{0}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, {0xff}};
    const bool un[] = {false, true, false};
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_text_array(&p, tv, 5);
    aorm_params_uuid_array(&p, &uv[0][0], un, 3);
    aorm_params_text_array(&p, NULL, 0);
    aorm_params_uuid_array(&p, NULL, NULL, 0);
    cr_assert_eq(aorm_params_error(&p), 0, "arrays encoded");
    aorm_result r;
    PGresult *res = query(c,
                          "SELECT $1::text[], $2::uuid[], $3::text[], $4::uuid[], cardinality($1::text[]), "
                          "array_length($2::uuid[], 1), ($2::uuid[])[3]::text, ($1::text[])[4], "
                          "array_length($3::text[], 1) IS NULL, cardinality($4::uuid[])",
                          &p, &r);
    aorm_array a;
    cr_assert_eq(aorm_result_array(&r, 0, 0, &a), 0, "text[]");
    cr_expect_eq(a.elem_type, AORM_T_TEXT, "element type");
    cr_expect_eq(a.count, 5, "count");
    const char *e;
    int len, k = 0;
    while (aorm_array_next(&a, &e, &len) == 1) {
        if (!tv[k]) {
            cr_expect_eq(len, -1, "element %d must be NULL", k);
        } else {
            cr_expect_eq((size_t)len, strlen(tv[k]), "element %d length %d", k, len);
            cr_expect(memcmp(e, tv[k], (size_t)len) == 0, "element %d changed", k);
        }
        k++;
    }
    cr_expect_eq(k, 5, "elements iterated");
    int64_t out[5];
    cr_expect_eq(aorm_array_int64s(&a, out, NULL, 5), AORM_ETYPE, "int64s on text[]");

    cr_assert_eq(aorm_result_array(&r, 0, 1, &a), 0, "uuid[]");
    cr_expect_eq(a.elem_type, AORM_T_UUID, "element type");
    cr_expect_eq(a.count, 3, "count");
    k = 0;
    while (aorm_array_next(&a, &e, &len) == 1) {
        if (un[k]) {
            cr_expect_eq(len, -1, "uuid %d must be NULL", k);
        } else {
            cr_assert_eq(len, 16, "uuid %d length", k);
            cr_expect(memcmp(e, uv[k], 16) == 0, "uuid %d changed", k);
        }
        k++;
    }
    cr_expect_eq(k, 3, "uuids iterated");
    for (int col = 2; col <= 3; col++) {
        cr_assert_eq(aorm_result_array(&r, 0, col, &a), 0, "empty col %d", col);
        cr_expect_eq(a.count, 0, "empty count");
    }
    int32_t n;
    cr_assert_eq(aorm_result_int32(&r, 0, 4, &n), 0, "cardinality");
    cr_expect_eq(n, 5, "server cardinality");
    cr_assert_eq(aorm_result_int32(&r, 0, 5, &n), 0, "array_length");
    cr_expect_eq(n, 3, "server array_length");
    cr_expect_str_eq(text_at(&r, 0, 6), "ff000000-0000-0000-0000-000000000000", "third uuid");
    cr_expect_str_eq(text_at(&r, 0, 7), tv[3], "fourth text element");
    bool b = false;
    cr_assert_eq(aorm_result_bool(&r, 0, 8, &b), 0, "empty text[]");
    cr_expect(b, "array_length of an empty array is NULL");
    cr_assert_eq(aorm_result_int32(&r, 0, 9, &n), 0, "cardinality of empty uuid[]");
    cr_expect_eq(n, 0, "empty uuid[]");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, any_with_int8_array, .timeout = 30) {
    PGconn *c = conn();
    const int64_t ids[] = {3, 50, 100, 1000, -7, 0};
    const bool nulls[] = {false, false, false, false, false, true};
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int8_array(&p, ids, nulls, 6);
    aorm_result r;
    PGresult *res = query(c, "SELECT g FROM generate_series(1, 100) g WHERE g = ANY($1) ORDER BY g", &p, &r);
    cr_assert_eq(aorm_result_nrows(&r), 3, "rows matched: %d", aorm_result_nrows(&r));
    const int64_t want[] = {3, 50, 100};
    for (int row = 0; row < 3; row++) {
        int64_t g;
        cr_assert_eq(aorm_result_int64(&r, row, 0, &g), 0, "row %d", row);
        cr_expect_eq(g, want[row], "row %d is %lld", row, (long long)g);
    }
    cr_expect_str_eq(aorm_result_cmd_tag(&r), "SELECT 3", "command tag");
    cr_expect_eq(aorm_result_affected(&r), 3, "affected rows");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, array_walker_malformed, .timeout = 30) {
    /* {len 2: "ab"}, {NULL}, {len 4: 7} */
    const char good[] = {0, 0, 0, 2, 'a', 'b', (char)0xff, (char)0xff, (char)0xff, (char)0xff, 0, 0, 0, 4, 0, 0, 0, 7};
    aorm_array a = {.elem_type = AORM_T_TEXT, .count = 3, .data = good, .end = good + sizeof(good)};
    const char *e;
    int len, n = 0, rc;
    while ((rc = aorm_array_next(&a, &e, &len)) == 1) n++;
    cr_expect_eq(rc, 0, "hand-made array walks cleanly");
    cr_expect_eq(n, 3, "three elements");

    /* Every truncation is refused, whether in a length word or in the
     * bytes it announces. */
    for (size_t cut = 1; cut < sizeof(good); cut++) {
        if (cut == 6 || cut == 10) continue; /* element boundaries: a valid shorter array */
        aorm_array t = {.elem_type = AORM_T_TEXT, .count = 3, .data = good, .end = good + cut};
        int last;
        int steps = 0;
        while ((last = aorm_array_next(&t, &e, &len)) == 1) steps++;
        cr_expect_eq(last, AORM_EPROTOCOL, "cut at %zu must be AORM_EPROTOCOL (after %d elements)", cut, steps);
    }

    /* Length words that lie. */
    const char huge[] = {0x7f, (char)0xff, (char)0xff, (char)0xff, 'x'};
    aorm_array h = {.elem_type = AORM_T_BYTEA, .count = 1, .data = huge, .end = huge + sizeof(huge)};
    cr_expect_eq(aorm_array_next(&h, &e, &len), AORM_EPROTOCOL, "length past the end");
    const char neg[] = {(char)0xff, (char)0xff, (char)0xff, (char)0xfe};
    aorm_array g = {.elem_type = AORM_T_BYTEA, .count = 1, .data = neg, .end = neg + sizeof(neg)};
    cr_expect_eq(aorm_array_next(&g, &e, &len), AORM_EPROTOCOL, "length -2");

    /* The integer decoders check the count and the element sizes. */
    const char ints[] = {0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 2};
    int64_t out[4];
    aorm_array i4 = {.elem_type = AORM_T_INT4, .count = 2, .data = ints, .end = ints + sizeof(ints)};
    cr_expect_eq(aorm_array_int64s(&i4, out, NULL, 4), 2, "well-formed int4 elements");
    cr_expect(out[0] == 1 && out[1] == 2, "values");
    i4.count = 3;
    cr_expect_eq(aorm_array_int64s(&i4, out, NULL, 4), AORM_EPROTOCOL, "count larger than the bytes");
    i4.count = 1;
    cr_expect_eq(aorm_array_int64s(&i4, out, NULL, 4), AORM_EPROTOCOL, "bytes left over");
    i4.count = 2;
    i4.elem_type = AORM_T_INT8;
    cr_expect_eq(aorm_array_int64s(&i4, out, NULL, 4), AORM_EPROTOCOL, "4-byte element in an int8 array");
    i4.elem_type = AORM_T_INT4;
    i4.end = ints + 10;
    cr_expect_eq(aorm_array_int64s(&i4, out, NULL, 4), AORM_EPROTOCOL, "truncated element");
    i4.count = -1;
    cr_expect_eq(aorm_array_int64s(&i4, out, NULL, 4), AORM_EPROTOCOL, "negative count");
    cr_expect_eq(aorm_array_int64s(NULL, out, NULL, 4), AORM_EMISUSE, "NULL array");
    cr_expect_eq(aorm_array_next(NULL, &e, &len), AORM_EMISUSE, "NULL array to next");
    aorm_array empty = {0};
    cr_expect_eq(aorm_array_next(&empty, &e, &len), 0, "zeroed array is empty");
    aorm_array half = {.data = ints};
    cr_expect_eq(aorm_array_next(&half, &e, &len), AORM_EPROTOCOL, "data without end");

    /* Single-value decoders. */
    int64_t x;
    double d;
    cr_expect_eq(aorm_decode_int(AORM_T_INT4, ints, 3, &x), AORM_EPROTOCOL, "int4 of 3 bytes");
    cr_expect_eq(aorm_decode_int(AORM_T_INT8, ints, 4, &x), AORM_EPROTOCOL, "int8 of 4 bytes");
    cr_expect_eq(aorm_decode_int(AORM_T_TEXT, ints, 4, &x), AORM_ETYPE, "int of text");
    cr_expect_eq(aorm_decode_int(AORM_T_INT2, ints, -1, &x), AORM_ENULLVALUE, "NULL element");
    cr_expect_eq(aorm_decode_float8(AORM_T_FLOAT8, ints, 4, &d), AORM_EPROTOCOL, "float8 of 4 bytes");
    cr_expect_eq(aorm_decode_float8(AORM_T_INT4, ints, 4, &d), AORM_ETYPE, "float of int4");
    cr_expect_eq(aorm_decode_int(AORM_T_OID, "\xff\xff\xff\xff", 4, &x), 0, "oid");
    cr_expect_eq(x, INT64_C(4294967295), "oid is unsigned");
}

/* ---- result shape and misuse -------------------------------------------------- */

Test(codec, result_misuse, .timeout = 30) {
    PGconn *c = conn();
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_int4(&p, 5);
    aorm_result r;
    PGresult *res = query(c, "SELECT $1::int4 AS \"Name\", 'x'::text AS name, NULL::int4 AS n", &p, &r);
    cr_expect_eq(aorm_result_nrows(&r), 1, "rows");
    cr_expect_eq(aorm_result_ncols(&r), 3, "cols");
    cr_expect_eq(aorm_result_col(&r, "Name"), 0, "case-sensitive lookup of Name");
    cr_expect_eq(aorm_result_col(&r, "name"), 1, "case-sensitive lookup of name");
    cr_expect_eq(aorm_result_col(&r, "NAME"), AORM_ENOTFOUND, "no folding");
    cr_expect_eq(aorm_result_col(&r, "\"Name\""), AORM_ENOTFOUND, "no quote stripping");
    cr_expect_eq(aorm_result_col(&r, NULL), AORM_EMISUSE, "NULL name");
    cr_expect_str_eq(aorm_result_col_name(&r, 0), "Name", "col name");
    cr_expect_null(aorm_result_col_name(&r, 3), "col name out of range");
    cr_expect_eq(aorm_result_col_type(&r, 0), AORM_T_INT4, "col type");
    cr_expect_eq(aorm_result_col_type(&r, -1), 0, "col type out of range");

    int32_t i;
    int64_t l;
    const char *s;
    cr_expect_eq(aorm_result_int32(&r, 1, 0, &i), AORM_ERANGE, "row out of range");
    cr_expect_eq(aorm_result_int32(&r, -1, 0, &i), AORM_ERANGE, "negative row");
    cr_expect_eq(aorm_result_int32(&r, 0, 3, &i), AORM_ERANGE, "column out of range");
    cr_expect_eq(aorm_result_int32(&r, 0, -1, &i), AORM_ERANGE, "negative column");
    cr_expect_eq(aorm_result_is_null(&r, 0, 3), AORM_ERANGE, "is_null out of range");
    cr_expect_eq(aorm_result_text(&r, 0, 0, &s, NULL), AORM_ETYPE, "text getter on int4");
    cr_expect_eq(aorm_result_int32(&r, 0, 1, &i), AORM_ETYPE, "int getter on text");
    cr_expect_eq(aorm_result_int32(&r, 0, 2, &i), AORM_ENULLVALUE, "NULL int4");
    cr_expect_eq(aorm_result_int32(NULL, 0, 0, &i), AORM_EMISUSE, "NULL result");
    cr_expect_eq(aorm_result_int32(&r, 0, 0, NULL), AORM_EMISUSE, "NULL out");
    cr_expect_eq(aorm_result_nrows(NULL), AORM_EMISUSE, "nrows of NULL");
    cr_assert_eq(aorm_result_int64(&r, 0, 0, &l), 0, "int64 reads int4");
    cr_expect_eq(l, 5, "value");

    const char *raw;
    int len;
    cr_assert_eq(aorm_result_raw(&r, 0, 0, &raw, &len), 0, "raw");
    cr_expect_eq(len, 4, "raw length");
    cr_expect(memcmp(raw, "\0\0\0\5", 4) == 0, "raw big-endian bytes");
    cr_assert_eq(aorm_result_raw(&r, 0, 2, &raw, &len), 0, "raw NULL");
    cr_expect_eq(len, -1, "raw NULL length");
    cr_expect_null(raw, "raw NULL pointer");
    cr_expect_str_eq(aorm_result_cmd_tag(&r), "SELECT 1", "tag");
    cr_expect_eq(aorm_result_affected(&r), 1, "affected");
    cr_expect_eq(aorm_result_affected(NULL), -1, "affected of NULL");
    PQclear(res);

    /* Command tags with and without counts. */
    aorm_params_reset(&p);
    res = send_params(c, "CREATE TEMP TABLE t_codec (id int8)", &p);
    cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "create: %s", PQerrorMessage(c));
    aorm__result_init(&r, res);
    cr_expect_eq(aorm_result_affected(&r), -1, "CREATE TABLE carries no count");
    cr_expect_eq(aorm_result_nrows(&r), 0, "no rows");
    cr_expect_eq(aorm_result_int64(&r, 0, 0, &l), AORM_ERANGE, "no cells");
    PQclear(res);
    res = send_params(c, "INSERT INTO t_codec SELECT generate_series(1, 7)", &p);
    cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "insert: %s", PQerrorMessage(c));
    aorm__result_init(&r, res);
    cr_expect_str_eq(aorm_result_cmd_tag(&r), "INSERT 0 7", "insert tag");
    cr_expect_eq(aorm_result_affected(&r), 7, "inserted rows");
    PQclear(res);
    aorm_params_int8(&p, 3);
    res = send_params(c, "DELETE FROM t_codec WHERE id > $1", &p);
    cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "delete: %s", PQerrorMessage(c));
    aorm__result_init(&r, res);
    cr_expect_eq(aorm_result_affected(&r), 4, "deleted rows");
    PQclear(res);

    /* A text-format result: text reads, binary decoders refuse. */
    res = PQexec(c, "SELECT 'abc'::text, 5::int4, '{\"k\": 1}'::jsonb");
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "simple query: %s", PQerrorMessage(c));
    aorm__result_init(&r, res);
    cr_expect_str_eq(text_at(&r, 0, 0), "abc", "text from a text-format result");
    cr_expect_str_eq(text_at(&r, 0, 2), "{\"k\": 1}", "text-format jsonb has no version byte");
    cr_expect_eq(aorm_result_int32(&r, 0, 1, &i), AORM_EPROTOCOL, "binary decoder on a text-format value");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

Test(codec, raw_params, .timeout = 30) {
    PGconn *c = conn();
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm_params_raw(&p, 0, "42", 2, 0), 0, "text-format raw with inferred type");
    cr_expect_eq(p.slots[0].len, 2, "terminator not counted");
    cr_expect_eq(aorm__params_value(&p, 0)[2], '\0', "terminator present");
    cr_assert_eq(aorm_params_raw(&p, AORM_T_INT8, "\0\0\0\0\0\0\0\x09", 8, 1), 0, "binary raw");
    cr_assert_eq(aorm_params_raw(&p, AORM_T_TEXT, NULL, 0, 0), 0, "NULL raw");
    cr_assert_eq(aorm_params_raw(&p, AORM_T_TEXT, "", 0, 0), 0, "empty text-format raw");
    aorm_result r;
    PGresult *res = query(c, "SELECT $1::int4, $2::int8, $3::text IS NULL, $4::text", &p, &r);
    int32_t i;
    int64_t l;
    bool b = false;
    cr_assert_eq(aorm_result_int32(&r, 0, 0, &i), 0, "int4");
    cr_expect_eq(i, 42, "text-format value");
    cr_assert_eq(aorm_result_int64(&r, 0, 1, &l), 0, "int8");
    cr_expect_eq(l, 9, "binary value");
    cr_assert_eq(aorm_result_bool(&r, 0, 2, &b), 0, "IS NULL");
    cr_expect(b, "NULL raw");
    cr_expect_str_eq(text_at(&r, 0, 3), "", "empty text");
    PQclear(res);
    aorm_params_free(&p);
    PQfinish(c);
}

/* ---- regressions found by tests/fuzz/fuzz_codec ------------------------------- */

/* A numeric without digits is zero whatever its weight says: it prints
 * "0" with its fraction digits, never leading zeros ("0000000000000.00"
 * would not even re-encode to the same text). */
Test(codec, numeric_zero_with_weight, .timeout = 30) {
    char buf[64];
    size_t need = 0;
    const char zero_w3[] = {0, 0, 0, 3, 0, 0, 0, 2}; /* ndigits 0, weight 3, dscale 2 */
    cr_assert_eq(aorm_decode_numeric(zero_w3, 8, buf, sizeof(buf), &need), 4, "zero with a weight");
    cr_expect_str_eq(buf, "0.00");
    cr_expect_eq(need, 4);
    const char zero_digits[] = {0, 2, 0, 5, 0x40, 0, 0, 0, 0, 0, 0, 0}; /* digits 0000 0000, weight 5, negative */
    cr_assert_eq(aorm_decode_numeric(zero_digits, 12, buf, sizeof(buf), NULL), 1, "zero digits with a weight");
    cr_expect_str_eq(buf, "0", "no leading zeros, no minus sign");
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm_params_numeric(&p, "0.00"), 0);
    cr_assert_eq(aorm_decode_numeric(aorm__params_value(&p, 0), p.slots[0].len, buf, sizeof(buf), NULL), 4);
    cr_expect_str_eq(buf, "0.00", "the canonical zero reads the same");
    aorm_params_free(&p);
}

/* The server refuses a Bind message of 1 GiB or more, and only after the
 * client sent all of it: a builder refuses values that cannot fit before
 * copying anything (the source below is one byte long; the length alone
 * is refused). */
Test(codec, params_bounded_by_the_servers_message_limit, .timeout = 30) {
    static const uint8_t one = 7;
    aorm_params p;
    aorm_params_init(&p);
    cr_assert_eq(aorm_params_bytea(&p, &one, (size_t)1 << 30), AORM_ERANGE, "1 GiB in one value");
    cr_assert_eq(aorm_params_count(&p), 0, "no slot left behind");
    aorm_params_reset(&p);
    cr_assert_eq(aorm_params_bytea(&p, &one, ((size_t)1 << 30) - ((size_t)1 << 20) + 1), AORM_ERANGE,
                 "just over the bound");
    aorm_params_reset(&p);
    cr_assert_eq(aorm_params_bytea(&p, &one, (size_t)UINT32_MAX + 2), AORM_ERANGE, "past 4 GiB");
    aorm_params_reset(&p);
    cr_assert_eq(aorm_params_bytea(&p, &one, 1), 0, "a small value after a reset");
    cr_assert_eq(aorm_params_count(&p), 1);
    aorm_params_free(&p);
}

/* ---- interval, inet / cidr, the field codecs of arrays and enums --------------- */

Test(codec, interval_roundtrip, .timeout = 30) {
    PGconn *c = conn();
    free(t_pg_exec(c, "SET IntervalStyle = 'postgres'"));
    const aorm_interval v[] = {{0, 0, 0}, {7200000005LL, 3, 14}, {-1, -2, -3}, {INT64_MAX, INT32_MAX, INT32_MIN}};
    const char *text[] = {"00:00:00", "1 year 2 mons 3 days 02:00:00.000005", "-3 mons -2 days -00:00:00.000001",
                          NULL};
    aorm_params p;
    aorm_params_init(&p);
    for (int i = 0; i < 4; i++) aorm_params_interval(&p, &v[i]);
    aorm_params_interval(&p, NULL);
    aorm_result r;
    PGresult *res = query(c, "SELECT $1, $2, $3, $4, $5, $1::text, $2::text, $3::text, '1 day'::interval", &p, &r);
    for (int i = 0; i < 4; i++) {
        aorm_interval got;
        cr_assert_eq(aorm_result_interval(&r, 0, i, &got), 0, "col %d", i);
        cr_expect(got.usecs == v[i].usecs && got.days == v[i].days && got.months == v[i].months, "interval %d", i);
        if (text[i]) cr_expect_str_eq(text_at(&r, 0, 5 + i), text[i], "server text of %d", i);
    }
    aorm_interval got;
    cr_expect_eq(aorm_result_interval(&r, 0, 4, &got), AORM_ENULLVALUE);
    cr_assert_eq(aorm_result_interval(&r, 0, 8, &got), 0);
    cr_expect(got.days == 1 && got.usecs == 0 && got.months == 0, "server's 1 day");
    cr_expect_eq(aorm_result_interval(&r, 0, 5, &got), AORM_ETYPE, "text is not an interval");
    PQclear(res);
    aorm_params_free(&p);
    char bad[15] = {0};
    cr_expect_eq(aorm_decode_interval(bad, 15, &got), AORM_EPROTOCOL);
    PQfinish(c);
}

Test(codec, inet_and_cidr, .timeout = 30) {
    PGconn *c = conn();
    aorm_inet h4 = {.family = AORM_INET_V4, .bits = 32, .addr = {192, 168, 1, 7}};
    aorm_inet m4 = {.family = AORM_INET_V4, .bits = 8, .addr = {10, 1, 2, 3}};
    aorm_inet n6 = {.family = AORM_INET_V6, .bits = 32, .addr = {0x20, 0x01, 0x0d, 0xb8}};
    aorm_inet h6 = {.family = AORM_INET_V6, .bits = 128, .addr = {[15] = 1}};
    aorm_params p;
    aorm_params_init(&p);
    aorm_params_inet(&p, &h4);
    aorm_params_inet(&p, &m4);
    aorm_params_cidr(&p, &n6);
    aorm_params_inet(&p, &h6);
    aorm_params_inet(&p, NULL);
    aorm_result r;
    PGresult *res = query(c, "SELECT $1, $2, $3, $4, $5, $1::text, $2::text, $3::text, $4::text, '172.16.0.0/12'::cidr",
                          &p, &r);
    const aorm_inet *want[] = {&h4, &m4, &n6, &h6};
    const char *text[] = {"192.168.1.7/32", "10.1.2.3/8", "2001:db8::/32", "::1/128"};
    for (int i = 0; i < 4; i++) {
        aorm_inet got;
        cr_assert_eq(aorm_result_inet(&r, 0, i, &got), 0, "col %d", i);
        cr_expect(got.family == want[i]->family && got.bits == want[i]->bits &&
                      memcmp(got.addr, want[i]->addr, got.family == AORM_INET_V4 ? 4 : 16) == 0,
                  "inet %d", i);
        cr_expect_str_eq(text_at(&r, 0, 5 + i), text[i], "server text of %d", i);
    }
    aorm_inet got;
    cr_expect_eq(aorm_result_inet(&r, 0, 4, &got), AORM_ENULLVALUE);
    cr_assert_eq(aorm_result_inet(&r, 0, 9, &got), 0);
    cr_expect(got.family == AORM_INET_V4 && got.bits == 12 && got.addr[0] == 172 && got.addr[1] == 16);
    PQclear(res);
    aorm_params_free(&p);
    /* refused before sending: host bits in a cidr, bits past the address, a bad family */
    aorm_inet bad1 = m4, bad2 = h4, bad3 = h4;
    bad2.bits = 33;
    bad3.family = 5;
    aorm_params_init(&p);
    cr_expect_eq(aorm_params_cidr(&p, &bad1), AORM_EENCODING);
    aorm_params_free(&p);
    aorm_params_init(&p);
    cr_expect_eq(aorm_params_inet(&p, &bad2), AORM_EENCODING);
    aorm_params_free(&p);
    aorm_params_init(&p);
    cr_expect_eq(aorm_params_inet(&p, &bad3), AORM_EENCODING);
    aorm_params_free(&p);
    const char odd[8] = {2, 32, 0, 16, 1, 2, 3, 4}; /* v4 family with a 16-byte length */
    cr_expect_eq(aorm_decode_inet(odd, 8, &got), AORM_EPROTOCOL);
    PQfinish(c);
}

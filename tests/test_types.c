/* test_types.c -- how column types meet C fields through the session,
 * against the sandbox PostgreSQL.
 *
 * What is proved: a value the model's field cannot hold (an interval, a
 * text[], an inet read into a text field; an int8 into an int4 field) fails
 * the query with an error that names the model, the column, the server's
 * type and the field's type, and leaves the session usable.
 *
 * Isolation: this file's table (typ_cells) is created with IF NOT EXISTS
 * under an advisory lock; rows are only read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapping/mapping.h"
#include "models.h"
#include "session_kit.h"
#include "support.h"

#define TIMEOUT 60

typedef struct typ_cell {
    int64_t id;
    char *span;   /* interval in the table */
    char *tags;   /* text[] in the table */
    char *addr;   /* inet in the table */
    int32_t big;  /* bigint in the table */
} typ_cell;

/* one model per mismatching column, each selecting the key and that column */
#define CELL_MODEL(NAME, FIELD, T)                                                            \
    static const aorm_column NAME##_columns[] = {                                             \
        AORM_COLUMN(typ_cell, id, AORM_INT8, AORM_PK),                                        \
        AORM_COLUMN(typ_cell, FIELD, T, 0),                                                   \
    };                                                                                        \
    static const aorm_model NAME = {.name = #NAME, .table = "typ_cells", .size = sizeof(typ_cell), \
                                    AORM_COLUMNS(NAME##_columns)}

CELL_MODEL(cell_span, span, AORM_TEXT);
CELL_MODEL(cell_tags, tags, AORM_TEXT);
CELL_MODEL(cell_addr, addr, AORM_TEXT);
CELL_MODEL(cell_big, big, AORM_INT4);

static void ensure_table(PGconn *pg) {
    free(t_pg_exec(pg, "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(74313);"
                       "CREATE TABLE IF NOT EXISTS typ_cells (id bigint PRIMARY KEY, span interval NOT NULL, "
                       "  tags text[] NOT NULL, addr inet NOT NULL, big bigint NOT NULL);"
                       "INSERT INTO typ_cells VALUES (1, '1 day 2 hours', '{a,b}', '10.0.0.1/8', 5000000000) "
                       "  ON CONFLICT DO NOTHING;"
                       "COMMIT"));
}

static void expect_named(env *t, aorm_session *s, const aorm_model *m, const char *column, const char *pgtype,
                         const char *field) {
    qres r;
    query(t, s, aorm_select(m), NULL, &r);
    cr_assert_not_null(r.err, "%s: loaded", m->name);
    char want[128];
    snprintf(want, sizeof(want), "%s.%s", m->name, column);
    cr_assert(strstr(r.err->message, want), "no %s in: %s", want, r.err->message);
    cr_assert(strstr(r.err->message, pgtype), "no %s in: %s", pgtype, r.err->message);
    cr_assert(strstr(r.err->message, field), "no %s in: %s", field, r.err->message);
    qres_free(&r);
}

Test(types, decode_errors_name_model_column_and_types, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    ensure_table(pg);
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    expect_named(&t, s, &cell_span, "span", "interval", "AORM_TEXT");
    expect_named(&t, s, &cell_tags, "tags", "text[]", "AORM_TEXT");
    expect_named(&t, s, &cell_addr, "addr", "inet", "AORM_TEXT");
    expect_named(&t, s, &cell_big, "big", "bigint", "AORM_INT4");
    /* the session is not harmed: reads go on */
    qres r;
    query_ok(&t, s, aorm_select(&tag_model), NULL, &r);
    cr_assert_eq(r.len, 50);
    qres_free(&r);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

/* ---- every mapped type, round trip through the session --------------------
 * A model with an enum, interval, inet, cidr, jsonb, timestamptz and every
 * array column type: inserted (two objects: a multi-row INSERT), loaded in
 * another session, changed (an array element in place, whole arrays
 * replaced, NULLs set), flushed, loaded again. Its table and enum type
 * come from aorm_ddl_create_sql (CREATE TYPE before CREATE TABLE). */

typedef enum typ_mood { MOOD_SAD = 10, MOOD_OK = 20, MOOD_HAPPY = 30 } typ_mood;
static const char *const typ_mood_labels[] = {"sad", "ok", "happy it's"};
static const int typ_mood_values[] = {MOOD_SAD, MOOD_OK, MOOD_HAPPY};
static const aorm_enum typ_mood_enum = {"typ_mood", NULL, typ_mood_labels, typ_mood_values, 3};

typedef struct typ_all {
    int64_t id;
    typ_mood mood;
    aorm_opt_int32 mood2;
    aorm_interval span;
    aorm_opt_interval span2;
    aorm_inet addr;
    aorm_opt_inet net;
    char *doc;
    int64_t at;
    aorm_array_bool bools;
    aorm_array_int16 i2s;
    aorm_array_int32 i4s;
    aorm_array_int64 i8s;
    aorm_array_float f4s;
    aorm_array_double f8s;
    aorm_array_text nums;
    aorm_array_text texts;
    aorm_array_uuid uuids;
    aorm_array_int64 tss;   /* nullable */
} typ_all;

static const aorm_column typ_all_columns[] = {
    AORM_COLUMN(typ_all, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(typ_all, mood, AORM_ENUM, 0, .enum_type = &typ_mood_enum),
    AORM_COLUMN(typ_all, mood2, AORM_ENUM, AORM_NULLABLE, .enum_type = &typ_mood_enum),
    AORM_COLUMN(typ_all, span, AORM_INTERVAL, 0),
    AORM_COLUMN(typ_all, span2, AORM_INTERVAL, AORM_NULLABLE),
    AORM_COLUMN(typ_all, addr, AORM_INET, 0),
    AORM_COLUMN(typ_all, net, AORM_CIDR, AORM_NULLABLE),
    AORM_COLUMN(typ_all, doc, AORM_JSONB, AORM_NULLABLE),
    AORM_COLUMN(typ_all, at, AORM_TIMESTAMPTZ, 0),
    AORM_COLUMN(typ_all, bools, AORM_BOOL_ARRAY, 0),
    AORM_COLUMN(typ_all, i2s, AORM_INT2_ARRAY, 0),
    AORM_COLUMN(typ_all, i4s, AORM_INT4_ARRAY, 0),
    AORM_COLUMN(typ_all, i8s, AORM_INT8_ARRAY, 0),
    AORM_COLUMN(typ_all, f4s, AORM_FLOAT4_ARRAY, 0),
    AORM_COLUMN(typ_all, f8s, AORM_FLOAT8_ARRAY, 0),
    AORM_COLUMN(typ_all, nums, AORM_NUMERIC_ARRAY, 0),
    AORM_COLUMN(typ_all, texts, AORM_TEXT_ARRAY, 0),
    AORM_COLUMN(typ_all, uuids, AORM_UUID_ARRAY, 0),
    AORM_COLUMN(typ_all, tss, AORM_TIMESTAMPTZ_ARRAY, AORM_NULLABLE),
};
static const aorm_model typ_all_model = {AORM_MODEL_OF(typ_all, "typ_all"), AORM_COLUMNS(typ_all_columns)};

static void create_typ_all(PGconn *pg) {
    const aorm_model *ms[] = {&typ_all_model};
    char msg[256] = "", *create = NULL, *drop = NULL;
    cr_assert_eq(aorm_model_validate(&typ_all_model, msg, sizeof msg), 0, "%s", msg);
    cr_assert_eq(aorm_ddl_create_sql(ms, 1, 0, &create, msg, sizeof msg), 0, "%s", msg);
    cr_assert_eq(aorm_ddl_drop_sql(ms, 1, AORM_DDL_IF_EXISTS, &drop, msg, sizeof msg), 0, "%s", msg);
    cr_assert(strstr(create, "CREATE TYPE \"typ_mood\" AS ENUM ('sad', 'ok', 'happy it''s');"), "%s", create);
    cr_assert(strstr(create, "\"mood\" \"typ_mood\" NOT NULL"), "%s", create);
    cr_assert(strstr(create, "\"tss\" timestamp with time zone[],"), "%s", create);
    cr_assert(strstr(create, "CREATE TYPE") < strstr(create, "CREATE TABLE"), "%s", create);
    cr_assert(strstr(drop, "DROP TABLE IF EXISTS \"typ_all\"") < strstr(drop, "DROP TYPE IF EXISTS \"typ_mood\""),
              "%s", drop);
    /* once per sandbox: the tests of this file run in parallel on it */
    free(t_pg_execf(pg,
                    "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(74314); "
                    "DO $t$ BEGIN IF to_regclass('typ_all') IS NULL THEN EXECUTE $x$ %s %s $x$; END IF; END $t$; "
                    "COMMIT",
                    drop, create));
    free(create);
    free(drop);
}

static aorm_inet inet4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint8_t bits) {
    aorm_inet v = {.family = AORM_INET_V4, .bits = bits, .addr = {a, b, c, d}};
    return v;
}

static void fill_typ_all(typ_all *o, int64_t id) {
    static bool bools[] = {true, false, true};
    static int16_t i2s[] = {-32768, 0, 32767};
    static int32_t i4s[] = {INT32_MIN, 7};
    static int64_t i8s[] = {INT64_MAX, -1, 0};
    static float f4s[] = {1.5f, -0.25f};
    static double f8s[] = {3.141592653589793, -1e300};
    static char *nums[] = {"12345678901234567890.000001", "-0.5", "NaN"};
    static char *texts[] = {"a", NULL, "quote\" comma, brace}", ""};
    static aorm_uuid uuids[2] = {{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}, {{0}}};
    static int64_t tss[2];
    cr_assert_eq(aorm_timestamptz_parse("2026-12-02T17:04:05.123456+01:00", &tss[0]), 0);
    cr_assert_eq(aorm_timestamptz_parse("1999-12-31T23:59:59Z", &tss[1]), 0);
    o->id = id;
    o->mood = MOOD_HAPPY;
    o->mood2 = AORM_SOME(aorm_opt_int32, MOOD_SAD);
    o->span = (aorm_interval){.usecs = 7200000000LL + 5, .days = 3, .months = 14};
    o->span2 = AORM_NONE(aorm_opt_interval);
    o->addr = inet4(10, 1, 2, 3, 8);
    aorm_inet v6 = {.family = AORM_INET_V6, .bits = 32, .addr = {0x20, 0x01, 0x0d, 0xb8}};
    o->net = AORM_SOME(aorm_opt_inet, v6);
    o->doc = "{\"k\": [1, 2, {\"n\": null}]}";
    o->at = tss[0];
    o->bools = (aorm_array_bool){bools, 3};
    o->i2s = (aorm_array_int16){i2s, 3};
    o->i4s = (aorm_array_int32){i4s, 2};
    o->i8s = (aorm_array_int64){i8s, 3};
    o->f4s = (aorm_array_float){f4s, 2};
    o->f8s = (aorm_array_double){f8s, 2};
    o->nums = (aorm_array_text){nums, 3};
    o->texts = (aorm_array_text){texts, 4};
    o->uuids = (aorm_array_uuid){uuids, 2};
    o->tss = (aorm_array_int64){tss, 2};
}

/* Every column of a and b holds the same value (the session's own test). */
static void expect_same(const typ_all *a, const typ_all *b) {
    for (size_t i = 0; i < sizeof(typ_all_columns) / sizeof(*typ_all_columns); i++) {
        const aorm_column *c = &typ_all_columns[i];
        cr_assert(aorm__field_equal(c, a, b), "column %s differs after the round trip", c->name);
    }
}

static typ_all *load_typ_all(env *t, aorm_session *s, int64_t id, qres *r) {
    aorm_stmt *q = aorm_select(&typ_all_model);
    aorm_where(q, aorm_eq(AORM_COL(typ_all, id), aorm_int8(id)));
    query_ok(t, s, q, NULL, r);
    cr_assert_eq(r->len, 1);
    return r->items[0];
}

Test(types, every_type_round_trips_through_the_session, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    create_typ_all(pg);
    free(t_pg_exec(pg, "DELETE FROM typ_all WHERE id IN (1, 2)"));
    env t;
    env_open(&t, true);

    /* insert two (a multi-row INSERT: VALUES rows, these types have no unnest form) */
    aorm_session *s = session_new(&t);
    typ_all *a = aorm_session_new_object(s, &typ_all_model), *b = aorm_session_new_object(s, &typ_all_model);
    fill_typ_all(a, 1);
    fill_typ_all(b, 2);
    b->mood = MOOD_OK;
    b->doc = NULL;
    b->tss = (aorm_array_int64){NULL, 0}; /* SQL NULL */
    b->i8s = (aorm_array_int64){NULL, 0}; /* NOT NULL: the empty array */
    typ_all a0 = *a, b0 = *b;
    cr_assert_eq(aorm_session_add(s, a), 0);
    cr_assert_eq(aorm_session_add(s, b), 0);
    session_commit(&t, s);
    cr_assert_eq(echo_count(&t, "INSERT INTO \"typ_all\""), 1, "one INSERT for both rows");
    aorm_session_free(s);

    /* load in a new session: the same values */
    s = session_new(&t);
    qres ra, rb;
    typ_all *la = load_typ_all(&t, s, 1, &ra), *lb = load_typ_all(&t, s, 2, &rb);
    expect_same(la, &a0);
    expect_same(lb, &b0);
    cr_assert_null(lb->tss.v, "NULL array");
    cr_assert_not_null(lb->i8s.v, "an empty array is not NULL");
    cr_assert_eq(lb->i8s.n, 0);
    cr_assert_null(la->texts.v[1], "NULL text element");
    cr_assert_str_eq(la->texts.v[2], "quote\" comma, brace}");
    cr_assert_eq(la->mood, MOOD_HAPPY);
    cr_assert(!aorm_object_modified(s, la), "freshly loaded");

    /* change: an element in place (the snapshot has its own copy), arrays
     * replaced, enum / interval / inet values, NULLs set and cleared */
    la->i8s.v[1] = 42;
    cr_assert(aorm_object_modified(s, la), "an array element changed in place is a change");
    static char *texts2[] = {"x", "y"};
    static int32_t i4s2[] = {1, 2, 3, 4};
    la->texts = (aorm_array_text){texts2, 2};
    la->i4s = (aorm_array_int32){i4s2, 4};
    la->mood = MOOD_SAD;
    la->mood2 = AORM_NONE(aorm_opt_int32);
    la->span2 = AORM_SOME(aorm_opt_interval, ((aorm_interval){.usecs = -1, .days = -2, .months = -3}));
    la->addr = inet4(192, 168, 0, 1, 32);
    la->net = AORM_NONE(aorm_opt_inet);
    la->doc = NULL;
    la->tss = (aorm_array_int64){NULL, 0};
    static int64_t tss2[] = {0};
    lb->tss = (aorm_array_int64){tss2, 1};
    lb->mood2 = AORM_NONE(aorm_opt_int32);
    typ_all a1 = *la, b1 = *lb;
    int64_t a1_i8s[3];
    memcpy(a1_i8s, la->i8s.v, sizeof a1_i8s);
    a1.i8s.v = a1_i8s;
    echo_clear(&t);
    session_commit(&t, s);
    cr_assert_eq(echo_count(&t, "UPDATE \"typ_all\""), 2, "one UPDATE per changed object");
    cr_assert(!aorm_object_modified(s, la), "flushed");
    qres_free(&ra);
    qres_free(&rb);

    /* reload in another session (a1/b1 point into the first one's arrays) */
    aorm_session *s2 = session_new(&t);
    la = load_typ_all(&t, s2, 1, &ra);
    lb = load_typ_all(&t, s2, 2, &rb);
    expect_same(la, &a1);
    expect_same(lb, &b1);
    cr_assert_eq(la->i8s.v[1], 42);
    cr_assert_eq(la->mood, MOOD_SAD);
    cr_assert(!la->mood2.valid);
    qres_free(&ra);
    qres_free(&rb);
    aorm_session_free(s2);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

/* A label the descriptor does not know fails the load, naming the column. */
Test(types, unknown_enum_label_names_the_column, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    create_typ_all(pg);
    free(t_pg_exec(pg, "ALTER TYPE typ_mood ADD VALUE IF NOT EXISTS 'new_one'"));
    free(t_pg_exec(pg, "INSERT INTO typ_all (id, mood, span, addr, at, bools, i2s, i4s, i8s, f4s, f8s, nums, texts, "
                       "uuids) VALUES (9, 'new_one', '1 day', '::1', now(), '{}', '{}', '{}', '{}', '{}', '{}', '{}', "
                       "'{}', '{}') ON CONFLICT DO NOTHING"));
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    expect_named(&t, s, &typ_all_model, "mood", "OID", "AORM_ENUM");
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

/* Array values the C arrays cannot hold fail the load by name: a NULL
 * element of an integer array, a two-dimensional array. */
typedef struct typ_bad {
    int64_t id;
    aorm_array_int64 i8s;
} typ_bad;
static const aorm_column typ_bad_columns[] = {
    AORM_COLUMN(typ_bad, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(typ_bad, i8s, AORM_INT8_ARRAY, 0),
};
static const aorm_model typ_bad_model = {AORM_MODEL_OF(typ_bad, "typ_bad"), AORM_COLUMNS(typ_bad_columns)};

static void expect_row_named(env *t, aorm_session *s, int64_t id, const char *why) {
    qres r;
    aorm_stmt *q = aorm_select(&typ_bad_model);
    aorm_where(q, aorm_eq(AORM_COL(typ_bad, id), aorm_int8(id)));
    query(t, s, q, NULL, &r);
    cr_assert_not_null(r.err, "row %lld loaded", (long long)id);
    cr_assert(strstr(r.err->message, "typ_bad.i8s") && strstr(r.err->message, "bigint[]") &&
                  strstr(r.err->message, "AORM_INT8_ARRAY") && strstr(r.err->message, why),
              "row %lld: %s", (long long)id, r.err->message);
    qres_free(&r);
}

Test(types, array_values_a_c_array_cannot_hold, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(74315);"
                       "CREATE TABLE IF NOT EXISTS typ_bad (id bigint PRIMARY KEY, i8s bigint[] NOT NULL);"
                       "INSERT INTO typ_bad VALUES (1, '{1,NULL}'), (2, '{{1},{2}}'), (3, '{5,6}') "
                       "  ON CONFLICT DO NOTHING; COMMIT"));
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    expect_row_named(&t, s, 1, aorm_strerror(AORM_ENULLVALUE));
    expect_row_named(&t, s, 2, aorm_strerror(AORM_ETYPE));
    qres r;
    aorm_stmt *q = aorm_select(&typ_bad_model);
    aorm_where(q, aorm_eq(AORM_COL(typ_bad, id), aorm_int8(3)));
    query_ok(&t, s, q, NULL, &r);
    typ_bad *b = r.items[0];
    cr_assert(b->i8s.n == 2 && b->i8s.v[0] == 5 && b->i8s.v[1] == 6);
    qres_free(&r);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

/* json hooks: serialize refuses a document before it is sent; parse sees
 * every loaded document. */
static int json_parsed;
static int json_parse(void *user, const char *text, size_t len) {
    (void)user;
    (void)text;
    (void)len;
    json_parsed++;
    return 0;
}
static int json_serialize(void *user, const char *text, size_t len) {
    (void)user;
    return len >= 3 && memcmp(text, "bad", 3) == 0 ? AORM_EENCODING : 0;
}

Test(types, json_hooks_check_documents_both_ways, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    create_typ_all(pg);
    free(t_pg_exec(pg, "DELETE FROM typ_all WHERE id IN (5, 6)"));
    aorm_json_set_hooks(&(aorm_json_hooks){.parse = json_parse, .serialize = json_serialize});
    env t;
    env_open(&t, false);
    aorm_session *s = session_new(&t);
    typ_all *a = aorm_session_new_object(s, &typ_all_model);
    fill_typ_all(a, 5);
    a->doc = "bad json";
    cr_assert_eq(aorm_session_add(s, a), 0);
    dres d = {0};
    cr_assert_eq(aorm_session_flush(s, on_done, &d), 0);
    wait_done(&t, &d.done, "flush");
    cr_assert_not_null(d.err, "a refused document fails the flush");
    cr_assert_eq(d.err->code, AORM_EENCODING, "%s", d.err->message);
    aorm_error_free(d.err);
    aorm_session_free(s);

    s = session_new(&t);
    a = aorm_session_new_object(s, &typ_all_model);
    fill_typ_all(a, 6);
    cr_assert_eq(aorm_session_add(s, a), 0);
    session_commit(&t, s);
    aorm_session_free(s);
    s = session_new(&t);
    json_parsed = 0;
    qres r;
    typ_all *l = load_typ_all(&t, s, 6, &r);
    cr_assert_str_eq(l->doc, "{\"k\": [1, 2, {\"n\": null}]}");
    cr_assert_eq(json_parsed, 1, "parse saw the loaded document");
    qres_free(&r);
    aorm_json_set_hooks(NULL);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

/* 1000 new objects take the flush's COPY path (binary COPY of the same
 * encodings): they come back equal. */
Test(types, every_type_through_the_copy_path, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    create_typ_all(pg);
    free(t_pg_exec(pg, "DELETE FROM typ_all WHERE id >= 1000 AND id < 3000"));
    env t;
    env_open(&t, true);
    aorm_session *s = session_new(&t);
    typ_all first;
    for (int i = 0; i < 1000; i++) {
        typ_all *o = aorm_session_new_object(s, &typ_all_model);
        fill_typ_all(o, 1000 + i);
        if (i == 0) first = *o;
        cr_assert_eq(aorm_session_add(s, o), 0);
    }
    session_commit(&t, s);
    cr_assert_eq(echo_count(&t, "COPY \"typ_all\""), 1, "one COPY");
    aorm_session *s2 = session_new(&t);
    qres r;
    typ_all *l = load_typ_all(&t, s2, 1000, &r);
    expect_same(l, &first);
    qres_free(&r);
    cr_assert_eq(t_pg_long(pg, "SELECT count(*) FROM typ_all WHERE id >= 1000 AND id < 2000"), 1000);
    aorm_session_free(s2);
    aorm_session_free(s);
    env_close(&t);
    PQfinish(pg);
}

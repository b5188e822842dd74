/* test_json_model.c -- aorm-httpd's object <-> JSON helpers
 * (examples/httpd/json_model.c): ISO 8601 dates and times both ways,
 * every column type to JSON and back, and the messages a client gets for
 * a body that does not fit. No statement is sent: the session only holds
 * the objects and their strings. */
#include <criterion/criterion.h>
#include <ev.h>
#include <string.h>

#include "json_model.h"
#include "support.h"

typedef struct sample {
    int64_t id;
    bool flag;
    int16_t small;
    aorm_opt_int32 maybe;
    float f4;
    double f8;
    char *amount;      /* numeric */
    char *name;
    aorm_bytes blob;
    int32_t day;
    int64_t at;
    aorm_opt_int64 seen; /* timestamptz */
    aorm_uuid uid;
    char *doc;         /* jsonb */
} sample;

static const aorm_column sample_columns[] = {
    AORM_COLUMN(sample, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(sample, flag, AORM_BOOL, 0),
    AORM_COLUMN(sample, small, AORM_INT2, 0),
    AORM_COLUMN(sample, maybe, AORM_INT4, AORM_NULLABLE),
    AORM_COLUMN(sample, f4, AORM_FLOAT4, 0),
    AORM_COLUMN(sample, f8, AORM_FLOAT8, 0),
    AORM_COLUMN(sample, amount, AORM_NUMERIC, AORM_NULLABLE),
    AORM_COLUMN(sample, name, AORM_TEXT, 0),
    AORM_COLUMN(sample, blob, AORM_BYTEA, AORM_NULLABLE),
    AORM_COLUMN(sample, day, AORM_DATE, 0),
    AORM_COLUMN(sample, at, AORM_TIMESTAMP, 0),
    AORM_COLUMN(sample, seen, AORM_TIMESTAMPTZ, AORM_NULLABLE),
    AORM_COLUMN(sample, uid, AORM_UUID, 0),
    AORM_COLUMN(sample, doc, AORM_JSONB, AORM_NULLABLE),
};
static const aorm_model sample_model = {
    AORM_MODEL_OF(sample, "samples"),
    AORM_COLUMNS(sample_columns),
};

static struct ev_loop *evl;
static aorm_loop *loop;
static aorm_engine *engine;
static aorm_session *s;

/* An engine that never connects (nothing is executed), for a session to
 * own the objects. */
static void setup(void) {
    t_loop_open(&evl, &loop);
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    o.conninfo = "host=/nonexistent dbname=none";
    engine = aorm_engine_new(loop, &o);
    cr_assert_not_null(engine);
    s = aorm_session_new(engine, NULL);
    cr_assert_not_null(s);
}

static void teardown(void) {
    aorm_session_free(s);
    aorm_engine_free(engine);
    t_loop_close(&evl, &loop);
}

TestSuite(json_model, .init = setup, .fini = teardown, .timeout = 10);

Test(json_model, dates_and_timestamps_both_ways) {
    char buf[48];
    int32_t d;
    cr_assert_eq(jm_parse_date("2026-12-02", &d), 0);
    jm_format_date(d, buf, sizeof buf);
    cr_assert_str_eq(buf, "2026-12-02");
    cr_assert_eq(jm_parse_date("1999-12-31", &d), 0);
    cr_assert_eq(d, -1);
    cr_assert_eq(jm_parse_date("2024-02-29", &d), 0);
    cr_assert_eq(jm_parse_date("2023-02-29", &d), -1);
    cr_assert_eq(jm_parse_date("2023-13-01", &d), -1);
    cr_assert_eq(jm_parse_date("2023-1-01", &d), -1);
    cr_assert_eq(jm_parse_date("2023-01-01x", &d), -1);

    int64_t ts;
    cr_assert_eq(jm_parse_timestamp("2000-01-01T00:00:01.5", false, &ts), 0);
    cr_assert_eq(ts, 1500000);
    jm_format_timestamp(ts, false, buf, sizeof buf);
    cr_assert_str_eq(buf, "2000-01-01T00:00:01.500000");
    cr_assert_eq(jm_parse_timestamp("1999-12-31T23:59:59.999999", false, &ts), 0);
    cr_assert_eq(ts, -1);
    jm_format_timestamp(ts, true, buf, sizeof buf);
    cr_assert_str_eq(buf, "1999-12-31T23:59:59.999999Z");
    /* zones become UTC, and only where a zone is allowed */
    cr_assert_eq(jm_parse_timestamp("2026-12-02T17:30:00+02:00", true, &ts), 0);
    int64_t utc;
    cr_assert_eq(jm_parse_timestamp("2026-12-02T15:30:00Z", true, &utc), 0);
    cr_assert_eq(ts, utc);
    cr_assert_eq(jm_parse_timestamp("2026-12-02 15:30:00", true, &ts), 0);
    cr_assert_eq(ts, utc);
    cr_assert_eq(jm_parse_timestamp("2026-12-02T15:30:00Z", false, &ts), -1);
    cr_assert_eq(jm_parse_timestamp("2026-12-02T24:00:00", false, &ts), -1);
    cr_assert_eq(jm_parse_timestamp("2026-12-02T15:30", false, &ts), -1);
    cr_assert_eq(jm_parse_timestamp("2026-12-02T15:30:00.", false, &ts), -1);
    jm_format_timestamp(AORM_TIMESTAMP_INFINITY, true, buf, sizeof buf);
    cr_assert_str_eq(buf, "infinity");
}

static const char BODY[] =
    "{\"id\": 7, \"flag\": true, \"small\": -3, \"maybe\": null, \"f4\": 1.5, \"f8\": 2,"
    " \"amount\": \"12.340\", \"name\": \"Ünïcode <ok>\", \"blob\": \"\\\\x00ff10\", \"day\": \"2026-12-02\","
    " \"at\": \"2026-12-02T15:30:00.000001\", \"seen\": \"2026-12-02T17:30:00+02:00\","
    " \"uid\": \"0123abcd-0000-4000-8000-00000000beef\", \"doc\": {\"k\": [1, 2]}}";

Test(json_model, every_type_onto_a_struct_and_back) {
    sample *x = aorm_session_new_object(s, &sample_model);
    cr_assert_not_null(x);
    char err[200] = "";
    json_error_t je;
    json_t *body = json_loads(BODY, 0, &je);
    cr_assert_not_null(body, "%s", je.text);
    cr_assert_eq(jm_from_json(s, &sample_model, x, body, NULL, err, sizeof err), 0, "%s", err);
    json_decref(body);
    cr_assert_eq(x->id, 7);
    cr_assert(x->flag);
    cr_assert_eq(x->small, -3);
    cr_assert(!x->maybe.valid);
    cr_assert_float_eq(x->f8, 2.0, 1e-12);
    cr_assert_str_eq(x->amount, "12.340");
    cr_assert_eq(x->blob.len, 3);
    cr_assert_eq(x->blob.data[1], 0xff);
    cr_assert(x->seen.valid);
    cr_assert_eq(x->uid.b[0], 0x01);
    cr_assert_eq(x->uid.b[15], 0xef);

    json_t *j = jm_to_json(s, &sample_model, x, true);
    cr_assert_not_null(j);
    char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    cr_assert_str_eq(text,
                     "{\"amount\":\"12.340\",\"at\":\"2026-12-02T15:30:00.000001\",\"blob\":\"\\\\x00ff10\","
                     "\"day\":\"2026-12-02\",\"doc\":{\"k\":[1,2]},\"f4\":1.5,\"f8\":2.0,\"flag\":true,\"id\":7,"
                     "\"maybe\":null,\"name\":\"Ünïcode <ok>\",\"seen\":\"2026-12-02T15:30:00.000000Z\","
                     "\"small\":-3,\"uid\":\"0123abcd-0000-4000-8000-00000000beef\"}");
    free(text);
}

/* body -> the message jm_from_json gives, with the fields spec below */
static void expect_error(const char *body_text, const char *message) {
    static const char *const required[] = {"id", "name", NULL};
    static const char *const allowed[] = {"id", "name", "small", "maybe", "day", "seen", "uid", "flag", "f8", NULL};
    static const char *const extra[] = {"tags", NULL};
    const jm_fields fields = {.allowed = allowed, .required = required, .extra = extra};
    sample *x = aorm_session_new_object(s, &sample_model);
    json_t *body = json_loads(body_text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    cr_assert_not_null(body, "%s", body_text);
    char err[200] = "";
    cr_assert_eq(jm_from_json(s, &sample_model, x, body, &fields, err, sizeof err), -1, "%s", body_text);
    cr_assert_str_eq(err, message, "%s", body_text);
    json_decref(body);
}

Test(json_model, messages_for_bodies_that_do_not_fit) {
    expect_error("[1]", "expected a JSON object, got an array");
    expect_error("{\"id\": 1}", "missing field \"name\"");
    expect_error("{\"id\": \"1\", \"name\": \"n\"}", "field \"id\": expected an integer, got a string");
    expect_error("{\"id\": 1.5, \"name\": \"n\"}", "field \"id\": expected an integer, got a number");
    expect_error("{\"id\": 1, \"name\": null}", "field \"name\" may not be null");
    expect_error("{\"id\": 1, \"name\": \"n\", \"small\": 40000}", "field \"small\": -32768..32767 expected");
    expect_error("{\"id\": 1, \"name\": \"n\", \"colour\": 1}", "unknown field \"colour\"");
    expect_error("{\"id\": 1, \"name\": \"n\", \"amount\": \"1\"}", "field \"amount\" cannot be set here");
    expect_error("{\"id\": 1, \"name\": \"n\", \"day\": \"02/12/2026\"}",
                 "field \"day\": expected a date (YYYY-MM-DD), got a string");
    expect_error("{\"id\": 1, \"name\": \"n\", \"seen\": 5}", "field \"seen\": expected an ISO 8601 timestamp, got an integer");
    expect_error("{\"id\": 1, \"name\": \"n\", \"uid\": \"not-a-uuid\"}", "field \"uid\": expected a uuid, got a string");
    expect_error("{\"id\": 1, \"name\": \"n\", \"flag\": 1}", "field \"flag\": expected a boolean, got an integer");
    expect_error("{\"id\": 1, \"name\": \"a\\u0000b\"}", "field \"name\": a NUL character is not allowed");
    /* extra keys are the caller's; a nullable field takes null */
    sample *x = aorm_session_new_object(s, &sample_model);
    json_t *ok = json_loads("{\"id\": 2, \"name\": \"n\", \"tags\": [1], \"maybe\": 4}", 0, NULL);
    char err[200] = "";
    cr_assert_eq(jm_from_json(s, &sample_model, x, ok, NULL, err, sizeof err), -1); /* no spec: tags unknown */
    const char *const extra[] = {"tags", NULL};
    const jm_fields fields = {.extra = extra};
    cr_assert_eq(jm_from_json(s, &sample_model, x, ok, &fields, err, sizeof err), 0, "%s", err);
    cr_assert(x->maybe.valid && x->maybe.value == 4);
    json_decref(ok);
}

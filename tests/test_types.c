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

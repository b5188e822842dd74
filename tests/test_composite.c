/* test_composite.c -- relationships over composite keys, end to end, against
 * the sandbox PostgreSQL: declaration and validation, DDL, Core's
 * aorm_tuple_in, the flush (foreign keys filled from parents' composite
 * keys, association rows, cascades, orphans) and the loaders (selectin
 * through `unnest` of parallel arrays, joined, explicit loads).
 *
 * The models: orders keyed by (region, order_no); their lines (serial key,
 * composite foreign key, delete + delete-orphan cascade, ordered by
 * line_no); products keyed by (sku, variant) linked to orders through an
 * association keyed by all four columns; shipments whose composite foreign
 * key is nullable (ON DELETE SET NULL).
 *
 * What is proved, with the engine's counters and the SQL echo:
 *   - a selectin load of a composite-key relationship is ONE statement
 *     whatever the number of owners, `(c1, c2) IN (SELECT * FROM
 *     unnest($1, $2))`, and the loads of one depth share one round trip;
 *   - collections are complete, ordered, and back-populated; many-to-one
 *     targets already in the identity map are not fetched again;
 *   - a graph flushed without any foreign-key field set by hand reads back
 *     equal from a fresh session; deleting an order whose lines were never
 *     loaded removes its lines and links (one statement each); a line
 *     removed from a loaded collection is deleted (delete-orphan), a
 *     shipment removed is detached (its nullable key set to NULL);
 *   - joined loads and aorm_session_load work over composite keys.
 *
 * Isolation: the tables (cmp_*) are created with IF NOT EXISTS under an
 * advisory lock from the models' own DDL; every test writes rows under a
 * region of its own (test name + process id), so tests run side by side.
 *
 * Every test has the same timeout: Criterion 2.4.1's runner leaks under
 * --jobs when timeouts differ. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "session_kit.h"

#define TIMEOUT 120

/* ==========================================================================
 * Models
 * ========================================================================== */

typedef struct cmp_order {
    char *region;
    int64_t order_no;
    char *customer;
    aorm_list lines;     /* cmp_line *, by line_no */
    aorm_list products;  /* cmp_product *, through cmp_order_product */
    aorm_list shipments; /* cmp_shipment * */
} cmp_order;

typedef struct cmp_line {
    int64_t id;
    char *region;
    int64_t order_no;
    int32_t line_no;
    char *item;
    struct cmp_order *order;
} cmp_line;

typedef struct cmp_product {
    char *sku;
    int32_t variant;
    char *name;
    aorm_list orders; /* cmp_order * */
} cmp_product;

typedef struct cmp_order_product {
    char *region;
    int64_t order_no;
    char *sku;
    int32_t variant;
} cmp_order_product;

typedef struct cmp_shipment {
    int64_t id;
    char *region;             /* NULL: not attached to an order */
    aorm_opt_int64 order_no;
    char *carrier;
} cmp_shipment;

extern const aorm_model cmp_order_model, cmp_line_model, cmp_product_model, cmp_order_product_model,
    cmp_shipment_model;

static const aorm_column cmp_order_columns[] = {
    AORM_COLUMN(cmp_order, region, AORM_TEXT, AORM_PK),
    AORM_COLUMN(cmp_order, order_no, AORM_INT8, AORM_PK),
    AORM_COLUMN(cmp_order, customer, AORM_TEXT, 0),
};
static const aorm_relationship cmp_order_relationships[] = {
    AORM_ONE_TO_MANY_COMPOSITE(cmp_order, lines, cmp_line, (region, order_no), .back_populates = "order",
                               .cascade = AORM_CASCADE_SAVE_UPDATE | AORM_CASCADE_DELETE |
                                          AORM_CASCADE_DELETE_ORPHAN,
                               AORM_ORDER_BY(cmp_line, line_no, false)),
    AORM_MANY_TO_MANY_COMPOSITE(cmp_order, products, cmp_product, cmp_order_product, (region, order_no),
                                (sku, variant), .back_populates = "orders"),
    AORM_ONE_TO_MANY_COMPOSITE(cmp_order, shipments, cmp_shipment, (region, order_no)),
};
const aorm_model cmp_order_model = {
    AORM_MODEL_OF(cmp_order, "cmp_orders"),
    AORM_COLUMNS(cmp_order_columns),
    AORM_RELATIONSHIPS(cmp_order_relationships),
};

static const aorm_column cmp_line_columns[] = {
    AORM_COLUMN(cmp_line, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(cmp_line, region, AORM_TEXT, 0),
    AORM_COLUMN(cmp_line, order_no, AORM_INT8, 0),
    AORM_COLUMN(cmp_line, line_no, AORM_INT4, 0),
    AORM_COLUMN(cmp_line, item, AORM_TEXT, 0),
};
static const aorm_foreign_key cmp_line_foreign_keys[] = {
    AORM_FOREIGN_KEY_COMPOSITE(cmp_line, (region, order_no), cmp_order, (region, order_no)),
};
static const aorm_relationship cmp_line_relationships[] = {
    AORM_MANY_TO_ONE_COMPOSITE(cmp_line, order, cmp_order, (region, order_no), .back_populates = "lines"),
};
const aorm_model cmp_line_model = {
    AORM_MODEL_OF(cmp_line, "cmp_lines"),
    AORM_COLUMNS(cmp_line_columns),
    AORM_FOREIGN_KEYS(cmp_line_foreign_keys),
    AORM_RELATIONSHIPS(cmp_line_relationships),
};

static const aorm_column cmp_product_columns[] = {
    AORM_COLUMN(cmp_product, sku, AORM_TEXT, AORM_PK),
    AORM_COLUMN(cmp_product, variant, AORM_INT4, AORM_PK),
    AORM_COLUMN(cmp_product, name, AORM_TEXT, 0),
};
static const aorm_relationship cmp_product_relationships[] = {
    AORM_MANY_TO_MANY_COMPOSITE(cmp_product, orders, cmp_order, cmp_order_product, (sku, variant),
                                (region, order_no), .back_populates = "products"),
};
const aorm_model cmp_product_model = {
    AORM_MODEL_OF(cmp_product, "cmp_products"),
    AORM_COLUMNS(cmp_product_columns),
    AORM_RELATIONSHIPS(cmp_product_relationships),
};

static const aorm_column cmp_order_product_columns[] = {
    AORM_COLUMN(cmp_order_product, region, AORM_TEXT, AORM_PK),
    AORM_COLUMN(cmp_order_product, order_no, AORM_INT8, AORM_PK),
    AORM_COLUMN(cmp_order_product, sku, AORM_TEXT, AORM_PK),
    AORM_COLUMN(cmp_order_product, variant, AORM_INT4, AORM_PK),
};
static const aorm_foreign_key cmp_order_product_foreign_keys[] = {
    AORM_FOREIGN_KEY_COMPOSITE(cmp_order_product, (region, order_no), cmp_order, (region, order_no)),
    AORM_FOREIGN_KEY_COMPOSITE(cmp_order_product, (sku, variant), cmp_product, (sku, variant)),
};
const aorm_model cmp_order_product_model = {
    AORM_MODEL_OF(cmp_order_product, "cmp_order_products"),
    AORM_COLUMNS(cmp_order_product_columns),
    AORM_FOREIGN_KEYS(cmp_order_product_foreign_keys),
};

static const aorm_column cmp_shipment_columns[] = {
    AORM_COLUMN(cmp_shipment, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(cmp_shipment, region, AORM_TEXT, AORM_NULLABLE),
    AORM_COLUMN(cmp_shipment, order_no, AORM_INT8, AORM_NULLABLE),
    AORM_COLUMN(cmp_shipment, carrier, AORM_TEXT, 0),
};
static const aorm_foreign_key cmp_shipment_foreign_keys[] = {
    AORM_FOREIGN_KEY_COMPOSITE(cmp_shipment, (region, order_no), cmp_order, (region, order_no),
                               .on_delete = AORM_FK_SET_NULL),
};
const aorm_model cmp_shipment_model = {
    AORM_MODEL_OF(cmp_shipment, "cmp_shipments"),
    AORM_COLUMNS(cmp_shipment_columns),
    AORM_FOREIGN_KEYS(cmp_shipment_foreign_keys),
};

/* a composite key with a server-generated part: (region, id bigserial) */
typedef struct cmp_note {
    char *region;
    int64_t id;
    char *body;
} cmp_note;

static const aorm_column cmp_note_columns[] = {
    AORM_COLUMN(cmp_note, region, AORM_TEXT, AORM_PK),
    AORM_COLUMN(cmp_note, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(cmp_note, body, AORM_TEXT, 0),
};
static const aorm_model cmp_note_model = {
    AORM_MODEL_OF(cmp_note, "cmp_notes"),
    AORM_COLUMNS(cmp_note_columns),
};

static const aorm_model *const all_models[] = {&cmp_order_model,         &cmp_line_model,     &cmp_product_model,
                                               &cmp_order_product_model, &cmp_shipment_model, &cmp_note_model};
#define NMODELS ((int)(sizeof(all_models) / sizeof(all_models[0])))

static const aorm_load_plan *const plan_order_all = AORM_PLAN(
    AORM_SELECTIN(cmp_order, lines), AORM_SELECTIN(cmp_order, products), AORM_SELECTIN(cmp_order, shipments));
static const aorm_load_plan *const plan_line_order = AORM_PLAN(AORM_SELECTIN(cmp_line, order));
static const aorm_load_plan *const plan_products_then_orders =
    AORM_PLAN(AORM_SELECTIN_THEN(cmp_order, products, AORM_SELECTIN(cmp_product, orders)));
static const aorm_load_plan *const plan_joined_lines = AORM_PLAN(AORM_JOINED(cmp_order, lines));
static const aorm_load_plan *const plan_joined_order = AORM_PLAN(AORM_JOINED(cmp_line, order));
static const aorm_load_plan *const plan_products = AORM_PLAN(AORM_SELECTIN(cmp_order, products));
static const aorm_load_plan *const plan_lines_shipments =
    AORM_PLAN(AORM_SELECTIN(cmp_order, lines), AORM_SELECTIN(cmp_order, shipments));

/* ==========================================================================
 * Invalid declarations (validation must name them)
 * ========================================================================== */

/* a single-field many-to-one to a two-column key */
typedef struct cmp_bad_line {
    int64_t id;
    char *region;
    int64_t order_no;
    struct cmp_order *order;
} cmp_bad_line;
static const aorm_column cmp_bad_line_columns[] = {
    AORM_COLUMN(cmp_bad_line, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(cmp_bad_line, region, AORM_TEXT, 0),
    AORM_COLUMN(cmp_bad_line, order_no, AORM_INT8, 0),
};
static const aorm_relationship cmp_bad_single_relationships[] = {
    AORM_MANY_TO_ONE(cmp_bad_line, order, cmp_order, order_no),
};
static const aorm_model cmp_bad_single_model = {
    AORM_MODEL_OF(cmp_bad_line, "cmp_bad_lines"),
    AORM_COLUMNS(cmp_bad_line_columns),
    AORM_RELATIONSHIPS(cmp_bad_single_relationships),
};
/* the right fields, but no foreign key declared over them */
static const aorm_relationship cmp_bad_nofk_relationships[] = {
    AORM_MANY_TO_ONE_COMPOSITE(cmp_bad_line, order, cmp_order, (region, order_no)),
};
static const aorm_model cmp_bad_nofk_model = {
    AORM_MODEL_OF(cmp_bad_line, "cmp_bad_lines"),
    AORM_COLUMNS(cmp_bad_line_columns),
    AORM_RELATIONSHIPS(cmp_bad_nofk_relationships),
};
/* a foreign key whose fields are swapped against the referenced key */
static const aorm_foreign_key cmp_bad_swapped_fks[] = {
    AORM_FOREIGN_KEY_COMPOSITE(cmp_bad_line, (order_no, region), cmp_order, (region, order_no)),
};
static const aorm_model cmp_bad_swapped_model = {
    AORM_MODEL_OF(cmp_bad_line, "cmp_bad_lines"),
    AORM_COLUMNS(cmp_bad_line_columns),
    AORM_FOREIGN_KEYS(cmp_bad_swapped_fks),
};
/* a foreign key to columns that are not unique together */
static const aorm_foreign_key cmp_bad_not_unique_fks[] = {
    AORM_FOREIGN_KEY_COMPOSITE(cmp_bad_line, (region, order_no), cmp_line, (region, order_no)),
};
static const aorm_model cmp_bad_not_unique_model = {
    AORM_MODEL_OF(cmp_bad_line, "cmp_bad_lines"),
    AORM_COLUMNS(cmp_bad_line_columns),
    AORM_FOREIGN_KEYS(cmp_bad_not_unique_fks),
};
/* a nullable foreign key ... SET NULL over NOT NULL columns */
static const aorm_foreign_key cmp_bad_set_null_fks[] = {
    AORM_FOREIGN_KEY_COMPOSITE(cmp_bad_line, (region, order_no), cmp_order, (region, order_no),
                               .on_delete = AORM_FK_SET_NULL),
};
static const aorm_model cmp_bad_set_null_model = {
    AORM_MODEL_OF(cmp_bad_line, "cmp_bad_lines"),
    AORM_COLUMNS(cmp_bad_line_columns),
    AORM_FOREIGN_KEYS(cmp_bad_set_null_fks),
};

/* ==========================================================================
 * Environment (session_kit.h) and this file's tables
 * ========================================================================== */

/* Creates the tables from the models' own DDL (which these tests check as
 * well) unless they exist: serialized by an advisory lock held to the
 * commit, and checked again under it, so that no worker runs DDL beside
 * another worker's writes (CREATE INDEX IF NOT EXISTS still locks). */
static void ensure_tables(void) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(74312)"));
    if (t_pg_long(pg, "SELECT count(*) FROM pg_tables WHERE tablename IN ('cmp_orders', 'cmp_lines', 'cmp_products', "
                      "'cmp_order_products', 'cmp_shipments', 'cmp_notes')") != NMODELS) {
        char *ddl = NULL;
        char msg[256];
        int rc = aorm_ddl_create_sql(all_models, NMODELS, AORM_DDL_IF_NOT_EXISTS, &ddl, msg, sizeof(msg));
        cr_assert_eq(rc, 0, "aorm_ddl_create_sql: %s", msg);
        free(t_pg_exec(pg, ddl));
        free(ddl);
    }
    free(t_pg_exec(pg, "COMMIT"));
    PQfinish(pg);
}

/* The kit's environment, once the tables exist. */
static void open_env(env *t, bool echo) {
    ensure_tables();
    env_open(t, echo);
}

/* A region name of this test and process: the rows it owns. */
static void region_of(char *buf, size_t cap, const char *test) {
    snprintf(buf, cap, "%s-%ld", test, (long)getpid());
}

/* Removes what earlier runs of this test left under region (children first). */
static void clean_region(const char *region) {
    PGconn *pg = t_pg();
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "DELETE FROM cmp_shipments WHERE region = '%s' OR carrier LIKE '%s%%';"
             "DELETE FROM cmp_order_products WHERE region = '%s' OR sku LIKE '%s%%';"
             "DELETE FROM cmp_lines WHERE region = '%s';"
             "DELETE FROM cmp_orders WHERE region = '%s';"
             "DELETE FROM cmp_products WHERE sku LIKE '%s%%';"
             "DELETE FROM cmp_notes WHERE region = '%s'",
             region, region, region, region, region, region, region, region);
    free(t_pg_exec(pg, sql));
    PQfinish(pg);
}

/* The count fmt asks for, fmt taking region for one or two %s. */
static long count_sql(const char *fmt, const char *region) {
    char sql[512];
    snprintf(sql, sizeof(sql), fmt, region, region);
    PGconn *pg = t_pg();
    long n = t_pg_long(pg, sql);
    PQfinish(pg);
    return n;
}

static aorm_stmt *orders_of(const char *region) {
    aorm_stmt *q = aorm_select(&cmp_order_model);
    aorm_where(q, aorm_eq(AORM_COL(cmp_order, region), aorm_text(region)));
    aorm_order_by(q, AORM_COL(cmp_order, order_no), 0);
    return q;
}

/* Builds, in s, `norders` orders of region numbered 1.., each with
 * `nlines` lines (added in reverse line_no order, so ordering is
 * observable), the first two products of `products` linked, and one
 * shipment. No foreign-key field is set by hand. */
static void build_graph(aorm_session *s, const char *region, int norders, int nlines, cmp_product **products,
                        int nproducts) {
    for (int o = 1; o <= norders; o++) {
        cmp_order *ord = aorm_session_new_object(s, &cmp_order_model);
        cr_assert_not_null(ord);
        ord->region = aorm_session_strdup(s, region);
        ord->order_no = o;
        char buf[64];
        snprintf(buf, sizeof(buf), "customer %d", o);
        ord->customer = aorm_session_strdup(s, buf);
        for (int l = nlines; l >= 1; l--) {
            cmp_line *ln = aorm_session_new_object(s, &cmp_line_model);
            ln->line_no = l;
            snprintf(buf, sizeof(buf), "item %d.%d", o, l);
            ln->item = aorm_session_strdup(s, buf);
            cr_assert_eq(aorm_session_list_append(s, &ord->lines, ln), 0);
        }
        for (int p = 0; p < nproducts && p < 2; p++)
            cr_assert_eq(aorm_session_list_append(s, &ord->products, products[(o + p) % nproducts]), 0);
        cmp_shipment *sh = aorm_session_new_object(s, &cmp_shipment_model);
        snprintf(buf, sizeof(buf), "%s carrier %d", region, o);
        sh->carrier = aorm_session_strdup(s, buf);
        cr_assert_eq(aorm_session_list_append(s, &ord->shipments, sh), 0);
        cr_assert_eq(aorm_session_add(s, ord), 0);
    }
}

static void make_products(aorm_session *s, const char *region, cmp_product **out, int n) {
    for (int i = 0; i < n; i++) {
        char buf[96];
        out[i] = aorm_session_new_object(s, &cmp_product_model);
        snprintf(buf, sizeof(buf), "%s-sku%d", region, i / 2);
        out[i]->sku = aorm_session_strdup(s, buf);
        out[i]->variant = i % 2 + 1;
        snprintf(buf, sizeof(buf), "product %d", i);
        out[i]->name = aorm_session_strdup(s, buf);
    }
}

/* ==========================================================================
 * Declarations, DDL, Core
 * ========================================================================== */

static void expect_invalid(const aorm_model *m, const char *needle) {
    char msg[512];
    int rc = aorm_model_validate(m, msg, sizeof(msg));
    cr_assert_eq(rc, AORM_EMISUSE, "model %s validated, expected \"%s\"", m->name, needle);
    cr_assert(strstr(msg, needle), "message \"%s\" does not mention \"%s\"", msg, needle);
}

Test(composite, models_validate_and_mistakes_are_named, .timeout = TIMEOUT) {
    for (int i = 0; i < NMODELS; i++) {
        char msg[512];
        cr_assert_eq(aorm_model_validate(all_models[i], msg, sizeof(msg)), 0, "%s: %s", all_models[i]->name, msg);
    }
    expect_invalid(&cmp_bad_single_model, "cmp_order has a 2-column primary key cmp_order.(region, order_no) but "
                                          "the relationship names 1 foreign-key field, cmp_bad_line.order_no "
                                          "(declare it with the _COMPOSITE relationship macro)");
    expect_invalid(&cmp_bad_nofk_model, "relationship order (many-to-one to cmp_order) needs a foreign key from "
                                        "cmp_bad_line.(region, order_no) to cmp_order.(region, order_no)");
    expect_invalid(&cmp_bad_swapped_model, "foreign key order_no is AORM_INT8 but references cmp_order.region, "
                                           "which is AORM_TEXT");
    expect_invalid(&cmp_bad_not_unique_model, "references cmp_line.(region, order_no), which are neither the "
                                              "primary key nor UNIQUE");
    expect_invalid(&cmp_bad_set_null_model, "is ON DELETE SET NULL but the columns are not NULLABLE");
}

Test(composite, ddl_writes_composite_constraints_and_indexes, .timeout = TIMEOUT) {
    char *ddl = NULL;
    char msg[256];
    cr_assert_eq(aorm_ddl_create_sql(all_models, NMODELS, 0, &ddl, msg, sizeof(msg)), 0, "%s", msg);
    const char *expect[] = {
        "CONSTRAINT \"cmp_orders_pkey\" PRIMARY KEY (\"region\", \"order_no\")",
        "CONSTRAINT \"cmp_lines_region_order_no_fkey\" FOREIGN KEY (\"region\", \"order_no\") REFERENCES "
        "\"cmp_orders\" (\"region\", \"order_no\") ON DELETE NO ACTION",
        "CONSTRAINT \"cmp_order_products_sku_variant_fkey\" FOREIGN KEY (\"sku\", \"variant\") REFERENCES "
        "\"cmp_products\" (\"sku\", \"variant\")",
        "FOREIGN KEY (\"region\", \"order_no\") REFERENCES \"cmp_orders\" (\"region\", \"order_no\") ON DELETE "
        "SET NULL",
        /* a composite foreign key no index covers gets one over all its columns */
        "CREATE INDEX \"cmp_lines_region_order_no_idx\" ON \"cmp_lines\" (\"region\", \"order_no\")",
        "CREATE INDEX \"cmp_order_products_sku_variant_idx\" ON \"cmp_order_products\" (\"sku\", \"variant\")",
    };
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++)
        cr_assert(strstr(ddl, expect[i]), "DDL lacks\n  %s\nin\n%s", expect[i], ddl);
    /* the association's key starts with (region, order_no): no index of its own for that foreign key */
    cr_assert_null(strstr(ddl, "cmp_order_products_region_order_no_idx"), "%s", ddl);
    /* parents before children */
    cr_assert_lt(strstr(ddl, "CREATE TABLE \"cmp_orders\""), strstr(ddl, "CREATE TABLE \"cmp_lines\""));
    cr_assert_lt(strstr(ddl, "CREATE TABLE \"cmp_products\""), strstr(ddl, "CREATE TABLE \"cmp_order_products\""));
    free(ddl);
}

Test(composite, tuple_in_compiles_to_unnest_of_parallel_arrays, .timeout = TIMEOUT) {
    const char *regions[] = {"eu", "us", "eu"};
    const int64_t nos[] = {1, 2, 3};
    aorm_stmt *q = aorm_select(&cmp_order_model);
    cr_assert_eq(aorm_where(q, aorm_tuple_in(AORM_COL(cmp_order, region), AORM_COL(cmp_order, order_no),
                                             aorm_text_array(regions, 3), aorm_int8_array(nos, 3))),
                 0);
    cr_assert_eq(aorm_stmt_compile(q), 0, "%s", aorm_stmt_errmsg(q));
    cr_assert(strstr(aorm_stmt_sql(q), "WHERE (\"cmp_orders\".\"region\", \"cmp_orders\".\"order_no\") IN (SELECT "
                                       "* FROM unnest($1, $2))"),
              "%s", aorm_stmt_sql(q));
    cr_assert_eq(aorm_stmt_params(q)->count, 2);
    aorm_stmt_free(q);

    /* the same text for any number of tuples */
    q = aorm_select(&cmp_order_model);
    aorm_where(q, aorm_tuple_in(AORM_COL(cmp_order, region), AORM_COL(cmp_order, order_no),
                                aorm_text_array(regions, 1), aorm_int8_array(nos, 1)));
    cr_assert_eq(aorm_stmt_compile(q), 0);
    cr_assert(strstr(aorm_stmt_sql(q), "IN (SELECT * FROM unnest($1, $2))"));
    aorm_stmt_free(q);

    /* misuse: odd count, arrays first, different lengths */
    q = aorm_select(&cmp_order_model);
    cr_assert_eq(aorm_where(q, aorm_tuple_in(AORM_COL(cmp_order, region), aorm_text_array(regions, 3),
                                             aorm_int8_array(nos, 3))),
                 AORM_EMISUSE);
    cr_assert(strstr(aorm_stmt_errmsg(q), "1 to 8 expressions and as many arrays"), "%s", aorm_stmt_errmsg(q));
    aorm_stmt_free(q);
    q = aorm_select(&cmp_order_model);
    cr_assert_eq(aorm_where(q, aorm_tuple_in(aorm_text_array(regions, 3), AORM_COL(cmp_order, region))),
                 AORM_EMISUSE);
    cr_assert(strstr(aorm_stmt_errmsg(q), "argument 1 must not be an array"), "%s", aorm_stmt_errmsg(q));
    aorm_stmt_free(q);
    q = aorm_select(&cmp_order_model);
    cr_assert_eq(aorm_where(q, aorm_tuple_in(AORM_COL(cmp_order, region), AORM_COL(cmp_order, order_no),
                                             aorm_text_array(regions, 3), aorm_int8_array(nos, 2))),
                 AORM_EMISUSE);
    cr_assert(strstr(aorm_stmt_errmsg(q), "arrays of different lengths (3, 2)"), "%s", aorm_stmt_errmsg(q));
    aorm_stmt_free(q);
}

/* ==========================================================================
 * Flush and load round trips
 * ========================================================================== */

Test(composite, graph_flushes_and_loads_back_with_one_statement_per_relationship, .timeout = TIMEOUT) {
    env t;
    open_env(&t, true);
    char region[64];
    region_of(region, sizeof(region), "graph");
    clean_region(region);

    /* 40 orders x 3 lines, 4 products (2 skus x 2 variants), 1 shipment each */
    aorm_session *s = aorm_session_new(t.e, NULL);
    cmp_product *prods[4];
    make_products(s, region, prods, 4);
    build_graph(s, region, 40, 3, prods, 4);
    session_commit(&t, s);
    /* every foreign key came from the parents' composite keys */
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_lines WHERE region = '%s' AND order_no BETWEEN 1 AND 40", region),
                 120);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_order_products WHERE region = '%s' AND sku LIKE '%s%%'", region),
                 80);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_shipments s JOIN cmp_orders o USING (region, order_no) "
                           "WHERE s.region = '%s' AND s.carrier = '%s carrier ' || o.order_no",
                           region),
                 40);
    aorm_session_free(s);

    /* a fresh session: orders with lines, products and shipments */
    s = aorm_session_new(t.e, NULL);
    echo_clear(&t);
    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, orders_of(region), plan_order_all, &r);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 4, 2, "orders + 3 selectin loads");
    /* the composite loads go through unnest of parallel arrays */
    cr_assert_eq(echo_count(&t, "IN (SELECT * FROM unnest($1, $2))"), 3, "echo:\n%s", t.nsql ? t.sql[t.nsql - 1] : "");
    cr_assert_eq(r.len, 40);
    for (size_t i = 0; i < r.len; i++) {
        cmp_order *o = r.items[i];
        cr_assert_eq(o->order_no, (int64_t)i + 1);
        cr_assert_eq(o->lines.len, 3, "order %" PRId64 ": %zu lines", o->order_no, o->lines.len);
        for (size_t k = 0; k < 3; k++) {
            cmp_line *ln = AORM_LIST_AT(o->lines, cmp_line, k);
            cr_assert_eq(ln->line_no, (int32_t)k + 1, "lines ordered by line_no");
            cr_assert_str_eq(ln->region, region);
            cr_assert_eq(ln->order_no, o->order_no);
            cr_assert_eq(ln->order, o, "back-populated");
            char want[64];
            snprintf(want, sizeof(want), "item %" PRId64 ".%zu", o->order_no, k + 1);
            cr_assert_str_eq(ln->item, want);
        }
        cr_assert_eq(o->products.len, 2);
        cmp_product *p0 = AORM_LIST_AT(o->products, cmp_product, 0), *p1 = AORM_LIST_AT(o->products, cmp_product, 1);
        /* ordered by the target's key (sku, variant); these are products (o+0)%4 and (o+1)%4 */
        cr_assert(strcmp(p0->sku, p1->sku) < 0 || (strcmp(p0->sku, p1->sku) == 0 && p0->variant < p1->variant));
        char want0[96], want1[96];
        int a = (int)(o->order_no % 4), b = (int)((o->order_no + 1) % 4);
        snprintf(want0, sizeof(want0), "product %d", a < b ? a : b);
        snprintf(want1, sizeof(want1), "product %d", a < b ? b : a);
        cr_assert_str_eq(p0->name, want0);
        cr_assert_str_eq(p1->name, want1);
        cr_assert_eq(o->shipments.len, 1);
        cmp_shipment *sh = AORM_LIST_AT(o->shipments, cmp_shipment, 0);
        cr_assert(sh->order_no.valid && sh->order_no.value == o->order_no);
    }
    /* products are shared objects: one per (sku, variant) in the session */
    cmp_order *o1 = r.items[0], *o5 = r.items[4];
    cr_assert_eq(AORM_LIST_AT(o1->products, cmp_product, 0), AORM_LIST_AT(o5->products, cmp_product, 0));
    qres_free(&r);

    /* products then their orders: one statement per depth, orders come from the identity map */
    m0 = mark_now(&t, s);
    query_ok(&t, s, orders_of(region), plan_products_then_orders, &r);
    m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 3, 3, "orders, products, products' orders");
    cmp_order *first = r.items[0];
    cmp_product *p = AORM_LIST_AT(first->products, cmp_product, 0);
    cr_assert_eq(p->orders.len, 20, "each product is linked to 20 of the 40 orders");
    for (size_t k = 0; k < p->orders.len; k++) {
        cmp_order *o = AORM_LIST_AT(p->orders, cmp_order, k);
        bool found = false;
        for (size_t j = 0; j < r.len && !found; j++) found = r.items[j] == o;
        cr_assert(found, "a product's order is the session's own object");
    }
    qres_free(&r);
    aorm_session_free(s);
    clean_region(region);
    env_close(&t);
}

Test(composite, many_to_one_selectin_and_identity_map, .timeout = TIMEOUT) {
    env t;
    open_env(&t, false);
    char region[64];
    region_of(region, sizeof(region), "m2o");
    clean_region(region);
    aorm_session *s = aorm_session_new(t.e, NULL);
    build_graph(s, region, 25, 4, NULL, 0);
    session_commit(&t, s);
    aorm_session_free(s);

    s = aorm_session_new(t.e, NULL);
    aorm_stmt *q = aorm_select(&cmp_line_model);
    aorm_where(q, aorm_eq(AORM_COL(cmp_line, region), aorm_text(region)));
    aorm_order_by(q, AORM_COL(cmp_line, id), 0);
    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, q, plan_line_order, &r);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 2, 2, "lines + their orders");
    cr_assert_eq(r.len, 100);
    for (size_t i = 0; i < r.len; i++) {
        cmp_line *ln = r.items[i];
        cr_assert_not_null(ln->order);
        cr_assert_str_eq(ln->order->region, region);
        cr_assert_eq(ln->order->order_no, ln->order_no);
        if (i > 0 && ((cmp_line *)r.items[i - 1])->order_no == ln->order_no)
            cr_assert_eq(((cmp_line *)r.items[i - 1])->order, ln->order, "one object per order");
    }
    qres_free(&r);
    /* again: every order is in the identity map, only the lines query goes out */
    q = aorm_select(&cmp_line_model);
    aorm_where(q, aorm_eq(AORM_COL(cmp_line, region), aorm_text(region)));
    m0 = mark_now(&t, s);
    query_ok(&t, s, q, plan_line_order, &r);
    m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 1, 1, "second load");
    cr_assert_eq(r.len, 100);
    for (size_t i = 0; i < r.len; i++) cr_assert_not_null(((cmp_line *)r.items[i])->order);
    qres_free(&r);

    /* moving a line to another order changes both key columns */
    q = aorm_select(&cmp_line_model);
    aorm_where(q, aorm_and(aorm_eq(AORM_COL(cmp_line, region), aorm_text(region)),
                           aorm_eq(AORM_COL(cmp_line, order_no), aorm_int8(1))));
    query_ok(&t, s, q, plan_line_order, &r);
    cr_assert_eq(r.len, 4);
    cmp_line *moved = r.items[0];
    qres_free(&r);
    q = orders_of(region);
    aorm_where(q, aorm_eq(AORM_COL(cmp_order, order_no), aorm_int8(7)));
    query_ok(&t, s, q, NULL, &r);
    cr_assert_eq(r.len, 1);
    moved->order = r.items[0];
    qres_free(&r);
    session_commit(&t, s);
    cr_assert_eq(moved->order_no, 7, "the FK followed the pointer");
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_lines WHERE region = '%s' AND order_no = 7", region), 5);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_lines WHERE region = '%s' AND order_no = 1", region), 3);
    aorm_session_free(s);
    clean_region(region);
    env_close(&t);
}

Test(composite, thousands_of_owners_in_one_statement, .timeout = TIMEOUT) {
    env t;
    open_env(&t, false);
    char region[64];
    region_of(region, sizeof(region), "many");
    clean_region(region);
    /* 3,000 orders x 2 lines: the lines go by COPY, the keys by unnest arrays */
    aorm_session *s = aorm_session_new(t.e, NULL);
    build_graph(s, region, 3000, 2, NULL, 0);
    session_commit(&t, s);
    aorm_session_free(s);

    s = aorm_session_new(t.e, NULL);
    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, orders_of(region), plan_lines_shipments, &r);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 3, 2, "3,000 orders with lines and shipments");
    cr_assert_eq(r.len, 3000);
    size_t lines = 0;
    for (size_t i = 0; i < r.len; i++) {
        cmp_order *o = r.items[i];
        cr_assert_eq(o->lines.len, 2);
        cr_assert_eq(o->shipments.len, 1);
        lines += o->lines.len;
    }
    cr_assert_eq(lines, 6000);
    qres_free(&r);
    aorm_session_free(s);
    clean_region(region);
    env_close(&t);
}

Test(composite, joined_and_explicit_loads, .timeout = TIMEOUT) {
    env t;
    open_env(&t, false);
    char region[64];
    region_of(region, sizeof(region), "joined");
    clean_region(region);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cmp_product *prods[2];
    make_products(s, region, prods, 2);
    build_graph(s, region, 5, 3, prods, 2);
    session_commit(&t, s);
    aorm_session_free(s);

    /* joined collection: one statement, lines ordered by line_no */
    s = aorm_session_new(t.e, NULL);
    mark m0 = mark_now(&t, s);
    qres r;
    query_ok(&t, s, orders_of(region), plan_joined_lines, &r);
    mark m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 1, 1, "joined lines");
    cr_assert_eq(r.len, 5, "parents de-duplicated");
    for (size_t i = 0; i < r.len; i++) {
        cmp_order *o = r.items[i];
        cr_assert_eq(o->lines.len, 3);
        for (size_t k = 0; k < 3; k++) cr_assert_eq(AORM_LIST_AT(o->lines, cmp_line, k)->line_no, (int32_t)k + 1);
    }
    /* explicit load of the products of the orders already in the session */
    m0 = mark_now(&t, s);
    load(&t, s, r.items, r.len, plan_products);
    m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 1, 1, "explicit products load");
    for (size_t i = 0; i < r.len; i++) cr_assert_eq(((cmp_order *)r.items[i])->products.len, 2);
    qres_free(&r);
    aorm_session_free(s);

    /* joined many-to-one */
    s = aorm_session_new(t.e, NULL);
    aorm_stmt *q = aorm_select(&cmp_line_model);
    aorm_where(q, aorm_eq(AORM_COL(cmp_line, region), aorm_text(region)));
    m0 = mark_now(&t, s);
    query_ok(&t, s, q, plan_joined_order, &r);
    m1 = mark_now(&t, s);
    expect_cost(&m0, &m1, 1, 1, "joined order");
    cr_assert_eq(r.len, 15);
    for (size_t i = 0; i < r.len; i++) {
        cmp_line *ln = r.items[i];
        cr_assert_not_null(ln->order);
        cr_assert_eq(ln->order->order_no, ln->order_no);
    }
    qres_free(&r);
    aorm_session_free(s);
    clean_region(region);
    env_close(&t);
}

Test(composite, deletes_cascade_orphans_and_unlinks, .timeout = TIMEOUT) {
    env t;
    open_env(&t, true);
    char region[64];
    region_of(region, sizeof(region), "delete");
    clean_region(region);
    aorm_session *s = aorm_session_new(t.e, NULL);
    cmp_product *prods[2];
    make_products(s, region, prods, 2);
    build_graph(s, region, 3, 3, prods, 2);
    session_commit(&t, s);
    aorm_session_free(s);

    /* 1. delete order 1 without loading anything: its lines (cascade) and
     * its association rows go first, in one statement each */
    s = aorm_session_new(t.e, NULL);
    qres r;
    aorm_stmt *q = orders_of(region);
    aorm_where(q, aorm_eq(AORM_COL(cmp_order, order_no), aorm_int8(1)));
    query_ok(&t, s, q, NULL, &r);
    cr_assert_eq(r.len, 1);
    cr_assert_eq(aorm_session_delete(s, r.items[0]), 0);
    qres_free(&r);
    echo_clear(&t);
    session_commit(&t, s);
    cr_assert_eq(echo_count(&t, "DELETE FROM \"cmp_lines\" WHERE (\"cmp_lines\".\"region\", "
                                "\"cmp_lines\".\"order_no\") IN (SELECT * FROM unnest($1, $2))"),
                 1);
    cr_assert_eq(echo_count(&t, "DELETE FROM \"cmp_order_products\""), 1);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_orders WHERE region = '%s' AND order_no = 1", region), 0);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_lines WHERE region = '%s' AND order_no = 1", region), 0);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_order_products WHERE region = '%s' AND order_no = 1", region), 0);
    /* the shipment stays, detached by the server's ON DELETE SET NULL */
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_shipments WHERE carrier = '%s carrier 1' AND region IS NULL "
                           "AND order_no IS NULL",
                           region),
                 1);
    aorm_session_free(s);

    /* 2. loaded collections: a line removed is deleted (delete-orphan), a
     * shipment removed is detached (nullable key), a product removed is
     * unlinked (association row deleted) */
    s = aorm_session_new(t.e, NULL);
    q = orders_of(region);
    aorm_where(q, aorm_eq(AORM_COL(cmp_order, order_no), aorm_int8(2)));
    query_ok(&t, s, q, plan_order_all, &r);
    cr_assert_eq(r.len, 1);
    cmp_order *o = r.items[0];
    qres_free(&r);
    cr_assert_eq(o->lines.len, 3);
    cr_assert_eq(o->shipments.len, 1);
    cr_assert_eq(o->products.len, 2);
    cmp_line *gone = AORM_LIST_AT(o->lines, cmp_line, 1);
    int64_t gone_id = gone->id;
    o->lines.items[1] = o->lines.items[2];
    o->lines.len = 2;
    o->shipments.len = 0;
    o->products.len = 1;
    session_commit(&t, s);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM cmp_lines WHERE id = %" PRId64, gone_id);
    PGconn *pg = t_pg();
    cr_assert_eq(t_pg_long(pg, sql), 0, "orphaned line deleted");
    PQfinish(pg);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_lines WHERE region = '%s' AND order_no = 2", region), 2);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_shipments WHERE carrier = '%s carrier 2' AND region IS NULL "
                           "AND order_no IS NULL",
                           region),
                 1, "removed shipment detached");
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_order_products WHERE region = '%s' AND order_no = 2", region), 1);
    aorm_session_free(s);

    /* 3. deleting a product whose links are not loaded removes them by its key */
    s = aorm_session_new(t.e, NULL);
    char pattern[96];
    snprintf(pattern, sizeof(pattern), "%s%%", region);
    q = aorm_select(&cmp_product_model);
    aorm_where(q, aorm_like(AORM_COL(cmp_product, sku), aorm_text(pattern)));
    query_ok(&t, s, q, NULL, &r);
    cr_assert_eq(r.len, 2);
    for (size_t i = 0; i < r.len; i++) cr_assert_eq(aorm_session_delete(s, r.items[i]), 0);
    qres_free(&r);
    session_commit(&t, s);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_products WHERE sku LIKE '%s%%' AND '%s' <> ''", region), 0);
    cr_assert_eq(count_sql("SELECT count(*) FROM cmp_order_products WHERE sku LIKE '%s%%' AND '%s' <> ''", region),
                 0);
    aorm_session_free(s);
    clean_region(region);
    env_close(&t);
}

/* ==========================================================================
 * A composite key with a server-generated column
 * ========================================================================== */

typedef struct gres {
    int done;
    void *obj;
    aorm_error *err;
} gres;

static void on_object(aorm_session *s, void *obj, const aorm_error *err, void *user) {
    (void)s;
    gres *r = user;
    r->done++;
    r->obj = obj;
    if (err) r->err = aorm_error_copy(err);
}

Test(composite, generated_part_of_a_composite_key_comes_back, .timeout = TIMEOUT) {
    env t;
    open_env(&t, false);
    char region[64];
    region_of(region, sizeof(region), "notes");
    clean_region(region);
    aorm_session *s = aorm_session_new(t.e, NULL);
    /* several rows: keys fetched first; then one row alone: INSERT ... RETURNING */
    cmp_note *n[4];
    for (int i = 0; i < 3; i++) {
        n[i] = aorm_session_new_object(s, &cmp_note_model);
        n[i]->region = aorm_session_strdup(s, region);
        n[i]->body = aorm_session_strdup(s, "batch");
        cr_assert_eq(aorm_session_add(s, n[i]), 0);
    }
    session_commit(&t, s);
    n[3] = aorm_session_new_object(s, &cmp_note_model);
    n[3]->region = aorm_session_strdup(s, region);
    n[3]->body = aorm_session_strdup(s, "alone");
    cr_assert_eq(aorm_session_add(s, n[3]), 0);
    session_commit(&t, s);
    for (int i = 0; i < 4; i++) {
        cr_assert_gt(n[i]->id, 0, "note %d got no key", i);
        for (int j = 0; j < i; j++) cr_assert_neq(n[i]->id, n[j]->id);
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM cmp_notes WHERE region = '%%s' AND id = %" PRId64, n[i]->id);
        cr_assert_eq(count_sql(sql, region), 1, "note %d is not on the server under its key", i);
    }
    /* the identity map knows them by their whole key: no statement */
    cmp_note key = {.region = region, .id = n[3]->id};
    mark m0 = mark_now(&t, s);
    gres g = {0};
    cr_assert_eq(aorm_session_get(s, &cmp_note_model, &key, NULL, on_object, &g), 0);
    wait_done(&t, &g.done, "get");
    mark m1 = mark_now(&t, s);
    cr_assert_null(g.err);
    cr_assert_eq(g.obj, n[3]);
    expect_cost(&m0, &m1, 0, 0, "get from the identity map");
    aorm_session_free(s);
    clean_region(region);
    env_close(&t);
}

Test(composite, get_many_by_composite_keys, .timeout = TIMEOUT) {
    env t;
    open_env(&t, true);
    char region[64];
    region_of(region, sizeof(region), "getmany");
    clean_region(region);
    aorm_session *s = aorm_session_new(t.e, NULL);
    build_graph(s, region, 4, 1, NULL, 0);
    session_commit(&t, s);
    aorm_session_free(s);

    s = aorm_session_new(t.e, NULL);
    /* order 2 is in the identity map; 1 and 4 are not; 9 does not exist */
    qres r;
    aorm_stmt *q = orders_of(region);
    aorm_where(q, aorm_eq(AORM_COL(cmp_order, order_no), aorm_int8(2)));
    query_ok(&t, s, q, NULL, &r);
    cr_assert_eq(r.len, 1);
    cmp_order *two = r.items[0];
    qres_free(&r);
    cmp_order k[4] = {{.region = region, .order_no = 4}, {.region = region, .order_no = 2},
                      {.region = region, .order_no = 9}, {.region = region, .order_no = 1}};
    const void *keys[4] = {&k[0], &k[1], &k[2], &k[3]};
    echo_clear(&t);
    mark m0 = mark_now(&t, s);
    memset(&r, 0, sizeof(r));
    cr_assert_eq(aorm_session_get_many(s, &cmp_order_model, keys, 4, NULL, on_objects, &r), 0);
    wait_done(&t, &r.done, "get_many");
    mark m1 = mark_now(&t, s);
    cr_assert_null(r.err, "%s", r.err ? r.err->message : "");
    expect_cost(&m0, &m1, 1, 1, "get_many of 3 keys not in the map");
    cr_assert_eq(echo_count(&t, "IN (SELECT * FROM unnest($1, $2))"), 1);
    cr_assert_eq(r.len, 4);
    cmp_order *o4 = r.items[0], *o1 = r.items[3];
    cr_assert_not_null(o4);
    cr_assert_eq(o4->order_no, 4);
    cr_assert_eq(r.items[1], two, "answered from the identity map");
    cr_assert_null(r.items[2], "no such order");
    cr_assert_not_null(o1);
    cr_assert_eq(o1->order_no, 1);
    cr_assert_str_eq(o1->customer, "customer 1");
    qres_free(&r);
    aorm_session_free(s);
    clean_region(region);
    env_close(&t);
}

/* core_models.h -- the models of the Core suites (test_sql_compile.c,
 * test_sql_hard.c): a table that refers to itself (employees, with a
 * many-to-one and a one-to-many relationship to itself and a jsonb
 * column), an archive table for the data-modifying CTEs, and a table with
 * server defaults. Each suite names the tables: define CORE_T_EMPLOYEES,
 * CORE_T_ARCHIVE and CORE_T_DFLT before including this file. The models
 * are static: one copy per suite. Also the recursive statement both
 * suites run (core_manager_tree): golden text in one, rows in the other. */
#ifndef AORM_TEST_CORE_MODELS_H
#define AORM_TEST_CORE_MODELS_H

#include <stddef.h>
#include <stdint.h>

#include "aorm/model.h"
#include "aorm/sql.h"

typedef struct employee {
    int64_t id;
    char *name;
    aorm_opt_int64 manager_id;
    char *dept;
    double salary;
    char *doc; /* jsonb */
    struct employee *manager;
    aorm_list reports;
} employee;

static const aorm_model employee_model;
static const aorm_column employee_columns[] = {
    AORM_COLUMN(employee, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(employee, name, AORM_TEXT, 0),
    AORM_COLUMN(employee, manager_id, AORM_INT8, AORM_NULLABLE),
    AORM_COLUMN(employee, dept, AORM_TEXT, 0),
    AORM_COLUMN(employee, salary, AORM_FLOAT8, 0),
    AORM_COLUMN(employee, doc, AORM_JSONB, AORM_NULLABLE),
};
static const aorm_foreign_key employee_foreign_keys[] = {
    AORM_FOREIGN_KEY(employee, manager_id, employee, id),
};
static const aorm_relationship employee_relationships[] = {
    AORM_MANY_TO_ONE(employee, manager, employee, manager_id),
    AORM_ONE_TO_MANY(employee, reports, employee, manager_id),
};
static const aorm_model employee_model = {
    AORM_MODEL_OF(employee, CORE_T_EMPLOYEES),
    AORM_COLUMNS(employee_columns),
    AORM_FOREIGN_KEYS(employee_foreign_keys),
    AORM_RELATIONSHIPS(employee_relationships),
};

typedef struct archive {
    int64_t id;
    char *name;
} archive;

static const aorm_column archive_columns[] = {
    AORM_COLUMN(archive, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(archive, name, AORM_TEXT, 0),
};
static const aorm_model archive_model = {
    AORM_MODEL_OF(archive, CORE_T_ARCHIVE),
    AORM_COLUMNS(archive_columns),
};

typedef struct dflt {
    int64_t id;
    char *name;
    int32_t qty;
    char *note;
} dflt;

static const aorm_column dflt_columns[] = {
    AORM_COLUMN(dflt, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(dflt, name, AORM_TEXT, 0),
    AORM_COLUMN(dflt, qty, AORM_INT4, 0, .server_default = "7"),
    AORM_COLUMN(dflt, note, AORM_TEXT, AORM_NULLABLE, .server_default = "'n'"),
};
static const aorm_model dflt_model = {
    AORM_MODEL_OF(dflt, CORE_T_DFLT),
    AORM_COLUMNS(dflt_columns),
};

/* The whole reporting tree under root, with depths, in one statement:
 * WITH RECURSIVE "tree" AS ((base) UNION ALL (step)), the step joining
 * the CTE by name. */
static aorm_stmt *core_manager_tree(int64_t root) {
    aorm_stmt *base = aorm_select_columns(AORM_COL(employee, id), AORM_COL(employee, name), AORM_COL(employee, manager_id),
                                          aorm_label(aorm_int4(0), "depth"));
    aorm_where(base, aorm_eq(AORM_COL(employee, id), aorm_int8(root)));
    aorm_stmt *step =
        aorm_select_columns(AORM_ACOL("e", employee, id), AORM_ACOL("e", employee, name), AORM_ACOL("e", employee, manager_id),
                            aorm_label(aorm_add(aorm_ref("tree", "depth"), aorm_int4(1)), "depth"));
    aorm_from_alias(step, &employee_model, "e");
    aorm_join_cte(step, "tree", NULL, aorm_eq(AORM_ACOL("e", employee, manager_id), aorm_ref("tree", "id")), 0);
    aorm_stmt *q = aorm_select_columns(AORM_ACOL("tree", employee, id), AORM_ACOL("tree", employee, name),
                                       AORM_ACOL("tree", employee, manager_id), aorm_ref("tree", "depth"));
    aorm_from_cte(q, "tree");
    aorm_with_recursive(q, "tree", aorm_union_all(base, step));
    aorm_order_by(q, aorm_ref("tree", "depth"), 0);
    aorm_order_by(q, AORM_ACOL("tree", employee, id), 0);
    return q;
}

#endif

/* control_ok.c -- MUST compile: the positive control of the compile-fail
 * checks. Built exactly like them (same flags, -Werror when enabled), it
 * proves that their failures come from the mismatches they contain, not
 * from the harness. Uses every C representation once. */
#include <aorm/model.h>

typedef struct good_parent {
    int64_t id;
    aorm_list children;
} good_parent;

typedef struct good_child {
    int64_t id;
    int64_t parent_id;
    bool b;
    aorm_opt_bool nb;
    int16_t i2;
    aorm_opt_int16 ni2;
    int32_t i4;
    aorm_opt_int32 ni4;
    aorm_opt_int64 ni8;
    float f4;
    aorm_opt_float nf4;
    double f8;
    aorm_opt_double nf8;
    char *num;
    char *text;
    aorm_bytes bytes;
    int32_t day;
    aorm_opt_int32 nday;
    int64_t ts;
    aorm_opt_int64 nts;
    int64_t tstz;
    aorm_uuid u;
    aorm_opt_uuid nu;
    char *js;
    char *jsb;
    struct good_parent *parent;
} good_child;

extern const aorm_model good_parent_model, good_child_model;

static const aorm_column good_parent_columns[] = {
    AORM_COLUMN(good_parent, id, AORM_INT8, AORM_PK | AORM_SERIAL),
};
static const aorm_relationship good_parent_relationships[] = {
    AORM_ONE_TO_MANY(good_parent, children, good_child, parent_id, .back_populates = "parent"),
};
const aorm_model good_parent_model = {
    AORM_MODEL_OF(good_parent, "good_parents"),
    AORM_COLUMNS(good_parent_columns),
    AORM_RELATIONSHIPS(good_parent_relationships),
};

static const aorm_column good_child_columns[] = {
    AORM_COLUMN(good_child, id, AORM_INT8, AORM_PK | AORM_IDENTITY),
    AORM_COLUMN(good_child, parent_id, AORM_INT8, 0),
    AORM_COLUMN(good_child, b, AORM_BOOL, 0),
    AORM_COLUMN(good_child, nb, AORM_BOOL, AORM_NULLABLE),
    AORM_COLUMN(good_child, i2, AORM_INT2, 0),
    AORM_COLUMN(good_child, ni2, AORM_INT2, AORM_NULLABLE),
    AORM_COLUMN(good_child, i4, AORM_INT4, AORM_UNIQUE),
    AORM_COLUMN(good_child, ni4, AORM_INT4, AORM_NULLABLE),
    AORM_COLUMN(good_child, ni8, AORM_INT8, AORM_NULLABLE),
    AORM_COLUMN(good_child, f4, AORM_FLOAT4, 0),
    AORM_COLUMN(good_child, nf4, AORM_FLOAT4, AORM_NULLABLE),
    AORM_COLUMN(good_child, f8, AORM_FLOAT8, 0),
    AORM_COLUMN(good_child, nf8, AORM_FLOAT8, AORM_NULLABLE),
    AORM_COLUMN(good_child, num, AORM_NUMERIC, AORM_NULLABLE),
    AORM_COLUMN(good_child, text, AORM_TEXT, AORM_INDEX, .server_default = "''"),
    AORM_COLUMN(good_child, bytes, AORM_BYTEA, 0),
    AORM_COLUMN(good_child, day, AORM_DATE, 0),
    AORM_COLUMN(good_child, nday, AORM_DATE, AORM_NULLABLE),
    AORM_COLUMN(good_child, ts, AORM_TIMESTAMP, 0),
    AORM_COLUMN(good_child, nts, AORM_TIMESTAMP, AORM_NULLABLE),
    AORM_COLUMN(good_child, tstz, AORM_TIMESTAMPTZ, 0, .server_default = "now()"),
    AORM_COLUMN(good_child, u, AORM_UUID, 0),
    AORM_COLUMN(good_child, nu, AORM_UUID, AORM_NULLABLE),
    AORM_COLUMN(good_child, js, AORM_JSON, 0),
    AORM_COLUMN(good_child, jsb, AORM_JSONB, AORM_NULLABLE),
};
static const aorm_foreign_key good_child_foreign_keys[] = {
    AORM_FOREIGN_KEY(good_child, parent_id, good_parent, id, .on_delete = AORM_FK_CASCADE),
};
static const aorm_relationship good_child_relationships[] = {
    AORM_MANY_TO_ONE(good_child, parent, good_parent, parent_id, .back_populates = "children"),
};
const aorm_model good_child_model = {
    AORM_MODEL_OF(good_child, "good_children"),
    AORM_COLUMNS(good_child_columns),
    AORM_FOREIGN_KEYS(good_child_foreign_keys),
    AORM_RELATIONSHIPS(good_child_relationships),
};

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

/* composite keys: the same shelf/box pair as composite_fk_lengths.c, with
 * lists of equal length, and every _COMPOSITE relationship macro */
typedef struct good_shelf {
    char *room;
    int32_t number;
    aorm_list boxes;
    aorm_list tags;
} good_shelf;

typedef struct good_box {
    int64_t id;
    char *room;
    int32_t shelf_number;
    struct good_shelf *shelf;
} good_box;

typedef struct good_shelf_tag {
    char *room;
    int32_t number;
    int64_t tag_id;
} good_shelf_tag;

extern const aorm_model good_shelf_model, good_box_model, good_shelf_tag_model;

static const aorm_column good_shelf_columns[] = {
    AORM_COLUMN(good_shelf, room, AORM_TEXT, AORM_PK),
    AORM_COLUMN(good_shelf, number, AORM_INT4, AORM_PK),
};
static const aorm_relationship good_shelf_relationships[] = {
    AORM_ONE_TO_MANY_COMPOSITE(good_shelf, boxes, good_box, (room, shelf_number), .back_populates = "shelf"),
    AORM_MANY_TO_MANY_COMPOSITE(good_shelf, tags, good_parent, good_shelf_tag, (room, number), (tag_id)),
};
const aorm_model good_shelf_model = {
    AORM_MODEL_OF(good_shelf, "good_shelves"),
    AORM_COLUMNS(good_shelf_columns),
    AORM_RELATIONSHIPS(good_shelf_relationships),
};

static const aorm_column good_box_columns[] = {
    AORM_COLUMN(good_box, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(good_box, room, AORM_TEXT, 0),
    AORM_COLUMN(good_box, shelf_number, AORM_INT4, 0),
};
static const aorm_foreign_key good_box_foreign_keys[] = {
    AORM_FOREIGN_KEY_COMPOSITE(good_box, (room, shelf_number), good_shelf, (room, number)),
};
static const aorm_relationship good_box_relationships[] = {
    AORM_MANY_TO_ONE_COMPOSITE(good_box, shelf, good_shelf, (room, shelf_number), .back_populates = "boxes"),
};
const aorm_model good_box_model = {
    AORM_MODEL_OF(good_box, "good_boxes"),
    AORM_COLUMNS(good_box_columns),
    AORM_FOREIGN_KEYS(good_box_foreign_keys),
    AORM_RELATIONSHIPS(good_box_relationships),
};

static const aorm_column good_shelf_tag_columns[] = {
    AORM_COLUMN(good_shelf_tag, room, AORM_TEXT, AORM_PK),
    AORM_COLUMN(good_shelf_tag, number, AORM_INT4, AORM_PK),
    AORM_COLUMN(good_shelf_tag, tag_id, AORM_INT8, AORM_PK),
};
static const aorm_foreign_key good_shelf_tag_foreign_keys[] = {
    AORM_FOREIGN_KEY_COMPOSITE(good_shelf_tag, (room, number), good_shelf, (room, number)),
    AORM_FOREIGN_KEY(good_shelf_tag, tag_id, good_parent, id),
};
const aorm_model good_shelf_tag_model = {
    AORM_MODEL_OF(good_shelf_tag, "good_shelf_tags"),
    AORM_COLUMNS(good_shelf_tag_columns),
    AORM_FOREIGN_KEYS(good_shelf_tag_foreign_keys),
};

/* composite_fk_lengths.c -- must NOT compile: a composite foreign key whose
 * two field lists differ in length (two referencing fields, one referenced). */
#include <aorm/model.h>

typedef struct shelf {
    char *room;
    int32_t number;
} shelf;

typedef struct box {
    int64_t id;
    char *room;
    int32_t shelf_number;
} box;

extern const aorm_model shelf_model, box_model;

static const aorm_column shelf_columns[] = {
    AORM_COLUMN(shelf, room, AORM_TEXT, AORM_PK),
    AORM_COLUMN(shelf, number, AORM_INT4, AORM_PK),
};
const aorm_model shelf_model = {
    AORM_MODEL_OF(shelf, "shelves"),
    AORM_COLUMNS(shelf_columns),
};

static const aorm_column box_columns[] = {
    AORM_COLUMN(box, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(box, room, AORM_TEXT, 0),
    AORM_COLUMN(box, shelf_number, AORM_INT4, 0),
};
static const aorm_foreign_key box_foreign_keys[] = {
    AORM_FOREIGN_KEY_COMPOSITE(box, (room, shelf_number), shelf, (number)),
};
const aorm_model box_model = {
    AORM_MODEL_OF(box, "boxes"),
    AORM_COLUMNS(box_columns),
    AORM_FOREIGN_KEYS(box_foreign_keys),
};

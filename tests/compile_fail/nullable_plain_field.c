/* nullable_plain_field.c -- must NOT compile: a NULLABLE column whose
 * field is a plain int32_t (it must be an aorm_opt_int32, or NULL could
 * not be represented). */
#include <aorm/model.h>

typedef struct bad_author {
    int64_t id;
    int32_t born; /* should be aorm_opt_int32 */
} bad_author;

extern const aorm_model bad_author_model;

static const aorm_column bad_author_columns[] = {
    AORM_COLUMN(bad_author, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(bad_author, born, AORM_INT4, AORM_NULLABLE),
};

const aorm_model bad_author_model = {
    AORM_MODEL_OF(bad_author, "bad_authors"),
    AORM_COLUMNS(bad_author_columns),
};

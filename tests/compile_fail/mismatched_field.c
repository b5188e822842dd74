/* mismatched_field.c -- must NOT compile: a `double` field declared as an
 * AORM_INT8 column. The build of this file is a ctest case that passes
 * only when the compiler stops with the model macro's message naming
 * the field. */
#include <aorm/model.h>

typedef struct bad_book {
    int64_t id;
    double price; /* should be AORM_FLOAT8 */
} bad_book;

extern const aorm_model bad_book_model;

static const aorm_column bad_book_columns[] = {
    AORM_COLUMN(bad_book, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(bad_book, price, AORM_INT8, 0),
};

const aorm_model bad_book_model = {
    AORM_MODEL_OF(bad_book, "bad_books"),
    AORM_COLUMNS(bad_book_columns),
};

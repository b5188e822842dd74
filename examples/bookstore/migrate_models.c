/* migrate_models.c -- the bookstore models as aorm-migrate loads them:
 * `aorm-migrate --models libbookstore_migrate_models.so check` dlopens this
 * module and reads aorm_migrate_models, a NULL-terminated list. */
#include "models.h"

__attribute__((visibility("default"))) const aorm_model *const aorm_migrate_models[] = {
    &author_model, &book_model, &tag_model, &book_tag_model, NULL};

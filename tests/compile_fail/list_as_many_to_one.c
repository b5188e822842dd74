/* list_as_many_to_one.c -- must NOT compile: a many-to-one relationship
 * declared on an aorm_list field (it must be a pointer to the target). */
#include <aorm/model.h>

typedef struct owner {
    int64_t id;
} owner;

typedef struct pet {
    int64_t id;
    int64_t owner_id;
    aorm_list owner; /* should be `struct owner *` */
} pet;

extern const aorm_model owner_model, pet_model;

static const aorm_column owner_columns[] = {
    AORM_COLUMN(owner, id, AORM_INT8, AORM_PK),
};
const aorm_model owner_model = {
    AORM_MODEL_OF(owner, "owners"),
    AORM_COLUMNS(owner_columns),
};

static const aorm_column pet_columns[] = {
    AORM_COLUMN(pet, id, AORM_INT8, AORM_PK),
    AORM_COLUMN(pet, owner_id, AORM_INT8, 0),
};
static const aorm_foreign_key pet_foreign_keys[] = {
    AORM_FOREIGN_KEY(pet, owner_id, owner, id),
};
static const aorm_relationship pet_relationships[] = {
    AORM_MANY_TO_ONE(pet, owner, owner, owner_id),
};
const aorm_model pet_model = {
    AORM_MODEL_OF(pet, "pets"),
    AORM_COLUMNS(pet_columns),
    AORM_FOREIGN_KEYS(pet_foreign_keys),
    AORM_RELATIONSHIPS(pet_relationships),
};

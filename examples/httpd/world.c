/* world.c -- the TechEmpower models' declarations. */
#include "world.h"

static const aorm_column world_columns[] = {
    AORM_COLUMN(world, id, AORM_INT4, AORM_PK),
    AORM_COLUMN(world, randomnumber, AORM_INT4, 0),
};
const aorm_model world_model = {
    AORM_MODEL_OF(world, "world"),
    AORM_COLUMNS(world_columns),
};

static const aorm_column fortune_columns[] = {
    AORM_COLUMN(fortune, id, AORM_INT4, AORM_PK),
    AORM_COLUMN(fortune, message, AORM_TEXT, 0),
};
const aorm_model fortune_model = {
    AORM_MODEL_OF(fortune, "fortune"),
    AORM_COLUMNS(fortune_columns),
};

/* world.h -- the TechEmpower tables: world(id, randomnumber), 10,000
 * rows, and fortune(id, message), 12 rows (bench/schema.sql creates and
 * fills them). */
#ifndef HTTPD_WORLD_H
#define HTTPD_WORLD_H

#include <aorm/model.h>

typedef struct world {
    int32_t id;
    int32_t randomnumber;
} world;

typedef struct fortune {
    int32_t id;
    char *message;
} fortune;

extern const aorm_model world_model, fortune_model;

#endif

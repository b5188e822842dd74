/* consumer.c -- a program built against an installed aorm, the way a user
 * builds one: only <aorm/aorm.h> and what pkg-config or find_package(aorm)
 * hands out. It includes every public header through the umbrella header
 * and calls into the library, so both the compile flags and the link line
 * are exercised. */
#include <aorm/aorm.h>

#include <stdio.h>
#include <string.h>

int main(void) {
    aorm_engine_options o;
    aorm_engine_options_init(&o);
    const char *name = aorm_errname(AORM_EMISUSE);
    if (name == NULL || strcmp(name, "AORM_EMISUSE") != 0 || o.pool_size <= 0) {
        fprintf(stderr, "consumer: unexpected answer from libaorm (%s)\n", name ? name : "NULL");
        return 1;
    }
    printf("consumer: %s, pool_size %d\n", name, o.pool_size);
    return 0;
}

/* error.c -- aorm_strerror / aorm_errname generated from AORM_ERRNO_MAP,
 * and deep copies of aorm_error. */
#include <stdlib.h>
#include <string.h>

#include "aorm/error.h"

const char *aorm_strerror(int code) {
    switch (code) {
    case AORM_OK: return "success";
#define AORM__ERR_STR(name, value, desc) case AORM_E##name: return desc;
    AORM_ERRNO_MAP(AORM__ERR_STR)
#undef AORM__ERR_STR
    }
    return "unknown error";
}

const char *aorm_errname(int code) {
    switch (code) {
    case AORM_OK: return "AORM_OK";
#define AORM__ERR_NAME(name, value, desc) case AORM_E##name: return "AORM_E" #name;
    AORM_ERRNO_MAP(AORM__ERR_NAME)
#undef AORM__ERR_NAME
    }
    return "AORM_EUNKNOWN";
}

static size_t str_size(const char *s) { return s ? strlen(s) + 1 : 1; }

static char *put_str(char **cursor, const char *s) {
    char *at = *cursor;
    size_t n = str_size(s);
    if (s) memcpy(at, s, n);
    else at[0] = '\0';
    *cursor += n;
    return at;
}

aorm_error *aorm_error_copy(const aorm_error *e) {
    if (!e) return NULL;
    size_t n = sizeof(*e) + str_size(e->message) + str_size(e->detail) + str_size(e->hint) +
               str_size(e->constraint) + str_size(e->table) + str_size(e->column);
    aorm_error *c = malloc(n);
    if (!c) return NULL;
    char *cur = (char *)(c + 1);
    c->code = e->code;
    memcpy(c->sqlstate, e->sqlstate, sizeof(c->sqlstate));
    c->sqlstate[5] = '\0';
    c->message = put_str(&cur, e->message);
    c->detail = put_str(&cur, e->detail);
    c->hint = put_str(&cur, e->hint);
    c->constraint = put_str(&cur, e->constraint);
    c->table = put_str(&cur, e->table);
    c->column = put_str(&cur, e->column);
    return c;
}

void aorm_error_free(aorm_error *e) { free(e); }

int aorm_error_is(const aorm_error *e, const char *state) {
    return e && state && strncmp(e->sqlstate, state, 5) == 0 && e->sqlstate[0] != '\0';
}

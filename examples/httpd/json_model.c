/* json_model.c -- objects <-> JSON for any aorm model (json_model.h says
 * why this is example code). Walks the public column and relationship
 * descriptions; owns nothing beyond the json_t values it returns. */
#include "json_model.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define US_PER_DAY INT64_C(86400000000)

/* ==== ISO 8601 ============================================================ */

int jm_format_date(int32_t date, char *buf, size_t cap) {
    if (date == AORM_DATE_INFINITY) return snprintf(buf, cap, "infinity");
    if (date == AORM_DATE_NEG_INFINITY) return snprintf(buf, cap, "-infinity");
    int y, m, d;
    aorm_date_to_ymd(date, &y, &m, &d);
    return snprintf(buf, cap, "%04d-%02d-%02d", y, m, d);
}

int jm_format_timestamp(int64_t ts, bool utc, char *buf, size_t cap) {
    if (ts == AORM_TIMESTAMP_INFINITY) return snprintf(buf, cap, "infinity");
    if (ts == AORM_TIMESTAMP_NEG_INFINITY) return snprintf(buf, cap, "-infinity");
    int64_t days = ts / US_PER_DAY, rem = ts % US_PER_DAY;
    if (rem < 0) { rem += US_PER_DAY; days--; }
    int y, m, d;
    aorm_date_to_ymd((int32_t)days, &y, &m, &d);
    int64_t secs = rem / 1000000, us = rem % 1000000;
    return snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%06d%s", y, m, d, (int)(secs / 3600),
                    (int)(secs / 60 % 60), (int)(secs % 60), (int)us, utc ? "Z" : "");
}

/* Reads exactly n digits. */
static int digits(const char **p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if ((*p)[i] < '0' || (*p)[i] > '9') return -1;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int days_in_month(int y, int m) {
    static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

static int parse_ymd(const char **p, int32_t *out) {
    int y, m, d;
    if (digits(p, 4, &y) || *(*p)++ != '-' || digits(p, 2, &m) || *(*p)++ != '-' || digits(p, 2, &d)) return -1;
    if (m < 1 || m > 12 || d < 1 || d > days_in_month(y, m)) return -1;
    *out = aorm_date_from_ymd(y, m, d);
    return 0;
}

int jm_parse_date(const char *text, int32_t *out) {
    const char *p = text;
    int32_t d;
    if (parse_ymd(&p, &d) || *p) return -1;
    *out = d;
    return 0;
}

int jm_parse_timestamp(const char *text, bool allow_zone, int64_t *out) {
    const char *p = text;
    int32_t date;
    int hh, mi, ss;
    if (parse_ymd(&p, &date) || (*p != 'T' && *p != ' ')) return -1;
    p++;
    if (digits(&p, 2, &hh) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' || digits(&p, 2, &ss)) return -1;
    if (hh > 23 || mi > 59 || ss > 59) return -1;
    int64_t us = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        for (; *p >= '0' && *p <= '9'; p++, n++)
            if (n < 6) us = us * 10 + (*p - '0');
        if (n == 0) return -1;
        for (; n < 6; n++) us *= 10;
    }
    int64_t offset_us = 0;
    if (*p == 'Z' || *p == '+' || *p == '-') {
        if (!allow_zone) return -1;
        if (*p == 'Z') {
            p++;
        } else {
            int sign = *p++ == '-' ? -1 : 1, oh, om;
            if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59) return -1;
            offset_us = sign * ((int64_t)oh * 3600 + om * 60) * 1000000;
        }
    }
    if (*p) return -1;
    *out = (int64_t)date * US_PER_DAY + ((int64_t)hh * 3600 + mi * 60 + ss) * 1000000 + us - offset_us;
    return 0;
}

/* ==== objects to JSON ===================================================== */

static json_t *hex_string(const uint8_t *data, size_t len) {
    char *buf = malloc(2 * len + 3);
    if (!buf) return NULL;
    buf[0] = '\\', buf[1] = 'x';
    for (size_t i = 0; i < len; i++) sprintf(buf + 2 + 2 * i, "%02x", data[i]);
    json_t *j = json_stringn(buf, 2 + 2 * len);
    free(buf);
    return j;
}

static json_t *uuid_string(const uint8_t b[16]) {
    char buf[37];
    snprintf(buf, sizeof buf, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return json_string(buf);
}

/* The JSON of one column's field. */
static json_t *column_json(const aorm_column *c, const char *field) {
    bool nullable = c->flags & AORM_NULLABLE;
    char buf[48];
    switch (c->type) {
    case AORM_BOOL:
        if (nullable) {
            const aorm_opt_bool *o = (const void *)field;
            return o->valid ? json_boolean(o->value) : json_null();
        }
        return json_boolean(*(const bool *)field);
    case AORM_INT2:
        if (nullable) {
            const aorm_opt_int16 *o = (const void *)field;
            return o->valid ? json_integer(o->value) : json_null();
        }
        return json_integer(*(const int16_t *)field);
    case AORM_INT4:
        if (nullable) {
            const aorm_opt_int32 *o = (const void *)field;
            return o->valid ? json_integer(o->value) : json_null();
        }
        return json_integer(*(const int32_t *)field);
    case AORM_INT8:
        if (nullable) {
            const aorm_opt_int64 *o = (const void *)field;
            return o->valid ? json_integer(o->value) : json_null();
        }
        return json_integer(*(const int64_t *)field);
    case AORM_FLOAT4: {
        double v;
        if (nullable) {
            const aorm_opt_float *o = (const void *)field;
            if (!o->valid) return json_null();
            v = o->value;
        } else {
            v = *(const float *)field;
        }
        return isfinite(v) ? json_real(v) : json_null();
    }
    case AORM_FLOAT8: {
        double v;
        if (nullable) {
            const aorm_opt_double *o = (const void *)field;
            if (!o->valid) return json_null();
            v = o->value;
        } else {
            v = *(const double *)field;
        }
        return isfinite(v) ? json_real(v) : json_null();
    }
    case AORM_NUMERIC:
    case AORM_TEXT: {
        const char *s = *(char *const *)field;
        return s ? json_string(s) : json_null();
    }
    case AORM_JSON:
    case AORM_JSONB: {
        const char *s = *(char *const *)field;
        if (!s) return json_null();
        json_t *j = json_loads(s, JSON_DECODE_ANY, NULL);
        return j ? j : json_string(s);
    }
    case AORM_BYTEA: {
        const aorm_bytes *b = (const void *)field;
        return b->data ? hex_string(b->data, b->len) : json_null();
    }
    case AORM_DATE:
        if (nullable) {
            const aorm_opt_int32 *o = (const void *)field;
            if (!o->valid) return json_null();
            jm_format_date(o->value, buf, sizeof buf);
        } else {
            jm_format_date(*(const int32_t *)field, buf, sizeof buf);
        }
        return json_string(buf);
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ:
        if (nullable) {
            const aorm_opt_int64 *o = (const void *)field;
            if (!o->valid) return json_null();
            jm_format_timestamp(o->value, c->type == AORM_TIMESTAMPTZ, buf, sizeof buf);
        } else {
            jm_format_timestamp(*(const int64_t *)field, c->type == AORM_TIMESTAMPTZ, buf, sizeof buf);
        }
        return json_string(buf);
    case AORM_UUID:
        if (nullable) {
            const aorm_opt_uuid *o = (const void *)field;
            return o->valid ? uuid_string(o->value.b) : json_null();
        }
        return uuid_string(((const aorm_uuid *)field)->b);
    default: break; /* interval, inet, enums, arrays: not used by the bookstore API */
    }
    return json_null();
}

enum { MAX_DEPTH = 6 };

static json_t *object_json(aorm_session *s, const aorm_model *m, const void *obj, bool rels,
                           const aorm_relationship *via, int depth) {
    json_t *j = json_object();
    if (!j) return NULL;
    const char *base = obj;
    for (int i = 0; i < m->ncolumns; i++) {
        const aorm_column *c = &m->columns[i];
        if (json_object_set_new(j, c->name, column_json(c, base + c->offset)) < 0) goto fail;
    }
    if (!rels || depth >= MAX_DEPTH) return j;
    for (int i = 0; i < m->nrelationships; i++) {
        const aorm_relationship *r = &m->relationships[i];
        /* never straight back along the way we came (book.author of an
         * author's books) */
        if (via && via->back_populates && strcmp(via->back_populates, r->name) == 0) continue;
        if (aorm_rel_loaded(s, obj, r) != 1) continue;
        json_t *v;
        if (r->kind == AORM_MANY_TO_ONE) {
            const void *t = *(void *const *)(base + r->offset);
            v = t ? object_json(s, r->target, t, true, r, depth + 1) : json_null();
        } else {
            const aorm_list *l = (const void *)(base + r->offset);
            v = json_array();
            for (size_t k = 0; v && k < l->len; k++)
                if (json_array_append_new(v, object_json(s, r->target, l->items[k], true, r, depth + 1)) < 0) {
                    json_decref(v);
                    v = NULL;
                }
        }
        if (!v || json_object_set_new(j, r->name, v) < 0) goto fail;
    }
    return j;
fail:
    json_decref(j);
    return NULL;
}

json_t *jm_to_json(aorm_session *s, const aorm_model *m, const void *obj, bool with_relationships) {
    return object_json(s, m, obj, with_relationships, NULL, 0);
}

/* ==== JSON to objects ===================================================== */

static bool listed(const char *const *list, const char *name) {
    for (; list && *list; list++)
        if (strcmp(*list, name) == 0) return true;
    return false;
}

static const char *kind_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static int integer_in(const json_t *v, int64_t lo, int64_t hi, int64_t *out) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) return -2;
    *out = x;
    return 0;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int parse_uuid(const char *t, uint8_t out[16]) {
    int n = 0;
    for (const char *p = t; *p; p++) {
        if (*p == '-' && (p - t == 8 || p - t == 13 || p - t == 18 || p - t == 23)) continue;
        int hi = hexval(p[0]), lo = hexval(p[1]);
        if (hi < 0 || lo < 0 || n == 16) return -1;
        out[n++] = (uint8_t)(hi << 4 | lo);
        p++;
    }
    return n == 16 && strlen(t) == 36 ? 0 : -1;
}

/* Assigns one field. Returns 0, or -1 with the reason in err. */
static int set_field(aorm_session *s, const aorm_column *c, char *field, json_t *v, char *err, size_t cap) {
    bool nullable = c->flags & AORM_NULLABLE;
    const char *want = "a value";
    if (json_is_null(v)) {
        if (!nullable) {
            snprintf(err, cap, "field \"%s\" may not be null", c->name);
            return -1;
        }
        switch (c->type) {
        case AORM_NUMERIC: case AORM_TEXT: case AORM_JSON: case AORM_JSONB:
            *(char **)field = NULL;
            return 0;
        case AORM_BYTEA:
            ((aorm_bytes *)field)->data = NULL, ((aorm_bytes *)field)->len = 0;
            return 0;
        default:
            memset(field, 0, c->size); /* a zeroed aorm_opt_* is NULL */
            return 0;
        }
    }
    int64_t i;
    int rc;
    switch (c->type) {
    case AORM_BOOL:
        want = "a boolean";
        if (!json_is_boolean(v)) break;
        if (nullable) *(aorm_opt_bool *)field = AORM_SOME(aorm_opt_bool, json_is_true(v));
        else *(bool *)field = json_is_true(v);
        return 0;
    case AORM_INT2:
    case AORM_INT4:
    case AORM_INT8: {
        int64_t lo = c->type == AORM_INT2 ? INT16_MIN : c->type == AORM_INT4 ? INT32_MIN : INT64_MIN;
        int64_t hi = c->type == AORM_INT2 ? INT16_MAX : c->type == AORM_INT4 ? INT32_MAX : INT64_MAX;
        want = "an integer";
        if ((rc = integer_in(v, lo, hi, &i)) == -2) {
            snprintf(err, cap, "field \"%s\": %" PRId64 "..%" PRId64 " expected", c->name, lo, hi);
            return -1;
        }
        if (rc < 0) break;
        if (c->type == AORM_INT2) {
            if (nullable) *(aorm_opt_int16 *)field = AORM_SOME(aorm_opt_int16, (int16_t)i);
            else *(int16_t *)field = (int16_t)i;
        } else if (c->type == AORM_INT4) {
            if (nullable) *(aorm_opt_int32 *)field = AORM_SOME(aorm_opt_int32, (int32_t)i);
            else *(int32_t *)field = (int32_t)i;
        } else {
            if (nullable) *(aorm_opt_int64 *)field = AORM_SOME(aorm_opt_int64, i);
            else *(int64_t *)field = i;
        }
        return 0;
    }
    case AORM_FLOAT4:
    case AORM_FLOAT8: {
        want = "a number";
        if (!json_is_number(v)) break;
        double d = json_number_value(v);
        if (c->type == AORM_FLOAT4) {
            if (nullable) *(aorm_opt_float *)field = AORM_SOME(aorm_opt_float, (float)d);
            else *(float *)field = (float)d;
        } else {
            if (nullable) *(aorm_opt_double *)field = AORM_SOME(aorm_opt_double, d);
            else *(double *)field = d;
        }
        return 0;
    }
    case AORM_TEXT:
    case AORM_NUMERIC: {
        want = c->type == AORM_TEXT ? "a string" : "a decimal string";
        if (!json_is_string(v)) break;
        if (memchr(json_string_value(v), 0, json_string_length(v))) {
            snprintf(err, cap, "field \"%s\": a NUL character is not allowed", c->name);
            return -1;
        }
        char *copy = aorm_session_strdup(s, json_string_value(v));
        if (!copy) goto nomem;
        *(char **)field = copy;
        return 0;
    }
    case AORM_JSON:
    case AORM_JSONB: {
        char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        char *copy = text ? aorm_session_strdup(s, text) : NULL;
        free(text);
        if (!copy) goto nomem;
        *(char **)field = copy;
        return 0;
    }
    case AORM_BYTEA: {
        want = "a \\x hex string";
        const char *t = json_is_string(v) ? json_string_value(v) : NULL;
        size_t n = t ? strlen(t) : 0;
        if (!t || n < 2 || t[0] != '\\' || t[1] != 'x' || n % 2) break;
        uint8_t *data = aorm_session_alloc(s, n / 2 ? n / 2 - 1 : 1);
        if (!data) goto nomem;
        for (size_t k = 2; k < n; k += 2) {
            int hi = hexval(t[k]), lo = hexval(t[k + 1]);
            if (hi < 0 || lo < 0) goto bad;
            data[k / 2 - 1] = (uint8_t)(hi << 4 | lo);
        }
        ((aorm_bytes *)field)->data = data, ((aorm_bytes *)field)->len = n / 2 - 1;
        return 0;
    }
    case AORM_DATE: {
        want = "a date (YYYY-MM-DD)";
        int32_t d;
        if (!json_is_string(v) || jm_parse_date(json_string_value(v), &d)) break;
        if (nullable) *(aorm_opt_int32 *)field = AORM_SOME(aorm_opt_int32, d);
        else *(int32_t *)field = d;
        return 0;
    }
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: {
        bool tz = c->type == AORM_TIMESTAMPTZ;
        want = tz ? "an ISO 8601 timestamp" : "an ISO 8601 timestamp without time zone";
        int64_t ts;
        if (!json_is_string(v) || jm_parse_timestamp(json_string_value(v), tz, &ts)) break;
        if (nullable) *(aorm_opt_int64 *)field = AORM_SOME(aorm_opt_int64, ts);
        else *(int64_t *)field = ts;
        return 0;
    }
    case AORM_UUID: {
        want = "a uuid";
        aorm_uuid u;
        if (!json_is_string(v) || parse_uuid(json_string_value(v), u.b)) break;
        if (nullable) *(aorm_opt_uuid *)field = (aorm_opt_uuid){true, u};
        else *(aorm_uuid *)field = u;
        return 0;
    }
    default: /* interval, inet, enums, arrays: not used by the bookstore API */
        snprintf(err, cap, "field \"%s\": its type cannot be set from JSON", c->name);
        return -1;
    }
bad:
    snprintf(err, cap, "field \"%s\": expected %s, got %s", c->name, want, kind_name(v));
    return -1;
nomem:
    snprintf(err, cap, "out of memory");
    return -1;
}

int jm_from_json(aorm_session *s, const aorm_model *m, void *obj, json_t *body, const jm_fields *fields,
                 char *err, size_t cap) {
    static const jm_fields every = {0};
    if (!fields) fields = &every;
    if (!json_is_object(body)) {
        snprintf(err, cap, "expected a JSON object, got %s", kind_name(body));
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
        if (listed(fields->extra, key)) continue;
        const aorm_column *c = aorm_model_column(m, key);
        if (!c || (fields->allowed && !listed(fields->allowed, key))) {
            snprintf(err, cap, c ? "field \"%s\" cannot be set here" : "unknown field \"%s\"", key);
            return -1;
        }
        if (set_field(s, c, (char *)obj + c->offset, v, err, cap) < 0) return -1;
    }
    for (const char *const *r = fields->required; r && *r; r++)
        if (!json_object_get(body, *r)) {
            snprintf(err, cap, "missing field \"%s\"", *r);
            return -1;
        }
    return 0;
}

/* json_model.h -- objects of aorm models to JSON and back, with jansson.
 *
 * These helpers live in the example, not in libaorm: they need a JSON
 * library, and a C program that serves JSON already has its own (jansson,
 * cJSON, yyjson...); putting one in libaorm would force it on every user.
 * They use only the public model metadata (aorm_model's columns and
 * relationships, aorm_rel_loaded), so this file can be copied into a
 * program and adapted to another JSON library in an hour.
 *
 * Value mapping (both directions):
 *   bool -> true/false; int2/int4/int8 -> integer; float4/float8 -> number;
 *   text -> string; numeric -> string (exact decimal); json/jsonb -> the
 *   embedded JSON value; bytea -> "\\x..." hex string; uuid -> canonical
 *   string; date -> "YYYY-MM-DD"; timestamp -> "YYYY-MM-DDTHH:MM:SS.ffffff";
 *   timestamptz -> the same in UTC with a "Z" (ISO 8601); SQL NULL -> null.
 */
#ifndef HTTPD_JSON_MODEL_H
#define HTTPD_JSON_MODEL_H

#include <aorm/aorm.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/** A new JSON object with every column of obj (an object of model m), and,
 * when with_relationships is true, every relationship of obj that is
 * loaded in s (collections as arrays, many-to-one as an object or null),
 * recursively, never walking back along the inverse of the relationship
 * it came through. Returns NULL on out of memory. */
json_t *jm_to_json(aorm_session *s, const aorm_model *m, const void *obj, bool with_relationships);

/** ISO 8601 text of a date (days since 2000-01-01) and a timestamp
 * (microseconds since 2000-01-01; utc adds "Z"). buf holds at least 40
 * bytes. Return the length. */
int jm_format_date(int32_t date, char *buf, size_t cap);
int jm_format_timestamp(int64_t ts, bool utc, char *buf, size_t cap);
/** Parse them back: 0, or -1 when the text is not of that form. A zone
 * ("Z", "+02:00") is converted to UTC when allow_zone, refused otherwise. */
int jm_parse_date(const char *text, int32_t *out);
int jm_parse_timestamp(const char *text, bool allow_zone, int64_t *out);

/** Which keys a body may carry. NULL lists mean "every column" (allowed)
 * and "none" (required, extra). Keys of `extra` are left to the caller. */
typedef struct jm_fields {
    const char *const *allowed;   /**< NULL-terminated column names, or NULL for every column */
    const char *const *required;  /**< NULL-terminated, or NULL */
    const char *const *extra;     /**< NULL-terminated keys the caller handles, or NULL */
} jm_fields;

/** Sets the columns of obj (an object of m in session s) from the keys of
 * the JSON object body. Strings are copied into the session's arena.
 * Returns 0, or -1 with a message for the client in err ("field \"year\":
 * expected an integer, got a string", "missing field \"title\"",
 * "unknown field \"colour\"") and obj possibly partly assigned. */
int jm_from_json(aorm_session *s, const aorm_model *m, void *obj, json_t *body, const jm_fields *fields,
                 char *err, size_t cap);

#endif

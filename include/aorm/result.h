/** @file result.h
 * statement parameters (binary codecs) and query results.
 *
 * Parameters are collected in an aorm_params builder, usually on the
 * caller's stack: each aorm_params_*() call appends one typed value in
 * PostgreSQL's binary wire format. The builder keeps the first error it
 * meets (out of memory, a malformed numeric or uuid string, a NUL byte in
 * text) and the engine refuses a builder in error with that code, so a
 * chain of appends needs one check, at submission. The engine copies the
 * parameters when a statement is queued: the builder may be reset or
 * freed as soon as the submitting call returns.
 *
 * Results are read with typed getters that check the column's type and
 * the value's length before decoding (a value the server sent is never
 * trusted to be well-formed). Getters return 0, or a negative code:
 * AORM_ERANGE (row/column out of range, value does not fit),
 * AORM_ETYPE (column type not accepted by this getter), AORM_ENULLVALUE
 * (the value is NULL), AORM_EPROTOCOL (malformed bytes).
 * Pointers a getter hands out point into the result and stay valid until
 * the result is freed.
 *
 * Handles and ownership:
 *   - aorm_params: a builder the caller owns, usually on the stack; its
 *     fields are private. aorm_params_init() prepares it, aorm_params_free()
 *     releases what it allocated beyond its inline room.
 *   - aorm_result: handed to a statement's callback, *borrowed* for the
 *     duration of that callback (the engine frees it when the callback
 *     returns) unless aorm_result_detach() moved it to the caller, who then
 *     frees it with aorm_result_free(). Pointers the getters return point
 *     into the result and live as long as it.
 *
 * Callbacks: none of its own. Every function here may be called from any
 * callback; a borrowed result must not be touched after its callback
 * returns.
 *
 * Sizes: lengths are size_t in bytes, except where libpq's int lengths
 * show through (aorm_result_raw()).
 */
#ifndef AORM_RESULT_H
#define AORM_RESULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

/** PostgreSQL type OIDs aorm encodes and decodes in binary. */
enum {
    AORM_T_BOOL = 16,
    AORM_T_BYTEA = 17,
    AORM_T_NAME = 19,
    AORM_T_INT8 = 20,
    AORM_T_INT2 = 21,
    AORM_T_INT4 = 23,
    AORM_T_TEXT = 25,
    AORM_T_OID = 26,
    AORM_T_JSON = 114,
    AORM_T_FLOAT4 = 700,
    AORM_T_FLOAT8 = 701,
    AORM_T_UNKNOWN = 705,
    AORM_T_BPCHAR = 1042,
    AORM_T_VARCHAR = 1043,
    AORM_T_DATE = 1082,
    AORM_T_TIMESTAMP = 1114,
    AORM_T_TIMESTAMPTZ = 1184,
    AORM_T_NUMERIC = 1700,
    AORM_T_UUID = 2950,
    AORM_T_JSONB = 3802,
    AORM_T_INT2_ARRAY = 1005,
    AORM_T_INT4_ARRAY = 1007,
    AORM_T_TEXT_ARRAY = 1009,
    AORM_T_INT8_ARRAY = 1016,
    AORM_T_UUID_ARRAY = 2951,
    AORM_T_INTERVAL = 1186,
    AORM_T_INET = 869,
    AORM_T_CIDR = 650,
    AORM_T_BOOL_ARRAY = 1000,
    AORM_T_FLOAT4_ARRAY = 1021,
    AORM_T_FLOAT8_ARRAY = 1022,
    AORM_T_NUMERIC_ARRAY = 1231,
    AORM_T_TIMESTAMPTZ_ARRAY = 1185
};

/* ---- dates and times ----------------------------------------------------
 * PostgreSQL's binary epoch is 2000-01-01. A date is days since it; a
 * timestamp (and timestamptz, which is UTC) is microseconds since it.
 * The special values infinity / -infinity are INT32/INT64 max / min. */
#define AORM_DATE_INFINITY INT32_MAX
#define AORM_DATE_NEG_INFINITY INT32_MIN
#define AORM_TIMESTAMP_INFINITY INT64_MAX
#define AORM_TIMESTAMP_NEG_INFINITY INT64_MIN

/** Days since 2000-01-01 for a proleptic Gregorian date (month 1-12). */
AORM_API int32_t aorm_date_from_ymd(int year, int month, int day);
AORM_API void aorm_date_to_ymd(int32_t date, int *year, int *month, int *day);
/** Microseconds since 2000-01-01 00:00:00 from a Unix time in microseconds
 * and back. */
AORM_API int64_t aorm_timestamp_from_unix_us(int64_t unix_us);
AORM_API int64_t aorm_timestamp_to_unix_us(int64_t ts);

/** ISO-8601 text, written into buf (cap bytes, NUL included), as
 * snprintf: the length of the whole text is returned even when cap cuts
 * it (AORM_EMISUSE for a NULL buf with cap > 0). A date is "2026-12-02";
 * a timestamp "2026-12-02T15:04:05", with ".ffffff" (microseconds, as
 * few digits as exact) when not on a whole second; a timestamptz the same
 * in UTC with "Z". Years outside 0000-9999 are written with a sign and at
 * least four digits ("-0044-03-15", "+12345-01-01"), year 0 being 1 BC as
 * in ISO 8601. ±infinity is "infinity" / "-infinity". */
AORM_API int aorm_date_format(int32_t date, char *buf, size_t cap);
AORM_API int aorm_timestamp_format(int64_t ts, char *buf, size_t cap);
AORM_API int aorm_timestamptz_format(int64_t ts, char *buf, size_t cap);
/** Parses the text the format functions write, and the usual variants:
 * "YYYY-MM-DD" (also with a sign and more digits); a timestamp adds
 * "THH:MM", "THH:MM:SS" or "THH:MM:SS.f..." (a space for the T, up to 6
 * fraction digits, more are refused) and takes no offset; a timestamptz
 * requires one ("Z", "+HH", "+HH:MM", "+HHMM", or '-') and is converted
 * to UTC. "infinity" and "-infinity" are accepted. The whole string must
 * be consumed. Returns 0 with *out set, AORM_ERANGE for text that is not
 * such a value (a field out of range, February 30th, trailing bytes) or
 * AORM_EMISUSE for NULL arguments; *out is left alone on error. */
AORM_API int aorm_date_parse(const char *text, int32_t *out);
AORM_API int aorm_timestamp_parse(const char *text, int64_t *out);
AORM_API int aorm_timestamptz_parse(const char *text, int64_t *out);

/* ---- parameters --------------------------------------------------------- */

/** Inline room for the common case; larger statements spill to the heap. */
#define AORM_PARAMS_INLINE 8
#define AORM_PARAMS_INLINE_BYTES 128

typedef struct aorm_param_slot {
    uint32_t type;   /**< OID, 0 lets the server infer */
    int32_t len;     /**< -1 for NULL */
    uint32_t offset; /**< into the builder's data */
    int32_t format;  /**< 1 binary, 0 text */
} aorm_param_slot;

/** Fields are private: use the functions below. */
typedef struct aorm_params {
    int count;
    int cap;
    int error;                 /**< first error met, 0 if none */
    aorm_param_slot *slots;
    char *data;
    size_t len;
    size_t data_cap;
    aorm_param_slot inline_slots[AORM_PARAMS_INLINE];
    char inline_data[AORM_PARAMS_INLINE_BYTES];
} aorm_params;

/** Prepares an empty builder. No allocation until it outgrows its inline
 * room. */
AORM_API void aorm_params_init(aorm_params *p);
/** Empties the builder, keeping its memory. */
AORM_API void aorm_params_reset(aorm_params *p);
/** Releases heap memory the builder took. Accepts NULL. */
AORM_API void aorm_params_free(aorm_params *p);
/** Number of parameters, and the builder's sticky error (0 when fine). */
AORM_API int aorm_params_count(const aorm_params *p);
AORM_API int aorm_params_error(const aorm_params *p);

/** Each append returns 0 or the builder's (new or earlier) error. */
AORM_API int aorm_params_null(aorm_params *p, uint32_t type);
AORM_API int aorm_params_bool(aorm_params *p, bool v);
AORM_API int aorm_params_int2(aorm_params *p, int16_t v);
AORM_API int aorm_params_int4(aorm_params *p, int32_t v);
AORM_API int aorm_params_int8(aorm_params *p, int64_t v);
AORM_API int aorm_params_float4(aorm_params *p, float v);
AORM_API int aorm_params_float8(aorm_params *p, double v);
/** NUL-terminated text (type text). NULL pointer appends SQL NULL. */
AORM_API int aorm_params_text(aorm_params *p, const char *s);
/** Text of known length; AORM_EENCODING when it contains a NUL byte
 * (PostgreSQL text cannot hold one). UTF-8 validity is checked by the
 * server (SQLSTATE 22021). */
AORM_API int aorm_params_text_n(aorm_params *p, const char *s, size_t len);
AORM_API int aorm_params_bytea(aorm_params *p, const void *data, size_t len);
/** An exact decimal string ("-12.3400", "NaN", "Infinity", "-Infinity"),
 * sent as binary numeric. AORM_EENCODING when malformed. */
AORM_API int aorm_params_numeric(aorm_params *p, const char *decimal);
AORM_API int aorm_params_date(aorm_params *p, int32_t date);
AORM_API int aorm_params_timestamp(aorm_params *p, int64_t ts);
AORM_API int aorm_params_timestamptz(aorm_params *p, int64_t ts);
AORM_API int aorm_params_uuid(aorm_params *p, const uint8_t uuid[16]);
/** uuid from its canonical text form; AORM_EENCODING when malformed. */
AORM_API int aorm_params_uuid_str(aorm_params *p, const char *text);
AORM_API int aorm_params_json(aorm_params *p, const char *json, size_t len);
AORM_API int aorm_params_jsonb(aorm_params *p, const char *json, size_t len);
/** One-dimensional arrays; `nulls` may be NULL (no NULL elements). For
 * text arrays a NULL element pointer is an SQL NULL. */
AORM_API int aorm_params_int4_array(aorm_params *p, const int32_t *v, const bool *nulls, size_t n);
AORM_API int aorm_params_int8_array(aorm_params *p, const int64_t *v, const bool *nulls, size_t n);
AORM_API int aorm_params_text_array(aorm_params *p, const char *const *v, size_t n);
/** uuid arrays take n uuids as 16 * n contiguous bytes. */
AORM_API int aorm_params_uuid_array(aorm_params *p, const uint8_t *v, const bool *nulls, size_t n);
/** interval (NULL pointer: SQL NULL). */
AORM_API int aorm_params_interval(aorm_params *p, const aorm_interval *v);
/** inet and cidr (NULL pointer: SQL NULL). AORM_EENCODING for a family
 * other than AORM_INET_V4/V6, bits beyond the address, or (cidr) address
 * bits set right of the netmask. */
AORM_API int aorm_params_inet(aorm_params *p, const aorm_inet *v);
AORM_API int aorm_params_cidr(aorm_params *p, const aorm_inet *v);
/** Escape hatch: a value already encoded in `format` (0 text, 1 binary)
 * for type OID `type`. data == NULL appends NULL. */
AORM_API int aorm_params_raw(aorm_params *p, uint32_t type, const void *data, size_t len, int format);

/* ---- results ------------------------------------------------------------ */

typedef struct aorm_result aorm_result;

struct pg_result; /* libpq's PGresult */

/** The libpq result behind r, for dropping down to libpq itself; borrowed
 * (valid as long as r). Results are in binary format unless the statement
 * asked for text (AORM_EXEC_TEXT_RESULT). */
AORM_API struct pg_result *aorm_result_pgresult(const aorm_result *r);

AORM_API int aorm_result_nrows(const aorm_result *r);
AORM_API int aorm_result_ncols(const aorm_result *r);
/** Column index of `name`, or AORM_ENOTFOUND. Exact, case-sensitive. */
AORM_API int aorm_result_col(const aorm_result *r, const char *name);
AORM_API const char *aorm_result_col_name(const aorm_result *r, int col);
AORM_API uint32_t aorm_result_col_type(const aorm_result *r, int col);
/** Command tag ("SELECT 3", "INSERT 0 1") and the rows it affected
 * (or returned), -1 when the tag carries no count. */
AORM_API const char *aorm_result_cmd_tag(const aorm_result *r);
AORM_API int64_t aorm_result_affected(const aorm_result *r);
/** 1 if NULL, 0 if not, negative code when out of range. */
AORM_API int aorm_result_is_null(const aorm_result *r, int row, int col);
/** Raw value bytes (binary format), borrowed; len -1 for NULL. */
AORM_API int aorm_result_raw(const aorm_result *r, int row, int col, const char **data, int *len);

AORM_API int aorm_result_bool(const aorm_result *r, int row, int col, bool *out);
/** Integer getters accept every integer column that fits: int16 reads
 * int2; int32 reads int2/int4; int64 reads int2/int4/int8/oid. */
AORM_API int aorm_result_int16(const aorm_result *r, int row, int col, int16_t *out);
AORM_API int aorm_result_int32(const aorm_result *r, int row, int col, int32_t *out);
AORM_API int aorm_result_int64(const aorm_result *r, int row, int col, int64_t *out);
AORM_API int aorm_result_float4(const aorm_result *r, int row, int col, float *out);
/** Reads float8 and float4 columns. */
AORM_API int aorm_result_float8(const aorm_result *r, int row, int col, double *out);
/** text, varchar, bpchar, name, unknown, json and jsonb (jsonb's version
 * byte is skipped); and any column of a text-format result
 * (AORM_EXEC_TEXT_RESULT), in the server's text form. The string is
 * NUL-terminated; len may be NULL. */
AORM_API int aorm_result_text(const aorm_result *r, int row, int col, const char **s, size_t *len);
AORM_API int aorm_result_bytea(const aorm_result *r, int row, int col, const uint8_t **data, size_t *len);
/** numeric as an exact decimal string into buf (always NUL-terminated
 * when cap > 0). Returns the string length; AORM_ERANGE when cap is too
 * small (call with cap >= 1 + the returned need in *need if not NULL). */
AORM_API int aorm_result_numeric(const aorm_result *r, int row, int col, char *buf, size_t cap, size_t *need);
AORM_API int aorm_result_date(const aorm_result *r, int row, int col, int32_t *out);
/** Reads timestamp and timestamptz. */
AORM_API int aorm_result_timestamp(const aorm_result *r, int row, int col, int64_t *out);
AORM_API int aorm_result_uuid(const aorm_result *r, int row, int col, uint8_t out[16]);

/** A one-dimensional array value, borrowed from its result. */
typedef struct aorm_array {
    uint32_t elem_type;
    int count;        /**< number of elements */
    int has_nulls;
    const char *data; /**< first element's length word */
    const char *end;
    const char *cursor; /**< iteration state */
} aorm_array;

/** Parses the array header (empty arrays have count 0; multi-dimensional
 * arrays are AORM_ETYPE). */
AORM_API int aorm_result_array(const aorm_result *r, int row, int col, aorm_array *out);
/** Next element: returns 1 and sets *elem / *len (len -1 for NULL), 0 at
 * the end, AORM_EPROTOCOL when malformed. */
AORM_API int aorm_array_next(aorm_array *a, const char **elem, int *len);
/** Decodes all elements of an int2/int4/int8 array into out[0..cap); nulls
 * may be NULL (then a NULL element is AORM_ENULLVALUE). Returns the count
 * or a negative code (AORM_ERANGE if cap is too small). */
AORM_API int aorm_array_int64s(const aorm_array *a, int64_t *out, bool *nulls, int cap);
AORM_API int aorm_array_int32s(const aorm_array *a, int32_t *out, bool *nulls, int cap);

/** Decoders for one binary value (for array elements and raw values):
 * 0 or AORM_EPROTOCOL / AORM_ETYPE on a length that does not fit. */
AORM_API int aorm_decode_int(uint32_t type, const char *v, int len, int64_t *out);
AORM_API int aorm_decode_float8(uint32_t type, const char *v, int len, double *out);
AORM_API int aorm_decode_numeric(const char *v, int len, char *buf, size_t cap, size_t *need);
/** interval (16 bytes); inet or cidr (family, bits, is_cidr, length,
 * address). */
AORM_API int aorm_decode_interval(const char *v, int len, aorm_interval *out);
AORM_API int aorm_decode_inet(const char *v, int len, aorm_inet *out);
/** Parses a binary array value as aorm_result_array does; elem is the
 * element type OID it must have (0: any). */
AORM_API int aorm_decode_array(const char *v, int len, uint32_t elem, aorm_array *out);
/** Getters for interval and inet/cidr columns. */
AORM_API int aorm_result_interval(const aorm_result *r, int row, int col, aorm_interval *out);
AORM_API int aorm_result_inet(const aorm_result *r, int row, int col, aorm_inet *out);

/* ---- json hooks ----------------------------------------------------------
 * json / jsonb columns are C strings. A program that uses a JSON library
 * can have it look at every document on the way out (parameters of
 * AORM_JSON / AORM_JSONB fields and aorm_json/aorm_jsonb values bound by
 * a session or Core statement) and on the way in (fields loaded from a
 * result): serialize(user, text, len) and parse(user, text, len) return
 * 0 to accept, or a negative aorm code to refuse the value (a refused
 * parameter fails the statement before it is sent with that code; a
 * refused result value fails the load, named like any decode error). Set
 * once at start-up, before any engine runs (not thread-safe to change
 * while statements are built); NULL hooks, or a NULL argument, turn them
 * off. The text handed over is the document as it travels (jsonb without
 * its version byte). */
typedef struct aorm_json_hooks {
    int (*parse)(void *user, const char *text, size_t len);
    int (*serialize)(void *user, const char *text, size_t len);
    void *user;
} aorm_json_hooks;
AORM_API void aorm_json_set_hooks(const aorm_json_hooks *hooks);

#ifdef __cplusplus
}
#endif

#endif /* AORM_RESULT_H */

/* field.c -- one field of a mapped object <-> one binary value.
 *
 * What every statement path needs to move column values between C structs
 * and the wire: the OIDs and SQL names of the column types, NULL and
 * "unset" tests, binary parameters (one value, or one array of n objects'
 * values for unnest() inserts), decoding of binary result values into
 * fields, and value equality for change detection.
 *
 * Owns nothing. Strings and byte arrays loaded into fields come from the
 * caller's allocator (malloc when none) and belong to whoever owns the
 * object; a load overwrites a field, it never frees what was there.
 *
 * Traps:
 *  - Fields are read and written with memcpy through the column's declared
 *    C type, never through a cast pointer, so a model declared by hand with
 *    an odd offset cannot trigger a misaligned access. aorm_model_validate()
 *    checks that each column's size is its type's C size; the codecs assert
 *    it.
 *  - Every aorm_opt_* struct starts with `bool valid`, followed by the value;
 *    a zeroed one is NULL.
 *  - Binary array elements are written here rather than with the
 *    aorm_params_*_array helpers, which only exist for a few element types;
 *    numeric elements reuse the builder's numeric encoder through a scratch
 *    builder, so the decimal parsing exists once. */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aorm/error.h"
#include "aorm/sql.h"
#include "mapping/mapping.h"
#include "mapping/mapping_int.h"

/* =========================================================================
 * Column types
 * ========================================================================= */

typedef struct type_info {
    const char *name;       /* the enum's spelling, for messages */
    uint32_t oid;           /* PostgreSQL type OID */
    uint32_t array_oid;     /* OID of its one-dimensional array type */
    const char *sql;        /* SQL type name (as format_type() prints it) */
    const char *serial_sql; /* serial pseudo-type, or NULL */
    size_t size;            /* sizeof the non-nullable C field */
    size_t opt_size;        /* sizeof the nullable C field */
} type_info;

static const type_info types[] = {
    [AORM_BOOL] = {"AORM_BOOL", AORM_T_BOOL, 1000, "boolean", NULL, sizeof(bool), sizeof(aorm_opt_bool)},
    [AORM_INT2] = {"AORM_INT2", AORM_T_INT2, AORM_T_INT2_ARRAY, "smallint", "smallserial", sizeof(int16_t),
                   sizeof(aorm_opt_int16)},
    [AORM_INT4] = {"AORM_INT4", AORM_T_INT4, AORM_T_INT4_ARRAY, "integer", "serial", sizeof(int32_t),
                   sizeof(aorm_opt_int32)},
    [AORM_INT8] = {"AORM_INT8", AORM_T_INT8, AORM_T_INT8_ARRAY, "bigint", "bigserial", sizeof(int64_t),
                   sizeof(aorm_opt_int64)},
    [AORM_FLOAT4] = {"AORM_FLOAT4", AORM_T_FLOAT4, 1021, "real", NULL, sizeof(float), sizeof(aorm_opt_float)},
    [AORM_FLOAT8] = {"AORM_FLOAT8", AORM_T_FLOAT8, 1022, "double precision", NULL, sizeof(double),
                     sizeof(aorm_opt_double)},
    [AORM_NUMERIC] = {"AORM_NUMERIC", AORM_T_NUMERIC, 1231, "numeric", NULL, sizeof(char *), sizeof(char *)},
    [AORM_TEXT] = {"AORM_TEXT", AORM_T_TEXT, AORM_T_TEXT_ARRAY, "text", NULL, sizeof(char *), sizeof(char *)},
    [AORM_BYTEA] = {"AORM_BYTEA", AORM_T_BYTEA, 1001, "bytea", NULL, sizeof(aorm_bytes), sizeof(aorm_bytes)},
    [AORM_DATE] = {"AORM_DATE", AORM_T_DATE, 1182, "date", NULL, sizeof(int32_t), sizeof(aorm_opt_int32)},
    [AORM_TIMESTAMP] = {"AORM_TIMESTAMP", AORM_T_TIMESTAMP, 1115, "timestamp without time zone", NULL,
                        sizeof(int64_t), sizeof(aorm_opt_int64)},
    [AORM_TIMESTAMPTZ] = {"AORM_TIMESTAMPTZ", AORM_T_TIMESTAMPTZ, 1185, "timestamp with time zone", NULL,
                          sizeof(int64_t), sizeof(aorm_opt_int64)},
    [AORM_UUID] = {"AORM_UUID", AORM_T_UUID, AORM_T_UUID_ARRAY, "uuid", NULL, sizeof(aorm_uuid),
                   sizeof(aorm_opt_uuid)},
    [AORM_JSON] = {"AORM_JSON", AORM_T_JSON, 199, "json", NULL, sizeof(char *), sizeof(char *)},
    [AORM_JSONB] = {"AORM_JSONB", AORM_T_JSONB, 3807, "jsonb", NULL, sizeof(char *), sizeof(char *)},
    [AORM_INTERVAL] = {"AORM_INTERVAL", AORM_T_INTERVAL, 1187, "interval", NULL, sizeof(aorm_interval),
                       sizeof(aorm_opt_interval)},
    [AORM_INET] = {"AORM_INET", AORM_T_INET, 1041, "inet", NULL, sizeof(aorm_inet), sizeof(aorm_opt_inet)},
    [AORM_CIDR] = {"AORM_CIDR", AORM_T_CIDR, 651, "cidr", NULL, sizeof(aorm_inet), sizeof(aorm_opt_inet)},
    /* the OID of an enum type is the server's: parameters go untyped (0) */
    [AORM_ENUM] = {"AORM_ENUM", 0, 0, NULL, NULL, sizeof(int32_t), sizeof(aorm_opt_int32)},
    [AORM_BOOL_ARRAY] = {"AORM_BOOL_ARRAY", AORM_T_BOOL_ARRAY, 0, "boolean[]", NULL, sizeof(aorm_array_bool),
                         sizeof(aorm_array_bool)},
    [AORM_INT2_ARRAY] = {"AORM_INT2_ARRAY", AORM_T_INT2_ARRAY, 0, "smallint[]", NULL, sizeof(aorm_array_int16),
                         sizeof(aorm_array_int16)},
    [AORM_INT4_ARRAY] = {"AORM_INT4_ARRAY", AORM_T_INT4_ARRAY, 0, "integer[]", NULL, sizeof(aorm_array_int32),
                         sizeof(aorm_array_int32)},
    [AORM_INT8_ARRAY] = {"AORM_INT8_ARRAY", AORM_T_INT8_ARRAY, 0, "bigint[]", NULL, sizeof(aorm_array_int64),
                         sizeof(aorm_array_int64)},
    [AORM_FLOAT4_ARRAY] = {"AORM_FLOAT4_ARRAY", AORM_T_FLOAT4_ARRAY, 0, "real[]", NULL, sizeof(aorm_array_float),
                           sizeof(aorm_array_float)},
    [AORM_FLOAT8_ARRAY] = {"AORM_FLOAT8_ARRAY", AORM_T_FLOAT8_ARRAY, 0, "double precision[]", NULL,
                           sizeof(aorm_array_double), sizeof(aorm_array_double)},
    [AORM_NUMERIC_ARRAY] = {"AORM_NUMERIC_ARRAY", AORM_T_NUMERIC_ARRAY, 0, "numeric[]", NULL,
                            sizeof(aorm_array_text), sizeof(aorm_array_text)},
    [AORM_TEXT_ARRAY] = {"AORM_TEXT_ARRAY", AORM_T_TEXT_ARRAY, 0, "text[]", NULL, sizeof(aorm_array_text),
                         sizeof(aorm_array_text)},
    [AORM_UUID_ARRAY] = {"AORM_UUID_ARRAY", AORM_T_UUID_ARRAY, 0, "uuid[]", NULL, sizeof(aorm_array_uuid),
                         sizeof(aorm_array_uuid)},
    [AORM_TIMESTAMPTZ_ARRAY] = {"AORM_TIMESTAMPTZ_ARRAY", AORM_T_TIMESTAMPTZ_ARRAY, 0,
                                "timestamp with time zone[]", NULL, sizeof(aorm_array_int64),
                                sizeof(aorm_array_int64)},
};

/* The element type of an array type, 0 for the others. */
aorm_type aorm__type_elem(aorm_type t) {
    switch (t) {
    case AORM_BOOL_ARRAY: return AORM_BOOL;
    case AORM_INT2_ARRAY: return AORM_INT2;
    case AORM_INT4_ARRAY: return AORM_INT4;
    case AORM_INT8_ARRAY: return AORM_INT8;
    case AORM_FLOAT4_ARRAY: return AORM_FLOAT4;
    case AORM_FLOAT8_ARRAY: return AORM_FLOAT8;
    case AORM_NUMERIC_ARRAY: return AORM_NUMERIC;
    case AORM_TEXT_ARRAY: return AORM_TEXT;
    case AORM_UUID_ARRAY: return AORM_UUID;
    case AORM_TIMESTAMPTZ_ARRAY: return AORM_TIMESTAMPTZ;
    default: return 0;
    }
}

/* sizeof one element of an array type's C array. */
static size_t elem_width(aorm_type elem) {
    switch (elem) {
    case AORM_BOOL: return sizeof(bool);
    case AORM_INT2: return 2;
    case AORM_INT4: return 4;
    case AORM_FLOAT4: return sizeof(float);
    case AORM_INT8:
    case AORM_TIMESTAMPTZ: return 8;
    case AORM_FLOAT8: return sizeof(double);
    case AORM_UUID: return sizeof(aorm_uuid);
    default: return sizeof(char *);
    }
}

static bool elem_is_string(aorm_type elem) { return elem == AORM_TEXT || elem == AORM_NUMERIC; }

/* ---- json hooks ---------------------------------------------------------- */

static aorm_json_hooks json_hooks;

void aorm_json_set_hooks(const aorm_json_hooks *hooks) {
    if (hooks) json_hooks = *hooks;
    else memset(&json_hooks, 0, sizeof(json_hooks));
}

int aorm__json_check(bool in, const char *text, size_t len) {
    int (*fn)(void *, const char *, size_t) = in ? json_hooks.parse : json_hooks.serialize;
    if (!fn) return 0;
    int rc = fn(json_hooks.user, text, len);
    return rc < 0 ? rc : rc > 0 ? AORM_EENCODING : 0;
}

static const type_info *info(aorm_type t) {
    if ((int)t < (int)AORM_BOOL || (int)t > (int)AORM_TYPE_LAST) return NULL;
    return &types[t];
}

bool aorm__type_valid(aorm_type t) { return info(t) != NULL; }

const char *aorm__type_name(aorm_type t) {
    const type_info *ti = info(t);
    return ti ? ti->name : "an invalid type";
}

size_t aorm__type_csize(aorm_type t, bool nullable) {
    const type_info *ti = info(t);
    if (!ti) return 0;
    return nullable ? ti->opt_size : ti->size;
}

bool aorm__type_is_integer(aorm_type t) { return t == AORM_INT2 || t == AORM_INT4 || t == AORM_INT8; }

uint32_t aorm__type_oid(aorm_type t) {
    const type_info *ti = info(t);
    return ti ? ti->oid : 0;
}

uint32_t aorm__type_array_oid(aorm_type t) {
    const type_info *ti = info(t);
    return ti ? ti->array_oid : 0;
}

void aorm__oid_describe(uint32_t oid, char *buf, size_t cap) {
    for (int t = AORM_BOOL; t <= AORM_TYPE_LAST; t++) {
        if (!types[t].oid || !types[t].sql) continue;
        if (types[t].oid == oid) {
            snprintf(buf, cap, "%s", types[t].sql);
            return;
        }
        if (types[t].array_oid && types[t].array_oid == oid) {
            snprintf(buf, cap, "%s[]", types[t].sql);
            return;
        }
    }
    static const struct { uint32_t oid; const char *name; } more[] = {
        {AORM_T_VARCHAR, "character varying"}, {AORM_T_BPCHAR, "character"}, {AORM_T_NAME, "name"},
        {AORM_T_OID, "oid"}, {1083, "time"}, {1266, "time with time zone"}, {1186, "interval"},
        {869, "inet"}, {650, "cidr"}, {829, "macaddr"}, {1015, "character varying[]"}, {1187, "interval[]"},
        {1041, "inet[]"}, {651, "cidr[]"}, {2249, "record"}, {705, "unknown"}, {18, "\"char\""},
    };
    for (size_t i = 0; i < sizeof(more) / sizeof(*more); i++) {
        if (more[i].oid == oid) {
            snprintf(buf, cap, "%s", more[i].name);
            return;
        }
    }
    snprintf(buf, cap, "the type of OID %u (an enum, a domain or an extension's type)", (unsigned)oid);
}

const char *aorm__type_sql(aorm_type t, bool serial) {
    const type_info *ti = info(t);
    if (!ti) return NULL;
    return serial && ti->serial_sql ? ti->serial_sql : ti->sql;
}

/* An identifier in double quotes ("" for a quote inside) appended to b. */
static void quote_into(char *buf, size_t cap, size_t *at, const char *id) {
    size_t k = *at;
#define PUTC(ch) do { if (k + 1 < cap) buf[k] = (ch); k++; } while (0)
    PUTC('"');
    for (const char *c = id; *c; c++) {
        if (*c == '"') PUTC('"');
        PUTC(*c);
    }
    PUTC('"');
#undef PUTC
    *at = k;
}

const char *aorm__column_type_sql(const aorm_column *c, bool serial, char *buf, size_t cap) {
    if (!c) return NULL;
    if (c->type != AORM_ENUM) return aorm__type_sql(c->type, serial);
    if (!c->enum_type || !c->enum_type->name || !cap) return NULL;
    size_t at = 0;
    if (c->enum_type->schema) {
        quote_into(buf, cap, &at, c->enum_type->schema);
        if (at + 1 < cap) buf[at] = '.';
        at++;
    }
    quote_into(buf, cap, &at, c->enum_type->name);
    if (at >= cap) return NULL; /* does not fit */
    buf[at] = '\0';
    return buf;
}

/* ---- enums --------------------------------------------------------------- */

int aorm__enum_value_of(const aorm_enum *e, int i) { return e->values ? e->values[i] : i; }

const char *aorm__enum_label(const aorm_enum *e, int32_t value) {
    if (!e || !e->labels) return NULL;
    for (int i = 0; i < e->n; i++)
        if (aorm__enum_value_of(e, i) == value) return e->labels[i];
    return NULL;
}

int aorm__enum_find(const aorm_enum *e, const char *label, size_t len, int32_t *value) {
    if (!e || !e->labels) return AORM_EMISUSE;
    for (int i = 0; i < e->n; i++) {
        const char *l = e->labels[i];
        if (l && strlen(l) == len && memcmp(l, label, len) == 0) {
            *value = aorm__enum_value_of(e, i);
            return 0;
        }
    }
    return AORM_ETYPE;
}

/* =========================================================================
 * Reading and writing fields
 * ========================================================================= */

/* One field's value, whatever its type. */
typedef union scalar {
    bool b;
    int16_t i2;
    int32_t i4;
    int64_t i8;
    float f4;
    double f8;
    aorm_uuid u;
    char *s;
    aorm_bytes by;
    aorm_interval iv;
    aorm_inet in;
    struct { void *v; size_t n; } arr; /* every aorm_array_* has this layout */
} scalar;

static bool nullable(const aorm_column *col) { return (col->flags & AORM_NULLABLE) != 0; }

/* Reads the field of col into *v. Returns false when it holds SQL NULL
 * (then *v is unspecified). */
static bool read_field(const aorm_column *col, const void *obj, scalar *v) {
    const char *f = aorm__cfield(col, obj);
    aorm__assert(col->size == aorm__type_csize(col->type, nullable(col)));
#define READ_SCALAR(OPT, member)                   \
    do {                                           \
        if (nullable(col)) {                       \
            OPT o;                                 \
            memcpy(&o, f, sizeof(o));              \
            if (!o.valid) return false;            \
            v->member = o.value;                   \
            return true;                           \
        }                                          \
        memcpy(&v->member, f, sizeof(v->member));  \
        return true;                               \
    } while (0)
    switch (col->type) {
    case AORM_BOOL: READ_SCALAR(aorm_opt_bool, b);
    case AORM_INT2: READ_SCALAR(aorm_opt_int16, i2);
    case AORM_INT4:
    case AORM_DATE: READ_SCALAR(aorm_opt_int32, i4);
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: READ_SCALAR(aorm_opt_int64, i8);
    case AORM_FLOAT4: READ_SCALAR(aorm_opt_float, f4);
    case AORM_FLOAT8: READ_SCALAR(aorm_opt_double, f8);
    case AORM_UUID: READ_SCALAR(aorm_opt_uuid, u);
    case AORM_NUMERIC:
    case AORM_TEXT:
    case AORM_JSON:
    case AORM_JSONB:
        memcpy(&v->s, f, sizeof(v->s));
        return v->s != NULL;
    case AORM_BYTEA:
        memcpy(&v->by, f, sizeof(v->by));
        return v->by.data != NULL;
    case AORM_INTERVAL: READ_SCALAR(aorm_opt_interval, iv);
    case AORM_INET:
    case AORM_CIDR: READ_SCALAR(aorm_opt_inet, in);
    case AORM_ENUM: READ_SCALAR(aorm_opt_int32, i4);
    case AORM_BOOL_ARRAY:
    case AORM_INT2_ARRAY:
    case AORM_INT4_ARRAY:
    case AORM_INT8_ARRAY:
    case AORM_FLOAT4_ARRAY:
    case AORM_FLOAT8_ARRAY:
    case AORM_NUMERIC_ARRAY:
    case AORM_TEXT_ARRAY:
    case AORM_UUID_ARRAY:
    case AORM_TIMESTAMPTZ_ARRAY:
        memcpy(&v->arr, f, sizeof(v->arr));
        if (!v->arr.v) {
            v->arr.n = 0; /* NOT NULL: the empty array */
            return !nullable(col);
        }
        return true;
    }
#undef READ_SCALAR
    aorm__assert(!"invalid column type");
    return false;
}

/* Stores *v into the field of col, or SQL NULL when v is NULL (a zeroed
 * aorm_opt_*, a NULL pointer, {NULL, 0} bytes; a non-nullable scalar never
 * gets here with NULL). */
static void write_field(const aorm_column *col, void *obj, const scalar *v) {
    char *f = aorm__field(col, obj);
    aorm__assert(col->size == aorm__type_csize(col->type, nullable(col)));
#define WRITE_SCALAR(OPT, member)                  \
    do {                                           \
        if (nullable(col)) {                       \
            OPT o;                                 \
            memset(&o, 0, sizeof(o));              \
            if (v) {                               \
                o.valid = true;                    \
                o.value = v->member;               \
            }                                      \
            memcpy(f, &o, sizeof(o));              \
            return;                                \
        }                                          \
        aorm__assert(v != NULL);                   \
        memcpy(f, &v->member, sizeof(v->member));  \
        return;                                    \
    } while (0)
    switch (col->type) {
    case AORM_BOOL: WRITE_SCALAR(aorm_opt_bool, b);
    case AORM_INT2: WRITE_SCALAR(aorm_opt_int16, i2);
    case AORM_INT4:
    case AORM_DATE: WRITE_SCALAR(aorm_opt_int32, i4);
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: WRITE_SCALAR(aorm_opt_int64, i8);
    case AORM_FLOAT4: WRITE_SCALAR(aorm_opt_float, f4);
    case AORM_FLOAT8: WRITE_SCALAR(aorm_opt_double, f8);
    case AORM_UUID: WRITE_SCALAR(aorm_opt_uuid, u);
    case AORM_NUMERIC:
    case AORM_TEXT:
    case AORM_JSON:
    case AORM_JSONB: {
        char *s = v ? v->s : NULL;
        memcpy(f, &s, sizeof(s));
        return;
    }
    case AORM_BYTEA: {
        aorm_bytes b = {NULL, 0};
        if (v) b = v->by;
        memcpy(f, &b, sizeof(b));
        return;
    }
    case AORM_INTERVAL: WRITE_SCALAR(aorm_opt_interval, iv);
    case AORM_INET:
    case AORM_CIDR: WRITE_SCALAR(aorm_opt_inet, in);
    case AORM_ENUM: WRITE_SCALAR(aorm_opt_int32, i4);
    case AORM_BOOL_ARRAY:
    case AORM_INT2_ARRAY:
    case AORM_INT4_ARRAY:
    case AORM_INT8_ARRAY:
    case AORM_FLOAT4_ARRAY:
    case AORM_FLOAT8_ARRAY:
    case AORM_NUMERIC_ARRAY:
    case AORM_TEXT_ARRAY:
    case AORM_UUID_ARRAY:
    case AORM_TIMESTAMPTZ_ARRAY: {
        struct { void *v; size_t n; } a = {NULL, 0};
        if (v) {
            a.v = v->arr.v;
            a.n = v->arr.n;
        }
        memcpy(f, &a, sizeof(a));
        return;
    }
    }
#undef WRITE_SCALAR
    aorm__assert(!"invalid column type");
}

bool aorm__field_is_null(const aorm_column *col, const void *obj) {
    if (!col || !obj || !info(col->type)) return false;
    scalar v;
    return !read_field(col, obj, &v);
}

bool aorm__field_unset(const aorm_column *col, const void *obj) {
    if (!col || !obj || !info(col->type)) return false;
    if (!(col->flags & (AORM_SERIAL | AORM_IDENTITY)) && !col->server_default) return false;
    scalar v;
    if (!read_field(col, obj, &v)) return true;
    static const aorm_uuid zero_uuid;
    switch (col->type) {
    case AORM_BOOL: return !v.b;
    case AORM_INT2: return v.i2 == 0;
    case AORM_INT4:
    case AORM_DATE: return v.i4 == 0;
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: return v.i8 == 0;
    case AORM_FLOAT4: return v.f4 == 0.0f;
    case AORM_FLOAT8: return v.f8 == 0.0;
    case AORM_UUID: return memcmp(v.u.b, zero_uuid.b, sizeof(v.u.b)) == 0;
    /* A pointer that is not NULL holds a value, even "" or zero bytes. */
    case AORM_NUMERIC:
    case AORM_TEXT:
    case AORM_JSON:
    case AORM_JSONB:
    case AORM_BYTEA: return false;
    case AORM_INTERVAL: return v.iv.usecs == 0 && v.iv.days == 0 && v.iv.months == 0;
    case AORM_INET:
    case AORM_CIDR: return v.in.family == 0;
    case AORM_ENUM: return v.i4 == 0;
    default: return false; /* arrays: a value, even empty */
    }
}

bool aorm__field_equal(const aorm_column *col, const void *a, const void *b) {
    if (!col || !a || !b || !info(col->type)) return false;
    scalar x, y;
    bool xn = !read_field(col, a, &x), yn = !read_field(col, b, &y);
    if (xn || yn) return xn && yn;
    switch (col->type) {
    case AORM_BOOL: return x.b == y.b;
    case AORM_INT2: return x.i2 == y.i2;
    case AORM_INT4:
    case AORM_DATE: return x.i4 == y.i4;
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: return x.i8 == y.i8;
    /* Bit patterns: NaN equals the same NaN, and 0.0 differs from -0.0,
     * which the server stores as different values too. */
    case AORM_FLOAT4: return memcmp(&x.f4, &y.f4, sizeof(x.f4)) == 0;
    case AORM_FLOAT8: return memcmp(&x.f8, &y.f8, sizeof(x.f8)) == 0;
    case AORM_UUID: return memcmp(x.u.b, y.u.b, sizeof(x.u.b)) == 0;
    case AORM_NUMERIC:
    case AORM_TEXT:
    case AORM_JSON:
    case AORM_JSONB: return strcmp(x.s, y.s) == 0;
    case AORM_BYTEA: return x.by.len == y.by.len && (x.by.len == 0 || memcmp(x.by.data, y.by.data, x.by.len) == 0);
    case AORM_INTERVAL: return x.iv.usecs == y.iv.usecs && x.iv.days == y.iv.days && x.iv.months == y.iv.months;
    case AORM_INET:
    case AORM_CIDR:
        return x.in.family == y.in.family && x.in.bits == y.in.bits &&
               memcmp(x.in.addr, y.in.addr, x.in.family == AORM_INET_V4 ? 4 : 16) == 0;
    case AORM_ENUM: return x.i4 == y.i4;
    default: break;
    }
    aorm_type et = aorm__type_elem(col->type);
    if (!et || x.arr.n != y.arr.n) return false;
    if (x.arr.n == 0) return true;
    if (!elem_is_string(et)) /* floats by bit pattern, as the scalars */
        return memcmp(x.arr.v, y.arr.v, x.arr.n * elem_width(et)) == 0;
    char *const *xs = x.arr.v, *const *ys = y.arr.v;
    for (size_t i = 0; i < x.arr.n; i++) {
        if (!xs[i] || !ys[i]) {
            if (xs[i] != ys[i]) return false;
        } else if (strcmp(xs[i], ys[i]) != 0) {
            return false;
        }
    }
    return true;
}

/* The value of an integer field widened to 64 bits (the caller read it). */
static int64_t int_value(aorm_type t, const scalar *v) {
    return t == AORM_INT2 ? v->i2 : t == AORM_INT4 ? v->i4 : v->i8;
}

bool aorm__field_same_value(const aorm_column *a, const void *oa, const aorm_column *b, const void *ob) {
    if (!a || !b || !oa || !ob || !info(a->type) || !info(b->type)) return false;
    scalar x, y;
    if (!read_field(a, oa, &x) || !read_field(b, ob, &y)) return false; /* NULL matches nothing */
    if (aorm__type_is_integer(a->type) && aorm__type_is_integer(b->type))
        return int_value(a->type, &x) == int_value(b->type, &y);
    if (a->type != b->type) return false;
    /* same type, nullability aside: compare as NOT NULL fields holding x, y */
    aorm_column plain = *a;
    plain.flags &= ~(unsigned)AORM_NULLABLE;
    plain.offset = 0;
    plain.size = aorm__type_csize(a->type, false);
    return aorm__field_equal(&plain, &x, &y);
}

void aorm__field_copy_value(const aorm_column *dst, void *to, const aorm_column *src, const void *from) {
    if (!dst || !src || !to || !from || !info(dst->type) || !info(src->type)) return;
    scalar v;
    if (!read_field(src, from, &v)) {
        if (nullable(dst)) write_field(dst, to, NULL);
        else memset(aorm__field(dst, to), 0, dst->size); /* NOT NULL: its zero value */
        return;
    }
    if (aorm__type_is_integer(dst->type) && aorm__type_is_integer(src->type)) {
        int64_t i = int_value(src->type, &v);
        scalar w;
        memset(&w, 0, sizeof(w));
        if (dst->type == AORM_INT2) w.i2 = (int16_t)i;
        else if (dst->type == AORM_INT4) w.i4 = (int32_t)i;
        else w.i8 = i;
        write_field(dst, to, &w);
        return;
    }
    if (dst->type == src->type) write_field(dst, to, &v); /* strings and bytes are shared, not copied */
}

aorm_type aorm__field_array_type(const aorm_column *col) {
    switch (col->type) {
    case AORM_INT2:
    case AORM_INT4: return AORM_INT4;
    case AORM_INT8: return AORM_INT8;
    case AORM_TEXT: return AORM_TEXT;
    case AORM_UUID: return AORM_UUID;
    default: return 0;
    }
}

int aorm__field_gather(const aorm_column *col, const void *const *objs, size_t n, aorm__gathered *g) {
    memset(g, 0, sizeof(*g));
    g->type = aorm__field_array_type(col);
    size_t width = g->type == AORM_INT4 ? 4 : g->type == AORM_INT8 ? 8 : g->type == AORM_UUID ? 16 : sizeof(char *);
    if (!g->type) return AORM_ETYPE;
    g->data = malloc(n * width + 1);
    g->nulls = calloc(n + 1, sizeof(bool));
    if (!g->data || !g->nulls) {
        aorm__gathered_free(g);
        return AORM_ENOMEM;
    }
    g->n = n;
    for (size_t i = 0; i < n; i++) {
        scalar v;
        char *at = (char *)g->data + i * width;
        bool null = !read_field(col, objs[i], &v);
        if (null) {
            g->nulls[i] = true;
            memset(at, 0, width); /* a NULL text element is a NULL pointer */
            continue;
        }
        switch (col->type) {
        case AORM_INT2: {
            int32_t x = v.i2;
            memcpy(at, &x, 4);
            break;
        }
        case AORM_INT4: memcpy(at, &v.i4, 4); break;
        case AORM_INT8: memcpy(at, &v.i8, 8); break;
        case AORM_UUID: memcpy(at, v.u.b, 16); break;
        default: memcpy(at, &v.s, sizeof(char *)); break;
        }
    }
    bool any_null = false;
    for (size_t i = 0; i < n && !any_null; i++) any_null = g->nulls[i];
    if (!any_null) { /* the usual case: no flags to copy into the statement or test per element */
        free(g->nulls);
        g->nulls = NULL;
    }
    return 0;
}

int aorm__where_key_in(aorm_stmt *q, const aorm_model *m, const aorm_column *const *cols,
                       const aorm_column *const *src, int k, void *const *objs, size_t n) {
    if (k < 1 || k > AORM_KEY_MAX) return AORM_EMISUSE;
    aorm__gathered g[AORM_KEY_MAX];
    aorm_expr ce[AORM_KEY_MAX], arr[AORM_KEY_MAX];
    const aorm_expr *list[2 * AORM_KEY_MAX];
    int rc = 0, ng = 0;
    for (; ng < k && rc == 0; ng++) {
        rc = aorm__field_gather(src[ng], (const void *const *)objs, n, &g[ng]);
        ce[ng] = (aorm_expr){.kind = AORM_X_COLUMN, .model = m, .offset = cols[ng]->offset};
        arr[ng] = (aorm_expr){.kind = AORM_X_ARRAY, .type = g[ng].type, .v.p = g[ng].data, .nulls = g[ng].nulls,
                              .len = n};
        list[ng] = &ce[ng];
        list[k + ng] = &arr[ng];
    }
    if (rc == 0 && k == 1) {
        aorm_expr any = {.kind = AORM_X_ANY, .op = AORM_OP_EQ, .a = &ce[0], .b = &arr[0]};
        rc = aorm_where(q, &any); /* copies the array */
    } else if (rc == 0) {
        aorm_expr in = {.kind = AORM_X_TUPLE_IN, .list = list, .n = 2 * k};
        rc = aorm_where(q, &in);
    }
    for (int i = 0; i < ng; i++) aorm__gathered_free(&g[i]);
    return rc;
}

void aorm__gathered_free(aorm__gathered *g) {
    free(g->data);
    free(g->nulls);
    memset(g, 0, sizeof(*g));
}

#define CMP3(a, b) ((a) < (b) ? -1 : (a) > (b) ? 1 : 0)

int aorm__field_compare(const aorm_column *col, const void *a, const void *b) {
    if (!col || !a || !b || !info(col->type)) return 0;
    scalar x, y;
    bool xn = !read_field(col, a, &x), yn = !read_field(col, b, &y);
    if (xn || yn) return xn == yn ? 0 : xn ? -1 : 1; /* NULLs first */
    switch (col->type) {
    case AORM_BOOL: return CMP3(x.b, y.b);
    case AORM_INT2: return CMP3(x.i2, y.i2);
    case AORM_INT4:
    case AORM_DATE: return CMP3(x.i4, y.i4);
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: return CMP3(x.i8, y.i8);
    case AORM_FLOAT4: return CMP3(x.f4, y.f4);
    case AORM_FLOAT8: return CMP3(x.f8, y.f8);
    case AORM_UUID: return memcmp(x.u.b, y.u.b, sizeof(x.u.b));
    case AORM_NUMERIC: {
        double dx = strtod(x.s, NULL), dy = strtod(y.s, NULL);
        return CMP3(dx, dy);
    }
    case AORM_TEXT:
    case AORM_JSON:
    case AORM_JSONB: return strcmp(x.s, y.s);
    case AORM_BYTEA: {
        size_t n = x.by.len < y.by.len ? x.by.len : y.by.len;
        int c = n ? memcmp(x.by.data, y.by.data, n) : 0;
        return c ? c : CMP3(x.by.len, y.by.len);
    }
    case AORM_INTERVAL: { /* as the server orders them: 30-day months, 24-hour days */
        double dx = ((double)x.iv.months * 30 + x.iv.days) * 86400e6 + (double)x.iv.usecs;
        double dy = ((double)y.iv.months * 30 + y.iv.days) * 86400e6 + (double)y.iv.usecs;
        return CMP3(dx, dy);
    }
    case AORM_INET:
    case AORM_CIDR: {
        if (x.in.family != y.in.family) return CMP3(x.in.family, y.in.family);
        int c = memcmp(x.in.addr, y.in.addr, x.in.family == AORM_INET_V4 ? 4 : 16);
        return c ? c : CMP3(x.in.bits, y.in.bits);
    }
    case AORM_ENUM: { /* by position in the type, as the server sorts enums */
        const aorm_enum *e = col->enum_type;
        int px = -1, py = -1;
        for (int i = 0; e && i < e->n; i++) {
            if (aorm__enum_value_of(e, i) == x.i4 && px < 0) px = i;
            if (aorm__enum_value_of(e, i) == y.i4 && py < 0) py = i;
        }
        return CMP3(px, py);
    }
    default: return CMP3(x.arr.n, y.arr.n); /* arrays: by length only */
    }
}

/* =========================================================================
 * Parameters
 * ========================================================================= */

/* Records rc as the builder's sticky error (the first one wins), as the
 * builder's own appends do, for failures met here before any append. */
static int params_fail(aorm_params *p, int rc) {
    if (!p->error) p->error = rc;
    return p->error;
}

static int encode_carray(const aorm_column *col, const scalar *v, aorm_params *p);

int aorm__field_param(const aorm_column *col, const void *obj, aorm_params *p) {
    if (!p) return AORM_EMISUSE;
    if (p->error) return p->error;
    const type_info *ti = col ? info(col->type) : NULL;
    if (!ti || !obj) return params_fail(p, AORM_EMISUSE);
    scalar v;
    if (!read_field(col, obj, &v)) return aorm_params_null(p, ti->oid);
    switch (col->type) {
    case AORM_BOOL: return aorm_params_bool(p, v.b);
    case AORM_INT2: return aorm_params_int2(p, v.i2);
    case AORM_INT4: return aorm_params_int4(p, v.i4);
    case AORM_INT8: return aorm_params_int8(p, v.i8);
    case AORM_FLOAT4: return aorm_params_float4(p, v.f4);
    case AORM_FLOAT8: return aorm_params_float8(p, v.f8);
    case AORM_NUMERIC: return aorm_params_numeric(p, v.s);
    case AORM_TEXT: return aorm_params_text(p, v.s);
    case AORM_BYTEA: return aorm_params_bytea(p, v.by.data, v.by.len);
    case AORM_DATE: return aorm_params_date(p, v.i4);
    case AORM_TIMESTAMP: return aorm_params_timestamp(p, v.i8);
    case AORM_TIMESTAMPTZ: return aorm_params_timestamptz(p, v.i8);
    case AORM_UUID: return aorm_params_uuid(p, v.u.b);
    case AORM_JSON:
    case AORM_JSONB: {
        size_t n = strlen(v.s);
        int rc = aorm__json_check(false, v.s, n);
        if (rc) return params_fail(p, rc);
        return col->type == AORM_JSON ? aorm_params_json(p, v.s, n) : aorm_params_jsonb(p, v.s, n);
    }
    case AORM_INTERVAL: return aorm_params_interval(p, &v.iv);
    case AORM_INET: return aorm_params_inet(p, &v.in);
    case AORM_CIDR: return aorm_params_cidr(p, &v.in);
    case AORM_ENUM: {
        /* the label as text of unspecified type: the server takes the
         * column's (or the comparison's) enum type */
        const char *label = aorm__enum_label(col->enum_type, v.i4);
        if (!label) return params_fail(p, AORM_EENCODING);
        return aorm_params_raw(p, 0, label, strlen(label), 0);
    }
    default: break;
    }
    return encode_carray(col, &v, p);
}

/* ---- binary arrays ---------------------------------------------------------
 * int32 ndim (1, or 0 for an empty array), int32 has-null flag, uint32
 * element OID, then for the one dimension int32 length and int32 lower
 * bound (1), then per element int32 length (-1 for NULL) and its bytes. */

static int put32(aorm__buf *b, uint32_t v) {
    char w[4];
    aorm__put_be32(w, v);
    return aorm__buf_append(b, w, sizeof(w)) < 0 ? AORM_ENOMEM : 0;
}

static int put64(aorm__buf *b, uint64_t v) {
    char w[8];
    aorm__put_be64(w, v);
    return aorm__buf_append(b, w, sizeof(w)) < 0 ? AORM_ENOMEM : 0;
}

/* One element of `len` bytes (plus an optional leading version byte). */
static int put_elem(aorm__buf *b, const void *data, size_t len, bool jsonb_version) {
    size_t total = len + (jsonb_version ? 1 : 0);
    if (len > (size_t)INT32_MAX - 1) return AORM_ERANGE;
    int rc = put32(b, (uint32_t)total);
    if (rc) return rc;
    if (jsonb_version && aorm__buf_putc(b, 1) < 0) return AORM_ENOMEM;
    if (len && aorm__buf_append(b, data, len) < 0) return AORM_ENOMEM;
    return 0;
}

/* A numeric element: the decimal string is encoded by the builder's own
 * numeric encoder into `scratch` (one value), whose bytes are copied. The
 * builder's storage is read directly, since it exposes no accessor for a
 * value's bytes outside the engine. */
static int put_numeric_elem(aorm__buf *b, aorm_params *scratch, const char *decimal) {
    aorm_params_reset(scratch);
    int rc = aorm_params_numeric(scratch, decimal);
    if (rc) return rc;
    aorm__assert(scratch->count == 1 && scratch->slots[0].len >= 0);
    const aorm_param_slot *s = &scratch->slots[0];
    return put_elem(b, scratch->data + s->offset, (size_t)s->len, false);
}

static int put_value_elem(aorm__buf *b, const aorm_column *col, const scalar *v, aorm_params *scratch) {
    int rc;
    switch (col->type) {
    case AORM_BOOL:
        if ((rc = put32(b, 1))) return rc;
        return aorm__buf_putc(b, v->b ? 1 : 0) < 0 ? AORM_ENOMEM : 0;
    case AORM_INT2: {
        char w[2];
        aorm__put_be16(w, (uint16_t)v->i2);
        if ((rc = put32(b, 2))) return rc;
        return aorm__buf_append(b, w, 2) < 0 ? AORM_ENOMEM : 0;
    }
    case AORM_INT4:
    case AORM_DATE:
        if ((rc = put32(b, 4))) return rc;
        return put32(b, (uint32_t)v->i4);
    case AORM_INT8:
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ:
        if ((rc = put32(b, 8))) return rc;
        return put64(b, (uint64_t)v->i8);
    case AORM_FLOAT4: {
        uint32_t bits;
        memcpy(&bits, &v->f4, sizeof(bits));
        if ((rc = put32(b, 4))) return rc;
        return put32(b, bits);
    }
    case AORM_FLOAT8: {
        uint64_t bits;
        memcpy(&bits, &v->f8, sizeof(bits));
        if ((rc = put32(b, 8))) return rc;
        return put64(b, bits);
    }
    case AORM_UUID: return put_elem(b, v->u.b, sizeof(v->u.b), false);
    case AORM_NUMERIC: return put_numeric_elem(b, scratch, v->s);
    case AORM_TEXT: return put_elem(b, v->s, strlen(v->s), false);
    case AORM_JSON:
    case AORM_JSONB: {
        size_t n = strlen(v->s);
        if ((rc = aorm__json_check(false, v->s, n))) return rc;
        return put_elem(b, v->s, n, col->type == AORM_JSONB);
    }
    case AORM_BYTEA: return put_elem(b, v->by.data, v->by.len, false);
    default: return AORM_ETYPE; /* no unnest() form: see aorm__type_unnest_ok */
    }
}

bool aorm__type_unnest_ok(aorm_type t) { return (int)t >= (int)AORM_BOOL && (int)t <= (int)AORM_JSONB; }

/* One array column value, binary: the element column is the array's
 * element type at offset 0 of each element, so put_value_elem encodes it. */
static int encode_carray(const aorm_column *col, const scalar *v, aorm_params *p) {
    aorm_type et = aorm__type_elem(col->type);
    if (!et) return params_fail(p, AORM_EMISUSE);
    size_t n = v->arr.n, w = elem_width(et);
    if (n > (size_t)INT32_MAX / 32) return params_fail(p, AORM_ERANGE);
    if (n && !v->arr.v) return params_fail(p, AORM_EMISUSE);
    aorm_column ec = {.name = col->name, .type = et, .size = aorm__type_csize(et, false)};
    aorm__buf b = {0};
    int rc;
    bool has_null = false;
    aorm_params scratch;
    aorm_params_init(&scratch);
    if ((rc = put32(&b, n ? 1 : 0)) || (rc = put32(&b, 0)) || (rc = put32(&b, aorm__type_oid(et)))) goto out;
    if (n && ((rc = put32(&b, (uint32_t)n)) || (rc = put32(&b, 1)))) goto out;
    for (size_t i = 0; i < n && rc == 0; i++) {
        scalar e;
        memset(&e, 0, sizeof(e));
        memcpy(&e, (const char *)v->arr.v + i * w, w);
        if (elem_is_string(et) && !e.s) {
            has_null = true;
            rc = put32(&b, UINT32_MAX);
            continue;
        }
        rc = put_value_elem(&b, &ec, &e, &scratch);
    }
    if (rc == 0 && has_null) aorm__put_be32(b.data + 4, 1);
    if (rc == 0) rc = aorm_params_raw(p, aorm__type_oid(col->type), b.data, b.len, 1);
    else params_fail(p, rc);
out:
    if (rc && !p->error) params_fail(p, rc);
    aorm_params_free(&scratch);
    aorm__buf_free(&b);
    return rc;
}

static int encode_array(const aorm_column *col, const type_info *ti, const void *const *objs, size_t n,
                        aorm__buf *b) {
    if (n > (size_t)INT32_MAX) return AORM_ERANGE;
    /* Fixed-width elements take at most 4 + 16 bytes each: reserving up
     * front saves the doublings for the common integer key arrays. */
    if (n <= ((size_t)INT32_MAX - 20) / 20 && aorm__buf_reserve(b, 20 + n * 12) < 0) return AORM_ENOMEM;
    int rc;
    if ((rc = put32(b, n ? 1 : 0)) || (rc = put32(b, 0)) || (rc = put32(b, ti->oid))) return rc;
    if (n && ((rc = put32(b, (uint32_t)n)) || (rc = put32(b, 1)))) return rc;
    bool has_null = false;
    aorm_params scratch;
    aorm_params_init(&scratch);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (!objs[i]) {
            rc = AORM_EMISUSE;
            break;
        }
        scalar v;
        if (!read_field(col, objs[i], &v)) {
            has_null = true;
            rc = put32(b, UINT32_MAX); /* -1: NULL */
            continue;
        }
        rc = put_value_elem(b, col, &v, &scratch);
    }
    aorm_params_free(&scratch);
    if (rc) return rc;
    if (has_null) aorm__put_be32(b->data + 4, 1);
    return 0;
}

int aorm__field_param_array(const aorm_column *col, const void *const *objs, size_t n, aorm_params *p) {
    if (!p) return AORM_EMISUSE;
    if (p->error) return p->error;
    const type_info *ti = col ? info(col->type) : NULL;
    if (!ti || (!objs && n)) return params_fail(p, AORM_EMISUSE);
    if (!aorm__type_unnest_ok(col->type)) return params_fail(p, AORM_ETYPE);
    aorm__buf b = {0};
    int rc = encode_array(col, ti, objs, n, &b);
    if (rc == 0) rc = aorm_params_raw(p, ti->array_oid, b.data, b.len, 1);
    else params_fail(p, rc);
    aorm__buf_free(&b);
    return rc;
}

/* =========================================================================
 * Loading result values
 * ========================================================================= */

static void *alloc_bytes(const aorm_allocator *a, size_t n) {
    return a && a->alloc ? a->alloc(a->ctx, n) : malloc(n);
}

/* A NUL-terminated copy of len bytes; a text value holding a NUL byte
 * cannot be a C string and did not come from a well-behaved server. */
static int copy_string(const aorm_allocator *a, const char *val, size_t len, char **out) {
    if (len && memchr(val, '\0', len)) return AORM_EPROTOCOL;
    if (len == SIZE_MAX) return AORM_ERANGE;
    char *s = alloc_bytes(a, len + 1);
    if (!s) return AORM_ENOMEM;
    if (len) memcpy(s, val, len);
    s[len] = '\0';
    *out = s;
    return 0;
}

/* Accepted source types per field type: lossless conversions only. */
static bool accepts(aorm_type t, uint32_t oid) {
    switch (t) {
    case AORM_BOOL: return oid == AORM_T_BOOL;
    case AORM_INT2: return oid == AORM_T_INT2;
    case AORM_INT4: return oid == AORM_T_INT2 || oid == AORM_T_INT4;
    case AORM_INT8: return oid == AORM_T_INT2 || oid == AORM_T_INT4 || oid == AORM_T_INT8 || oid == AORM_T_OID;
    /* every int2 is exact in a float's 24-bit mantissa, every int4 in a
     * double's 53 bits */
    case AORM_FLOAT4: return oid == AORM_T_FLOAT4 || oid == AORM_T_INT2;
    case AORM_FLOAT8:
        return oid == AORM_T_FLOAT8 || oid == AORM_T_FLOAT4 || oid == AORM_T_INT2 || oid == AORM_T_INT4;
    case AORM_NUMERIC:
        return oid == AORM_T_NUMERIC || oid == AORM_T_INT2 || oid == AORM_T_INT4 || oid == AORM_T_INT8;
    case AORM_TEXT:
        return oid == AORM_T_TEXT || oid == AORM_T_VARCHAR || oid == AORM_T_BPCHAR || oid == AORM_T_NAME ||
               oid == AORM_T_UNKNOWN;
    case AORM_JSON:
    case AORM_JSONB: return oid == AORM_T_JSON || oid == AORM_T_JSONB;
    case AORM_BYTEA: return oid == AORM_T_BYTEA;
    case AORM_DATE: return oid == AORM_T_DATE;
    /* both are microseconds since 2000-01-01 on the wire */
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ: return oid == AORM_T_TIMESTAMP || oid == AORM_T_TIMESTAMPTZ;
    case AORM_UUID: return oid == AORM_T_UUID;
    case AORM_INTERVAL: return oid == AORM_T_INTERVAL;
    /* a cidr is a valid inet; an inet into a cidr field keeps its host bits,
     * which the cidr codec refuses when sent back: so not accepted */
    case AORM_INET: return oid == AORM_T_INET || oid == AORM_T_CIDR;
    case AORM_CIDR: return oid == AORM_T_CIDR;
    /* user-defined types have OIDs from 16384 (FirstNormalObjectId); the
     * label is checked against the descriptor */
    case AORM_ENUM: return oid >= 16384 || oid == AORM_T_TEXT || oid == AORM_T_VARCHAR || oid == AORM_T_UNKNOWN;
    default: break;
    }
    return info(t) && info(t)->oid == oid; /* arrays: exactly their type */
}

/* numeric field from a binary numeric or integer value. */
static int load_numeric(const aorm_allocator *a, uint32_t oid, const char *val, int len, char **out) {
    if (oid != AORM_T_NUMERIC) {
        int64_t x;
        int rc = aorm_decode_int(oid, val, len, &x);
        if (rc) return rc;
        char tmp[24];
        int n = snprintf(tmp, sizeof(tmp), "%" PRId64, x);
        return copy_string(a, tmp, (size_t)n, out);
    }
    size_t need = 0;
    int rc = aorm_decode_numeric(val, len, NULL, 0, &need);
    if (rc != AORM_ERANGE) return rc < 0 ? rc : AORM_EPROTOCOL;
    char *s = alloc_bytes(a, need + 1);
    if (!s) return AORM_ENOMEM;
    rc = aorm_decode_numeric(val, len, s, need + 1, NULL);
    /* Cannot fail: the value was validated and measured above. With the
     * malloc allocator the buffer would leak otherwise, so say so. */
    aorm__assert(rc == (int)need);
    if (rc < 0) {
        if (!a || !a->alloc) free(s);
        return rc;
    }
    *out = s;
    return 0;
}

static int load_carray(const aorm_column *col, uint32_t oid, const char *val, int len, const aorm_allocator *alloc,
                       scalar *out);

int aorm__field_load(const aorm_column *col, void *obj, uint32_t oid, const char *val, int len,
                     const aorm_allocator *alloc) {
    if (!col || !obj || (!val && len > 0) || !info(col->type)) return AORM_EMISUSE;
    if (len < 0) {
        /* Text-like fields are pointers in both forms; only a NULLABLE
         * column may receive NULL. */
        if (!nullable(col)) return AORM_ENULLVALUE;
        write_field(col, obj, NULL);
        return 0;
    }
    if (!accepts(col->type, oid)) return AORM_ETYPE;
    scalar v;
    memset(&v, 0, sizeof(v));
    int64_t x;
    int rc = 0;
    switch (col->type) {
    case AORM_BOOL:
        if (len != 1) return AORM_EPROTOCOL;
        v.b = val[0] != 0;
        break;
    case AORM_INT2:
        if ((rc = aorm_decode_int(oid, val, len, &x))) return rc;
        v.i2 = (int16_t)x;
        break;
    case AORM_INT4:
        if ((rc = aorm_decode_int(oid, val, len, &x))) return rc;
        v.i4 = (int32_t)x;
        break;
    case AORM_INT8:
        if ((rc = aorm_decode_int(oid, val, len, &x))) return rc;
        v.i8 = x;
        break;
    case AORM_FLOAT4:
        if (oid == AORM_T_INT2) {
            if ((rc = aorm_decode_int(oid, val, len, &x))) return rc;
            v.f4 = (float)x;
        } else {
            if (len != 4) return AORM_EPROTOCOL;
            uint32_t bits = aorm__get_be32(val);
            memcpy(&v.f4, &bits, sizeof(bits));
        }
        break;
    case AORM_FLOAT8:
        if (oid == AORM_T_INT2 || oid == AORM_T_INT4) {
            if ((rc = aorm_decode_int(oid, val, len, &x))) return rc;
            v.f8 = (double)x;
        } else if ((rc = aorm_decode_float8(oid, val, len, &v.f8))) {
            return rc;
        }
        break;
    case AORM_NUMERIC:
        if ((rc = load_numeric(alloc, oid, val, len, &v.s))) return rc;
        break;
    case AORM_TEXT:
        if ((rc = copy_string(alloc, val, (size_t)len, &v.s))) return rc;
        break;
    case AORM_JSON:
    case AORM_JSONB:
        if (oid == AORM_T_JSONB) {
            /* binary jsonb: version byte 1, then the text */
            if (len < 1 || val[0] != 1) return AORM_EPROTOCOL;
            val++;
            len--;
        }
        if ((rc = aorm__json_check(true, val, (size_t)len))) return rc;
        if ((rc = copy_string(alloc, val, (size_t)len, &v.s))) return rc;
        break;
    case AORM_BYTEA:
        /* data == NULL means SQL NULL, so even an empty value gets a
         * buffer */
        v.by.data = alloc_bytes(alloc, len ? (size_t)len : 1);
        if (!v.by.data) return AORM_ENOMEM;
        if (len) memcpy(v.by.data, val, (size_t)len);
        v.by.len = (size_t)len;
        break;
    case AORM_DATE:
        if (len != 4) return AORM_EPROTOCOL;
        v.i4 = (int32_t)aorm__get_be32(val);
        break;
    case AORM_TIMESTAMP:
    case AORM_TIMESTAMPTZ:
        if (len != 8) return AORM_EPROTOCOL;
        v.i8 = (int64_t)aorm__get_be64(val);
        break;
    case AORM_UUID:
        if (len != 16) return AORM_EPROTOCOL;
        memcpy(v.u.b, val, 16);
        break;
    case AORM_INTERVAL:
        if ((rc = aorm_decode_interval(val, len, &v.iv))) return rc;
        break;
    case AORM_INET:
    case AORM_CIDR:
        if ((rc = aorm_decode_inet(val, len, &v.in))) return rc;
        break;
    case AORM_ENUM:
        if (!col->enum_type) return AORM_EMISUSE;
        if ((rc = aorm__enum_find(col->enum_type, val, (size_t)len, &v.i4))) return rc;
        break;
    default:
        if ((rc = load_carray(col, oid, val, len, alloc, &v))) return rc;
        break;
    }
    write_field(col, obj, &v);
    return 0;
}

/* The array column value at val into memory from alloc: the elements,
 * then (text, numeric) the strings they point to, in one block. */
static int load_carray(const aorm_column *col, uint32_t oid, const char *val, int len, const aorm_allocator *alloc,
                       scalar *out) {
    (void)oid;
    aorm_type et = aorm__type_elem(col->type);
    if (!et) return AORM_EMISUSE;
    aorm_array a;
    int rc = aorm_decode_array(val, len, aorm__type_oid(et), &a);
    if (rc) return rc;
    size_t n = (size_t)a.count, w = elem_width(et), strbytes = 0;
    /* first pass: validate and measure the strings */
    const char *e;
    int el;
    aorm_array walk = a;
    walk.cursor = NULL;
    if (elem_is_string(et)) {
        while ((rc = aorm_array_next(&walk, &e, &el)) == 1) {
            if (el < 0) continue;
            if (et == AORM_TEXT) {
                if (memchr(e, '\0', (size_t)el)) return AORM_EPROTOCOL;
                strbytes += (size_t)el + 1;
            } else {
                size_t need = 0;
                rc = aorm_decode_numeric(e, el, NULL, 0, &need);
                if (rc != AORM_ERANGE) return rc < 0 ? rc : AORM_EPROTOCOL;
                strbytes += need + 1;
            }
        }
        if (rc < 0) return rc;
    }
    size_t total = n * w + strbytes;
    char *block = alloc_bytes(alloc, total ? total : 1);
    if (!block) return AORM_ENOMEM;
    char *str = block + n * w;
    aorm_column ec = {.name = col->name, .type = et, .size = aorm__type_csize(et, false)};
    walk = a;
    walk.cursor = NULL;
    size_t i = 0;
    while (rc >= 0 && (rc = aorm_array_next(&walk, &e, &el)) == 1) {
        char *at = block + i * w;
        i++;
        if (el < 0) {
            if (!elem_is_string(et)) {
                rc = AORM_ENULLVALUE;
                break;
            }
            memset(at, 0, w);
            continue;
        }
        if (et == AORM_TEXT) {
            memcpy(str, e, (size_t)el);
            str[el] = '\0';
            memcpy(at, &str, sizeof(str));
            str += el + 1;
        } else if (et == AORM_NUMERIC) {
            size_t need = 0;
            aorm_decode_numeric(e, el, NULL, 0, &need);
            int k = aorm_decode_numeric(e, el, str, need + 1, NULL);
            if (k < 0) {
                rc = k;
                break;
            }
            memcpy(at, &str, sizeof(str));
            str += need + 1;
        } else {
            scalar one;
            memset(&one, 0, sizeof(one));
            int k = aorm__field_load(&ec, &one, aorm__type_oid(et), e, el, NULL);
            if (k < 0) {
                rc = k;
                break;
            }
            memcpy(at, &one, w);
        }
    }
    if (rc < 0) {
        if (!alloc || !alloc->alloc) free(block);
        return rc;
    }
    out->arr.v = block;
    out->arr.n = n;
    return 0;
}

int aorm__field_own_array(const aorm_column *col, void *obj, const aorm_allocator *alloc) {
    aorm_type et = aorm__type_elem(col->type);
    if (!et) return 0;
    scalar v;
    if (!read_field(col, obj, &v) || !v.arr.v) return 0;
    size_t n = v.arr.n, w = elem_width(et), strbytes = 0;
    char *const *ss = v.arr.v;
    if (elem_is_string(et))
        for (size_t i = 0; i < n; i++)
            if (ss[i]) strbytes += strlen(ss[i]) + 1;
    char *block = alloc_bytes(alloc, n * w + strbytes + 1);
    if (!block) return AORM_ENOMEM;
    if (n) memcpy(block, v.arr.v, n * w);
    if (elem_is_string(et)) {
        char *str = block + n * w;
        for (size_t i = 0; i < n; i++) {
            if (!ss[i]) continue;
            size_t l = strlen(ss[i]);
            memcpy(str, ss[i], l + 1);
            memcpy(block + i * w, &str, sizeof(str));
            str += l + 1;
        }
    }
    v.arr.v = block;
    write_field(col, obj, &v);
    return 0;
}

int aorm__value_param(aorm_type t, const aorm_enum *enum_type, const void *cval, aorm_params *p) {
    if (!info(t) || !cval) return params_fail(p, AORM_EMISUSE);
    aorm_column c = {.name = "value", .type = t, .size = aorm__type_csize(t, false), .enum_type = enum_type};
    return aorm__field_param(&c, cval, p);
}

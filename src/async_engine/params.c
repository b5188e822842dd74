/* params.c -- the aorm_params builder: statement parameters encoded in
 * PostgreSQL's binary wire format, plus the date/timestamp helpers.
 *
 * Ownership: the builder owns its slot array and its data bytes. Both start
 * in the struct's inline room and spill to the heap (doubling) when they
 * outgrow it; aorm_params_free() releases the heap parts and
 * aorm__params_value() (result_int.h) is how the engine reads a value back.
 * Slots record offsets into `data`, never pointers, because every spill or
 * realloc moves the bytes.
 *
 * Errors are sticky: the first failure (out of memory, a malformed numeric
 * or uuid string, an embedded NUL, a size that does not fit -- more values
 * than a Bind message can count, or more bytes than the server accepts in
 * one, PARAMS_MAX_BYTES below --, a bad argument)
 * is kept in p->error, later appends return it without doing anything, and
 * the engine refuses the whole builder at submission. That is why a failed
 * append must leave the builder exactly as it was: no half-written slot.
 *
 * Pointer arguments: C-string encoders (text, numeric, uuid_str) and uuid
 * treat a NULL pointer as SQL NULL, as aorm_params_raw() does. Encoders that
 * take a length (text_n, bytea, json, jsonb, the arrays) treat (NULL, 0) as
 * an empty value, the usual shape of an empty buffer in C, and (NULL, n > 0)
 * as AORM_EMISUSE.
 *
 * This module must not talk to the server or to libpq: it only lays out
 * bytes, so it can be unit-tested and reused by every statement path. */
#include <ctype.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "aorm/error.h"
#include "aorm/result.h"
#include "async_engine/numeric_int.h"
#include "async_engine/result_int.h"
#include "util/util.h"

/* The Bind message counts parameters in an Int16: more cannot be sent. */
#define PARAMS_MAX_COUNT 65535
/* The server refuses a Bind message of 1 GiB or more (PQ_LARGE_MESSAGE_LIMIT
 * is MaxAllocSize - 1), after the client has sent all of it: the values of
 * one statement are bounded a mebibyte short of that (room for the
 * message's length words, format codes and names), so such a statement
 * fails at once, before anything is copied. Large data goes through COPY,
 * which streams it in bounded chunks. */
#define PARAMS_MAX_BYTES (((size_t)1 << 30) - ((size_t)1 << 20))


/* Julian day number of 2000-01-01, PostgreSQL's date epoch. */
#define POSTGRES_EPOCH_JDATE 2451545
/* Microseconds between 1970-01-01 and 2000-01-01. */
#define UNIX_TO_PG_US INT64_C(946684800000000)

/* =========================================================================
 * Dates and timestamps
 * ========================================================================= */

/* date2j from PostgreSQL's datetime.c, in 64-bit arithmetic so that any int
 * input stays free of overflow. Years use astronomical numbering: year 0 is
 * 1 BC, year -1 is 2 BC (the same convention the server uses internally).
 * The original divides with C's truncation and so is only right from 4800
 * BC on; earlier years are first moved forward by whole 400-year Gregorian
 * cycles, whose length in days is fixed, and the days taken back after. */
int32_t aorm_date_from_ymd(int year, int month, int day) {
    int64_t cycles = 0;
    if (year < -4000) cycles = ((int64_t)-4000 - year) / 400 + 1;
    int64_t y = year + cycles * 400, m = month;
    if (m > 2) {
        m += 1;
        y += 4800;
    } else {
        m += 13;
        y += 4799;
    }
    int64_t century = y / 100;
    int64_t julian = y * 365 - 32167;
    julian += y / 4 - century + century / 4;
    julian += 7834 * m / 256 + day;
    int64_t date = julian - POSTGRES_EPOCH_JDATE - cycles * 146097;
    /* A date that does not fit is clamped to the nearest finite int32, so
     * the server reports "date out of range" instead of the value quietly
     * turning into ±infinity. */
    if (date >= AORM_DATE_INFINITY) return AORM_DATE_INFINITY - 1;
    if (date <= AORM_DATE_NEG_INFINITY) return AORM_DATE_NEG_INFINITY + 1;
    return (int32_t)date;
}

/* j2date from PostgreSQL's datetime.c. The original works on unsigned
 * Julian days, i.e. dates from 4714 BC on; earlier dates are first moved
 * forward by whole 400-year Gregorian cycles (146097 days each) and the
 * years taken back afterwards. ±infinity yield year INT_MAX-12-31 and
 * INT_MIN-01-01, which no finite date reaches. */
void aorm_date_to_ymd(int32_t date, int *year, int *month, int *day) {
    int y_out, m_out, d_out;
    if (date == AORM_DATE_INFINITY) {
        y_out = INT_MAX;
        m_out = 12;
        d_out = 31;
    } else if (date == AORM_DATE_NEG_INFINITY) {
        y_out = INT_MIN;
        m_out = 1;
        d_out = 1;
    } else {
        int64_t jd = (int64_t)date + POSTGRES_EPOCH_JDATE;
        int64_t cycles = 0;
        if (jd < 0) {
            cycles = -jd / 146097 + 1;
            jd += cycles * 146097;
        }
        uint64_t julian = (uint64_t)jd, quad, extra;
        int64_t y;
        julian += 32044;
        quad = julian / 146097;
        extra = (julian - quad * 146097) * 4 + 3;
        julian += 60 + quad * 3 + extra / 146097;
        quad = julian / 1461;
        julian -= quad * 1461;
        y = (int64_t)(julian * 4 / 1461);
        julian = ((y != 0) ? ((julian + 305) % 365) : ((julian + 306) % 366)) + 123;
        y += (int64_t)quad * 4;
        y_out = (int)(y - 4800 - cycles * 400);
        quad = julian * 2141 / 65536;
        d_out = (int)(julian - 7834 * quad / 256);
        m_out = (int)((quad + 10) % 12 + 1);
    }
    if (year) *year = y_out;
    if (month) *month = m_out;
    if (day) *day = d_out;
}

/* Infinity passes through unchanged. A finite value whose shift would
 * overflow saturates one step short of infinity, so the server rejects it
 * as out of range rather than reading it as ±infinity. */
int64_t aorm_timestamp_from_unix_us(int64_t unix_us) {
    if (unix_us == AORM_TIMESTAMP_INFINITY || unix_us == AORM_TIMESTAMP_NEG_INFINITY) return unix_us;
    if (unix_us <= AORM_TIMESTAMP_NEG_INFINITY + UNIX_TO_PG_US) return AORM_TIMESTAMP_NEG_INFINITY + 1;
    return unix_us - UNIX_TO_PG_US;
}

int64_t aorm_timestamp_to_unix_us(int64_t ts) {
    if (ts == AORM_TIMESTAMP_INFINITY || ts == AORM_TIMESTAMP_NEG_INFINITY) return ts;
    if (ts >= AORM_TIMESTAMP_INFINITY - UNIX_TO_PG_US) return AORM_TIMESTAMP_INFINITY - 1;
    return ts + UNIX_TO_PG_US;
}

/* =========================================================================
 * Builder storage
 * ========================================================================= */

void aorm_params_init(aorm_params *p) {
    if (!p) return;
    p->count = 0;
    p->cap = AORM_PARAMS_INLINE;
    p->error = 0;
    p->slots = p->inline_slots;
    p->data = p->inline_data;
    p->len = 0;
    p->data_cap = AORM_PARAMS_INLINE_BYTES;
}

void aorm_params_reset(aorm_params *p) {
    if (!p) return;
    p->count = 0;
    p->len = 0;
    p->error = 0;
}

void aorm_params_free(aorm_params *p) {
    if (!p) return;
    if (p->slots != p->inline_slots) free(p->slots);
    if (p->data != p->inline_data) free(p->data);
    /* Leave an empty, usable builder behind: freeing twice, or appending
     * after a free, must not touch released memory. */
    aorm_params_init(p);
}

int aorm_params_count(const aorm_params *p) { return p ? p->count : AORM_EMISUSE; }

int aorm_params_error(const aorm_params *p) { return p ? p->error : AORM_EMISUSE; }

/* Records err as the builder's error unless one is already kept. Returns
 * the kept error. */
static int fail(aorm_params *p, int err) {
    if (!p->error) p->error = err;
    return p->error;
}

static int grow_slots(aorm_params *p) {
    if (p->count < p->cap) return 0;
    if (p->count >= PARAMS_MAX_COUNT) return AORM_ERANGE;
    size_t cap = (size_t)p->cap * 2;
    if (cap > PARAMS_MAX_COUNT) cap = PARAMS_MAX_COUNT;
    aorm_param_slot *s;
    if (p->slots == p->inline_slots) {
        s = malloc(cap * sizeof(*s));
        if (!s) return AORM_ENOMEM;
        memcpy(s, p->slots, (size_t)p->count * sizeof(*s));
    } else {
        s = realloc(p->slots, cap * sizeof(*s));
        if (!s) return AORM_ENOMEM;
    }
    p->slots = s;
    p->cap = (int)cap;
    return 0;
}

static int grow_data(aorm_params *p, size_t need) {
    if (need <= p->data_cap) return 0;
    size_t cap = p->data_cap ? p->data_cap : AORM_PARAMS_INLINE_BYTES;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *d;
    if (p->data == p->inline_data) {
        d = malloc(cap);
        if (!d) return AORM_ENOMEM;
        memcpy(d, p->data, p->len);
    } else {
        d = realloc(p->data, cap);
        if (!d) return AORM_ENOMEM;
    }
    p->data = d;
    p->data_cap = cap;
    return 0;
}

/* Reserves one slot and `len` (+ `nul` terminator bytes) of data and
 * returns where the value's bytes go, or NULL with p->error set. The slot
 * is committed here, so the caller must fill every reserved byte before it
 * returns and must not fail afterwards. */
static char *add(aorm_params *p, uint32_t type, size_t len, int format, size_t nul) {
    if (p->error) return NULL;
    if (len > INT32_MAX) {
        fail(p, AORM_ERANGE);
        return NULL;
    }
    /* Within what the server accepts (which also keeps the value's offset
     * and end inside the slot's uint32 offset). */
    size_t need = p->len + len + nul;
    if (need < p->len || need > PARAMS_MAX_BYTES) {
        fail(p, AORM_ERANGE);
        return NULL;
    }
    int rc = grow_slots(p);
    if (rc == 0) rc = grow_data(p, need);
    if (rc) {
        fail(p, rc);
        return NULL;
    }
    aorm_param_slot *s = &p->slots[p->count++];
    s->type = type;
    s->len = (int32_t)len;
    s->offset = (uint32_t)p->len;
    s->format = format;
    char *at = p->data + p->len;
    if (nul) memset(at + len, 0, nul);
    p->len = need;
    return at;
}

/* Appends a fixed-size binary value. */
static int add_bytes(aorm_params *p, uint32_t type, const void *bytes, size_t len) {
    char *at = add(p, type, len, 1, 0);
    if (!at) return p->error;
    if (len) memcpy(at, bytes, len);
    return 0;
}

/* Common entry check: a NULL builder, or a zeroed one that never went
 * through aorm_params_init(), is misuse; a builder in error keeps its
 * error. */
#define PARAMS_ENTER(p)                                           \
    do {                                                          \
        if (!(p) || !(p)->slots || !(p)->data) return AORM_EMISUSE; \
        if ((p)->error) return (p)->error;                        \
    } while (0)

/* =========================================================================
 * Scalars
 * ========================================================================= */

int aorm_params_null(aorm_params *p, uint32_t type) {
    PARAMS_ENTER(p);
    int rc = grow_slots(p);
    if (rc) return fail(p, rc);
    aorm_param_slot *s = &p->slots[p->count++];
    s->type = type;
    s->len = -1;
    s->offset = (uint32_t)p->len;
    s->format = 1;
    return 0;
}

int aorm_params_bool(aorm_params *p, bool v) {
    PARAMS_ENTER(p);
    char b = v ? 1 : 0;
    return add_bytes(p, AORM_T_BOOL, &b, 1);
}

int aorm_params_int2(aorm_params *p, int16_t v) {
    PARAMS_ENTER(p);
    char b[2];
    aorm__put_be16(b, (uint16_t)v);
    return add_bytes(p, AORM_T_INT2, b, sizeof(b));
}

int aorm_params_int4(aorm_params *p, int32_t v) {
    PARAMS_ENTER(p);
    char b[4];
    aorm__put_be32(b, (uint32_t)v);
    return add_bytes(p, AORM_T_INT4, b, sizeof(b));
}

int aorm_params_int8(aorm_params *p, int64_t v) {
    PARAMS_ENTER(p);
    char b[8];
    aorm__put_be64(b, (uint64_t)v);
    return add_bytes(p, AORM_T_INT8, b, sizeof(b));
}

/* Floats go as their IEEE-754 bit patterns, so NaN, ±infinity and -0.0
 * reach the server unchanged. */
int aorm_params_float4(aorm_params *p, float v) {
    PARAMS_ENTER(p);
    uint32_t bits;
    memcpy(&bits, &v, sizeof(bits));
    char b[4];
    aorm__put_be32(b, bits);
    return add_bytes(p, AORM_T_FLOAT4, b, sizeof(b));
}

int aorm_params_float8(aorm_params *p, double v) {
    PARAMS_ENTER(p);
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    char b[8];
    aorm__put_be64(b, bits);
    return add_bytes(p, AORM_T_FLOAT8, b, sizeof(b));
}

int aorm_params_text(aorm_params *p, const char *s) {
    PARAMS_ENTER(p);
    if (!s) return aorm_params_null(p, AORM_T_TEXT);
    return add_bytes(p, AORM_T_TEXT, s, strlen(s));
}

/* Checks a length-taking argument: (NULL, 0) is empty, (NULL, n) misuse. */
static int check_buf(aorm_params *p, const void *data, size_t len) {
    if (!data && len) return fail(p, AORM_EMISUSE);
    return 0;
}

int aorm_params_text_n(aorm_params *p, const char *s, size_t len) {
    PARAMS_ENTER(p);
    if (check_buf(p, s, len)) return p->error;
    if (len && memchr(s, '\0', len)) return fail(p, AORM_EENCODING);
    return add_bytes(p, AORM_T_TEXT, s, len);
}

int aorm_params_bytea(aorm_params *p, const void *data, size_t len) {
    PARAMS_ENTER(p);
    if (check_buf(p, data, len)) return p->error;
    return add_bytes(p, AORM_T_BYTEA, data, len);
}

int aorm_params_date(aorm_params *p, int32_t date) {
    PARAMS_ENTER(p);
    char b[4];
    aorm__put_be32(b, (uint32_t)date);
    return add_bytes(p, AORM_T_DATE, b, sizeof(b));
}

int aorm_params_timestamp(aorm_params *p, int64_t ts) {
    PARAMS_ENTER(p);
    char b[8];
    aorm__put_be64(b, (uint64_t)ts);
    return add_bytes(p, AORM_T_TIMESTAMP, b, sizeof(b));
}

int aorm_params_timestamptz(aorm_params *p, int64_t ts) {
    PARAMS_ENTER(p);
    char b[8];
    aorm__put_be64(b, (uint64_t)ts);
    return add_bytes(p, AORM_T_TIMESTAMPTZ, b, sizeof(b));
}

int aorm_params_uuid(aorm_params *p, const uint8_t uuid[16]) {
    PARAMS_ENTER(p);
    if (!uuid) return aorm_params_null(p, AORM_T_UUID);
    return add_bytes(p, AORM_T_UUID, uuid, 16);
}

/* interval: int64 microseconds, int32 days, int32 months. */
int aorm_params_interval(aorm_params *p, const aorm_interval *v) {
    PARAMS_ENTER(p);
    if (!v) return aorm_params_null(p, AORM_T_INTERVAL);
    char w[16];
    aorm__put_be64(w, (uint64_t)v->usecs);
    aorm__put_be32(w + 8, (uint32_t)v->days);
    aorm__put_be32(w + 12, (uint32_t)v->months);
    return add_bytes(p, AORM_T_INTERVAL, w, sizeof(w));
}

/* inet / cidr: family (2 = AF_INET, 3 = AF_INET6 as PostgreSQL numbers
 * them), bits, is_cidr, address length, address bytes. */
static int inet_encode(const aorm_inet *v, bool cidr, char out[20], size_t *len) {
    size_t nb = v->family == AORM_INET_V4 ? 4 : v->family == AORM_INET_V6 ? 16 : 0;
    if (!nb || v->bits > nb * 8) return AORM_EENCODING;
    if (cidr) { /* a network: no bits set right of the netmask (the server refuses them) */
        for (size_t i = 0; i < nb; i++) {
            int keep = (int)v->bits - (int)(i * 8);
            uint8_t mask = keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
            if (v->addr[i] & (uint8_t)~mask) return AORM_EENCODING;
        }
    }
    out[0] = (char)(nb == 4 ? 2 : 3);
    out[1] = (char)v->bits;
    out[2] = (char)(cidr ? 1 : 0);
    out[3] = (char)nb;
    memcpy(out + 4, v->addr, nb);
    *len = 4 + nb;
    return 0;
}

static int add_inet(aorm_params *p, const aorm_inet *v, bool cidr) {
    PARAMS_ENTER(p);
    uint32_t oid = cidr ? AORM_T_CIDR : AORM_T_INET;
    if (!v) return aorm_params_null(p, oid);
    char w[20];
    size_t n;
    int rc = inet_encode(v, cidr, w, &n);
    if (rc) return fail(p, rc);
    return add_bytes(p, oid, w, n);
}

int aorm_params_inet(aorm_params *p, const aorm_inet *v) { return add_inet(p, v, false); }
int aorm_params_cidr(aorm_params *p, const aorm_inet *v) { return add_inet(p, v, true); }

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Accepts exactly 8-4-4-4-12 hex digits with hyphens, or 32 hex digits
 * without any; either case. Anything else (braces, spaces, stray hyphens)
 * is malformed. */
static int parse_uuid(const char *text, uint8_t out[16]) {
    size_t n = strlen(text);
    bool hyphens;
    if (n == 36) hyphens = true;
    else if (n == 32) hyphens = false;
    else return AORM_EENCODING;
    const char *c = text;
    for (int i = 0; i < 16; i++) {
        if (hyphens && (i == 4 || i == 6 || i == 8 || i == 10)) {
            if (*c != '-') return AORM_EENCODING;
            c++;
        }
        int hi = hexval(c[0]);
        int lo = hi < 0 ? -1 : hexval(c[1]);
        if (lo < 0) return AORM_EENCODING;
        out[i] = (uint8_t)(hi << 4 | lo);
        c += 2;
    }
    return *c == '\0' ? 0 : AORM_EENCODING;
}

int aorm_params_uuid_str(aorm_params *p, const char *text) {
    PARAMS_ENTER(p);
    if (!text) return aorm_params_null(p, AORM_T_UUID);
    uint8_t u[16];
    int rc = parse_uuid(text, u);
    if (rc) return fail(p, rc);
    return add_bytes(p, AORM_T_UUID, u, 16);
}

/* json's binary form is its text; the server validates it. */
int aorm_params_json(aorm_params *p, const char *json, size_t len) {
    PARAMS_ENTER(p);
    if (check_buf(p, json, len)) return p->error;
    return add_bytes(p, AORM_T_JSON, json, len);
}

/* jsonb's binary form is a version byte (1) followed by the text. */
int aorm_params_jsonb(aorm_params *p, const char *json, size_t len) {
    PARAMS_ENTER(p);
    if (check_buf(p, json, len)) return p->error;
    if (len > SIZE_MAX - 1) return fail(p, AORM_ERANGE);
    char *at = add(p, AORM_T_JSONB, len + 1, 1, 0);
    if (!at) return p->error;
    at[0] = 1;
    if (len) memcpy(at + 1, json, len);
    return 0;
}

int aorm_params_raw(aorm_params *p, uint32_t type, const void *data, size_t len, int format) {
    PARAMS_ENTER(p);
    if (format != 0 && format != 1) return fail(p, AORM_EMISUSE);
    if (!data) return aorm_params_null(p, type);
    if (format == 1) return add_bytes(p, type, data, len);
    /* libpq reads text-format parameters as C strings: an embedded NUL
     * would silently cut the value, so it is refused, and a terminator
     * follows the bytes without being counted in the slot's length. */
    if (len && memchr(data, '\0', len)) return fail(p, AORM_EENCODING);
    char *at = add(p, type, len, 0, 1);
    if (!at) return p->error;
    if (len) memcpy(at, data, len);
    return 0;
}

/* =========================================================================
 * numeric: decimal string -> binary numeric
 *
 * Wire form: int16 ndigits, int16 weight, uint16 sign, int16 dscale, then
 * ndigits base-10000 digits, most significant first; the first digit is
 * worth 10000^weight. dscale is the number of decimal digits shown after
 * the point. Zero has no digits. The value is laid out straight into the
 * builder's data, so no temporary buffer depends on the input's length.
 * ========================================================================= */

static bool ieq(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return false;
    return *a == *b;
}

/* Floor division by 4 for negative decimal powers. */
static int64_t floor_div4(int64_t v) { return v >= 0 ? v / 4 : -((-v + 3) / 4); }

static int add_numeric_special(aorm_params *p, uint16_t sign) {
    char b[8];
    aorm__put_be16(b, 0);
    aorm__put_be16(b + 2, 0);
    aorm__put_be16(b + 4, sign);
    aorm__put_be16(b + 6, 0);
    return add_bytes(p, AORM_T_NUMERIC, b, sizeof(b));
}

int aorm_params_numeric(aorm_params *p, const char *decimal) {
    PARAMS_ENTER(p);
    if (!decimal) return aorm_params_null(p, AORM_T_NUMERIC);

    const char *s = decimal;
    if (ieq(s, "NaN")) return add_numeric_special(p, NUMERIC_NAN);
    bool neg = false;
    if (*s == '+' || *s == '-') {
        neg = *s == '-';
        s++;
    }
    if (ieq(s, "Infinity") || ieq(s, "inf"))
        return add_numeric_special(p, neg ? NUMERIC_NINF : NUMERIC_PINF);

    /* Shape: digits [ '.' digits ] [ (e|E) [sign] digits ], with at least
     * one digit in the mantissa. */
    const char *int_start = s;
    while (*s >= '0' && *s <= '9') s++;
    size_t nint = (size_t)(s - int_start);
    const char *frac_start = s, *frac_end = s;
    if (*s == '.') {
        frac_start = ++s;
        while (*s >= '0' && *s <= '9') s++;
        frac_end = s;
    }
    size_t nfrac = (size_t)(frac_end - frac_start);
    if (nint + nfrac == 0) return fail(p, AORM_EENCODING);
    int64_t exp = 0;
    if (*s == 'e' || *s == 'E') {
        s++;
        bool eneg = false;
        if (*s == '+' || *s == '-') {
            eneg = *s == '-';
            s++;
        }
        if (!(*s >= '0' && *s <= '9')) return fail(p, AORM_EENCODING);
        bool big = false;
        for (; *s >= '0' && *s <= '9'; s++) {
            if (exp < INT64_C(1000000000)) exp = exp * 10 + (*s - '0');
            else big = true;
        }
        if (big) return fail(p, AORM_ERANGE);
        if (eneg) exp = -exp;
    }
    if (*s != '\0') return fail(p, AORM_EENCODING);
    /* Inputs this long cannot become a numeric anyway (at most 32767
     * base-10000 digits); bounding them keeps the power arithmetic below
     * far from int64 limits. */
    if (nint + nfrac > (size_t)INT32_MAX) return fail(p, AORM_ERANGE);

    /* Digit k of the mantissa (integer digits then fraction digits, the
     * point dropped) is worth 10^(nint - 1 - k + exp). */
    int64_t ndig = (int64_t)(nint + nfrac);
    int64_t top_pow = (int64_t)nint - 1 + exp;
#define MANT_DIGIT(k) ((size_t)(k) < nint ? int_start[(k)] : frac_start[(size_t)(k) - nint])
    int64_t first = -1, last = -1;
    for (int64_t k = 0; k < ndig; k++) {
        if (MANT_DIGIT(k) != '0') {
            if (first < 0) first = k;
            last = k;
        }
    }
    int64_t dscale = (int64_t)nfrac - exp;
    if (dscale < 0) dscale = 0;
    if (dscale > NUMERIC_DSCALE_MAX) return fail(p, AORM_ERANGE);

    int64_t weight = 0, ndigits = 0;
    if (first >= 0) {
        weight = floor_div4(top_pow - first);
        int64_t low_group = floor_div4(top_pow - last);
        ndigits = weight - low_group + 1;
        if (weight > INT16_MAX || weight < INT16_MIN || ndigits > INT16_MAX)
            return fail(p, AORM_ERANGE);
    }
    char *at = add(p, AORM_T_NUMERIC, 8 + 2 * (size_t)ndigits, 1, 0);
    if (!at) return p->error;
    aorm__put_be16(at, (uint16_t)ndigits);
    aorm__put_be16(at + 2, (uint16_t)(int16_t)weight);
    /* Zero is unsigned in PostgreSQL: "-0.000" is sent as 0.000. */
    aorm__put_be16(at + 4, (neg && ndigits > 0) ? NUMERIC_NEG : NUMERIC_POS);
    aorm__put_be16(at + 6, (uint16_t)dscale);
    char *digits = at + 8;
    memset(digits, 0, 2 * (size_t)ndigits);
    static const int pow10[4] = {1, 10, 100, 1000};
    for (int64_t k = first; first >= 0 && k <= last; k++) {
        int d = MANT_DIGIT(k) - '0';
        if (!d) continue;
        int64_t pw = top_pow - k;
        int64_t g = floor_div4(pw);
        size_t idx = (size_t)(weight - g);
        char *w = digits + 2 * idx;
        uint16_t v = (uint16_t)(aorm__get_be16(w) + d * pow10[pw - 4 * g]);
        aorm__put_be16(w, v);
    }
#undef MANT_DIGIT
    return 0;
}

/* =========================================================================
 * Arrays: ndim, has-null flag, element OID, then per dimension (length,
 * lower bound), then per element an int32 length (-1 for NULL) and its
 * bytes. An empty array has no dimensions at all.
 * ========================================================================= */

static char *put_array_header(char *at, uint32_t elem, size_t n, bool has_null) {
    if (n == 0) {
        aorm__put_be32(at, 0);
        aorm__put_be32(at + 4, 0);
        aorm__put_be32(at + 8, elem);
        return at + 12;
    }
    aorm__put_be32(at, 1);
    aorm__put_be32(at + 4, has_null ? 1 : 0);
    aorm__put_be32(at + 8, elem);
    aorm__put_be32(at + 12, (uint32_t)n);
    aorm__put_be32(at + 16, 1);
    return at + 20;
}

static size_t array_header_len(size_t n) { return n ? 20 : 12; }

static bool any_null(const bool *nulls, size_t n) {
    if (!nulls) return false;
    for (size_t i = 0; i < n; i++)
        if (nulls[i]) return true;
    return false;
}

/* Arrays of one fixed-width element type; put() writes element i. */
static int add_fixed_array(aorm_params *p, uint32_t type, uint32_t elem, size_t width, size_t n,
                           const void *v, const bool *nulls,
                           void (*put)(char *, const void *, size_t)) {
    if (check_buf(p, v, n)) return p->error;
    /* Every element takes at most 4 + width bytes, and the element count
     * itself is an int32 on the wire. */
    if (n > (size_t)(INT32_MAX - 20) / (4 + width)) return fail(p, AORM_ERANGE);
    bool has_null = any_null(nulls, n);
    size_t len = array_header_len(n);
    for (size_t i = 0; i < n; i++) len += (nulls && nulls[i]) ? 4 : 4 + width;
    char *at = add(p, type, len, 1, 0);
    if (!at) return p->error;
    at = put_array_header(at, elem, n, has_null);
    for (size_t i = 0; i < n; i++) {
        if (nulls && nulls[i]) {
            aorm__put_be32(at, UINT32_MAX); /* -1 */
            at += 4;
            continue;
        }
        aorm__put_be32(at, (uint32_t)width);
        put(at + 4, v, i);
        at += 4 + width;
    }
    return 0;
}

static void put_int4_elem(char *at, const void *v, size_t i) {
    aorm__put_be32(at, (uint32_t)((const int32_t *)v)[i]);
}

static void put_int8_elem(char *at, const void *v, size_t i) {
    aorm__put_be64(at, (uint64_t)((const int64_t *)v)[i]);
}

static void put_uuid_elem(char *at, const void *v, size_t i) {
    memcpy(at, ((const uint8_t(*)[16])v)[i], 16);
}

int aorm_params_int4_array(aorm_params *p, const int32_t *v, const bool *nulls, size_t n) {
    PARAMS_ENTER(p);
    return add_fixed_array(p, AORM_T_INT4_ARRAY, AORM_T_INT4, 4, n, v, nulls, put_int4_elem);
}

int aorm_params_int8_array(aorm_params *p, const int64_t *v, const bool *nulls, size_t n) {
    PARAMS_ENTER(p);
    return add_fixed_array(p, AORM_T_INT8_ARRAY, AORM_T_INT8, 8, n, v, nulls, put_int8_elem);
}

int aorm_params_uuid_array(aorm_params *p, const uint8_t *v, const bool *nulls, size_t n) {
    PARAMS_ENTER(p);
    return add_fixed_array(p, AORM_T_UUID_ARRAY, AORM_T_UUID, 16, n, v, nulls, put_uuid_elem);
}

int aorm_params_text_array(aorm_params *p, const char *const *v, size_t n) {
    PARAMS_ENTER(p);
    if (check_buf(p, v, n)) return p->error;
    if (n > (size_t)(INT32_MAX - 20) / 4) return fail(p, AORM_ERANGE);
    bool has_null = false;
    size_t len = array_header_len(n);
    for (size_t i = 0; i < n; i++) {
        if (len > (size_t)INT32_MAX - 4) return fail(p, AORM_ERANGE);
        len += 4;
        if (!v[i]) {
            has_null = true;
            continue;
        }
        size_t sl = strlen(v[i]);
        /* Stop summing as soon as the total cannot fit: add() would refuse
         * it, and the sum must not wrap before it gets there. */
        if (sl > (size_t)INT32_MAX - len) return fail(p, AORM_ERANGE);
        len += sl;
    }
    char *at = add(p, AORM_T_TEXT_ARRAY, len, 1, 0);
    if (!at) return p->error;
    at = put_array_header(at, AORM_T_TEXT, n, has_null);
    for (size_t i = 0; i < n; i++) {
        if (!v[i]) {
            aorm__put_be32(at, UINT32_MAX);
            at += 4;
            continue;
        }
        size_t sl = strlen(v[i]);
        aorm__put_be32(at, (uint32_t)sl);
        memcpy(at + 4, v[i], sl);
        at += 4 + sl;
    }
    return 0;
}

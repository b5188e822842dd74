/* iso8601.c -- ISO-8601 text of the binary date and timestamp values
 * (days / microseconds since 2000-01-01, result.h) and back.
 *
 * Pure functions on the caller's buffers: no allocation, no locale, no
 * time zone database (a timestamptz is UTC; offsets in parsed text are
 * applied arithmetically). Calendar arithmetic is aorm_date_from_ymd /
 * aorm_date_to_ymd (params.c), so both directions agree with the server
 * for every date it stores. Must not: read past the NUL of a text, or
 * accept a value the format functions could not have written (other
 * than the documented variants). */
#include <stdio.h>
#include <string.h>

#include "aorm/error.h"
#include "aorm/result.h"

#define US_PER_DAY INT64_C(86400000000)

/* ---- formatting ------------------------------------------------------------ */

static int put_date(int32_t date, char *buf, size_t cap) {
    int y, m, d;
    aorm_date_to_ymd(date, &y, &m, &d);
    if (y >= 0 && y <= 9999) return snprintf(buf, cap, "%04d-%02d-%02d", y, m, d);
    return snprintf(buf, cap, "%c%04lld-%02d-%02d", y < 0 ? '-' : '+', y < 0 ? -(long long)y : (long long)y, m, d);
}

int aorm_date_format(int32_t date, char *buf, size_t cap) {
    if (!buf && cap > 0) return AORM_EMISUSE;
    if (date == AORM_DATE_INFINITY) return snprintf(buf, cap, "infinity");
    if (date == AORM_DATE_NEG_INFINITY) return snprintf(buf, cap, "-infinity");
    return put_date(date, buf, cap);
}

static int put_timestamp(int64_t ts, const char *zone, char *buf, size_t cap) {
    if (!buf && cap > 0) return AORM_EMISUSE;
    if (ts == AORM_TIMESTAMP_INFINITY) return snprintf(buf, cap, "infinity");
    if (ts == AORM_TIMESTAMP_NEG_INFINITY) return snprintf(buf, cap, "-infinity");
    int64_t days = ts / US_PER_DAY, us = ts % US_PER_DAY;
    if (us < 0) {
        us += US_PER_DAY;
        days--;
    }
    char date[32];
    put_date((int32_t)days, date, sizeof(date));
    int64_t secs = us / 1000000, frac = us % 1000000;
    char fr[8] = "";
    if (frac) {
        snprintf(fr, sizeof(fr), ".%06lld", (long long)frac);
        size_t n = strlen(fr);
        while (n > 2 && fr[n - 1] == '0') fr[--n] = '\0';
    }
    return snprintf(buf, cap, "%sT%02d:%02d:%02d%s%s", date, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60),
                    fr, zone);
}

int aorm_timestamp_format(int64_t ts, char *buf, size_t cap) { return put_timestamp(ts, "", buf, cap); }
int aorm_timestamptz_format(int64_t ts, char *buf, size_t cap) { return put_timestamp(ts, "Z", buf, cap); }

/* ---- parsing ----------------------------------------------------------------- */

/* Exactly n digits at *p into *v; advances *p. */
static bool digits(const char **p, int n, int *v) {
    int x = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9') return false;
        x = x * 10 + (c - '0');
    }
    *p += n;
    *v = x;
    return true;
}

static bool leap(long long y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

/* [sign] YYYY[Y...] '-' MM '-' DD. */
static bool parse_date(const char **p, int32_t *out) {
    const char *s = *p;
    int sign = 1;
    if (*s == '+' || *s == '-') sign = *s++ == '-' ? -1 : 1;
    long long y = 0;
    int nd = 0;
    while (*s >= '0' && *s <= '9') {
        if (++nd > 7) return false; /* beyond any date the server stores */
        y = y * 10 + (*s++ - '0');
    }
    if (nd < 4) return false;
    y *= sign;
    int m, d;
    if (*s++ != '-' || !digits(&s, 2, &m) || *s++ != '-' || !digits(&s, 2, &d)) return false;
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1] + (m == 2 && leap(y))) return false;
    *out = aorm_date_from_ymd((int)y, m, d);
    *p = s;
    return true;
}

/* 'T' or ' ', HH:MM[:SS[.f{1,6}]] into microseconds of the day. */
static bool parse_time(const char **p, int64_t *us) {
    const char *s = *p;
    if (*s != 'T' && *s != 't' && *s != ' ') return false;
    s++;
    int h, mi, sec = 0;
    int64_t frac = 0;
    if (!digits(&s, 2, &h) || *s++ != ':' || !digits(&s, 2, &mi)) return false;
    if (*s == ':') {
        s++;
        if (!digits(&s, 2, &sec)) return false;
        if (*s == '.' || *s == ',') {
            s++;
            int n = 0;
            while (*s >= '0' && *s <= '9') {
                if (++n > 6) return false;
                frac = frac * 10 + (*s++ - '0');
            }
            if (n == 0) return false;
            for (; n < 6; n++) frac *= 10;
        }
    }
    /* 24:00:00 is the end of the day, as the server accepts it */
    if (h > 24 || mi > 59 || sec > 59 || (h == 24 && (mi || sec || frac))) return false;
    *us = ((int64_t)h * 3600 + mi * 60 + sec) * 1000000 + frac;
    *p = s;
    return true;
}

static bool infinity(const char *text, int *sign) {
    if (strcmp(text, "infinity") == 0 || strcmp(text, "+infinity") == 0) *sign = 1;
    else if (strcmp(text, "-infinity") == 0) *sign = -1;
    else return false;
    return true;
}

int aorm_date_parse(const char *text, int32_t *out) {
    if (!text || !out) return AORM_EMISUSE;
    int inf;
    if (infinity(text, &inf)) {
        *out = inf > 0 ? AORM_DATE_INFINITY : AORM_DATE_NEG_INFINITY;
        return 0;
    }
    const char *p = text;
    int32_t d;
    if (!parse_date(&p, &d) || *p) return AORM_ERANGE;
    *out = d;
    return 0;
}

/* A timestamp with (tz) or without an offset; the offset is subtracted. */
static int parse_ts(const char *text, bool tz, int64_t *out) {
    if (!text || !out) return AORM_EMISUSE;
    int inf;
    if (infinity(text, &inf)) {
        *out = inf > 0 ? AORM_TIMESTAMP_INFINITY : AORM_TIMESTAMP_NEG_INFINITY;
        return 0;
    }
    const char *p = text;
    int32_t d;
    int64_t us;
    if (!parse_date(&p, &d) || !parse_time(&p, &us)) return AORM_ERANGE;
    int64_t off = 0;
    if (tz) {
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
            if (!digits(&p, 2, &oh)) return AORM_ERANGE;
            if (*p == ':') p++;
            if (*p >= '0' && *p <= '9' && !digits(&p, 2, &om)) return AORM_ERANGE;
            if (oh > 15 || om > 59) return AORM_ERANGE;
            off = sign * ((int64_t)oh * 3600 + om * 60) * 1000000;
        } else {
            return AORM_ERANGE; /* a timestamptz names its offset */
        }
    }
    if (*p) return AORM_ERANGE;
    /* beyond what microseconds in an int64 reach (the server's own range
     * ends earlier, at 294276 AD) */
    if (d > 106751990 || d < -106751990) return AORM_ERANGE;
    *out = (int64_t)d * US_PER_DAY + us - off;
    return 0;
}

int aorm_timestamp_parse(const char *text, int64_t *out) { return parse_ts(text, false, out); }
int aorm_timestamptz_parse(const char *text, int64_t *out) { return parse_ts(text, true, out); }

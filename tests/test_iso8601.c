/* test_iso8601.c -- ISO-8601 formatting and parsing of dates and
 * timestamps (result.h), checked against fixed texts and, for the
 * parser, against the values the sandbox PostgreSQL itself computes from
 * the same text. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "support.h"
#include "aorm/aorm.h"

#define TIMEOUT 60

static void fmt_date(int y, int m, int d, const char *want) {
    char buf[40];
    int32_t v = aorm_date_from_ymd(y, m, d);
    int n = aorm_date_format(v, buf, sizeof(buf));
    cr_assert_str_eq(buf, want);
    cr_assert_eq(n, (int)strlen(want));
    int32_t back = 0;
    cr_assert_eq(aorm_date_parse(buf, &back), 0, "%s", buf);
    cr_assert_eq(back, v, "%s", buf);
}

Test(iso8601, dates, .timeout = TIMEOUT) {
    fmt_date(2000, 1, 1, "2000-01-01");
    fmt_date(2026, 12, 2, "2026-12-02");
    fmt_date(1, 1, 1, "0001-01-01");
    fmt_date(0, 12, 31, "0000-12-31");
    fmt_date(-44, 3, 15, "-0044-03-15");
    fmt_date(12345, 6, 7, "+12345-06-07");
    fmt_date(2024, 2, 29, "2024-02-29");
    char buf[16];
    cr_assert_eq(aorm_date_format(AORM_DATE_INFINITY, buf, sizeof(buf)), 8);
    cr_assert_str_eq(buf, "infinity");
    aorm_date_format(AORM_DATE_NEG_INFINITY, buf, sizeof(buf));
    cr_assert_str_eq(buf, "-infinity");
    /* cut by cap: the full length is returned, the text is terminated */
    char small[5];
    cr_assert_eq(aorm_date_format(0, small, sizeof(small)), 10);
    cr_assert_str_eq(small, "2000");
    cr_assert_eq(aorm_date_format(0, NULL, 0), 10);
    int32_t d = 7;
    const char *bad[] = {"2023-02-29", "2024-13-01", "2024-00-10", "2024-01-32", "24-01-01", "2024-1-01",
                         "2024-01-01x", "", "2024/01/01", "2024-01-01T00:00", "12345678-01-01"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        cr_assert_eq(aorm_date_parse(bad[i], &d), AORM_ERANGE, "%s", bad[i]);
        cr_assert_eq(d, 7, "left alone");
    }
    cr_assert_eq(aorm_date_parse(NULL, &d), AORM_EMISUSE);
    cr_assert_eq(aorm_date_parse("infinity", &d), 0);
    cr_assert_eq(d, AORM_DATE_INFINITY);
}

Test(iso8601, timestamps, .timeout = TIMEOUT) {
    char buf[64];
    int64_t t = aorm_date_from_ymd(2026, 12, 2) * INT64_C(86400000000) + ((15 * 3600 + 4 * 60 + 5) * INT64_C(1000000));
    aorm_timestamp_format(t, buf, sizeof(buf));
    cr_assert_str_eq(buf, "2026-12-02T15:04:05");
    aorm_timestamptz_format(t + 120000, buf, sizeof(buf));
    cr_assert_str_eq(buf, "2026-12-02T15:04:05.12Z");
    aorm_timestamp_format(t + 1, buf, sizeof(buf));
    cr_assert_str_eq(buf, "2026-12-02T15:04:05.000001");
    /* before the epoch: the day and the time of day are split the right way */
    aorm_timestamp_format(-1, buf, sizeof(buf));
    cr_assert_str_eq(buf, "1999-12-31T23:59:59.999999");
    aorm_timestamptz_format(AORM_TIMESTAMP_NEG_INFINITY, buf, sizeof(buf));
    cr_assert_str_eq(buf, "-infinity");

    int64_t v = 0;
    cr_assert_eq(aorm_timestamp_parse("2026-12-02T15:04:05", &v), 0);
    cr_assert_eq(v, t);
    cr_assert_eq(aorm_timestamp_parse("2026-12-02 15:04", &v), 0);
    cr_assert_eq(v, t - 5000000);
    cr_assert_eq(aorm_timestamp_parse("1999-12-31T23:59:59.999999", &v), 0);
    cr_assert_eq(v, -1);
    cr_assert_eq(aorm_timestamptz_parse("2026-12-02T15:04:05Z", &v), 0);
    cr_assert_eq(v, t);
    cr_assert_eq(aorm_timestamptz_parse("2026-12-02T17:04:05+02:00", &v), 0);
    cr_assert_eq(v, t);
    cr_assert_eq(aorm_timestamptz_parse("2026-12-02T10:34:05-0430", &v), 0);
    cr_assert_eq(v, t);
    cr_assert_eq(aorm_timestamptz_parse("2026-12-02T16:04:05+01", &v), 0);
    cr_assert_eq(v, t);
    const char *bad_tz[] = {"2026-12-02T15:04:05", "2026-12-02T15:04:05+2", "2026-12-02T25:00:00Z",
                            "2026-12-02T15:60:00Z", "2026-12-02T15:04:05.1234567Z", "2026-12-02T15:04:05.Z",
                            "2026-12-02Z", "2026-12-02T15:04:05Zjunk"};
    v = 42;
    for (size_t i = 0; i < sizeof(bad_tz) / sizeof(*bad_tz); i++) {
        cr_assert_eq(aorm_timestamptz_parse(bad_tz[i], &v), AORM_ERANGE, "%s", bad_tz[i]);
        cr_assert_eq(v, 42);
    }
    cr_assert_eq(aorm_timestamp_parse("2026-12-02T15:04:05Z", &v), AORM_ERANGE, "no offset on a timestamp");
    /* round trips over a spread of values */
    for (int64_t x = -INT64_C(9000000000000000000); x < INT64_C(9000000000000000000); x += INT64_C(77777777777777777)) {
        if (x > INT64_C(9200000000000000000) || x < -INT64_C(211813488000000000)) continue; /* before 4713 BC */
        int64_t y = 0;
        aorm_timestamptz_format(x, buf, sizeof(buf));
        cr_assert_eq(aorm_timestamptz_parse(buf, &y), 0, "%s", buf);
        cr_assert_eq(y, x, "%s", buf);
    }
}

/* The server's value for a text, as binary microseconds (or days). */
static int64_t server_value(PGconn *pg, const char *type, const char *text) {
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT $1::%s", type);
    const char *vals[] = {text};
    PGresult *r = PQexecParams(pg, sql, 1, NULL, vals, NULL, NULL, 1);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", text, PQerrorMessage(pg));
    const unsigned char *p = (const unsigned char *)PQgetvalue(r, 0, 0);
    int64_t v = 0;
    int len = PQgetlength(r, 0, 0);
    for (int i = 0; i < len; i++) v = (int64_t)((uint64_t)v << 8 | p[i]);
    if (len == 4) v = (int32_t)v;
    PQclear(r);
    return v;
}

Test(iso8601, agrees_with_the_server, .timeout = TIMEOUT) {
    PGconn *pg = t_pg();
    free(t_pg_exec(pg, "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'"));
    const char *dates[] = {"2026-12-02", "1970-01-01", "0001-01-01", "1582-10-15", "9999-12-31", "2000-02-29"};
    for (size_t i = 0; i < sizeof(dates) / sizeof(*dates); i++) {
        int32_t d;
        cr_assert_eq(aorm_date_parse(dates[i], &d), 0);
        cr_assert_eq(d, (int32_t)server_value(pg, "date", dates[i]), "%s", dates[i]);
    }
    const char *tzs[] = {"2026-12-02T15:04:05Z", "2026-12-02T15:04:05.5+05:30", "1969-07-20T20:17:40-04:00",
                         "2000-01-01T00:00:00Z", "1999-12-31T23:59:59.999999Z", "2262-04-11T23:47:16.854775+00"};
    for (size_t i = 0; i < sizeof(tzs) / sizeof(*tzs); i++) {
        int64_t v;
        cr_assert_eq(aorm_timestamptz_parse(tzs[i], &v), 0, "%s", tzs[i]);
        cr_assert_eq(v, server_value(pg, "timestamptz", tzs[i]), "%s", tzs[i]);
        /* and the server reads our text back to the same value */
        char buf[64];
        aorm_timestamptz_format(v, buf, sizeof(buf));
        cr_assert_eq(server_value(pg, "timestamptz", buf), v, "%s -> %s", tzs[i], buf);
    }
    PQfinish(pg);
}

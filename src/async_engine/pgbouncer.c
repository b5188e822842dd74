/* pgbouncer.c -- what an engine behind PgBouncer in transaction mode
 * refuses (aorm_engine_options.pgbouncer).
 *
 * In pool_mode=transaction every transaction (every sync group outside a
 * transaction block) may run on another server connection, so whatever a
 * statement leaves on its server session outlives it there, for whoever
 * gets that connection next, and is missing for the caller's next
 * statement. Such statements are refused when queued, by their leading
 * words: SET and RESET without LOCAL (SET TRANSACTION and SET CONSTRAINTS
 * are transaction-scoped), LISTEN, PREPARE (not PREPARE TRANSACTION),
 * DECLARE ... WITH HOLD, CREATE [GLOBAL|LOCAL] TEMP[ORARY] and the
 * session advisory locks (pg_advisory_lock*, pg_try_advisory_lock*; the
 * _xact_ ones are fine). set_config(..., false) inside an expression is
 * not detected. The engine's own deadlines use set_config(..., true) in
 * the statement's own sync group: transaction-scoped, safe.
 *
 * Owns: nothing. */
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "async_engine/engine_int.h"

/* Skips blanks and SQL comments. */
static const char *skip_space(const char *p) {
    for (;;) {
        while (*p && isspace((unsigned char)*p)) p++;
        if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n') p++;
        } else if (p[0] == '/' && p[1] == '*') {
            int depth = 0;
            do {
                if (p[0] == '/' && p[1] == '*') { depth++; p += 2; }
                else if (p[0] == '*' && p[1] == '/') { depth--; p += 2; }
                else p++;
            } while (*p && depth > 0);
        } else {
            return p;
        }
    }
}

/* The next word (letters, digits, _) into w (upper case, truncated);
 * returns the position after it. */
static const char *word(const char *p, char *w, size_t cap) {
    p = skip_space(p);
    size_t n = 0;
    while (*p && (isalnum((unsigned char)*p) || *p == '_')) {
        if (n + 1 < cap) w[n++] = (char)toupper((unsigned char)*p);
        p++;
    }
    w[n] = '\0';
    return p;
}

static bool contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++)
        if (strncasecmp(p, needle, n) == 0) return true;
    return false;
}

/* Why sql would leave session state behind, or NULL. */
static const char *session_state(const char *sql) {
    char w1[16], w2[16], w3[16];
    const char *p = word(sql, w1, sizeof(w1));
    if (strcmp(w1, "SET") == 0) {
        word(p, w2, sizeof(w2));
        if (strcmp(w2, "LOCAL") == 0 || strcmp(w2, "TRANSACTION") == 0 || strcmp(w2, "CONSTRAINTS") == 0)
            return NULL;
        return "SET without LOCAL changes the server session (use SET LOCAL inside a transaction)";
    }
    if (strcmp(w1, "RESET") == 0) return "RESET changes the server session";
    if (strcmp(w1, "LISTEN") == 0) return "LISTEN needs a session of its own (use a direct connection)";
    if (strcmp(w1, "PREPARE") == 0) {
        word(p, w2, sizeof(w2));
        return strcmp(w2, "TRANSACTION") == 0 ? NULL : "PREPARE makes a named statement of the server session";
    }
    if (strcmp(w1, "DECLARE") == 0) {
        for (const char *q = p; *q;) {
            q = word(q, w2, sizeof(w2));
            if (strcmp(w2, "FOR") == 0) break;
            if (strcmp(w2, "WITH") == 0) {
                word(q, w3, sizeof(w3));
                if (strcmp(w3, "HOLD") == 0) return "a cursor WITH HOLD outlives its transaction";
            }
            if (!w2[0]) {
                if (!*q) break;
                q++; /* punctuation */
            }
        }
        return NULL;
    }
    if (strcmp(w1, "CREATE") == 0) {
        p = word(p, w2, sizeof(w2));
        if (strcmp(w2, "GLOBAL") == 0 || strcmp(w2, "LOCAL") == 0) word(p, w2, sizeof(w2));
        if (strcmp(w2, "TEMP") == 0 || strcmp(w2, "TEMPORARY") == 0)
            return "a temporary table belongs to the server session";
        return NULL;
    }
    if (contains_ci(sql, "pg_advisory_lock") || contains_ci(sql, "pg_try_advisory_lock"))
        return "a session advisory lock outlives its transaction (use pg_advisory_xact_lock)";
    return NULL;
}

int aorm__pgbouncer_check(aorm_engine *e, const char *sql) {
    if (!e->o.pgbouncer || !sql) return 0;
    const char *why = session_state(sql);
    if (!why) return 0;
    aorm__engine_log(e, AORM_LOG_ERROR, "refused under PgBouncer transaction pooling: %s: %.80s", why, sql);
    return AORM_EMISUSE;
}

/* raw.c -- raw SQL text with named binds.
 *
 * aorm_raw() copies the text and finds its `:name` placeholders once; a
 * compile then writes the text back with each placeholder replaced by
 * $n (the same name, the same n; numbered in order of first appearance,
 * continuing the enclosing statement's sequence for a raw subquery) and
 * appends the bound values in that order.
 *
 * The scanner knows just enough of PostgreSQL's lexical rules to never
 * see a placeholder where there is none: '...' strings ('' escapes),
 * E'...' strings (backslash escapes too), "..." identifiers, $$...$$ and
 * $tag$...$tag$ dollar quotes, -- line comments, nested C-style
 * comments, and `::` casts. A name is [A-Za-z_][A-Za-z0-9_]*; a colon
 * followed by anything else (a digit in an array slice, `:=`, a space)
 * stays as it is. So an array slice with a name for its upper bound is
 * written with a space after the colon: a[lo: hi]. Positional $1 parameters are refused: they would clash
 * with the numbering. An unterminated string, identifier or comment is
 * reported at once (the text cannot be what was meant).
 *
 * Must not: change the text anywhere except at placeholders. */
#include <string.h>

#include "sql/sql_int.h"

static bool ident_start(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || ch >= 0x80;
}

static bool ident_char(unsigned char ch) { return ident_start(ch) || (ch >= '0' && ch <= '9') || ch == '$'; }

static bool name_start(unsigned char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_'; }

static bool name_char(unsigned char ch) { return name_start(ch) || (ch >= '0' && ch <= '9'); }

/* The position after the string literal opening at t[i] (a quote), or 0
 * when unterminated. backslash: E'' rules. */
static size_t skip_string(const char *t, size_t i, bool backslash) {
    for (i++; t[i]; i++) {
        if (backslash && t[i] == '\\') {
            if (!t[i + 1]) return 0;
            i++;
        } else if (t[i] == '\'') {
            if (t[i + 1] == '\'') i++;
            else return i + 1;
        }
    }
    return 0;
}

static size_t skip_quoted_ident(const char *t, size_t i) {
    for (i++; t[i]; i++) {
        if (t[i] == '"') {
            if (t[i + 1] == '"') i++;
            else return i + 1;
        }
    }
    return 0;
}

static int add_placeholder(aorm_stmt *q, size_t start, size_t end, int *cap_ph, int *cap_names) {
    const char *name = q->text + start + 1;
    size_t len = end - start - 1;
    int k = -1;
    for (int i = 0; i < q->nnames; i++)
        if (q->names[i].len == len && memcmp(q->names[i].name, name, len) == 0) {
            k = i;
            break;
        }
    if (k < 0) {
        if (q->nnames == *cap_names) {
            int cap = *cap_names ? *cap_names * 2 : 8;
            aorm__raw_name *n = aorm__arena_alloc(&q->arena, (size_t)cap * sizeof(*n));
            if (!n) return aorm__sql_fail(q, AORM_ENOMEM, NULL);
            if (q->nnames) memcpy(n, q->names, (size_t)q->nnames * sizeof(*n));
            q->names = n;
            *cap_names = cap;
        }
        k = q->nnames++;
        q->names[k] = (aorm__raw_name){name, len, NULL, 0};
    }
    if (q->nph == *cap_ph) {
        int cap = *cap_ph ? *cap_ph * 2 : 8;
        aorm__raw_ph *p = aorm__arena_alloc(&q->arena, (size_t)cap * sizeof(*p));
        if (!p) return aorm__sql_fail(q, AORM_ENOMEM, NULL);
        if (q->nph) memcpy(p, q->ph, (size_t)q->nph * sizeof(*p));
        q->ph = p;
        *cap_ph = cap;
    }
    q->ph[q->nph++] = (aorm__raw_ph){start, end, k};
    return 0;
}

int aorm__sql_raw_parse(aorm_stmt *q) {
    const char *t = q->text;
    int cap_ph = 0, cap_names = 0;
    size_t i = 0;
    while (t[i]) {
        unsigned char ch = (unsigned char)t[i];
        size_t next;
        if (ch == '\'') {
            if (!(next = skip_string(t, i, false))) goto unterminated_string;
            i = next;
        } else if (ch == '"') {
            if (!(next = skip_quoted_ident(t, i)))
                return aorm__sql_fail(q, AORM_EMISUSE, "raw SQL: unterminated quoted identifier at byte %zu", i);
            i = next;
        } else if (ident_start(ch)) {
            size_t s = i;
            while (ident_char((unsigned char)t[i])) i++;
            if (i - s == 1 && (ch == 'E' || ch == 'e') && t[i] == '\'') {
                if (!(next = skip_string(t, i, true))) goto unterminated_string;
                i = next;
            }
        } else if (ch == '$') {
            if (t[i + 1] >= '0' && t[i + 1] <= '9')
                return aorm__sql_fail(q, AORM_EMISUSE,
                                      "raw SQL: positional parameter $%c at byte %zu (use :name placeholders)",
                                      t[i + 1], i);
            size_t j = i + 1;
            if (name_start((unsigned char)t[j]) || (unsigned char)t[j] >= 0x80)
                while (name_char((unsigned char)t[j]) || (unsigned char)t[j] >= 0x80) j++;
            if (t[j] != '$') {
                i++; /* a lone $: not ours to judge */
                continue;
            }
            size_t taglen = j + 1 - i;
            const char *end = t + j + 1;
            for (;;) {
                end = strchr(end, '$');
                if (!end)
                    return aorm__sql_fail(q, AORM_EMISUSE, "raw SQL: unterminated dollar-quoted string at byte %zu", i);
                if (strncmp(end, t + i, taglen) == 0) break;
                end++;
            }
            i = (size_t)(end - t) + taglen;
        } else if (ch == '-' && t[i + 1] == '-') {
            while (t[i] && t[i] != '\n') i++;
        } else if (ch == '/' && t[i + 1] == '*') {
            size_t s = i;
            int depth = 1;
            i += 2;
            while (depth) {
                if (!t[i])
                    return aorm__sql_fail(q, AORM_EMISUSE, "raw SQL: unterminated /* comment at byte %zu", s);
                if (t[i] == '/' && t[i + 1] == '*') {
                    depth++;
                    i += 2;
                } else if (t[i] == '*' && t[i + 1] == '/') {
                    depth--;
                    i += 2;
                } else {
                    i++;
                }
            }
        } else if (ch == ':') {
            if (t[i + 1] == ':') {
                i += 2; /* a cast: the type name that follows is an identifier */
            } else if (name_start((unsigned char)t[i + 1])) {
                size_t s = i;
                i++;
                while (name_char((unsigned char)t[i])) i++;
                int rc = add_placeholder(q, s, i, &cap_ph, &cap_names);
                if (rc) return rc;
            } else {
                i++;
            }
        } else {
            i++;
        }
    }
    return 0;
unterminated_string:
    return aorm__sql_fail(q, AORM_EMISUSE, "raw SQL: unterminated string literal at byte %zu", i);
}

int aorm__sql_raw_emit(aorm_stmt *q, aorm_stmt *root, aorm__buf *b, aorm_params *p) {
    for (int i = 0; i < q->nnames; i++) {
        q->names[i].num = 0;
        if (!q->names[i].value)
            return aorm__sql_fail(root, AORM_EMISUSE, "raw SQL: placeholder :%.*s is not bound",
                                  (int)q->names[i].len, q->names[i].name);
    }
    size_t last = 0;
    int rc = 0;
    for (int i = 0; i < q->nph; i++) {
        const aorm__raw_ph *ph = &q->ph[i];
        aorm__raw_name *nm = &q->names[ph->name];
        rc |= aorm__buf_append(b, q->text + last, ph->start - last);
        if (!nm->num) {
            aorm__sql_param(p, nm->value); /* failures stay in the builder */
            nm->num = p->count;
        }
        char tmp[16];
        int l = 0;
        unsigned u = (unsigned)nm->num;
        do {
            tmp[sizeof(tmp) - 1 - l++] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        tmp[sizeof(tmp) - 1 - l++] = '$';
        rc |= aorm__buf_append(b, tmp + sizeof(tmp) - l, (size_t)l);
        last = ph->end;
    }
    rc |= aorm__buf_append(b, q->text + last, q->text_len - last);
    return rc ? AORM_ENOMEM : 0;
}

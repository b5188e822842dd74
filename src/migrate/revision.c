/* revision.c -- revision files: reading, splitting into statements,
 * checksums, and the graph of a directory.
 *
 * A file is read whole; its SHA-256 (OpenSSL's EVP, from libcrypto) is
 * taken over the exact bytes, so any edit of an applied file -- a changed
 * statement, a comment, the message -- is seen. The header is the run of
 * `-- key: value` lines before the `-- migrate:up` marker; an unknown key
 * is refused (a misspelt `transaction:` must not silently run a CONCURRENTLY
 * build inside a transaction).
 *
 * The graph is checked when the directory is loaded: unique ids, parents
 * that exist, no cycle. The set is stored in graph order (parents first),
 * which is the order upgrades run in; downgrades run it backwards.
 *
 * Owns: every string of a mig_set (freed by aorm__mig_set_free). Must not:
 * touch the database; this file knows nothing of connections. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "aorm/error.h"
#include "migrate/migrate_int.h"

__attribute__((format(printf, 3, 4))) static int say(char *msg, size_t cap, const char *fmt, ...) {
    if (msg && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, cap, fmt, ap);
        va_end(ap);
    }
    return 0;
}

/* n bytes as 2n lower-case hex digits and a NUL. */
static void to_hex(const unsigned char *b, size_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * n] = '\0';
}

int aorm__mig_sha256_hex(const void *data, size_t len, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) return AORM_ENOMEM;
    to_hex(md, 32, out);
    return 0;
}

int aorm__mig_random_id(char out[13]) {
    unsigned char b[6];
    if (RAND_bytes(b, sizeof b) != 1) return AORM_EIO;
    to_hex(b, sizeof b, out);
    return 0;
}

/* =========================================================================
 * Splitting a section into statements
 * ========================================================================= */

void aorm__mig_stmts_free(mig_stmt *v, int n) {
    for (int i = 0; i < n; i++) free(v[i].sql);
    free(v);
}

static bool word_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

/* The first word of a statement, upper-cased into w (cap bytes). */
static void first_word(const char *s, char *w, size_t cap) {
    size_t k = 0;
    while (word_char((unsigned char)*s) && k + 1 < cap) {
        char c = *s++;
        w[k++] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    w[k] = '\0';
}

/* Appends text[from, to) (trimmed at the end) as a statement starting on
 * `line`. Empty statements are skipped. */
static int push_stmt(const char *text, size_t from, size_t to, int line, mig_stmt **v, int *n, bool word_conc,
                     bool *concurrently, bool *txctl) {
    while (to > from && (text[to - 1] == ' ' || text[to - 1] == '\t' || text[to - 1] == '\n' ||
                         text[to - 1] == '\r'))
        to--;
    if (to == from) return 0;
    mig_stmt *nv = realloc(*v, (size_t)(*n + 1) * sizeof(*nv));
    if (!nv) return AORM_ENOMEM;
    *v = nv;
    char *sql = malloc(to - from + 1);
    if (!sql) return AORM_ENOMEM;
    memcpy(sql, text + from, to - from);
    sql[to - from] = '\0';
    nv[*n].sql = sql;
    nv[*n].line = line;
    (*n)++;
    char w[16];
    first_word(sql, w, sizeof w);
    if (!strcmp(w, "BEGIN") || !strcmp(w, "START") || !strcmp(w, "COMMIT") || !strcmp(w, "END") ||
        !strcmp(w, "ROLLBACK") || !strcmp(w, "ABORT"))
        *txctl = true;
    /* CREATE / DROP / REINDEX ... CONCURRENTLY and ALTER TABLE ... DETACH
     * PARTITION ... CONCURRENTLY refuse a transaction block; REFRESH
     * MATERIALIZED VIEW CONCURRENTLY does not */
    if (word_conc && strcmp(w, "REFRESH") != 0) *concurrently = true;
    return 0;
}

/* One pass over the text: `start` is where the current statement's first
 * token began (SIZE_MAX while only blanks and comments were seen), so a
 * statement's line is its first token's, not that of a comment above it. */
int aorm__mig_split(const char *t, int line0, mig_stmt **v, int *n, bool *concurrently, bool *txctl, char *msg,
                    size_t cap) {
    size_t i = 0, start = (size_t)-1;
    int line = line0, start_line = line0;
    bool conc = false;
#define MARK()                   \
    do {                         \
        if (start == (size_t)-1) { \
            start = i;           \
            start_line = line;   \
        }                        \
    } while (0)
    while (t[i]) {
        unsigned char c = (unsigned char)t[i];
        if (c == '\n') {
            line++;
            i++;
        } else if (c == ' ' || c == '\t' || c == '\r') {
            i++;
        } else if (c == '-' && t[i + 1] == '-') {
            while (t[i] && t[i] != '\n') i++;
        } else if (c == '/' && t[i + 1] == '*') {
            int depth = 1, at = line;
            i += 2;
            while (depth) {
                if (!t[i]) return say(msg, cap, "line %d: unterminated /* comment", at), AORM_EMISUSE;
                if (t[i] == '\n') line++;
                if (t[i] == '/' && t[i + 1] == '*') depth++, i += 2;
                else if (t[i] == '*' && t[i + 1] == '/') depth--, i += 2;
                else i++;
            }
        } else if (c == ';') {
            if (start != (size_t)-1) {
                int rc = push_stmt(t, start, i, start_line, v, n, conc, concurrently, txctl);
                if (rc) return rc;
            }
            start = (size_t)-1;
            conc = false;
            i++;
        } else if (c == '\'' || c == '"') {
            MARK();
            /* E'...' takes backslash escapes: the letter before the quote */
            bool bs = c == '\'' && i > 0 && (t[i - 1] == 'E' || t[i - 1] == 'e') &&
                      (i < 2 || !word_char((unsigned char)t[i - 2]));
            int at = line;
            for (i++;; i++) {
                if (!t[i])
                    return say(msg, cap, "line %d: unterminated %s", at,
                               c == '"' ? "quoted identifier" : "string literal"),
                           AORM_EMISUSE;
                if (t[i] == '\n') line++;
                if (bs && t[i] == '\\' && t[i + 1]) {
                    if (t[i + 1] == '\n') line++;
                    i++;
                } else if ((unsigned char)t[i] == c) {
                    if ((unsigned char)t[i + 1] == c) i++;
                    else break;
                }
            }
            i++;
        } else if (c == '$' && (i == 0 || !word_char((unsigned char)t[i - 1]))) {
            MARK();
            size_t j = i + 1;
            while (word_char((unsigned char)t[j]) && !(t[j] >= '0' && t[j] <= '9' && j == i + 1)) j++;
            if (t[j] != '$') { /* $1 or a lone $ */
                i++;
                continue;
            }
            size_t taglen = j + 1 - i;
            int at = line;
            const char *p = t + j + 1;
            for (;;) {
                const char *d = strchr(p, '$');
                if (!d) return say(msg, cap, "line %d: unterminated dollar-quoted string", at), AORM_EMISUSE;
                if (strncmp(d, t + i, taglen) == 0) {
                    for (const char *q = t + i; q < d; q++)
                        if (*q == '\n') line++;
                    i = (size_t)(d - t) + taglen;
                    break;
                }
                p = d + 1;
            }
        } else if (word_char(c)) {
            MARK();
            size_t s = i;
            while (word_char((unsigned char)t[i])) i++;
            if (i - s == 12 && strncasecmp(t + s, "CONCURRENTLY", 12) == 0) conc = true;
        } else {
            MARK();
            i++;
        }
    }
#undef MARK
    if (start != (size_t)-1) return push_stmt(t, start, i, start_line, v, n, conc, concurrently, txctl);
    return 0;
}

/* =========================================================================
 * One file
 * ========================================================================= */

static void rev_free(mig_rev *r) {
    free(r->id);
    for (int i = 0; i < r->nparents; i++) free(r->parents[i]);
    free(r->parents);
    free(r->message);
    free(r->path);
    aorm__mig_stmts_free(r->up, r->nup);
    aorm__mig_stmts_free(r->down, r->ndown);
    free(r->pidx);
    memset(r, 0, sizeof(*r));
}

static char *dup_range(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static int read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return AORM_EIO;
    aorm__buf b = {0};
    char chunk[8192];
    size_t k;
    int rc = 0;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (aorm__buf_append(&b, chunk, k) < 0) {
            rc = AORM_ENOMEM;
            break;
        }
    if (!rc && ferror(f)) rc = AORM_EIO;
    fclose(f);
    if (!rc && aorm__buf_putc(&b, '\0') < 0) rc = AORM_ENOMEM;
    if (rc) {
        aorm__buf_free(&b);
        return rc;
    }
    *out = b.data;
    *len = b.len - 1;
    return 0;
}

/* Is the line at p (up to its end) exactly the marker `-- migrate:<what>`,
 * blanks allowed around? */
static bool is_marker(const char *p, const char *e, const char *what) {
    while (p < e && (*p == ' ' || *p == '\t')) p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) e--;
    size_t wl = strlen(what);
    if ((size_t)(e - p) < 3 + 8 + wl || strncmp(p, "--", 2) != 0) return false;
    p += 2;
    while (p < e && *p == ' ') p++;
    return (size_t)(e - p) == 8 + wl && strncmp(p, "migrate:", 8) == 0 && strncmp(p + 8, what, wl) == 0;
}

/* Parses the text of one file into r (path already set). */
static int parse_rev(mig_rev *r, const char *text, char *msg, size_t cap) {
    const char *fn = r->filename;
    const char *p = text;
    int line = 1, up_line = 0, down_line = 0;
    const char *up = NULL, *up_end = NULL, *down = NULL;
    bool have_id = false, have_parents = false, have_msg = false;
    r->transactional = true;
    /* header, up to the up marker */
    while (*p) {
        const char *e = strchr(p, '\n');
        if (!e) e = p + strlen(p);
        if (is_marker(p, e, "up")) {
            up = *e ? e + 1 : e;
            up_line = line + 1;
            p = up;
            line++;
            break;
        }
        const char *q = p;
        while (q < e && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < e && strncmp(q, "--", 2) != 0)
            return say(msg, cap, "%s:%d: SQL before the `-- migrate:up` line", fn, line), AORM_EMISUSE;
        if (q < e) {
            q += 2;
            while (q < e && *q == ' ') q++;
            const char *colon = memchr(q, ':', (size_t)(e - q));
            const char *k = q;
            size_t kl = colon ? (size_t)(colon - k) : 0;
            bool known = colon && kl > 0;
            for (size_t x = 0; known && x < kl; x++) known = word_char((unsigned char)k[x]);
            if (known) {
                const char *v = colon + 1;
                const char *ve = e;
                while (v < ve && (*v == ' ' || *v == '\t')) v++;
                while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t' || ve[-1] == '\r')) ve--;
                if (kl == 8 && !strncmp(k, "revision", 8)) {
                    if (!(r->id = dup_range(v, (size_t)(ve - v)))) return AORM_ENOMEM;
                    have_id = true;
                } else if (kl == 7 && !strncmp(k, "message", 7)) {
                    if (!(r->message = dup_range(v, (size_t)(ve - v)))) return AORM_ENOMEM;
                    have_msg = true;
                } else if (kl == 7 && !strncmp(k, "parents", 7)) {
                    have_parents = true;
                    const char *s = v;
                    while (s < ve) {
                        while (s < ve && (*s == ' ' || *s == ',')) s++;
                        const char *w = s;
                        while (s < ve && *s != ' ' && *s != ',') s++;
                        if (s == w) break;
                        char **np = realloc(r->parents, (size_t)(r->nparents + 1) * sizeof(*np));
                        if (!np) return AORM_ENOMEM;
                        r->parents = np;
                        if (!(np[r->nparents] = dup_range(w, (size_t)(s - w)))) return AORM_ENOMEM;
                        r->nparents++;
                    }
                } else if (kl == 11 && !strncmp(k, "transaction", 11)) {
                    size_t vl = (size_t)(ve - v);
                    if (vl == 5 && !strncasecmp(v, "false", 5)) r->transactional = false;
                    else if (vl == 4 && !strncasecmp(v, "true", 4)) r->transactional = true;
                    else
                        return say(msg, cap, "%s:%d: `transaction:` takes true or false", fn, line), AORM_EMISUSE;
                } else {
                    return say(msg, cap, "%s:%d: unknown header key `%.*s` (revision, parents, message, transaction)",
                               fn, line, (int)kl, k),
                           AORM_EMISUSE;
                }
            }
        }
        p = *e ? e + 1 : e;
        line++;
    }
    if (!up) return say(msg, cap, "%s: no `-- migrate:up` line", fn), AORM_EMISUSE;
    if (!have_id || !r->id[0]) return say(msg, cap, "%s: no `-- revision:` in the header", fn), AORM_EMISUSE;
    if (!have_parents) return say(msg, cap, "%s: no `-- parents:` in the header (empty for a root)", fn), AORM_EMISUSE;
    if (!have_msg && !(r->message = aorm__strdup(""))) return AORM_ENOMEM;
    /* the down marker ends the up section */
    while (*p) {
        const char *e = strchr(p, '\n');
        if (!e) e = p + strlen(p);
        if (is_marker(p, e, "up"))
            return say(msg, cap, "%s:%d: a second `-- migrate:up`", fn, line), AORM_EMISUSE;
        if (is_marker(p, e, "down")) {
            up_end = p;
            down = *e ? e + 1 : e;
            down_line = line + 1;
            break;
        }
        p = *e ? e + 1 : e;
        line++;
    }
    if (!down) return say(msg, cap, "%s: no `-- migrate:down` line (it may be followed by nothing)", fn), AORM_EMISUSE;
    for (const char *q = down; (q = strstr(q, "migrate:")); q++) {
        const char *bol = q;
        while (bol > down && bol[-1] != '\n') bol--;
        const char *e = strchr(q, '\n');
        if (!e) e = q + strlen(q);
        if (is_marker(bol, e, "up") || is_marker(bol, e, "down"))
            return say(msg, cap, "%s: a second section marker after `-- migrate:down`", fn), AORM_EMISUSE;
    }
    char *uptext = dup_range(up, (size_t)(up_end - up));
    if (!uptext) return AORM_ENOMEM;
    bool conc = false, txctl = false;
    char why[256] = "";
    int rc = aorm__mig_split(uptext, up_line, &r->up, &r->nup, &conc, &txctl, why, sizeof why);
    free(uptext);
    if (rc == 0) rc = aorm__mig_split(down, down_line, &r->down, &r->ndown, &conc, &txctl, why, sizeof why);
    if (rc == AORM_EMISUSE) return say(msg, cap, "%s: %s", fn, why), rc;
    if (rc) return rc;
    if (txctl)
        return say(msg, cap,
                   "%s: holds a transaction statement (BEGIN, COMMIT, ROLLBACK...): the runner opens and "
                   "closes transactions itself (`-- transaction: false` runs a file without one)",
                   fn),
               AORM_EMISUSE;
    if (conc && r->transactional)
        return say(msg, cap,
                   "%s: CONCURRENTLY cannot run inside a transaction block: add `-- transaction: false` to "
                   "the header",
                   fn),
               AORM_EMISUSE;
    return 0;
}

/* =========================================================================
 * The directory and its graph
 * ========================================================================= */

void aorm__mig_set_free(mig_set *s) {
    for (int i = 0; i < s->n; i++) rev_free(&s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int aorm__mig_find(const mig_set *s, const char *id) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->v[i].id, id) == 0) return i;
    int found = -1;
    size_t l = strlen(id);
    if (l == 0) return -1;
    for (int i = 0; i < s->n; i++)
        if (strncmp(s->v[i].id, id, l) == 0) {
            if (found >= 0) return -2;
            found = i;
        }
    return found;
}

void aorm__mig_ancestors(const mig_set *s, int i, bool *need) {
    if (need[i]) return;
    need[i] = true;
    for (int k = 0; k < s->v[i].nparents; k++) aorm__mig_ancestors(s, s->v[i].pidx[k], need);
}

/* Puts the revisions (sorted by file name) in graph order and resolves
 * parents to indexes. */
static int order_graph(mig_set *s, aorm_migrate_problem *problem, char *msg, size_t cap) {
    int n = s->n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(s->v[i].id, s->v[j].id)) {
                *problem = AORM_MIGRATE_BAD_GRAPH;
                return say(msg, cap, "revision %s is declared by both %s and %s", s->v[i].id, s->v[j].filename,
                           s->v[i].filename),
                       AORM_EMISUSE;
            }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < s->v[i].nparents; k++) {
            bool found = false;
            for (int j = 0; j < n && !found; j++) found = !strcmp(s->v[j].id, s->v[i].parents[k]);
            if (!found) {
                *problem = AORM_MIGRATE_BAD_GRAPH;
                return say(msg, cap, "%s: parent %s is not a revision of the directory", s->v[i].filename,
                           s->v[i].parents[k]),
                       AORM_EMISUSE;
            }
        }
    mig_rev *out = calloc((size_t)n + 1, sizeof(*out));
    bool *placed = calloc((size_t)n + 1, sizeof(*placed));
    if (!out || !placed) {
        free(out);
        free(placed);
        return AORM_ENOMEM;
    }
    int k;
    for (k = 0; k < n; k++) {
        int pick = -1;
        for (int i = 0; i < n && pick < 0; i++) {
            if (placed[i]) continue;
            bool ready = true;
            for (int p = 0; p < s->v[i].nparents && ready; p++)
                for (int j = 0; j < n; j++)
                    if (!placed[j] && !strcmp(s->v[j].id, s->v[i].parents[p])) ready = false;
            if (ready) pick = i;
        }
        if (pick < 0) break;
        placed[pick] = true;
        out[k] = s->v[pick];
    }
    if (k < n) {
        const char *left = "";
        for (int i = 0; i < n; i++)
            if (!placed[i]) left = s->v[i].filename;
        *problem = AORM_MIGRATE_BAD_GRAPH;
        say(msg, cap, "the parents form a cycle (through %s)", left);
        free(out);
        free(placed);
        return AORM_EMISUSE;
    }
    free(placed);
    free(s->v);
    s->v = out;
    for (int i = 0; i < n; i++) {
        mig_rev *r = &s->v[i];
        r->head = true;
        if (!(r->pidx = calloc((size_t)r->nparents + 1, sizeof(int)))) return AORM_ENOMEM;
        for (int p = 0; p < r->nparents; p++) r->pidx[p] = aorm__mig_find(s, r->parents[p]);
    }
    for (int i = 0; i < n; i++)
        for (int p = 0; p < s->v[i].nparents; p++) s->v[s->v[i].pidx[p]].head = false;
    return 0;
}

int aorm__mig_load(const char *dir, mig_set *out, aorm_migrate_problem *problem, char *msg, size_t cap) {
    memset(out, 0, sizeof(*out));
    *problem = AORM_MIGRATE_BAD_FILE;
    DIR *d = opendir(dir);
    if (!d) return say(msg, cap, "cannot open the revision directory %s: %s", dir, strerror(errno)), AORM_EIO;
    char **names = NULL;
    int nn = 0, rc = 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 4, ".sql") != 0 || de->d_name[0] == '.') continue;
        char **nv = realloc(names, (size_t)(nn + 1) * sizeof(*nv));
        if (!nv || !(nv[nn] = aorm__strdup(de->d_name))) {
            if (nv) names = nv;
            rc = AORM_ENOMEM;
            break;
        }
        names = nv;
        nn++;
    }
    closedir(d);
    if (!rc && nn) qsort(names, (size_t)nn, sizeof(*names), cmp_str);
    if (!rc && nn && !(out->v = calloc((size_t)nn, sizeof(*out->v)))) rc = AORM_ENOMEM;
    for (int i = 0; i < nn && !rc; i++) {
        mig_rev *r = &out->v[out->n++];
        size_t pl = strlen(dir) + 1 + strlen(names[i]) + 1;
        if (!(r->path = malloc(pl))) {
            rc = AORM_ENOMEM;
            break;
        }
        snprintf(r->path, pl, "%s/%s", dir, names[i]);
        r->filename = r->path + strlen(dir) + 1;
        char *text = NULL;
        size_t len = 0;
        if ((rc = read_file(r->path, &text, &len))) {
            if (rc == AORM_EIO) say(msg, cap, "cannot read %s: %s", r->path, strerror(errno));
            break;
        }
        if (strlen(text) != len) {
            say(msg, cap, "%s: holds a NUL byte", r->filename);
            rc = AORM_EMISUSE;
        }
        if (!rc) rc = aorm__mig_sha256_hex(text, len, r->checksum);
        if (!rc) rc = parse_rev(r, text, msg, cap);
        free(text);
    }
    for (int i = 0; i < nn; i++) free(names[i]);
    free(names);
    if (!rc) rc = order_graph(out, problem, msg, cap);
    if (rc == AORM_ENOMEM) say(msg, cap, "out of memory");
    if (rc) aorm__mig_set_free(out);
    else *problem = AORM_MIGRATE_OK;
    return rc;
}

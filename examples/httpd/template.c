/* template.c -- the fortunes template (template.h). */
#include "template.h"

#include <stdlib.h>
#include <string.h>

typedef enum piece_kind { P_TEXT, P_VAR, P_BEGIN, P_END } piece_kind;

typedef struct piece {
    piece_kind kind;
    const char *text; /* P_TEXT: into the template; P_VAR: the name (malloc'd) */
    size_t len;
    int end;          /* P_BEGIN: index of its P_END */
} piece;

struct tmpl {
    piece *p;
    int n;
};

void buf_append(buf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) { b->failed = 1; return; }
        b->data = d, b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

void buf_puts(buf *b, const char *s) { buf_append(b, s, strlen(s)); }

void buf_html(buf *b, const char *s) {
    const char *run = s;
    for (; *s; s++) {
        const char *esc;
        switch (*s) {
        case '&': esc = "&amp;"; break;
        case '<': esc = "&lt;"; break;
        case '>': esc = "&gt;"; break;
        case '"': esc = "&quot;"; break;
        case '\'': esc = "&#39;"; break;
        default: continue;
        }
        buf_append(b, run, (size_t)(s - run));
        buf_puts(b, esc);
        run = s + 1;
    }
    buf_append(b, run, (size_t)(s - run));
}

void buf_free(buf *b) {
    free(b->data);
    *b = (buf){0};
}

static int add(tmpl *t, piece pc) {
    piece *p = realloc(t->p, (size_t)(t->n + 1) * sizeof *p);
    if (!p) return -1;
    t->p = p;
    t->p[t->n++] = pc;
    return 0;
}

tmpl *tmpl_compile(const char *text, char *err, size_t cap) {
    tmpl *t = calloc(1, sizeof *t);
    int open = -1;
    const char *why = "out of memory";
    if (!t) goto fail;
    for (const char *s = text; *s;) {
        const char *o = strstr(s, "{{");
        if (!o) { if (add(t, (piece){P_TEXT, s, strlen(s), 0})) goto fail; break; }
        if (o > s && add(t, (piece){P_TEXT, s, (size_t)(o - s), 0})) goto fail;
        const char *c = strstr(o, "}}");
        if (!c) { why = "unclosed {{"; goto fail; }
        piece_kind k = o[2] == '#' ? P_BEGIN : o[2] == '/' ? P_END : P_VAR;
        const char *name = o + 2 + (k != P_VAR);
        size_t len = (size_t)(c - name);
        if (len == 0) { why = "empty {{}}"; goto fail; }
        char *copy = strndup(name, len);
        if (!copy || add(t, (piece){k, copy, len, 0})) { free(copy); goto fail; }
        if (k == P_BEGIN) {
            if (open >= 0) { why = "nested sections are not supported"; goto fail; }
            open = t->n - 1;
        } else if (k == P_END) {
            if (open < 0 || strcmp(t->p[open].text, copy) != 0) { why = "{{/...}} does not match its section"; goto fail; }
            t->p[open].end = t->n - 1;
            open = -1;
        }
        s = c + 2;
    }
    if (open >= 0) { why = "unclosed section"; goto fail; }
    return t;
fail:
    if (err && cap) {
        strncpy(err, why, cap - 1);
        err[cap - 1] = 0;
    }
    tmpl_free(t);
    return NULL;
}

void tmpl_free(tmpl *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++)
        if (t->p[i].kind != P_TEXT) free((char *)t->p[i].text);
    free(t->p);
    free(t);
}

static void render_range(const tmpl *t, int from, int to, buf *out, int row, tmpl_value_fn value, void *ctx) {
    char scratch[64];
    for (int i = from; i < to; i++) {
        const piece *p = &t->p[i];
        switch (p->kind) {
        case P_TEXT: buf_append(out, p->text, p->len); break;
        case P_VAR: {
            const char *v = value(ctx, row, p->text, scratch);
            if (v) buf_html(out, v);
            break;
        }
        case P_BEGIN: i = p->end; break; /* handled by tmpl_render */
        case P_END: break;
        }
    }
}

void tmpl_render(const tmpl *t, buf *out, int nrows, tmpl_value_fn value, void *ctx) {
    int start = 0;
    for (int i = 0; i < t->n; i++) {
        if (t->p[i].kind != P_BEGIN) continue;
        render_range(t, start, i, out, -1, value, ctx);
        for (int r = 0; r < nrows; r++) render_range(t, i + 1, t->p[i].end, out, r, value, ctx);
        i = t->p[i].end;
        start = i + 1;
    }
    render_range(t, start, t->n, out, -1, value, ctx);
}

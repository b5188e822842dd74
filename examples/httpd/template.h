/* template.h -- a tiny compiled HTML template: literal text, {{name}}
 * (HTML-escaped) and one level of {{#rows}}...{{/rows}} sections, enough
 * for the fortunes page. Compiled once at start-up; rendering appends to a
 * growable buffer and never allocates per value. */
#ifndef HTTPD_TEMPLATE_H
#define HTTPD_TEMPLATE_H

#include <stddef.h>

typedef struct tmpl tmpl;

/** A growable output buffer (data malloc'd, owned by the caller). */
typedef struct buf {
    char *data;
    size_t len, cap;
    int failed; /**< an append ran out of memory */
} buf;

void buf_append(buf *b, const char *s, size_t n);
void buf_puts(buf *b, const char *s);
/** Appends s with & < > " ' escaped. */
void buf_html(buf *b, const char *s);
void buf_free(buf *b);

/** Compiles text (kept by pointer: a string constant). NULL on a syntax
 * error or out of memory, with the reason in err. */
tmpl *tmpl_compile(const char *text, char *err, size_t cap);
void tmpl_free(tmpl *t);

/** Value of {{name}} for row `row` of the section (row -1 outside any
 * section); NULL renders nothing. scratch (64 bytes) is for numbers. */
typedef const char *(*tmpl_value_fn)(void *ctx, int row, const char *name, char *scratch);

/** Renders with `nrows` rows for every section. */
void tmpl_render(const tmpl *t, buf *out, int nrows, tmpl_value_fn value, void *ctx);

#endif

/* models.h -- the bookstore: authors, books, tags and the book_tags
 * association, mapped onto the reference schema (bench/schema.sql).
 * Shared by the examples, the tests and the benchmarks. */
#ifndef BOOKSTORE_MODELS_H
#define BOOKSTORE_MODELS_H

#include <aorm/model.h>

typedef struct author {
    int64_t id;
    char *name;
    aorm_opt_int32 born;     /* NULL when unknown */
    aorm_list books;         /* struct book *, ordered by id */
} author;

typedef struct book {
    int64_t id;
    int64_t author_id;
    char *title;
    int32_t year;
    double price;
    struct author *author;   /* many-to-one */
    aorm_list tags;          /* struct tag *, through book_tags */
} book;

typedef struct tag {
    int64_t id;
    char *name;
} tag;

typedef struct book_tag {
    int64_t book_id;
    int64_t tag_id;
} book_tag;

/* bulk_books: the target of the bulk-insert benchmarks */
typedef struct bulk_book {
    int64_t id;
    int64_t author_id;
    char *title;
    int32_t year;
    double price;
} bulk_book;

extern const aorm_model author_model, book_model, tag_model, book_tag_model, bulk_book_model;

#endif

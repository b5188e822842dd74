/* models.c -- the bookstore models' declarations. */
#include "models.h"

static const aorm_column author_columns[] = {
    AORM_COLUMN(author, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(author, name, AORM_TEXT, 0),
    AORM_COLUMN(author, born, AORM_INT4, AORM_NULLABLE),
};
static const aorm_relationship author_relationships[] = {
    AORM_ONE_TO_MANY(author, books, book, author_id, .back_populates = "author"),
};
const aorm_model author_model = {
    AORM_MODEL_OF(author, "authors"),
    AORM_COLUMNS(author_columns),
    AORM_RELATIONSHIPS(author_relationships),
};

static const aorm_column book_columns[] = {
    AORM_COLUMN(book, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(book, author_id, AORM_INT8, 0),
    AORM_COLUMN(book, title, AORM_TEXT, 0),
    AORM_COLUMN(book, year, AORM_INT4, 0),
    AORM_COLUMN(book, price, AORM_FLOAT8, 0),
};
static const aorm_foreign_key book_foreign_keys[] = {
    AORM_FOREIGN_KEY(book, author_id, author, id),
};
static const aorm_relationship book_relationships[] = {
    AORM_MANY_TO_ONE(book, author, author, author_id, .back_populates = "books"),
    AORM_MANY_TO_MANY(book, tags, tag, book_tag, book_id, tag_id),
};
const aorm_model book_model = {
    AORM_MODEL_OF(book, "books"),
    AORM_COLUMNS(book_columns),
    AORM_FOREIGN_KEYS(book_foreign_keys),
    AORM_RELATIONSHIPS(book_relationships),
};

static const aorm_column tag_columns[] = {
    AORM_COLUMN(tag, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(tag, name, AORM_TEXT, AORM_UNIQUE),
};
const aorm_model tag_model = {
    AORM_MODEL_OF(tag, "tags"),
    AORM_COLUMNS(tag_columns),
};

static const aorm_column book_tag_columns[] = {
    AORM_COLUMN(book_tag, book_id, AORM_INT8, AORM_PK),
    AORM_COLUMN(book_tag, tag_id, AORM_INT8, AORM_PK),
};
static const aorm_foreign_key book_tag_foreign_keys[] = {
    AORM_FOREIGN_KEY(book_tag, book_id, book, id),
    AORM_FOREIGN_KEY(book_tag, tag_id, tag, id),
};
const aorm_model book_tag_model = {
    AORM_MODEL_OF(book_tag, "book_tags"),
    AORM_COLUMNS(book_tag_columns),
    AORM_FOREIGN_KEYS(book_tag_foreign_keys),
};

static const aorm_column bulk_book_columns[] = {
    AORM_COLUMN(bulk_book, id, AORM_INT8, AORM_PK | AORM_SERIAL),
    AORM_COLUMN(bulk_book, author_id, AORM_INT8, 0),
    AORM_COLUMN(bulk_book, title, AORM_TEXT, 0),
    AORM_COLUMN(bulk_book, year, AORM_INT4, 0),
    AORM_COLUMN(bulk_book, price, AORM_FLOAT8, 0),
};
const aorm_model bulk_book_model = {
    AORM_MODEL_OF(bulk_book, "bulk_books"),
    AORM_COLUMNS(bulk_book_columns),
};

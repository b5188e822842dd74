/* reports.c -- the bookstore's report in Core (reports.h). */
#include "reports.h"

#include "models.h"

aorm_stmt *bookstore_top_books_report(int64_t first_author, int64_t last_author, int64_t top) {
    /* WITH totals AS (per-author aggregates) */
    aorm_stmt *totals = aorm_select_columns(AORM_COL(book, author_id), aorm_label(aorm_sum(AORM_COL(book, price)), "total"),
                                            aorm_label(aorm_count_all(), "books"));
    aorm_where(totals, aorm_between(AORM_COL(book, author_id), aorm_int8(first_author), aorm_int8(last_author)));
    aorm_group_by(totals, AORM_COL(book, author_id));
    /* ranked AS (every book with its rank inside its author) */
    aorm_stmt *ranked = aorm_select_columns(
        AORM_COL(book, author_id), AORM_COL(book, title), AORM_COL(book, price),
        aorm_label(aorm_over(aorm_rank(), aorm_list(AORM_COL(book, author_id)),
                             aorm_list(aorm_desc(AORM_COL(book, price)), AORM_COL(book, id))),
                   "pos"));
    aorm_where(ranked, aorm_between(AORM_COL(book, author_id), aorm_int8(first_author), aorm_int8(last_author)));
    aorm_stmt *q = aorm_select_columns(AORM_COL(author, name), aorm_ref("ranked", "title"), aorm_ref("ranked", "price"),
                                       aorm_ref("ranked", "pos"), aorm_ref("totals", "total"), aorm_ref("totals", "books"));
    aorm_with(q, "totals", totals); /* q takes over both statements, also when it is NULL */
    aorm_with(q, "ranked", ranked);
    aorm_join_cte(q, "ranked", NULL, aorm_eq(aorm_ref("ranked", "author_id"), AORM_COL(author, id)), 0);
    aorm_join_cte(q, "totals", NULL, aorm_eq(aorm_ref("totals", "author_id"), AORM_COL(author, id)), 0);
    aorm_where(q, aorm_le(aorm_ref("ranked", "pos"), aorm_int8(top)));
    aorm_order_by(q, AORM_COL(author, id), AORM_ASC);
    aorm_order_by(q, aorm_ref("ranked", "pos"), AORM_ASC);
    return q;
}

/* reports.h -- a report of the bookstore written in Core (several CTEs
 * and a window function), shared by the tests and the benchmarks; the
 * guide's "Reporting queries in Core" shows the same statement. */
#ifndef BOOKSTORE_REPORTS_H
#define BOOKSTORE_REPORTS_H

#include <stdint.h>

#include <aorm/sql.h>

/* For each author of id first_author..last_author: the `top` dearest books
 * (ties by id), with columns name, title, price, pos (the book's rank in
 * its author), total (the author's prices summed) and books (how many the
 * author has), ordered by author id, then pos. A new statement (NULL on
 * out of memory); its five parameters are first_author, last_author (twice)
 * and top, all int8. */
aorm_stmt *bookstore_top_books_report(int64_t first_author, int64_t last_author, int64_t top);

#endif

#!/bin/sh
# doxygen-md-filter.sh FILE -- Doxygen's input filter for the Markdown pages
# (Doxyfile.in, FILTER_PATTERNS): the links of doxygen-md.sed, and links to
# a heading of the same page ("](#some-heading)"), which Doxygen cannot
# resolve (it numbers its headings), pointed at the page itself.
case $1 in
*guide.md) page=md_docs_guide.html ;;
*fault-matrix.md) page=md_docs_fault_matrix.html ;;
*) page=index.html ;;
esac
exec sed -f "$(dirname "$0")/doxygen-md.sed" -e "s|](#[^)]*)|]($page)|g" "$1"

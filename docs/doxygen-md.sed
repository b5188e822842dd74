# doxygen-md.sed: the link rewrites of Doxygen's input filter for README.md and
# docs/*.md (doxygen-md-filter.sh). The Markdown files link the way GitHub
# reads them (include/aorm/engine.h, docs/guide.md#7-the-session); in the
# API reference those pages have other names, so the links are rewritten
# to them. Doxygen names its guide headings by number, not by their text,
# so a link into a section of the guide lands on the guide's page.
s|(include/aorm/\([a-z]*\)\.h)|(\1_8h.html)|g
s|(\(\.\./\)\{0,1\}docs/guide\.md\(#[^)]*\)\{0,1\})|(md_docs_guide.html)|g
s|(guide\.md\(#[^)]*\)\{0,1\})|(md_docs_guide.html)|g
s|(\(\.\./\)\{0,1\}docs/fault-matrix\.md\(#[^)]*\)\{0,1\})|(md_docs_fault_matrix.html)|g
s|(fault-matrix\.md\(#[^)]*\)\{0,1\})|(md_docs_fault_matrix.html)|g
s|(\.\./README\.md\(#[^)]*\)\{0,1\})|(index.html)|g

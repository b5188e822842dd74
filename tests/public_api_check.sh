#!/usr/bin/env bash
# public_api_check.sh INCLUDE_DIR -- rules every public header keeps:
#   1. no internal symbol: nothing named aorm__* (functions, types,
#      variables) appears in a public header. Internal helper *macros*
#      (AORM__*) may, since the public macros expand to them.
#   2. every options struct `aorm_X_options` has `aorm_X_options_init()`
#      declared in the same header.
#   3. every header opens with a Doxygen @file comment that names its
#      handles and says who owns them (a line "Handles and ownership"), and
#      which calls are allowed from inside which callbacks (a line
#      "Callbacks"), so a reader finds both without opening a .c file.
set -euo pipefail
dir=$1
status=0
for h in "$dir"/*.h; do
    n=${h##*/}
    if grep -n 'aorm__' "$h"; then
        echo "public_api_check: $n names an internal aorm__ symbol (above)" >&2
        status=1
    fi
    for o in $(grep -o 'typedef struct aorm_[a-z0-9_]*_options\b' "$h" | awk '{print $3}'); do
        if ! grep -q "${o}_init(" "$h"; then
            echo "public_api_check: $n: $o has no ${o}_init()" >&2
            status=1
        fi
    done
    case $n in
    export.h | aorm.h) continue ;; # no handles, no callbacks
    esac
    # (the opening comment is read into a variable first: a `grep -q` that
    # stops reading early would make the writer of a pipe fail under pipefail)
    opening=$(awk '/\*\//{print; exit} {print}' "$h")
    case $opening in
    "/** @file"*) ;;
    *) echo "public_api_check: $n does not open with /** @file" >&2; status=1 ;;
    esac
    for section in 'Handles and ownership' 'Callbacks'; do
        if ! grep -c "$section" <<<"$opening" >/dev/null; then
            echo "public_api_check: $n: its opening comment has no \"$section\" paragraph" >&2
            status=1
        fi
    done
done
[ $status -eq 0 ] && echo "public_api_check: $(ls "$dir"/*.h | wc -l) headers checked"
exit $status

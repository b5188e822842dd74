#!/usr/bin/env bash
# run.sh BUILD_DIR SOURCE_DIR [EXTRA_FLAGS]
#
# The install-and-consume test: installs the build in BUILD_DIR to a
# temporary, non-default prefix, moves the installed tree somewhere else
# (so that any absolute path written at install time would show), and then
# builds and runs tests/install/consumer.c four ways:
#   - pkg-config, shared library, with a pkg-config search path that holds
#     aorm.pc alone (libpq's, hiredis's and libxxhash's .pc files are not
#     visible: a consumer must not need them);
#   - pkg-config --static, linking libaorm.a;
#   - CMake find_package(aorm), target aorm::aorm (again with aorm.pc as
#     the only .pc file in sight);
#   - CMake find_package(aorm COMPONENTS static), target aorm::aorm_static.
# It also checks that `pkg-config --cflags aorm` names aorm's include
# directory and nothing else. EXTRA_FLAGS (the sanitizer flags of a
# sanitizer build) are passed to every compile and link.
set -euo pipefail
build=$1
src=$2
extra=${3:-}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/aorm-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

fail() { echo "install_consume: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$tmp/stage" >"$tmp/install.log" || { cat "$tmp/install.log"; fail "install failed"; }
mv "$tmp/stage" "$tmp/moved"
prefix="$tmp/moved"
if grep -rl -- "$tmp/stage" "$prefix" >/dev/null 2>&1; then
    fail "the installed tree names its install prefix: $(grep -rl -- "$tmp/stage" "$prefix" | tr '\n' ' ')"
fi

pcfile=$(find "$prefix" -name aorm.pc -print -quit)
[ -n "$pcfile" ] || fail "no aorm.pc installed"
pcdir=$(dirname "$pcfile")
export PKG_CONFIG_LIBDIR="$pcdir"
unset PKG_CONFIG_PATH
libdir=$(pkg-config --variable=libdir aorm)
[ -e "$libdir/libaorm.so" ] || fail "pkg-config's libdir $libdir holds no libaorm.so"

cflags=$(pkg-config --cflags aorm)
incdir=$(cd "$(pkg-config --variable=includedir aorm)" && pwd)
[ "$incdir" = "$prefix/include" ] || fail "includedir is $incdir, not $prefix/include"
for f in $cflags; do
    case "$f" in
    -I*) [ "$(cd "${f#-I}" && pwd)" = "$prefix/include" ] || fail "Cflags names more than aorm's headers: $cflags" ;;
    *) fail "Cflags carries '$f' (only -I of aorm's include directory expected): $cflags" ;;
    esac
done

cc=${CC:-cc}
# shellcheck disable=SC2086
$cc -std=c11 -Wall -Wextra -Wpedantic -Werror $extra $cflags "$src/consumer.c" -o "$tmp/pc_shared" \
    $(pkg-config --libs aorm) -Wl,-rpath,"$libdir"
"$tmp/pc_shared"
# shellcheck disable=SC2086
$cc -std=c11 -Wall -Wextra -Wpedantic -Werror $extra -DAORM_STATIC $cflags "$src/consumer.c" -o "$tmp/pc_static" \
    -Wl,-Bstatic -laorm -Wl,-Bdynamic $(pkg-config --static --libs aorm | sed 's/\(^\| \)-laorm\( \|$\)/ /')
if ldd "$tmp/pc_static" | grep -c libaorm >/dev/null; then fail "the --static link used libaorm.so"; fi
"$tmp/pc_static"

for kind in shared static; do
    on=OFF; pcenv=(PKG_CONFIG_LIBDIR="$pcdir")
    # the static archive's dependencies are found through the system's .pc
    # files; the shared library needs none, so that run still sees aorm.pc alone
    if [ "$kind" = static ]; then on=ON; pcenv=(-u PKG_CONFIG_LIBDIR); fi
    env "${pcenv[@]}" cmake -S "$src" -B "$tmp/cm_$kind" -DCMAKE_PREFIX_PATH="$prefix" -DAORM_CONSUMER_STATIC=$on \
        -DCMAKE_C_FLAGS="$extra" -DCMAKE_EXE_LINKER_FLAGS="$extra" \
        >"$tmp/cm_$kind.log" 2>&1 || { cat "$tmp/cm_$kind.log"; fail "CMake ($kind) could not configure the consumer"; }
    cmake --build "$tmp/cm_$kind" >>"$tmp/cm_$kind.log" 2>&1 || { cat "$tmp/cm_$kind.log"; fail "CMake ($kind) could not build the consumer"; }
    "$tmp/cm_$kind/consumer"
done
if ldd "$tmp/cm_static/consumer" | grep -c libaorm >/dev/null; then fail "aorm::aorm_static linked libaorm.so"; fi
echo "install_consume: pkg-config and CMake consumers built and ran against $prefix"

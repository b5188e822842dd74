#!/usr/bin/env bash
# secret_grep.sh BUILD_DIR -- the last step of a test run (ctest entry
# zz_secret_grep): no password of the sandbox appears in anything the run
# wrote, that is every line the test kit recorded (each engine's log at
# every level, the SQL echo, every error message: $AORM_TEST_LOG_DIR), the
# ctest output so far (BUILD_DIR/Testing/Temporary/LastTest*.log) and the
# servers' own logs. Fails when there is nothing to search (no log was
# collected, or the sandbox has no passwords: --insecure), and checks first
# that the search would find a planted secret.
set -euo pipefail

die() { echo "zz_secret_grep: FAIL: $*" >&2; exit 1; }

build_dir=${1:?usage: secret_grep.sh BUILD_DIR}
dir=${AORM_SANDBOX_DIR:-}
logs=${AORM_TEST_LOG_DIR:-}
[ -n "$dir" ] && [ -d "$dir" ] || die "AORM_SANDBOX_DIR is not set: run the tests through scripts/sandbox"
[ "${AORM_SANDBOX_MODE:-}" = secure ] ||
    die "the sandbox runs --insecure: it has no passwords to look for"
[ -n "$logs" ] && [ -d "$logs" ] || die "AORM_TEST_LOG_DIR is not set or missing"

# The patterns live in a private file, never on a command line.
patterns=$(mktemp)
planted=$(mktemp)
trap 'rm -f "$patterns" "$planted"' EXIT
n=0
for f in "$dir"/secrets/*; do
    [ -f "$f" ] || continue
    IFS= read -r pw <"$f" || true
    [ "${#pw}" -ge 16 ] || die "secret ${f##*/} is missing or too short"
    printf '%s\n' "$pw" >>"$patterns"
    n=$((n + 1))
done
[ "$n" -ge 5 ] || die "expected the sandbox's 5 passwords in $dir/secrets, found $n"

# What there is to search.
files=()
lines=0
for f in "$logs"/*.log; do
    [ -f "$f" ] || continue
    files+=("$f")
    lines=$((lines + $(wc -l <"$f")))
done
[ "${#files[@]}" -gt 0 ] || die "no log was collected in $logs: the test kit recorded nothing"
[ "$lines" -gt 0 ] || die "the collected logs in $logs are empty"
# the kit must have seen engines at work
grep -l '^engine ' "${files[@]}" >/dev/null || die "no engine log line was collected"
for f in "$build_dir"/Testing/Temporary/LastTest*.log "$dir"/pg.log "$dir"/redis.log "$dir"/initdb.log; do
    [ -f "$f" ] && files+=("$f")
done

# The search itself must work: a file holding one of the secrets is found.
{ echo "planted line"; head -n 1 "$patterns"; } >"$planted"
grep -qFf "$patterns" "$planted" || die "the search does not find a planted secret"

if grep -lFf "$patterns" "${files[@]}" >/dev/null 2>&1; then
    echo "zz_secret_grep: FAIL: a sandbox password appears in:" >&2
    grep -lFf "$patterns" "${files[@]}" >&2 || true
    exit 1
fi
echo "zz_secret_grep: no secret in ${#files[@]} files ($lines lines collected by the test kit from" \
    "$(ls "$logs" | wc -l) processes)"

#!/usr/bin/env bash
# cargo's runner for x86_64-pc-windows-gnu (set by scripts/windows-tests.sh): runs one .exe
# (test binary, doctest or `cargo run` target) under Wine and, when it fails, says so in words.
# Wine hands back only the low byte of a Windows exit code / NTSTATUS, hence the table below.
# A hung exe is killed after DUCTWORK_WIN_TEST_TIMEOUT seconds (default 600) so CI can't stall;
# the test harness then never prints its failure report, so we name the tests that had not
# finished instead.
set -u
wine=${DUCTWORK_WINE:-/usr/lib/wine/wine64}
limit=${DUCTWORK_WIN_TEST_TIMEOUT:-600}
exe=$1

# stdout goes through a file (streamed by tail) so that it can be inspected after a timeout;
# not through a pipe, which peer processes still holding it could keep open forever.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout -k 10 "$limit" "$wine" "$@" <&0 >"$out" &
pid=$!
tail -q -n +1 -s 0.2 --pid="$pid" -f "$out"
wait "$pid"
rc=$?
((rc == 0)) && exit 0

case $rc in
  53)  why="0xC0000135 STATUS_DLL_NOT_FOUND: a DLL is missing; is bcryptprimitives.dll in \$WINEPREFIX/drive_c/windows/system32?" ;;
  101) why="Rust panic, or a test harness reporting failed tests" ;;
  5)   why="probably 0xC0000005 access violation (a crash)" ;;
  9)   why="probably 0xC0000409 fast-fail, e.g. std::process::abort or a panic while panicking" ;;
  1)   why="exit(1); under Wine also a stack overflow (its message stops after \"thread '\")" ;;
  124) why="killed: still running after ${limit} s (DUCTWORK_WIN_TEST_TIMEOUT)" ;;
  137) why="killed with SIGKILL (timeout grace period over, or out of memory)" ;;
  *)   why="" ;;
esac
echo "wine-runner: ${exe##*/} exited with code $rc${why:+ ($why)}" >&2

# After a timeout: which tests never reported a result? Only for a test harness (libtest or
# libtest-mimic, which print "running N tests" and support --list), never for doctest binaries.
if ((rc == 124 || rc == 137)) && grep -q '^running [0-9]* tests\?$' "$out"; then
  args=("$@")
  listed=$(timeout 60 "$wine" "${args[@]}" --list 2>/dev/null | sed -n 's/: test$//p' | sort)
  done_=$(sed -n 's/^test \(.*\) \.\.\. .*/\1/p' "$out" | sed 's/ *$//' | sort)
  left=$(comm -23 <(echo "$listed") <(echo "$done_") | sed '/^$/d')
  if [[ -n $left ]]; then
    echo "wine-runner: tests without a result when ${exe##*/} was killed (hung, or queued behind one):" >&2
    sed 's/^/    /' <<<"$left" >&2
  fi
fi
exit "$rc"

#!/usr/bin/env bash
# cargo's runner for x86_64-pc-windows-gnu (set by scripts/windows-tests.sh): runs one .exe
# (test binary, doctest or `cargo run` target) under Wine and, when it fails, says so in words.
# Wine hands back only the low byte of a Windows exit code / NTSTATUS, hence the table below.
# A hung exe is killed after DUCTWORK_WIN_TEST_TIMEOUT seconds (default 900) so CI can't stall.
set -u
wine=${DUCTWORK_WINE:-/usr/lib/wine/wine64}
limit=${DUCTWORK_WIN_TEST_TIMEOUT:-900}

timeout -k 10 "$limit" "$wine" "$@"
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
echo "wine-runner: ${1##*/} exited with code $rc${why:+ ($why)}" >&2
exit "$rc"

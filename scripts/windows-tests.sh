#!/usr/bin/env bash
# Windows leg of CI: cross-build the workspace for x86_64-pc-windows-gnu on Debian 12 (x86_64)
# and run its tests under Wine 8, headless. Self-contained: a fresh clone on a fresh Debian 12
# machine (root, or sudo) needs nothing else; a second run skips what is already in place.
#
#   bash scripts/windows-tests.sh                     # packages, prefix, build, clippy, test
#   bash scripts/windows-tests.sh codec::tests -- --nocapture   # extra args go to `cargo test`
#   DUCTWORK_WIN_STEPS=test bash scripts/windows-tests.sh -p ductwork-transports \
#     --test conformance -- tcp::       # with -p/--package, --workspace is not added
#
# How it works
# - rustup cannot download the Windows std, so Debian's rustc-web (1.96) + rust-web-src build std
#   from source (-Zbuild-std, made legal on stable by RUSTC_BOOTSTRAP=1); mingw-w64 links;
#   /usr/lib/wine/wine64 runs test binaries and doctests (via scripts/windows/wine-runner.sh).
# - /usr/bin comes first on PATH and RUSTC/RUSTDOC name Debian's tools: rustup's 1.95 in
#   ~/.cargo/bin cannot compile the 1.96 std source. So the workspace's rust-version must stay
#   <= 1.96, and Windows clippy is Debian's rust-web-clippy 1.96 (the Linux leg uses rustup's):
#   a lint new in 1.96 can fail this leg only.
# - Wine 8 has no bcryptprimitives.dll, which every Rust std >= 1.78 .exe imports; without the
#   stand-in (scripts/windows/bcryptprimitives.c) every .exe exits with code 53.
# - All processes of one WINEPREFIX share one wineserver: pipe, mailslot, `Local\` and window-class
#   names are global across all tests running in parallel, so tests must use unique names. Two
#   concurrent runs of this script need different WIN_HOME (or WINEPREFIX) values.
#
# Environment knobs
#   WIN_HOME                  cache dir: Wine prefix, built DLL, logs (default ~/.cache/ductwork-win)
#   WINEPREFIX                Wine prefix (default $WIN_HOME/prefix)
#   DUCTWORK_WIN_TARGET_DIR   cargo target dir (default <repo>/target/windows)
#   DUCTWORK_WIN_FEATURES     if set: --no-default-features --features "$DUCTWORK_WIN_FEATURES"
#                             for every cargo step ("default,foo" = defaults plus foo; "" = none)
#   DUCTWORK_WIN_STEPS        steps to run (default "build clippy test")
#   DUCTWORK_WIN_TEST_TIMEOUT seconds before a single test .exe is killed (default 600)
#   WINEDEBUG                 Wine's debug channels (default -all; try +loaddll or +seh)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
here=$repo/scripts/windows
cd "$repo"

TARGET=x86_64-pc-windows-gnu
WIN_HOME=${WIN_HOME:-$HOME/.cache/ductwork-win}
export WINEPREFIX=${WINEPREFIX:-$WIN_HOME/prefix}
export WINEDEBUG=${WINEDEBUG:--all}
export CARGO_TARGET_DIR=${DUCTWORK_WIN_TARGET_DIR:-$repo/target/windows}
steps=" ${DUCTWORK_WIN_STEPS:-build clippy test} "
wine=/usr/lib/wine/wine64
wineserver=/usr/lib/wine/wineserver
unset DISPLAY WAYLAND_DISPLAY # headless: no X needed (Graphics=null below)
mkdir -p "$WIN_HOME"

# ---------------------------------------------------------------- step bookkeeping and cleanup
now_ms() { local t=${EPOCHREALTIME/./}; echo $((10#$t / 1000)); }
fmt_s() { printf '%d.%01d s' $(($1 / 1000)) $(($1 % 1000 / 100)); }
current="" step_t0=0 run_t0=$(now_ms) wine_started=0
summary=()
begin() {
  current=$1 step_t0=$(now_ms)
  printf '\n=== [windows] %s\n' "$current"
}
end() {
  local ms=$(($(now_ms) - step_t0))
  summary+=("$(printf '  %-38s %s' "$current" "$(fmt_s $ms)")")
  printf -- '--- [windows] %s: %s\n' "$current" "$(fmt_s $ms)"
  current=""
}
finish() {
  local rc=$?
  set +e
  # Stop the prefix's wineserver and every Wine process in it, also after a failure.
  if ((wine_started)); then "$wineserver" -k >/dev/null 2>&1; fi
  printf '\n=== [windows] timings\n'
  printf '%s\n' "${summary[@]}"
  printf '  %-38s %s\n' "total" "$(fmt_s $(($(now_ms) - run_t0)))"
  if ((rc != 0)); then
    echo "windows-tests.sh: FAILED in step '${current:-?}' (exit code $rc)" >&2
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------- 1. packages
# ~1 min and ~2.2 GB on a fresh machine; a few ms when present. rust-web-clippy provides
# cargo-clippy/clippy-driver 1.96 in /usr/bin (rustup's clippy is 1.95 and can't be used here).
begin "packages"
pkgs=(rustc-web cargo-web rust-web-src rust-web-clippy gcc-mingw-w64-x86-64 wine wine64)
pkg_ok() {
  local p v ref=""
  for p in "${pkgs[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || return 1
  done
  # The compiler, its std source, cargo and clippy must be one and the same release.
  for p in rustc-web cargo-web rust-web-src rust-web-clippy; do
    v=$(dpkg-query -W -f='${Version}' "$p")
    [[ -z $ref || $v == "$ref" ]] || return 1
    ref=$v
  done
}
if ! pkg_ok; then
  echo "installing: ${pkgs[*]} (log: $WIN_HOME/apt.log)"
  # --no-remove: never let a Conflicts: (rust-web-clippy vs Debian's rustup package, cargo-web
  # vs cargo) silently uninstall something; fail instead. No recommends keeps wine32/i386 out.
  if ! { as_root apt-get update -qq &&
         as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-remove \
           --no-install-recommends -o Dpkg::Use-Pty=0 "${pkgs[@]}"; } \
       </dev/null >"$WIN_HOME/apt.log" 2>&1; then
    tail -n 30 "$WIN_HOME/apt.log" >&2
    exit 1
  fi
  pkg_ok || { echo "rustc-web, cargo-web, rust-web-src, rust-web-clippy versions differ:" >&2
              dpkg-query -W rustc-web cargo-web rust-web-src rust-web-clippy >&2; exit 1; }
fi
rv=$(/usr/bin/rustc --version | awk '{print $2}')
case "$(readlink -f /usr/lib/rustlib/src/rust)" in
  */rustc-"$rv") ;;
  *) echo "rustc $rv does not match std source $(readlink -f /usr/lib/rustlib/src/rust)" >&2
     exit 1 ;;
esac
/usr/bin/rustc --version
/usr/bin/cargo --version
/usr/bin/cargo-clippy --version
"$wine" --version
x86_64-w64-mingw32-gcc --version | head -n 1
end

# ---------------------------------------------------------------- 2. bcryptprimitives.dll
begin "bcryptprimitives.dll stand-in"
dll=$WIN_HOME/bcryptprimitives.dll
if [[ ! -f $dll || $here/bcryptprimitives.c -nt $dll ]]; then
  x86_64-w64-mingw32-gcc -O2 -Wall -shared -s -o "$dll.tmp" "$here/bcryptprimitives.c" -ladvapi32
  mv "$dll.tmp" "$dll"
fi
end

# ---------------------------------------------------------------- 3. Wine prefix
# A fresh prefix takes ~11 s (wineboot) and ~700 MB; reused afterwards. Then one wineserver is
# kept up (-p) for the whole run with the prefix's services already started, so the first test
# process doesn't pay the start-up (tests waiting for a peer would otherwise need long deadlines).
begin "wine prefix"
wine_started=1
if [[ ! -f $WINEPREFIX/system.reg ]]; then
  echo "creating $WINEPREFIX"
  # mscoree/mshtml disabled: no Mono/Gecko install attempts (and no dialogs) while booting.
  if ! WINEARCH=win64 WINEDLLOVERRIDES="mscoree,mshtml=" "$wine" wineboot --init \
       >"$WIN_HOME/wineboot.log" 2>&1; then
    tail -n 30 "$WIN_HOME/wineboot.log" >&2
    exit 1
  fi
  "$wineserver" -w # let the boot finish and the registry reach the disk
fi
sys32=$WINEPREFIX/drive_c/windows/system32
cmp -s "$dll" "$sys32/bcryptprimitives.dll" || cp "$dll" "$sys32/bcryptprimitives.dll"
"$wineserver" -p >>"$WIN_HOME/wineserver.log" 2>&1 # (it dumps its objects when killed)
# These first processes also start the prefix's services now rather than in the first test.
# Top-level windows without an X server (message-only windows need nothing):
"$wine" reg add 'HKCU\Software\Wine\Drivers' /v Graphics /d null /f >/dev/null
# A crashing .exe (access violation, ...) must end with its exception code. By default Wine starts
# `winedbg --auto`, which hangs headless until the timeout; a debugger that can't be started
# makes Wine terminate the process right away.
"$wine" reg add 'HKLM\Software\Microsoft\Windows NT\CurrentVersion\AeDebug' \
  /v Debugger /d ductwork-ci-no-debugger.exe /f >/dev/null
end

# ---------------------------------------------------------------- cargo for Windows
export PATH=/usr/bin:$PATH
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_AR=x86_64-w64-mingw32-ar
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$here/wine-runner.sh # (no spaces in path)
cargo=/usr/bin/cargo
win=(-Zbuild-std=std,panic_abort --target "$TARGET")
features=()
if [[ -n ${DUCTWORK_WIN_FEATURES+set} ]]; then
  features=(--no-default-features)
  [[ -z $DUCTWORK_WIN_FEATURES ]] || features+=(--features "$DUCTWORK_WIN_FEATURES")
fi

# ---------------------------------------------------------------- 4. self-check
# A tiny crate whose unit test and doctest assert cfg!(windows): proves that doctests really are
# cross-compiled and executed under Wine (cargo would otherwise skip them without failing), and
# builds std for the target (~75 s the first time, shared with the workspace's build via the
# same target dir).
begin "self-check (std, doctest under Wine)"
log=$WIN_HOME/selfcheck.log
if ! "$cargo" test --locked --manifest-path "$here/selfcheck/Cargo.toml" "${win[@]}" \
     2>&1 | tee "$log"; then
  exit 1
fi
grep -Eq '^test src/lib.rs - .* ok$' "$log" ||
  { echo "self-check: no doctest ran under Wine (see output above)" >&2; exit 1; }
end

# ---------------------------------------------------------------- 5. workspace
if [[ $steps == *" build "* ]]; then
  begin "cargo build --all-targets"
  "$cargo" build --workspace --all-targets "${win[@]}" "${features[@]}"
  end
fi

if [[ $steps == *" clippy "* ]]; then
  begin "cargo clippy -D warnings"
  "$cargo" clippy --workspace --all-targets "${win[@]}" "${features[@]}" -- -D warnings
  end
fi

if [[ $steps == *" test "* ]]; then
  begin "cargo test (under Wine)"
  # --no-fail-fast: report every failing test binary, not only the first one.
  scope=(--workspace)
  for a in "$@"; do
    [[ $a == -- ]] && break
    [[ $a == -p || $a == -p* || $a == --package || $a == --package=* ]] && scope=()
  done
  # Known failures under Wine 8, skipped only when no arguments were given (pass a test name
  # to run one anyway). Both pass on Linux; neither reproduces the Win32 behaviour the tests
  # check, and both are recorded as open problems:
  # - udp::many_clients: after the first clients finish, one of four echo clients gets no echo
  #   at all for 15 s of resends (Wine's UDP stack; the same case passes alone on Linux).
  # - tcp::peer_killed (and its twin tls::peer_killed, TLS over the same Wine TCP): a peer killed
  #   while streaming is never reported as gone within 30 s (the idle-peer half of the case
  #   passes).
  # - udp::cancel_safe_accept: the same loss as udp::many_clients (an echo client gets no echo
  #   for 50 resends), seen under load even with its clients taking turns; the accepts it
  #   tests all happen (the tcp, tls, pipe and shm twins pass under Wine).
  # - udp::rebind_after_crash: with the whole suite running, a killed holder's UDP port is at
  #   times still bound 5 s later (passes when the udp cases run alone). Like tcp::peer_killed,
  #   this looks like Wine releasing a killed process's sockets late under load.
  # - tcp::reconnect_gives_up and tls::reconnect_gives_up (patterns suite): the same cause as
  #   tcp::peer_killed: the client never hears that its killed server's socket is gone (hung
  #   90 s in CI's Windows leg while the shm and pipe twins passed), so it never reconnects
  #   and cannot give up. tls passed once by timing; skipped with tcp.
  extra=("$@")
  if ((${#extra[@]} == 0)); then
    known=(udp::many_clients udp::cancel_safe_accept tcp::peer_killed tls::peer_killed
      udp::rebind_after_crash tcp::reconnect_gives_up tls::reconnect_gives_up)
    echo "NOTE: skipping tests known to fail under Wine: ${known[*]}"
    extra=(--)
    for t in "${known[@]}"; do extra+=(--skip "$t"); done
  fi
  "$cargo" test "${scope[@]}" --no-fail-fast "${win[@]}" "${features[@]}" "${extra[@]}"
  end
fi

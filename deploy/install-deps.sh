#!/usr/bin/env bash
# Idempotent installer of the Debian packages (and cargo-nextest) this project needs.
#
#   bash deploy/install-deps.sh [build|test|all]     (default: all)
#
#   build  libav / clang headers and tools needed to compile the workspace
#   test   build + the external programs the test suite drives (ffmpeg, mosquitto,
#          postgresql, a GStreamer RTSP server, sipp, Chromium with a CJK font, Node.js and
#          npm for the console's browser test), plus cargo-nextest
#   all    same as test
#
# Only missing packages are installed; `apt-get update` runs at most once and only when
# something is missing. When everything is present this prints one line and returns in
# well under a second.
#
# The Rust toolchain itself (1.95+) is not installed here: install it with rustup.
# XUELIANG_INSTALL_DEPS_SKIP_RUST=1 skips the toolchain and nextest checks (used by
# deploy/services.sh, which only needs the system packages).
set -euo pipefail

readonly MIN_RUST_MAJOR=1 MIN_RUST_MINOR=95

BUILD_PKGS=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  ca-certificates curl
)
TEST_PKGS=(
  ffmpeg mosquitto mosquitto-clients postgresql postgresql-client
  python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  sip-tester
  chromium fonts-wqy-microhei nodejs
)

die() {
  echo "install-deps: error: $*" >&2
  exit 1
}

mode="${1:-all}"
case "$mode" in
  build) pkgs=("${BUILD_PKGS[@]}") ;;
  test | all) pkgs=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}") ;;
  -h | --help)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown mode '$mode' (expected build, test or all)" ;;
esac
[[ $# -le 1 ]] || die "too many arguments (usage: install-deps.sh [build|test|all])"

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run '$*' but this is not root and sudo is not installed; rerun as root"
  fi
}

# --- Debian packages -------------------------------------------------------------------
missing=()
for p in "${pkgs[@]}"; do
  pkg_installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#pkgs[@]} packages present ($mode)"
else
  command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and apt-get is not available"
  if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
    die "missing packages (${missing[*]}); not root and sudo is not installed: rerun as root"
  fi
  log="$(mktemp "${TMPDIR:-/tmp}/xueliang-install-deps.XXXXXX.log")"
  start=$SECONDS
  echo "install-deps: installing ${#missing[@]} missing package(s) with apt-get (log: $log)"
  # A broken third-party source must not stop us: apt-get install fails loudly if the
  # packages really cannot be fetched.
  if ! as_root apt-get update >>"$log" 2>&1; then
    echo "install-deps: warning: apt-get update reported errors (see $log); trying to install anyway" >&2
  fi
  if ! as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "apt-get install failed (full log: $log)"
  fi
  rm -f "$log"
  echo "install-deps: installed ${#missing[@]} package(s) in $((SECONDS - start))s: ${missing[*]}"
fi

# npm: Debian's package only when no npm is on PATH (NodeSource's nodejs ships its own, and
# Debian's npm would conflict with it).
if [[ $mode != build ]] && ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: installing npm"
  as_root apt-get update >/dev/null 2>&1 || echo "install-deps: warning: apt-get update reported errors" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm >/dev/null ||
    die "apt-get install npm failed"
fi

[[ "${XUELIANG_INSTALL_DEPS_SKIP_RUST:-0}" == 1 ]] && exit 0

# --- Rust toolchain --------------------------------------------------------------------
# rustup installs into ~/.cargo/bin, which non-login shells may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
rust_help="install the Rust toolchain ${MIN_RUST_MAJOR}.${MIN_RUST_MINOR}+ with rustup (https://rustup.rs), e.g. 'rustup toolchain install stable && rustup default stable', then rerun"
command -v cargo >/dev/null 2>&1 || die "cargo not found; $rust_help"
cargo_version="$(cargo --version 2>/dev/null)" || die "'cargo --version' failed; $rust_help"
if [[ $cargo_version =~ ^cargo\ ([0-9]+)\.([0-9]+) ]]; then
  major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
  if ((major < MIN_RUST_MAJOR || (major == MIN_RUST_MAJOR && minor < MIN_RUST_MINOR))); then
    die "found '$cargo_version' but Rust ${MIN_RUST_MAJOR}.${MIN_RUST_MINOR}+ is required; $rust_help"
  fi
else
  die "cannot parse the version from '$cargo_version'; $rust_help"
fi

# --- cargo-nextest (test runner; only needed for the test suite) -----------------------
if [[ $mode != build ]] && ! cargo nextest --version >/dev/null 2>&1; then
  start=$SECONDS
  echo "install-deps: installing cargo-nextest (cargo install --locked cargo-nextest; takes a few minutes)"
  cargo install --locked cargo-nextest || die "'cargo install --locked cargo-nextest' failed"
  echo "install-deps: installed cargo-nextest in $((SECONDS - start))s"
fi

#!/usr/bin/env bash
# Installs xueliang as a systemd service (the steps described at the top of
# deploy/xueliang.service), idempotently. Run as root.
#
#   bash deploy/install-service.sh [PATH/TO/xueliang]     (default: target/release/xueliang)
#
# Build the binary first: cargo build --release --locked -p xueliang
# An existing /etc/xueliang/xueliang.toml is never overwritten. If systemd is not running
# (containers), the unit is installed but systemctl is skipped.
set -euo pipefail

die() {
  echo "install-service: error: $*" >&2
  exit 1
}

# Resolve the binary relative to the caller's directory before moving to the repo root.
bin="${1:-}"
[[ $# -le 1 ]] || die "usage: install-service.sh [PATH/TO/xueliang]"
[[ -z $bin ]] || bin="$(realpath -e -- "$bin" 2>/dev/null)" || die "binary '$1' not found"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z $bin ]]; then
  bin="$PWD/target/release/xueliang"
  [[ -x $bin ]] || die "$bin not found; build it with 'cargo build --release --locked -p xueliang' or pass the binary's path"
fi
[[ -f $bin && -x $bin ]] || die "'$bin' is not an executable file"
[[ $EUID -eq 0 ]] || die "must run as root (try: sudo bash deploy/install-service.sh ${1:-})"

readonly DEST_BIN=/usr/local/bin/xueliang
readonly CONF_DIR=/etc/xueliang CONF=/etc/xueliang/xueliang.toml
readonly DATA_DIR=/var/lib/xueliang
readonly UNIT_SRC=deploy/xueliang.service UNIT=/etc/systemd/system/xueliang.service
changed=0 # binary or unit changed: restart a running service

# 1. binary
if cmp -s "$bin" "$DEST_BIN"; then
  echo "binary:  $DEST_BIN is up to date"
else
  install -m 0755 "$bin" "$DEST_BIN"
  echo "binary:  installed $bin -> $DEST_BIN"
  changed=1
fi

# 2. system user (its group comes with it)
if id -u xueliang >/dev/null 2>&1; then
  echo "user:    xueliang exists"
else
  useradd --system --user-group --home "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin xueliang
  echo "user:    created system user xueliang"
fi
# systemd's StateDirectory= creates it too; made here so check-config sees the data_dir.
install -d -m 0750 -o xueliang -g xueliang "$DATA_DIR"

# 3. configuration (never overwritten)
install -d -m 0750 -o root -g xueliang "$CONF_DIR"
if [[ -e $CONF ]]; then
  echo "config:  $CONF exists (kept)"
else
  [[ -f config/edge.toml ]] || die "config/edge.toml not found in $PWD"
  install -m 0640 -o root -g xueliang config/edge.toml "$CONF"
  echo "config:  installed config/edge.toml -> $CONF (review it: data_dir should be $DATA_DIR)"
fi

# 4. validate the configuration as the service user would see it
if command -v runuser >/dev/null 2>&1; then
  check=(runuser -u xueliang -- "$DEST_BIN" check-config --config "$CONF")
else
  check=("$DEST_BIN" check-config --config "$CONF")
fi
if ! (cd "$DATA_DIR" && "${check[@]}"); then
  die "'xueliang check-config --config $CONF' failed; fix $CONF and rerun"
fi
echo "check:   $CONF is valid"

# 5. unit
if cmp -s "$UNIT_SRC" "$UNIT"; then
  echo "unit:    $UNIT is up to date"
else
  install -m 0644 "$UNIT_SRC" "$UNIT"
  echo "unit:    installed $UNIT"
  changed=1
fi

if [[ ! -d /run/systemd/system ]]; then
  echo "systemd: not running here; skipped 'systemctl enable --now xueliang' (run it on the target host)"
  exit 0
fi
systemctl daemon-reload
if systemctl is-active --quiet xueliang && ((changed)); then
  systemctl enable xueliang
  systemctl restart xueliang # pick up the new binary / unit
else
  systemctl enable --now xueliang
fi
echo "systemd: xueliang is $(systemctl is-active xueliang) (journalctl -u xueliang -f for logs)"

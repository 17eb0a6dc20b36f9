#!/usr/bin/env bash
# Makes sure the services the test suite talks to are up on loopback:
#
#   PostgreSQL  127.0.0.1:5432, reachable as postgres://postgres@127.0.0.1:5432/postgres
#               without a password (override with XUELIANG_TEST_PG_URL; an overridden
#               URL is only checked, never managed)
#   Mosquitto   127.0.0.1:1883
#
#   bash deploy/services.sh [all|postgresql|mosquitto]     (default: all)
#
# Services that are down are started (and their packages installed through
# deploy/install-deps.sh test when missing). There is no systemd here, so the daemons are
# started directly: pg_ctlcluster for PostgreSQL, `mosquitto -d` for Mosquitto.
# Prints one line per service; exits non-zero if a service cannot be brought up.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

readonly DEFAULT_PG_URL="postgres://postgres@127.0.0.1:5432/postgres"
readonly PG_HOST=127.0.0.1 PG_PORT=5432 PG_WAIT_SECS=30
readonly MQTT_HOST=127.0.0.1 MQTT_PORT=1883 MQTT_WAIT_SECS=10
readonly MOSQUITTO_CONF=/etc/mosquitto/mosquitto.conf
PG_URL="${XUELIANG_TEST_PG_URL:-$DEFAULT_PG_URL}"

die() {
  echo "services: error: $*" >&2
  exit 1
}

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run '$*' but this is not root and sudo is not installed; rerun as root"
  fi
}

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Installs the test package set when any of the given packages is missing.
ensure_pkgs() {
  local p
  for p in "$@"; do
    if ! pkg_installed "$p"; then
      XUELIANG_INSTALL_DEPS_SKIP_RUST=1 bash "$here/install-deps.sh" test
      return
    fi
  done
}

# Hides the password of a connection URL.
redact_url() {
  sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"
}

# Temporary files for the output of daemon-starting commands. Daemons must never inherit
# our stdout (a pipe under CI): the reader would wait for them forever.
tmpfiles=()
cleanup() { [[ ${#tmpfiles[@]} -eq 0 ]] || rm -f "${tmpfiles[@]}"; }
trap cleanup EXIT
new_tmp() {
  local f
  f="$(mktemp "${TMPDIR:-/tmp}/xueliang-services.XXXXXX")"
  tmpfiles+=("$f")
  printf '%s\n' "$f"
}

# --- PostgreSQL --------------------------------------------------------------------------

pg_error=""
# Runs `select 1` against PG_URL, never prompting for a password; keeps the error text.
pg_query_ok() {
  local out
  if out="$(PGCONNECT_TIMEOUT=5 psql -w "$PG_URL" -Atc 'select 1' 2>&1)" && [[ $out == 1 ]]; then
    return 0
  fi
  pg_error="$(tr '\n' ' ' <<<"$out")"
  return 1
}

pg_ready() {
  command -v pg_isready >/dev/null 2>&1 && pg_isready -h "$PG_HOST" -p "$PG_PORT" -q
}

# Sets pg_ver and pg_name: the cluster configured for port 5432, else the newest
# version's "main" cluster.
pg_cluster() {
  local line
  line="$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2; exit }')"
  if [[ -n $line ]]; then
    read -r pg_ver pg_name <<<"$line"
  else
    # shellcheck disable=SC2012 # version directory names only
    pg_ver="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    pg_name=main
  fi
  [[ -n $pg_ver ]] || die "postgresql: no cluster found under /etc/postgresql"
}

pg_start() {
  local out ver deadline
  out="$(new_tmp)"
  if [[ -z "$(pg_lsclusters -h 2>/dev/null)" ]]; then
    # shellcheck disable=SC2012 # version directory names only
    ver="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)"
    [[ -n $ver ]] || die "postgresql: no server version under /usr/lib/postgresql (is the postgresql package broken?)"
    if ! as_root pg_createcluster "$ver" main --port "$PG_PORT" </dev/null >"$out" 2>&1; then
      cat "$out" >&2
      die "postgresql: 'pg_createcluster $ver main' failed"
    fi
    pg_action="created and started"
  fi
  pg_cluster
  if ! as_root pg_ctlcluster --skip-systemctl-redirect "$pg_ver" "$pg_name" start </dev/null >"$out" 2>&1; then
    # "already running" is fine: it may just not be accepting connections yet.
    if ! grep -qi 'already running' "$out"; then
      cat "$out" >&2
      die "postgresql: 'pg_ctlcluster $pg_ver $pg_name start' failed (log: /var/log/postgresql/postgresql-$pg_ver-$pg_name.log)"
    fi
  fi
  deadline=$((SECONDS + PG_WAIT_SECS))
  until pg_ready; do
    if ((SECONDS >= deadline)); then
      tail -n 20 "/var/log/postgresql/postgresql-$pg_ver-$pg_name.log" >&2 2>/dev/null || true
      die "postgresql: cluster $pg_ver/$pg_name started but $PG_HOST:$PG_PORT is not ready after ${PG_WAIT_SECS}s"
    fi
    sleep 0.5
  done
}

# Puts trust rules for loopback at the top of pg_hba.conf (the tests connect as postgres
# without a password) and reloads. Root only.
pg_trust_loopback() {
  local hba want top tmp deadline
  if [[ $EUID -ne 0 ]]; then
    die "postgresql: up, but '$(redact_url "$PG_URL")' does not accept 'select 1' without a password: $pg_error
  Fix: as root, add 'host all all 127.0.0.1/32 trust' and 'host all all ::1/128 trust' at the top of pg_hba.conf and reload, or point XUELIANG_TEST_PG_URL at a database you can use."
  fi
  pg_cluster
  hba="$(pg_conftool -s "$pg_ver" "$pg_name" show hba_file 2>/dev/null || true)"
  [[ -n $hba ]] || hba="/etc/postgresql/$pg_ver/$pg_name/pg_hba.conf"
  [[ -f $hba ]] || die "postgresql: cannot find pg_hba.conf for cluster $pg_ver/$pg_name (tried $hba)"

  want=$'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust'
  top="$(grep -Ev '^[[:space:]]*(#|$)' "$hba" | head -n 2 | tr -s ' \t' ' ' | sed 's/ $//')"
  if [[ $top != "$want" ]]; then
    [[ -e "$hba.xueliang.bak" ]] || cp -p "$hba" "$hba.xueliang.bak"
    tmp="$(new_tmp)"
    {
      echo "# Added by xueliang deploy/services.sh: the test suite connects as postgres without a password."
      echo "host all all 127.0.0.1/32 trust"
      echo "host all all ::1/128 trust"
      cat "$hba"
    } >"$tmp"
    cat "$tmp" >"$hba" # keeps owner and mode
    echo "postgresql: pg_hba.conf: added 'trust' for 127.0.0.1/32 and ::1/128 at the top of $hba (backup: $hba.xueliang.bak)"
  fi
  tmp="$(new_tmp)"
  if ! pg_ctlcluster --skip-systemctl-redirect "$pg_ver" "$pg_name" reload </dev/null >"$tmp" 2>&1; then
    cat "$tmp" >&2
    die "postgresql: 'pg_ctlcluster $pg_ver $pg_name reload' failed"
  fi
  deadline=$((SECONDS + 5)) # the reload is asynchronous
  until pg_query_ok; do
    if ((SECONDS >= deadline)); then
      die "postgresql: '$(redact_url "$PG_URL")' still fails after trusting loopback in $hba: $pg_error"
    fi
    sleep 0.5
  done
}

ensure_postgresql() {
  local shown
  shown="$(redact_url "$PG_URL")"
  if [[ $PG_URL != "$DEFAULT_PG_URL" ]]; then
    if ! command -v psql >/dev/null 2>&1; then
      ensure_pkgs postgresql-client
    fi
    pg_query_ok || die "postgresql: cannot run 'select 1' on XUELIANG_TEST_PG_URL=$shown: $pg_error"
    echo "postgresql: up (XUELIANG_TEST_PG_URL=$shown; not managed by this script)"
    return
  fi

  pg_action="up (already running)"
  if ! pg_ready; then
    ensure_pkgs postgresql postgresql-client
    if ! pg_ready; then # the package's postinst may have started it
      pg_action="started"
      pg_start
    fi
  fi
  if ! pg_query_ok; then
    pg_trust_loopback
  fi
  if [[ $pg_action == "up (already running)" ]]; then
    echo "postgresql: $pg_action"
  else
    echo "postgresql: $pg_action (cluster $pg_ver/$pg_name on $PG_HOST:$PG_PORT)"
  fi
}

# --- Mosquitto ---------------------------------------------------------------------------

mqtt_listening() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$MQTT_HOST/$MQTT_PORT" 2>/dev/null
}

ensure_mosquitto() {
  local bin out deadline
  if mqtt_listening; then
    echo "mosquitto: up (already running)"
    return
  fi
  ensure_pkgs mosquitto mosquitto-clients
  bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
  [[ -x $bin ]] || die "mosquitto: binary not found after installing the mosquitto package"
  [[ -f $MOSQUITTO_CONF ]] || die "mosquitto: $MOSQUITTO_CONF is missing"
  # The init script / systemd unit normally create the pid and log directories.
  if id mosquitto >/dev/null 2>&1; then
    local d
    for d in /run/mosquitto /var/log/mosquitto; do
      [[ -d $d ]] || as_root install -d -o mosquitto -g mosquitto -m 0755 "$d"
    done
  fi
  out="$(new_tmp)"
  if ! (cd / && as_root "$bin" -d -c "$MOSQUITTO_CONF" </dev/null >"$out" 2>&1); then
    cat "$out" >&2
    die "mosquitto: '$bin -d -c $MOSQUITTO_CONF' failed (log: /var/log/mosquitto/mosquitto.log)"
  fi
  deadline=$((SECONDS + MQTT_WAIT_SECS))
  until mqtt_listening; do
    if ((SECONDS >= deadline)); then
      cat "$out" >&2
      tail -n 20 /var/log/mosquitto/mosquitto.log >&2 2>/dev/null || true
      die "mosquitto: started but nothing listens on $MQTT_HOST:$MQTT_PORT after ${MQTT_WAIT_SECS}s (check 'listener' in $MOSQUITTO_CONF)"
    fi
    sleep 0.2
  done
  echo "mosquitto: started ($bin -d -c $MOSQUITTO_CONF, listening on $MQTT_HOST:$MQTT_PORT)"
}

# --- main ----------------------------------------------------------------------------------

case "${1:-all}" in
  all)
    ensure_postgresql
    ensure_mosquitto
    ;;
  postgresql | postgres | pg) ensure_postgresql ;;
  mosquitto | mqtt) ensure_mosquitto ;;
  -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown service '$1' (expected all, postgresql or mosquitto)" ;;
esac

#!/usr/bin/env bash
# Start magnetar in the foreground, or as a daemon with a pid file and a log file.
#
#   scripts/run.sh [serve options]            foreground (e.g. --config server.ini)
#   scripts/run.sh --daemon [serve options]   background; pid in $MAGNETAR_PIDFILE, log in $MAGNETAR_LOGFILE
#   scripts/run.sh --stop-daemon              stop the daemon started from this directory
#
# If local_env.sh exists in the current directory (or $MAGNETAR_LOCAL_ENV names a file), it is
# sourced first: the place for PATH, DRMAA_LIBRARY_PATH, GALAXY_HOME and similar settings.
# Without --config, server.ini in the current directory is used when present.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pidfile="${MAGNETAR_PIDFILE:-$PWD/magnetar.pid}"
logfile="${MAGNETAR_LOGFILE:-$PWD/magnetar.log}"
local_env="${MAGNETAR_LOCAL_ENV:-$PWD/local_env.sh}"

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Only a magnetar process counts: a stale pid file may name a recycled pid.
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'magnetar' || return 1
  echo "$pid"
}

mode="foreground"
case "${1:-}" in
  --daemon) mode="daemon"; shift ;;
  --stop-daemon) mode="stop"; shift ;;
esac

if [ "$mode" = "stop" ]; then
  if ! pid="$(running_pid)"; then
    echo "run.sh: no running magnetar daemon (pid file $pidfile)" >&2
    rm -f "$pidfile"
    exit 1
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "magnetar (pid $pid) stopped"; exit 0; }
    sleep 0.1
  done
  echo "run.sh: magnetar (pid $pid) did not stop within 10 s" >&2
  exit 1
fi

if [ -f "$local_env" ]; then
  # shellcheck disable=SC1090
  . "$local_env"
fi

args=("$@")
if [[ " ${args[*]-} " != *" --config "* && " ${args[*]-} " != *" -c "* && -f "$PWD/server.ini" ]]; then
  args+=(--config "$PWD/server.ini")
fi

if [ ! -f "$here/dist/src/cli/main.js" ]; then
  (cd "$here" && npm run build >/dev/null)
fi

if [ "$mode" = "foreground" ]; then
  exec node "$here/bin/magnetar.js" serve "${args[@]}"
fi

if pid="$(running_pid)"; then
  echo "run.sh: magnetar is already running (pid $pid)" >&2
  exit 1
fi
nohup node "$here/bin/magnetar.js" serve "${args[@]}" >>"$logfile" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$pidfile"
sleep 1
if ! kill -0 "$pid" 2>/dev/null; then
  echo "run.sh: magnetar exited at once; see $logfile" >&2
  tail -n 5 "$logfile" >&2 || true
  rm -f "$pidfile"
  exit 1
fi
echo "magnetar started (pid $pid, log $logfile)"

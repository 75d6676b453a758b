#!/usr/bin/env bash
# stop-sshd.sh: stops the sshd started by start-sshd.sh (by pid file, never by name).
# --purge also deletes its directory (keys, known_hosts, env.sh).
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/lib-daemon.sh"
T0=$(ts)
DIR=${MAGNETAR_SSHD_DIR:-/tmp/magnetar-sshd}
stop_pidfile "$DIR/sshd.pid" '*/sshd' sshd
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$DIR"
  log "$DIR removed"
fi
log "done in $(elapsed "$T0") s"

#!/usr/bin/env bash
# queued_external_drmaa kill helper: terminates a DRM job as the invoking (real) user.
#   sudo -n -E -u USER drmaa-kill.sh --job_id <DRM job id>
# The id must be letters, digits, '.', '_' or '-'; a job the DRM no longer knows is not an error.
# Environment as for drmaa-launch.sh.
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
node=node
if [ -n "${MAGNETAR_NODE:-}" ]; then
  case "$MAGNETAR_NODE" in /*) [ -x "$MAGNETAR_NODE" ] && node=$MAGNETAR_NODE ;; esac
fi
export GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096
exec "$node" "$here/../dist/src/drmaa/external-cli.js" kill "$@"

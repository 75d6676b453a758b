#!/usr/bin/env bash
# queued_external_drmaa launch helper: submits a job template as the invoking (real) user.
#   sudo -n -E -u USER drmaa-launch.sh --job_attributes <staging root>/<job id>/jt.json --staging_root <staging root>
# Prints the DRM job id. Refuses to run as root, and refuses any template whose paths leave its job
# directory (checks in src/drmaa/external.ts). Needs DRMAA_LIBRARY_PATH and the DRM's variables
# (SGE_ROOT, SGE_CELL...) in the environment, hence sudo -E (sudoers: SETENV for the server user).
# MAGNETAR_NODE may name the node binary (absolute path); otherwise node is taken from PATH.
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
node=node
if [ -n "${MAGNETAR_NODE:-}" ]; then
  case "$MAGNETAR_NODE" in /*) [ -x "$MAGNETAR_NODE" ] && node=$MAGNETAR_NODE ;; esac
fi
# libdrmaa links libjemalloc, which needs static TLS that ld.so only reserves when told at exec.
export GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096
exec "$node" "$here/../dist/src/drmaa/external-cli.js" launch "$@"

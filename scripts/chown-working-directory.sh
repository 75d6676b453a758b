#!/usr/bin/env bash
# queued_external_drmaa ownership helper, run as root through sudo by the magnetar server:
#
#   sudo -n chown-working-directory.sh --staging_root ROOT --job_id ID        --user NAME   (production)
#   sudo -n chown-working-directory.sh --staging_root ROOT --job_directory DIR --user NAME   (production = false)
#   sudo -n chown-working-directory.sh --staging_root ROOT --job_id ID        --restore     (back to the server user)
#
# Gives a job directory (recursively, never following symbolic links) to the job's real user before
# the job is launched, and back to the calling server user (SUDO_UID:SUDO_GID) once it has ended.
# Everything is refused unless:
#   * it runs as root through sudo (SUDO_UID/SUDO_GID set);
#   * the staging root is an absolute path of an existing directory, not "/", OWNED BY THE CALLING
#     USER (so a caller cannot point it at /home or any other tree it does not own);
#   * the job directory is a direct child of the real staging root (compared after resolving, so
#     "/srv/staging2/x" is not inside "/srv/staging"), named like a job id, not a symbolic link, and
#     owned by the caller or by a regular user (1000 <= uid <= 60000);
#   * the user name matches ^[a-z_][a-z0-9_-]{0,31}$, exists, and has 1000 <= uid <= 60000 (never
#     root, a system account or nobody);
#   * every option is known and given once.
# Suggested sudoers line for a server running as "magnetar" (pin the staging root):
#   magnetar ALL=(root) NOPASSWD: /opt/magnetar/scripts/chown-working-directory.sh --staging_root /srv/magnetar/staging *
# Relies on fs.protected_hardlinks=1 (the Linux default), so a job cannot hard-link files it does
# not own into its directory and have them chowned to the server user on --restore.
set -euo pipefail
export LC_ALL=C
PATH=/usr/sbin:/usr/bin:/sbin:/bin

refuse() { printf 'refused: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || refuse "must run as root (through sudo)"
[[ "${SUDO_UID:-}" =~ ^[0-9]+$ && "${SUDO_GID:-}" =~ ^[0-9]+$ ]] || refuse "must be run through sudo (SUDO_UID/SUDO_GID not set)"

user='' job_id='' job_dir='' root='' restore=0 seen=' '
while [ $# -gt 0 ]; do
  opt=$1
  case "$opt" in
    --user|--job_id|--job_directory|--staging_root)
      [ $# -ge 2 ] || refuse "$opt needs a value"
      val=$2; shift 2 ;;
    --restore) val=''; shift ;;
    *) refuse "unknown argument" ;;
  esac
  case "$seen" in *" $opt "*) refuse "$opt is given twice" ;; esac
  seen="$seen$opt "
  case "$opt" in
    --user) user=$val ;;
    --job_id) job_id=$val ;;
    --job_directory) job_dir=$val ;;
    --staging_root) root=$val ;;
    --restore) restore=1 ;;
  esac
done

job_id_re='^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'
user_re='^[a-z_][a-z0-9_-]{0,31}$'

# The staging root.
[[ "$root" == /* ]] || refuse "--staging_root must be an absolute path"
real_root=$(realpath -e -- "$root" 2>/dev/null) || refuse "--staging_root does not exist"
[ -d "$real_root" ] || refuse "--staging_root is not a directory"
[ "$real_root" != / ] || refuse "--staging_root must not be /"
[ "$(stat -c %u -- "$real_root")" = "$SUDO_UID" ] || refuse "--staging_root is not owned by the calling user"

# The job directory: a direct child of the real staging root.
if [ -n "$job_id" ] && [ -z "$job_dir" ]; then
  [[ "$job_id" =~ $job_id_re ]] || refuse "--job_id is not a job id"
  dir="$real_root/$job_id"
elif [ -n "$job_dir" ] && [ -z "$job_id" ]; then
  [[ "$job_dir" == /* ]] || refuse "--job_directory must be an absolute path"
  dir=$(realpath -e -- "$job_dir" 2>/dev/null) || refuse "--job_directory does not exist"
  [ "$dir" = "${job_dir%/}" ] || refuse "--job_directory must not pass through symbolic links or . and .."
  [ "$(dirname -- "$dir")" = "$real_root" ] || refuse "--job_directory is not a job directory of the staging root"
  [[ "$(basename -- "$dir")" =~ $job_id_re ]] || refuse "--job_directory is not named like a job id"
else
  refuse "give exactly one of --job_id and --job_directory"
fi
[ ! -L "$dir" ] || refuse "the job directory is a symbolic link"
[ -d "$dir" ] || refuse "the job directory does not exist"
owner=$(stat -c %u -- "$dir")
[ "$owner" = "$SUDO_UID" ] || { [ "$owner" -ge 1000 ] && [ "$owner" -le 60000 ]; } || refuse "the job directory belongs to a system account"

# The new owner.
if [ -n "$user" ] && [ "$restore" = 0 ]; then
  [[ "$user" =~ $user_re ]] || refuse "--user is not a valid user name"
  uid=$(id -u -- "$user" 2>/dev/null) || refuse "--user does not exist"
  gid=$(id -g -- "$user")
  [ "$uid" -ge 1000 ] && [ "$uid" -le 60000 ] || refuse "--user is root or a system account (uid outside 1000-60000)"
elif [ -z "$user" ] && [ "$restore" = 1 ]; then
  uid=$SUDO_UID gid=$SUDO_GID
else
  refuse "give exactly one of --user and --restore"
fi

chown -R -P -h -- "$uid:$gid" "$dir"

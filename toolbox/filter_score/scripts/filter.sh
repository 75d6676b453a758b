#!/usr/bin/env bash
# Keep the rows of a tab-separated file whose score column is at least a threshold.
#   filter.sh --config FILE --min-score NUMBER INPUT OUTPUT
# FILE holds "key=value" lines (column=N, header_lines=N). It is parsed, never sourced.
set -euo pipefail

config='' min_score='' input='' output=''
while [ "$#" -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --min-score) min_score=$2; shift 2 ;;
    *)
      if [ -z "$input" ]; then input=$1
      elif [ -z "$output" ]; then output=$1
      else echo "filter.sh: unexpected argument: $1" >&2; exit 2
      fi
      shift ;;
  esac
done
if [ -z "$config" ] || [ -z "$min_score" ] || [ -z "$input" ] || [ -z "$output" ]; then
  echo "usage: filter.sh --config FILE --min-score NUMBER INPUT OUTPUT" >&2
  exit 2
fi

column=1
header_lines=0
while IFS='=' read -r key value || [ -n "$key" ]; do
  case "$key" in
    column) column=$value ;;
    header_lines) header_lines=$value ;;
    '') ;;
    *) echo "filter.sh: unknown setting: $key" >&2; exit 2 ;;
  esac
done < "$config"

awk -F '\t' -v col="$column" -v min="$min_score" -v header="$header_lines" '
  NR <= header { print; next }
  /^#/ { next }
  ($col + 0) >= (min + 0) { print }
' "$input" > "$output"

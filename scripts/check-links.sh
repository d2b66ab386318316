#!/usr/bin/env bash
# Checks that every relative link of the README, SECURITY.md, ARCHITECTURE.md and docs/ points
# at a file that exists (anchors are not checked). Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
for f in README.md SECURITY.md ARCHITECTURE.md docs/*.md; do
  dir=$(dirname "$f")
  while IFS= read -r target; do
    case "$target" in http://*|https://*|mailto:*|'#'*) continue ;; esac
    path=${target%%#*}
    if [ ! -e "$dir/$path" ]; then
      echo "check-links.sh: $f links to $target, which does not exist" >&2
      bad=1
    fi
  done < <(grep -o '](\([^)[:space:]]*\))' "$f" | sed 's/^](\(.*\))$/\1/')
done
exit $bad

#!/usr/bin/env bash
# Install the named Debian packages that are not installed yet (dpkg -s), running `apt-get update`
# once first, and only when something is missing. Uses sudo when not root.
#   scripts/ensure-apt.sh postgresql-client postgresql-15
set -euo pipefail

missing=()
for pkg in "$@"; do
  if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "ensure-apt: missing packages ${missing[*]} and not root (no sudo): install them first" >&2
  exit 1
fi

echo "ensure-apt: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"

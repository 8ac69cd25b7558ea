#!/usr/bin/env bash
# The Debian packages some tests use as real peers (docker-compose reads our compose files the way
# an operator's Compose 1.29 does). Installed when missing and when running as root, as CI does;
# elsewhere it says what is missing, and the tests that need it are skipped.
set -euo pipefail
wanted=(docker-compose nginx-light)
missing=()
for package in "${wanted[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "not installed, so the tests that need them are skipped: ${missing[*]}" >&2
fi

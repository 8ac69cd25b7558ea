#!/usr/bin/env bash
# The Debian packages some tests use as real peers: docker-compose reads our compose files the way an
# operator's Compose 1.29 does; nginx-light is a TLS reverse proxy with gzip; tinyproxy a forward
# proxy; redis-server coordinates several services (tests/redis_peer.py). Installed when missing and
# when running as root, as CI does; elsewhere it says what is missing, and the tests that need it
# are skipped.
set -euo pipefail
wanted=(docker-compose nginx-light tinyproxy redis-server)
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  # The packages' own services are not wanted (the tests start their own, on their own ports):
  # policy-rc.d says no to starting them, unless the machine has a policy of its own.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
  exit 0
else
  echo "not installed, so the tests that need them are skipped: ${missing[*]}" >&2
fi

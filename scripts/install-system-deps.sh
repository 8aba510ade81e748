#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks use (haproxy, wrk, npm, postgresql,
# prometheus, and docker.io with debootstrap for the test hosts), when run as root. The tests
# start their own PostgreSQL and Prometheus servers from their binaries (tests/pg.py,
# tests/prom.py), not the system services, and their own Docker daemon
# (scripts/testhosts/dockerd.sh), not the system one.
# Without root it only says what is missing; the tests that need a package skip with a reason.
set -euo pipefail
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v npm >/dev/null 2>&1 || need+=(npm)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1 ||
  need+=(postgresql)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: install ${need[*]} yourself for the tests that use them" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

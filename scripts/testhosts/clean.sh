#!/usr/bin/env bash
# Clears the test hosts' cache, as root: stops the private Docker daemon (and with it any
# test host still running), then deletes CACHE_DIR (the root file system tarball and the
# daemon's images). The next test run builds the image again (about a minute).
#
#   clean.sh CACHE_DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 CACHE_DIR" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=$(realpath -m "$1")
run_dir=/run/turnout-testhosts
[ -e "$cache" ] || [ -e "$run_dir" ] || exit 0
[ "$(id -u)" -eq 0 ] || { echo "clean.sh: needs root (the cache belongs to root)" >&2; exit 1; }

bash "$here/dockerd.sh" stop "$cache"
# A daemon killed hard can leave mounts behind (overlays, network namespaces).
findmnt -rno TARGET | { grep -E "^($cache|$run_dir)/" || true; } | sort -r | xargs -r umount -l
rm -rf --one-file-system "$cache" "$run_dir"
echo "removed $cache"

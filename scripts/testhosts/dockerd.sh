#!/usr/bin/env bash
# Starts or stops the private Docker daemon of the test hosts, as root.
#
#   dockerd.sh start CACHE_DIR   # start it unless it already answers; wait until it does
#   dockerd.sh stop CACHE_DIR    # stop it (containers it runs stop with it)
#
# The daemon keeps its images under CACHE_DIR/docker and its socket, pid file and
# runtime state under /run/turnout-testhosts. It touches no firewall rule, no
# forwarding or masquerade setting and no default bridge, and no other Docker daemon:
# the test hosts live on user-defined networks that only this machine can reach.
set -euo pipefail

usage() { echo "usage: $0 start|stop CACHE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
cache=$(realpath -m "$2")
run_dir=/run/turnout-testhosts
sock=$run_dir/docker.sock
pidfile=$run_dir/dockerd.pid
log=$run_dir/dockerd.log

answers() { timeout 5 docker --host "unix://$sock" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

running_pid() {
  local pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
  echo "$pid"
}

# One daemon serves one cache: refuse to hand out a daemon that keeps its images elsewhere.
same_root() {
  local root
  root=$(timeout 5 docker --host "unix://$sock" info --format '{{.DockerRootDir}}')
  if [ "$root" != "$cache/docker" ]; then
    echo "dockerd.sh: the test-host daemon on $sock keeps its data in $root, not $cache/docker;" \
      "use that cache or stop it first ($0 stop)" >&2
    exit 1
  fi
}

start() {
  [ "$(id -u)" -eq 0 ] || { echo "dockerd.sh: needs root" >&2; exit 1; }
  command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd missing (apt-get install docker.io)" >&2; exit 1; }
  mkdir -p "$run_dir" "$cache/docker"
  exec 9>"$run_dir/start.lock"
  flock -w 120 9 || { echo "dockerd.sh: another start holds $run_dir/start.lock" >&2; exit 1; }
  if answers; then same_root; return 0; fi
  if ! running_pid >/dev/null; then
    setsid dockerd \
      --host "unix://$sock" --pidfile "$pidfile" \
      --data-root "$cache/docker" --exec-root "$run_dir/exec" \
      --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
      --userland-proxy=false --log-opt max-size=1m --storage-driver=overlay2 \
      </dev/null >"$log" 2>&1 9>&- &
  fi
  for _ in $(seq 1 120); do
    if answers; then same_root; return 0; fi
    sleep 0.5
  done
  echo "dockerd.sh: the daemon did not answer on $sock within 60 s; its log ($log) ends with:" >&2
  tail -n 20 "$log" >&2 || true
  exit 1
}

stop() {
  local pid
  pid=$(running_pid) || return 0
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    [ -d "/proc/$pid" ] || return 0
    sleep 0.5
  done
  echo "dockerd.sh: dockerd $pid still runs 30 s after SIGTERM" >&2
  exit 1
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac

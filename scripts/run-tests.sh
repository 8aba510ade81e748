#!/usr/bin/env bash
# pytest as `make test` runs it, in two passes (README, "Tests"):
#   1. every test not marked `serial`, on TEST_WORKERS pytest-xdist workers (default 4): most
#      tests wait on processes, sockets and pauses, so the workers share the cores well;
#   2. the `serial` tests alone, without xdist: the ones whose assertions hold only on an idle
#      CPU (time bounds, latency, throughput) and the ones on the test hosts, which sort last.
# Both passes always run. The script fails if either pass failed; a pass that selected no test
# (pytest's exit 5) is not a failure unless neither pass ran any. It ends with each pass's
# summary and a total (errors counted with the failures). Arguments go to both passes, e.g.
# `scripts/run-tests.sh tests/unit`. PYTEST names the pytest to run (default .venv/bin/pytest).
set -uo pipefail
cd "$(dirname "$0")/.."
pytest=${PYTEST:-.venv/bin/pytest}
workers=${TEST_WORKERS:-4}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# The tests' folders, short: xdist puts a worker's under popen-gwN, and a service folder nested
# in a test's folder would otherwise give its router a socket path longer than AF_UNIX takes
# (107 bytes). Removed after a run that passed, kept (and named) after one that failed.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tt.XXXXXX")

# run_pass NAME PYTEST-ARGS...: runs one pass, its output shown and kept in $logs/NAME; writes
# its exit code and its seconds to $logs/NAME.status.
run_pass() {
  local name=$1 began=$SECONDS
  shift
  "$pytest" -q -p no:cacheprovider "$@" 2>&1 | tee "$logs/$name"
  echo "${PIPESTATUS[0]} $((SECONDS - began))" >"$logs/$name.status"
}

# The closing line pytest printed for a pass ("3 failed, 120 passed, 2 skipped in 50.1s").
closing_line() {
  grep -E '(^|[ =])([0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran)' "$logs/$1" |
    tail -n 1 | sed -E 's/^=+ //; s/ =+$//'
}

# count KIND: how many of that kind both passes' closing lines add up to.
count() {
  { closing_line parallel; closing_line serial; } | grep -oE "[0-9]+ ($1)\\b" |
    awk '{n += $1} END {print n + 0}'
}

# worksteal: an idle worker takes half of another's queue. xdist's default hands out long runs
# of consecutive tests, so one worker could be left with most of tests/e2e while the other idles.
# Each pass lists its 15 slowest tests, so that what the suite's time goes to stays in view.
run_pass parallel -m "not serial" -n "$workers" --dist worksteal --basetemp "$tmp/parallel" \
  --durations=15 "$@"
run_pass serial -m serial --basetemp "$tmp/serial" --durations=15 "$@"

read -r parallel_code parallel_s <"$logs/parallel.status"
read -r serial_code serial_s <"$logs/serial.status"
status=0
for code in "$parallel_code" "$serial_code"; do
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ] && [ "$status" -eq 0 ]; then
    status=$code
  fi
done
if [ "$status" -eq 0 ] && [ "$parallel_code" -eq 5 ] && [ "$serial_code" -eq 5 ]; then
  status=5
fi
echo
if [ "$status" -eq 0 ]; then
  rm -rf "$tmp"
else
  echo "the tests' folders are kept in $tmp"
fi
echo "parallel pass (-n $workers, ${parallel_s} s): $(closing_line parallel) (exit $parallel_code)"
echo "serial pass (${serial_s} s): $(closing_line serial) (exit $serial_code)"
echo "total: $(count passed) passed, $(count 'failed|errors?') failed, $(count skipped) skipped"
exit "$status"

#!/usr/bin/env bash
# Instructions per request of the HTTP process, counted by valgrind (callgrind): exact, and
# unmoved by other tenants of a shared machine, unlike req/s or CPU time.
#
#   loadtests/bench_instructions.sh NAME PORT CONC [KEY=VALUE ...]      e.g.
#   loadtests/bench_instructions.sh on 5901 64
#   loadtests/bench_instructions.sh off 5902 64 SCOREHOST_METRICS=false
#   SCRIPT=examples/score.py loadtests/bench_instructions.sh model 5903 64
#   SCRIPT= MODEL_DIR=DIR URL_PATH=/v2/models/example/infer BODY=v2.json \
#       loadtests/bench_instructions.sh v2 5904 64                         # V2 serving, no script
#
# Starts `scorehost serve` under callgrind (the worker runs natively: --trace-children=no), warms
# up with wrk, counts 20 s idle (sweeps and timers) and 20 s of wrk load at CONC connections, and
# prints (load - idle) / requests. Valgrind makes the server ~100x slower, so a run serves a few
# hundred requests; compare variants run at the same time. Needs valgrind and wrk (Debian packages).
set -euo pipefail
name=$1; port=$2; conc=$3; shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/instructions-$name
rm -f "$out".[0-9]* "$out".log "$out".wrk
script=${SCRIPT-$repo/loadtests/scripts/echo.py}   # set and empty: no entry script (V2 serving)
env "$@" SCOREHOST_PORT="$port" SCOREHOST_SHUTDOWN_DELAY_S=0 SCOREHOST_ACCESS_LOG="${SCOREHOST_ACCESS_LOG:-true}" \
    ${script:+AZUREML_ENTRY_SCRIPT="$script"} AZUREML_MODEL_DIR="${MODEL_DIR:-$repo/examples/model}" \
    valgrind --tool=callgrind --trace-children=no --callgrind-out-file="$out.%p" \
    "$repo/.venv/bin/python" -m server serve >"$out.log" 2>&1 &
vpid=$!
trap 'kill -TERM $vpid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do curl -sf "localhost:$port/health/ready" >/dev/null && break; sleep 1; done
body=${BODY:-$repo/examples/sample-request.json}
url="http://127.0.0.1:$port${URL_PATH:-/score}"
run_wrk() { wrk -t1 -c"$conc" -d"$1" --timeout 60s -s "$repo/loadtests/wrk/post.lua" "$url" -- "$body"; }
run_wrk 5s >/dev/null 2>&1
sleep 2
callgrind_control -z $vpid >/dev/null 2>&1 && sleep 20 && callgrind_control -d $vpid >/dev/null 2>&1   # dump .1: idle
callgrind_control -z $vpid >/dev/null 2>&1 && run_wrk 20s >"$out.wrk" 2>&1 && callgrind_control -d $vpid >/dev/null 2>&1  # .2: load
kill -TERM $vpid; wait $vpid 2>/dev/null || true
trap - EXIT
reqs=$(grep -oE "^ +[0-9]+ requests" "$out.wrk" | awk '{print $1}')
idle=$(grep -m1 "^totals:" "$(ls "$out".[0-9]*.1)" | awk '{print $2}')
load=$(grep -m1 "^totals:" "$(ls "$out".[0-9]*.2)" | awk '{print $2}')
echo "$name: $reqs requests, $(( (load - idle) / reqs )) instructions/request in the HTTP process"

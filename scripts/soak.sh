#!/usr/bin/env bash
# make soak: the exactly-once job live for MINUTES at RATE records/s, SIGKILLed
# every KILL_EVERY seconds and the broker hit once halfway; then drained, and
# its output checked against a bounded run over the same records: no window
# missing, none twice, every value equal. Prints RSS over time (its slope),
# the largest lag, restart times. Figures and a verdict, not a test: exit 1
# on a mismatch.
#   STORAGE=memory (default): the broker is frozen (SIGSTOP) for FREEZE
#     seconds, longer than the job's --broker-timeout (memory storage cannot
#     survive a restart); tansu's memory storage keeps up with 100k records/s.
#   STORAGE=sqlite: the broker is SIGKILLed and restarted; tansu's SQLite
#     storage takes a few thousand records/s here, so use a low RATE.
# Partitions never count as idle (a frozen broker quiets them all), so a
# reading is late only if its own partition is out of order by more than
# --max-out-of-order, as in the bounded run, whatever the timing. (Epochs are
# cut by time, as a live job's are: --epoch-records would hold every
# partition to the slowest one's pace.)
#   BIN=path/to/iotflow MINUTES=30 RATE=100000 KILL_EVERY=180 scripts/soak.sh
set -euo pipefail
BIN=$(realpath "${BIN:?set BIN to the iotflow binary}")
MINUTES=${MINUTES:-30}
RATE=${RATE:-100000}
KILL_EVERY=${KILL_EVERY:-180}
STORAGE=${STORAGE:-memory}
FREEZE=${FREEZE:-45}
case $STORAGE in memory) storage=memory ;; sqlite) storage=sqlite: ;; *) echo "STORAGE: memory or sqlite"; exit 2 ;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/processes.sh"
port=$(free_port)
B=127.0.0.1:$port

starts=0
start_broker() {
  starts=$((starts + 1))
  log=$work/broker-$starts.log
  if [ "$storage" = memory ]; then
    "$BIN" broker --port "$port" --storage memory >"$log" 2>&1 &
  else
    "$BIN" broker --port "$port" --storage "sqlite:$work/broker.db" >"$log" 2>&1 &
  fi
  broker=$!
  pids+=("$broker")
  for _ in $(seq 600); do
    # The tansu process itself (`iotflow broker` runs it as a child): what a crash kills.
    tansu=$(grep -o 'local broker ready (pid [0-9]*' "$log" 2>/dev/null | tail -1 | grep -o '[0-9]*$' || true)
    if [ -n "$tansu" ] && "$BIN" topics list --brokers "$B" >/dev/null 2>&1; then
      pids+=("$tansu")
      return 0
    fi
    sleep 0.1
  done
  echo "the broker did not start (log: $log)"; exit 1
}

start_job() { # the live job; appends its stderr to job.err
  # The commit operator's info lines carry each run's time to its first commit.
  "$BIN" --log 'warn,iotflow_sink::exactly_once::commit_op=info' run --brokers "$B" \
    --input soak.in --output-topic soak.out --dlq soak.dlq --job soak \
    -w 2 --max-out-of-order 5s --idle-timeout 1h \
    --state-dir "$work/state" --parquet-dir "$work/parquet" \
    --progress-interval 0 >/dev/null 2>>"$work/job.err" &
  job=$!
  pids+=("$job")
  job_started=$(date +%s.%N)
}

start_broker
fault="a broker restart"; [ "$storage" = memory ] && fault="the broker frozen for ${FREEZE}s"
echo "soak: $MINUTES min at $RATE records/s (1000 devices, 10 Hz, event time = now), $STORAGE broker, SIGKILL every ${KILL_EVERY}s, $fault halfway"
"$BIN" produce --brokers "$B" --topic soak.in --partitions 4 --rate "$RATE" --duration "${MINUTES}m" \
  --devices 1000 --interval 100ms --start now --duplicates 0.01 --batch-records 500 >/dev/null 2>"$work/produce.err" &
producer=$!
pids+=("$producer")
start_job
: >"$work/rss.log"
: >"$work/restarts.log"
began=$(date +%s)
next_kill=$((began + KILL_EVERY))
broker_restart_at=$((began + MINUTES * 30))
broker_restarted=0
while kill -0 "$producer" 2>/dev/null; do
  now=$(date +%s)
  if kill -0 "$job" 2>/dev/null; then
    echo "$now $(ps -o rss= -p "$job" | tr -d ' ')" >>"$work/rss.log"
  else
    # Stopped by itself (the broker went away): start it again.
    start_job
  fi
  if [ "$now" -ge "$next_kill" ]; then
    kill -9 "$job" 2>/dev/null || true
    wait "$job" 2>/dev/null || true
    killed=$(date +%s.%N)
    start_job
    echo "kill $killed $job_started" >>"$work/restarts.log"
    next_kill=$((now + KILL_EVERY))
  fi
  if [ "$broker_restarted" = 0 ] && [ "$now" -ge "$broker_restart_at" ]; then
    if [ "$storage" = memory ]; then
      kill -STOP "$tansu"
      sleep "$FREEZE"
      kill -CONT "$tansu"
    else
      kill -9 "$tansu" "$broker" 2>/dev/null || true
      wait "$broker" 2>/dev/null || true
      start_broker
    fi
    broker_restarted=1
    echo "broker $(date +%s.%N)" >>"$work/restarts.log"
  fi
  sleep 5
done
echo "devices done; draining the job"
kill -0 "$job" 2>/dev/null || start_job
# A job started a moment ago may not handle SIGUSR1 yet (it would die of
# it): give it a few seconds, and say it again until it has drained.
sleep "$(python3 -c "import time; print(max(0.0, $job_started + 3 - time.time()))")"
for i in $(seq 600); do
  kill -0 "$job" 2>/dev/null || break
  [ $((i % 5)) = 1 ] && kill -USR1 "$job" 2>/dev/null
  sleep 1
done
wait "$job" 2>/dev/null || true

echo "the bounded reference run over the same records"
"$BIN" run --brokers "$B" --input soak.in --output-topic soak.ref --dlq soak.refdlq --job soak-ref \
  -w 2 --max-out-of-order 5s --idle-timeout 1h --until-end \
  --state-dir "$work/ref-state" --parquet-dir "$work/ref-parquet" \
  --progress-interval 0 >/dev/null 2>"$work/ref.err"
for which in out ref; do
  job_name=soak; [ "$which" = ref ] && job_name=soak-ref
  "$BIN" tail --brokers "$B" --topic "soak.$which" --job "$job_name" --from-beginning --json \
    --exit-when-idle 10s >"$work/$which.jsonl" 2>/dev/null
done
python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
def windows(name):
    seen, doubled = {}, 0
    for line in open(f"{work}/{name}.jsonl"):
        r = json.loads(line)
        r.pop("epoch", None)
        key = (r["device_id"], r["metric"], r["window_start"])
        doubled += key in seen
        seen[key] = r
    return seen, doubled
out, doubled = windows("out")
ref, _ = windows("ref")
missing = [k for k in ref if k not in out]
extra = [k for k in out if k not in ref]
differ = [k for k in ref if k in out and out[k] != ref[k]]
rss = [tuple(map(float, l.split())) for l in open(f"{work}/rss.log") if len(l.split()) == 2]
t0 = rss[0][0] if rss else 0
pts = [(t - t0, kb / 1024) for t, kb in rss if t - t0 > 120]
slope = statistics.linear_regression([p[0] for p in pts], [p[1] for p in pts]).slope * 3600 if len(pts) > 2 else float("nan")
import re
restarts = [l for l in open(f"{work}/restarts.log") if l.startswith("kill")]
plain = re.sub(r"\x1b\[[0-9;]*m", "", open(f"{work}/job.err").read())
first_commit_ms = [int(m) for m in re.findall(r"first commit of this run .*?after_ms=(\d+)", plain)]
lags = []
try:
    for l in open(f"{work}/parquet/_pipeline/samples-p0.jsonl"):
        s = json.loads(l)
        lags.append(sum((s.get("lag") or {}).values()))
except FileNotFoundError:
    pass
print(f"windows: {len(ref):,} in the reference; soak run: {len(out):,}, {doubled} doubled, "
      f"{len(missing)} missing, {len(extra)} extra, {len(differ)} different")
print(f"RSS: max {max((p[1] for p in pts), default=float('nan')):.0f} MB, slope {slope:+.1f} MB/hour "
      f"(after the first 2 min, {len(pts)} samples)")
print(f"largest lag: {max(lags, default=0):,} records; {len(restarts)} SIGKILLs")
if first_commit_ms[1:]:
    later = sorted(first_commit_ms[1:])
    print(f"restart → first commit: median {statistics.median(later) / 1000:.2f} s, "
          f"max {later[-1] / 1000:.2f} s over {len(later)} restarts")
ok = not (doubled or missing or extra or differ)
print("verdict:", "ok" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
PY
resumed=$(grep -c "resuming after committed epoch" "$work/job.err" || true)
echo "restarts that resumed from a commit: $resumed"
echo "runs stopped by the broker watchdog: $(grep -c 'no broker of' "$work/job.err" || true)"

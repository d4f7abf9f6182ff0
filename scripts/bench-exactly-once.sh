#!/usr/bin/env bash
# Exactly-once figures, not assertions:
#   1. bounded throughput with exactly-once (the default) vs --at-least-once on
#      the same input and broker, with the commit latency of the exactly-once run;
#   2. recovery of a live job (250 ms epochs) under a steady producer, SIGKILLed
#      KILLS times, each at a random moment 2-6 s after the run's first commit,
#      and restarted at once: kill -> first commit of the restarted run
#      (p50/p99/max), and the staged epochs it discarded.
#   BIN=path/to/iotflow KILLS=10 RECORDS=1000000 RATE=50000 scripts/bench-exactly-once.sh
set -euo pipefail
BIN=$(realpath "${BIN:?set BIN to the iotflow binary}")
KILLS=${KILLS:-10}
RECORDS=${RECORDS:-1000000}
RATE=${RATE:-50000}
home=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  "$BIN" --home "$home" broker stop >/dev/null 2>&1 || true
  rm -rf "$home"
}
trap cleanup EXIT
addr=$("$BIN" --home "$home" broker --detach 2>/dev/null)

echo "== 1. exactly-once vs at-least-once, bounded, -w 2, $RECORDS records, 4 partitions (tansu, memory)"
"$BIN" produce --brokers "$addr" --topic eo.readings --partitions 4 --count "$RECORDS" \
  --devices 1000 --interval 100ms --json >/dev/null 2>&1
declare -A secs
for mode in at-least-once exactly-once; do
  flag=(); [ "$mode" = at-least-once ] && flag=(--at-least-once)
  out=$("$BIN" run --brokers "$addr" --input eo.readings --output-topic "eo.$mode" --dlq "eo.$mode.dlq" \
    --until-end -w 2 --json --state-dir "$home/$mode/state" --parquet-dir "$home/$mode/parquet" \
    "${flag[@]}" 2>/dev/null)
  echo "$out" > "$home/$mode.json"
done
python3 - "$home/at-least-once.json" "$home/exactly-once.json" <<'PY'
import json, sys
alo, eo = (json.load(open(p)) for p in sys.argv[1:])
rate = lambda r: r["records"] / r["seconds"]
print(f"at-least-once: {alo['records']:,} records in {alo['seconds']:.2f} s = {rate(alo):,.0f} records/s")
print(f"exactly-once:  {eo['records']:,} records in {eo['seconds']:.2f} s = {rate(eo):,.0f} records/s, "
      f"{eo['commits']} commits, commit latency {eo['commit_latency_ms_mean']:.1f} ms mean / {eo['commit_latency_ms_max']:.1f} ms max")
print(f"exactly-once / at-least-once throughput: {rate(eo) / rate(alo):.0%}")
PY

echo
echo "== 2. recovery: live job (-w 2, 250 ms epochs) under $RATE records/s, $KILLS SIGKILLs at random moments"
"$BIN" produce --brokers "$addr" --topic live.readings --partitions 4 --rate "$RATE" --duration 1h \
  --devices 1000 --interval 100ms >/dev/null 2>&1 &
pids+=($!)
sleep 2
log="$home/kills.log"
: > "$log"
for i in $(seq 0 "$KILLS"); do
  "$BIN" --log 'warn,iotflow_sink=info' run --brokers "$addr" --input live.readings \
    --output-topic live.aggregates --dlq live.dlq -w 2 \
    --state-dir "$home/live/state" --parquet-dir "$home/live/parquet" >/dev/null 2>"$home/run.$i.err" &
  job=$!
  pids+=("$job")
  # Kill only once this run has committed (its recovery is measured), then
  # at a random moment 2-6 s later (time to catch up with the producer).
  for _ in $(seq 600); do
    grep -q "first commit of this run" "$home/run.$i.err" 2>/dev/null && break
    sleep 0.1
  done
  [ "$i" -eq "$KILLS" ] && { kill -9 "$job"; wait "$job" 2>/dev/null || true; break; }
  sleep "$(python3 -c 'import random; print(round(random.uniform(2.0, 6.0), 3))')"
  echo "kill $i $(date +%s.%N)" >> "$log"
  kill -9 "$job"
  wait "$job" 2>/dev/null || true
done
python3 - "$home" "$KILLS" <<'PY'
import datetime, glob, re, sys
home, kills = sys.argv[1], int(sys.argv[2])
killed = {int(l.split()[1]): float(l.split()[2]) for l in open(f"{home}/kills.log")}
ansi = re.compile(r"\x1b\[[0-9;]*m")
recovery, discarded, missed = [], [], 0
for i, t_kill in sorted(killed.items()):
    err = ansi.sub("", open(f"{home}/run.{i + 1}.err").read())
    m = re.search(r"(\S+Z)\s+INFO .*first commit of this run", err)
    d = re.search(r"; (\d+) staged epochs discarded", err)
    if d:
        discarded.append(int(d.group(1)))
    if not m:
        missed += 1
        continue
    t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    recovery.append(t - t_kill)
recovery.sort()
pick = lambda q: recovery[min(len(recovery) - 1, int(q * len(recovery)))]
if recovery:
    print(f"kill -> first commit of the restarted run, {len(recovery)} recoveries: "
          f"p50 {pick(0.5) * 1e3:.0f} ms, p99 {pick(0.99) * 1e3:.0f} ms, max {recovery[-1] * 1e3:.0f} ms")
if missed:
    print(f"{missed} restarted runs did not commit within 60 s")
if discarded:
    print(f"staged, uncommitted epochs discarded per recovery: mean {sum(discarded) / len(discarded):.1f}, max {max(discarded)}")
PY

#!/usr/bin/env bash
# Exactly-once figures, not assertions (tansu, memory storage, -w 2):
#   1. a bounded backlog (RECORDS records from 1 Hz devices, ~10 readings per
#      window: output-heavy) read by --at-least-once and by exactly once, runs
#      interleaved REPEAT times: throughput, peak RSS, CPU seconds, their
#      ratios per pair, bytes written, epochs and records per epoch, commit
#      latency p50/p99. OLD_BIN=another build adds its exactly-once runs to
#      the same interleaving.
#   2. a live job under RATE records/s for LIVE_SECONDS, followed by
#      `iotflow tail`: window end passing the watermark -> its record visible
#      to tail, p50/p99 (watermark sampled every 100 ms from the pipeline log).
#   3. recovery of a live job SIGKILLed KILLS times at random moments:
#      kill -> first commit of the restarted run (p50/p99/max).
#   4. reading a job's history from a progress topic with HISTORY commits:
#      the whole topic (before) against back from the end (after).
#   BIN=path/to/iotflow [OLD_BIN=...] [HISTORY_BIN=...] scripts/bench-exactly-once.sh
set -euo pipefail
BIN=$(realpath "${BIN:?set BIN to the iotflow binary}")
here=$(cd "$(dirname "$0")/.." && pwd)
OLD_BIN=${OLD_BIN:+$(realpath "$OLD_BIN")}
RECORDS=${RECORDS:-1500000}
REPEAT=${REPEAT:-3}
RATE=${RATE:-100000}
LIVE_SECONDS=${LIVE_SECONDS:-40}
KILLS=${KILLS:-10}
HISTORY=${HISTORY:-100000}
home=$(mktemp -d)
pids=()
cleanup() {
  # Reaped here, so the shell does not report them as killed.
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  "$BIN" --home "$home" broker stop >/dev/null 2>&1 || true
  rm -rf "$home"
}
trap cleanup EXIT
addr=$("$BIN" --home "$home" broker --detach 2>/dev/null)

echo "== 1. backlog: $RECORDS records, 1000 devices at 1 Hz, 4 partitions; runs interleaved x$REPEAT, -w 2"
"$BIN" produce --brokers "$addr" --topic eo.readings --partitions 4 --count "$RECORDS" \
  --devices 1000 --json >/dev/null 2>&1
variants=(at-least-once exactly-once)
[ -n "$OLD_BIN" ] && variants+=(exactly-once-old)
for i in $(seq "$REPEAT"); do
  for mode in "${variants[@]}"; do
    bin=$BIN flag=()
    [ "$mode" = at-least-once ] && flag=(--at-least-once)
    [ "$mode" = exactly-once-old ] && bin=$OLD_BIN
    run="$home/$mode.$i"
    /usr/bin/time -f '%M %U %S %O' -o "$run.rss" "$bin" run --brokers "$addr" --input eo.readings \
      --output-topic "eo.$mode.$i" --dlq "eo.$mode.$i.dlq" --until-end -w 2 --json \
      --state-dir "$run/state" --parquet-dir "$run/parquet" "${flag[@]}" >"$run.json" 2>"$run.err"
  done
done
python3 - "$home" "$REPEAT" "${variants[@]}" <<'PY'
import json, statistics, sys
home, repeat, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = {v: [] for v in variants}
for v in variants:
    for i in range(1, repeat + 1):
        s = json.load(open(f"{home}/{v}.{i}.json"))
        # Peak RSS (KiB), user and system CPU seconds, 512-byte blocks written.
        rss, user, system, out = open(f"{home}/{v}.{i}.rss").read().split()[-4:]
        s["rss_mb"] = int(rss) / 1024
        s["cpu_s"] = float(user) + float(system)
        s["written_mb"] = int(out) * 512 / 1e6
        lat = []
        if v != "at-least-once":
            try:
                for line in open(f"{home}/{v}.{i}/parquet/_pipeline/commits-p0.jsonl"):
                    lat.append(json.loads(line)["latency_ms"])
            except FileNotFoundError:
                pass
        s["latencies"] = sorted(lat)
        runs[v].append(s)
rate = lambda s: s["records"] / s["seconds"]
pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
for v, ss in runs.items():
    rates = [rate(s) for s in ss]
    rss = [s["rss_mb"] for s in ss]
    epochs = [s["last_epoch"] + 1 for s in ss]
    lat = sorted(l for s in ss for l in s["latencies"])
    line = (f"{v:>17}: {statistics.median(rates):>9,.0f} records/s (runs {', '.join(f'{r:,.0f}' for r in rates)}), "
            f"peak RSS {statistics.median(rss):,.0f} MB ({', '.join(f'{r:,.0f}' for r in rss)}), "
            f"{statistics.median(epochs):.0f} epochs of ~{ss[0]['records'] / statistics.median(epochs):,.0f} records, "
            f"CPU {statistics.median(s['cpu_s'] for s in ss):.1f} s, "
            f"{statistics.median(s['written_mb'] for s in ss):.0f} MB written")
    if lat:
        line += f", commit latency p50 {pick(lat, .5):.0f} ms / p99 {pick(lat, .99):.0f} ms"
    print(line)
alo = runs["at-least-once"]
for v in variants[1:]:
    tr = [rate(e) / rate(a) for e, a in zip(runs[v], alo)]
    mr = [e["rss_mb"] / a["rss_mb"] for e, a in zip(runs[v], alo)]
    cr = [e["cpu_s"] / a["cpu_s"] for e, a in zip(runs[v], alo)]
    print(f"{v} / at-least-once, pair by pair: throughput {', '.join(f'{r:.2f}' for r in tr)} "
          f"(median {statistics.median(tr):.2f}), peak RSS {', '.join(f'{r:.2f}' for r in mr)} "
          f"(median {statistics.median(mr):.2f}), CPU {', '.join(f'{r:.2f}' for r in cr)} "
          f"(median {statistics.median(cr):.2f})")
PY

echo
echo "== 2. live: $RATE records/s for $LIVE_SECONDS s, -w 2, 250 ms epochs; window end passing the watermark -> visible to tail"
live="$home/live"
mkdir -p "$live"
# The input exists before the job starts at its end (one record creates it).
"$BIN" produce --brokers "$addr" --topic lv.readings --partitions 4 --count 1 >/dev/null 2>&1
"$BIN" run --brokers "$addr" --input lv.readings --output-topic lv.aggregates --dlq lv.dlq -w 2 \
  --start-at latest --state-dir "$live/state" --parquet-dir "$live/parquet" \
  --pipeline-log-interval 100ms --progress-interval 0 >/dev/null 2>"$live/run.err" &
job=$!
pids+=("$job")
for _ in $(seq 300); do
  grep -q "new job" "$live/run.err" 2>/dev/null && break
  sleep 0.1
done
python3 "$here/scripts/visible_latency.py" record "$BIN" "$addr" "$live/tail.jsonl" \
  --topic lv.aggregates --exit-when-idle 15s &
tailer=$!
pids+=("$tailer")
"$BIN" produce --brokers "$addr" --topic lv.readings --partitions 4 --rate "$RATE" \
  --duration "${LIVE_SECONDS}s" --devices 1000 --interval 100ms --start now >/dev/null 2>&1
kill -USR1 "$job"
wait "$job" || true
wait "$tailer" || true
python3 "$here/scripts/visible_latency.py" report "$live" "$live/tail.jsonl"

echo
echo "== 3. recovery: live job (-w 2, 250 ms epochs) under 50000 records/s, $KILLS SIGKILLs at random moments"
"$BIN" produce --brokers "$addr" --topic rc.readings --partitions 4 --rate 50000 --duration 1h \
  --devices 1000 --interval 100ms >/dev/null 2>&1 &
pids+=($!)
sleep 2
log="$home/kills.log"
: > "$log"
for i in $(seq 0 "$KILLS"); do
  "$BIN" --log 'warn,iotflow_sink=info' run --brokers "$addr" --input rc.readings \
    --output-topic rc.aggregates --dlq rc.dlq -w 2 \
    --state-dir "$home/rc/state" --parquet-dir "$home/rc/parquet" >/dev/null 2>"$home/rc.$i.err" &
  job=$!
  pids+=("$job")
  for _ in $(seq 600); do
    grep -q "first commit of this run" "$home/rc.$i.err" 2>/dev/null && break
    sleep 0.1
  done
  [ "$i" -eq "$KILLS" ] && { kill -9 "$job"; wait "$job" 2>/dev/null || true; break; }
  sleep "$(python3 -c 'import random; print(round(random.uniform(2.0, 6.0), 3))')"
  echo "kill $i $(date +%s.%N)" >> "$log"
  kill -9 "$job"
  wait "$job" 2>/dev/null || true
done
python3 - "$home" <<'PY'
import datetime, re, sys
home = sys.argv[1]
killed = {int(l.split()[1]): float(l.split()[2]) for l in open(f"{home}/kills.log")}
ansi = re.compile(r"\x1b\[[0-9;]*m")
recovery, missed = [], 0
for i, t_kill in sorted(killed.items()):
    err = ansi.sub("", open(f"{home}/rc.{i + 1}.err").read())
    m = re.search(r"(\S+Z)\s+INFO .*first commit of this run", err)
    if not m:
        missed += 1
        continue
    t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    recovery.append(t - t_kill)
recovery.sort()
pick = lambda q: recovery[min(len(recovery) - 1, int(q * len(recovery)))]
if recovery:
    print(f"kill -> first commit of the restarted run, {len(recovery)} recoveries: "
          f"p50 {pick(.5) * 1e3:.0f} ms, p99 {pick(.99) * 1e3:.0f} ms, max {recovery[-1] * 1e3:.0f} ms")
if missed:
    print(f"{missed} restarted runs did not commit within 60 s")
PY

if [ -n "${HISTORY_BIN:-}" ]; then
  echo
  echo "== 4. a job's history on a progress topic with $HISTORY of its commits"
  "$HISTORY_BIN" "$addr" "$HISTORY"
fi

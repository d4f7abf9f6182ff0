#!/usr/bin/env bash
# Alerts: what the job file's rules cost and how soon an alert is seen.
#   1. throughput: jobs/demo.toml with its five [[alert]] rules against the same
#      file without them, on one input (devices with spells of trouble), -w 2,
#      --until-end, exactly once; ROUNDS interleaved rounds, medians and ratios.
#   2. live: the demo job at RATE records/s for LIVE_SECONDS s, event time = now;
#      the moment the watermark passes an alert's window end (pipeline log,
#      100 ms samples) -> the alert visible to `iotflow tail` (read-committed),
#      p50/p99.
# Figures, not assertions; the machine's speed drifts, so compare rows of one run.
#   BIN=path/to/iotflow COUNT=1000000 scripts/bench-alerts.sh
set -euo pipefail
BIN=$(realpath "${BIN:?set BIN to the iotflow binary}")
COUNT=${COUNT:-1000000}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-20000}
LIVE_SECONDS=${LIVE_SECONDS:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
home=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$BIN" --home "$home" broker stop >/dev/null 2>&1 || true
  rm -rf "$home"
}
trap cleanup EXIT
addr=$("$BIN" --home "$home" broker --detach 2>/dev/null)
spells=(--episodes overheat,stuck,silent --episode-every 10m --episode-length 2m --episode-share 0.05)

echo "== 1. throughput: jobs/demo.toml with its 5 alert rules vs without, $COUNT records, -w 2, $ROUNDS rounds"
"$BIN" produce --brokers "$addr" --topic al.readings --partitions 4 --count "$COUNT" \
  --devices 1000 --sites 4 "${spells[@]}" --json >/dev/null 2>&1
with_rules=$home/with.toml
without_rules=$home/without.toml
cp "$here/jobs/demo.toml" "$with_rules"
# Everything from the first [[alert]] on is the rules.
sed '/^\[\[alert\]\]/,$d' "$here/jobs/demo.toml" >"$without_rules"
: >"$home/runs.jsonl"
for round in $(seq "$ROUNDS"); do
  for variant in without with; do
    file=$home/$variant.toml
    tag=$variant-$round-$RANDOM
    out=$(/usr/bin/time -f '%M' -o "$home/rss" "$BIN" run --brokers "$addr" --job-file "$file" \
      --input al.readings --dlq "al.dlq.$tag" --job "$tag" -w 2 --until-end --json --progress-interval 0 \
      --state-dir "$home/state/$tag" --parquet-dir "$home/parquet/$tag" 2>/dev/null)
    python3 - "$out" "$variant" "$(cat "$home/rss")" >>"$home/runs.jsonl" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
print(json.dumps({"variant": sys.argv[2], "rate": s["records"] / s["seconds"], "rss_mb": int(sys.argv[3]) // 1024}))
PY
  done
done
python3 - "$home/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = lambda v, k: [r[k] for r in runs if r["variant"] == v]
for v in ("without", "with"):
    print(f"  {v:<8} rules: {statistics.median(by(v, 'rate')):>10,.0f} records/s (median of {len(by(v, 'rate'))}), "
          f"peak RSS {statistics.median(by(v, 'rss_mb'))} MB")
pairs = [w / o for w, o in zip(by("with", "rate"), by("without", "rate"))]
print(f"  with / without, round by round: {', '.join(f'{p:.2f}' for p in pairs)} (median {statistics.median(pairs):.2f})")
PY

echo
echo "== 2. live: $RATE records/s for $LIVE_SECONDS s, -w 2, 250 ms epochs; watermark passes an alert's window end -> visible to tail"
live=$home/live
mkdir -p "$live"
"$BIN" produce --brokers "$addr" --topic lv.readings --partitions 4 --count 1 >/dev/null 2>&1
"$BIN" run --brokers "$addr" --job-file "$with_rules" --input lv.readings --dlq lv.dlq --job live-alerts \
  -w 2 --start-at latest --state-dir "$live/state" --parquet-dir "$live/parquet" \
  --pipeline-log-interval 100ms --progress-interval 0 >/dev/null 2>"$live/run.err" &
job=$!
pids+=("$job")
for _ in $(seq 300); do
  grep -q "new job" "$live/run.err" 2>/dev/null && break
  sleep 0.1
done
python3 "$here/scripts/visible_latency.py" record "$BIN" "$addr" "$live/tail.jsonl" \
  --topic iot.alerts --job live-alerts --exit-when-idle 20s &
tailer=$!
pids+=("$tailer")
# 2000 devices at 10 Hz: event time runs at the clock's pace at 20k records/s.
"$BIN" produce --brokers "$addr" --topic lv.readings --partitions 4 --rate "$RATE" \
  --duration "${LIVE_SECONDS}s" --devices 2000 --sites 4 --interval 100ms --start now \
  --episodes overheat,stuck,silent --episode-every 2m --episode-length 80s --episode-share 0.3 >/dev/null 2>&1
kill -USR1 "$job"
wait "$job" || true
wait "$tailer" || true
python3 "$here/scripts/visible_latency.py" report "$live" "$live/tail.jsonl" alert

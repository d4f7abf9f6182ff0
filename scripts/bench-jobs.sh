#!/usr/bin/env bash
# Job-file jobs end to end through the local broker (tansu, memory storage),
# bounded mode, exactly once: throughput and peak RSS per kind of aggregation
# at 1 and 2 workers, all on the same input (devices at sites). Figures, not
# assertions; the machine's speed drifts, so compare rows of one run.
#   BIN=path/to/iotflow COUNT=600000 scripts/bench-jobs.sh
set -euo pipefail
BIN=$(realpath "${BIN:?set BIN to the iotflow binary}")
COUNT=${COUNT:-600000}
here=$(cd "$(dirname "$0")/.." && pwd)
home=$(mktemp -d)
trap '"$BIN" --home "$home" broker stop >/dev/null 2>&1 || true; rm -rf "$home"' EXIT
addr=$("$BIN" --home "$home" broker --detach 2>/dev/null)
"$BIN" --home "$home" produce --brokers "$addr" --topic bench.readings --partitions 4 \
  --count "$COUNT" --devices 1000 --sites 8 --interval 100ms --json >/dev/null 2>&1
echo "$COUNT records (1000 devices at 8 sites, 3 metrics, 10 Hz) on 4 partitions; run --until-end, exactly once"

job() { # name, then the [[aggregation]] tables
  local file=$home/$1.toml
  printf 'name = "%s"\n[input]\ntopic = "bench.readings"\ndimensions = ["site"]\n%s\n' "$1" "$2" >"$file"
  echo "$file"
}
per_device=$(job per-device '[[aggregation]]
name = "aggregates"
window = "tumbling 10s"
topic = "b.per_device"
parquet = "aggregates"')
per_site=$(job per-site '[[aggregation]]
name = "site_1m"
group_by = ["site", "metric"]
window = "tumbling 1m"
measures = ["count", "mean", "p50", "p95", "p99"]
topic = "b.per_site"
parquet = "site_1m"')
fleet=$(job fleet '[[aggregation]]
name = "fleet_1m"
group_by = ["metric"]
window = "tumbling 1m"
measures = ["count", "mean", "min", "max", "p99"]
topic = "b.fleet"
parquet = "fleet_1m"')
# A window holding the whole input: every reading kept (exact) or digests (approx).
fleet_hour=$(job fleet-hour '[[aggregation]]
name = "fleet_1h"
group_by = ["metric"]
window = "tumbling 1h"
measures = ["count", "mean", "min", "max", "p50", "p99", "p99.9"]
topic = "b.fleet_hour"
parquet = "fleet_1h"')
fleet_hour_approx=$(job fleet-hour-approx '[[aggregation]]
name = "fleet_1h"
group_by = ["metric"]
window = "tumbling 1h"
measures = ["count", "mean", "min", "max", "p50", "p99", "p99.9"]
percentiles = "approx"
topic = "b.fleet_hour_approx"
parquet = "fleet_1h"')
sessions=$(job sessions '[[aggregation]]
name = "warm"
group_by = ["device"]
window = "session 2s"
where = "metric == '"'"'temperature'"'"' and value > 22"
measures = ["count", "first_ts", "last_ts", "max"]
topic = "b.sessions"
parquet = "warm"')
demo=$here/jobs/demo.toml

printf '%-18s %-8s %12s %14s %10s %10s\n' job workers seconds records/s windows "peak RSS"
for w in 1 2; do
  for name in per_device per_site fleet fleet_hour fleet_hour_approx sessions demo; do
    file=${!name}
    # Each run its own job name, state and topics' consumer position: a fresh job.
    tag=$name-w$w-$RANDOM
    out=$(/usr/bin/time -f '%M' -o "$home/rss" "$BIN" run --brokers "$addr" --job-file "$file" \
      --input bench.readings --dlq "b.dlq.$tag" --job "$tag" -w "$w" --until-end --json --progress-interval 0 \
      --state-dir "$home/state/$tag" --parquet-dir "$home/parquet/$tag" 2>/dev/null)
    python3 - "$out" "$name" "$w" "$(cat "$home/rss")" <<'PY'
import json, sys
s, name, w, rss = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
print(f"{name:<18} {w:<8} {s['seconds']:>12.2f} {s['records'] / s['seconds']:>14,.0f} {s['windows_final']:>10,} {rss // 1024:>7} MB")
PY
  done
done

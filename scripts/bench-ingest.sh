#!/usr/bin/env bash
# Produce throughput of the simulator + rskafka producer into the local tansu
# broker (memory storage), with 1 and 4 partitions. Prints one line per run.
#   BIN=path/to/iotflow COUNT=1000000 scripts/bench-ingest.sh
set -euo pipefail
BIN=${BIN:?set BIN to the iotflow binary}
COUNT=${COUNT:-1000000}
home=$(mktemp -d)
trap '"$BIN" --home "$home" broker stop >/dev/null 2>&1 || true; rm -rf "$home"' EXIT
addr=$("$BIN" --home "$home" broker --detach)
echo "local broker on $addr (tansu, memory storage); $COUNT records per run, canonical format, 3 metrics"
printf '%-12s %12s %14s %14s %10s\n' partitions records readings/s records/s MB/s
for partitions in 1 4; do
  json=$("$BIN" --home "$home" produce --brokers "$addr" --topic "bench-${partitions}p" \
    --partitions "$partitions" --count "$COUNT" --devices 1000 --interval 100ms --json)
  python3 -c '
import json, sys
s = json.loads(sys.argv[1]); p = sys.argv[2]
secs, records, readings, mb = s["seconds"], s["records"], s["readings"], s["bytes"] / 1e6
print(f"{p:<12} {records:>12,} {readings/secs:>14,.0f} {records/secs:>14,.0f} {mb/secs:>10.1f}")
' "$json" "$partitions"
done
peak=$(grep -E '^VmHWM' /proc/"$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["pid"])' "$home/broker/local-broker.json")"/status 2>/dev/null || true)
echo "broker ${peak:-VmHWM: n/a}"

#!/usr/bin/env bash
# Dataflow benchmarks: figures, not assertions.
#   1. the file-source job (aggregate-file) at 1 and 2 workers on the peers' data
#      (JSON lines and Parquet),
#      checked against DuckDB's output;
#   2. end to end through the local broker in bounded mode, next to rskafka's raw
#      fetch rate on the same broker in the same run;
#   3. the peers' own harness with our binary beside DuckDB, PyFlink and Bytewax.
#   BIN=path/to/iotflow BENCH_N=2000000 scripts/bench-dataflow.sh
set -euo pipefail
BIN=$(realpath "${BIN:?set BIN to the iotflow binary}")
N=${BENCH_N:-2000000}
here=$(cd "$(dirname "$0")/.." && pwd)
peers_src=${PEERS_DIR:-$here/../shared/peers}
work=${IOTFLOW_CACHE_DIR:-$HOME/.cache/iotflow}/peers
mkdir -p "$work/out" "$work/results"
# shared/ is read-only: run the peers from a copy that keeps its venv and data.
cp -r --update "$peers_src"/. "$work"/
cd "$work"
command -v java >/dev/null || { echo "PyFlink needs Java 17: installing"; apt-get install -y -qq openjdk-17-jre-headless; }
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements-lock.txt; }
PY=.venv/bin/python
[ -f "data/readings_$N.jsonl" ] || $PY gen.py -n "$N"
data=data/readings_$N.jsonl
ref=out/duckdb-jsonl_ref_$N.csv
[ -f "$ref" ] || $PY job_duckdb.py "$data" "$ref" >/dev/null

echo "== 1. file source: iotflow aggregate-file, $N readings ($(du -h "$data" | cut -f1)), 10 s tumbling, 2 s watermark"
printf '%-8s %-8s %10s %14s %12s %s\n' input workers seconds readings/s "peak RSS" "matches DuckDB"
for input in "$data" "${data%.jsonl}.parquet"; do
  for w in 1 2; do
    out=$($BIN aggregate-file "$input" "out/iotflow_w$w.csv" -w "$w" 2>/dev/null)
    secs=$(sed -n 's/^PROC_SECONDS=//p' <<<"$out")
    /usr/bin/time -f '%M' -o rss.txt "$BIN" aggregate-file "$input" "out/iotflow_w$w.csv" -w "$w" >/dev/null 2>&1
    printf '%-8s %-8s %10s %14.0f %9s MB %s\n' "${input##*.}" "$w" "$secs" "$(python3 -c "print($N / $secs)")" "$(( $(cat rss.txt) / 1024 ))" "$($PY compare.py "$ref" "out/iotflow_w$w.csv")"
  done
done
echo "DuckDB on the same file: $($PY job_duckdb.py "$data" out/duckdb_again.csv | sed -n 's/^PROC_SECONDS=//p') s"

echo
echo "== 2. end to end through the local broker (tansu, memory storage), bounded mode"
home=$(mktemp -d)
trap '"$BIN" --home "$home" broker stop >/dev/null 2>&1 || true; rm -rf "$home"' EXIT
addr=$("$BIN" --home "$home" broker --detach 2>/dev/null)
records=$((N / 3))
"$BIN" --home "$home" produce --brokers "$addr" --topic bench.readings --partitions 4 --count "$records" \
  --devices 1000 --interval 100ms --json >/dev/null 2>&1
raw=$("$BIN" scan --brokers "$addr" --topic bench.readings --raw --json)
run=$(/usr/bin/time -f '%M' -o rss.txt "$BIN" run --brokers "$addr" --input bench.readings \
  --output-topic bench.aggregates --dlq bench.dlq --until-end -w 2 --json \
  --state-dir "$home/state" --parquet-dir "$home/parquet" 2>/dev/null)
python3 - "$raw" "$run" "$(cat rss.txt)" <<'PY'
import json, sys
raw, run, rss = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
e2e = run["records"] / run["seconds"]
print(f"raw rskafka fetch: {raw['records']:,} records in {raw['seconds']:.2f} s = {raw['records_per_sec']:,.0f} records/s ({raw['mb_per_sec']:.1f} MB/s)")
print(f"iotflow run -w 2 (exactly once):  {run['records']:,} records ({run['readings_accepted']:,} readings) in {run['seconds']:.2f} s = "
      f"{e2e:,.0f} records/s, {run['readings_accepted'] / run['seconds']:,.0f} readings/s, peak RSS {rss // 1024} MB")
print(f"end to end / raw fetch: {e2e / raw['records_per_sec']:.0%}")
PY

echo
echo "== 3. peers (shared/peers/run_all.sh), N=$N"
printf '#!/bin/sh\nexec "%s" aggregate-file "$1" "$2" -w 2\n' "$BIN" > iotflow_rust_bin.sh
chmod +x iotflow_rust_bin.sh
RUST_BIN=$work/iotflow_rust_bin.sh ENGINES="${PEER_ENGINES:-duckdb-parquet duckdb-jsonl rust-jsonl rust-parquet flink bytewax}" ./run_all.sh "$N" 2>&1 | tail -12

#!/usr/bin/env bash
# Executes the notebooks headless into HTML; a cell that raises (a failed
# check included) fails the run.
#   scripts/notebooks.sh demo   against the demo's dataset (make notebooks)
#   scripts/notebooks.sh test   against a small dataset the real pipeline makes here (make test)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$here/.venv
"$here/scripts/venv.sh"

case "${1:-}" in
  demo)
    dataset=$here/data/demo/parquet
    [ -d "$dataset/aggregates" ] && [ -d "$dataset/site_1m" ] && [ -d "$dataset/alerts" ] || { echo "no demo output in $dataset: run make demo first"; exit 1; }
    out=$here/data/notebooks
    ;;
  test)
    BIN=$(realpath "${BIN:?set BIN to the iotflow binary}")
    work=$(mktemp -d)
    home=$work/home
    trap '"$BIN" --home "$home" broker stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
    addr=$("$BIN" --home "$home" broker --detach 2>/dev/null)
    "$BIN" --home "$home" topics create --brokers "$addr" --partitions 2 >/dev/null
    # The demo's job file: per-device statistics and per-site percentiles, both datasets read.
    # Spells of trouble often enough that the alert rules fire and resolve (alerts.ipynb).
    "$BIN" produce --brokers "$addr" --devices 20 --sites 3 --count 6000 --duplicates 0.01 --bad 0.01 --late 0.01 \
      --episodes overheat,stuck,silent --episode-every 2m --episode-length 90s --episode-share 0.4 --json >/dev/null
    "$BIN" run --brokers "$addr" --job-file "$here/jobs/demo.toml" --until-end --epoch-records 500 -w 2 \
      --parquet-dir "$work/parquet" --state-dir "$work/state" --json >/dev/null
    dataset=$work/parquet
    out=$work/html
    ;;
  *) echo "usage: $0 demo|test"; exit 2 ;;
esac

mkdir -p "$out"
for nb in "$here"/notebooks/*.ipynb; do
  name=$(basename "${nb%.ipynb}")
  rm -f "$out/$name.html"
  start=$(date +%s%N)
  if ! IOTFLOW_PARQUET=$dataset "$venv/bin/jupyter-nbconvert" --to html --execute "$nb" \
      --output-dir "$out" >"$out/$name.log" 2>&1; then
    cat "$out/$name.log"
    echo "notebook $name.ipynb failed (log above)"
    exit 1
  fi
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "$name.ipynb: ok in ${ms} ms -> $out/$name.html"
done

if [ "$1" = test ]; then
  # The health checks must be able to fail: a commit missing from the log is caught.
  tampered=$work/tampered
  cp -r "$dataset" "$tampered"
  sed -i 2d "$tampered/_pipeline/commits-p0.jsonl"
  if IOTFLOW_PARQUET=$tampered "$venv/bin/jupyter-nbconvert" --to html --execute \
      "$here/notebooks/pipeline_health.ipynb" --output-dir "$work/tampered-html" >"$work/tampered.log" 2>&1; then
    echo "pipeline_health.ipynb passed a log with a commit missing"
    exit 1
  fi
  grep -q "not the epoch after the previous one" "$work/tampered.log" || {
    cat "$work/tampered.log"; echo "pipeline_health.ipynb failed, but not on the missing commit"; exit 1; }
  echo "pipeline_health.ipynb: a log with a commit missing fails its checks, as it should"
  # And the alert checks: a firing dropped from the dataset leaves its resolve an orphan.
  tampered=$work/tampered-alerts
  cp -r "$dataset" "$tampered"
  "$venv/bin/python" - "$tampered/alerts" <<'PY'
import glob, sys
import pyarrow.compute as pc, pyarrow.parquet as pq
for path in sorted(glob.glob(f"{sys.argv[1]}/*/*.parquet")):
    t = pq.read_table(path)
    resolved = t.filter(pc.equal(t["state"], "resolved"))
    if resolved.num_rows:
        r = resolved.slice(0, 1)
        firing = pc.and_(pc.equal(t["state"], "firing"), pc.and_(
            pc.equal(t["alert"], r["alert"][0]), pc.and_(pc.equal(t["group"], r["group"][0]), pc.equal(t["since"], r["since"][0]))))
        for other in sorted(glob.glob(f"{sys.argv[1]}/*/*.parquet")):
            o = pq.read_table(other)
            keep = pc.invert(pc.and_(pc.equal(o["state"], "firing"), pc.and_(
                pc.equal(o["alert"], r["alert"][0]), pc.and_(pc.equal(o["group"], r["group"][0]), pc.equal(o["since"], r["since"][0])))))
            pq.write_table(o.filter(keep), other)
        break
PY
  if IOTFLOW_PARQUET=$tampered "$venv/bin/jupyter-nbconvert" --to html --execute \
      "$here/notebooks/alerts.ipynb" --output-dir "$work/tampered-html" >"$work/tampered-alerts.log" 2>&1; then
    echo "alerts.ipynb passed a dataset with a firing missing"
    exit 1
  fi
  grep -q "resolved without its firing" "$work/tampered-alerts.log" || {
    cat "$work/tampered-alerts.log"; echo "alerts.ipynb failed, but not on the missing firing"; exit 1; }
  echo "alerts.ipynb: a dataset with a firing missing fails its checks, as it should"
fi

#!/usr/bin/env python3
"""How soon a live job's output is seen: the moment the watermark passes a
record's window end (the job's pipeline log, sampled every 100 ms) -> the
moment `iotflow tail` (read-committed) printed the record.

  visible_latency.py record BIN ADDR OUT.jsonl TAIL-ARGS...   # run tail, stamp each record
  visible_latency.py report LIVE_DIR OUT.jsonl [LABEL]        # p50/p99 in ms
"""
import bisect
import collections
import json
import subprocess
import sys
import time


def record(bin_, addr, out, tail_args):
    p = subprocess.Popen([bin_, "tail", "--brokers", addr, "--json", *tail_args],
                         stdout=subprocess.PIPE, text=True)
    with open(out, "w") as f:
        for line in p.stdout:
            f.write(json.dumps({"seen_ms": time.time() * 1e3, "record": json.loads(line)}) + "\n")


def report(live, seen, label):
    samples = [json.loads(l) for l in open(f"{live}/parquet/_pipeline/samples-p0.jsonl")]
    wm = [(s["at_ms"], s["watermark_ms"]) for s in samples if s.get("watermark_ms") is not None]
    marks = [w for _, w in wm]
    lat, kinds = [], collections.Counter()
    for line in open(seen):
        t = json.loads(line)
        end = t["record"]["window_end"]
        i = bisect.bisect_left(marks, end)
        if i == 0 or i >= len(wm):
            continue  # closed before sampling began, or by the drain
        (t0, w0), (t1, w1) = wm[i - 1], wm[i]
        closed = t0 + (t1 - t0) * (end - w0) / max(1, w1 - w0)
        lat.append(t["seen_ms"] - closed)
        if label:
            kinds[t["record"].get(label, "?")] += 1
    lat.sort()
    if not lat:
        print("  nothing measured")
        return
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    what = f"{len(lat):,} records"
    if kinds:
        what += " (" + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ")"
    print(f"  {what}: p50 {pick(.5):.0f} ms, p99 {pick(.99):.0f} ms "
          f"({pick(.5) / 250:.1f} / {pick(.99) / 250:.1f} epoch intervals of 250 ms)")


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        report(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)

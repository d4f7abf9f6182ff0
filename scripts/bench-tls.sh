#!/usr/bin/env bash
# TLS against plaintext, end to end, figures not assertions: two tansu brokers
# (memory storage), one reached directly, one through stunnel (TLS, a CA made
# here with openssl), the same COUNT records produced to each (same seed),
# then the exactly-once job (-w 2, bounded) run over each, interleaved REPEAT
# times. Prints records/s per run, the medians and the TLS/plaintext ratio of
# each pair, and the producers' rates.
#   BIN=path/to/iotflow COUNT=1000000 REPEAT=3 scripts/bench-tls.sh
set -euo pipefail
BIN=$(realpath "${BIN:?set BIN to the iotflow binary}")
COUNT=${COUNT:-1000000}
REPEAT=${REPEAT:-3}
TANSU=$("$BIN" broker install | tail -1)
. "$(dirname "$0")/processes.sh"

cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=bench ca" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
echo "subjectAltName=IP:127.0.0.1" >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext \
  -out server.pem 2>/dev/null

plain=$(free_port) behind=$(free_port) tls=$(free_port)
broker() { # listen advertise
  "$TANSU" broker --cluster-id bench --listener-url "tcp://127.0.0.1:$1" \
    --advertised-listener-url "tcp://127.0.0.1:$2" --storage-engine memory://tansu/ >/dev/null 2>&1 &
  pids+=($!)
}
broker "$plain" "$plain"
broker "$behind" "$tls"
printf 'foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
  "$tls" "$behind" "$work/server.pem" "$work/server.key" >stunnel.conf
stunnel4 stunnel.conf >/dev/null 2>&1 &
pids+=($!)
declare -A flags=([plaintext]="--brokers 127.0.0.1:$plain"
  [tls]="--brokers 127.0.0.1:$tls --security-protocol ssl --ssl-ca-location $work/ca.pem")
for mode in plaintext tls; do
  for _ in $(seq 100); do "$BIN" topics list ${flags[$mode]} >/dev/null 2>&1 && break; sleep 0.1; done
done

echo "== $COUNT records (1000 devices, 4 partitions), produced to each broker"
for mode in plaintext tls; do
  "$BIN" produce ${flags[$mode]} --topic tls.in --partitions 4 --count "$COUNT" --devices 1000 \
    --seed 7 --json >"produce.$mode.json" 2>/dev/null
  python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
rate = s["records"] / s["seconds"]
print(f"  produce {sys.argv[2]:<10} {rate:>10,.0f} records/s")
' "produce.$mode.json" "$mode"
done

echo "== the exactly-once job, -w 2, bounded, interleaved x$REPEAT"
for i in $(seq "$REPEAT"); do
  for mode in plaintext tls; do
    "$BIN" run ${flags[$mode]} --input tls.in --output-topic "tls.out.$i" --dlq "tls.dlq.$i" \
      --progress-topic "tls.progress" --job "bench-$i" -w 2 --until-end --json --progress-interval 0 \
      --state-dir "$work/$mode.$i/state" --parquet-dir "$work/$mode.$i/parquet" >"run.$mode.$i.json" 2>/dev/null
  done
done
python3 - "$work" "$REPEAT" <<'PY'
import json, statistics, sys
work, repeat = sys.argv[1], int(sys.argv[2])
rate = lambda mode, i: (lambda s: s["records"] / s["seconds"])(json.load(open(f"{work}/run.{mode}.{i}.json")))
pairs = [(rate("plaintext", i), rate("tls", i)) for i in range(1, repeat + 1)]
for i, (p, t) in enumerate(pairs, 1):
    print(f"  round {i}: plaintext {p:>10,.0f}  tls {t:>10,.0f} records/s  tls/plaintext {t / p:.2f}")
p, t = statistics.median(x for x, _ in pairs), statistics.median(y for _, y in pairs)
print(f"  median: plaintext {p:,.0f}, tls {t:,.0f} records/s; ratio of medians {t / p:.2f}, "
      f"median of pair ratios {statistics.median(y / x for x, y in pairs):.2f}")
PY

#!/usr/bin/env bash
# The project's Python venv (.venv): the notebooks' packages and confluent-kafka
# (librdkafka, which reads what iotflow writes in the secured-cluster test),
# installed from notebooks/requirements-lock.txt, again whenever the lock changes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$here/.venv
lock=$here/notebooks/requirements-lock.txt
stamp=$venv/.installed-lock
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! cmp -s "$lock" "$stamp"; then
  "$venv/bin/pip" install -q -r "$lock"
  cp "$lock" "$stamp"
fi

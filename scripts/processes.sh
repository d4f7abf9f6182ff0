# Sourced by the scripts that start processes (soak.sh, bench-tls.sh): a
# scratch directory ($work) and the pids of what they start ($pids), both
# gone on exit (SIGKILL, rm -rf); free_port prints a free loopback port.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# iotflow — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Build output lives outside the checkout so fresh clones (and CI) reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/iotflow/target
# CI builds each commit once: incremental caches (~1.8 GB for the debug build)
# would only take disk there, and a CI run has run out of it.
ifeq ($(CI),true)
export CARGO_INCREMENTAL ?= 0
endif
CARGO ?= cargo
DEBUG_BIN := $(CARGO_TARGET_DIR)/debug/iotflow
RELEASE_BIN := $(CARGO_TARGET_DIR)/release/iotflow
BENCH_COUNT ?= 1000000
BENCH_N ?= 2000000
BENCH_JOBS_COUNT ?= 600000
FUZZ_RUNS ?= 10000000
FUZZ_TARGETS ?= parse_record parse_mapped commit_record snapshot snapshot_chain pending_segment job_file decode_registry
CHAOS_KILLS ?= 200
SOAK_MINUTES ?= 30
# tansu's memory storage keeps every record in RAM: 30 min at 100k/s (180M records) outgrows 24 GB.
SOAK_RATE ?= 25000
SOAK_STORAGE ?= memory
TOOLS_BIN := $(HOME)/.cache/iotflow/tools/bin

.PHONY: help demo demo-redpanda notebooks test prune-target tansu chromium prometheus iproute2 stunnel venv nextest build release lint fmt bench bench-tls bench-avro bench-ingest bench-dataflow bench-exactly-once bench-jobs bench-alerts soak chaos fuzz clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

demo: release tansu-release ## Run the demo: local broker, the exactly-once job live, devices at 100k records/s, a drain, a checked summary
	$(RELEASE_BIN) demo $(DEMO_ARGS)

BROKERS ?= 127.0.0.1:19092
demo-redpanda: release ## The demo against a running cluster (docker compose -f redpanda/compose.yaml up -d) at BROKERS
	$(RELEASE_BIN) demo --brokers $(BROKERS) $(DEMO_ARGS)

notebooks: ## Execute the notebooks headless against the demo's output (run make demo first); HTML in data/notebooks
	BIN=$(RELEASE_BIN) ./scripts/notebooks.sh demo

test: lint nextest build tansu chromium prometheus iproute2 stunnel venv ## Run every check and test (what CI runs)
	$(CARGO) nextest run --workspace --all-targets --no-fail-fast
	BIN=$(DEBUG_BIN) ./scripts/notebooks.sh test

nextest: ## Install cargo-nextest if it is missing
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install cargo-nextest --locked

build: prune-target ## Debug build of everything (tests use it)
	$(CARGO) build --workspace --all-targets

prune-target: ## Clear stale build output: after build settings change, past 8 GB a profile, incremental caches under CI
	./scripts/prune-target.sh

release: prune-target ## Optimised build of the iotflow binary
	$(CARGO) build --release --bin iotflow

tansu: build ## Install the tansu broker into ~/.cache/iotflow if missing (~25 min once)
	$(DEBUG_BIN) broker install

tansu-release: release
	$(RELEASE_BIN) broker install

chromium: ## Install Debian's chromium if missing (the status-page test renders in it)
	@command -v chromium >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y -qq chromium || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }; }

prometheus: ## Install Debian's prometheus (and promtool) if missing: the pipeline-health rules are tested against it
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y -qq prometheus || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq prometheus; }; }

iproute2: ## Install Debian's iproute2 if missing (`ip netns`: the several-hosts test)
	@command -v ip >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y -qq iproute2 || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq iproute2; }; }

stunnel: ## Install Debian's stunnel4 and openssl if missing (the TLS terminator and certificates of the secured-cluster test)
	@command -v stunnel4 >/dev/null && command -v openssl >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y -qq stunnel4 openssl || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq stunnel4 openssl; }; }

venv: ## The project's Python venv (.venv): notebook packages and confluent-kafka, from notebooks/requirements-lock.txt
	./scripts/venv.sh

lint: prune-target ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: bench-ingest bench-dataflow bench-exactly-once bench-jobs bench-alerts bench-tls ## Print every benchmark figure

bench-ingest: release tansu-release ## Produce throughput into the local broker, 1 and 4 partitions
	BIN=$(RELEASE_BIN) COUNT=$(BENCH_COUNT) ./scripts/bench-ingest.sh

bench-exactly-once: release tansu-release ## Exactly-once vs at-least-once (throughput, RSS, CPU, bytes written), commit and visibility latency, recovery, history reads (OLD_BIN=another build to compare)
	$(CARGO) build --profile tools -p iotflow-sink --example progress_history
	BIN=$(RELEASE_BIN) HISTORY_BIN=$(CARGO_TARGET_DIR)/tools/examples/progress_history ./scripts/bench-exactly-once.sh

bench-jobs: release tansu-release ## Job files end to end: per device, per site, fleet-wide, sessions, the demo job; 1 and 2 workers
	BIN=$(RELEASE_BIN) COUNT=$(BENCH_JOBS_COUNT) ./scripts/bench-jobs.sh

bench-alerts: release tansu-release ## Alerts: the demo job with its 5 rules vs none, and window end -> alert seen by tail in a live run
	BIN=$(RELEASE_BIN) ./scripts/bench-alerts.sh

bench-tls: release tansu-release stunnel ## The exactly-once job over TLS (stunnel) vs plaintext, same records, interleaved; producer rates too
	BIN=$(RELEASE_BIN) ./scripts/bench-tls.sh

bench-avro: release tansu-release ## The default job over the same records in JSON, Avro and Protobuf (a test registry), interleaved: records/s, ratios, decode cost
	IOTFLOW_BENCH_BIN=$(RELEASE_BIN) $(CARGO) nextest run --test registry --run-ignored only --no-capture bench_avro_against_json

bench-dataflow: release tansu-release ## Dataflow throughput: file source, end to end vs raw fetch, peers
	BIN=$(RELEASE_BIN) BENCH_N=$(BENCH_N) ./scripts/bench-dataflow.sh

soak: release tansu-release ## The live job for SOAK_MINUTES at SOAK_RATE with SIGKILLs and the broker frozen (SOAK_STORAGE=memory) or restarted (sqlite), checked against a bounded run; RSS slope, lag, restart times
	BIN=$(RELEASE_BIN) MINUTES=$(SOAK_MINUTES) RATE=$(SOAK_RATE) STORAGE=$(SOAK_STORAGE) ./scripts/soak.sh

chaos: build tansu ## SIGKILL the exactly-once job CHAOS_KILLS times at random moments and compare with a clean run
	IOTFLOW_CHAOS_KILLS=$(CHAOS_KILLS) $(CARGO) nextest run --test exactly_once --no-capture sigkill

fuzz: ## Fuzz every decoder of outside bytes, FUZZ_RUNS executions each (cargo fuzz on stable via RUSTC_BOOTSTRAP=1; snapshot chains of at most 4 KiB, 20x faster); corpora in fuzz/corpus
	@test -x $(TOOLS_BIN)/cargo-fuzz || $(CARGO) install cargo-fuzz --locked --root $(HOME)/.cache/iotflow/tools
	@set -o pipefail; for t in $(FUZZ_TARGETS); do \
		echo "== $$t: $(FUZZ_RUNS) runs"; \
		RUSTC_BOOTSTRAP=1 PATH=$(TOOLS_BIN):$$PATH cargo fuzz run $$t --fuzz-dir fuzz --target-dir $(HOME)/.cache/iotflow/fuzz-target \
			-- -runs=$(FUZZ_RUNS) -max_len=$$( [ $$t = snapshot_chain ] && echo 4096 || echo 65536 ) -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
			| grep -E "^(Done|==[0-9]+==|thread .* panicked|SUMMARY|stat::number_of_executed_units|stat::average_exec_per_sec)" || exit 1; \
	done

clean: ## Remove build output and local data
	$(CARGO) clean
	rm -rf data

# The README's two commands: `make demo` and `make test`. Each creates .venv and installs the pinned
# requirements on first use (and again whenever a requirements file changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m 'not chaos' -x"`.
PYTEST_ARGS ?=
# Extra broker arguments, e.g. `make broker ARGS="--fresh"`.
ARGS ?=

.PHONY: venv test failover demo broker cluster api lint chaos fuzz bench bench-metrics bench-api bench-scale

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

# The suite against a real broker (see README: how the tests find one), but for its two heaviest parts, each a
# target of its own (.ci/run runs all three): the crash and outage runs (`make chaos`) and the tests on a
# three-node cluster of their own (`make failover`).
test: venv
	$(PY) -m pytest -m "not failover and not chaos" $(PYTEST_ARGS)

# On a three-node cluster: rides flow while the leader of ride_details[0] is SIGKILLed, restarted, then every node
# restarted in turn; nothing lost or duplicated, one email per ride, analysis exact; the stall of each failover.
# With it, the launcher's cluster tests and a quick run of the scale-out bench.
failover: venv
	$(PY) -m pytest -m failover -s $(PYTEST_ARGS)

# The crash and outage runs: rides flow while scripts are SIGKILLed and the broker restarts (the chaos test),
# the broker goes away under the scripts or while they start (test_outage, test_startup), kill -9 mid-stream.
# `make chaos REPEAT=10` runs them ten times in a row (a new random schedule each time) and stops at the
# first failure, saying how many consecutive runs passed.
REPEAT ?= 1
chaos: venv
	@for i in $$(seq $(REPEAT)); do \
	  echo "=== make chaos: run $$i of $(REPEAT)"; \
	  $(PY) -m pytest -m chaos -s $(PYTEST_ARGS) || { echo "make chaos: run $$i failed after $$((i - 1)) consecutive passes"; exit 1; }; \
	done; echo "make chaos: $(REPEAT) consecutive passes"

# Hostile records on their own: every one dead-lettered with its reason, nothing crashes.
fuzz: venv
	$(PY) -m pytest -m fuzz $(PYTEST_ARGS)

# Every script's rate next to a raw kafka-python loop doing the same I/O, the broker's limit (Java's producer),
# peak RSS and end-to-end latency, in one run (bench/README.md). `make bench ARGS=--quick`: a short check.
bench: venv
	$(PY) bench/pipeline.py $(ARGS)

# What --metrics-port costs (transaction.py metrics off, on, on, off in one run), the scrape's time, and the
# request-to-email latency its histogram shows at 100 and 500 rides/s. `make bench-metrics ARGS=--quick`: a check.
bench-metrics: venv
	$(PY) bench/metrics_cost.py $(ARGS)

# POST /rides at saturation and at 500 and 1,000 requests/s, next to rides.py (bench/api_bench.py). ARGS=--quick: a check.
bench-api: venv
	$(PY) bench/api_bench.py $(ARGS)

# transaction.py's rate with 1, 2 and 3 instances on a three-node cluster of its own, and where the CPU goes
# (bench/scale_out.py). ARGS=--quick: a check.
bench-scale: venv
	$(PY) bench/scale_out.py $(ARGS)

# Rides through a real broker (and over HTTP through api.py), then everything the demo started is stopped.
# `make demo ARGS="--keep 300"`: everything keeps running five more minutes, to watch the live page.
demo: venv
	$(PY) tools/demo.py $(ARGS)

# The HTTP front door and the live page on http://127.0.0.1:8000/ (a broker must be running: `make broker`).
api: venv
	$(PY) api.py $(ARGS)

# A development broker in the foreground on localhost:9092; Ctrl-C stops it.
broker: venv
	$(PY) -m tools.broker $(ARGS)

# A three-node cluster (replication 3, min.insync.replicas 2) on 127.0.0.1:19092-19094; a node killed from outside
# is reported and the others keep running; `kill -HUP <launcher pid>` starts it again; Ctrl-C stops them all.
cluster: venv
	$(PY) -m tools.broker --nodes 3 $(ARGS)

# ruff, then mypy with the pydantic plugin (pyproject.toml). email.py on its own: in the first run `email` is
# the standard library's package, which our email.py would shadow.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy email.py

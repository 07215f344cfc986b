# Two commands on a fresh machine: `make run` and `make test`. Both install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install postgres-server netns-tools prometheus monitor run autoscale images test unit lint format bench bench-stores soak screenshot clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The tests start their own PostgreSQL server (harness/postgres.py) from Debian's server
# binaries: installed here, as root, only when none is.
postgres-server:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; }

# The network fault suite (tests/test_faults_net.py) builds namespaces, a bridge and veths with
# iproute2 and cuts and shapes links with iptables (harness/netns.py): installed here, as
# root, only when missing. Without root the suite skips, and so does this.
netns-tools:
	@[ "$$(id -u)" != 0 ] || { command -v ip && command -v tc && command -v iptables; } >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		iproute2 iptables; }

# Prometheus 2.42 from Debian's package and the scripts its web UI loads, unpacked under
# .tools/prometheus (nothing installed system-wide, no daemon started): the monitoring tests
# and `make monitor` run it from there (launcher/prometheus.py).
PROMETHEUS_DEBS := prometheus libjs-bootstrap4 libjs-eonasdan-bootstrap-datetimepicker libjs-jquery \
	libjs-jquery-hotkeys libjs-moment libjs-moment-timezone libjs-mustache libjs-popper.js \
	libjs-rickshaw libjs-d3 fonts-glyphicons-halflings
# Named for the list above: a new list unpacks afresh.
PROMETHEUS := .tools/prometheus/.unpacked-2

$(PROMETHEUS):
	rm -rf .tools/prometheus.part && mkdir -p .tools/prometheus.part/debs
	cd .tools/prometheus.part/debs && { apt-get download $(PROMETHEUS_DEBS) || \
		{ apt-get update && apt-get download $(PROMETHEUS_DEBS); }; }
	for deb in .tools/prometheus.part/debs/*.deb; do dpkg-deb -x "$$deb" .tools/prometheus.part; done
	touch .tools/prometheus.part/$(notdir $(PROMETHEUS))
	rm -rf .tools/prometheus.part/debs .tools/prometheus && mv .tools/prometheus.part .tools/prometheus

prometheus: $(PROMETHEUS)

run: install
	$(BIN)/python -m launcher

# `make run` with Ray's autoscaler adding and removing nodes on this machine (README,
# "Autoscaling"): a head of 4 GPU slots and up to two nodes of 8 (deploy/local/autoscaling.yaml).
autoscale: install
	IMAGE_SERVICE_AUTOSCALING_CONFIG=deploy/local/autoscaling.yaml IMAGE_SERVICE_CONCURRENCY=4 \
		IMAGE_SERVICE_AUTOSCALE_MAX_SLOTS=20 IMAGE_SERVICE_AUTOSCALE_RETIRE_SECONDS=2 \
		$(BIN)/python -m launcher

# `make run` with a Prometheus beside it (launcher/monitor.py) on RAY_PROMETHEUS_HOST
# (default http://127.0.0.1:9090), the rules of deploy/monitoring loaded.
monitor: install prometheus
	$(BIN)/python -m launcher.monitor

# The images the README's examples ask for (examples/imagehost.py), on 127.0.0.1:9000 until
# Ctrl-C: run it beside `IMAGE_SERVICE_ALLOW_PRIVATE_URLS=1 make run`.
images: install
	$(BIN)/python -m examples.imagehost

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint postgres-server netns-tools prometheus
	$(BIN)/python -m pytest

# The tests that start no Ray cluster, no service and no PostgreSQL server (tests/conftest.py
# marks the rest `cluster` or `postgres`); tests/test_monitoring.py runs promtool.
unit: install prometheus
	$(BIN)/python -m pytest -m "not cluster and not postgres"

bench: install postgres-server
	$(BIN)/python -m bench.run

# The job store's calls on SQLite and on a PostgreSQL server of its own (bench/stores.py).
bench-stores: install postgres-server
	$(BIN)/python -m bench.stores

soak: install
	$(BIN)/python -m bench.soak

# Debian's headless Chromium takes them; installed here, as root, when missing.
screenshot: install prometheus
	@command -v chromium >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends chromium; }
	$(BIN)/python -m scripts.dashboard_screenshot

clean:
	rm -rf $(VENV) build *.egg-info .tools

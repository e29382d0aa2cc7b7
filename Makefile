# RawDrive storage pipeline. `make dev` runs the whole stack, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= .data
# Debian packages the media processor and its tests need (ImageMagick with MagickWand,
# Ghostscript for PDFs, ffmpeg for video posters, dcraw for RAW files).
DEBIAN_PACKAGES := imagemagick libmagickwand-6.q16-6 ghostscript ffmpeg dcraw
PACKAGES := -e 'libs/contracts[test]' -e 'libs/platform[dev]' \
	-e services/upload-gateway -e services/commit-verifier \
	-e services/media-processor -e services/janitor -e clients/cli
PYPROJECTS := $(wildcard libs/*/pyproject.toml services/*/pyproject.toml clients/*/pyproject.toml)
FIRST_PARTY := ['rawdrive_contracts', 'rawdrive_platform', 'upload_gateway', 'commit_verifier', 'media_processor', 'janitor', 'rawdrive_cli']
PYTEST_FLAGS := --import-mode=importlib -o asyncio_mode=auto \
	-o asyncio_default_fixture_loop_scope=session -o asyncio_default_test_loop_scope=session \
	-p no:cacheprovider -q

.PHONY: bootstrap system-packages dev test test-unit lint token schemas bench clean
bootstrap: system-packages $(VENV)/.installed

system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PACKAGES)
	touch $@

dev: bootstrap
	$(PY) -m rawdrive_platform.devstack --data $(DATA)

token: bootstrap
	@$(PY) -m rawdrive_platform.devstack token --data $(DATA)

schemas: bootstrap
	$(PY) -m rawdrive_contracts.schemas libs/contracts/schemas

# Pyflakes' checks (unused names, undefined names) and sorted imports: cheap, and they catch real bugs.
lint: bootstrap
	$(VENV)/bin/ruff check --select F,I --target-version py311 --line-length 120 \
	  --config "lint.isort.known-first-party = $(FIRST_PARTY)" libs services clients tests bench

# Dockerfiles (hadolint), image locks, and every kustomize overlay rendered, schema-checked
# offline and policy-checked; then the check's own tests (it must fail on bad manifests).
deploy-check: bootstrap
	$(PY) deploy/k8s/check/deploy_check.py
	$(PY) -m pytest $(PYTEST_FLAGS) deploy/k8s/check

test: lint deploy-check
	$(PY) -m pytest $(PYTEST_FLAGS) --durations=10 libs services clients tests/e2e

# Fault injection at the issue's full size: 200 uploads while every service is killed in turn and
# NATS, PostgreSQL and S3 restart, then two replicas of everything (60 uploads; make test runs 30).
.PHONY: test-resilience
test-resilience: bootstrap
	RAWDRIVE_E2E_RESILIENCE_UPLOADS=200 RAWDRIVE_E2E_REPLICA_UPLOADS=60 \
	  $(PY) -m pytest $(PYTEST_FLAGS) -s --durations=5 tests/e2e/test_resilience.py

# The production shape under faults (issue 17): 3 JetStream nodes at replicas 3, PostgreSQL with a
# hot standby, two replicas of every service; leader kills, a partition, a lossy link and a database
# failover at the full 200 uploads, 40 in flight (make test runs 25, 5 in flight).
.PHONY: test-cluster
test-cluster: bootstrap
	RAWDRIVE_E2E_CLUSTER_UPLOADS=200 RAWDRIVE_E2E_CLUSTER_WORKERS=40 \
	  $(PY) -m pytest $(PYTEST_FLAGS) -s --durations=5 tests/e2e/test_cluster.py

test-unit: bootstrap
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not servers" libs services clients

# Benchmarks print ratios against baselines measured in the same run (see bench/README.md).
bench: bootstrap
	$(PY) -m pip install -q -e 'services/media-processor[bench]'
	$(PY) bench/run_all.py $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) $(DATA)

# RawDrive storage pipeline. `make dev` runs the whole stack, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= .data
# Debian packages the media processor and its tests need (ImageMagick with MagickWand,
# Ghostscript for PDFs, ffmpeg for video posters; RAW files go through LibRaw, which the rawpy wheel bundles).
DEBIAN_PACKAGES := imagemagick libmagickwand-6.q16-6 ghostscript ffmpeg
# Only for `make deploy-check`: promtool (in Debian's prometheus package) tests the alert rules.
DEPLOY_CHECK_DEBIAN_PACKAGES := prometheus
PACKAGES := -e 'libs/contracts[test]' -e libs/platform -e libs/devkit \
	-e services/upload-gateway -e services/commit-verifier \
	-e services/media-processor -e services/janitor -e clients/cli
PYPROJECTS := $(wildcard libs/*/pyproject.toml services/*/pyproject.toml clients/*/pyproject.toml)
FIRST_PARTY := ['rawdrive_contracts', 'rawdrive_platform', 'rawdrive_devkit', 'upload_gateway', 'commit_verifier', 'media_processor', 'janitor', 'rawdrive_cli']
PYTEST_FLAGS := --import-mode=importlib -o asyncio_mode=auto \
	-o asyncio_default_fixture_loop_scope=session -o asyncio_default_test_loop_scope=session \
	-p no:cacheprovider -q

.PHONY: bootstrap system-packages deploy-check-packages dev test test-unit lint token schemas bench clean
bootstrap: system-packages $(VENV)/.installed

# $(call install-debian-packages,PACKAGES): apt-get install those not installed yet.
define install-debian-packages
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

system-packages:
	$(call install-debian-packages,$(DEBIAN_PACKAGES))

deploy-check-packages:
	$(call install-debian-packages,$(DEPLOY_CHECK_DEBIAN_PACKAGES))

$(VENV)/.installed: $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PACKAGES)
	touch $@

dev: bootstrap
	$(PY) -m rawdrive_devkit.devstack --data $(DATA)

# `make token WORKSPACE=acme ROLE=viewer`: a token for another workspace or role (viewer, member,
# admin). Set here, not with ?=, so a WORKSPACE in the environment (CI sets one) is not taken.
WORKSPACE := dev
ROLE := admin
token: bootstrap
	@$(PY) -m rawdrive_devkit.devstack token --data $(DATA) --workspace $(WORKSPACE) --role $(ROLE)

schemas: bootstrap
	$(PY) -m rawdrive_contracts.schemas libs/contracts/schemas

# Pyflakes' checks (unused names, undefined names) and sorted imports: cheap, and they catch real bugs.
lint: bootstrap
	$(VENV)/bin/ruff check --select F,I --target-version py311 --line-length 120 \
	  --config "lint.isort.known-first-party = $(FIRST_PARTY)" libs services clients tests bench

# Dockerfiles (hadolint), image locks, and every kustomize overlay rendered, schema-checked
# offline and policy-checked, the alert rules' promtool tests; then the check's own tests (it
# must fail on bad manifests).
deploy-check: bootstrap deploy-check-packages
	$(PY) deploy/k8s/check/deploy_check.py
	$(PY) -m pytest $(PYTEST_FLAGS) deploy/k8s/check

test: lint deploy-check
	$(PY) -m pytest $(PYTEST_FLAGS) --durations=10 libs services clients tests/architecture tests/e2e

# Fault injection at the issue's full size: 200 uploads while every service is killed in turn and
# NATS, PostgreSQL and S3 restart, then two replicas of everything (60 uploads; make test runs 30).
.PHONY: test-resilience
test-resilience: bootstrap
	RAWDRIVE_E2E_RESILIENCE_UPLOADS=200 RAWDRIVE_E2E_REPLICA_UPLOADS=60 \
	  $(PY) -m pytest $(PYTEST_FLAGS) -s --durations=5 tests/e2e/test_resilience.py

test-unit: bootstrap
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not servers" libs services clients tests/architecture

# Benchmarks print ratios against baselines measured in the same run (see bench/README.md).
bench: bootstrap
	@dpkg -s libvips42 >/dev/null 2>&1 || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends libvips42; }
	$(PY) -m pip install -q -e 'services/media-processor[bench]'
	$(PY) bench/run_all.py $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) $(DATA)

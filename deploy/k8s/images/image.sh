#!/bin/sh
# The steps every service image shares, so each services/*/Dockerfile keeps only its own parts.
# Build stage, in /src, where the Dockerfile copied this script and the two locks:
#   sh image.sh dependencies      third-party packages, every file hash-checked against the locks
#                                 lock.py generates; wheels only, so nothing is compiled
#   sh image.sh packages SERVICE  our own packages (libs/contracts, libs/platform, services/SERVICE,
#                                 copied to the same paths), built as wheels with the locked
#                                 hatchling and installed without resolving anything else;
#                                 `pip check` fails the build if the lock misses a dependency
# Runtime stage:
#   sh image.sh account           the unprivileged account every service runs as (USER 10001:10001)
# The service's own venv is /venv; /build holds the build backend, /wheels our wheels.
set -eu

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

case "${1:-}" in
dependencies)
    python -m venv /build
    /build/bin/pip install --require-hashes --only-binary=:all: -r build-requirements.lock
    python -m venv /venv
    /venv/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock
    ;;
packages)
    service=${2:?usage: image.sh packages SERVICE}
    /build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels \
        ./libs/contracts ./libs/platform "./services/$service"
    /venv/bin/pip install --no-deps --no-index --find-links /wheels \
        rawdrive-contracts rawdrive-platform "rawdrive-$service"
    /venv/bin/pip check
    ;;
account)
    groupadd --gid 10001 rawdrive
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rawdrive
    ;;
*)
    echo "usage: image.sh dependencies | packages SERVICE | account" >&2
    exit 2
    ;;
esac

"""Where the CLI's settings come from: flags, then RAWDRIVE_* variables, then the dev stack's env
file (`.data/env`, which `make dev` writes), then defaults. Pure except `find_env_file` and
`read_env_file`, which only read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_WORKSPACE = "dev"
DEFAULT_LIBRARY = "default"
ENV_FILE_NAME = Path(".data") / "env"


class Config(msgspec.Struct, frozen=True, kw_only=True):
    gateway_url: str
    nats_url: str
    # NATS refuses anonymous clients (rawdrive_platform.busauth): events and dead letters need an
    # identity; the dev stack's env file holds the provisioning one.
    nats_user: str | None
    nats_password: str | None
    nats_creds: str | None
    workspace: str
    library: str
    token: str | None  # None: mint a development token from jwt_secret, if there is one
    jwt_secret: str | None
    state_file: Path
    env_file: Path | None  # the env file that was read, for error messages


# setting -> the variable that holds it (in the environment and in the env file). The gateway
# URL is RAWDRIVE_PUBLIC_URL: the base URL the gateway itself puts into upload URLs.
VARIABLES: dict[str, str] = {
    "gateway_url": "RAWDRIVE_PUBLIC_URL",
    "nats_url": "RAWDRIVE_NATS_URL",
    "nats_user": "RAWDRIVE_NATS_USER",
    "nats_password": "RAWDRIVE_NATS_PASSWORD",
    "nats_creds": "RAWDRIVE_NATS_CREDS",
    "workspace": "RAWDRIVE_WORKSPACE",
    "library": "RAWDRIVE_LIBRARY",
    "token": "RAWDRIVE_TOKEN",
    "jwt_secret": "RAWDRIVE_JWT_SECRET",
    "state_file": "RAWDRIVE_STATE_FILE",
}


def default_state_file(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local" / "state")
    return Path(base).expanduser() / "rawdrive" / "uploads.json"


def resolve(
    flags: Mapping[str, str | None], environ: Mapping[str, str], env_file: Mapping[str, str],
    env_file_path: Path | None = None,
) -> Config:
    """Each setting from the first source that has it: flags, environment, env file, default."""

    def pick(name: str) -> str | None:
        variable = VARIABLES[name]
        for value in (flags.get(name), environ.get(variable), env_file.get(variable)):
            if value:
                return value
        return None

    state_file = pick("state_file")
    return Config(
        gateway_url=(pick("gateway_url") or DEFAULT_GATEWAY_URL).rstrip("/"),
        nats_url=pick("nats_url") or DEFAULT_NATS_URL,
        nats_user=pick("nats_user"),
        nats_password=pick("nats_password"),
        nats_creds=pick("nats_creds"),
        workspace=pick("workspace") or DEFAULT_WORKSPACE,
        library=pick("library") or DEFAULT_LIBRARY,
        token=pick("token"),
        jwt_secret=pick("jwt_secret"),
        state_file=Path(state_file).expanduser() if state_file else default_state_file(environ),
        env_file=env_file_path,
    )


def find_env_file(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """--env-file, else RAWDRIVE_ENV_FILE, else `.data/env` in the current folder or a parent
    (so the CLI finds the dev stack from anywhere in the repository)."""
    chosen = explicit or environ.get("RAWDRIVE_ENV_FILE")
    if chosen:
        return Path(chosen).expanduser()
    for folder in (cwd, *cwd.parents):
        if (folder / ENV_FILE_NAME).is_file():
            return folder / ENV_FILE_NAME
    return None


def read_env_file(path: Path | None) -> dict[str, str]:
    """The env file's KEY=VALUE lines, read by the dev stack's own reader; missing: empty."""
    from rawdrive_platform.config import read_env_file as read_stack_env

    return read_stack_env(path) if path is not None and path.is_file() else {}


def load(flags: Mapping[str, str | None], env_file_flag: str | None = None) -> Config:
    path = find_env_file(env_file_flag, os.environ, Path.cwd())
    return resolve(flags, os.environ, read_env_file(path), path)

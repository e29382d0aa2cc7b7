"""Typed settings from RAWDRIVE_* environment variables, checked once at start.

A service declares a msgspec Struct (usually subclassing ``CommonSettings``); each field
``foo_bar`` is read from ``RAWDRIVE_FOO_BAR`` and converted to the field's type. Every bad or
missing variable is reported in one ``ConfigError`` so a deploy fails once, not once per typo.
"""

import enum
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

ENV_PREFIX = "RAWDRIVE_"
# The most bytes each JetStream stream keeps (RAWDRIVE_STREAM_MAX_BYTES). JetStream reserves it in
# the server's file store, so it must fit there: 1 GiB suits a laptop; production sets its own.
DEFAULT_STREAM_MAX_BYTES = 1 << 30


class Secret:
    """A string that prints as '***' so it cannot leak through logs, reprs or error messages."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class ConfigError(Exception):
    """Raised by ``load_settings``; ``problems`` holds one line per bad or missing variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
SettingsT = TypeVar("SettingsT", bound=msgspec.Struct)


class NatsSettings(msgspec.Struct, kw_only=True, frozen=True):
    """How to reach NATS and who to be there (rawdrive_platform.busauth lists the users).
    `tls://` URLs use TLS with the system's CAs, or `nats_tls_ca` when set."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: Secret | None = None
    # A NATS credentials file (JWT + nkey seed), instead of user and password.
    nats_creds: str | None = None
    nats_tls_ca: str | None = None


class CommonSettings(NatsSettings, kw_only=True, frozen=True):
    """Settings every service shares; a service's own Settings subclasses this."""

    database_url: str
    s3_bucket: str
    s3_access_key_id: str
    s3_secret_access_key: Secret
    s3_endpoint: str | None = None  # None: the SDK's own endpoint resolution (AWS)
    s3_region: str = "auto"
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    health_port: Port = 8081
    # How long a delivered message may go unacknowledged before another replica gets it; a
    # live handler extends it while it works, so this bounds recovery after a crash.
    consumer_ack_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # After SIGTERM: how long workers may finish what they hold, and then in-flight HTTP
    # requests; longer than the slowest handling, shorter than the pod's grace period.
    stop_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    log_level: LogLevel = "INFO"
    # How often the Runtime samples the gauges on /metrics (consumer lag, dead letters, outbox).
    metrics_sample_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    # How long a soft-deleted asset can be restored before it is purged: the gateway promises
    # it (purge_after), the janitor keeps it. Fractions are fine (tests use seconds' worth).
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # Opens bring-your-own-bucket credentials (32 bytes, base64); without it only the managed
    # bucket resolves. Every service that touches BYOS objects needs the same key.
    storage_master_key: Secret | None = None
    # During a rotation: more keys, comma-separated, that open credentials but never seal (the
    # old key, and the new one before it becomes current; deploy/k8s/README.md has the steps).
    storage_previous_master_keys: Secret | None = None
    # Bring-your-own-bucket endpoints (rawdrive_platform.storage.check_endpoint): glob patterns
    # of `scheme://host[:port]` allowed beside AWS and R2; networks (CIDR) a customer's endpoint
    # may resolve into despite being private (development: the local S3); http (development).
    byos_allowed_endpoints: tuple[str, ...] = ()
    byos_allowed_networks: tuple[str, ...] = ()
    byos_allow_http: bool = False


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def load_settings(
    cls: type[SettingsT], environ: Mapping[str, str] = os.environ
) -> SettingsT:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in msgspec.structs.fields(cls):
        name = env_name(field.name)
        if name not in environ:
            if field.required:
                problems.append(f"{name} is required: expected {describe(field.type)}")
            continue
        raw = environ[name]
        try:
            values[field.name] = parse_value(raw, field.type)
        except msgspec.ValidationError as error:
            shown = "(secret value hidden)" if _is_secret(field.type) else repr(raw)
            detail = "" if _is_secret(field.type) else f" ({_without_path(error)})"
            problems.append(f"{name}={shown}: expected {describe(field.type)}{detail}")
    if problems:
        raise ConfigError(problems)
    return cls(**values)


def parse_value(raw: str, annotation: Any) -> Any:
    """Convert one environment string to ``annotation``; raises msgspec.ValidationError."""
    if raw == "" and _allows_none(annotation):
        return None
    if _is_sequence(annotation):
        items = [item.strip() for item in raw.split(",")] if raw.strip() else []
        return msgspec.convert(items, annotation, strict=False, dec_hook=_decode_secret)
    return msgspec.convert(raw, annotation, strict=False, dec_hook=_decode_secret)


def describe(annotation: Any) -> str:
    """What a value of this type looks like, in words an operator can act on."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        base, *metas = args
        limits = [
            f"{symbol} {getattr(meta, attr)}"
            for meta in metas
            for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
            if getattr(meta, attr, None) is not None
        ]
        return describe(base) + (f" {' and '.join(limits)}" if limits else "")
    if origin in (typing.Union, types.UnionType):
        present = [describe(arg) for arg in args if arg is not type(None)]
        return " or ".join(present) + (" (empty for none)" if _allows_none(annotation) else "")
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in annotation)
    if _is_sequence(annotation):
        return f"a comma-separated list, each {describe(args[0]) if args else 'a string'}"
    return {
        bool: "true/false/1/0",
        int: "an integer",
        float: "a number",
        str: "a string",
        Secret: "a secret string",
    }.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _decode_secret(annotation: type, value: Any) -> Any:
    if annotation is Secret and isinstance(value, str):
        return Secret(value)
    raise NotImplementedError


def _is_secret(annotation: Any) -> bool:
    return annotation is Secret or Secret in typing.get_args(annotation)


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _is_sequence(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, tuple, set, frozenset)


def _without_path(error: msgspec.ValidationError) -> str:
    # msgspec appends " - at `$[0]`" for list items; the variable name already says where.
    return str(error).split(" - at `")[0]


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an env file such as the dev stack's `.data/env` (comments skipped);
    a missing file: empty. The dev stack writes the file, the CLI reads it."""
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            entries[key.strip()] = value.strip()
    return entries

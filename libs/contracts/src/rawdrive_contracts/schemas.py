"""JSON Schema export: one file per event type, the whole CloudEvents document.

    python -m rawdrive_contracts.schemas libs/contracts/schemas          # regenerate
    python -m rawdrive_contracts.schemas libs/contracts/released --release   # freeze a release

`schemas/` always mirrors the code (a test fails when it is stale). `released/` holds what has
been published to other teams; the evolution test checks the code only ever extends it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from rawdrive_contracts.envelope import CloudEvent
from rawdrive_contracts.events import EVENT_TYPES


def event_schemas() -> dict[str, dict[str, Any]]:
    """Event type -> JSON Schema of its full CloudEvents document."""
    out: dict[str, dict[str, Any]] = {}
    for cls, spec in EVENT_TYPES.items():
        schema = msgspec.json.schema(CloudEvent[cls])
        schema["$id"] = f"https://schemas.rawdrive.dev/events/{spec.type}.json"
        schema["title"] = spec.type
        schema["description"] = (cls.__doc__ or spec.type).strip().splitlines()[0]
        # Pin the envelope's `type` so a validator tells one event from another.
        envelope = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
        envelope["properties"]["type"] = {"const": spec.type}
        out[spec.type] = schema
    return out


def render(schema: dict[str, Any]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def write(directory: Path) -> list[Path]:
    """Write one file per event type, and remove files of event types the code no longer has."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type, schema in event_schemas().items():
        path = directory / f"{event_type}.json"
        path.write_bytes(render(schema))
        written.append(path)
    for stale in set(directory.glob("*.json")) - set(written):
        stale.unlink()
    return written


def load(directory: Path) -> dict[str, dict[str, Any]]:
    """Event type -> schema, as stored in a folder written by `write` (e.g. `released/`)."""
    return {path.stem: json.loads(path.read_bytes()) for path in sorted(directory.glob("*.json"))}


# -- evolution ---------------------------------------------------------------------------------
# A released schema is a promise: the current one may only add optional properties (and prose).

_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "$id"})
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not")


def _inline(schema: dict[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with every `$ref` replaced by its `$defs` entry and annotations dropped."""
    if "$ref" in schema:
        target = defs[schema["$ref"].removeprefix("#/$defs/")]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ANNOTATIONS or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: _inline(prop, defs) for name, prop in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [_inline(item, defs) for item in value]
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = _inline(value, defs)
        else:
            out[key] = value
    return out


def _diff(old: dict[str, Any], new: dict[str, Any], path: str, problems: list[str]) -> None:
    if old == new:
        return
    where = path or "(document)"
    if "properties" in old and "properties" in new:
        for name, prop in old["properties"].items():
            inner = f"{path}.{name}" if path else name
            if name not in new["properties"]:
                problems.append(f"{inner}: removed")
            else:
                _diff(prop, new["properties"][name], inner, problems)
        was, now = set(old.get("required", ())), set(new.get("required", ()))
        for name in sorted(now - was):
            inner = f"{path}.{name}" if path else name
            if name in old["properties"]:
                problems.append(f"{inner}: newly required")
            else:
                problems.append(f"{inner}: added as required (an added field needs a default)")
        for name in sorted((was - now) & new["properties"].keys()):
            inner = f"{path}.{name}" if path else name
            problems.append(f"{inner}: no longer required (released consumers rely on it)")
        old = {k: v for k, v in old.items() if k not in ("properties", "required")}
        new = {k: v for k, v in new.items() if k not in ("properties", "required")}
        if old != new:
            problems.append(f"{where}: changed from {_show(old)} to {_show(new)}")
        return
    if "const" in old and old.get("const") != new.get("const"):
        problems.append(f"{where}: const changed from {old['const']!r} to {new.get('const')!r}")
        return
    if old.keys() == new.keys():
        # Same shape: descend into nested schemas so that e.g. `Variant | None` may still gain
        # optional properties; any other difference is a retyping.
        nested = [k for k in old if old[k] != new[k]]
        if all(_both_schemas(k, old[k], new[k]) for k in nested):
            for key in nested:
                if key in _SCHEMA_LISTS:
                    for a, b in zip(old[key], new[key]):
                        _diff(a, b, path, problems)
                else:
                    _diff(old[key], new[key], f"{path}[{key}]", problems)
            return
    problems.append(f"{where}: changed from {_show(old)} to {_show(new)}")


def _both_schemas(key: str, old: Any, new: Any) -> bool:
    if key in _SCHEMA_LISTS:
        return len(old) == len(new)
    return key in _SCHEMA_VALUES and isinstance(old, dict) and isinstance(new, dict)


def _show(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)


def compatibility_problems(released: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why `current` breaks consumers of `released` (two schemas of one event type); [] if it does not.

    Allowed: added properties that are not required, and changed descriptions or titles.
    Everything else is a problem: a removed property, a retyped one (type, format, pattern,
    enum values, default, const...), a newly required one, a required one added, a required
    one made optional.
    """
    problems: list[str] = []
    _diff(
        _inline(released, released.get("$defs", {})),
        _inline(current, current.get("$defs", {})),
        "",
        problems,
    )
    return problems


def release_problems(
    released: Mapping[str, dict[str, Any]], current: Mapping[str, dict[str, Any]]
) -> list[str]:
    """Compare every released event type (type -> schema) with the current ones."""
    problems = []
    for event_type, schema in released.items():
        if event_type not in current:
            problems.append(f"{event_type}: event type removed (publish a new version beside it instead)")
        else:
            problems += [f"{event_type}: {p}" for p in compatibility_problems(schema, current[event_type])]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--release", action="store_true", help="freeze into a released/ folder (refused if it breaks what is there)")
    args = parser.parse_args(argv)
    if args.release:
        # Never overwrite a release with something that breaks it: that would erase the promise
        # the evolution test checks against.
        problems = release_problems(load(args.directory), event_schemas())
        if problems:
            print("refusing to release, the code breaks released schemas:", *problems, sep="\n  ", file=sys.stderr)
            return 1
        args.directory.mkdir(parents=True, exist_ok=True)
        for event_type, schema in event_schemas().items():
            path = args.directory / f"{event_type}.json"
            path.write_bytes(render(schema))
            print(path)
    else:
        for path in write(args.directory):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""JSON Schema export: one file per event type, the whole CloudEvents document.

    python -m rawdrive_contracts.schemas libs/contracts/schemas          # regenerate
    python -m rawdrive_contracts.schemas libs/contracts/released --release   # freeze a release

`schemas/` always mirrors the code (a test fails when it is stale). `released/` holds what has
been published to other teams; the evolution test checks the code only ever extends it.
"""

from __future__ import annotations

import argparse
import sys
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
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type, schema in event_schemas().items():
        path = directory / f"{event_type}.json"
        path.write_bytes(render(schema))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--release", action="store_true", help="freeze into a released/ folder (only adds files)")
    args = parser.parse_args(argv)
    if args.release:
        for event_type, schema in event_schemas().items():
            path = args.directory / f"{event_type}.json"
            args.directory.mkdir(parents=True, exist_ok=True)
            path.write_bytes(render(schema))
    else:
        for path in write(args.directory):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A generated or sample file decoded through a sandbox, as the processor decodes an upload."""

from __future__ import annotations

from pathlib import Path

from media_processor.magic import Family, sniff
from media_processor.sandbox import Outcome, Sandbox


async def decode(sandbox: Sandbox, source: Path, tmp_path: Path, family: Family | None = None) -> Outcome:
    """`source` through `sandbox` as `family` (by default what its first bytes are), its
    variants written under `tmp_path`/work."""
    chosen = family or sniff(source.read_bytes()[:65536])
    assert chosen is not None
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return await sandbox.process(str(source), chosen, str(work))

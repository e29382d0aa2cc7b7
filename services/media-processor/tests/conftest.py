"""What the decoding tests share: one sandboxed decoder a module, as the processor runs it."""

from __future__ import annotations

import pytest

from media_processor.sandbox import Limits, Sandbox


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(Limits(timeout_s=60))

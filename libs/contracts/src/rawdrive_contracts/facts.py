"""The facts about one upload that travel from event to event, declared once, and the one helper
that carries them.

A session's row becomes `upload.session_created` and `upload.commit_requested`; the commit
request becomes the verifier's verdict; `upload.verified` becomes `asset.created` and the
catalogue's description of the asset. Each hop copies the same facts under the same names, so
`carry` copies every fact the target declares from the source, and the caller names only what the
hop decides. The events keep their own fields (and so their JSON): this module names no new field.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgspec

from rawdrive_contracts.events import Kind, Provider, ResumableProtocol, Sha256Hex

T = TypeVar("T", bound=msgspec.Struct)


class UploadFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What is known about an upload from its session on. A fact with a default is not known
    everywhere (the verifier learns the digest; only a multipart upload has an id of its own)."""

    workspace_id: str
    upload_id: str
    asset_id: str
    library_id: str
    folder_id: str | None = None
    file_name: str
    mime_type: str
    size_bytes: int
    storage_profile_ref: str
    object_key: str
    provider: Provider = "r2"
    sha256: Sha256Hex | None = None
    kind: Kind | None = None
    resumable_protocol: ResumableProtocol | None = None
    multipart_upload_id: str | None = None
    duplicate_of: str | None = None


_FIELDS = msgspec.structs.fields(UploadFacts)
REQUIRED_FACTS = frozenset(f.name for f in _FIELDS if f.required)
FACTS = frozenset(f.name for f in _FIELDS)


@functools.cache
def _declared_facts(target: type[msgspec.Struct]) -> frozenset[str]:
    """The upload facts `target` declares. Cached: msgspec.structs.fields resolves the type hints
    on every call (about 0.5 ms), and the gateway carries facts twice for every upload."""
    return frozenset(f.name for f in msgspec.structs.fields(target)) & FACTS


def carry(source: Any, target: type[T], **decided: Any) -> T:
    """A `target` (an event's data, or any Struct) holding every upload fact it declares, taken
    from `source` (an event, a session row: anything with those attributes), and `decided`,
    which wins over the source. A required fact the source lacks is an AttributeError; an
    optional one it lacks is left to the target's default."""
    wanted = _declared_facts(target) - decided.keys()
    carried = {
        name: getattr(source, name)
        for name in wanted
        if name in REQUIRED_FACTS or hasattr(source, name)
    }
    return target(**carried, **decided)

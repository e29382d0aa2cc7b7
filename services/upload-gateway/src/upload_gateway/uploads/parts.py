"""S3 multipart parts: the limits (Cloudflare R2's rules are the strictest we serve), the part
plan, what a session's stored parts may be, and how long a part URL lives. The one place for
them: the multipart sessions, their API bodies and the tus store all import these. No I/O.

A session's plan (`plan_parts`) fixes every part's size: `part_size` bytes, the last one the
remainder. A part URL signs that length, so storage itself refuses another body (S3,
SeaweedFS, any SigV4 verifier); a part stored some other way (a URL from before lengths were
signed, a store that ignores the signed header) is refused where the gateway looks at parts,
listing and commit, and counts for nothing in `bytes_received`, which therefore never passes
`size_bytes`. S3 keeps one copy of each part number, the last uploaded; SeaweedFS lists every
upload of a number, in no telling order, so a number counts as stored right when any of its
copies fits the plan (and a commit naming ETags looks at the copies it names).

Part URLs live `RAWDRIVE_PART_URL_TTL_S` (and never past their session): a leaked URL is soon
worthless, and a client whose URL expired asks `POST .../parts` again for the same numbers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime

import msgspec

from rawdrive_platform.storage import UploadedPart
from upload_gateway.errors import PartSizeMismatch, ProblemFacts
from upload_gateway.uploads.sessions import UploadSession

MIB = 1024 * 1024
# R2 (and S3) refuse parts below 5 MiB except the last, above 5 GiB, and more than 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MIB


class PartPlan(msgspec.Struct, frozen=True):
    """Every part is `part_size` bytes except the last, which holds the remainder."""

    part_size: int
    part_count: int


def parts_received(sizes: dict[int, int | None], listed: Collection[int] | None) -> int | None:
    """Bytes in the stored parts (part number -> size) a commit would join: those the client
    lists, or all without a list; None when storage did not report a size."""
    chosen = [size for number, size in sizes.items() if listed is None or number in listed]
    return None if None in chosen else sum(size or 0 for size in chosen)


def plan_parts(size_bytes: int, preferred: int = DEFAULT_PART_SIZE) -> PartPlan:
    """The preferred size, grown in whole MiB when the file would otherwise need >10,000 parts."""
    if size_bytes < 1:
        raise ValueError("a multipart upload needs at least one byte")
    needed = -(-size_bytes // MAX_PARTS)
    part_size = max(preferred, MIN_PART_SIZE, -(-needed // MIB) * MIB)
    if part_size > MAX_PART_SIZE:
        raise ValueError(f"{size_bytes} bytes cannot fit in {MAX_PARTS} parts of at most 5 GiB")
    return PartPlan(part_size=part_size, part_count=-(-size_bytes // part_size))


def part_size_up_to(maximum: int, preferred: int = DEFAULT_PART_SIZE) -> int:
    """The part size of an upload whose length is not known yet but at most `maximum` bytes
    (tus creation-defer-length): its parts are cut before the length is known, so all but the
    last must have this size whatever the length turns out to be. Planned for `maximum`, any
    length up to it needs at most MAX_PARTS parts of it, each at least MIN_PART_SIZE."""
    return plan_parts(maximum, preferred).part_size


def planned_size(session: UploadSession, part_number: int) -> int:
    """The bytes part `part_number` (1-based, within the plan) must hold."""
    assert session.part_size and session.part_count and 1 <= part_number <= session.part_count
    if part_number < session.part_count:
        return session.part_size
    return session.size_bytes - (session.part_count - 1) * session.part_size


def fits_plan(session: UploadSession, part: UploadedPart) -> bool:
    """A stored part of its planned size; one whose size storage did not report is given the
    benefit of the doubt (the verifier checks the joined object's size)."""
    if not session.part_count or not 1 <= part.part_number <= session.part_count:
        return False
    return part.size is None or part.size == planned_size(session, part.part_number)


def current(session: UploadSession, parts: Iterable[UploadedPart], etags: Mapping[int, str] | None = None
            ) -> list[UploadedPart]:  # fmt: skip
    """One stored copy of each part number, in part order: among those whose ETag `etags` names
    (when it names one that is stored), one that fits the plan if any does, else the last listed."""
    copies: dict[int, list[UploadedPart]] = {}
    for part in parts:
        copies.setdefault(part.part_number, []).append(part)
    chosen = []
    for number in sorted(copies):
        named = [p for p in copies[number] if etags and _etag(p.etag) == _etag(etags.get(number, ""))]
        candidates = named or copies[number]
        chosen.append(next((p for p in candidates if fits_plan(session, p)), candidates[-1]))
    return chosen


def _etag(etag: str) -> str:
    return etag.strip('"')


def check_sizes(session: UploadSession, parts: Iterable[UploadedPart]) -> None:
    """Refuse parts that do not fit the plan (as `current` chose them), naming each with its
    size and the plan's."""
    wrong = [p for p in parts if not fits_plan(session, p)]
    if not wrong:
        return
    described = "; ".join(
        f"part {p.part_number} holds {p.size} bytes, the plan {planned_size(session, p.part_number)}"
        if session.part_count and 1 <= p.part_number <= session.part_count
        else f"part {p.part_number} is outside 1..{session.part_count}"
        for p in wrong
    )
    raise PartSizeMismatch(
        f"{described}: PUT {'it' if len(wrong) == 1 else 'them'} again through a fresh part URL (the new "
        f"part replaces the stored one); every part is {session.part_size} bytes but the last",
        facts=ProblemFacts(parts_to_resend=[p.part_number for p in wrong]),
    )


def bytes_held(session: UploadSession, parts: Iterable[UploadedPart]) -> int:
    """The bytes received: the stored parts that fit the plan, each counted at its planned size."""
    return sum(planned_size(session, p.part_number) for p in current(session, parts) if fits_plan(session, p))


def url_ttl_s(setting_s: int, now: datetime, session_expires_at: datetime) -> int:
    """A part URL's lifetime: the setting, cut short so it never outlives its session."""
    remaining = int((session_expires_at - now).total_seconds())
    return max(1, min(setting_s, remaining))

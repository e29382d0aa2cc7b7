"""What an S3 multipart session's parts may be: their lengths and their URLs' lifetime. No I/O.

A session's plan (sessions.plan_parts) fixes every part's size: `part_size` bytes, the last one
the remainder. A part URL signs that length, so storage itself refuses another body (S3,
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

from collections.abc import Iterable, Mapping
from datetime import datetime

from rawdrive_platform.storage import UploadedPart
from upload_gateway.problems import PartSizeMismatch, ProblemFacts
from upload_gateway.sessions import UploadSession


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

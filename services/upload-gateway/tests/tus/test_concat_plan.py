"""The join layout of tus concatenation (concat.plan_join) and the Upload-Concat header, pure."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from upload_gateway.uploads.parts import MAX_PARTS, MIB, MIN_PART_SIZE
from upload_gateway.uploads.tus.concat import (
    JOIN_IN_GATEWAY_MAX,
    CopyPlan,
    NotJoinable,
    Piece,
    ThroughGateway,
    parse_concat,
    plan_join,
    url_path,
)
from upload_gateway.uploads.tus.protocol import BadRequest


def joined_ranges(lengths: list[int], plan: CopyPlan) -> list[tuple[int, int]]:
    """Each final part as the byte ranges of the whole file it holds, following seams back to
    the partials (partial k holds the file's bytes from the sum of the lengths before it)."""
    starts = [sum(lengths[:k]) for k in range(len(lengths))]

    def ranges(piece: Piece) -> list[tuple[int, int]]:
        if piece.source < len(lengths):
            assert 0 <= piece.start < piece.end <= lengths[piece.source]
            base = starts[piece.source]
            return [(base + piece.start, base + piece.end)]
        seam = plan.seams[piece.source - len(lengths)]
        flat = [*ranges(seam.left), *ranges(seam.right)]
        held = [(a, b) for a, b in flat]  # a seam's bytes, in order
        out, position = [], 0
        for a, b in held:  # the slice [piece.start, piece.end) of the seam's bytes
            lo, hi = max(a, a + piece.start - position), min(b, a + piece.end - position)
            if lo < hi:
                out.append((lo, hi))
            position += b - a
        return out

    merged = []
    for piece in plan.parts:
        merged.extend(ranges(piece))
    return merged


def check_layout(lengths: list[int], plan: CopyPlan) -> None:
    total = sum(lengths)
    flat = joined_ranges(lengths, plan)
    position = 0
    for a, b in flat:
        assert a == position  # contiguous, in order: the final object is the partials joined
        position = b
    assert position == total
    sizes = [piece.size for piece in plan.parts]
    assert all(size == plan.part_size for size in sizes[:-1])  # R2: equal parts but the last
    assert 0 < sizes[-1] <= plan.part_size and len(sizes) <= MAX_PARTS
    assert len(sizes) == 1 or plan.part_size >= MIN_PART_SIZE
    for seam in plan.seams:
        assert seam.left.size >= MIN_PART_SIZE and seam.right.size <= seam.left.size


def test_tus_js_client_partials_join_by_plain_range_copies_without_seams():
    total = 500 * MIB + 3
    quarter = total // 4
    lengths = [quarter, quarter, quarter, total - 3 * quarter]
    plan = plan_join(lengths)
    assert isinstance(plan, CopyPlan)
    assert plan.part_size == quarter and plan.seams == ()
    assert [p.source for p in plan.parts] == [0, 1, 2, 3, 3]  # the last partial's 3 extra bytes: a 5th part
    assert plan.parts[-1] == Piece(3, quarter, quarter + 3)
    check_layout(lengths, plan)


def test_a_part_across_a_boundary_is_copied_from_a_seam_of_the_two_partials():
    lengths = [12 * MIB, 7 * MIB, 9 * MIB]
    plan = plan_join(lengths)
    assert isinstance(plan, CopyPlan) and plan.part_size == 7 * MIB
    assert len(plan.seams) >= 1
    check_layout(lengths, plan)


def test_small_partials_of_a_small_file_are_joined_through_the_gateway_and_of_a_large_one_refused():
    assert plan_join([1 * MIB, 1 * MIB, 5]) == ThroughGateway(part_size=MIN_PART_SIZE)
    with pytest.raises(NotJoinable, match="at least 5242880 bytes"):
        plan_join([MIN_PART_SIZE - 1, JOIN_IN_GATEWAY_MAX])


def test_one_partial_or_tiny_last_and_empty_partials_need_no_gateway():
    assert plan_join([6]) == CopyPlan(part_size=6, seams=(), parts=(Piece(0, 0, 6),))
    plan = plan_join([0, 6 * MIB, 0, 1])
    assert isinstance(plan, CopyPlan)
    assert plan.parts == (Piece(1, 0, 6 * MIB), Piece(3, 0, 1))
    with pytest.raises(NotJoinable):
        plan_join([0, 0])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40 * MIB), min_size=1, max_size=12))
@example([5 * MIB, 5 * MIB + 1, 5 * MIB, 1])
@example([MIN_PART_SIZE, 3 * MIN_PART_SIZE - 1, MIN_PART_SIZE + 1])
def test_any_partials_join_into_the_whole_file_in_parts_r2_accepts(lengths):
    try:
        plan = plan_join(lengths)
    except NotJoinable:
        heads = [n for n in lengths if n][:-1]
        assert sum(lengths) == 0 or (min(heads) < MIN_PART_SIZE and sum(lengths) > JOIN_IN_GATEWAY_MAX)
        return
    if isinstance(plan, ThroughGateway):
        assert sum(lengths) <= JOIN_IN_GATEWAY_MAX
        return
    check_layout(lengths, plan)


def test_upload_concat_parses_partial_and_final_with_its_urls_in_order():
    assert parse_concat(None) is None
    partial = parse_concat("partial")
    assert partial is not None and not partial.is_final
    final = parse_concat("final;http://h/v1/workspaces/w/tus/a  /v1/workspaces/w/tus/b")
    assert final is not None and final.partial_urls == ("http://h/v1/workspaces/w/tus/a", "/v1/workspaces/w/tus/b")
    assert [url_path(u) for u in final.partial_urls] == ["/v1/workspaces/w/tus/a", "/v1/workspaces/w/tus/b"]
    for bad in ("final;", "final", "whole", ""):
        with pytest.raises(BadRequest):
            parse_concat(bad)

"""The code only ever extends what was released (rules in rawdrive_contracts.events)."""

import copy
from pathlib import Path

import pytest

from rawdrive_contracts.schemas import compatibility_problems, event_schemas, load, release_problems

RELEASED = load(Path(__file__).parents[1] / "released")
CURRENT = event_schemas()


def test_every_released_event_type_still_exists():
    assert RELEASED, "released/ is empty"
    assert set(RELEASED) <= set(CURRENT)


@pytest.mark.parametrize("event_type", sorted(RELEASED))
def test_current_code_is_compatible_with_the_released_schema(event_type):
    assert compatibility_problems(RELEASED[event_type], CURRENT[event_type]) == []


# -- the rules themselves, on a released schema and an edited copy of it ----------------------

ASSET_CREATED = CURRENT["com.rawdrive.asset.created.v1"]


def edited(edit) -> dict:
    schema = copy.deepcopy(ASSET_CREATED)
    edit(schema["$defs"])
    return schema


def problems_after(edit) -> list[str]:
    return compatibility_problems(ASSET_CREATED, edited(edit))


def test_unchanged_schema_has_no_problems():
    assert compatibility_problems(ASSET_CREATED, copy.deepcopy(ASSET_CREATED)) == []


def test_adding_an_optional_field_anywhere_is_compatible():
    def edit(defs):
        defs["AssetCreated"]["properties"]["color_space"] = {"type": "string", "default": "srgb"}
        defs["GpsPosition"]["properties"]["accuracy_m"] = {"anyOf": [{"type": "number"}, {"type": "null"}]}
        defs["Variant"]["properties"]["blurhash"] = {"type": "string"}  # inside `Variant | None`

    assert problems_after(edit) == []


def test_changing_descriptions_is_compatible():
    def edit(defs):
        defs["AssetCreated"]["description"] = "Reworded."
        defs["AssetCreated"]["properties"]["size_bytes"]["description"] = "Bytes stored."

    assert problems_after(edit) == []


@pytest.mark.parametrize(
    ("edit", "problems"),
    [
        pytest.param(
            lambda defs: defs["AssetCreated"]["properties"].pop("file_name"),
            ["data.file_name: removed"],
            id="removing a field",
        ),
        pytest.param(
            lambda defs: defs["AssetCreated"]["properties"].update(size_bytes={"type": "string"}),
            ['data.size_bytes: changed from {"type": "integer"} to {"type": "string"}'],
            id="retyping a field",
        ),
        pytest.param(
            lambda defs: defs["GpsPosition"]["properties"].update(latitude={"type": "string"}),
            ['data.metadata.gps.latitude: changed from {"type": "number"} to {"type": "string"}'],
            id="retyping a field of a nested struct",
        ),
        pytest.param(
            lambda defs: defs["AssetCreated"]["required"].append("folder_id"),
            ["data.folder_id: newly required"],
            id="making an optional field required",
        ),
        pytest.param(
            lambda defs: defs["AssetCreated"]["required"].remove("sha256"),
            ["data.sha256: no longer required (released consumers rely on it)"],
            id="making a required field optional",
        ),
        pytest.param(
            lambda defs: defs["CloudEvent_AssetCreated_"]["properties"].update(
                type={"const": "com.rawdrive.asset.created.v2"}
            ),
            ["type: const changed from 'com.rawdrive.asset.created.v1' to 'com.rawdrive.asset.created.v2'"],
            id="changing the envelope type const",
        ),
    ],
)
def test_a_breaking_edit_is_named_as_its_problem(edit, problems):
    assert problems_after(edit) == problems


def test_removing_a_field_of_a_nested_struct_is_a_problem():
    problems = problems_after(lambda defs: defs["Variant"]["properties"].pop("width"))
    variants = ("thumb", "medium", "large", "motion", "motion_poster")
    assert set(problems) == {f"data.variants.{name}.width: removed" for name in variants}


def test_adding_an_enum_value_is_a_problem_for_consumers_that_check_it():
    def edit(defs):
        defs["AssetCreated"]["properties"]["kind"]["enum"].append("audio")

    assert [p.split(":")[0] for p in problems_after(edit)] == ["data.kind"]


def test_adding_a_required_field_is_a_problem():
    def edit(defs):
        defs["AssetCreated"]["properties"]["checksum_algo"] = {"type": "string"}
        defs["AssetCreated"]["required"].append("checksum_algo")

    assert problems_after(edit) == ["data.checksum_algo: added as required (an added field needs a default)"]


def test_removing_an_event_type_is_a_problem():
    current = {t: s for t, s in CURRENT.items() if t != "com.rawdrive.asset.purged.v1"}
    assert release_problems(RELEASED, current) == [
        "com.rawdrive.asset.purged.v1: event type removed (publish a new version beside it instead)"
    ]


def test_release_problems_name_the_event_type():
    current = dict(CURRENT)
    current["com.rawdrive.asset.created.v1"] = edited(lambda defs: defs["AssetCreated"]["properties"].pop("kind"))
    assert release_problems(RELEASED, current) == ["com.rawdrive.asset.created.v1: data.kind: removed"]

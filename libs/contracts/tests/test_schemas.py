"""The committed JSON Schemas mirror the code and accept the events the code encodes."""

import json
from pathlib import Path

import jsonschema

from rawdrive_contracts import encode, new_event
from rawdrive_contracts.schemas import event_schemas, render

SCHEMAS = Path(__file__).parents[1] / "schemas"
FORMATS = jsonschema.FormatChecker()


def test_committed_schemas_are_exactly_what_the_code_generates():
    generated = {f"{event_type}.json": render(schema) for event_type, schema in event_schemas().items()}
    committed = {path.name: path.read_bytes() for path in SCHEMAS.glob("*.json")}
    stale = sorted(name for name in generated.keys() | committed.keys() if generated.get(name) != committed.get(name))
    assert not stale, f"libs/contracts/schemas is stale ({', '.join(stale)}): run `make schemas` and commit the result"


def test_date_time_formats_are_really_checked():
    # jsonschema skips `date-time` silently unless rfc3339-validator is installed (the test extra).
    assert not FORMATS.conforms("2025-03-14 09:26", "date-time")


def test_every_schema_accepts_a_real_encoded_event_of_its_type(example):
    document = json.loads(encode(new_event(example, source="/tests")))
    schema = json.loads((SCHEMAS / f"{type(example).spec.type}.json").read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=FORMATS).validate(document)


def test_a_schema_refuses_an_event_of_another_type(example):
    other = next(t for t in event_schemas() if t != type(example).spec.type)
    document = json.loads(encode(new_event(example, source="/tests")))
    assert not jsonschema.Draft202012Validator(event_schemas()[other]).is_valid(document)


def test_a_schema_refuses_a_mistyped_or_missing_field(example):
    schema = event_schemas()[type(example).spec.type]
    document = json.loads(encode(new_event(example, source="/tests")))
    document["data"]["workspace_id"] = 42
    assert not jsonschema.Draft202012Validator(schema).is_valid(document)
    del document["data"]["workspace_id"]
    assert not jsonschema.Draft202012Validator(schema).is_valid(document)

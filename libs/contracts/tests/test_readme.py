"""The README shows the consumer example exactly as it is tested."""

from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_readme_embeds_the_tested_consumer_example_verbatim():
    example = (ROOT / "examples" / "consume_asset_created.py").read_text()
    assert f"```python\n{example}```" in (ROOT / "README.md").read_text(), (
        "README.md's example differs from examples/consume_asset_created.py: paste the file in again"
    )


def test_the_catalogue_names_the_publisher_each_event_type_declares():
    from rawdrive_contracts import EVENT_TYPES

    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`com.rawdrive."):
            rows[cells[0].strip("`")] = cells[4].split(" (")[0]  # "upload-gateway (API)"
    assert rows == {spec.type: event_type.publisher for event_type, spec in EVENT_TYPES.items()}

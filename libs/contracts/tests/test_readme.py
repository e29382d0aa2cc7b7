"""The README shows the consumer example exactly as it is tested."""

from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_readme_embeds_the_tested_consumer_example_verbatim():
    example = (ROOT / "examples" / "consume_asset_created.py").read_text()
    assert f"```python\n{example}```" in (ROOT / "README.md").read_text(), (
        "README.md's example differs from examples/consume_asset_created.py: paste the file in again"
    )

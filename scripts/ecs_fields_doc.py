"""Write docs/ecs-fields.md from the field registry: `.venv/bin/python scripts/ecs_fields_doc.py`.

tests/unit/test_normalize.py fails when the file and the registry differ.
"""

from pathlib import Path

from consumer.cloudtrail.normalize import fields_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "ecs-fields.md"

if __name__ == "__main__":
    DOC.write_text(fields_table(), encoding="utf-8")
    print(f"wrote {DOC}")

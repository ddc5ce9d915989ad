"""Golden files: a test only compares; ``scripts/regen-golden`` is the one way to rewrite them.

A test that rewrote its own golden file and then compared would pass whatever the code did.
Here, with ``KVMGR_REGEN_GOLDEN`` set (which only scripts/regen-golden does), the file is written
and the test is *skipped*, never passed, so a run that regenerates cannot look like a green run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REGEN_ENV = "KVMGR_REGEN_GOLDEN"


def check_golden_text(path: Path, text: str) -> None:
    if os.environ.get(REGEN_ENV):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        pytest.skip(f"regenerated {path.name}: review the diff")
    assert path.exists(), f"{path} is missing: run scripts/regen-golden and review the diff"
    assert text == path.read_text(), f"{path.name} differs: review, then scripts/regen-golden"


def check_golden_json(path: Path, data: object) -> None:
    check_golden_text(path, json.dumps(data, indent=2) + "\n")

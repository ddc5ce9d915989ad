"""The CLI's JSON writer prints exactly what ``json.dumps(..., indent=2)`` would (it is a faster
re-implementation of the same text), and Rich is loaded only when something prints through it."""

from __future__ import annotations

import json
import subprocess
import sys
from enum import Enum
from typing import Any

import pytest

from kvmgr.cli.output import OutputFormat, _json, _plain


class _Level(int, Enum):
    low = 1


class _Count(int):
    pass


CASES: list[Any] = [
    {},
    [],
    "plain",
    0,
    None,
    True,
    2.5,
    float("nan"),
    [[], {}],
    {"name": 't-perf-é"\n\t\\', "ips": ["192.168.122.5"], "vcpus": 2, "autostart": False},
    {"nested": {"a": [1, {"b": None}], "t": (1, "x")}, 3: "int key", None: "none key"},
    {"fmt": OutputFormat.json, "level": _Level.low, "count": _Count(7), "big": 2**70},
    [{"memory": 268435456, "ips": [], "state": "shut off"} for _ in range(3)],
]


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_the_json_text_is_what_json_dumps_prints(data: Any) -> None:
    assert _json(data) == json.dumps(_plain(data), indent=2)


def test_what_json_cannot_encode_is_still_refused() -> None:
    with pytest.raises(TypeError):
        _json({"x": object()})


def test_json_output_does_not_import_rich() -> None:
    code = (
        "import sys\n"
        "from kvmgr.cli.output import emit_rows, OutputFormat\n"
        "emit_rows([{'a': 1}], OutputFormat.json, ['a'])\n"
        "assert 'rich' not in sys.modules, 'rich imported'\n"
        "assert 'yaml' not in sys.modules, 'yaml imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)

"""Shared output for every CLI command: a Rich table for people, JSON or YAML for scripts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOption = typer.Option(
    OutputFormat.table, "--output", "-o", help="table for people, json or yaml for scripts"
)


def _plain(value: Any) -> Any:
    """Make values JSON/YAML friendly (enums, tuples, dataclass-like objects)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(item) for item in value) or "-"
    return str(value)


def emit_rows(
    rows: Sequence[Mapping[str, Any]],
    fmt: OutputFormat,
    columns: Sequence[str],
    *,
    title: str | None = None,
) -> None:
    """Print ``rows``: a table of ``columns`` for people, every key for json/yaml."""
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(_plain(list(rows)), indent=2))
    elif fmt is OutputFormat.yaml:
        typer.echo(yaml.safe_dump(_plain(list(rows)), sort_keys=False), nl=False)
    else:
        table = Table(title=title, header_style="bold")
        for column in columns:
            table.add_column(column.upper().replace("_", " "))
        for row in rows:
            table.add_row(*(_cell(row.get(column)) for column in columns))
        console.print(table)


def emit_object(data: Mapping[str, Any], fmt: OutputFormat) -> None:
    """Print one object: key/value lines for people, the whole structure for json/yaml."""
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(_plain(data), indent=2))
    elif fmt is OutputFormat.yaml:
        typer.echo(yaml.safe_dump(_plain(data), sort_keys=False), nl=False)
    else:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in data.items():
            if isinstance(value, list) and value and isinstance(value[0], Mapping):
                rendered = "\n".join(
                    "  ".join(f"{k}={_cell(v)}" for k, v in item.items()) for item in value
                )
            else:
                rendered = _cell(value)
            table.add_row(key, rendered)
        console.print(table)

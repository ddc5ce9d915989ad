"""Shared output for every CLI command: tables for people, JSON, YAML, TSV or CSV for scripts.

A table is never cut: on a terminal Rich folds long cells instead of ending them with "…", and
when stdout is a pipe or a file the table is plain text with every cell whole, so
``kvmgr net list | grep default`` finds the whole line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """A Rich console made on first use.

    Importing rich costs ~35 ms, a quarter of a short command's start-up; ``-o json``, ``--version``
    and most commands without an error never print through Rich, so they should not pay for it.
    """

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def _real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self._stderr else sys.stdout
            # Not a terminal: Rich would wrap or cut at 80 columns; a pipe gets whole lines.
            width = None if stream.isatty() else 100_000
            self._console = Console(stderr=self._stderr, width=width)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Rich's Live/Progress set attributes on the console they are given: pass them through
        if name in ("_stderr", "_console"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._real(), name, value)

    # Rich's Live uses ``with console:`` (buffering); special methods are not found by __getattr__
    def __enter__(self) -> Console:
        return self._real().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._real().__exit__(*exc)


class _QuietStatus:
    """What ``err_console.status`` gives when stderr is not a terminal (Rich shows nothing then
    either): the same ``update`` method, without importing Rich."""

    def __enter__(self) -> _QuietStatus:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def status(message: str) -> Any:
    """A spinner on stderr for a long step, with ``update(text)``; nothing when not a terminal."""
    if not sys.stderr.isatty():
        return _QuietStatus()
    return err_console.status(message)


console = cast("Console", _LazyConsole(stderr=False))
err_console = cast("Console", _LazyConsole(stderr=True))


class OutputFormat(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"
    tsv = "tsv"
    csv = "csv"

    @property
    def for_people(self) -> bool:
        """Tables (sizes as "2.0 GiB"); the other formats carry exact values for scripts."""
        return self in (OutputFormat.table, OutputFormat.wide)


OutputOption = typer.Option(
    OutputFormat.table,
    "--output",
    "-o",
    help="table or wide (every column) for people; json, yaml, tsv or csv for scripts",
)


@dataclass
class OutputFlags:
    """Flags that every listing honours, taken from anywhere on the command line."""

    no_headers: bool = False


flags = OutputFlags()


def take_output_flags(argv: list[str]) -> list[str]:
    """Remove ``--no-headers`` from ``argv`` (wherever it is, as kubectl allows) and note it."""
    if "--no-headers" in argv:
        flags.no_headers = True
        argv = [arg for arg in argv if arg != "--no-headers"]
    return argv


def _plain(value: Any) -> Any:
    """Make values JSON/YAML friendly (enums, tuples, dataclass-like objects)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _json(data: Any) -> str:
    """``json.dumps(_plain(data), indent=2)``, the same text, ~4x faster.

    json's indenting encoder is pure Python (only the compact one is in C) and was a quarter of
    ``kvmgr vm list -o json`` at 5,000 VMs; here strings go through json's C escaper and the
    structure is written in one pass, with no intermediate copy.
    """
    out: list[str] = []
    _write_json(data, "\n", out)
    return "".join(out)


def _write_json(value: Any, newline: str, out: list[str]) -> None:
    leaf = _JSON_LEAVES.get(type(value))
    if leaf is not None:
        out.append(leaf(value))
    elif isinstance(value, Enum):
        _write_json(value.value, newline, out)
    elif isinstance(value, Mapping):
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        separator = "{" + inner
        for key, item in value.items():
            out.append(separator)
            out.append(_json_string(str(key)))
            out.append(": ")
            leaf = _JSON_LEAVES.get(type(item))  # most values: no recursion
            if leaf is not None:
                out.append(leaf(item))
            else:
                _write_json(item, inner, out)
            separator = "," + inner
        out.append(newline + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        separator = "[" + inner
        for item in value:
            out.append(separator)
            _write_json(item, inner, out)
            separator = "," + inner
        out.append(newline + "]")
    else:
        out.append(json.dumps(value))  # str/int subclasses; anything else raises as json would


_json_string: Callable[[str], str] = (
    getattr(json.encoder, "c_encode_basestring_ascii", None)
    or json.encoder.py_encode_basestring_ascii
)
# exact types only: a str or int subclass (an Enum) takes the slow path, as json would
_JSON_LEAVES: dict[type, Callable[[Any], str]] = {
    str: _json_string,
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _value: "null",
    float: json.dumps,
}


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
    wide: Sequence[str] = (),
) -> None:
    """Print ``rows``: a table of ``columns`` for people, every key for json/yaml.

    ``-o wide``, tsv and csv add ``wide`` (by default every other key of the rows).
    """
    if fmt is OutputFormat.json:
        typer.echo(_json(list(rows)))
    elif fmt is OutputFormat.yaml:
        typer.echo(_yaml(_plain(list(rows))), nl=False)
    else:
        shown = (
            list(columns) if fmt is OutputFormat.table else [*columns, *_extra(rows, columns, wide)]
        )
        headers = [column.upper().replace("_", " ") for column in shown]
        cells = [[_cell(row.get(column)) for column in shown] for row in rows]
        if fmt in (OutputFormat.tsv, OutputFormat.csv):
            _delimited(headers, cells, fmt)
        elif not sys.stdout.isatty():
            _plain_table(headers, cells)
        else:
            _rich_table(headers, cells, title)


def _extra(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], wide: Sequence[str]
) -> list[str]:
    if wide:
        return list(wide)
    keys = dict.fromkeys(key for row in rows for key in row)
    return [key for key in keys if key not in columns]


def _rich_table(headers: list[str], cells: list[list[str]], title: str | None) -> None:
    from rich.table import Table

    table = Table(title=title, header_style="bold", show_header=not flags.no_headers)
    for header in headers:
        table.add_column(header, overflow="fold")  # folded, never cut with "…"
    for row in cells:
        table.add_row(*row)
    console.print(table)


def _plain_table(headers: list[str], cells: list[list[str]]) -> None:
    """Columns padded with spaces, each cell whole (grep, awk and cut work on it)."""
    lines = cells if flags.no_headers else [headers, *cells]
    if not lines:
        return
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    for line in lines:
        padded = (cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=False))
        sys.stdout.write("  ".join([*padded, line[-1]]).rstrip() + "\n")


def _delimited(headers: list[str], cells: list[list[str]], fmt: OutputFormat) -> None:
    import csv

    writer = csv.writer(
        sys.stdout,
        delimiter="\t" if fmt is OutputFormat.tsv else ",",
        lineterminator="\n",
        quoting=csv.QUOTE_MINIMAL,
    )
    if not flags.no_headers:
        writer.writerow(headers)
    writer.writerows(cells)


def emit_object(data: Mapping[str, Any], fmt: OutputFormat) -> None:
    """Print one object: key/value lines for people, the whole structure for json/yaml."""
    if fmt is OutputFormat.json:
        typer.echo(_json(data))
    elif fmt is OutputFormat.yaml:
        typer.echo(_yaml(_plain(data)), nl=False)
    elif fmt in (OutputFormat.tsv, OutputFormat.csv):
        _delimited(["KEY", "VALUE"], [[key, _cell(value)] for key, value in data.items()], fmt)
    else:
        pairs = [(key, _rendered(value)) for key, value in data.items()]
        if not sys.stdout.isatty():
            width = max((len(key) for key, _value in pairs), default=0)
            for key, text in pairs:
                indent = "\n" + " " * (width + 2)
                sys.stdout.write(f"{key.ljust(width)}  {text.replace(chr(10), indent)}\n")
            return
        from rich.table import Table

        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, text in pairs:
            table.add_row(key, text)
        console.print(table)


def _rendered(value: Any) -> str:
    """A value of :func:`emit_object`: a list of mappings is one ``k=v`` line per item."""
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return "\n".join("  ".join(f"{k}={_cell(v)}" for k, v in item.items()) for item in value)
    return _cell(value)


def _yaml(data: Any) -> str:
    import yaml  # ~10 ms to import; only -o yaml needs it

    return yaml.safe_dump(data, sort_keys=False)

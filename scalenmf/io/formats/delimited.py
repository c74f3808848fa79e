"""CSV / TSV / whitespace text matrices, as SigProfiler and R users write them.

Layout read (features × samples)::

    Type,S1,S2,...            <- header: a name for the label column(s), then sample names
    A[C>A]A,12,0,...          <- one row per feature: its label, then one count per sample

Accepted variations:

- delimiter ``,``, tab, ``;`` or space, sniffed from the first two lines (``.tsv`` prefers
  tab, ``.csv`` comma); optional ``.gz`` compression; a UTF-8 byte-order mark is ignored;
- R's ``write.csv`` / ``write.table`` headers, which either name the label column (``""``)
  or leave it out (one header field fewer than the data rows);
- **two label columns**, as in SigProfiler catalogues (``Mutation type,Trinucleotide``:
  ``C>A,ACA``). A second leading column is a label column when its value in the first data
  row is not a number. The pair is combined into one label: when every pair looks like a
  substitution and its trinucleotide context (``C>A`` and ``ACA`` with the middle base equal
  to the reference base) into SigProfiler's ``A[C>A]A`` form, so labels match COSMIC's
  ``Type`` column; otherwise into ``first:second``.

Every value must be a finite, non-negative number; anything else (an empty cell, ``NA``,
``NaN``, ``-1``, a row with the wrong number of fields) is an ``InputError`` naming the line
and column. ``transpose`` (for ``convert``) reads files stored samples × features.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from scalenmf.io.errors import InputError
from scalenmf.io.formats._stage import RowStage, StageContext, stage_rows_budget
from scalenmf.io.source import DenseArraySource, MatrixSource

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
_DELIMITERS = ("\t", ",", ";", " ")
#: Approximate bytes one parsed-but-not-yet-converted cell costs in Python (a str object and
#: its list slot): sizes the parse batches.
_CELL_OVERHEAD = 80
_SBS = re.compile(r"^[ACGT]>[ACGT]$")
_TRI = re.compile(r"^[ACGT]{3}$")


def base_suffix(path: Path) -> str:
    """The suffix that names the format, looking through a trailing ``.gz``."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def can_open(path: Path) -> bool:
    return path.is_file() and base_suffix(path) in SUFFIXES


def open_text(path: Path) -> IO[str]:
    """Open a text file, gzip-compressed or not (judged by its magic bytes), for reading."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"cannot open {str(path)!r}: {exc}") from exc


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Layout:
    """What the first lines of the file say about its shape."""

    delimiter: str
    n_label: int  # leading label columns (1 or 2)
    label_names: list[str]  # header names of the label columns ("" when absent)
    columns: list[str]  # header names of the value columns
    n_fields: int  # fields per data row


def _first_lines(path: Path, count: int = 2) -> list[str]:
    lines: list[str] = []
    with open_text(path) as fh:
        try:
            for line in fh:
                if line.strip():
                    lines.append(line)
                    if len(lines) == count:
                        break
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {str(path)!r} as text: {exc}") from exc
    return lines


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter, skipinitialspace=delimiter == " "))


def sniff(path: Path) -> Layout:
    """Find the delimiter, the label columns and the column names from the first two lines."""
    lines = _first_lines(path)
    where = str(path)
    if not lines:
        raise InputError(f"{where!r} is empty")
    if len(lines) == 1:
        raise InputError(f"{where!r} has a header line but no data rows")
    suffix = base_suffix(path)
    order = list(_DELIMITERS)
    preferred = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(suffix)
    if preferred:
        order.remove(preferred)
        order.insert(0, preferred)
    for delim in order:
        header = _split(lines[0], delim)
        first = _split(lines[1], delim)
        d = len(first)
        if d < 2 or len(header) < 1:
            continue
        n_label = 2 if d >= 3 and not _is_number(first[1]) else 1
        if len(header) == d:
            return Layout(delim, n_label, header[:n_label], header[n_label:], d)
        if len(header) == d - n_label:
            # R's write.table(row.names=TRUE): no header field over the row names.
            return Layout(delim, n_label, [""] * n_label, header, d)
    raise InputError(
        f"cannot find the layout of {where!r}: expected a header row of sample names and "
        "data rows of a label followed by numbers, separated by comma, tab, ';' or space, "
        "with as many fields in each data row as in the header"
    )


def combine_labels(parts: list[tuple[str, ...]]) -> list[str]:
    """One label per feature from its label columns (see the module docstring)."""
    if not parts or len(parts[0]) == 1:
        return [p[0] for p in parts]
    if all(
        len(p) == 2 and _SBS.match(p[0]) and _TRI.match(p[1]) and p[1][1] == p[0][0] for p in parts
    ):
        return [f"{p[1][0]}[{p[0]}]{p[1][2]}" for p in parts]
    return [":".join(p) for p in parts]


def _describe_cell(layout: Layout, line: int, field: int) -> str:
    col = layout.columns[field] if field < len(layout.columns) else ""
    name = f" ({col!r})" if col else ""
    return f"line {line}, column {field + layout.n_label + 1}{name}"


def iter_batches(
    path: Path, layout: Layout, batch_cells: int
) -> Iterator[tuple[list[tuple[str, ...]], np.ndarray]]:
    """Yield (labels, values (r, n_values) float64) for batches of about ``batch_cells`` cells.

    Raises ``InputError`` naming the line and column of the first bad field.
    """
    where = str(path)
    n_values = layout.n_fields - layout.n_label
    rows_per_batch = max(1, batch_cells // max(1, layout.n_fields))
    with open_text(path) as fh:
        reader = csv.reader(
            fh,
            delimiter=layout.delimiter,
            skipinitialspace=layout.delimiter == " ",
            strict=True,  # an unterminated quote is an error, not a multi-line field
        )
        labels: list[tuple[str, ...]] = []
        cells: list[list[str]] = []
        lines: list[int] = []
        header_seen = False
        try:
            for fields in reader:
                if not fields or not any(f.strip() for f in fields):
                    continue  # blank lines carry nothing
                if not header_seen:
                    header_seen = True
                    continue
                if len(fields) != layout.n_fields:
                    raise InputError(
                        f"{where!r}, line {reader.line_num}: {len(fields)} fields, expected "
                        f"{layout.n_fields} like the first data row (ragged row?)"
                    )
                if layout.n_label == 2 and _is_number(fields[1]):
                    # The second column was taken for labels because the first data row
                    # holds text there; a number here means that text was a bad value.
                    raise InputError(
                        f"{where!r}, line {reader.line_num}: column 2 holds the number "
                        f"{fields[1]!r}, but the first data row has text there, so it was read "
                        "as a second label column; if column 2 holds counts, the first data "
                        "row has a value that is not a number"
                    )
                labels.append(tuple(fields[: layout.n_label]))
                cells.append(fields[layout.n_label :])
                lines.append(reader.line_num)
                if len(cells) >= rows_per_batch:
                    yield labels, _to_numbers(where, layout, cells, lines, n_values)
                    labels, cells, lines = [], [], []
        except csv.Error as exc:
            raise InputError(f"{where!r}, line {reader.line_num}: {exc}") from exc
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(
                f"cannot read {where!r} near line {reader.line_num} "
                f"(corrupt or truncated file?): {exc}"
            ) from exc
        if cells:
            yield labels, _to_numbers(where, layout, cells, lines, n_values)


def _to_numbers(
    where: str, layout: Layout, cells: list[list[str]], lines: list[int], n_values: int
) -> np.ndarray:
    try:
        values = np.array(cells, dtype=np.float64).reshape(len(cells), n_values)
    except ValueError:
        # Slow path, only on error: find the first cell that is not a number.
        for line, row in zip(lines, cells, strict=True):
            for f, text in enumerate(row):
                if not _is_number(text):
                    raise InputError(
                        f"{where!r}, {_describe_cell(layout, line, f)}: {text!r} is not a number"
                    ) from None
        raise
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        ri, fi = (int(x) for x in np.unravel_index(int(np.argmax(bad)), values.shape))
        what = "negative value" if np.isfinite(values[ri, fi]) else "non-finite value"
        raise InputError(
            f"{where!r}, {_describe_cell(layout, lines[ri], fi)}: {what} {cells[ri][fi]!r}; "
            "X must hold finite, non-negative counts"
        )
    return values


def _check_columns(path: Path, layout: Layout) -> None:
    if layout.n_fields - layout.n_label < 1:
        raise InputError(f"{str(path)!r} has no value columns after the label column(s)")


def read(path: Path) -> MatrixSource:
    """Read the whole file into memory as a dense source with labels."""
    layout = sniff(path)
    _check_columns(path, layout)
    labels: list[tuple[str, ...]] = []
    parts: list[np.ndarray] = []
    for lab, vals in iter_batches(path, layout, 1 << 20):
        labels.extend(lab)
        parts.append(vals)
    X = np.vstack(parts)
    src = DenseArraySource(X)
    return src.set_labels(combine_labels(labels), layout.columns)


def _estimated_text_bytes(path: Path) -> int:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    # Count matrices compress about 4-6×; guessing high keeps big files on the streaming path.
    return size * 6 if gz else size


def _estimated_rows(path: Path) -> int:
    lines = _first_lines(path, 3)
    line_bytes = max(1, len(lines[-1].encode()))
    return max(1, _estimated_text_bytes(path) // line_bytes)


def stage(path: Path, ctx: StageContext) -> MatrixSource:
    """A block-readable source for ``convert``, in bounded memory.

    Small files (decoded size well under the budget) are read into memory. Larger ones
    are parsed in batches into a ``RowStage``: a features × samples file row by row (then
    read back by column block), a samples × features file (``ctx.transpose``) in batches
    of rows that are already whole column blocks. Peak memory: one parse batch (a quarter
    of the budget at ~80 bytes per cell) plus one staged row batch (an eighth at 8 bytes
    per value, written as one compressed shard).
    """
    layout = sniff(path)
    _check_columns(path, layout)
    if _estimated_text_bytes(path) * 2 <= ctx.budget // 4:
        src = read(path)
        if not ctx.transpose:
            return src
        X = np.asarray(src.read_columns(0, src.shape[1]))
        return DenseArraySource(np.ascontiguousarray(X.T)).set_labels(
            src.col_labels, src.row_labels
        )
    n_values = layout.n_fields - layout.n_label
    batch_cells = max(layout.n_fields, ctx.budget // 4 // _CELL_OVERHEAD)
    if ctx.transpose:
        # Rows are samples: each staged row batch is a run of X's columns.
        rows = min(ctx.plan(n_values, 1 << 62, 1.0), stage_rows_budget(ctx.budget, n_values))
    else:
        rows = stage_rows_budget(ctx.budget, n_values)
    # Rows are features here: guess their number from the file size to pick inner chunks
    # no wider than the final column blocks (see RowStage).
    col_chunk = None if ctx.transpose else ctx.plan(_estimated_rows(path), n_values, 1.0)
    staged = RowStage(ctx.workdir, n_values, rows, name="csv", col_chunk=col_chunk)
    labels: list[tuple[str, ...]] = []
    bar = _bar(ctx, path)
    try:
        for lab, vals in iter_batches(path, layout, batch_cells):
            labels.extend(lab)
            staged.append(vals)
            bar.update(len(lab))
    finally:
        bar.close()
    row_names = combine_labels(labels)
    if ctx.transpose:
        return staged.source(transposed=True).set_labels(layout.columns, row_names)
    return staged.source(transposed=False).set_labels(row_names, layout.columns)


def _bar(ctx: StageContext, path: Path) -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc=f"reading {path.name}", unit="row", disable=not ctx.progress)


__all__ = ["Layout", "can_open", "combine_labels", "iter_batches", "read", "sniff", "stage"]

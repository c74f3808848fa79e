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
  ``Type`` column; otherwise into ``first:second``;
- **no header row** or **no label column**, when said so (``has_header=False``,
  ``has_row_labels=False``; ``--no-header``, ``--no-row-labels``): samples are then named
  ``col1..coln`` and features ``row1..rowm``. Nothing is guessed silently: a first line whose
  sample names are all (unquoted) numbers, or a label column whose first value is an
  (unquoted) number, is refused with an error naming the option to choose, since either
  reading would lose or invent a row or column. Quoted fields are names.

Every value must be a finite, non-negative number; anything else (an empty cell, ``NA``,
``NaN``, ``-1``, a row with the wrong number of fields) is an ``InputError`` naming the line
and column. With ``missing=True`` (``--mask nan``), empty, ``NA``, ``N/A``, ``null`` and
``NaN`` cells are read as NaN, the missing entries of a masked fit. Duplicate labels are
kept as given, with a warning. ``transpose`` (for ``convert``) reads files stored samples ×
features.

Parsing goes through numpy's C reader in blocks of whole lines when the file is plain
enough for it to read exactly as the reference does (``numpy_batches``), else through
pandas' C reader in batches; whenever the fast readers report a problem, or a batch holds
a value that is not allowed, the file is read again by the reference parser (the ``csv``
module) which names the line and column of the first bad field.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from scalenmf.io.errors import InputError
from scalenmf.io.formats._files import byte_progress, is_gzip, open_binary, warn_duplicates
from scalenmf.io.formats._stage import RowStage, StageContext, stage_rows_budget
from scalenmf.io.source import DenseArraySource, MatrixSource

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
_DELIMITERS = ("\t", ",", ";", " ")
#: Approximate bytes one parsed-but-not-yet-converted cell costs in Python (a str object and
#: its list slot): sizes the parse batches of the reference parser.
_CELL_OVERHEAD = 80
#: Bytes one cell costs in pandas' reader while its batch is parsed (the float64 column,
#: the tokenizer's buffers, the converted copy): sizes the fast batches.
_FAST_CELL_COST = 64
#: pandas' reader has a fixed overhead of a few MB (buffers, per-column objects); it is used
#: for staging only when one batch holds at least this many cells (a budget of ~8 MiB).
_FAST_MIN_CELLS = 1 << 16
_SBS = re.compile(r"^[ACGT]>[ACGT]$")
_TRI = re.compile(r"^[ACGT]{3}$")
#: Cells read as missing (NaN) with ``missing=True``, compared in lower case.
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none", "-nan"})
_MASK_HINT = "(to read empty, NA and NaN cells as missing entries, fit with --mask nan)"


@dataclass(frozen=True)
class TextOptions:
    """How to read the first row and column of a text matrix.

    Attributes
    ----------
    has_header : bool or None
        Line 1 holds sample names (True), is data (False), or decide from the file (None:
        refused when line 1's sample fields are all numbers, since that is ambiguous).
    has_row_labels : bool or None
        The leading column(s) hold feature labels (True), column 1 is data (False), or
        decide (None: refused when the first data row's label is a number).
    missing : bool
        Read empty / NA / NaN cells as NaN (missing entries of a masked fit).
    """

    has_header: bool | None = None
    has_row_labels: bool | None = None
    missing: bool = False


DEFAULT_OPTIONS = TextOptions()


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
        if is_gzip(path):
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
    n_label: int  # leading label columns (0, 1 or 2)
    label_names: list[str]  # header names of the label columns ("" when absent)
    columns: list[str]  # header names of the value columns (generated without a header)
    n_fields: int  # fields per data row
    header: bool = True  # the first non-blank line is a header (skipped as data)
    skip_lines: int = 1  # physical lines before the first data row
    notes: list[str] = field(default_factory=list)  # what was generated, for the log


def _first_lines(path: Path, count: int = 2) -> list[tuple[int, str]]:
    """The first ``count`` non-blank lines with their 0-based physical line numbers."""
    lines: list[tuple[int, str]] = []
    with open_text(path) as fh:
        try:
            for i, line in enumerate(fh):
                if line.strip():
                    lines.append((i, line))
                    if len(lines) == count:
                        break
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {str(path)!r} as text: {exc}") from exc
    return lines


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter, skipinitialspace=delimiter == " "))


def _quoted(line: str, delimiter: str, n: int) -> list[bool] | None:
    """Which of the ``n`` fields of ``line`` are quoted (None when it cannot be told cheaply:
    a delimiter inside quotes)."""
    raw = next(
        csv.reader(
            [line], delimiter=delimiter, quoting=csv.QUOTE_NONE, skipinitialspace=delimiter == " "
        )
    )
    if len(raw) != n:
        return None
    return [f.strip().startswith('"') for f in raw]


def _bare_numbers(line: str, fields: list[str], delimiter: str) -> list[bool]:
    """For each field: an unquoted number (quoted fields are names, as R and pandas write)."""
    quoted = _quoted(line, delimiter, len(fields))
    if quoted is None:
        return [False] * len(fields)
    return [(not q) and _is_number(f) for f, q in zip(fields, quoted, strict=True)]


def sniff(path: Path, options: TextOptions = DEFAULT_OPTIONS) -> Layout:
    """Find the delimiter, the label columns and the column names from the first two lines.

    Raises
    ------
    InputError
        When no delimiter gives a consistent layout, or the first row or column looks like
        data and ``options`` do not say how to read it.
    """
    lines = _first_lines(path)
    where = str(path)
    if not lines:
        raise InputError(f"{where!r} is empty")
    has_header = options.has_header
    if len(lines) == 1 and has_header is not False:
        raise InputError(f"{where!r} has a header line but no data rows")
    suffix = base_suffix(path)
    order = list(_DELIMITERS)
    preferred = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(suffix)
    if preferred:
        order.remove(preferred)
        order.insert(0, preferred)
    data_line = lines[0][1] if has_header is False else lines[1][1]
    skip = lines[0][0] if has_header is False else lines[0][0] + 1
    for delim in order:
        first = _split(data_line, delim)
        d = len(first)
        if d < 2 and not (d == 1 and options.has_row_labels is False):
            continue
        if options.has_row_labels is False:
            n_label = 0
        else:
            n_label = 2 if d >= 3 and not _is_number(first[1]) else 1
        if has_header is False:
            columns = [f"col{j + 1}" for j in range(d - n_label)]
            layout = Layout(delim, n_label, [""] * n_label, columns, d, False, skip)
            layout.notes.append(f"no header row: samples named col1..col{d - n_label}")
        else:
            header = _split(lines[0][1], delim)
            if len(header) == d:
                layout = Layout(delim, n_label, header[:n_label], header[n_label:], d, True, skip)
            elif n_label and len(header) == d - n_label:
                # R's write.table(row.names=TRUE): no header field over the row names, so
                # the leading column holds labels whatever they look like.
                return Layout(delim, n_label, [""] * n_label, header, d, True, skip)
            else:
                continue
            if has_header is None and len(header) > n_label:
                bare = _bare_numbers(lines[0][1], header, delim)
                if all(bare[n_label:]):
                    raise _looks_like_data(where, lines[0][1], first, data_line, delim, options)
        if n_label == 0:
            layout.notes.append("no label column: features named row1..rowm")
        elif (
            options.has_row_labels is None
            and n_label == 1
            and _bare_numbers(data_line, first, delim)[0]
        ):
            raise InputError(
                f"{where!r}: column 1 holds the number {first[0]!r} in the first data row, so "
                "it may be data rather than feature labels; pass --no-row-labels "
                "(has_row_labels=False) if column 1 is data (features are then named "
                "row1..rowm), or --row-labels (has_row_labels=True) if it holds numeric "
                "labels such as Entrez ids"
            )
        return layout
    raise InputError(
        f"cannot find the layout of {where!r}: expected a header row of sample names and "
        "data rows of a label followed by numbers, separated by comma, tab, ';' or space, "
        "with as many fields in each data row as in the header"
    )


def _looks_like_data(
    where: str, line: str, first: list[str], data_line: str, delim: str, options: TextOptions
) -> InputError:
    shown = line.strip()
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    no_labels = options.has_row_labels is None and _bare_numbers(data_line, first, delim)[0]
    extra = (
        "; column 1 holds numbers too: add --no-row-labels (has_row_labels=False) if it is "
        "data, or --row-labels if it holds numeric labels"
        if no_labels
        else ""
    )
    return InputError(
        f"{where!r}: line 1 ({shown!r}) holds only numbers where sample names belong, so it "
        "looks like a row of data, not a header; pass --no-header (has_header=False) if the "
        "file has no header row (samples are then named col1..coln), or --header "
        f"(has_header=True) if these numbers are the sample names{extra}"
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


def _row_names(layout: Layout, labels: list[tuple[str, ...]]) -> list[str]:
    if layout.n_label == 0:
        return [f"row{i + 1}" for i in range(len(labels))]
    return combine_labels(labels)


def _describe_cell(layout: Layout, line: int, field: int) -> str:
    col = layout.columns[field] if field < len(layout.columns) else ""
    name = f" ({col!r})" if col and layout.header else ""
    return f"line {line}, column {field + layout.n_label + 1}{name}"


def iter_batches(
    path: Path, layout: Layout, batch_cells: int, missing: bool = False
) -> Iterator[tuple[list[tuple[str, ...]], np.ndarray]]:
    """Yield (labels, values (r, n_values) float64) for batches of about ``batch_cells`` cells.

    The reference parser (Python's ``csv`` module): slow, exact about every line.

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
        header_seen = not layout.header
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
                    yield labels, _to_numbers(where, layout, cells, lines, n_values, missing)
                    labels, cells, lines = [], [], []
        except csv.Error as exc:
            raise InputError(f"{where!r}, line {reader.line_num}: {exc}") from exc
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(
                f"cannot read {where!r} near line {reader.line_num} "
                f"(corrupt or truncated file?): {exc}"
            ) from exc
        if cells:
            yield labels, _to_numbers(where, layout, cells, lines, n_values, missing)


def _to_numbers(
    where: str,
    layout: Layout,
    cells: list[list[str]],
    lines: list[int],
    n_values: int,
    missing: bool = False,
) -> np.ndarray:
    if missing:
        cells = [
            ["nan" if c.strip().lower() in MISSING_TOKENS else c for c in row] for row in cells
        ]
    try:
        values = np.array(cells, dtype=np.float64).reshape(len(cells), n_values)
    except ValueError:
        # Slow path, only on error: find the first cell that is not a number.
        for line, row in zip(lines, cells, strict=True):
            for f, text in enumerate(row):
                if not _is_number(text):
                    hint = (
                        f" {_MASK_HINT}"
                        if not missing and text.strip().lower() in MISSING_TOKENS
                        else ""
                    )
                    raise InputError(
                        f"{where!r}, {_describe_cell(layout, line, f)}: {text!r} is not a "
                        f"number{hint}"
                    ) from None
        raise
    bad = (np.isinf(values) if missing else ~np.isfinite(values)) | (values < 0)
    if bad.any():
        ri, fi = (int(x) for x in np.unravel_index(int(np.argmax(bad)), values.shape))
        what = "negative value" if np.isfinite(values[ri, fi]) else "non-finite value"
        hint = f" {_MASK_HINT}" if np.isnan(values[ri, fi]) else ""
        raise InputError(
            f"{where!r}, {_describe_cell(layout, lines[ri], fi)}: {what} {cells[ri][fi]!r}; "
            f"X must hold finite, non-negative counts{hint}"
        )
    return values


class _UseReference(Exception):
    """The fast reader met something it does not judge; read with the reference parser."""


def fast_batches(
    path: Path, layout: Layout, rows_per_batch: int, bar: Any = None
) -> Iterator[tuple[list[tuple[str, ...]], np.ndarray]]:
    """Like ``iter_batches``, through pandas' C reader: fast on well-formed files.

    Raises ``_UseReference`` (before or after yielding batches) on anything it does not
    accept outright (a parse error, a short or long row, a value that is not finite and
    non-negative, a number in a second label column); the caller then reads the file with
    ``iter_batches``, which names the problem or reads what pandas could not.
    """
    import pandas as pd

    n_label = layout.n_label
    # Only the label columns are given a type: a dtype for each of 10⁴ value columns makes
    # pandas' reader 1.5× slower (2.9 s against 1.9 s on the 2000 × 10000 TSV); the value
    # columns are inferred and then must all be numbers (a bool or text column: refused).
    dtypes: dict[int, Any] = {j: object for j in range(n_label)}
    fh = open_binary(path, bar)
    try:
        reader = pd.read_csv(
            fh,
            sep=layout.delimiter,
            header=None,
            skiprows=layout.skip_lines,
            dtype=dtypes,
            na_filter=False,  # an empty or NA cell is an error (or a short row), not NaN
            skipinitialspace=layout.delimiter == " ",
            skip_blank_lines=True,
            encoding="utf-8",  # bytes go straight to the C tokenizer (it skips a BOM)
            engine="c",
            # One pass per batch: the default parses a batch in pieces and concatenates
            # each of its 10⁴ columns (3.6 s against 4.2 s for the 2000 × 10000 TSV).
            low_memory=False,
            chunksize=max(1, rows_per_batch),
        )
        with reader:
            for frame in reader:
                if frame.shape[1] != layout.n_fields:
                    raise _UseReference
                kinds = {dt.kind for dt in frame.dtypes.iloc[n_label:]}
                if not kinds <= {"i", "u", "f"}:
                    raise _UseReference  # text, bools: the reference parser names the cell
                values = frame.iloc[:, n_label:].to_numpy(dtype=np.float64, copy=False)
                if values.size and not (np.isfinite(values).all() and values.min() >= 0):
                    raise _UseReference
                if n_label == 0:
                    labels: list[tuple[str, ...]] = [()] * len(frame)
                elif n_label == 1:
                    labels = [(str(v),) for v in frame.iloc[:, 0].tolist()]
                else:
                    second = frame.iloc[:, 1]
                    if pd.to_numeric(second, errors="coerce").notna().any():
                        raise _UseReference
                    labels = list(
                        zip(
                            map(str, frame.iloc[:, 0].tolist()),
                            map(str, second.tolist()),
                            strict=True,
                        )
                    )
                # As pandas holds them (a column-major view of its block): the callers
                # copy them into their own buffers anyway.
                yield labels, values
    except _UseReference:
        raise
    except Exception as exc:  # pandas' parse errors, bad bytes, a truncated gzip stream
        log.debug("fast reader gave up on %s: %s", path, exc)
        raise _UseReference from exc
    finally:
        fh.close()


#: Delimiters the numpy reader takes (a space needs ``skipinitialspace``: pandas' reader).
_NUMPY_DELIMITERS = frozenset("\t,;")


def _line_blocks(fh: IO[bytes], block_bytes: int) -> Iterator[bytes]:
    """The rest of ``fh`` as runs of whole lines of about ``block_bytes`` each."""
    rest = b""
    while True:
        data = fh.read(block_bytes)
        if not data:
            if rest:
                yield rest
            return
        data = rest + data if rest else data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        rest = data[cut:]
        yield data[:cut] if rest else data


def numpy_batches(
    path: Path, layout: Layout, block_cells: int, bar: Any = None
) -> Iterator[tuple[list[tuple[str, ...]], np.ndarray]]:
    """Like ``iter_batches``, through numpy's C reader (``np.loadtxt``) in blocks of whole
    lines holding at most ``block_cells`` cells: on wide tables the fastest reader, since
    it makes no object per column (2,000 × 10,000 TSV: 0.5 s against 1.3–2.7 s for
    pandas' reader, which builds and types a column per value column and batch).

    It takes only what it reads exactly as the reference does, and raises
    ``_UseReference`` on anything else (the caller then tries pandas' reader): a tab,
    comma or semicolon delimiter, at most one label column, UTF-8 text without quote
    characters, NUL or lone carriage returns, every row with exactly ``n_fields`` fields
    (numpy ignores extra ones: the delimiters are counted), every value a finite,
    non-negative number as Python's ``float`` reads it.
    """
    if layout.n_label > 1 or layout.delimiter not in _NUMPY_DELIMITERS:
        raise _UseReference
    delim, n_label, n_fields = layout.delimiter, layout.n_label, layout.n_fields
    usecols = range(n_label, n_fields)
    # Two bytes a cell at least (a digit and a delimiter or newline): a block of
    # 2 * block_cells bytes holds at most block_cells values.
    block_bytes = max(1 << 16, 2 * int(block_cells))
    fh = open_binary(path, bar)
    try:
        for _ in range(layout.skip_lines):
            if b"\r" in fh.readline().removesuffix(b"\n").removesuffix(b"\r"):
                raise _UseReference  # lone CRs end lines for csv, not for readline
        first = layout.skip_lines == 0
        for block in _line_blocks(fh, block_bytes):
            if b'"' in block or b"\x00" in block:
                raise _UseReference  # quoted fields: csv's rules; NUL: never a number
            text = block.decode("utf-8")  # a bad byte: UnicodeDecodeError, caught below
            if first:
                text = text.removeprefix("\ufeff")  # what utf-8-sig drops
                first = False
            values = np.loadtxt(
                io.StringIO(text),
                delimiter=delim,
                usecols=usecols,
                dtype=np.float64,
                comments=None,
                quotechar=None,
                ndmin=2,
            )
            rows = values.shape[0]
            if text.count(delim) != rows * (n_fields - 1):
                raise _UseReference  # a row with more fields (numpy drops them)
            if values.size and not (np.isfinite(values).all() and values.min() >= 0):
                raise _UseReference  # the reference names the cell
            labels: list[tuple[str, ...]]
            if n_label:
                lines = (line.removesuffix("\r") for line in text.split("\n"))
                labels = [(line.split(delim, 1)[0],) for line in lines if line]
                if len(labels) != rows:
                    raise _UseReference
            else:
                labels = [()] * rows
            if rows:
                yield labels, values
    except _UseReference:
        raise
    except Exception as exc:  # numpy's parse errors, bad bytes, a truncated gzip stream
        log.debug("numpy reader gave up on %s: %s", path, exc)
        raise _UseReference from exc
    finally:
        fh.close()


def _read_fast(consume: Any, path: Path, layout: Layout, rows_per_batch: int, bar: Any) -> Any:
    """``consume(batches, name)`` over the first fast reader that takes the whole file:
    numpy's, then pandas' (``name`` tells them apart); ``_UseReference`` when neither does.
    A reader may give up after some batches: ``consume`` starts afresh with the next."""
    cells = rows_per_batch * layout.n_fields
    readers = (
        ("csv-np", lambda: numpy_batches(path, layout, cells, bar)),
        ("csv", lambda: fast_batches(path, layout, rows_per_batch, bar)),
    )
    for name, batches in readers:
        try:
            return consume(batches(), name)
        except _UseReference:
            if bar is not None:
                bar.reset()
    raise _UseReference


def _check_columns(path: Path, layout: Layout) -> None:
    if layout.n_fields - layout.n_label < 1:
        raise InputError(f"{str(path)!r} has no value columns after the label column(s)")


def _layout(path: Path, options: TextOptions) -> Layout:
    layout = sniff(path, options)
    _check_columns(path, layout)
    for note in layout.notes:
        log.info("%s: %s", path, note)
    return layout


def _labelled(path: Path, layout: Layout, labels: list[tuple[str, ...]]) -> tuple[Any, Any]:
    rows = _row_names(layout, labels)
    warn_duplicates(rows, "feature", str(path))
    if layout.header:
        warn_duplicates(layout.columns, "sample", str(path))
    return rows, layout.columns


def read(path: Path, options: TextOptions = DEFAULT_OPTIONS, bar: Any = None) -> MatrixSource:
    """Read the whole file into memory as a dense source with labels (``bar``: a byte
    progress bar)."""
    layout = _layout(path, options)
    # Batches of 2²² cells (32 MiB as float64): pandas holds tens of bytes per cell of a
    # batch while it parses it (peak rise of the 2000 × 10000 TSV: 367 MiB against 448 MiB
    # with 2²⁴), and parses no slower.
    rows_per_batch = max(1, (1 << 22) // max(1, layout.n_fields))

    def collect(batches: Iterator[Any], _name: str) -> tuple[list[Any], list[np.ndarray]]:
        got: tuple[list[Any], list[np.ndarray]] = ([], [])
        for lab, vals in batches:
            got[0].extend(lab)
            got[1].append(vals)
        return got

    try:
        if options.missing:
            raise _UseReference
        labels, parts = _read_fast(collect, path, layout, rows_per_batch, bar)
    except _UseReference:
        labels, parts = [], []
        for lab, vals in iter_batches(path, layout, 1 << 20, options.missing):
            labels.extend(lab)
            parts.append(vals)
        if bar is not None and bar.total:
            bar.update(max(0, bar.total - bar.n))
    if not parts:
        raise InputError(f"{str(path)!r} has a header line but no data rows")
    X = _stacked(parts)
    rows, cols = _labelled(path, layout, labels)
    return DenseArraySource(X).set_labels(rows, cols)


def _stacked(parts: list[np.ndarray]) -> np.ndarray:
    """``np.vstack(parts)`` at the cost of the result plus one part: each part is copied
    into the (not yet touched, so not yet resident) result and dropped at once."""
    if len(parts) == 1:
        return np.ascontiguousarray(parts.pop())
    X = np.empty((sum(p.shape[0] for p in parts), parts[0].shape[1]), dtype=np.float64)
    at = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        X[at : at + part.shape[0]] = part
        at += part.shape[0]
        del part
    return X


def is_text_path(obj: Any) -> bool:
    """True for a path (str or path-like) that names a CSV/TSV file."""
    import os

    return isinstance(obj, (str, os.PathLike)) and can_open(Path(obj))


def open_text_matrix(obj: Any, options: TextOptions) -> Any:
    """``obj`` read with ``options`` if it is a CSV/TSV path; other inputs pass through
    (``options.missing`` alone is allowed for them: their NaN are kept anyway).

    Raises
    ------
    ValueError
        ``has_header`` or ``has_row_labels`` given for an input that is not CSV/TSV.
    """
    if is_text_path(obj):
        return read(Path(obj), options)
    if options.has_header is not None or options.has_row_labels is not None:
        raise ValueError(
            "has_header / has_row_labels (--header, --no-header, --row-labels, "
            f"--no-row-labels) apply to CSV/TSV input only; {str(obj)[:200]!r} is not CSV/TSV"
        )
    return obj


def _estimated_text_bytes(path: Path) -> int:
    size = path.stat().st_size
    # Count matrices compress about 4-6×; guessing high keeps big files on the streaming path.
    return size * 6 if is_gzip(path) else size


def _estimated_rows(path: Path) -> int:
    lines = _first_lines(path, 3)
    line_bytes = max(1, len(lines[-1][1].encode()))
    return max(1, _estimated_text_bytes(path) // line_bytes)


def stage(path: Path, ctx: StageContext) -> MatrixSource:
    """A block-readable source for ``convert``, in bounded memory.

    Small files (decoded size well under the budget) are read into memory. Larger ones
    are parsed in batches into a ``RowStage``: a features × samples file row by row (then
    read back by column block), a samples × features file (``ctx.transpose``) in batches
    of rows that are already whole column blocks. Peak memory: one parse batch (a quarter
    of the budget) plus one staged row batch (an eighth at 8 bytes per value, written as
    one compressed shard).
    """
    options = ctx.text if ctx.text is not None else DEFAULT_OPTIONS
    layout = _layout(path, options)
    if _estimated_text_bytes(path) * 2 <= ctx.budget // 4:
        with byte_progress(path, ctx.progress) as small_bar:
            src = read(path, options, small_bar)
        if not ctx.transpose:
            return src
        X = np.asarray(src.read_columns(0, src.shape[1]))
        return DenseArraySource(np.ascontiguousarray(X.T)).set_labels(
            src.col_labels, src.row_labels
        )
    n_values = layout.n_fields - layout.n_label
    if ctx.transpose:
        # Rows are samples: each staged row batch is a run of X's columns.
        rows = min(ctx.plan(n_values, 1 << 62, 1.0), stage_rows_budget(ctx.budget, n_values))
    else:
        rows = stage_rows_budget(ctx.budget, n_values)
    # Rows are features here: guess their number from the file size to pick inner chunks
    # no wider than the final column blocks (see RowStage).
    col_chunk = None if ctx.transpose else ctx.plan(_estimated_rows(path), n_values, 1.0)

    def run(batches: Iterator[tuple[list[tuple[str, ...]], np.ndarray]], name: str) -> Any:
        staged = RowStage(ctx.workdir, n_values, rows, name=name, col_chunk=col_chunk)
        labels: list[tuple[str, ...]] = []
        for lab, vals in batches:
            labels.extend(lab)
            staged.append(vals)
        return staged, labels

    fast_rows = max(1, ctx.budget // 4 // _FAST_CELL_COST // max(1, layout.n_fields))
    bar = byte_progress(path, ctx.progress)
    try:
        try:
            if options.missing or fast_rows * layout.n_fields < _FAST_MIN_CELLS:
                raise _UseReference
            staged, labels = _read_fast(run, path, layout, fast_rows, bar)
        except _UseReference:
            bar.reset()
            bar.set_description(f"reading {path.name} (line by line)")
            batch_cells = max(layout.n_fields, ctx.budget // 4 // _CELL_OVERHEAD)
            staged, labels = run(
                _counted(iter_batches(path, layout, batch_cells, options.missing), path, bar),
                "csv-ref",
            )
    finally:
        bar.close()
    row_names, col_names = _labelled(path, layout, labels)
    if ctx.transpose:
        return staged.source(transposed=True).set_labels(col_names, row_names)
    return staged.source(transposed=False).set_labels(row_names, col_names)


def _counted(batches: Iterator[Any], path: Path, bar: Any) -> Iterator[Any]:
    # The reference parser reads text; the bar ends at the file's size when it is done.
    yield from batches
    if bar.total:
        bar.update(max(0, bar.total - bar.n))


__all__ = [
    "MISSING_TOKENS",
    "Layout",
    "TextOptions",
    "can_open",
    "combine_labels",
    "fast_batches",
    "is_text_path",
    "iter_batches",
    "open_text_matrix",
    "read",
    "sniff",
    "stage",
]

"""Matrix Market (``.mtx``, ``.mtx.gz``), as 10x Genomics and GEO ship single-cell counts.

The matrix in the file is features × samples (genes × barcodes), the orientation of X. Row
and column labels come from 10x side files in the same directory, sharing the matrix file's
prefix (``matrix.mtx.gz`` → ``features.tsv.gz`` or ``genes.tsv.gz`` and
``barcodes.tsv.gz``; ``GSM1_matrix.mtx`` → ``GSM1_genes.tsv``, ...). Feature labels are the
first column of the features file (the stable, unique gene ids; symbols repeat).

Supported: ``coordinate`` (``integer``, ``real``, ``pattern``; ``general`` or
``symmetric``) and ``array`` (``general``). Duplicate coordinates are summed, as
``scipy.io.mmread`` does. Indices must be integers in range, values finite and ≥ 0.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.sparse as sp

from scalenmf.io.errors import InputError
from scalenmf.io.formats._stage import (
    BucketStage,
    RowStage,
    StageContext,
    stage_rows_budget,
)
from scalenmf.io.formats.delimited import open_text
from scalenmf.io.source import DenseArraySource, MatrixSource, SparseArraySource

log = logging.getLogger(__name__)

#: Lines parsed per batch when reading into memory.
_BATCH_LINES = 1 << 20
#: Bytes one entry line costs while its batch is parsed (the str, its list slot, the parsed
#: floats, indices and sort temporaries): sizes the streaming batches.
_LINE_COST = 200


def can_open(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith(".mtx") or name.endswith(".mtx.gz"))


@dataclass(frozen=True)
class Header:
    """The banner and size line of a Matrix Market file."""

    fmt: str  # "coordinate" or "array"
    field: str  # "integer", "real", "double" or "pattern"
    symmetry: str  # "general" or "symmetric"
    shape: tuple[int, int]
    nnz: int  # entries listed (m·n for array)
    first_data_line: int  # 1-based line number of the first entry


def _read_header(path: Path, fh: IO[str]) -> Header:
    where = str(path)
    banner = fh.readline()
    if not banner:
        raise InputError(f"{where!r} is empty")
    tokens = banner.strip().lower().split()
    if len(tokens) != 5 or tokens[0] != "%%matrixmarket" or tokens[1] != "matrix":
        raise InputError(
            f"{where!r}: line 1 is not a Matrix Market banner "
            f"('%%MatrixMarket matrix coordinate integer general'); got {banner.strip()[:80]!r}"
        )
    _, _, fmt, field, symmetry = tokens
    if fmt not in ("coordinate", "array"):
        raise InputError(f"{where!r}: unknown Matrix Market format {fmt!r}")
    if field not in ("integer", "real", "double", "pattern"):
        raise InputError(
            f"{where!r}: Matrix Market field {field!r} is not supported "
            "(counts must be integer, real or pattern)"
        )
    if symmetry not in ("general", "symmetric") or (fmt == "array" and symmetry != "general"):
        raise InputError(f"{where!r}: Matrix Market symmetry {symmetry!r} is not supported")
    if fmt == "array" and field == "pattern":
        raise InputError(f"{where!r}: 'array pattern' is not a valid Matrix Market type")
    line_no = 1
    for line in fh:
        line_no += 1
        text = line.strip()
        if not text or text.startswith("%"):
            continue
        parts = text.split()
        want = 3 if fmt == "coordinate" else 2
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            sizes = []
        if len(sizes) != want or min(sizes) < 0:
            raise InputError(
                f"{where!r}, line {line_no}: bad size line {text[:80]!r}; expected "
                f"{want} non-negative integers"
            )
        m, n = sizes[0], sizes[1]
        nnz = sizes[2] if fmt == "coordinate" else m * n
        return Header(fmt, field, symmetry, (m, n), nnz, line_no + 1)
    raise InputError(f"{where!r}: no size line after the Matrix Market banner")


def _batches(path: Path, fh: IO[str], header: Header, batch_lines: int = _BATCH_LINES) -> Any:
    """Yield (first line number, parsed float64 rows) for batches of entry lines."""
    where = str(path)
    ncols = {"coordinate": 2 if header.field == "pattern" else 3, "array": 1}[header.fmt]
    line_no = header.first_data_line
    while True:
        try:
            lines = list(itertools.islice(fh, batch_lines))
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(
                f"cannot read {where!r} after line {line_no} (corrupt or truncated file?): {exc}"
            ) from exc
        if not lines:
            return
        if not any(line.strip() and not line.lstrip().startswith("%") for line in lines):
            line_no += len(lines)
            continue
        try:
            arr = np.loadtxt(lines, dtype=np.float64, ndmin=2, comments="%")
        except ValueError:
            arr = None
        if arr is None or (arr.size and arr.shape[1] != ncols):
            _raise_bad_line(where, lines, line_no, ncols)
        assert arr is not None
        # Blank lines are skipped by loadtxt; entry line numbers in errors count them.
        yield line_no, arr.reshape(-1, ncols)
        line_no += len(lines)


def _raise_bad_line(where: str, lines: list[str], first: int, ncols: int) -> None:
    for i, line in enumerate(lines):
        parts = line.split()
        if not parts or parts[0].startswith("%"):
            continue
        ok = len(parts) == ncols
        if ok:
            try:
                [float(p) for p in parts]
            except ValueError:
                ok = False
        if not ok:
            raise InputError(
                f"{where!r}, line {first + i}: expected {ncols} number(s), "
                f"got {line.strip()[:80]!r}"
            )
    raise InputError(f"{where!r}: cannot parse entries starting at line {first}")


def _check_values(where: str, vals: np.ndarray, first_line: int) -> None:
    bad = ~np.isfinite(vals) | (vals < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"{where!r}, entry line {first_line + i}: value {float(vals[i])!r} is negative or not "
            "finite; X must hold finite, non-negative counts"
        )


def _coords(
    where: str, arr: np.ndarray, header: Header, first_line: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0-based rows, cols and values of one parsed coordinate batch, checked."""
    m, n = header.shape
    ri, ci = arr[:, 0], arr[:, 1]
    vals = np.ones(len(arr)) if header.field == "pattern" else arr[:, 2]
    for idx, size, what in ((ri, m, "row"), (ci, n, "column")):
        bad = (idx != np.floor(idx)) | (idx < 1) | (idx > size)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(
                f"{where!r}, entry line {first_line + i}: {what} index {idx[i]:g} is not an "
                f"integer in 1..{size}"
            )
    _check_values(where, vals, first_line)
    rows = ri.astype(np.int64) - 1
    cols = ci.astype(np.int64) - 1
    if header.symmetry == "symmetric":
        off = rows != cols
        rows, cols = np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]])
        vals = np.concatenate([vals, vals[off]])
    return rows, cols, vals


def _count_error(where: str, header: Header, seen: int) -> InputError:
    if seen < header.nnz:
        return InputError(
            f"{where!r} is truncated: the header promises {header.nnz} entries, found {seen}"
        )
    return InputError(f"{where!r} has {seen} entries, more than the {header.nnz} its header says")


# -- labels ------------------------------------------------------------------------------------
def _side_file(path: Path, names: tuple[str, ...]) -> Path | None:
    lower = path.name.lower()
    base = lower[: -len(".gz")] if lower.endswith(".gz") else lower
    stem = path.name[: len(base) - len(".mtx")]
    prefix = stem[: -len("matrix")] if stem.lower().endswith("matrix") else stem + "."
    for name in names:
        for suffix in ("", ".gz"):
            cand = path.with_name(prefix + name + suffix)
            if cand.is_file():
                return cand
    return None


def _read_labels(path: Path, length: int) -> np.ndarray:
    with open_text(path) as fh:
        try:
            labels = [line.rstrip("\r\n").split("\t")[0] for line in fh if line.strip()]
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read labels from {str(path)!r}: {exc}") from exc
    if len(labels) != length:
        raise InputError(f"{str(path)!r} has {len(labels)} labels, but the matrix needs {length}")
    return np.asarray(labels, dtype=str)


def side_labels(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Row (features/genes) and column (barcodes) labels from 10x side files, if present."""
    feats = _side_file(path, ("features.tsv", "genes.tsv"))
    codes = _side_file(path, ("barcodes.tsv",))
    rows = _read_labels(feats, shape[0]) if feats else None
    cols = _read_labels(codes, shape[1]) if codes else None
    return rows, cols


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


# -- readers -----------------------------------------------------------------------------------
def read(path: Path) -> MatrixSource:
    """Read the whole file into memory (scipy CSC for coordinate, ndarray for array)."""
    where = str(path)
    with open_text(path) as fh:
        header = _read_header(path, fh)
        m, n = header.shape
        if header.fmt == "array":
            parts = [arr.ravel() for _, arr in _batches(path, fh, header)]
            vals = np.concatenate(parts) if parts else np.empty(0)
            if vals.size != header.nnz:
                raise _count_error(where, header, vals.size)
            _check_values(where, vals, header.first_data_line)
            src: MatrixSource = DenseArraySource(vals.reshape(n, m).T)
        else:
            rows, cols, vals_list = [], [], []
            seen = 0
            for first, arr in _batches(path, fh, header):
                seen += len(arr)
                if seen > header.nnz:
                    raise _count_error(where, header, seen)
                r, c, v = _coords(where, arr, header, first)
                rows.append(r)
                cols.append(c)
                vals_list.append(v)
            if seen != header.nnz:
                raise _count_error(where, header, seen)
            X = sp.coo_matrix(
                (_cat(vals_list, np.float64), (_cat(rows, np.int64), _cat(cols, np.int64))),
                shape=(m, n),
            ).tocsc()
            src = SparseArraySource(X)
    row_labels, col_labels = side_labels(path, header.shape)
    return src.set_labels(row_labels, col_labels)


def stage(path: Path, ctx: StageContext) -> MatrixSource:
    """A block-readable source for ``convert``, in bounded memory.

    Coordinate files are read once and their entries scattered into per-column-block
    buckets (``BucketStage``; memory: one parse batch of an eighth of the budget plus a
    scatter buffer of a quarter), array files are staged as rows of Xᵀ
    (``RowStage``). ``ctx.transpose`` reads a samples × features file.
    """
    where = str(path)
    with open_text(path) as fh:
        header = _read_header(path, fh)
        m, n = header.shape
        xm, xn = (n, m) if ctx.transpose else (m, n)
        batch_lines = max(1024, ctx.budget // 8 // _LINE_COST)
        if header.fmt == "array":
            # Column-major values: each run of m values is a column of the stored matrix,
            # i.e. a column of X, or (transposed) a row of X.
            rows_per = stage_rows_budget(ctx.budget, m)
            if not ctx.transpose:
                rows_per = min(rows_per, ctx.plan(xm, xn, 1.0))
            # Transposed, staged rows are X's rows, read back by column blocks.
            col_chunk = ctx.plan(xm, xn, 1.0) if ctx.transpose else None
            staged = RowStage(ctx.workdir, m, rows_per, name="mtx", col_chunk=col_chunk)
            pending = np.empty(0)
            seen = 0
            for first, arr in _batches(path, fh, header, batch_lines):
                vals = arr.ravel()
                seen += vals.size
                if seen > header.nnz:
                    raise _count_error(where, header, seen)
                _check_values(where, vals, first)
                pending = np.concatenate([pending, vals])
                full = (pending.size // max(m, 1)) * m
                if full:
                    staged.append(pending[:full].reshape(-1, m))
                    pending = pending[full:]
            if seen != header.nnz:
                raise _count_error(where, header, seen)
            out: MatrixSource = staged.source(transposed=not ctx.transpose)
        else:
            density = header.nnz / max(1, m * n)
            buckets = BucketStage(
                ctx.workdir,
                (xm, xn),
                ctx.plan(xm, xn, density),
                buffer_entries=ctx.budget // 4 // 16,
            )
            seen = 0
            for first, arr in _batches(path, fh, header, batch_lines):
                seen += len(arr)
                if seen > header.nnz:
                    raise _count_error(where, header, seen)
                r, c, v = _coords(where, arr, header, first)
                if ctx.transpose:
                    r, c = c, r
                buckets.add(r, c, v)
            if seen != header.nnz:
                raise _count_error(where, header, seen)
            out = buckets.finish()
    row_labels, col_labels = side_labels(path, header.shape)
    if ctx.transpose:
        row_labels, col_labels = col_labels, row_labels
    return out.set_labels(row_labels, col_labels)


__all__ = ["Header", "can_open", "read", "side_labels", "stage"]

"""Matrix Market (``.mtx``, ``.mtx.gz``), as 10x Genomics and GEO ship single-cell counts.

The matrix in the file is features × samples (genes × barcodes), the orientation of X. Row
and column labels come from 10x side files in the same directory, sharing the matrix file's
prefix (``matrix.mtx.gz`` → ``features.tsv.gz`` or ``genes.tsv.gz`` and
``barcodes.tsv.gz``; ``GSM1_matrix.mtx`` → ``GSM1_genes.tsv``, ...). Feature labels are the
first column of the features file (the stable, unique gene ids; symbols repeat).

Supported: ``coordinate`` (``integer``, ``real``, ``pattern``; ``general`` or
``symmetric``) and ``array`` (``general``). Duplicate coordinates are summed, as
``scipy.io.mmread`` does. Indices must be integers in range, values finite and ≥ 0.

Coordinate entries are parsed by fast_matrix_market (the C++ parser inside
``scipy.io.mmread``) over byte ranges of the file: after the header, any run of whole
lines is an independent Matrix Market body, so the file is read in chunks of bounded size
(gzip through ISA-L), each parsed in parallel. A file sorted by column (as 10x writes it)
is written to the store as it is parsed (``SortedStream``); any other is bucketed into
column blocks first. A chunk the fast parser does not take outright (a comment or blank
line, odd spacing, text, a bad index or value) is parsed again line by line, which names
the line of the first problem.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from scalenmf.io._lazy import lazy_module
from scalenmf.io.errors import InputError
from scalenmf.io.formats._files import byte_progress, open_binary, warn_duplicates
from scalenmf.io.formats._stage import (
    BucketStage,
    RestageNeeded,
    RowStage,
    StageContext,
    stage_rows_budget,
)
from scalenmf.io.formats.delimited import open_text
from scalenmf.io.planning import bounds_from_cols
from scalenmf.io.source import DenseArraySource, MatrixSource, SparseArraySource

if TYPE_CHECKING:
    import scipy.sparse as sp
else:
    sp = lazy_module("scipy.sparse")

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


def _read_header(path: Path, fh: Any) -> Header:
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


class _TextLines:
    """Decoded lines of a binary stream, for reading the header (the body stays binary)."""

    def __init__(self, fh: IO[bytes]):
        self._fh = fh

    def readline(self) -> str:
        return self._fh.readline().decode("utf-8-sig", errors="replace")

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


_DIGITS = b"0123456789"
#: Bytes of a chunk scanned per step by ``_plain_lines`` (fits in a core's cache).
_SCAN_BYTES = 1 << 18
#: What is left of single-spaced "row col value" lines once their digits are gone, when
#: the indices are plain digits and the value is a float's spelling: two separators, then
#: at most a point, an exponent mark and the exponent's sign, in that order.
_REAL_LINES = re.compile(rb"(?:  \.?(?:[eE][+-]?)?\n)*")
#: Digits missing before or after an exponent mark, or around a lone point.
_BAD_REALS = (b" e", b" E", b" .e", b" .E", b" .\n", b"e\n", b"E\n", b"-\n", b"+\n")


def _read_block(fh: IO[bytes], size: int) -> bytearray:
    """Up to ``size`` bytes of ``fh`` (fewer only at the end) read into one new buffer."""
    buf = bytearray(size)
    got = 0
    with memoryview(buf) as view:
        while got < size:
            k = fh.readinto(view[got:])  # type: ignore[attr-defined]
            if not k:
                break
            got += k
    del buf[got:]
    return buf


def _chunks(fh: IO[bytes], chunk_bytes: int) -> Generator[bytes, None, None]:
    """Yield the body as runs of whole lines, in order. The next run is read (and
    decompressed) in a background thread while the caller parses the current one.

    The runs are the read buffers themselves (``bytearray``), with the partial last line
    moved to the front of the next: no copy of a whole chunk is made here."""
    from concurrent.futures import ThreadPoolExecutor

    rest = b""
    pool = ThreadPoolExecutor(1, thread_name_prefix="mtx-read")
    ahead = pool.submit(_read_block, fh, chunk_bytes)
    try:
        while True:
            block = ahead.result()
            if not block:
                if rest:
                    yield rest if rest.endswith(b"\n") else rest + b"\n"
                return
            ahead = pool.submit(_read_block, fh, chunk_bytes)
            if rest:
                block[0:0] = rest  # moves the buffer in place (one line's worth of growth)
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                rest = bytes(block)
                continue
            rest = bytes(block[cut:])
            del block[cut:]  # shrinks in place
            yield block  # type: ignore[misc]
    finally:
        # Wait for the read in flight (fh must be free when we return), but never join the
        # thread here: a generator left unclosed is finalized by the garbage collector,
        # possibly inside threading's own locks, where a join deadlocks. The idle worker
        # ends by itself.
        if not ahead.cancel():
            ahead.exception()
        pool.shutdown(wait=False)


def _plain_lines(chunk: bytes, ncols: int) -> int | None:
    """Lines of ``chunk`` when it is lines of ``ncols`` plain unsigned integers, each
    followed by one space (the last by the newline); None otherwise.

    Three vectorized counts, no per-line pass: every byte that is not a digit must be a
    space or a newline, with exactly ``ncols - 1`` spaces per newline on average. A line
    with fewer spaces has fewer than ``ncols`` tokens, which fast_matrix_market refuses
    (it reads line by line and stops at a missing token; blank lines break its entry
    count): so a chunk it parses has exactly ``ncols - 1`` spaces on every line, and no
    room for the fourth token it would silently drop (``test_fmm_refuses_short_lines``)."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    if not buf.size or buf[-1] != 10:
        return None
    # In slices that stay in the cache, with one scratch buffer: whole-chunk temporaries
    # would be fresh pages for every chunk (measured 2× slower).
    scratch = np.empty(min(_SCAN_BYTES, buf.size), dtype=np.uint8)
    flags = scratch.view(np.bool_)
    other = lines = spaces = 0
    for a in range(0, buf.size, _SCAN_BYTES):
        part = buf[a : a + _SCAN_BYTES]
        k = part.size
        np.subtract(part, np.uint8(48), out=scratch[:k])  # digits to 0..9, the rest wraps
        other += int(np.count_nonzero(np.greater(scratch[:k], np.uint8(9), out=flags[:k])))
        lines += int(np.count_nonzero(np.equal(part, np.uint8(10), out=flags[:k])))
        spaces += int(np.count_nonzero(np.equal(part, np.uint8(32), out=flags[:k])))
    if other != ncols * lines or spaces != (ncols - 1) * lines:
        return None  # a byte other than a digit, a space or a newline, or odd spacing
    return lines


def _entry_count(chunk: bytes, ncols: int) -> tuple[int, int, bool] | None:
    """Entry lines and lines in ``chunk`` if the fast parser reads it exactly, and whether
    every token is a plain unsigned integer (then it may be parsed as one, exactly and much
    faster); None when the chunk must be checked line by line.

    The fast parser reads exactly when every line holds ``ncols`` tokens of number
    characters and the index tokens are plain digits: it silently drops a fourth column or
    trailing text, and reads an index token only up to its first non-digit, taking the rest
    as the next token ("2 1.8 1" as row 2, column 1, value .8). The usual case (count
    matrices: plain digits, one space) is settled by ``_plain_lines``."""
    plain = _plain_lines(chunk, ncols)
    if plain is not None:
        return plain, plain, True
    gaps = chunk.translate(None, _DIGITS)  # what is not a digit
    lines = gaps.count(b"\n")
    if gaps.translate(None, b" \t\r\n"):
        # Non-digits other than spaces: reals (or comments, text, NaN/inf, other bytes).
        if ncols == 2:
            return None  # a pattern file has no values: such characters are in an index
        if b"  " in chunk or b"\n " in chunk or chunk[:1] == b" ":
            return None  # odd spacing around reals: the line parser
        # Single spaces, no leading blank: each line's two spaces are its two separators.
        if not _REAL_LINES.fullmatch(gaps) or any(bad in chunk for bad in _BAD_REALS):
            return None  # other bytes, or a token no float spells
        signs = chunk.count(b"-") + chunk.count(b"+")
        if signs != sum(chunk.count(e) for e in (b"e-", b"E-", b"e+", b"E+")):
            return None  # a sign not right after an exponent mark ("5+4", "1-3")
        return lines, lines, False
    # Plain digits with odd spacing (tabs, several spaces, leading or trailing blanks, CR).
    buf = np.frombuffer(chunk, dtype=np.uint8)
    nl = buf == 10
    gap = nl | (buf == 32) | (buf == 9) | (buf == 13)
    start = ~gap
    start[1:] &= gap[:-1]
    line_of = np.cumsum(nl) - nl  # the line each byte belongs to
    per_line = np.bincount(line_of[start], minlength=lines)
    if not np.all((per_line == ncols) | (per_line == 0)):
        return None
    return int(np.count_nonzero(per_line)), lines, True


def parser_threads() -> int:
    """Threads fast_matrix_market may use for one chunk: the cores this process may run
    on (at most 8; more cost more than they save on chunks of 16 MiB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _fmm_parse(
    body: bytes, count: int, shape: tuple[int, int], parallelism: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fast_matrix_market's parse of a whole (header + entries) coordinate text: 0-based
    rows and columns (int32 when the shape allows) and float64 values.

    The parser writes straight into arrays made here: float64 values even for an
    ``integer`` body (no int64 copy to convert) and no zero-filling. Falls back to the
    public ``read_coo`` if the parser's core module ever changes its calls."""
    import fast_matrix_market as fmm

    core = getattr(fmm, "_fmm_core", None)
    index = np.int32 if max(shape) < 2**31 else np.int64
    try:
        cursor = core.open_read_stream(io.BytesIO(body), parallelism)  # type: ignore[union-attr]
        rows, cols = np.empty(count, dtype=index), np.empty(count, dtype=index)
        vals = np.empty(count, dtype=np.float64)
        core.read_body_coo(cursor, rows, cols, vals)  # type: ignore[union-attr]
        return rows, cols, vals
    except (AttributeError, TypeError):  # pragma: no cover - another fast_matrix_market
        (vals, (rows, cols)), _ = fmm.read_coo(io.BytesIO(body), parallelism=parallelism)
        return rows, cols, np.asarray(vals, dtype=np.float64)


def _fast_coords(
    chunk: bytes, header: Header, parallelism: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """0-based rows, cols, values of one chunk by fast_matrix_market and its number of
    lines, or None (use the line-by-line parser)."""
    ncols = 2 if header.field == "pattern" else 3
    counted = _entry_count(chunk, ncols)
    if counted is None:
        return None
    count, n_lines, integral = counted
    try:
        import fast_matrix_market  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency; the line parser still works
        return None
    m, n = header.shape
    # Integers are parsed as such only when every token is digits: the integer parser
    # would read 3.5 as 3 and 1e3 as 1.
    field = "pattern" if header.field == "pattern" else "integer" if integral else "real"
    head = f"%%MatrixMarket matrix coordinate {field} general\n{m} {n} {count}\n".encode()
    try:
        rows, cols, vals = _fmm_parse(b"".join((head, chunk)), count, (m, n), parallelism)
    except (ValueError, RuntimeError, OverflowError):
        return None  # out-of-range or malformed indices: the line parser names the line
    if vals.size:
        # NaN fails both comparisons. Plain digits cannot be negative, only too large.
        top = vals.max()
        if not (top < np.inf and (integral or vals.min() >= 0)):
            return None
    return rows, cols, vals, n_lines


def _chunk_coords(
    where: str, chunk: bytes, first: int, header: Header, parallelism: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Checked 0-based (rows, cols, values) of one chunk, its number of entries (before
    symmetric entries are mirrored) and of lines."""
    fast = _fast_coords(chunk, header, parallelism)
    if fast is None:
        return _line_coords(where, chunk, first, header)
    rows, cols, vals, n_lines = fast
    seen = len(vals)
    if header.symmetry == "symmetric":
        off = rows != cols
        rows, cols = np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]])
        vals = np.concatenate([vals, vals[off]])
    return rows, cols, vals, seen, n_lines


def _line_coords(
    where: str, chunk: bytes, first: int, header: Header
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """What ``_chunk_coords`` returns, read line by line (names the first bad line).

    Lines end at LF, as the header is read and as the fast parser reads: the CR of a CRLF
    is a trailing blank, and a lone CR a blank inside its line."""
    text = chunk.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r", " ")
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()  # the chunk ends with its last line's LF
    ncols = 2 if header.field == "pattern" else 3
    arr = _parse_lines(where, lines, first, ncols)
    r, c, v = _coords(where, arr, header, first)
    return r, c, v, len(arr), len(lines)


def _parse_lines(where: str, lines: list[str], first: int, ncols: int) -> np.ndarray:
    """Entries of text lines as float64 rows (line by line; names the first bad line)."""
    if not any(line.strip() and not line.lstrip().startswith("%") for line in lines):
        return np.empty((0, ncols))
    try:
        arr = np.loadtxt(lines, dtype=np.float64, ndmin=2, comments="%")
    except ValueError:
        arr = None
    if arr is None or (arr.size and arr.shape[1] != ncols):
        _raise_bad_line(where, lines, first, ncols)
    assert arr is not None
    return arr.reshape(-1, ncols)


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


class _Tally:
    """Entries and lines of a body read so far, held to the header's entry count: what the
    serial, the Dask and the array readers all check (``first`` is the line number of the
    next chunk's first line, for messages)."""

    def __init__(self, where: str, header: Header):
        self.where = where
        self.header = header
        self.seen = 0
        self.first = header.first_data_line

    def add(self, entries: int, lines: int = 0) -> None:
        """Count a chunk's entries and lines; raise as soon as there are too many."""
        self.first += lines
        self.seen += entries
        if self.seen > self.header.nnz:
            raise _count_error(self.where, self.header, self.seen)

    def finish(self) -> None:
        """At the end of the body: raise unless the count is exactly the header's."""
        if self.seen != self.header.nnz:
            raise _count_error(self.where, self.header, self.seen)


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
            text = fh.read()  # one read and one split: a third of the time of line by line
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read labels from {str(path)!r}: {exc}") from exc
    if "\r" in text:  # lines end at LF, CRLF or a lone CR, as text files are read
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    labels = [line.split("\t", 1)[0] for line in text.split("\n") if line.strip()]
    if len(labels) != length:
        raise InputError(f"{str(path)!r} has {len(labels)} labels, but the matrix needs {length}")
    return np.asarray(labels, dtype=str)


def side_labels(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Row (features/genes) and column (barcodes) labels from 10x side files, if present."""
    feats = _side_file(path, ("features.tsv", "genes.tsv"))
    codes = _side_file(path, ("barcodes.tsv",))
    rows = _read_labels(feats, shape[0]) if feats else None
    cols = _read_labels(codes, shape[1]) if codes else None
    if feats is not None:
        warn_duplicates(rows, "feature", str(feats))
    if codes is not None:
        warn_duplicates(cols, "sample", str(codes))
    return rows, cols


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


# -- readers -----------------------------------------------------------------------------------
def _chunk_bytes(budget: int) -> int:
    """Bytes of body text per chunk: a 64th of the budget, at most 16 MiB. Larger chunks
    parse no faster and cost more: buffers over 32 MiB are mapped fresh from the system
    on each allocation (glibc's largest heap block), page faults and all (about 20 % more
    CPU at 32 MiB than at 16 MiB, measured)."""
    return int(min(1 << 24, max(1 << 16, budget // 64)))


#: Bytes of body text parsed at once when the whole matrix is read into memory.
_READ_CHUNK = 1 << 24


def _coordinate_entries(
    path: Path, fh: IO[bytes], header: Header, chunk_bytes: int
) -> Generator[tuple[np.ndarray, np.ndarray, np.ndarray], None, None]:
    """Checked 0-based (rows, cols, values) of a coordinate body, chunk by chunk; raises
    ``InputError`` on a bad line or an entry count that disagrees with the header."""
    where = str(path)
    tally = _Tally(where, header)
    threads = parser_threads()
    chunks = _chunks(fh, chunk_bytes)
    # Closed here, in this thread, on every exit: the read-ahead thread must be done with
    # ``fh`` before anyone else touches or closes it. Left to the garbage collector, the
    # pool's shutdown could run at any moment (in a thread holding fh's lock: a deadlock).
    with contextlib.closing(chunks):
        while True:
            try:
                item = next(chunks, None)
            except Exception as exc:  # zlib / ISA-L / OS errors of a damaged stream
                raise InputError(
                    f"cannot read {where!r} after line {tally.first} "
                    f"(corrupt or truncated file?): {exc}"
                ) from exc
            if item is None:
                break
            # The parser holds the GIL throughout a call, so nothing else of this process
            # runs beside it: its own threads are the only way to parse on several cores
            # (on 2 quiet cores 0.13 s against 0.19 s for the 5·10⁶-entry benchmark
            # file, for about 25 % more CPU).
            rows, cols, vals, count, n_lines = _chunk_coords(
                where, item, tally.first, header, threads
            )
            tally.add(count, n_lines)
            yield rows, cols, vals
    tally.finish()


def _parse_piece(piece: Any, header: Header) -> tuple[Any, ...] | None:
    """Run on a Dask worker: the fast parse of one run of whole lines of the body, given
    as bytes or as ``(path, start, stop)`` (a byte range the worker reads itself); None
    when the run needs the line parser (the client parses it, naming the line)."""
    if isinstance(piece, tuple):
        name, start, stop = piece
        with open(name, "rb") as fh:
            fh.seek(start)
            piece = fh.read(stop - start)
    return _fast_coords(piece, header, 1)


def _body_ranges(path: Path, header: Header, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of whole lines covering the body of a plain (uncompressed) file, each
    about ``chunk_bytes`` long: any run of whole lines is a body of its own."""
    with open(path, "rb") as fh:
        for _ in range(header.first_data_line - 1):
            fh.readline()
        start = fh.tell()
        end = fh.seek(0, io.SEEK_END)
        cuts = [start]
        while end - cuts[-1] > chunk_bytes:
            pos = cuts[-1] + chunk_bytes
            fh.seek(pos)
            while True:  # the cut goes after the next newline
                window = fh.read(1 << 16)
                if not window:
                    pos = end
                    break
                nl = window.find(b"\n")
                if nl >= 0:
                    pos += nl + 1
                    break
                pos += len(window)
            if pos >= end:
                break
            cuts.append(pos)
        cuts.append(end)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _dask_entries(
    client: Any, path: Path, fh: IO[bytes], header: Header, ctx: StageContext, bar: Any
) -> Generator[tuple[np.ndarray, np.ndarray, np.ndarray], None, None]:
    """What ``_coordinate_entries`` yields, parsed by the workers of a Dask cluster.

    A plain file is cut into byte ranges of whole lines that the workers read themselves
    (they must see the file: a local cluster or a shared file system; a range a worker
    cannot open is read here); a gzip stream cannot be split, so it is decompressed here
    and its chunks sent to the workers. A few chunks per worker are in flight, results are
    taken in file order, so memory stays bounded by the window, not the file. Chunks the
    fast parser does not take are parsed here, which names the line of a problem exactly
    as the serial reader does; so does the entry count check."""
    from scalenmf.io.formats._files import is_gzip

    where = str(path)
    chunk_bytes = _chunk_bytes(ctx.budget)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # an old or unusual client: a small window still works
        n_workers = 1
    window = 2 * n_workers
    counted = bar is not None and not is_gzip(path)  # gzip: the reader counts bytes

    def pieces() -> Generator[tuple[Any, Any, int], None, None]:
        if is_gzip(path):
            # Closed here on every exit (see _coordinate_entries): the read-ahead thread
            # must be done with fh before anyone else touches it.
            with contextlib.closing(_chunks(fh, chunk_bytes)) as chunks:
                for chunk in chunks:
                    data = bytes(chunk)
                    yield client.scatter(data, direct=True, hash=False), data, 0
        else:
            name = str(path.resolve())
            for a, b in _body_ranges(path, header, chunk_bytes):
                yield (name, a, b), (name, a, b), b - a

    def local(spec: Any) -> bytes:
        if isinstance(spec, tuple):
            name, a, b = spec
            with open(name, "rb") as f:
                f.seek(a)
                return f.read(b - a)
        return bytes(spec)

    source = pieces()
    pending: list[tuple[Any, Any, int]] = []

    def submit() -> None:
        try:
            payload, spec, size = next(source)
        except StopIteration:
            return
        except Exception as exc:  # zlib / ISA-L / OS errors of a damaged stream
            raise InputError(f"cannot read {where!r} (corrupt or truncated file?): {exc}") from exc
        future = client.submit(_parse_piece, payload, header, pure=False)
        pending.append((future, spec, size))

    tally = _Tally(where, header)
    try:
        for _ in range(window):
            submit()
        while pending:
            future, spec, size = pending.pop(0)
            try:
                parsed = future.result()
            except OSError:
                parsed = None  # the worker cannot see the file: read that range here
            submit()
            if parsed is None:
                rows, cols, vals, count, n_lines = _chunk_coords(
                    where, local(spec), tally.first, header, 1
                )
            else:
                rows, cols, vals, n_lines = parsed
                count = len(vals)
            if counted and size:
                bar.update(size)
            tally.add(count, n_lines)
            yield rows, cols, vals
        tally.finish()
    finally:
        for future, _, _ in pending:
            future.cancel()
        source.close()


def read(path: Path) -> MatrixSource:
    """Read the whole file into memory (scipy CSC for coordinate, ndarray for array)."""
    where = str(path)
    with open_binary(path) as fh:
        header = _read_header(path, _TextLines(fh))
        m, n = header.shape
        if header.fmt == "array":
            text = io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline="")
            parts = [arr.ravel() for _, arr in _batches(path, text, header)]
            vals = np.concatenate(parts) if parts else np.empty(0)
            if vals.size != header.nnz:
                raise _count_error(where, header, vals.size)
            _check_values(where, vals, header.first_data_line)
            src: MatrixSource = DenseArraySource(vals.reshape(n, m).T)
        else:
            rows, cols, vals_list = [], [], []
            entries = contextlib.closing(_coordinate_entries(path, fh, header, _READ_CHUNK))
            with entries as triples:
                for r, c, v in triples:
                    rows.append(r)
                    cols.append(c)
                    vals_list.append(v)
            X = sp.coo_matrix(
                (_cat(vals_list, np.float64), (_cat(rows, np.int64), _cat(cols, np.int64))),
                shape=(m, n),
            ).tocsc()
            src = SparseArraySource(X)
    row_labels, col_labels = side_labels(path, header.shape)
    return src.set_labels(row_labels, col_labels)


def stage(path: Path, ctx: StageContext) -> MatrixSource:
    """A block-readable source for ``convert``, in bounded memory.

    A ``general`` coordinate file in X's orientation is first tried as a stream
    (``SortedStream``): when its entries come sorted by column (as 10x, ``mmwrite`` of a CSC
    matrix and R's ``writeMM`` write them) each column block is complete as soon as the
    parser has passed it, so the store is written while the file is read, in one pass and
    without staging. Otherwise (or when the stream finds entries out of column order and
    raises ``RestageNeeded``), coordinate files are read once in chunks of about a 64th of
    the budget (parsed by fast_matrix_market; about 8× that while parsed) and their entries
    scattered into per-column-block buckets (``BucketStage``, a scatter buffer of an eighth
    of the budget; kept in memory when the whole file fits in it). Array files are staged
    as rows of Xᵀ (``RowStage``). ``ctx.transpose`` reads a samples × features file.
    """
    where = str(path)
    bar = byte_progress(path, ctx.progress)
    owned = True  # this function closes the file and the bar (unless a stream took them)
    try:
        fh = open_binary(path, bar)
        try:
            header = _read_header(path, _TextLines(fh))
            row_labels, col_labels = side_labels(path, header.shape)
            if (
                ctx.stream
                and not ctx.transpose
                and header.fmt == "coordinate"
                and header.symmetry == "general"
            ):
                entries = None
                if ctx.client is not None:
                    entries = _dask_entries(ctx.client, path, fh, header, ctx, bar)
                stream = SortedStream(path, fh, header, ctx, bar, entries)
                owned = False
                return stream.set_labels(row_labels, col_labels)
            out = _stage_body(path, fh, header, ctx)
        finally:
            if owned:
                fh.close()
    finally:
        if owned:
            bar.close()
    if ctx.transpose:
        row_labels, col_labels = col_labels, row_labels
    log.debug("staged %s", where)
    return out.set_labels(row_labels, col_labels)


class SortedStream(MatrixSource):
    """The entries of a coordinate file sorted by column, as CSC column blocks parsed on demand.

    Made by ``stage`` for ``convert``: blocks must be read once each, in order (as the
    store writer does); reading block ``j`` parses the file until it passes the block's last
    column. Entries out of column order raise ``RestageNeeded`` (the caller then stages the
    file through buckets); every other problem raises ``InputError`` as the staged path
    does. Memory: one block plus one chunk of text and its parse.

    Parameters
    ----------
    path : Path
        The file (for messages).
    fh : binary stream
        Positioned after the size line; closed by ``close`` (or when the last block is read).
    header : Header
    ctx : StageContext
        Plans the block width and the chunk size from the budget.
    bar : tqdm-like, optional
        The byte-progress bar, closed with the stream.
    entries : iterator, optional
        Where the parsed (rows, cols, values) come from, in file order (default: this
        process parses ``fh``; ``_dask_entries`` has a cluster's workers parse it).
    """

    def __init__(
        self,
        path: Path,
        fh: IO[bytes],
        header: Header,
        ctx: StageContext,
        bar: Any,
        entries: Any = None,
    ):
        super().__init__()
        m, n = header.shape
        self.shape = (m, n)
        self.dtype = np.dtype(np.float64)
        self.is_sparse = True
        self._nnz = header.nnz
        density = header.nnz / max(1, m * n)
        self.block_bounds = bounds_from_cols(n, ctx.plan(m, n, density))
        chunk_bytes = _chunk_bytes(ctx.budget)
        self._fh: IO[bytes] | None = fh
        self._bar = bar
        if entries is None:
            entries = _coordinate_entries(path, fh, header, chunk_bytes)
        self._entries: Any = entries
        self._next = 0  # first column not yet returned
        self._last = 0  # largest column index parsed so far
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def nnz(self) -> int:
        # The header's count; duplicates (summed) make the store a little smaller.
        return self._nnz

    def _pull(self) -> bool:
        """Parse one more chunk into the pending entries; False at the end of the file."""
        assert self._entries is not None
        item = next(self._entries, None)
        if item is None:
            return False
        rows, cols, vals = item
        if cols.size:
            if int(cols[0]) < self._last or not bool(np.all(cols[1:] >= cols[:-1])):
                raise RestageNeeded("entries are not sorted by column")
            self._last = int(cols[-1])
            self._parts.append((rows, cols, vals))
        return True

    def _read(self, start: int, stop: int) -> sp.csc_matrix:
        if start != self._next or self._entries is None:
            raise RuntimeError("a SortedStream is read once, block by block in column order")
        m, width = self.shape[0], stop - start
        try:
            while not self._parts or int(self._parts[-1][1][-1]) < stop:
                if not self._pull():
                    break
            # Entries of this block: the leading parts up to the first column >= stop. The
            # parts are sorted by column (checked in ``_pull``), so concatenated they are
            # in CSC order, and each part's column starts are found by binary search
            # rather than by a pass over its entries.
            taken: list[tuple[np.ndarray, np.ndarray]] = []
            indptr = np.zeros(width + 1, dtype=np.int64)
            while self._parts:
                rows, cols, vals = self._parts[0]
                # Edges of the array's own type: Python ints would cast the array.
                edges = np.searchsorted(cols, np.arange(start, stop + 1, dtype=cols.dtype))
                cut = int(edges[-1])
                if cut:
                    taken.append((rows[:cut], vals[:cut]))
                    indptr += edges
                if cut < len(cols):
                    self._parts[0] = (rows[cut:], cols[cut:], vals[cut:])
                    break
                self._parts.pop(0)
            self._next = stop
            if stop >= self.shape[1]:
                # The parser has run to its end (all columns are < n), where it checked the
                # entry count against the header.
                self.close()
        except BaseException:
            self.close()
            raise
        if len(taken) == 1:
            rows, vals = taken[0][0], taken[0][1]
        elif taken:
            rows = np.concatenate([t[0] for t in taken])
            vals = np.concatenate([t[1] for t in taken])
        else:
            rows, vals = np.empty(0, dtype=np.int32), np.empty(0)
        block = sp.csc_matrix((vals, rows, indptr), shape=(m, width))
        if not block.has_canonical_format:
            block.sum_duplicates()  # rows out of order in a column, or repeated (summed)
        return block

    def close(self) -> None:
        """Stop reading: close the parser, the file and the progress bar (idempotent)."""
        entries, self._entries = self._entries, None
        if entries is not None:
            entries.close()
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()
        self._parts = []

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a SortedStream reads an open file once; it cannot be pickled")


def _stage_body(path: Path, fh: IO[bytes], header: Header, ctx: StageContext) -> MatrixSource:
    where = str(path)
    m, n = header.shape
    xm, xn = (n, m) if ctx.transpose else (m, n)
    if header.fmt == "array":
        text = io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline="")
        batch_lines = max(1024, ctx.budget // 8 // _LINE_COST)
        # Column-major values: each run of m values is a column of the stored matrix,
        # i.e. a column of X, or (transposed) a row of X.
        rows_per = stage_rows_budget(ctx.budget, m)
        if not ctx.transpose:
            rows_per = min(rows_per, ctx.plan(xm, xn, 1.0))
        # Transposed, staged rows are X's rows, read back by column blocks.
        col_chunk = ctx.plan(xm, xn, 1.0) if ctx.transpose else None
        staged = RowStage(ctx.workdir, m, rows_per, name="mtx", col_chunk=col_chunk)
        pending = np.empty(0)
        tally = _Tally(where, header)
        for first, arr in _batches(path, text, header, batch_lines):
            vals = arr.ravel()
            tally.add(vals.size)
            _check_values(where, vals, first)
            pending = np.concatenate([pending, vals])
            full = (pending.size // max(m, 1)) * m
            if full:
                staged.append(pending[:full].reshape(-1, m))
                pending = pending[full:]
        tally.finish()
        return staged.source(transposed=not ctx.transpose)
    density = header.nnz / max(1, m * n)
    # The scatter buffer holds an eighth of the budget (16 bytes an entry), a chunk of text
    # a 64th (read ahead, one more in flight; its parse and sort temporaries cost about 8×).
    buckets = BucketStage(
        ctx.workdir,
        (xm, xn),
        ctx.plan(xm, xn, density),
        buffer_entries=ctx.budget // 8 // 16,
    )
    chunk_bytes = _chunk_bytes(ctx.budget)
    with contextlib.closing(_coordinate_entries(path, fh, header, chunk_bytes)) as entries:
        for r, c, v in entries:
            if ctx.transpose:
                r, c = c, r
            buckets.add(r, c, v)
    return buckets.finish()


__all__ = ["Header", "SortedStream", "can_open", "read", "side_labels", "stage"]

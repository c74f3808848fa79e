"""Opening text inputs fast, with a byte-rate progress bar, and checking their labels.

- ``open_binary``: a file, gzip-compressed or not (judged by its magic bytes), as a binary
  stream. gzip goes through ISA-L (``isal.igzip``, several times zlib's speed) when it is
  installed, else through the standard library.
- ``ByteProgress``: a tqdm bar in bytes of the file on disk (compressed bytes for gzip),
  so it shows MB/s and reaches 100 % at the end of the file.
- ``warn_duplicates``: duplicate feature or sample labels are kept as given, with one
  warning that says so.
"""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np

from scalenmf.io.errors import InputError, user_stacklevel

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """True if the file starts with gzip's magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == GZIP_MAGIC
    except OSError as exc:
        raise InputError(f"cannot open {str(path)!r}: {exc}") from exc


class _Counted(io.RawIOBase):
    """A raw binary file that reports the bytes read from it to a progress bar."""

    def __init__(self, fh: IO[bytes], bar: Any):
        self._fh = fh
        self._bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._fh.readinto(b)  # type: ignore[attr-defined]
        if n:
            self._bar.update(n)
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


def _gzip_reader(fh: Any) -> Any:
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; stdlib gzip works too
        return gzip.GzipFile(fileobj=fh, mode="rb")
    return igzip.IGzipFile(fileobj=fh, mode="rb")


def open_binary(path: Path, bar: Any = None) -> IO[bytes]:
    """Open ``path`` for reading as (decompressed) bytes; ``bar`` counts on-disk bytes."""
    gz = is_gzip(path)
    try:
        raw: Any = open(path, "rb", buffering=0)
    except OSError as exc:
        raise InputError(f"cannot open {str(path)!r}: {exc}") from exc
    if bar is not None:
        raw = _Counted(raw, bar)
    buffered: Any = io.BufferedReader(raw, 1 << 18)
    return _gzip_reader(buffered) if gz else buffered


def byte_progress(path: Path, enabled: bool, what: str = "reading") -> Any:
    """A tqdm bar over the bytes of ``path`` (shows the read rate); disabled unless asked."""
    from tqdm.auto import tqdm

    total = path.stat().st_size if path.is_file() else None
    return tqdm(
        total=total,
        desc=f"{what} {path.name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
    )


def warn_duplicates(labels: Any, what: str, where: str) -> None:
    """Warn once if ``labels`` repeat; they are kept as given (file order, no renaming).

    Parameters
    ----------
    labels : sequence of str or None
    what : str
        "feature" or "sample" (for the message).
    where : str
        The file, for the message.
    """
    if labels is None:
        return
    values = labels.tolist() if isinstance(labels, np.ndarray) else list(labels)
    if len(set(values)) == len(values):
        return
    first: dict[str, int] = {}
    repeats = 0
    example = None
    for i, label in enumerate(values):
        if label in first:
            repeats += 1
            if example is None:
                example = (label, first[label], i)
        else:
            first[label] = i
    assert example is not None
    label, a, b = example
    warnings.warn(
        f"{where!r}: {repeats} duplicate {what} label(s) (first: {label!r}, {what}s {a + 1} "
        f"and {b + 1}); kept as given, in file order, so those {what}s cannot be told apart "
        "by label",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


__all__ = ["byte_progress", "is_gzip", "open_binary", "warn_duplicates"]

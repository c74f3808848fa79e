"""What the plots read: result stores, rank-survey directories and consensus directories.

A result store's H (k × n) is chunked by columns. For large n the plots never load it whole:
``ResultView.sample`` reads a few whole column chunks spread over the samples and keeps a
seeded random subset of their columns, so the cost is bounded by ``max_samples`` and the
chunk width, not by n.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from scalenmf.io.errors import InputError
from scalenmf.io.selection_store import SUMMARY_COLUMNS
from scalenmf.io.source import as_str_array
from scalenmf.results.nmf import NMFResult

#: Samples drawn by default for sample-level plots (coefficients, exposures, scatter).
DEFAULT_MAX_SAMPLES = 2000

#: Column chunks a sample is spread over at least (when the store has that many).
MIN_SAMPLE_CHUNKS = 8


@dataclass
class SampleSet:
    """Columns of H picked for display.

    Attributes
    ----------
    index : ndarray of int64, shape (s,)
        Sorted column indices into H.
    H : ndarray, shape (k, s)
        Those columns.
    labels : ndarray of str, shape (s,)
        Their sample names (the column index ``"<j>"`` when the store has none, as in the
        model-selection outputs, so clusters of unlabelled data match by position).
    n_total : int
        Samples in the whole result.
    chunks_read, n_chunks : int
        Column chunks of H read for this sample, and in the whole store.
    """

    index: np.ndarray
    H: np.ndarray
    labels: np.ndarray
    n_total: int
    chunks_read: int = 1
    n_chunks: int = 1

    @property
    def sampled(self) -> bool:
        """True when only part of the samples was read."""
        return int(self.index.shape[0]) < self.n_total

    def describe(self) -> str:
        """``"all 500 samples"`` or ``"2,000 of 1,000,000 samples (random sample)"``."""
        s = int(self.index.shape[0])
        if not self.sampled:
            return f"all {s:,} samples"
        return f"{s:,} of {self.n_total:,} samples (random sample)"


class ResultView:
    """A read-only view of a result: W and attributes in memory, H read by columns on demand.

    Parameters
    ----------
    source : NMFResult or path-like
        A fitted result, a result store, or a consensus directory (its ``result.zarr``).
    """

    def __init__(self, source: NMFResult | str | os.PathLike[str]):
        self.h_columns_read = 0
        self._samples: dict[tuple[int | None, int], SampleSet] = {}
        if isinstance(source, NMFResult):
            self._init_from_result(source)
        elif isinstance(source, (str, os.PathLike)):
            self._init_from_store(result_store_path(source))
        else:
            raise TypeError(
                f"expected an NMFResult or the path of a result store; got {type(source).__name__}"
            )

    def _init_from_result(self, res: NMFResult) -> None:
        self.path: str | None = None
        self.W = np.asarray(res.W, dtype=np.float64)
        self._H: Any = np.asarray(res.H)
        self.attrs: dict[str, Any] = {**res.attrs(), "info": res.info}
        self.row_labels = None if res.row_labels is None else as_str_array(res.row_labels)
        self._col_labels: Any = None if res.col_labels is None else as_str_array(res.col_labels)
        self.factor_labels = default_factor_labels(self.W.shape[1])
        self.chunk_cols = max(1, int(self._H.shape[1]))

    def _init_from_store(self, path: Path) -> None:
        from scalenmf.io.results import INTEGRITY, verify_result_store

        self.path = str(path)
        g = open_result_group(path)
        # H is read by sampled column chunks here: its chunks must all be present, but
        # its digest is verified only by readers that load it whole (scalenmf.load).
        verify_result_store(path, lazy=("H",))
        self.attrs = {k: v for k, v in g.attrs.items() if k not in ("scalenmf", INTEGRITY)}
        self.W = np.asarray(_array(g, "W", path)[...], dtype=np.float64)
        H = _array(g, "H", path)
        if H.ndim != 2 or self.W.ndim != 2 or H.shape[0] != self.W.shape[1]:
            raise InputError(
                f"result store {str(path)!r} has W of shape {self.W.shape} and H of shape "
                f"{H.shape}; expected (m, k) and (k, n)"
            )
        self._H = H
        self.chunk_cols = int(H.chunks[1])
        self.row_labels = _labels(g, "row_labels", read=True)
        self._col_labels = _labels(g, "col_labels", read=False)
        factors = _labels(g, "factor_labels", read=True)
        self.factor_labels = (
            factors if factors is not None else default_factor_labels(self.W.shape[1])
        )

    @property
    def k(self) -> int:
        return int(self.W.shape[1])

    @property
    def m(self) -> int:
        return int(self.W.shape[0])

    @property
    def n(self) -> int:
        return int(self._H.shape[1])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.attrs.get("params") or {})

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else "in-memory result"

    def feature_labels(self) -> np.ndarray:
        """Row labels, or ``feature_<i>`` when the result has none."""
        if self.row_labels is not None:
            return self.row_labels
        return np.array([f"feature_{i}" for i in range(self.m)])

    def read_columns(self, start: int, stop: int) -> np.ndarray:
        """Columns ``start:stop`` of H, shape (k, stop − start), as float64."""
        self.h_columns_read += stop - start
        return np.asarray(self._H[:, start:stop], dtype=np.float64)

    def labels_at(self, index: np.ndarray) -> np.ndarray:
        """Sample names of the columns ``index`` (sorted), reading only those labels."""
        if self._col_labels is None:
            return np.array([str(j) for j in index])
        if isinstance(self._col_labels, np.ndarray):
            return self._col_labels[index]
        return as_str_array(self._col_labels.oindex[index])

    def sample(self, max_samples: int | None = DEFAULT_MAX_SAMPLES, seed: int = 0) -> SampleSet:
        """Up to ``max_samples`` columns of H (all of them when n is small enough).

        Reads whole column chunks, evenly spread over the samples (at least
        ``MIN_SAMPLE_CHUNKS`` of them when there are that many), and keeps a seeded random
        subset of their columns. ``None`` reads every column. Samples are cached per
        ``(max_samples, seed)``, so the plots of one report share them.
        """
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer or None; got {max_samples}")
        key = (max_samples, seed)
        if key not in self._samples:
            larger = self._cached_superset(max_samples, seed)
            self._samples[key] = (
                subsample(larger, max_samples, seed)
                if larger is not None and max_samples is not None
                else self._draw(max_samples, seed)
            )
        return self._samples[key]

    def _cached_superset(self, max_samples: int | None, seed: int) -> SampleSet | None:
        """A cached sample (same seed) with more columns than asked for: no need to read."""
        if max_samples is None:
            return None
        for (_, cached_seed), cached in self._samples.items():
            if cached_seed == seed and cached.index.shape[0] > max_samples:
                return cached
        return None

    def _draw(self, max_samples: int | None, seed: int) -> SampleSet:
        n = self.n
        n_chunks = math.ceil(n / self.chunk_cols)
        if max_samples is None or n <= max_samples:
            index = np.arange(n, dtype=np.int64)
            H = self.read_columns(0, n)
            return SampleSet(index, H, self.labels_at(index), n, n_chunks, n_chunks)
        rng = np.random.default_rng(seed)
        if isinstance(self._H, np.ndarray):
            # Already in memory: pick columns anywhere, copy only those.
            index = np.sort(rng.choice(n, size=max_samples, replace=False)).astype(np.int64)
            self.h_columns_read += max_samples
            H = np.asarray(self._H[:, index], dtype=np.float64)
            return SampleSet(index, H, self.labels_at(index), n, 1, 1)
        chunks = pick_chunks(n, self.chunk_cols, max_samples)
        spans = [(c * self.chunk_cols, min(n, (c + 1) * self.chunk_cols)) for c in chunks]
        width = sum(b - a for a, b in spans)
        keep = np.sort(rng.choice(width, size=min(max_samples, width), replace=False))
        offsets = np.cumsum([0] + [b - a for a, b in spans])
        index_parts, h_parts = [], []
        for (a, b), lo, hi in zip(spans, offsets[:-1], offsets[1:], strict=True):
            local = keep[(keep >= lo) & (keep < hi)] - lo
            if local.size:
                # One chunk in memory at a time; only the kept columns survive.
                h_parts.append(self.read_columns(a, b)[:, local])
                index_parts.append(a + local)
        index = np.concatenate(index_parts).astype(np.int64)
        H = np.hstack(h_parts)
        return SampleSet(index, H, self.labels_at(index), n, len(h_parts), n_chunks)


def subsample(sample: SampleSet, size: int, seed: int) -> SampleSet:
    """A seeded random subset of ``size`` columns of an existing sample (nothing is read)."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(sample.index.shape[0], size=size, replace=False))
    return SampleSet(
        sample.index[keep],
        sample.H[:, keep],
        sample.labels[keep],
        sample.n_total,
        sample.chunks_read,
        sample.n_chunks,
    )


def pick_chunks(n: int, chunk: int, max_samples: int) -> np.ndarray:
    """Indices of the column chunks a sample of ``max_samples`` columns is drawn from.

    Enough chunks to hold twice the sample, at least ``MIN_SAMPLE_CHUNKS``, evenly spaced
    over the chunk sequence (so samples stored in batches are all represented).
    """
    n_chunks = math.ceil(n / chunk)
    want = max(MIN_SAMPLE_CHUNKS, math.ceil(2 * max_samples / chunk))
    if want >= n_chunks:
        return np.arange(n_chunks)
    return np.unique(np.linspace(0, n_chunks - 1, want).round().astype(np.int64))


def default_factor_labels(k: int) -> np.ndarray:
    return np.array([f"F{i + 1}" for i in range(k)])


def open_result(source: Any) -> ResultView:
    """A ``ResultView`` of an ``NMFResult``, a result store or a consensus directory."""
    if isinstance(source, ResultView):
        return source
    return ResultView(source)


def result_store_path(path: str | os.PathLike[str]) -> Path:
    """The result store a path names: itself, or ``result.zarr`` inside a consensus DIR."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such result store: {str(p)!r}")
    if (p / "consensus.zarr").exists():
        if not (p / "result.zarr").exists():
            raise InputError(f"consensus directory {str(p)!r} has no result.zarr to plot")
        return p / "result.zarr"
    if (p / "summary.csv").exists():
        raise InputError(
            f"{str(p)!r} is a rank survey directory, not a result store "
            "(plot it with --kind rank, or give one of its result stores)"
        )
    return p


def open_result_group(path: Path) -> zarr.Group:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise InputError(f"{str(path)!r} is not a readable Zarr store: {exc}") from exc
    meta = node.attrs.get("scalenmf")
    if (
        not isinstance(node, zarr.Group)
        or not isinstance(meta, dict)
        or meta.get("kind") != "result"
    ):
        raise InputError(f"{str(path)!r} is not a scalenmf result store")
    return node


def _array(group: zarr.Group, name: str, path: Path) -> zarr.Array:
    node = group.get(name)
    if not isinstance(node, zarr.Array):
        raise InputError(f"result store {str(path)!r} lacks the array {name!r}")
    return node


def _labels(group: zarr.Group, name: str, *, read: bool) -> Any:
    node = group.get(name)
    if not isinstance(node, zarr.Array):
        return None
    return as_str_array(node[:]) if read else node


def predict_clusters(W: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Cluster of each sample: the factor contributing most to its reconstruction.

    ``argmax_f  (Σ_i W_if) · H_fj``: H scaled by W's column sums, so the answer does not
    depend on how the scale is split between W and H. Samples with an all-zero column get
    −1 (no cluster).

    Parameters
    ----------
    W : ndarray, shape (m, k)
    H : ndarray, shape (k, s)

    Returns
    -------
    ndarray of int64, shape (s,)
    """
    scaled = H * W.sum(axis=0)[:, None]
    out = np.argmax(scaled, axis=0).astype(np.int64)
    out[~(scaled > 0).any(axis=0)] = -1
    return out


# --------------------------------------------------------------------------- rank survey

#: Columns of ``summary.csv`` the rank panel shows (others are kept but not drawn).
SURVEY_COLUMNS = SUMMARY_COLUMNS


@dataclass
class RankSurvey:
    """A rank survey directory: one row per k in ``summary``; the null on permuted data."""

    path: str
    summary: dict[str, np.ndarray]
    null: dict[str, np.ndarray] | None = None
    suggestion: dict[str, Any] | None = None
    runs: dict[str, np.ndarray] | None = None

    @property
    def ks(self) -> np.ndarray:
        return self.summary["k"].astype(np.int64)

    @property
    def suggested_k(self) -> int | None:
        if self.suggestion is None or self.suggestion.get("k") is None:
            return None
        return int(self.suggestion["k"])

    def column(self, name: str, *, null: bool = False) -> np.ndarray | None:
        """A numeric column, or None when absent or all NaN."""
        table = self.null if null else self.summary
        if table is None or name not in table:
            return None
        values = table[name]
        return None if np.all(np.isnan(values)) else values


def read_table(path: Path) -> dict[str, np.ndarray]:
    """A CSV file with a header row as columns of float64 (non-numbers become NaN)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc}") from exc
    if not rows or not rows[0]:
        raise InputError(f"{str(path)!r} is empty; expected a header row and one row per k")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise InputError(
            f"{str(path)!r}: row {bad[0]} has a different number of fields than the header"
        )
    return {
        name: np.array([_to_float(r[i]) for r in body], dtype=np.float64)
        for i, name in enumerate(header)
    }


def _to_float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return float("nan")


def load_rank_survey(path: str | os.PathLike[str]) -> RankSurvey:
    """Read a rank survey directory (``summary.csv``, ``null_summary.csv``, ``suggestion.json``,
    ``runs.csv``); only ``summary.csv`` is required."""
    if isinstance(path, RankSurvey):
        return path
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"no such rank survey directory: {str(p)!r}")
    summary_path = p / "summary.csv"
    if not summary_path.exists():
        raise InputError(f"{str(p)!r} is not a rank survey directory: it has no summary.csv")
    summary = read_table(summary_path)
    if "k" not in summary or summary["k"].size == 0 or np.isnan(summary["k"]).any():
        raise InputError(f"{str(summary_path)!r} needs a column 'k' with one row per rank")
    order = np.argsort(summary["k"], kind="stable")
    summary = {name: col[order] for name, col in summary.items()}
    null = read_table(p / "null_summary.csv") if (p / "null_summary.csv").exists() else None
    runs = read_table(p / "runs.csv") if (p / "runs.csv").exists() else None
    suggestion = None
    if (p / "suggestion.json").exists():
        try:
            suggestion = json.loads((p / "suggestion.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {str(p / 'suggestion.json')!r}: {exc}") from exc
        if not isinstance(suggestion, dict):
            raise InputError(f"{str(p / 'suggestion.json')!r} should hold a JSON object")
    return RankSurvey(str(p), summary, null, suggestion, runs)


# --------------------------------------------------------------------------- consensus


@dataclass
class Consensus:
    """A consensus directory: the (n_s × n_s) consensus matrix, its tree and the clusters.

    ``matrix`` is the Zarr array (read in parts by the heatmap); ``samples`` are in the
    matrix's (input) order; ``clusters`` maps sample name to cluster label.
    """

    path: str
    matrix: Any
    order: np.ndarray
    linkage: np.ndarray | None
    samples: np.ndarray
    attrs: dict[str, Any]
    clusters: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])

    def cluster_of_samples(self) -> np.ndarray:
        """Cluster label per row of the matrix (``""`` where clusters.csv has none)."""
        return np.array([self.clusters.get(str(s), "") for s in self.samples])


def load_clusters(path: Path) -> dict[str, str]:
    """``clusters.csv`` (columns ``sample, cluster``) as a dict sample → cluster label."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            if "sample" not in fields or "cluster" not in fields:
                raise InputError(
                    f"{str(path)!r} needs the columns 'sample' and 'cluster'; found {fields}"
                )
            return {
                str(row["sample"]).strip(): str(row["cluster"]).strip()
                for row in reader
                if row.get("sample") is not None
            }
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc}") from exc


def load_consensus(path: str | os.PathLike[str] | Consensus) -> Consensus:
    """Read a consensus directory (``consensus.zarr``, ``clusters.csv``), or ``consensus.zarr``."""
    if isinstance(path, Consensus):
        return path
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such consensus directory: {str(p)!r}")
    store = p / "consensus.zarr" if (p / "consensus.zarr").exists() else p
    if store is p and p.is_dir() and p.suffix != ".zarr":
        raise InputError(f"{str(p)!r} is not a consensus directory: it has no consensus.zarr")
    try:
        g = zarr.open_group(str(store), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise InputError(f"{str(store)!r} is not a readable Zarr group: {exc}") from exc
    meta = g.attrs.get("scalenmf")
    if isinstance(meta, dict) and meta.get("kind") == "result":
        raise InputError(
            f"{str(store)!r} is a result store, not a consensus directory (one with "
            "consensus.zarr, written by scalenmf consensus)"
        )
    matrix = g.get("consensus")
    if not isinstance(matrix, zarr.Array) or matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"{str(store)!r} lacks a square array 'consensus'")
    n = int(matrix.shape[0])
    samples = _labels(g, "samples", read=True)
    if samples is None:
        samples = np.array([str(j) for j in range(n)])
    linkage = _optional(g, "linkage", np.float64)
    if linkage is not None and linkage.shape != (n - 1, 4):
        raise InputError(
            f"{str(store)!r}: linkage has shape {linkage.shape}; expected ({n - 1}, 4)"
        )
    order = _optional(g, "order", np.int64)
    if order is None or sorted(order.tolist()) != list(range(n)):
        order = np.arange(n)
    if samples.shape[0] != n:
        raise InputError(f"{str(store)!r}: {samples.shape[0]} sample names for {n} rows")
    directory = store.parent if store.name == "consensus.zarr" else store
    csv_path = directory / "clusters.csv"
    clusters = load_clusters(csv_path) if csv_path.exists() else {}
    attrs = dict(g.attrs)
    return Consensus(str(directory), matrix, order, linkage, samples, attrs, clusters)


def _optional(group: zarr.Group, name: str, dtype: Any) -> np.ndarray | None:
    node = group.get(name)
    if not isinstance(node, zarr.Array):
        return None
    return np.asarray(node[...], dtype=dtype)


def find_companions(result: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """The rank survey and consensus directories that obviously belong to a result path.

    The rule: a consensus directory is the RESULT path itself or its parent when it holds
    ``consensus.zarr``; a rank survey directory is the RESULT path itself or its parent
    when it holds ``summary.csv``.
    """
    p = Path(result)
    rank = consensus = None
    for d in (p, p.parent):
        if d.is_dir() and consensus is None and (d / "consensus.zarr").exists():
            consensus = str(d)
        if d.is_dir() and rank is None and (d / "summary.csv").exists():
            rank = str(d)
    return rank, consensus

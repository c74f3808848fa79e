"""``scalenmf.plot``: every plot renders a real fit, with the content it claims, and reads only
a sample of H's column chunks for large n."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.image import imread

import scalenmf
import scalenmf.plot as sp
from scalenmf.plot._data import MIN_SAMPLE_CHUNKS, pick_chunks
from scalenmf.plot.sbs import SUBSTITUTION_COLORS, SUBSTITUTIONS, sbs96_channels
from tests.plot_fixtures import (
    PLANTED,
    consensus_dir,
    fit_catalogue,
    h_chunks,
    rank_dir,
    record_store_reads,
    write_csv,
    write_large_store,
)


@pytest.fixture(scope="module")
def fitted() -> scalenmf.NMFResult:
    return fit_catalogue(60, n_runs=3)


@pytest.fixture(scope="module")
def store(fitted: scalenmf.NMFResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(fitted.save(tmp_path_factory.mktemp("res") / "result.zarr"))


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rank_dir(tmp_path_factory.mktemp("rank") / "survey")


@pytest.fixture(scope="module")
def consensus(fitted: scalenmf.NMFResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return consensus_dir(tmp_path_factory.mktemp("cons") / "consensus", fitted)


def pixels(fig: Figure) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    buf.seek(0)
    return imread(buf)


def assert_not_blank(fig: Figure) -> None:
    img = pixels(fig)[..., :3]
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0.05, "the image is (nearly) blank"
    assert (img < 0.9).mean() > 0.01, "almost nothing is drawn"


def sources(kind: str, store: Path, survey: Path, consensus: Path, fitted: scalenmf.NMFResult):
    return {"rank": [survey], "consensus": [consensus / "consensus.zarr"]}.get(kind, [store])


@pytest.mark.parametrize("kind", list(sp.KINDS))
def test_every_kind_renders_a_non_blank_png(
    kind: str, store: Path, survey: Path, consensus: Path, fitted: scalenmf.NMFResult
) -> None:
    for src in sources(kind, store, survey, consensus, fitted):
        fig = sp.plot(src, kind)
        assert isinstance(fig, Figure)
        assert_not_blank(fig)
        titles = [ax.get_title(loc="left") for ax in fig.axes] + [fig.get_suptitle()]
        assert any(titles), "every plot says what it shows"


def _sbs_bars(ax) -> tuple[np.ndarray, list[tuple[float, ...]]]:
    """Heights and face colours of a signature panel's 96 bars (one collection)."""
    (bars,) = [c for c in ax.collections if c.get_gid() == "sbs96-bars"]
    paths = bars.get_paths()
    heights = np.array([p.vertices[:, 1].max() for p in paths])
    centres = np.array([(p.vertices[:, 0].min() + p.vertices[:, 0].max()) / 2 for p in paths])
    np.testing.assert_allclose(centres, np.arange(len(paths)))  # in channel order
    colours = [tuple(np.round(c, 3)) for c in bars.get_facecolor()]
    return heights, colours


def test_signature_plot_has_96_bars_in_six_class_colours(store: Path) -> None:
    fig = sp.signature_plot(store)
    panels = [ax for ax in fig.axes if any(c.get_gid() == "sbs96-bars" for c in ax.collections)]
    assert len(panels) == 3
    channels = sbs96_channels()
    for ax in panels:
        heights, colours = _sbs_bars(ax)
        assert len(heights) == 96 and len(colours) == 96
        by_class: dict[str, set] = {}
        for channel, colour in zip(channels, colours, strict=True):
            by_class.setdefault(channel[2:5], set()).add(colour)
        assert list(by_class) == list(SUBSTITUTIONS)
        assert all(len(c) == 1 for c in by_class.values()), "one colour per substitution class"
        assert len(set.union(*by_class.values())) == 6
        assert heights.min() >= 0 and heights.sum() == pytest.approx(100.0)
        assert ax.get_ylabel() == "% of mutations"
    from matplotlib.colors import to_rgba

    expected = {tuple(np.round(to_rgba(SUBSTITUTION_COLORS[s]), 3)) for s in SUBSTITUTIONS}
    assert set.union(*by_class.values()) == expected
    ticks = [t.get_text() for t in panels[-1].get_xticklabels()]
    assert len(ticks) == 96 and ticks[:3] == ["ACA", "ACC", "ACG"] and ticks[-1] == "TTT"
    titles = " ".join(ax.get_title(loc="left") for ax in panels)
    assert "cosine" in titles and "COSMIC" in titles
    # The planted signatures are recovered, named in the titles with a high cosine.
    for name in PLANTED:
        assert f"match: {name} (cosine 0.9" in titles or f"match: {name} (cosine 1.0" in titles


def test_signature_plot_aligns_rows_by_label(fitted: scalenmf.NMFResult) -> None:
    perm = np.random.default_rng(0).permutation(96)
    shuffled = scalenmf.NMFResult(
        W=fitted.W[perm],
        H=fitted.H,
        loss_history=fitted.loss_history,
        relative_error=fitted.relative_error,
        n_iter=fitted.n_iter,
        converged=fitted.converged,
        params=fitted.params,
        row_labels=fitted.row_labels[perm],
        col_labels=fitted.col_labels,
    )
    a, _ = _sbs_bars(sp.signature_plot(fitted).axes[0])
    b, _ = _sbs_bars(sp.signature_plot(shuffled).axes[0])
    np.testing.assert_allclose(a, b)


def test_signature_plot_refuses_non_sbs_features() -> None:
    X = np.random.default_rng(0).poisson(3.0, (30, 40)).astype(float)
    res = scalenmf.nmf(X, 2, max_iter=10, tol=0, progress=False)
    with pytest.raises(scalenmf.InputError, match="96 SBS channels"):
        sp.signature_plot(res)


def test_basis_heatmap_shows_top_features_per_factor() -> None:
    rng = np.random.default_rng(1)
    m, k = 400, 4
    W = rng.gamma(0.3, 1.0, (m, k))
    X = rng.poisson(W @ rng.gamma(1.0, 2.0, (k, 50))).astype(float)
    genes = np.array([f"gene{i}" for i in range(m)])
    res = scalenmf.nmf(
        scalenmf.open_matrix(X).set_labels(genes, None), k, max_iter=30, tol=0, progress=False
    )
    fig = sp.basis_heatmap(res, n_top=5)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "factor"
    assert ax.get_ylabel() == "feature (top 5 features per factor)"
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert 5 <= len(shown) <= 5 * k
    share = res.W / res.W.sum(axis=0)
    for f in range(k):
        assert {genes[i] for i in np.argsort(-share[:, f])[:5]} <= set(shown)
    values = ax.images[0].get_array()
    assert values.shape == (len(shown), k)
    assert values.max() == pytest.approx(1.0) and values.min() >= 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["F1", "F2", "F3", "F4"]


def test_coef_heatmap_orders_samples_by_cluster(store: Path, consensus: Path) -> None:
    for clusters in (None, consensus):
        fig = sp.coef_heatmap(store, clusters=clusters)
        strip, ax = fig.axes[0], fig.axes[1]
        assert ax.get_ylabel() == "factor"
        assert "ordered by cluster" in ax.get_xlabel()
        codes = strip.images[0].get_array()[0]
        changes = np.count_nonzero(np.diff(codes))
        assert changes == len(np.unique(codes)) - 1, "every cluster is one contiguous block"
        values = ax.images[0].get_array()
        assert values.shape == (3, 60)
        np.testing.assert_allclose(values.sum(axis=0), 1.0, rtol=1e-9)


def test_consensus_heatmap_has_dendrogram_and_clusters(consensus: Path) -> None:
    fig = sp.consensus_heatmap(consensus)
    tree = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    assert len(tree) == 1 and len(tree[0].get_segments()) == 3 * 59
    heat = fig.axes[2]
    values = heat.images[0].get_array()
    c = sp.load_consensus(consensus)
    from scipy.cluster.hierarchy import leaves_list

    leaves = leaves_list(c.linkage)
    np.testing.assert_allclose(values, np.asarray(c.matrix[...])[np.ix_(leaves, leaves)])
    legend = fig.legends[0]
    assert sorted(t.get_text() for t in legend.get_texts()) == ["1", "2", "3"]
    assert "cophenetic 0.987" in fig.axes[0].get_title(loc="left")


def test_consensus_heatmap_thins_large_matrices(consensus: Path) -> None:
    fig = sp.consensus_heatmap(consensus, max_display=20)
    values = fig.axes[2].images[0].get_array()
    assert values.shape == (20, 20)
    assert "every 3th shown" in fig.axes[2].get_xlabel()


def test_rank_panel_overlays_null_and_marks_suggestion(survey: Path, tmp_path: Path) -> None:
    fig = sp.rank_survey_panel(survey)
    axes = [ax for ax in fig.axes if ax.get_xlabel() == "rank k"]
    assert len(axes) == 6
    titles = [ax.get_title(loc="left") for ax in axes]
    assert titles == [
        "Reconstruction error",
        "Cophenetic correlation",
        "Dispersion",
        "Consensus silhouette",
        "Factor stability",
        "Cross-validation error",
    ]
    for ax in axes:
        styles = Counter(line.get_linestyle() for line in ax.get_lines())
        assert styles["--"] >= 1, "the null is overlaid"
        assert any(list(line.get_xdata()) == [3, 3] for line in ax.get_lines()), "suggested k"
    assert "suggested k = 3" in fig.get_suptitle()
    runs = axes[0].collections[-1].get_offsets()
    assert runs.shape == (15, 2), "every run of every k is drawn"
    best = sp.load_rank_survey(survey).summary["error_best"]
    per_k = [runs[np.round(runs[:, 0]) == k, 1].min() for k in (2, 3, 4, 5, 6)]
    np.testing.assert_allclose(per_k, best, rtol=1e-9)
    # Missing and all-NaN measures are said to be missing, not drawn.
    partial = tmp_path / "partial"
    partial.mkdir()
    write_csv(
        partial / "summary.csv",
        ["k", "error_best", "cophenetic", "cv_error"],
        [[2, 0.3, 0.9, "nan"], [3, 0.2, 0.95, "nan"]],
    )
    fig = sp.rank_survey_panel(partial)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("not computed") == 4


def test_convergence_draws_every_run(store: Path, fitted: scalenmf.NMFResult) -> None:
    fig = sp.convergence_plot(store)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 3
    best = fitted.info["best_run"]
    kept = [ln for ln in lines if "(kept)" in ln.get_label()]
    assert len(kept) == 1 and kept[0].get_label() == f"run {best} (kept)"
    np.testing.assert_allclose(kept[0].get_ydata(), fitted.loss_history)
    assert ax.get_xlabel() == "iteration" and ax.get_ylabel().startswith("objective")
    assert ax.get_yscale() == "log"


def test_convergence_of_a_result_without_per_run_histories(fitted: scalenmf.NMFResult) -> None:
    old = scalenmf.NMFResult(
        **{
            **fitted.__dict__,
            "runs": [{k: v for k, v in r.items() if k != "loss_history"} for r in fitted.runs],
        }
    )
    fig = sp.convergence_plot(old)
    assert len(fig.axes[0].get_lines()) == 1
    assert any("only the kept run" in t.get_text() for t in fig.axes[0].texts)


def test_exposures_stack_to_the_attributed_totals(fitted: scalenmf.NMFResult) -> None:
    fig = sp.exposures_plot(fitted)
    ax = fig.axes[0]
    assert len(ax.containers) == 3 and all(len(c) == 60 for c in ax.containers)
    total = sum(b.get_height() for c in ax.containers for b in c)
    assert total == pytest.approx(float((fitted.H * fitted.W.sum(axis=0)[:, None]).sum()))
    assert ax.get_ylabel() == "mutations attributed"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(lab.split(" · ")[1] for lab in labels) == sorted(PLANTED)
    rel = sp.exposures_plot(fitted, relative=True).axes[0]
    tops = np.sum([[b.get_height() for b in c] for c in rel.containers], axis=0)
    np.testing.assert_allclose(tops, 1.0)


def test_scatter_simplex_and_two_factor_axes(fitted: scalenmf.NMFResult) -> None:
    fig = sp.sample_scatter(fitted)
    ax = fig.axes[0]
    points = np.vstack([c.get_offsets() for c in ax.collections])
    assert points.shape == (60, 2)
    assert np.all(np.hypot(points[:, 0], points[:, 1]) <= 1 + 1e-9), "inside the factor polygon"
    pred = sp.predict_clusters(fitted.W, fitted.H)
    assert len(ax.collections) == len(np.unique(pred))
    fig = sp.sample_scatter(fitted, dims=(0, 2))
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("F1") and ax.get_ylabel().startswith("F3")
    assert "exposure (mutations)" in ax.get_xlabel()
    with pytest.raises(ValueError, match="two distinct factor indices"):
        sp.sample_scatter(fitted, dims=(1, 1))


def test_predict_clusters_is_scale_free() -> None:
    W = np.array([[1.0, 0.0], [0.0, 10.0]])
    H = np.array([[5.0, 0.1, 0.0], [1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(sp.predict_clusters(W, H), [1, 1, -1])
    np.testing.assert_array_equal(
        sp.predict_clusters(W * [2.0, 0.5], H / [[2.0], [0.5]]), [1, 1, -1]
    )


# --------------------------------------------------------------------------- large n


@pytest.fixture(scope="module")
def large_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_large_store(tmp_path_factory.mktemp("large") / "large.zarr")


@pytest.fixture()
def chunk_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return record_store_reads(monkeypatch)


@pytest.mark.parametrize(
    "kind", ["coef", "exposures", "scatter", "basis", "signatures", "convergence"]
)
def test_plots_never_load_the_whole_of_H(
    kind: str, large_store: Path, chunk_reads: list[str]
) -> None:
    view = sp.open_result(large_store)
    fig = sp.plot(view, kind)
    read = h_chunks(chunk_reads)
    assert len(read) <= MIN_SAMPLE_CHUNKS, f"{len(read)} of 100 H chunks read"
    assert view.h_columns_read <= MIN_SAMPLE_CHUNKS * 2000
    if kind in ("coef", "exposures", "scatter"):
        assert len(read) == MIN_SAMPLE_CHUNKS
        text = " ".join(
            [ax.get_xlabel() for ax in fig.axes] + [ax.get_title(loc="left") for ax in fig.axes]
        )
        assert "of 200,000 samples" in text
    else:
        assert not read, "W-only plots read no H at all"


def test_exposures_of_many_samples_are_touching_steps(large_store: Path) -> None:
    from matplotlib.patches import StepPatch

    view = sp.open_result(large_store)
    fig = sp.exposures_plot(view)
    steps = [p for p in fig.axes[0].patches if isinstance(p, StepPatch)]
    assert len(steps) == 4 and not fig.axes[0].containers
    sample = view.sample(300)
    stacked = sum(np.sum(p.get_data().values - p.get_data().baseline) for p in steps)
    assert stacked == pytest.approx(float((sample.H * view.W.sum(axis=0)[:, None]).sum()))
    assert fig.axes[0].get_xlabel().startswith("300 of 200,000 samples (random sample)")


def test_sample_spreads_over_the_store(large_store: Path) -> None:
    view = sp.open_result(large_store)
    s = view.sample(1000, seed=3)
    assert s.sampled and s.index.shape == (1000,) and s.n_total == 200_000
    assert np.all(np.diff(s.index) > 0)
    assert s.index.min() < 2000 and s.index.max() >= 198_000, "first and last chunk"
    assert s.labels[0] == f"c{s.index[0]}"
    import zarr

    H = zarr.open_array(str(large_store), path="H", mode="r")
    np.testing.assert_array_equal(s.H, H.oindex[:, s.index])
    assert view.sample(1000, seed=3) is s, "cached"
    read = view.h_columns_read
    small = view.sample(100, seed=3)
    assert view.h_columns_read == read, "a smaller sample is drawn from the cached one"
    assert small.index.shape == (100,) and set(small.index) <= set(s.index)
    np.testing.assert_array_equal(small.H, H.oindex[:, small.index])
    loaded = sp.open_result(scalenmf.load(large_store))  # H already in memory
    m = loaded.sample(500)
    assert m.index.shape == (500,) and loaded.h_columns_read == 500, "only those columns copied"
    np.testing.assert_array_equal(m.H, H.oindex[:, m.index])
    np.testing.assert_array_equal(pick_chunks(10_000, 100, 50), np.linspace(0, 99, 8).round())
    assert pick_chunks(1000, 100, 500).tolist() == list(range(10))


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(
    tmp_path: Path, store: Path, survey: Path, consensus: Path
) -> None:
    import shutil

    lone = tmp_path / "lone"
    shutil.copytree(consensus / "consensus.zarr", lone / "consensus.zarr")
    with pytest.raises(scalenmf.InputError, match=r"has no result\.zarr"):
        sp.basis_heatmap(lone)
    assert sp.consensus_heatmap(lone).axes, "the consensus itself still plots"
    with pytest.raises(ValueError, match="unknown plot kind 'heat'"):
        sp.plot(store, "heat")
    with pytest.raises(ValueError, match=r"image format.*\.png, \.pdf, \.svg"):
        sp.plot(store, "basis", tmp_path / "x.jpg")
    with pytest.raises(scalenmf.InputError, match="no such result store"):
        sp.basis_heatmap(tmp_path / "missing.zarr")
    with pytest.raises(scalenmf.InputError, match=r"has no summary\.csv"):
        sp.rank_survey_panel(tmp_path)
    with pytest.raises(scalenmf.InputError, match="rank survey directory, not a result store"):
        sp.basis_heatmap(survey)
    with pytest.raises(scalenmf.InputError, match=r"no consensus\.zarr"):
        sp.consensus_heatmap(tmp_path)
    with pytest.raises(scalenmf.InputError, match="not a scalenmf result store"):
        X = tmp_path / "x.zarr"
        scalenmf.write_matrix(X, np.ones((3, 4)))
        sp.coef_heatmap(X)
    with pytest.raises(TypeError, match="expected an NMFResult"):
        sp.coef_heatmap(np.ones((3, 3)))
    with pytest.raises(ValueError, match="max_samples"):
        sp.coef_heatmap(store, max_samples=0)
    with pytest.raises(ValueError, match="one label per sample"):
        sp.coef_heatmap(store, clusters=[1, 2, 3])
    bad = tmp_path / "badsurvey"
    bad.mkdir()
    (bad / "summary.csv").write_text("error_best\n0.1\n")
    with pytest.raises(scalenmf.InputError, match="column 'k'"):
        sp.rank_survey_panel(bad)
    assert not (tmp_path / "x.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["badsurvey", "lone", "x.zarr"]


def test_save_figure_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")):
        out = sp.save_figure(fig, tmp_path / f"c.{ext}")
        assert Path(out).read_bytes().startswith(magic)
    target = tmp_path / "c.png"
    before = target.read_bytes()

    def broken(path: str, **kwargs: object) -> None:
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError):
        sp.save_figure(fig, target)
    assert target.read_bytes() == before
    with pytest.raises(RuntimeError):
        sp.save_figure(fig, tmp_path / "new.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pdf", "c.png", "c.svg"]


def test_plots_and_report_read_results_only() -> None:
    """Layering: plot/ and reporting/ import no engine, model, API or CLI module."""
    import ast

    root = Path(sp.__file__).parent.parent
    banned = (
        "scalenmf.engine",
        "scalenmf.models",
        "scalenmf.api",
        "scalenmf.cli",
        "scalenmf.estimators",
        "scalenmf.kernels",
        "dask",
        "distributed",
        "torch",
    )
    for path in [*(root / "plot").glob("*.py"), *(root / "reporting").glob("*.py")]:
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        bad = [m for m in names if m.startswith(banned)]
        assert bad == [], f"{path.name} imports {bad}"


def test_log_axis_labels_are_plain_text_powers() -> None:
    from scalenmf.plot.survey import PowerFormatter

    f = PowerFormatter(labelOnlyBase=False)
    assert f._num_to_string(1e6, 1e4, 1e7) == "10⁶"
    assert f._num_to_string(3e4, 1e4, 1e7) == "3×10⁴"
    assert f._num_to_string(2.5e-3, 1e-4, 1e-2) == "2.5×10⁻³"
    assert f._num_to_string(1.0, 0.1, 10) == "10⁰"


def test_convergence_plot_draws_without_mathtext(fitted: scalenmf.NMFResult) -> None:
    fig = sp.convergence_plot(fitted, log=True)
    fig.savefig(io.BytesIO(), format="png")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels(minor=False) if t.get_text()]
    assert labels and all("$" not in s and "10" in s for s in labels)

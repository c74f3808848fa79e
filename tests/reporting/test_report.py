"""The HTML report: every section, self-contained, small for large n, and clean in Chromium."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import scalenmf
from scalenmf import reporting
from scalenmf.plot._data import MIN_SAMPLE_CHUNKS, find_companions
from scalenmf.reporting import SECTION_IDS, build_report, report
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

#: Chromium's flags for a quiet, offline, throw-away headless session.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


class Outline(HTMLParser):
    """Section ids, images, tables and every external reference of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(str(a.get("id")))
        if tag == "img":
            self.images.append(str(a.get("src")))
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self.tables += 1
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(str(a[key]))


def outline(text: str) -> Outline:
    parser = Outline()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def fitted() -> scalenmf.NMFResult:
    return fit_catalogue(60, n_runs=2)


@pytest.fixture(scope="module")
def bundle(fitted: scalenmf.NMFResult, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A result, a rank survey and a consensus directory, and the full report of them."""
    root = tmp_path_factory.mktemp("bundle")
    store = Path(fitted.save(root / "result.zarr"))
    survey = rank_dir(root / "survey")
    consensus = consensus_dir(root / "consensus", fitted)
    out = root / "report.html"
    report(store, out, rank=survey, consensus=consensus)
    return {"store": store, "survey": survey, "consensus": consensus, "report": out}


def test_report_has_every_section_and_nothing_external(bundle: dict) -> None:
    text = bundle["report"].read_text()
    page = outline(text)
    assert page.sections == list(SECTION_IDS)
    assert page.scripts == 0
    external = [u for u in page.links if not u.startswith(("data:", "#"))]
    assert external == [], "the report must be self-contained"
    assert len(page.images) >= 8 and all(
        i.startswith("data:image/png;base64,") for i in page.images
    )
    # Run parameters, the runs, the matches and the rank table carry the real values.
    res = scalenmf.load(bundle["store"])
    assert f"{res.relative_error:.4g}" in text
    assert ">multiplicative updates<" in text and ">Kullback–Leibler (Poisson counts)<" in text
    assert ">NNDSVDa (from an SVD; zeros filled with the mean)<" in text
    for name in PLANTED:
        assert f"<td>{name}</td>" in text
    assert "Suggested k = 3" in text and "cophenetic correlation drops after k=3" in text
    assert text.count('<tr class="kept">') == 2, "kept run and suggested k are highlighted"
    assert "clusters.csv" in text or "consensus clusters" in text
    assert sorted(p.name for p in bundle["report"].parent.iterdir()) == [
        "consensus",
        "report.html",
        "result.zarr",
        "survey",
    ], "no temporary file left behind"


def test_report_discovers_the_directories_around_a_result(
    bundle: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    consensus = bundle["consensus"]
    assert find_companions(consensus / "result.zarr") == (None, str(consensus))
    assert find_companions(consensus) == (None, str(consensus))
    assert find_companions(bundle["store"]) == (None, None)
    survey = tmp_path / "survey"
    shutil.copytree(bundle["survey"], survey)
    shutil.copytree(bundle["store"], survey / "k3.zarr")
    assert find_companions(survey / "k3.zarr") == (str(survey), None)
    seen: list[tuple] = []

    def fake(result: object, **kw: object) -> str:
        seen.append((kw["rank"], kw["consensus"]))
        return "<html></html>"

    monkeypatch.setattr(reporting, "build_report", fake)
    report(consensus, tmp_path / "a.html")
    report(survey / "k3.zarr", tmp_path / "b.html")
    report(survey / "k3.zarr", tmp_path / "c.html", consensus=consensus)
    report(consensus / "result.zarr", tmp_path / "d.html", discover=False)
    assert seen == [
        (None, str(consensus)),
        (str(survey), None),
        (str(survey), consensus),
        (None, None),
    ]


def test_report_of_a_large_result_samples_columns_and_stays_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = write_large_store(tmp_path / "large.zarr")
    reads = record_store_reads(monkeypatch)
    out = report(store, tmp_path / "large.html")
    assert len(h_chunks(reads)) <= MIN_SAMPLE_CHUNKS, "H is never loaded whole"
    text = Path(out).read_text()
    assert outline(text).sections == [
        s for s in SECTION_IDS if s not in ("consensus", "rank-survey")
    ]
    assert 'id="sampling-notice"' in text
    assert "2,000 of 200,000 samples (random sample)" in text
    assert f"read from {MIN_SAMPLE_CHUNKS} of 100 column chunks" in text
    assert Path(out).stat().st_size < 1_500_000


def test_report_matches_a_user_reference_for_other_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    genes = [f"g{i}" for i in range(40)]
    basis = rng.gamma(0.4, 1.0, (40, 2))
    X = rng.poisson(basis @ rng.gamma(1.0, 5.0, (2, 50))).astype(float)
    res = scalenmf.nmf(
        scalenmf.open_matrix(X).set_labels(genes, None), 2, max_iter=60, tol=0, progress=False
    )
    text = build_report(res)
    assert "not the 96 SBS channels" in text
    assert "turned off" in reporting._matches(reporting.open_result(res), None, "").render()
    ref = tmp_path / "programs.tsv"
    rows = [[g, *basis[i]] for i, g in enumerate(genes)][::-1]  # aligned by label, not order
    ref.write_text(
        "gene\tprogramA\tprogramB\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)
    )
    text = build_report(res, reference=str(ref))
    assert "<td>programA</td>" in text and "<td>programB</td>" in text
    assert text.count('class="good"') >= 2, "both programs are recovered with cosine ≥ 0.9"
    bad = tmp_path / "bad.csv"
    write_csv(bad, ["channel", "sig"], [["x", 1.0], ["y", 2.0]])
    with pytest.raises(ValueError, match="not among the result's feature labels"):
        build_report(res, reference=str(bad))


def test_report_refuses_bad_output_names(fitted: scalenmf.NMFResult, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ending in \.html"):
        report(fitted, tmp_path / "report.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report(fitted, tmp_path / "missing" / "report.html")
    assert list(tmp_path.iterdir()) == []


def chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "chromium and chromedriver are needed to check the report in a browser: "
            "run scripts/ensure_chromium.sh (bash run.sh test does) or install the Debian "
            "packages chromium and chromium-driver"
        )
    return browser, driver


@pytest.mark.timeout(180)
def test_report_opens_in_headless_chromium_without_errors(bundle: dict, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(bundle["report"].resolve().as_uri())
        assert driver.title.startswith("scalenmf report")
        sections = driver.find_elements(By.CSS_SELECTOR, "main > section")
        assert [s.get_attribute("id") for s in sections] == list(SECTION_IDS)
        for section in sections:
            driver.execute_script("arguments[0].scrollIntoView();", section)
            assert section.is_displayed()
            heading = section.find_element(By.TAG_NAME, "h2")
            assert heading.is_displayed() and heading.text
            assert section.size["height"] > 60
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);"
        )
        assert len(images) >= 8
        broken = [alt for complete, width, alt in images if not (complete and width > 100)]
        assert broken == [], f"images that did not decode: {broken}"
        links = driver.find_elements(By.CSS_SELECTOR, "nav a")
        assert [a.get_attribute("href").rsplit("#", 1)[1] for a in links] == list(SECTION_IDS)
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == [], f"console messages: {errors}"
    finally:
        driver.quit()
    assert re.search(r"<title>scalenmf report", bundle["report"].read_text())


def test_report_is_exported_at_the_top_level() -> None:
    assert scalenmf.report is report


class Cells(HTMLParser):
    """The header cells of every table, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.text: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "th":
            self._in_th = True
            self.headers.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._in_th = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_th:
            self.headers[-1] += data


def test_report_speaks_the_users_language_and_labels_every_column(bundle: dict) -> None:
    cells = Cells()
    cells.feed(bundle["report"].read_text())
    text = " ".join(cells.text)
    assert not re.search(r"\b[A-Z][A-Za-z]*Source\b", text), "no class names"
    assert "NNLS: " not in text and ">bpp<" not in text and ">cd<" not in text
    assert "max_iter" not in text and "n_runs" not in text
    assert cells.headers and all(h.strip() for h in cells.headers), cells.headers
    assert "this machine" in text or "Dask cluster" in text


def test_report_names_the_nnls_of_an_als_fit_in_words(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = rng.poisson(rng.gamma(1, 2, (30, 3)) @ rng.gamma(1, 2, (3, 40))).astype(float)
    for nnls, words in (("bpp", "block principal pivoting"), ("cd", "coordinate descent")):
        res = scalenmf.nmf(X, 3, solver="als", nnls=nnls, max_iter=20, progress=False)
        out = report(res.save(tmp_path / f"{nnls}.zarr"), tmp_path / f"{nnls}.html",
                     reference="none")  # fmt: skip
        text = Path(out).read_text()
        assert "exact NNLS for W and H" in text and words in text
        assert "from an array in memory" in text and "Source" not in text


def test_report_says_why_the_exposure_bars_show_fewer_samples(tmp_path: Path) -> None:
    from scalenmf.plot.samples import DEFAULT_BAR_SAMPLES

    n = DEFAULT_BAR_SAMPLES + 100
    res = fit_catalogue(n, n_runs=1)
    out = report(res.save(tmp_path / "r.zarr"), tmp_path / "r.html", reference="none")
    text = Path(out).read_text()
    assert f"for {DEFAULT_BAR_SAMPLES:,} of the {n:,} samples of the other views" in text
    small = fit_catalogue(60, n_runs=1)
    out = report(small.save(tmp_path / "s.zarr"), tmp_path / "s.html", reference="none")
    assert "samples of the other views" not in Path(out).read_text()


def test_sbs96_channel_labels_are_readable_and_do_not_overlap(fitted) -> None:
    from scalenmf.plot import signature_plot

    fig = signature_plot(fitted)
    fig.canvas.draw()
    labels = [t for t in fig.axes[-1].get_xticklabels() if t.get_text()]
    assert len(labels) == 96
    assert min(t.get_fontsize() for t in labels) >= 7.5
    boxes = [t.get_window_extent() for t in labels]
    # rotated labels side by side: a box is the line's height (glyphs and the space above
    # and below them); neighbours may share no more than a tenth of it
    assert all(a.x1 - b.x0 <= 0.1 * a.width for a, b in pairwise(boxes))

"""Format readers: CSV/TSV, Matrix Market (10x), .h5ad — real files, round trips, bad input."""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import scalenmf.data
from scalenmf.io import InputError, open_matrix
from scalenmf.io.formats.delimited import combine_labels
from scalenmf.io.formats.h5ad import H5adSource

#: Small real data shipped with the tests (tests/data/README.md says where it comes from).
DATA = Path(__file__).parent.parent / "data"
CATALOG = DATA / "synsig" / "syn.2.7a.7b.abst_sp.sp" / "ground.truth.syn.catalog.csv"
COSMIC = Path(scalenmf.data.__file__).parent / "COSMIC_v3.4_SBS_GRCh37.tsv"


def dense(src) -> np.ndarray:
    block = src.read_columns(0, src.shape[1])
    return block.toarray() if sp.issparse(block) else np.asarray(block)


def write_text(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", newline="") as fh:
            fh.write(text)
    else:
        path.write_text(text, newline="")
    return path


# -- CSV: real data ------------------------------------------------------------------------------
def test_sigprofiler_catalog_two_label_columns():
    src = open_matrix(CATALOG)
    with open(CATALOG, newline="") as fh:
        rows = list(csv.reader(fh))
    assert src.shape == (96, len(rows[0]) - 2)
    assert src.row_labels[0] == "A[C>A]A"  # C>A, ACA in SigProfiler's form
    assert src.col_labels[0] == rows[0][2]
    expect = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_array_equal(dense(src), expect)
    cosmic = open_matrix(COSMIC)
    assert cosmic.shape == (96, 86)
    assert set(cosmic.row_labels) == set(src.row_labels)  # channels align by label


# -- CSV: layouts --------------------------------------------------------------------------------
EXPECT = np.array([[1.0, 0.0, 2.5], [0.0, 7.0, 1e3]])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.csv", "gene,S1,S2,S3\ng1,1,0,2.5\ng2,0,7,1e3\n"),
        ("a.tsv", "gene\tS1\tS2\tS3\ng1\t1\t0\t2.5\ng2\t0\t7\t1e3\n"),
        ("a.txt", "gene;S1;S2;S3\r\ng1;1;0;2.5\r\ng2;0;7;1e3\r\n"),
        ("a.txt", '"S1" "S2" "S3"\n"g1" 1 0 2.5\n"g2" 0 7 1e3\n'),  # R write.table
        ("a.csv", '"","S1","S2","S3"\n"g1",1,0,2.5\n"g2",0,7,1e3\n'),  # R write.csv
        ("a.csv", "S1,S2,S3\ng1,1,0,2.5\n\ng2,0,7,1e3\n\n"),  # no label header, blank lines
        ("a.csv.gz", "\ufeffgene,S1,S2,S3\ng1,1,0,2.5\ng2,0,7,1e3\n"),  # gzip + BOM
        ("a.csv", 'gene,"S1","S2","S3"\n"g1", 1 ,0,+2.5\ng2,0.0,7,1000\n'),
    ],
)
def test_csv_layouts(tmp_path, name, text):
    src = open_matrix(write_text(tmp_path / name, text))
    np.testing.assert_array_equal(dense(src), EXPECT)
    assert list(src.row_labels) == ["g1", "g2"]
    assert list(src.col_labels) == ["S1", "S2", "S3"]


def test_two_label_columns_generic(tmp_path):
    path = write_text(tmp_path / "x.csv", "id,name,A,B\n1,TP53,1,2\n2,KRAS,3,4\n")
    src = open_matrix(path)
    assert list(src.row_labels) == ["1:TP53", "2:KRAS"]
    assert combine_labels([("C>T", "ACG"), ("T>A", "CTA")]) == ["A[C>T]G", "C[T>A]A"]
    assert combine_labels([("C>T", "AAG")]) == ["C>T:AAG"]  # middle base is not the ref


# -- CSV: bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("g,a,b\nx,1,2\ny,3\n", r"line 3: 2 fields, expected 3"),
        ("g,a,b\nx,1,2\ny,3,4,5\n", r"line 3: 4 fields"),
        ("g,a,b\nx,1,2\ny,3,NA\n", r"line 3, column 3 \('b'\): 'NA' is not a number"),
        ("g,a,b\nx,1,2\ny,,4\n", r"line 3, column 2 \('a'\): '' is not a number"),
        ("g,a,b\nx,NA,2\ny,3,4\n", r"line 3: column 2 holds the number '3'"),
        ("g,a,b\nx,1,-2\n", r"line 2, column 3 \('b'\): negative value '-2'"),
        ("g,a,b\nx,1,nan\n", r"line 2, column 3 \('b'\): non-finite value 'nan'"),
        ("g,a,b\nx,inf,1\n", r"line 2, column 2 \('a'\): non-finite"),
        ("", r"is empty"),
        ("\n\n", r"is empty"),
        ("g,a,b\n", r"header line but no data rows"),
        ("g\nx\n", r"cannot find the layout"),
        ('g,a\nx,"1\n', r"line 2"),  # unterminated quote
    ],
)
def test_csv_bad_input(tmp_path, text, match):
    path = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(InputError, match=match) as info:
        open_matrix(path)
    assert "bad.csv" in str(info.value)


def test_csv_binary_content(tmp_path):
    (tmp_path / "b.csv").write_bytes(b"\xff\xfe\x00\x81binary" * 20)
    with pytest.raises(InputError, match=r"b\.csv"):
        open_matrix(tmp_path / "b.csv")


def test_csv_truncated_gzip(tmp_path):
    good = gzip.compress(("g,a,b\n" + "x,1,2\n" * 5000).encode())
    path = tmp_path / "t.csv.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match=r"t\.csv\.gz.*(corrupt|truncated)"):
        open_matrix(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match=r"no such file.*nope\.csv"):
        open_matrix(tmp_path / "nope.csv")
    write_text(tmp_path / "x.dat", "g,a\nx,1\n")
    with pytest.raises(InputError, match=r"cannot tell the format of .*x\.dat"):
        open_matrix(tmp_path / "x.dat")


# -- CSV: no header row, no label column, duplicate labels, missing values (issue 12) -------------
@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("g1,1,0,2.5\ng2,0,7,1e3\n", "--no-header"),  # no header row: line 1 is data
        ("S1,S2,S3\n1,0,2.5\n0,7,1e3\n", "--no-row-labels"),  # no label column
        ("1,0,2.5\n0,7,1e3\n", "--no-header"),  # neither
    ],
)
def test_csv_first_row_or_column_that_looks_like_data_is_refused(tmp_path, text, option):
    path = write_text(tmp_path / "x.csv", text)
    with pytest.raises(InputError, match=option) as info:
        open_matrix(path)
    assert "x.csv" in str(info.value) and "\n" not in str(info.value)


def test_csv_without_header_or_labels_read_as_data_with_generated_labels(tmp_path):
    rows = write_text(tmp_path / "rows.csv", "g1,1,0,2.5\ng2,0,7,1e3\n")
    src = open_matrix(rows, has_header=False)
    np.testing.assert_array_equal(dense(src), EXPECT)  # nothing lost
    assert list(src.row_labels) == ["g1", "g2"]
    assert list(src.col_labels) == ["col1", "col2", "col3"]
    cols = write_text(tmp_path / "cols.csv", "S1,S2,S3\n1,0,2.5\n0,7,1e3\n")
    src = open_matrix(cols, has_row_labels=False)
    np.testing.assert_array_equal(dense(src), EXPECT)
    assert list(src.row_labels) == ["row1", "row2"]
    assert list(src.col_labels) == ["S1", "S2", "S3"]
    bare = write_text(tmp_path / "bare.tsv", "1\t0\t2.5\n0\t7\t1e3\n")
    src = open_matrix(bare, has_header=False, has_row_labels=False)
    np.testing.assert_array_equal(dense(src), EXPECT)
    assert list(src.row_labels) == ["row1", "row2"]


def test_csv_numeric_names_read_as_names_when_told_or_quoted(tmp_path):
    path = write_text(tmp_path / "x.csv", "gene,1,2,3\n7157,1,0,2.5\n7158,0,7,1e3\n")
    src = open_matrix(path, has_header=True, has_row_labels=True)  # Entrez ids, numeric samples
    np.testing.assert_array_equal(dense(src), EXPECT)
    assert list(src.row_labels) == ["7157", "7158"]
    assert list(src.col_labels) == ["1", "2", "3"]
    # Quoted fields are text, as R and pandas write names: no option needed.
    quoted = write_text(tmp_path / "q.csv", '"gene","1","2","3"\n"7157",1,0,2.5\n"7158",0,7,1e3\n')
    src = open_matrix(quoted)
    assert list(src.col_labels) == ["1", "2", "3"] and list(src.row_labels) == ["7157", "7158"]
    # R's write.table layout (one header field fewer) has row names, numeric or not.
    r_layout = write_text(tmp_path / "r.csv", "S1,S2,S3\n1,1,0,2.5\n2,0,7,1e3\n")
    assert list(open_matrix(r_layout).row_labels) == ["1", "2"]


def test_csv_layout_options_apply_to_text_input_only(tmp_path):
    np.save(tmp_path / "x.npy", EXPECT)
    with pytest.raises(ValueError, match="CSV/TSV"):
        open_matrix(tmp_path / "x.npy", has_header=False)


@pytest.mark.parametrize("where", ["rows", "cols"])
def test_csv_duplicate_labels_warn_and_are_kept(tmp_path, where):
    text = (
        "gene,S1,S2,S3\ng1,1,0,2.5\ng1,0,7,1e3\n"
        if where == "rows"
        else "gene,S1,S1,S3\ng1,1,0,2.5\ng2,0,7,1e3\n"
    )
    path = write_text(tmp_path / "d.csv", text)
    with pytest.warns(UserWarning, match=r"d\.csv.*duplicate.*'(g1|S1)'.*kept as given"):
        src = open_matrix(path)
    np.testing.assert_array_equal(dense(src), EXPECT)
    labels = src.row_labels if where == "rows" else src.col_labels
    assert list(labels)[:2] == (["g1", "g1"] if where == "rows" else ["S1", "S1"])


MISSING = "gene,S1,S2,S3\ng1,1,,2.5\ng2,NA,7,nan\n"


def test_csv_missing_cells_read_as_nan_when_asked(tmp_path):
    path = write_text(tmp_path / "m.csv", MISSING)
    with pytest.raises(InputError, match=r"line 2, column 3 \('S2'\): '' is not a number.*mask"):
        open_matrix(path)
    src = open_matrix(path, missing=True)
    got = dense(src)
    np.testing.assert_array_equal(np.isnan(got), [[False, True, False], [True, False, True]])
    assert got[0, 0] == 1 and got[1, 1] == 7
    bad = write_text(tmp_path / "b.csv", "gene,S1\ng1,-1\n")  # missing=True allows NaN only
    with pytest.raises(InputError, match="negative"):
        open_matrix(bad, missing=True)


def test_fit_mask_nan_on_csv_as_on_npy(tmp_path):
    from click.testing import CliRunner

    from scalenmf.cli.main import main

    rng = np.random.default_rng(3)
    X = rng.poisson(4.0, size=(12, 20)).astype(float)
    X[rng.random(X.shape) < 0.1] = np.nan
    lines = ["gene," + ",".join(f"s{j}" for j in range(20))]
    lines += [f"g{i}," + ",".join("" if np.isnan(v) else f"{v:g}" for v in X[i]) for i in range(12)]
    write_text(tmp_path / "x.csv", "\n".join(lines) + "\n")
    np.save(tmp_path / "x.npy", X)
    outs = {}
    for name in ("x.csv", "x.npy"):
        out = tmp_path / f"{name}.zarr"
        res = CliRunner().invoke(
            main,
            [
                "fit",
                str(tmp_path / name),
                "-k",
                "2",
                "-o",
                str(out),
                "--mask",
                "nan",
                "--max-iter",
                "20",
                "--no-progress",
                "--no-checkpoint",
            ],
        )
        assert res.exit_code == 0, res.output
        outs[name] = zarr.open_group(str(out), mode="r")
    np.testing.assert_allclose(outs["x.csv"]["W"][:], outs["x.npy"]["W"][:])


# -- CSV: property -------------------------------------------------------------------------------
# Labels may hold delimiters, quotes and any printable text; not line breaks (the layout is
# sniffed from the first two physical lines) nor surrounding spaces.
csv_label = (
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"
        ),
        min_size=1,
        max_size=8,
    )
    .map(str.strip)
    .filter(bool)
)


@st.composite
def csv_cases(draw):
    m = draw(st.integers(1, 5))
    n = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    X = rng.integers(0, 1000, size=(m, n)) * (rng.random((m, n)) < 0.6)
    if draw(st.booleans()):
        X = X / 8.0  # exact binary fractions survive the text round trip
    rows = draw(st.lists(csv_label, min_size=m, max_size=m))
    cols = draw(st.lists(csv_label, min_size=n, max_size=n))
    delim = draw(st.sampled_from([",", "\t", ";"]))
    return X.astype(float), rows, cols, delim, draw(st.sampled_from([".csv", ".tsv", ".txt"]))


@settings(max_examples=25, deadline=None)
@given(csv_cases(), st.booleans())
def test_csv_round_trip_property(case, gz):
    X, rows, cols, delim, suffix = case
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delim, quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(["feature", *cols])
    for label, values in zip(rows, X, strict=True):
        writer.writerow([label, *values.tolist()])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_text(Path(tmp) / f"x{suffix}{'.gz' if gz else ''}", buf.getvalue())
        src = open_matrix(path)
        np.testing.assert_array_equal(dense(src), X)
        assert list(src.row_labels) == rows
        assert list(src.col_labels) == cols


# The numpy reader (np.loadtxt) takes a file only when it reads exactly what the reference
# (csv) parser reads: text made of well-formed tables with one kind of damage each.
_CELL_DAMAGE = [
    "",
    " 3",
    "3 ",
    "\u00a07",
    "1_0",
    "nan",
    "inf",
    "-1",
    "1e3",
    "+2",
    ".5",
    "2.",
    "0x10",
    "1#",
    '"4"',
    "3\t4",
    "x",
    "1e400",
    "\u00e9",
    "1\x002",
]
_LINE_DAMAGE = ["blank", "spaces", "crlf", "cr", "extra", "short", "bom", "quote-label", "none"]


@st.composite
def damaged_tables(draw):
    m, n = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    delim = draw(st.sampled_from(["\t", ",", ";"]))
    labelled = draw(st.booleans())
    header = draw(st.booleans()) or labelled  # a label column is sniffed from a header
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    X = rng.integers(0, 50, size=(m, n)) / draw(st.sampled_from([1.0, 4.0]))
    cells = [[repr(float(v)) if v % 1 else str(int(v)) for v in row] for row in X]
    if draw(st.booleans()):
        i, j = draw(st.integers(0, m - 1)), draw(st.integers(0, n - 1))
        cells[i][j] = draw(st.sampled_from(_CELL_DAMAGE))
    names = [draw(st.sampled_from(["g", "gène", "g 1", "G-2"])) + str(i) for i in range(m)]
    lines = [(([names[i]] if labelled else []) + cells[i]) for i in range(m)]
    text = [delim.join(fields) for fields in lines]
    if header:
        text.insert(0, delim.join((["feature"] if labelled else []) + [f"s{j}" for j in range(n)]))
    damage = draw(st.sampled_from(_LINE_DAMAGE))
    at = draw(st.integers(1 if header else 0, len(text) - 1))
    end = "\n"
    if damage == "blank":
        text.insert(at + 1, "")
    elif damage == "spaces":
        text.insert(at + 1, "  ")
    elif damage == "crlf":
        end = "\r\n"
    elif damage == "cr":
        text[at] += "\r"
    elif damage == "extra":
        text[at] += delim + "1"
    elif damage == "short" and n > 1:
        text[at] = text[at].rsplit(delim, 1)[0]
    elif damage == "bom":
        text[0] = "\ufeff" + text[0]
    elif damage == "quote-label" and labelled and at > 0:
        first, _, rest = text[at].partition(delim)
        text[at] = f'"{first}"{delim}{rest}'
    return end.join(text) + end, delim


@settings(max_examples=150, deadline=None)
@given(damaged_tables())
def test_numpy_reader_reads_exactly_what_the_reference_reads(case):
    from scalenmf.io.formats.delimited import (
        DEFAULT_OPTIONS,
        _layout,
        _UseReference,
        iter_batches,
        numpy_batches,
    )

    text, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.tsv"
        path.write_bytes(text.encode())
        try:
            layout = _layout(path, DEFAULT_OPTIONS)
        except InputError:
            return  # the sniffer refuses it before any reader runs
        try:
            ref = [(lab, vals) for lab, vals in iter_batches(path, layout, 1 << 20)]
        except InputError:
            ref = None
        try:
            got = list(numpy_batches(path, layout, 1 << 20))
        except _UseReference:
            return  # handed on: pandas' reader or the reference decides
        assert ref is not None, f"numpy read what the reference refuses: {text!r}"
        labels = [lab for part, _ in ref for lab in part]
        assert [lab for part, _ in got for lab in part] == labels
        want = np.vstack([v for _, v in ref]) if ref else np.empty((0, 0))
        np.testing.assert_array_equal(np.vstack([v for _, v in got]), want)


def test_numpy_reader_is_used_and_hands_quoted_files_to_pandas(tmp_path, monkeypatch):
    # A plain table goes through numpy's reader; a quoted label column through pandas'.
    from scalenmf.io.formats import delimited

    used = []
    for name in ("numpy_batches", "fast_batches"):
        real = getattr(delimited, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            used.append(_name)
            yield from _real(*args, **kwargs)

        monkeypatch.setattr(delimited, name, spy)
    X = np.arange(12.0).reshape(3, 4)
    plain = tmp_path / "plain.tsv"
    plain.write_text(
        "g\ta\tb\tc\td\n"
        + "".join(f"g{i}\t" + "\t".join(str(int(v)) for v in row) + "\n" for i, row in enumerate(X))
    )
    src = open_matrix(plain)
    np.testing.assert_array_equal(dense(src), X)
    assert used == ["numpy_batches"]
    used.clear()
    quoted = tmp_path / "quoted.csv"
    quoted.write_text(
        "g,a,b,c,d\n"
        + "".join(
            f'"g,{i}",' + ",".join(str(int(v)) for v in row) + "\n" for i, row in enumerate(X)
        )
    )
    src = open_matrix(quoted)
    np.testing.assert_array_equal(dense(src), X)
    assert list(src.row_labels) == ["g,0", "g,1", "g,2"]
    assert used == ["numpy_batches", "fast_batches"]


# -- Matrix Market -------------------------------------------------------------------------------
def test_mtx_10x_directory_with_labels(tmp_path):
    X = sp.random(8, 11, density=0.3, format="coo", random_state=4)
    X.data = np.ceil(X.data * 9)
    raw = io.BytesIO()
    scipy.io.mmwrite(raw, X, field="integer")
    (tmp_path / "matrix.mtx.gz").write_bytes(gzip.compress(raw.getvalue()))
    genes = [f"ENSG{i:05d}\tGENE{i % 3}\tGene Expression" for i in range(8)]
    write_text(tmp_path / "features.tsv.gz", "\n".join(genes) + "\n")
    write_text(tmp_path / "barcodes.tsv.gz", "\n".join(f"AC{i}-1" for i in range(11)) + "\n")
    src = open_matrix(tmp_path / "matrix.mtx.gz")
    assert src.is_sparse and src.shape == (8, 11) and src.nnz == X.nnz
    np.testing.assert_array_equal(dense(src), X.toarray())
    assert src.row_labels[2] == "ENSG00002" and src.col_labels[10] == "AC10-1"


def test_mtx_geo_prefix_and_old_genes_file(tmp_path):
    X = sp.coo_matrix(np.array([[0, 2], [3, 0], [0, 1]]))
    scipy.io.mmwrite(tmp_path / "GSM1_matrix.mtx", X)
    write_text(tmp_path / "GSM1_genes.tsv", "a\tA\nb\tB\nc\tC\n")
    write_text(tmp_path / "GSM1_barcodes.tsv", "x\ny\n")
    src = open_matrix(tmp_path / "GSM1_matrix.mtx")
    assert list(src.row_labels) == ["a", "b", "c"] and list(src.col_labels) == ["x", "y"]


@pytest.mark.parametrize(
    ("field", "symmetry"),
    [("integer", "general"), ("real", "general"), ("pattern", "general"), ("integer", "symmetric")],
)
def test_mtx_fields(tmp_path, field, symmetry):
    A = np.array([[2.0, 1.0, 0.0], [1.0, 0.0, 4.0], [0.0, 4.0, 5.0]])
    if field == "pattern":
        A = (A > 0).astype(float)
    scipy.io.mmwrite(tmp_path / "x.mtx", sp.coo_matrix(A), field=field, symmetry=symmetry)
    np.testing.assert_array_equal(dense(open_matrix(tmp_path / "x.mtx")), A)


def test_mtx_array_format(tmp_path):
    A = np.arange(12, dtype=float).reshape(3, 4)
    scipy.io.mmwrite(tmp_path / "x.mtx", A)
    src = open_matrix(tmp_path / "x.mtx")
    assert not src.is_sparse
    np.testing.assert_array_equal(dense(src), A)


HEAD = "%%MatrixMarket matrix coordinate integer general\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"is empty"),
        ("hello world\n", r"line 1 is not a Matrix Market banner"),
        ("%%MatrixMarket matrix coordinate complex general\n2 2 1\n1 1 1 0\n", r"complex"),
        ("%%MatrixMarket matrix coordinate integer hermitian\n2 2 0\n", r"hermitian"),
        (HEAD + "% comment\n2 two 1\n", r"line 3: bad size line"),
        (HEAD + "2 2\n", r"bad size line"),
        (HEAD, r"no size line"),
        (HEAD + "2 2 2\n1 1 3\n", r"truncated: the header promises 2 entries, found 1"),
        (HEAD + "2 2 1\n1 1 3\n2 2 3\n", r"more than the 1"),
        (HEAD + "2 2 1\n3 1 3\n", r"line 3: row index 3 is not an integer in 1..2"),
        (HEAD + "2 2 1\n1 0 3\n", r"column index 0"),
        (HEAD + "2 2 1\n1.5 1 3\n", r"row index 1.5"),
        (HEAD + "2 2 2\n1 1 3\n2 1 -3\n", r"entry line 4: value -3.0 is negative"),
        (HEAD + "2 2 1\n1 1 nan\n", r"not finite|negative"),
        (HEAD + "2 2 2\n1 1 3\n2 1\n", r"line 4: expected 3 number\(s\)"),
        (HEAD + "2 2 1\n1 x 3\n", r"line 3: expected 3"),
    ],
)
def test_mtx_bad_input(tmp_path, text, match):
    path = write_text(tmp_path / "bad.mtx", text)
    with pytest.raises(InputError, match=match) as info:
        open_matrix(path)
    assert "bad.mtx" in str(info.value)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("1 1 3 4\n", r"line 3: expected 3 number\(s\)"),  # an extra column is not dropped
        ("1 1 3a\n", r"line 3: expected 3"),
        ("1 1 inf\n", r"line 3: value inf is negative or not finite"),
    ],
)
def test_mtx_fast_parser_does_not_accept_what_the_line_parser_refuses(tmp_path, body, match):
    path = write_text(
        tmp_path / "bad.mtx", "%%MatrixMarket matrix coordinate real general\n2 2 1\n" + body
    )
    with pytest.raises(InputError, match=match):
        open_matrix(path)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("1 1 3 4\n", r"line 3: expected 3 number\(s\)"),
        ("1 1 3a\n", r"line 3: expected 3"),
        ("1 2-0\n", r"line 3: expected 3"),  # a sign where a space should be
        ("1 1 3\x00\n", r"line 3: expected 3"),  # a NUL byte (crashes the C parser)
        ("1 1 -3\n", r"line 3: value -3.0 is negative"),
    ],
)
def test_mtx_integer_fast_path_refuses_what_the_line_parser_refuses(tmp_path, body, match):
    # Text the C parser would misread (a sign where a space should be), drop (a fourth
    # column, trailing text) or crash on (a NUL byte) goes to the line parser, which names it.
    path = write_text(tmp_path / "bad.mtx", HEAD + "2 2 1\n" + body)
    with pytest.raises(InputError, match=match):
        open_matrix(path)


@pytest.mark.parametrize(
    ("header", "body", "match"),
    [
        ("real", "2 1.8 1\n", r"line 3: column index 1.8 is not an integer"),
        ("real", "2 1.5e0 1\n", r"line 3: column index 1.5 is not an integer"),
        ("pattern", "2 1E\n", r"line 3: expected 2"),
        ("pattern", "2 1.5\n", r"line 3: column index 1.5"),
        ("integer", "2  1.5 1\n", r"line 3: column index 1.5"),
    ],
)
def test_mtx_index_with_a_decimal_point_or_exponent_is_refused(tmp_path, header, body, match):
    # The C parser reads an index token up to its first non-digit and takes the rest as
    # the next token ("2 1.8 1" as row 2, column 1, value .8): the fast path must not
    # accept such a line; the line parser names it.
    text = f"%%MatrixMarket matrix coordinate {header} general\n2 2 1\n{body}"
    with pytest.raises(InputError, match=match):
        open_matrix(write_text(tmp_path / "bad.mtx", text))


@pytest.mark.parametrize("body", ["2.0 1 7\n", "2 1e0 7\n", "2 1.0 7\n", "2 1 7\n"])
def test_mtx_integral_index_spelled_as_a_real_reads_as_that_integer(tmp_path, body):
    text = f"%%MatrixMarket matrix coordinate real general\n2 2 1\n{body}"
    np.testing.assert_array_equal(
        dense(open_matrix(write_text(tmp_path / "x.mtx", text))), [[0, 0], [7, 0]]
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("1 1 05\n2 2 1\n", [[5, 0], [0, 1]]),  # leading zero
        ("1\t1 5\n2 2 1\n", [[5, 0], [0, 1]]),  # a tab
        ("1 1  5\n2 2 1\n", [[5, 0], [0, 1]]),  # two spaces
        ("1 1 +5\n2 2 1\n", [[5, 0], [0, 1]]),  # a plus sign
        ("1 1 5 \n2 2 1\n", [[5, 0], [0, 1]]),  # trailing space
        ("1 1 0\n2 2 10\n", [[0, 0], [0, 10]]),  # an explicit zero
    ],
)
def test_mtx_integer_files_off_the_canonical_spelling_read_exactly(tmp_path, body, expected):
    src = open_matrix(write_text(tmp_path / "x.mtx", HEAD + "2 2 2\n" + body))
    np.testing.assert_array_equal(dense(src), expected)


def test_mtx_values_and_spacing_read_exactly(tmp_path):
    # A non-integer value in an "integer" file is kept (never truncated), odd spacing and
    # CRLF line ends parse, blank lines and comments inside the body are skipped.
    text = (
        "%%MatrixMarket matrix coordinate integer general\r\n% made by hand\r\n3 2 4\r\n"
        "1 1 3.5\r\n  2\t1   7 \r\n\r\n% a comment\r\n3 2 1\r\n3 2 2"
    )
    src = open_matrix(write_text(tmp_path / "x.mtx", text))
    np.testing.assert_array_equal(dense(src), [[3.5, 0], [7, 0], [0, 3]])  # duplicates summed


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3.5", 3.5), ("1e3", 1000.0), ("7", 7.0), ("99999999999999999999", 1e20)],
)
def test_mtx_integer_file_values_are_never_truncated(tmp_path, value, expected):
    # Plain digits are parsed as integers (faster); anything else in an "integer" file is
    # read as the number it spells, not cut at the first non-digit.
    text = f"%%MatrixMarket matrix coordinate integer general\n2 2 2\n1 1 {value}\n2 2 4\n"
    src = open_matrix(write_text(tmp_path / "x.mtx", text))
    np.testing.assert_array_equal(dense(src), [[expected, 0], [0, 4]])


def test_mtx_streamed_over_many_chunks_names_late_bad_line(tmp_path):
    from scalenmf.io.convert import convert

    rng = np.random.default_rng(2)
    X = sp.random(300, 200, density=0.3, format="coo", random_state=rng)
    X.data = np.ceil(X.data * 50)
    scipy.io.mmwrite(tmp_path / "x.mtx", X, field="integer")
    src = open_matrix(convert(tmp_path / "x.mtx", tmp_path / "x.zarr", memory_limit="200KB"))
    np.testing.assert_array_equal(dense(src), X.toarray())
    lines = (tmp_path / "x.mtx").read_text().splitlines()
    lines[-5] = lines[-5].rsplit(" ", 1)[0] + " -4"
    (tmp_path / "bad.mtx").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"entry line {len(lines) - 4}: value -4.0 is negative"):
        convert(tmp_path / "bad.mtx", tmp_path / "bad.zarr", memory_limit="200KB")


def test_mtx_duplicate_barcodes_warn(tmp_path):
    scipy.io.mmwrite(tmp_path / "matrix.mtx", sp.coo_matrix(np.eye(3)))
    write_text(tmp_path / "barcodes.tsv", "a\nb\na\n")
    with pytest.warns(UserWarning, match=r"barcodes\.tsv.*1 duplicate sample label.*'a'"):
        src = open_matrix(tmp_path / "matrix.mtx")
    assert list(src.col_labels) == ["a", "b", "a"]


def test_mtx_label_file_of_wrong_length(tmp_path):
    scipy.io.mmwrite(tmp_path / "matrix.mtx", sp.coo_matrix(np.eye(3)))
    write_text(tmp_path / "barcodes.tsv", "a\nb\n")
    with pytest.raises(InputError, match=r"barcodes\.tsv.*2 labels.*needs 3"):
        open_matrix(tmp_path / "matrix.mtx")


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 8),
    st.floats(0, 1),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["integer", "real"]),
)
def test_mtx_round_trip_property(m, n, density, seed, field):
    X = sp.random(m, n, density=density, format="coo", random_state=seed)
    X.data = np.round(X.data * 100) if field == "integer" else X.data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.mtx"
        scipy.io.mmwrite(path, X, field=field, precision=17)
        src = open_matrix(path)
        assert src.shape == (m, n) and src.is_sparse
        np.testing.assert_array_equal(dense(src), X.toarray())


# -- h5ad ----------------------------------------------------------------------------------------
ad = pytest.importorskip("anndata")


def write_h5ad(path: Path, X, obs: list[str], var: list[str]) -> Path:
    a = ad.AnnData(X=X)
    a.obs_names = obs
    a.var_names = var
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(path)
    return path


@pytest.mark.parametrize("kind", ["csr", "dense", "csc"])
def test_h5ad_read_as_genes_by_cells(tmp_path, kind):
    rng = np.random.default_rng(5)
    cells = (rng.random((40, 6)) < 0.3) * rng.integers(1, 20, size=(40, 6))
    X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[kind](
        cells.astype(np.float32)
    )
    obs = [f"cell{i}" for i in range(40)]
    var = [f"G{i}" for i in range(6)]
    path = write_h5ad(tmp_path / "a.h5ad", X, obs, var)
    src = open_matrix(path)
    assert src.shape == (6, 40) and src.is_sparse == (kind != "dense")
    np.testing.assert_array_equal(dense(src), cells.T)
    assert list(src.row_labels) == var and list(src.col_labels) == obs
    if kind != "csc":
        assert isinstance(src, H5adSource)
        blocks = src.reblock(7)
        assert blocks.n_blocks == 6
        parts = [blocks.read_block(j) for j in range(blocks.n_blocks)]
        parts = [p.toarray() if sp.issparse(p) else p for p in parts]
        np.testing.assert_array_equal(np.hstack(parts), cells.T)
        back = pickle.loads(pickle.dumps(src))  # travels by path
        np.testing.assert_array_equal(dense(back), cells.T)


def test_h5ad_bad_files(tmp_path):
    (tmp_path / "junk.h5ad").write_bytes(b"this is not HDF5" * 10)
    with pytest.raises(InputError, match=r"junk\.h5ad.*not a readable HDF5"):
        open_matrix(tmp_path / "junk.h5ad")
    import h5py

    with h5py.File(tmp_path / "nox.h5ad", "w") as f:
        f.create_group("obs")
    with pytest.raises(InputError, match=r"nox\.h5ad.*no X"):
        open_matrix(tmp_path / "nox.h5ad")
    good = write_h5ad(
        tmp_path / "t.h5ad",
        sp.random(2000, 50, density=0.2, format="csr", random_state=0),
        [str(i) for i in range(2000)],
        [str(i) for i in range(50)],
    )
    data = good.read_bytes()
    (tmp_path / "trunc.h5ad").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"trunc\.h5ad"):
        src = open_matrix(tmp_path / "trunc.h5ad")
        dense(src)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1), st.booleans())
def test_h5ad_round_trip_property(m, n, seed, sparse):
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 5, size=(n, m)) * (rng.random((n, m)) < 0.5)
    X = sp.csr_matrix(cells.astype(float)) if sparse else cells.astype(float)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_h5ad(
            Path(tmp) / "x.h5ad", X, [f"c,{i}é" for i in range(n)], [f'g"{i}' for i in range(m)]
        )
        src = open_matrix(path)
        np.testing.assert_array_equal(dense(src), cells.T)
        assert list(src.col_labels) == [f"c,{i}é" for i in range(n)]
        assert list(src.row_labels) == [f'g"{i}' for i in range(m)]


def test_mtx_read_ahead_is_done_when_a_bad_line_stops_the_read(tmp_path):
    # The read-ahead thread of an abandoned parse was once left to the garbage collector,
    # whose finalizer joined it from inside threading's locks: the suite hung there.
    import threading
    import time

    from scalenmf.io.convert import convert

    X = sp.random(300, 200, density=0.3, format="coo", random_state=np.random.default_rng(3))
    X.data = np.ceil(X.data * 50)
    scipy.io.mmwrite(tmp_path / "x.mtx", X, field="integer")
    lines = (tmp_path / "x.mtx").read_text().splitlines()
    lines[-5] = lines[-5].rsplit(" ", 1)[0] + " -4"
    (tmp_path / "bad.mtx").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="is negative") as info:
        convert(tmp_path / "bad.mtx", tmp_path / "bad.zarr", memory_limit="200KB")
    # The traceback keeps the parse's frames alive, as a caller holding the error would.
    assert info.traceback
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        readers = [t for t in threading.enumerate() if t.name.startswith("mtx-read")]
        if not any(t.is_alive() for t in readers):
            break
        time.sleep(0.05)
    assert not any(t.is_alive() for t in readers), "a read-ahead thread outlived its parse"


def test_mtx_lone_cr_inside_a_line_is_a_blank_on_both_paths(tmp_path):
    # Lines end at LF (a CRLF's CR is trailing blank), as the header is read: a lone CR
    # inside a line separates tokens on the fast path and on the line parser alike, so an
    # error after it names the same line either way.
    ok = HEAD + "2 2 2\n1 1\r3\n2 2 4\n"
    np.testing.assert_array_equal(
        dense(open_matrix(write_text(tmp_path / "ok.mtx", ok))), [[3, 0], [0, 4]]
    )
    bad = HEAD + "2 2 2\n1 1\r3\n2 2 x\n"  # the x sends the chunk to the line parser
    with pytest.raises(InputError, match=r"line 4: expected 3 number\(s\), got '2 2 x'"):
        open_matrix(write_text(tmp_path / "bad.mtx", bad))


_FUZZ_BYTES = "0123456789 \t\r\n.eE+-x%\x00"


@st.composite
def _fuzz_chunk(draw, ncols):
    # Well-formed lines of ncols tokens, then a few bytes inserted, replaced or deleted:
    # the near misses where a lenient parser and a strict one part ways.
    n = draw(st.integers(1, 6))
    values = draw(st.lists(st.integers(1, 30), min_size=n * ncols, max_size=n * ncols))
    text = list(
        "".join(
            " ".join(map(str, values[i : i + ncols])) + "\n" for i in range(0, len(values), ncols)
        )
    )
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        char = draw(st.sampled_from(_FUZZ_BYTES))
        if op == "insert":
            text.insert(pos, char)
        elif op == "replace":
            text[pos] = char
        elif len(text) > 1:
            del text[pos]
    out = "".join(text)
    return out if out.endswith("\n") else out + "\n"  # chunks are whole lines


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["integer", "real", "pattern"]), st.data(), st.sampled_from([1, 2]))
def test_mtx_fast_path_reads_exactly_what_the_line_parser_reads(field, data, parallelism):
    # Differential: whenever the fast path takes a chunk, the strict line parser reads it
    # to the same entries (and line count); where they would differ, the fast path must
    # decline (the line parser then reads it, or names the bad line).
    import scalenmf.io.formats.mtx as mtx

    text = data.draw(_fuzz_chunk(2 if field == "pattern" else 3))
    header = mtx.Header("coordinate", field, "general", (30, 30), 0, 3)
    chunk = text.encode()
    fast = mtx._fast_coords(chunk, header, parallelism)
    if fast is None:
        return
    rows, cols, vals, n_lines = fast
    r, c, v, count, lines = mtx._line_coords("x.mtx", chunk, 3, header)
    assert n_lines == lines == text.count("\n")
    assert count == len(vals)
    np.testing.assert_array_equal(rows, r)
    np.testing.assert_array_equal(cols, c)
    np.testing.assert_array_equal(vals, v)


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("integer", b"1 2\n3 4 5 6\n"),  # a short line made up for by a long one
        ("integer", b"1 2 3 4\n5 6\n"),
        ("integer", b"1 2 3 4 5\n\n"),  # a blank line
        ("integer", b" 1 2\n3 4 5\n"),  # a leading blank
        ("pattern", b"1\n2 3 4\n"),
        ("pattern", b"1 2 3\n4\n"),
    ],
)
def test_fmm_refuses_short_lines(field, body, parallelism):
    # The plain-integer check (``_plain_lines``) counts spaces per newline over the whole
    # chunk; it is exact only because fast_matrix_market refuses a line with too few
    # tokens, so no line can have too many. This pins that behaviour of the parser.
    import scalenmf.io.formats.mtx as mtx

    ncols = 2 if field == "pattern" else 3
    assert mtx._plain_lines(body, ncols) == body.count(b"\n")  # the counts alone pass it
    n = body.count(b"\n")
    head = f"%%MatrixMarket matrix coordinate {field} general\n9 9 {n}\n".encode()
    with pytest.raises(ValueError):
        mtx._fmm_parse(head + body, n, (9, 9), parallelism)
    header = mtx.Header("coordinate", field, "general", (9, 9), n, 3)
    assert mtx._fast_coords(body, header, parallelism) is None


def test_text_batches_stacked_at_the_cost_of_one_part():
    # The whole-file reader stacks its parse batches (column-major views of pandas'
    # blocks) into one C-ordered X, dropping each batch once copied.
    from scalenmf.io.formats.delimited import _stacked

    rng = np.random.default_rng(3)
    parts = [np.asfortranarray(rng.random((k, 5))) for k in (3, 1, 4)]
    want = np.vstack(parts)
    held = list(parts)
    X = _stacked(held)
    assert held == [] and X.flags.c_contiguous
    np.testing.assert_array_equal(X, want)
    one = [np.asfortranarray(rng.random((2, 3)))]
    single = _stacked(one)
    assert one == [] and single.flags.c_contiguous


def test_text_bool_column_is_not_read_as_numbers(tmp_path):
    # pandas infers a column of True/False as bools, which would cast to 1.0 / 0.0: the
    # fast reader refuses it and the reference parser names the first such cell.
    from scalenmf.io.formats.delimited import DEFAULT_OPTIONS, _layout, _UseReference, fast_batches

    lines = ["gene\ta\tb"] + [f"g{i}\t{i}\t{'True' if i % 2 else 'False'}" for i in range(40)]
    path = tmp_path / "b.tsv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(_UseReference):
        list(fast_batches(path, _layout(path, DEFAULT_OPTIONS), 1000))
    with pytest.raises(InputError, match=r"line 2, column 3 \('b'\): 'False' is not a number"):
        open_matrix(path)

"""``scalenmf dnmf`` end to end: train → transform → result store; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

pytest.importorskip("torch")

from scalenmf.cli.dnmf import dnmf
from scalenmf.io import open_matrix, write_matrix


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.random((16, 3))
    H = rng.gamma(1.0, 30.0, (3, 50))
    V = rng.poisson(W @ H).astype(np.float64)
    rows = [f"ch{i}" for i in range(16)]
    cols = [f"s{j}" for j in range(50)]
    write_matrix(tmp_path / "v.zarr", V, block_cols=12, row_labels=rows, col_labels=cols)
    write_matrix(
        tmp_path / "h.zarr", H, block_cols=12, row_labels=["SBS1", "SBS5", "SBS13"], col_labels=cols
    )
    np.save(tmp_path / "v.npy", V)
    return tmp_path, V, H


def _run(args):
    return CliRunner().invoke(dnmf, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_train_then_transform_writes_h_with_labels(inputs, mode):
    d, V, _H = inputs
    args = [
        "train",
        d / "v.zarr",
        "-k",
        3,
        "-o",
        d / "model",
        "--epochs",
        5,
        "--quiet",
        "--checkpoint-every",
        2,
    ]
    if mode == "supervised":
        args += ["--h", d / "h.zarr"]
    res = _run(args)
    assert res.exit_code == 0, res.output
    assert (d / "model" / "weights.pt").exists() and (d / "model.ckpt.pt").exists()
    res = _run(["transform", d / "model", d / "v.zarr", "-o", d / "out.zarr", "--quiet"])
    assert res.exit_code == 0, res.output
    g = zarr.open_group(str(d / "out.zarr"), mode="r")
    assert g["H"].shape == (3, 50)
    # H is chunked like the input's column blocks, so each block writes whole chunks
    a, b = open_matrix(str(d / "v.zarr")).block_bounds[0]
    assert g["H"].chunks == (3, b - a)
    assert list(g["col_labels"][:]) == [f"s{j}" for j in range(50)]
    assert list(g["row_labels"][:]) == [f"ch{i}" for i in range(16)]
    comps = list(g["component_labels"][:])
    assert comps == (["SBS1", "SBS5", "SBS13"] if mode == "supervised" else ["F1", "F2", "F3"])
    assert ("W" in g) == (mode == "unsupervised")
    assert np.all(np.asarray(g["H"][:]) >= 0)
    # the same H as the Python API on the same model
    from scalenmf.models.deep import DNMF

    np.testing.assert_allclose(g["H"][:], DNMF.load(d / "model").transform(V), rtol=1e-6)
    # resume continues from the checkpoint to more epochs
    args[args.index("--epochs") + 1] = 7
    res = _run([*args, "--resume", "--overwrite"])
    assert res.exit_code == 0, res.output


@pytest.mark.timeout(180)
def test_train_with_two_processes_and_reader_workers(inputs):
    """``--nproc 2`` with mini-batches read by DataLoader worker processes, from a store."""
    d, V, _ = inputs
    args = ["train", d / "v.zarr", "-k", 3, "-o", d / "par", "--epochs", 3, "--quiet"]
    res = _run(
        [*args, "--nproc", 2, "--batch-size", 24, "--loader-workers", 1, "--dtype", "float64"]
    )
    assert res.exit_code == 0, res.output
    from scalenmf.models.deep import DNMF

    model = DNMF.load(d / "par")
    assert len(model.loss_history_) == 3 and model.W_ is not None and model.W_.min() >= 0
    H = model.transform(V)
    assert H.shape == (3, 50) and np.isfinite(H).all() and H.min() >= 0


def test_transform_npy_input(inputs):
    d, _V, _ = inputs
    assert (
        _run(["train", d / "v.npy", "-k", 2, "-o", d / "m", "--epochs", 2, "--quiet"]).exit_code
        == 0
    )
    res = _run(["transform", d / "m", d / "v.npy", "-o", d / "o.zarr", "--quiet"])
    assert res.exit_code == 0, res.output
    assert zarr.open_group(str(d / "o.zarr"), mode="r")["H"].shape == (2, 50)


def test_bad_inputs_fail_cleanly(inputs, tmp_path):
    d, V, H = inputs
    bad = V.copy()
    bad[1, 1] = -3
    np.save(d / "neg.npy", bad)
    nan = V.copy()
    nan[0, 4] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "h_bad.npy", H[:, :-1])
    cases = [
        (["train", d / "missing.zarr", "-k", 3, "-o", d / "m1"], "does not exist"),
        (["train", d / "neg.npy", "-k", 3, "-o", d / "m2", "--quiet"], "negative"),
        (["train", d / "nan.npy", "-k", 3, "-o", d / "m3", "--quiet"], "NaN"),
        (["train", d / "v.npy", "-k", 0, "-o", d / "m4"], "out of range"),
        (["train", d / "v.npy", "-k", 40, "-o", d / "m5"], "out of range"),
        (["train", d / "v.npy", "-k", 3, "--h", d / "h_bad.npy", "-o", d / "m6"], "shape"),
        (["train", d / "v.npy", "-k", 3, "--mode", "supervised", "-o", d / "m7"], "known H"),
        (["train", d / "v.npy", "-k", 3, "-o", d / "m8", "--resume"], "no checkpoint"),
    ]
    for args, msg in cases:
        res = _run(args)
        assert res.exit_code != 0, args
        assert msg in res.output, (args, res.output)
    leftovers = [p.name for p in d.iterdir() if p.name.startswith(("m", ".m"))]
    assert leftovers == [], leftovers
    # transform: model and input must agree; nothing is written on failure
    assert (
        _run(["train", d / "v.npy", "-k", 3, "-o", d / "good", "--epochs", 1, "--quiet"]).exit_code
        == 0
    )
    np.save(d / "narrow.npy", V[:-2])
    res = _run(["transform", d / "good", d / "narrow.npy", "-o", d / "t.zarr", "--quiet"])
    assert res.exit_code != 0 and "features" in res.output
    res = _run(["transform", d / "good", d / "neg.npy", "-o", d / "t.zarr", "--quiet"])
    assert res.exit_code != 0 and "negative" in res.output
    assert not any(p.name.startswith((".t.zarr", "t.zarr")) for p in d.iterdir())
    res = _run(["transform", d / "good", d / "v.npy", "-o", d / "v.zarr", "--quiet"])
    assert res.exit_code != 0 and "already exists" in res.output

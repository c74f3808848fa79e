"""Stores behind fsspec URLs (memory://, file://) — what s3:// goes through — end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import scalenmf
from scalenmf.cli.main import main
from scalenmf.io import open_matrix, storage


@pytest.fixture()
def X() -> np.ndarray:
    rng = np.random.default_rng(8)
    return rng.poisson(rng.gamma(1.0, 1.0, (20, 3)) @ rng.gamma(1.0, 1.0, (3, 90)) * 4).astype(
        float
    )


@pytest.fixture()
def bucket(request: pytest.FixtureRequest) -> str:
    import fsspec

    root = f"memory://scalenmf-test-{request.node.name.replace('[', '-').strip(']')}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


class Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_memory_url_input_output_and_checkpoints(
    bucket: str, tmp_path: Path, X: np.ndarray, kind: str
) -> None:
    data = sp.csc_matrix(X) if kind == "sparse" else X
    url = f"{bucket}/x.zarr"
    scalenmf.write_matrix(url, data, block_cols=30)
    scalenmf.write_matrix(tmp_path / "x.zarr", data, block_cols=30)
    src = open_matrix(url)
    assert src.is_sparse == (kind == "sparse") and src.shape == X.shape
    local = scalenmf.nmf(tmp_path / "x.zarr", 3, max_iter=12, tol=0)

    def stop(info) -> None:
        if info.iteration == 8:
            raise Stop

    ck = f"{bucket}/o.zarr.checkpoint"
    with pytest.raises(Stop):
        scalenmf.nmf(url, 3, max_iter=12, tol=0, checkpoint=ck, checkpoint_every=3, callback=stop)
    res = scalenmf.nmf(url, 3, max_iter=12, tol=0, checkpoint=ck, checkpoint_every=3, resume=True)
    assert res.info["resumed_from_iteration"] == 6
    np.testing.assert_array_equal(res.W, local.W)
    np.testing.assert_array_equal(res.H, local.H)
    res.save(f"{bucket}/o.zarr")
    back = scalenmf.load(f"{bucket}/o.zarr")
    np.testing.assert_array_equal(back.H, res.H)
    assert back.manifest["input"]["path"] == url
    with pytest.raises(FileExistsError, match="already exists"):
        res.save(f"{bucket}/o.zarr")
    res.save(f"{bucket}/o.zarr", overwrite=True)
    names = storage.listdir(bucket)
    assert not [n for n in names if n.startswith(".")], names


def test_inputs_are_opened_read_only(bucket: str, tmp_path: Path, X: np.ndarray) -> None:
    for where in (f"{bucket}/x.zarr", str(tmp_path / "x.zarr")):
        scalenmf.write_matrix(where, X, block_cols=30)
        src = open_matrix(where)
        arr = src._array()  # type: ignore[attr-defined]
        assert arr.store.read_only, where
        with pytest.raises(Exception):  # noqa: B017 - zarr raises its own read-only error
            arr[0, 0] = 1.0


@pytest.mark.timeout(120)
def test_cli_with_file_urls_laptop_and_local_cluster(tmp_path: Path, X: np.ndarray) -> None:
    scalenmf.write_matrix(tmp_path / "x.zarr", X, block_cols=30)
    outs = []
    for name, extra in (("laptop", []), ("dask", ["--workers", "2"])):
        out = tmp_path / f"{name}.zarr"
        args = ["fit", f"file://{tmp_path}/x.zarr", "-k", "3", "-o", f"file://{out}"]
        res = CliRunner().invoke(main, [*args, "--max-iter", "10", "--no-progress", *extra])
        assert res.exit_code == 0, res.output
        outs.append(scalenmf.load(out))
    assert outs[1].info["executor"] == "dask"
    np.testing.assert_array_equal(outs[0].W, outs[1].W)
    assert not Path(f"{tmp_path}/laptop.zarr.checkpoint").exists()


def test_cli_refuses_missing_url_and_existing_url_output(bucket: str, X: np.ndarray) -> None:
    res = CliRunner().invoke(main, ["fit", f"{bucket}/nope.zarr", "-k", "2", "-o", f"{bucket}/o"])
    assert res.exit_code == 1 and "does not exist" in res.output
    scalenmf.write_matrix(f"{bucket}/x.zarr", X, block_cols=30)
    scalenmf.write_matrix(f"{bucket}/taken.zarr", X, block_cols=30)
    args = ["fit", f"{bucket}/x.zarr", "-k", "2", "-o", f"{bucket}/taken.zarr"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "already exists" in res.output

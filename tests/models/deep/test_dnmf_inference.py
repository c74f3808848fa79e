"""Streaming inference into Zarr: in this process and with Dask workers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from click.testing import CliRunner

pytest.importorskip("torch")

from scalenmf.cli.dnmf import dnmf
from scalenmf.io import open_matrix, write_matrix
from scalenmf.models.deep import DNMF


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(3)
    V = rng.poisson(5.0, (12, 70)).astype(np.float64)
    return DNMF(2, mode="unsupervised", epochs=3, dtype="float64").fit(V), V


def test_streamed_transform_equals_in_memory(fitted, tmp_path):
    model, V = fitted
    Vs = sp.csc_matrix(np.where(V > 5, V, 0))
    out = model.transform_to_zarr(open_matrix(Vs, block_cols=9), tmp_path / "h.zarr", batch_size=4)
    H = zarr.open_group(out, mode="r")["H"][:]
    np.testing.assert_allclose(H, model.transform(Vs.toarray()), rtol=1e-12)
    np.testing.assert_allclose(zarr.open_group(out, mode="r")["W"][:], model.W_)


def test_irregular_blocks_are_written_whole(fitted, tmp_path):
    model, V = fitted
    src = open_matrix(V, block_cols=[10, 25, 5, 30])
    out = model.transform_to_zarr(src, tmp_path / "h.zarr")
    np.testing.assert_allclose(
        zarr.open_group(out, mode="r")["H"][:], model.transform(V), rtol=1e-12
    )


def test_dask_workers_transform_their_own_blocks(fitted, tmp_path):
    distributed = pytest.importorskip("distributed")
    model, V = fitted
    store = tmp_path / "v.zarr"
    write_matrix(store, V, block_cols=10)
    model.save(tmp_path / "m")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        res = CliRunner().invoke(
            dnmf,
            [
                "transform",
                str(tmp_path / "m"),
                str(store),
                "-o",
                str(tmp_path / "h.zarr"),
                "--scheduler",
                cluster.scheduler_address,
                "--quiet",
            ],
        )
        assert res.exit_code == 0, res.output
        # in-memory input travels block by block through the same client
        with distributed.Client(cluster) as client:
            out = model.transform_to_zarr(V, tmp_path / "h2.zarr", scheduler=client)
    H = zarr.open_group(str(tmp_path / "h.zarr"), mode="r")["H"][:]
    np.testing.assert_allclose(H, model.transform(V), rtol=1e-12)
    np.testing.assert_allclose(zarr.open_group(out, mode="r")["H"][:], H, rtol=1e-12)

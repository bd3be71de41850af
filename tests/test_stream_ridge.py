"""The regression head streamed from the cache (stream_ridge.py) chooses and fits what probe_heads.fit_ridge does
on the same rows held in memory, reading a batch at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_stream import cached

from headstart import cache as cache_module
from headstart.heads import HeadConfig, build_head
from headstart.probe_heads import fit_ridge, refit_head
from headstart.stream_ridge import fit_streamed_ridge, refit_streamed_ridge, streamed_mse


def regression_rows(n: int, dim: int, seed: int, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Features shifted and scaled per feature (so the scalings differ) and a noisy linear target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * np.linspace(0.5, 3, dim) + offset
    y = (x - offset) @ np.random.default_rng(9).normal(size=dim) * 0.3 + rng.normal(size=n)
    return x.astype(np.float32), ((y - y.mean()) / y.std()).astype(np.float32).reshape(-1, 1)


@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_streamed_ridge_matches_the_in_memory_fit(tmp_path, monkeypatch, offset):
    x, y = regression_rows(3000, 12, 0, offset)
    cache, digests = cached(tmp_path, x, 3)
    monkeypatch.setattr(cache_module, "BATCH_BYTES", 256 * 12 * 4)  # 12 batches a pass
    source, _ = cache.locate(digests)
    memory, streamed = build_head(HeadConfig(), 12, 1), build_head(HeadConfig(), 12, 1)
    want = fit_ridge(memory, torch.as_tensor(x), torch.as_tensor(y))
    got = fit_streamed_ridge(streamed, source, y)
    assert source.most_rows_read == 256
    assert (got["scaling"], got["alpha"]) == (want["scaling"], want["alpha"])
    assert got["cv_mse"] == pytest.approx(want["cv_mse"], rel=1e-4)
    for a in want["cv_candidates"]:
        assert got["cv_candidates"][a] == pytest.approx(want["cv_candidates"][a], rel=1e-4, abs=1e-5)
    with torch.no_grad():
        x_test = torch.as_tensor(regression_rows(500, 12, 1, offset)[0])
        np.testing.assert_allclose(streamed(x_test).numpy(), memory(x_test).numpy(), rtol=1e-4, atol=1e-4)
        mse = float(torch.nn.functional.mse_loss(memory(torch.as_tensor(x)), torch.as_tensor(y)))
    assert streamed_mse(streamed, source, y)["loss"] == pytest.approx(mse, rel=1e-4)
    refit = refit_streamed_ridge(streamed, source, y)
    want_refit = refit_head("regression", memory, [(torch.as_tensor(x), torch.as_tensor(y))], 1, want)
    assert (refit["rows"], refit["scaling"], refit["alpha"]) == (want_refit["rows"], want_refit["scaling"],
                                                                 want_refit["alpha"])


def test_a_regressor_above_the_threshold_streams_and_matches_one_below(colour_folder, tmp_path, monkeypatch):
    """ImageRegressor's `features` fit, once in memory and once with stream.STREAM_MIN_ROWS lowered under its rows:
    the head stage and the refit are the streamed ridge, choosing and predicting what the in-memory one does."""
    from test_probe_heads import _colour_csvs

    import headstart as hs
    from headstart import stream

    reg_csv, _ = _colour_csvs(colour_folder, tmp_path)
    kwargs = {"strategy": "features", "pretrained": False, "image_size": 32, "verbose": False}
    memory = hs.ImageRegressor("timm:test_efficientnet", cache_dir=str(tmp_path / "a"), **kwargs).fit(reg_csv)
    monkeypatch.setattr(stream, "STREAM_MIN_ROWS", 10)
    streamed = hs.ImageRegressor("timm:test_efficientnet", cache_dir=str(tmp_path / "b"), **kwargs).fit(reg_csv)
    (want,), (got,) = ([r for r in m.history_ if r["stage"] == "head"] for m in (memory, streamed))
    assert want["solver"].startswith("ridge regression (closed form") and got["solver"].startswith(
        "ridge regression (streamed")
    assert (got["probe"]["scaling"], got["probe"]["alpha"]) == (want["probe"]["scaling"], want["probe"]["alpha"])
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-3, abs=1e-4)
    assert {k: streamed.metrics_["refit"][k] for k in ("rows", "scaling", "alpha")} == \
        {k: memory.metrics_["refit"][k] for k in ("rows", "scaling", "alpha")}
    np.testing.assert_allclose(streamed.predict(colour_folder), memory.predict(colour_folder), rtol=1e-3, atol=1e-3)

"""Samples, reconstructions and interpolations are real PNGs of the right size."""

import json

import numpy as np
from PIL import Image

from vaepipe.generate import VIEW_SIDE, generate


def test_generate_writes_valid_pngs(built, fmnist_dir, tmp_path):
    mid = json.loads(built.collection.read_text())["model_id"]
    result = generate(built.model_file(mid), fmnist_dir, built.manifest, tmp_path / "s", n=9,
                      n_reconstructions=4)
    names = {p.name for p in result.files}
    assert {f"sample-{i:04d}.png" for i in range(9)} <= names
    assert {"grid.png", "reconstructions.png", "interpolation.png"} <= names
    scale = VIEW_SIDE // 28
    for p in result.files:
        with Image.open(p) as img:
            img.verify()
    sample = np.asarray(Image.open(tmp_path / "s" / "sample-0000.png"))
    assert sample.shape == (28 * scale, 28 * scale) and sample.std() > 5  # enlarged, and not a flat grey
    with Image.open(tmp_path / "s" / "grid.png") as grid:
        assert grid.size == ((3 * 30 + 2) * scale,) * 2  # 3x3 tiles of 28 px with 2 px padding
    with Image.open(tmp_path / "s" / "reconstructions.png") as rec:
        assert rec.size == ((4 * 30 + 2) * scale, (2 * 30 + 2) * scale)  # inputs above reconstructions
    with Image.open(tmp_path / "s" / "interpolation.png") as strip:
        assert strip.size == ((12 * 30 + 2) * scale, 32 * scale)  # two ends plus 10 steps
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert len(meta["reconstructed"]) == 4 and len(meta["interpolated"]) == 2



def test_samples_that_fail_leave_no_samples_folder(built, fmnist_dir, tmp_path):
    """--between naming a file that cannot be read fails after the samples were drawn: nothing looks finished."""
    import pytest

    from vaepipe.errors import VaepipeError

    mid = json.loads(built.collection.read_text())["model_id"]
    with pytest.raises(VaepipeError, match="cannot read"):
        generate(built.model_file(mid), fmnist_dir, built.manifest, tmp_path / "s", n=4,
                 between=("no/such.png", "no/other.png"))
    assert not (tmp_path / "s").exists()


def test_fitted_latent_matches_the_collections_codes(built, fmnist_dir, tmp_path):
    """Samples are drawn with the mean and covariance of the collection's posterior means (every latent dimension),
    which for the search recipe (small KL weight) are far from the N(0, I) prior; the page shows the fitted grid."""
    import torch

    from vaepipe.generate import load_inputs, fit_latent, fitted_latents
    from vaepipe.ingest import read_ok
    from vaepipe.model import load_checkpoint

    mid = json.loads(built.collection.read_text())["model_id"]
    model = load_checkpoint(built.model_file(mid))
    images = load_inputs(fmnist_dir, read_ok(built.manifest)["path"].to_pylist(), model.config.spec)
    with torch.no_grad():
        codes = model.encode(images)[0].double()
    mean, chol = fit_latent(model, images)
    z = fitted_latents(mean, chol, 200_000, torch.Generator().manual_seed(0)).double()
    scale = torch.cov(codes.T).diagonal().max().item()  # sampling error grows with the codes' spread
    assert torch.allclose(z.mean(0), codes.mean(0), atol=0.02 * scale**0.5)
    assert torch.allclose(torch.cov(z.T), torch.cov(codes.T), atol=0.02 * scale)
    assert not torch.allclose(torch.cov(codes.T), torch.eye(len(mean), dtype=torch.float64), atol=0.1)

    result = generate(built.model_file(mid), fmnist_dir, built.manifest, tmp_path / "s", n=4)
    assert "grid-fitted.png" in {p.name for p in result.files}
    assert "grid-fitted.png" in result.page.read_text()

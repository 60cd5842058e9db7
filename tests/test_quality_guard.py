"""A cheap run of benchmarks/quality.py on real Fashion-MNIST: the VAE embedding must beat raw pixels.

The full benchmark (BENCHMARKS.md) trains on 60,000 images: precision@10 0.845 against 0.819 for pixels.
This is the smallest run measured where the default recipe clearly beats pixels on held-out queries (test
images against 10,000 training images): 10,000 images x 8 epochs, ~45 s on 2 cores, 0.803 vs 0.784
precision@10. Smaller runs do not beat pixels yet (3,000 x 2 epochs: 0.621 vs 0.744; 10,000 x 5: 0.786 vs
0.784, a tie), so a regression in training, embedding or search shows up here as a loss to pixels.
"""

import pytest

import quality

pytestmark = pytest.mark.slow


def test_vae_beats_raw_pixels_on_held_out_queries(tmp_path):
    result = quality.main(["--train-images", "10000", "--epochs", "8", "--db-images", "10000", "--query-images", "1000",
                           "--results-dir", str(tmp_path / "results"), "--export-root", str(tmp_path / "data")])
    r = result["retrieval"]
    vae, pixels, pca = r["VAE (32-d posterior mean)"], r["raw pixels (784-d)"], r["PCA-32"]
    assert vae["precision@10"] > pixels["precision@10"] and vae["mAP@10"] > pixels["mAP@10"]
    assert vae["precision@10"] > pca["precision@10"]  # same dimension: the VAE earns its place over a linear map
    assert vae["precision@10"] >= r["VAE, metric l2 (not the default)"]["precision@10"]  # the product's metric
    assert result["elbo"]["likelihood"] == "bernoulli" and result["elbo"]["elbo"] < 0
    assert result["elbo"]["active_units"] >= 24  # no posterior collapse
    pictures = {p.name for p in (tmp_path / "results").rglob("*.png")}
    assert pictures == {"samples.png", "samples-fitted.png", "reconstructions.png", "interpolation.png"}

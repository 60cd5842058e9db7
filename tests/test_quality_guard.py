"""A cheap run of benchmarks/quality.py on real Fashion-MNIST: guards the training and search recipe.

The full benchmark (BENCHMARKS.md) trains on 60,000 images and beats raw pixels (p@10 0.844 vs 0.819).
At test-suite cost (3,000 images, two epochs, ~10 s) no VAE of this size beats raw pixels yet (measured
with batch norm: 0.621 vs 0.744; one epoch 0.581; without batch norm one epoch gave 0.62 and 9,000 images
x 14 epochs 0.754 vs 0.766), so this guards what a regression would break: retrieval far above chance
and within reach of pixels, and cosine not behind L2, the measurement behind the product's default metric.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402


def test_quick_quality_run(tmp_path):
    result = quality.main(["--train-images", "3000", "--epochs", "2", "--db-images", "3000", "--query-images", "500",
                           "--results-dir", str(tmp_path / "results"), "--export-root", str(tmp_path / "data")])
    r = result["retrieval"]
    vae, pixels = r["VAE (32-d posterior mean)"], r["raw pixels (784-d)"]
    assert vae["precision@10"] > 0.5  # chance is 0.1
    assert vae["precision@10"] > 0.75 * pixels["precision@10"]
    assert vae["precision@10"] >= r["VAE, metric l2 (not the default)"]["precision@10"]  # they can tie this early
    assert result["elbo"]["likelihood"] == "bernoulli" and result["elbo"]["elbo"] < 0
    pictures = {p.name for p in (tmp_path / "results").rglob("*.png")}
    assert pictures == {"samples.png", "samples-fitted.png", "reconstructions.png", "interpolation.png"}

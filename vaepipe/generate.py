"""Stage 6: pictures of what the model learned -> samples/<run_id>/.

  sample-0000.png ...   images decoded from the prior N(0, I)
  grid.png              all prior samples in one grid
  grid-fitted.png       as many samples from a Gaussian fitted to the collection's latent means (when embedded)
  reconstructions.png   row 1: collection images, row 2: their reconstructions (decoded posterior means)
  interpolation.png     first image, decoded points on the line between the two latent means, second image
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from vaepipe.images import load_array, to_float
from vaepipe.index import load_vectors
from vaepipe.ingest import read_ok
from vaepipe.model import VAE, load_checkpoint
from vaepipe.report import write_samples_page
from vaepipe.store import VaepipeError, atomic_path, write_json

log = logging.getLogger("vaepipe")

VIEW_SIDE = 64  # small images are enlarged (nearest neighbour) to at least this many pixels per tile


@dataclass
class GenerateResult:
    samples_dir: Path
    files: list[Path]
    page: Path  # index.html showing them all


def save_png(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """Save a batch of [0, 1] images (B, C, H, W) as one grid PNG, enlarged so 28 px images are visible."""
    grid = make_grid(images.detach().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=0.5)
    arr = (grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    img = Image.fromarray(arr[:, :, 0] if images.shape[1] == 1 else arr, "L" if images.shape[1] == 1 else "RGB")
    scale = max(1, VIEW_SIDE // images.shape[-1])
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    with atomic_path(Path(path)) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


@torch.no_grad()
def reconstruct(model: VAE, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(model.decode(model.encode(x)[0]))


@torch.no_grad()
def interpolate(model: VAE, a: torch.Tensor, b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decoded points on the straight line between the posterior means of a and b (each (1, C, H, W))."""
    mu = model.encode(torch.cat([a, b]))[0]
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    return torch.sigmoid(model.decode((1 - t) * mu[0] + t * mu[1]))


def fit_latent(embeddings_dir: Path, manifest_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Cholesky factor of a full-covariance Gaussian over the collection's posterior means.

    Trained with a small KL weight (the search recipe), the means fill only part of N(0, I), so many prior
    samples decode to blobs; sampling where the data's codes actually are gives recognisable images
    ("ex-post density estimation", Ghosh et al. 2020).
    """
    mu = torch.from_numpy(load_vectors(embeddings_dir, manifest_path)[1]).double()
    mean = mu.mean(0)
    cov = torch.cov(mu.T) if len(mu) > 1 else torch.eye(mu.shape[1], dtype=torch.float64)
    cov = cov + 1e-6 * torch.eye(len(mean), dtype=torch.float64)  # a dimension with no spread must not break Cholesky
    return mean.float(), torch.linalg.cholesky(cov).float()


def fitted_latents(mean: torch.Tensor, chol: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n codes from N(mean, chol @ chol.T)."""
    return mean + torch.randn(n, len(mean), generator=generator) @ chol.T


def generate(model_path: Path, image_root: Path, manifest_path: Path, out_dir: Path, n: int = 64,
             seed: int = 0, n_reconstructions: int = 16, between: tuple[str, str] | None = None,
             embeddings_dir: Path | None = None) -> GenerateResult:
    if n <= 0:
        raise VaepipeError(f"the number of samples must be at least 1, got {n}")
    model = load_checkpoint(model_path)  # CPU: a few hundred decodes, not worth a device transfer
    spec = model.config.spec
    gen = torch.Generator().manual_seed(seed)
    out_dir = Path(out_dir)
    files: list[Path] = []

    samples = model.sample(n, generator=gen)
    for i, img in enumerate(samples):
        files.append(save_png(img[None], out_dir / f"sample-{i:04d}.png", nrow=1))
    files.append(save_png(samples, out_dir / "grid.png", nrow=math.ceil(math.sqrt(n))))
    if embeddings_dir is not None:
        with torch.no_grad():
            fitted = torch.sigmoid(model.decode(fitted_latents(*fit_latent(embeddings_dir, manifest_path), n, gen)))
        files.append(save_png(fitted, out_dir / "grid-fitted.png", nrow=math.ceil(math.sqrt(n))))

    ok = read_ok(manifest_path)["path"].to_pylist()
    picks = [ok[i] for i in sorted(np.random.default_rng(seed).choice(len(ok), min(n_reconstructions, len(ok)), replace=False))] if ok else []
    inputs = _load(image_root, picks, spec)
    if len(inputs):
        files.append(save_png(torch.cat([inputs, reconstruct(model, inputs)]), out_dir / "reconstructions.png", nrow=len(inputs)))
    ends = list(between) if between else picks[:2]
    if len(ends) == 2:
        a, b = _load(image_root, ends, spec).split(1)
        strip = torch.cat([a, interpolate(model, a, b), b])
        files.append(save_png(strip, out_dir / "interpolation.png", nrow=len(strip)))
    write_json({"model": str(model_path), "n": n, "seed": seed, "reconstructed": picks, "interpolated": ends,
                "files": [f.name for f in files]}, out_dir / "samples.json")
    page = write_samples_page(out_dir, files, {"model": Path(model_path).parent.name, "samples": n, "seed": seed,
                                                "likelihood": model.config.likelihood})
    log.info("generate: %d files in %s, page %s", len(files), out_dir, page)
    return GenerateResult(out_dir, files, page)


def _load(root: Path, rel_paths: list[str], spec) -> torch.Tensor:
    root = Path(root).resolve()
    arrays = []
    for rel in rel_paths:
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise VaepipeError(f"{rel} is outside the collection root {root}")
        arrays.append(torch.from_numpy(load_array(path, spec)))
    return to_float(torch.stack(arrays)) if arrays else torch.zeros(0)

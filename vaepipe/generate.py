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
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from vaepipe.batches import to_float
from vaepipe.images import ImageSpec, load_array
from vaepipe.ingest import read_ok
from vaepipe.model import VAE, load_checkpoint, model_id
from vaepipe.report import write_samples_page
from vaepipe.errors import VaepipeError
from vaepipe.store import METRICS_FILE, Workdir, atomic_path, file_path, new_run_id, read_json, write_json

log = logging.getLogger("vaepipe")

VIEW_SIDE = 64  # small images are enlarged (nearest neighbour) to at least this many pixels per tile


@dataclass
class GenerateResult:
    samples_dir: Path
    files: list[Path]
    page: Path  # index.html showing them all
    n: int = 0  # prior samples drawn

    def summary(self) -> dict:
        """What a person reads after a samples run (the CLI prints it, the flow makes it an artifact)."""
        return {"samples": self.n, "files": len(self.files), "samples dir": str(self.samples_dir), "page": str(self.page)}


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


@torch.no_grad()
def fit_latent(model: VAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Cholesky factor of a full-covariance Gaussian over the posterior means (every latent dimension, the
    searched code and the extra ones) of `images`, floats (B, C, H, W) in [0, 1].

    Trained with a small KL weight (the search recipe), the means fill only part of N(0, I), so many prior
    samples decode to blobs; sampling where the data's codes actually are gives recognisable images
    ("ex-post density estimation", Ghosh et al. 2020).
    """
    model.eval()
    mu = torch.cat([model.encode(b)[0] for b in images.split(512)]).double()
    mean = mu.mean(0)
    cov = torch.cov(mu.T) if len(mu) > 1 else torch.eye(mu.shape[1], dtype=torch.float64)
    cov = cov + 1e-6 * torch.eye(len(mean), dtype=torch.float64)  # a dimension with no spread must not break Cholesky
    return mean.float(), torch.linalg.cholesky(cov).float()


def fitted_latents(mean: torch.Tensor, chol: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n codes from N(mean, chol @ chol.T)."""
    return mean + torch.randn(n, len(mean), generator=generator) @ chol.T


FIT_IMAGES = 2_000  # collection images the fitted Gaussian is fitted to


def generate(model_path: Path, image_root: Path, manifest_path: Path, out_dir: Path, n: int = 64,
             seed: int = 0, n_reconstructions: int = 16, between: tuple[str, str] | None = None,
             fitted: bool = True) -> GenerateResult:
    if n <= 0:
        raise VaepipeError(f"the number of samples must be at least 1, got {n}")
    model = load_checkpoint(model_path)  # CPU: a few hundred decodes, not worth a device transfer
    spec = model.config.spec
    gen = torch.Generator().manual_seed(seed)
    # Written in a hidden folder and renamed when whole: a run that fails (a --between file that cannot be read)
    # leaves no samples folder that looks finished (Workdir.remove_stale_temporaries deletes it later).
    final_dir = Path(out_dir)
    out_dir = final_dir.with_name(f".{final_dir.name}.partial")
    files: list[Path] = []

    samples = model.sample(n, generator=gen)
    for i, img in enumerate(samples):
        files.append(save_png(img[None], out_dir / f"sample-{i:04d}.png", nrow=1))
    files.append(save_png(samples, out_dir / "grid.png", nrow=math.ceil(math.sqrt(n))))
    ok = read_ok(manifest_path)["path"].to_pylist()
    if fitted and ok:
        sample = [ok[i] for i in sorted(np.random.default_rng(seed).choice(len(ok), min(FIT_IMAGES, len(ok)), replace=False))]
        with torch.no_grad():
            decoded = torch.sigmoid(model.decode(fitted_latents(*fit_latent(model, load_inputs(image_root, sample, spec)), n, gen)))
        files.append(save_png(decoded, out_dir / "grid-fitted.png", nrow=math.ceil(math.sqrt(n))))

    picks = [ok[i] for i in sorted(np.random.default_rng(seed).choice(len(ok), min(n_reconstructions, len(ok)), replace=False))] if ok else []
    inputs = load_inputs(image_root, picks, spec)
    if len(inputs):
        files.append(save_png(torch.cat([inputs, reconstruct(model, inputs)]), out_dir / "reconstructions.png", nrow=len(inputs)))
    ends = list(between) if between else picks[:2]
    pair = load_inputs(image_root, ends, spec, strict=bool(between)) if len(ends) == 2 else []
    if len(pair) == 2:
        a, b = pair.split(1)
        strip = torch.cat([a, interpolate(model, a, b), b])
        files.append(save_png(strip, out_dir / "interpolation.png", nrow=len(strip)))
    write_json({"model": str(model_path), "n": n, "seed": seed, "reconstructed": picks, "interpolated": ends,
                "files": [f.name for f in files]}, out_dir / "samples.json")
    page = write_samples_page(out_dir, files, {"model": model_id(model), "samples": n, "seed": seed,
                                                "likelihood": model.config.likelihood, **_elbo(Path(model_path).parent)},
                              note=_what_to_expect(model.config))
    os.rename(out_dir, final_dir)
    files, page = [final_dir / f.name for f in files], final_dir / page.name
    log.info("generate: %d files in %s, page %s", len(files), final_dir, page)
    return GenerateResult(final_dir, files, page, n)


def generate_for(workdir: Workdir, n: int = 64, seed: int = 0, between: tuple[str, str] | None = None
                 ) -> GenerateResult:
    """`generate` with the collection's current model, into a new samples/<run_id>/ folder of the workdir."""
    collection = workdir.read_collection()
    return generate(workdir.model_file(collection["model_id"]), Path(collection["image_root"]), workdir.manifest,
                    workdir.samples_dir(new_run_id("samples")), n=n, seed=seed, between=between)


def _elbo(model_dir: Path) -> dict[str, object]:
    """The model's last validation ELBO from its metrics.json, if it was trained here."""
    try:
        last = read_json(model_dir / METRICS_FILE)["epochs"][-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}
    return {"validation ELBO (nats/image)": round(last["val_elbo"], 1), "of which KL": round(last["val_kl"], 1)}


def _what_to_expect(config) -> str:
    side = config.image_size
    kind = "colour" if config.channels == 3 else "grey"
    what = ("its code is trained first to find an image's copies: to ignore what people change when they copy a "
            "picture, brightness and colour among it. So these pictures keep the rough layout and light and dark of "
            "the collection's images, blurred, and little of their colour; not detail, text or faces. Use the "
            "similarity report to look at the collection itself." if config.invariance else
            "its code is a few dozen numbers, so these pictures show the collection's shapes and shading, not detail.")
    return (f"The model sees every image as {side}x{side} {kind} pixels, and {what} Reconstructions (top row the "
            f"input, bottom row what the code gives back) show how close it gets. Samples from the fitted Gaussian look "
            f"more like the collection than samples from the prior N(0, I).")


def load_inputs(root: Path, rel_paths: list[str], spec: ImageSpec, strict: bool = False) -> torch.Tensor:
    """The images as model inputs, floats (B, C, H, W), as the search sees them (train.load_images keeps alpha
    instead, for training to composite). A file that no longer loads (changed since it was indexed) is left out with
    a warning, or with strict=True (files the user named, which must lie inside the root) is an error."""
    root = Path(root).resolve()
    arrays = []
    for rel in rel_paths:
        path = Path(file_path(root, rel)).resolve()
        if not path.is_relative_to(root):
            raise VaepipeError(f"{rel} is outside the collection root {root}")
        try:
            arrays.append(torch.from_numpy(load_array(path, spec)))
        except Exception as e:  # Pillow raises anything on a bad file
            if strict:
                raise VaepipeError(f"cannot read {rel}: {e}") from None
            log.warning("generate: left out %s: %s", rel, e)
    return to_float(torch.stack(arrays)) if arrays else torch.zeros(0)

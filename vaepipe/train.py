"""Stage 2: train the VAE on the collection's usable images (or adopt a given checkpoint).

Writes models/<model_id>/{model.pt, config.json, metrics.json}; the model id is a hash of the weights.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from vaepipe.config import TrainConfig
from vaepipe.augment import composited, edited
from vaepipe.batches import iter_image_batches, to_float
from vaepipe.images import ALPHA_MODES, ImageSpec, is_colour
from vaepipe.ingest import read_ok
from vaepipe.model import (VAE, VAEConfig, default_device, exact_cudnn, load_checkpoint, model_id, nonfinite_weights,
                           save_checkpoint, save_torch)
from vaepipe.model_dir import TrainResult
from vaepipe.progress import Progress
from vaepipe.errors import VaepipeError
from vaepipe.store import (METRICS_FILE, MODEL_CONFIG_FILE, Workdir, file_path, fingerprint, kept_rows, release,
                           scratch_array, sha256_file, trim_heap, write_json)

log = logging.getLogger("vaepipe")

VAL_BLOCK = 512  # held-out images composited at once (_split)


def model_config_for(ok: pa.Table, cfg: TrainConfig) -> VAEConfig:
    """Fill in what the user left to the data: colour if any image has colour; for a collection of small opaque
    images (median side <= 32 px, mostly without transparency: Fashion-MNIST, say) 28 px inputs taken as they are
    framed, else 32 px inputs trimmed of their borders. Such images come framed by whoever made the data set:
    trimming them stretched each object to the square, and the object's shape was what told trousers from shirts.
    Icon themes are small too, but transparent, and drawn at several sizes with different padding: they are trimmed
    (BENCHMARKS.md, "Everyday copies")."""
    modes = ok["mode"].to_pylist()
    channels = cfg.channels or (3 if any(is_colour(m) for m in modes) else 1)
    sides = [max(w, h) for w, h in zip(ok["width"].to_pylist(), ok["height"].to_pylist())]
    opaque = sum(m in ALPHA_MODES for m in modes) < len(modes) / 2
    framed = bool(sides) and statistics.median(sides) <= 32 and opaque
    size = cfg.image_size or (28 if framed else 32)
    fit = cfg.fit or ("letterbox" if framed else "trim")
    invariance = cfg.invariance_for(fit)
    extra_dim = cfg.extra_dim if cfg.extra_dim is not None else (8 if invariance else 0)
    normalised_means = cfg.normalised_means if cfg.normalised_means is not None else invariance > 0
    standardised = cfg.standardised_input if cfg.standardised_input is not None else invariance > 0 and opaque
    return VAEConfig(image_size=size, channels=channels, fit=fit, latent_dim=cfg.latent_dim, extra_dim=extra_dim,
                     normalised_means=normalised_means, standardised_input=standardised,
                     invariance=invariance, width=cfg.width,
                     likelihood=cfg.likelihood, background=cfg.background, batch_norm=cfg.use_batch_norm(size))


def load_images(root: Path, rel_paths: list[str], spec: ImageSpec, workers: int, folder: Path | None = None
                ) -> np.ndarray:
    """Decode into one uint8 array (N, C + 1, H, W), the last plane alpha (images.to_array(alpha=True)): training
    composites each image onto backgrounds of its choice. Files that fail now (changed since ingest) are dropped.
    The array is a store.scratch_array in `folder`: training reads a batch at a time from it (`_batch`), so that
    memory does not grow with the folder."""
    paths = [file_path(root, p) for p in rel_paths]
    out = scratch_array((len(paths), spec.channels + 1, spec.size, spec.size), np.uint8, folder)
    keep = np.zeros(len(paths), bool)
    progress = Progress("load training images", len(paths))
    for batch, idx, errors in iter_image_batches(paths, spec, batch_size=512, workers=workers, alpha=True):
        ok = [j for j, e in enumerate(errors) if not e]
        out[[idx[j] for j in ok]] = batch[ok]
        keep[[idx[j] for j in ok]] = True
        release(out)
        progress.update(len(idx))
    progress.close()
    # What receiving the decoded batches freed stays in glibc's per-thread arenas, growing with the folder and kept
    # under training's peak; given back here (BENCHMARKS.md, "Memory").
    trim_heap()
    return out if keep.all() else kept_rows(out, keep)


def _batch(images: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
    """The images at `rows` (load_images' array) as a tensor of their own; what was read goes back to the file."""
    batch = torch.from_numpy(images[rows.numpy()])
    release(images)
    return batch


@torch.no_grad()
def evaluate(model: VAE, images: torch.Tensor, batch_size: int = 128) -> dict[str, float]:
    """ELBO, NLL and KL in nats per image (one z sample), and active units (Burda et al.: Var_x E[z_u] > 0.01).

    The batch size bounds the moment's memory (BENCHMARKS.md, "Memory"). The z samples come from torch's global
    generator, which training draws from too: on the CPU, batches of any multiple of 16 images draw the same noise,
    so the batch size does not change the model trained."""
    model.eval()
    device = next(model.parameters()).device
    sums = {"elbo": 0.0, "nll": 0.0, "kl": 0.0}
    mus = []
    for i in range(0, len(images), batch_size):
        x = to_float(images[i : i + batch_size]).to(device)
        out = model.loss(x, beta=1.0)
        for k in sums:
            sums[k] += out[k].item() * len(x)
        mus.append(model.encode(x)[0].cpu())
    n = max(len(images), 1)
    mu = torch.cat(mus) if mus else torch.zeros(1, model.config.latent_dim + model.config.extra_dim)
    active = int((mu.var(0) > 0.01).sum()) if len(mu) > 1 else 0
    return {**{k: v / n for k, v in sums.items()}, "active_units": active}


@exact_cudnn()  # on a GPU too, one seed trains one model
def train(root: Path, manifest_path: Path, workdir: Workdir, cfg: TrainConfig = TrainConfig(),
          workers: int = 2, device: torch.device | None = None) -> TrainResult:
    """Train a VAE on the manifest's usable images and publish it under its model id.

    The steps: the training set (one copy per content, in a scratch file) and its held-out split; a fresh model, or the
    state a killed run saved; epochs until the epoch count or the time budget, each checked for divergence or
    collapse (redone from the state before it at half the learning rate); publish.
    """
    device = device or default_device()
    ok = read_ok(manifest_path)
    vcfg = model_config_for(ok, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    rel_paths, images = _training_set(root, ok, vcfg, cfg, gen, workers, workdir.training_dir)
    tr, val = _split(images, vcfg, cfg, gen)
    log.info("train: %d images (%d train, %d held out), %s, device %s", len(images), len(tr), len(val), vcfg, device)

    epochs, batch_size = cfg.epochs_for(len(tr)), cfg.batch_for(len(tr))
    steps_per_epoch = max(1, (len(tr) + batch_size - 1) // batch_size)
    warmup_steps = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    log.info("train: %d epochs of %d images in batches of %d, invariance weight %g", epochs, len(tr), batch_size,
             vcfg.invariance)
    model, opt, sched = _fresh(vcfg, cfg, epochs * steps_per_epoch, device)
    untrained_elbo = evaluate(model, val)["elbo"]  # an epoch that ends below this has diverged
    # Training state is saved after an epoch every cfg.checkpoint_minutes, under a key of (data, recipe): a killed
    # run resumes there. (Saved after every epoch, a small collection's many short epochs spent half their time saving.)
    state_path = workdir.training_dir / fingerprint(*rel_paths, json.dumps(asdict(cfg), sort_keys=True)) / "state.pt"
    run = _resume(state_path, _Run(model, opt, sched, gen), vcfg, cfg, epochs * steps_per_epoch, device)
    start, last_save = time.monotonic() - run.elapsed, time.monotonic()
    while len(run.metrics) < epochs:
        if cfg.max_minutes is not None and run.metrics and time.monotonic() - start > cfg.max_minutes * 60:
            log.info("train: time budget of %.1f min reached after epoch %d", cfg.max_minutes, len(run.metrics))
            break
        row = _epoch(run, images, tr, batch_size, cfg, device, warmup_steps)
        ev = evaluate(run.model, val)
        # Batch norm on the means keeps the posterior from collapsing (BN-VAE); its running statistics can make the
        # held-out means look inactive for an epoch while the model is fine, so only divergence counts there.
        if _broke(ev, untrained_elbo, run.was_active and not vcfg.normalised_means) and run.restarts < cfg.max_restarts:
            run.go_back(ev, cfg.max_restarts)
            continue
        run.keep(row, ev)
        log.info("train: epoch %d/%d  loss %.2f  invariance %.3f  val ELBO %.2f nats/image (%s)  KL %.2f  active units %d/%d  %.1fs",
                 len(run.metrics), epochs, row["train_loss"], row["train_invariance"], ev["elbo"], vcfg.likelihood,
                 ev["kl"], ev["active_units"], vcfg.latent_dim + vcfg.extra_dim, row["seconds"])
        if time.monotonic() - last_save >= cfg.checkpoint_minutes * 60:
            save_torch({**run.good, "metrics": run.metrics, "elapsed": time.monotonic() - start}, state_path)
            last_save = time.monotonic()
            log.info("train: saved training state after epoch %d", len(run.metrics))
    model, metrics = run.model, run.metrics
    if metrics and metrics[-1]["val_active_units"] == 0:
        log.warning("train: the model ignores its input (no active latent units): its embeddings will not tell images "
                    "apart. Are the images all alike? Try a lower --lr or --beta, or more --epochs.")
    model.eval()
    result = _publish(model.cpu(), workdir, metrics, {"trained_on": str(root), "train_config": asdict(cfg),
                                                        "images": len(images), "held_out": len(val)})
    shutil.rmtree(state_path.parent, ignore_errors=True)
    trim_heap()  # training's freed blocks would stay with the process through embedding, and its exit
    return result


def _training_set(root: Path, ok: pa.Table, vcfg: VAEConfig, cfg: TrainConfig, gen: torch.Generator, workers: int,
                  folder: Path | None = None) -> tuple[list[str], np.ndarray]:
    """The images training sees: one copy per distinct content (a duplicate on both sides of the split would flatter
    validation), a seeded sample of at most cfg.max_images, decoded into a scratch file in `folder` (load_images).
    Returns their paths and the images."""
    seen: dict[str, str] = {}
    for path, sha in zip(ok["path"].to_pylist(), ok["sha256"].to_pylist()):
        seen.setdefault(sha, path)
    rel_paths = list(seen.values())
    if len(rel_paths) < 2:
        raise VaepipeError(f"need at least 2 distinct usable images to train a model, found {len(rel_paths)}; "
                           "add images or pass --model CHECKPOINT")
    if len(rel_paths) > cfg.max_images:
        pick = torch.randperm(len(rel_paths), generator=gen)[: cfg.max_images].tolist()
        rel_paths = [rel_paths[i] for i in sorted(pick)]
    return rel_paths, load_images(root, rel_paths, vcfg.spec, workers, folder)


def _split(images: np.ndarray, vcfg: VAEConfig, cfg: TrainConfig, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the training rows of `images`, the held-out images): training reads its originals with alpha from the file
    (it composites them itself), validation sees the images as embedding does, composited onto the background."""
    order = torch.randperm(len(images), generator=gen)
    n_val = max(1, int(len(images) * cfg.val_fraction))
    # A block at a time: composited whole, the held-out tenth of 30,000 images took 130 MB more for a moment, in
    # floats, than the 9 MB it keeps (BENCHMARKS.md, "Memory").
    val = torch.empty((n_val, images.shape[1] - 1, *images.shape[2:]), dtype=torch.uint8)
    for start in range(0, n_val, VAL_BLOCK):
        rows = order[start:min(start + VAL_BLOCK, n_val)]
        val[start:start + len(rows)] = composited(_batch(images, rows), vcfg.background).mul_(255).round_()
    return order[n_val:], val


@dataclass
class _Run:
    """A training run's moving parts: model, optimiser, schedule and generator, the step count, the epochs kept so
    far (metrics rows), the restarts used, and `good`: the state at the end of the last kept epoch, to go back to
    when an epoch breaks the model and to save for a resume (_snapshot)."""
    model: VAE
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    step: int = 0
    metrics: list[dict] = field(default_factory=list)
    elapsed: float = 0.0  # seconds spent by the runs this one resumed
    restarts: int = 0
    good: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metrics:
            self.restarts = self.metrics[-1].get("restarts", 0)
        self.good = _snapshot(self.model, self.opt, self.sched, self.gen)

    @property
    def was_active(self) -> bool:
        """Some epoch kept so far had active latent units (a collapse can only happen after that)."""
        return any(row["val_active_units"] > 0 for row in self.metrics)

    def go_back(self, ev: dict[str, float], max_restarts: int) -> None:
        """The epoch just run broke the model: back to the state before it, at half the learning rate (_halve_lr)."""
        self.restarts += 1
        log.warning("train: epoch %d broke the model (val ELBO %.2f, %d active units): diverged or collapsed; going "
                    "back to the state before it and continuing at half the learning rate (restart %d of %d)",
                    len(self.metrics) + 1, ev["elbo"], ev["active_units"], self.restarts, max_restarts)
        self.step = _restore(self.good, self.model, self.opt, self.sched, self.gen)
        _halve_lr(self.opt)
        self.good = _snapshot(self.model, self.opt, self.sched, self.gen)

    def keep(self, row: dict, ev: dict[str, float]) -> None:
        """The epoch just run is good: its metrics row, and its end state as the one to go back to."""
        self.metrics.append({"epoch": len(self.metrics) + 1, **row, "restarts": self.restarts,
                             "peak_lr": self.opt.param_groups[0]["max_lr"], **{f"val_{k}": v for k, v in ev.items()}})
        self.good = _snapshot(self.model, self.opt, self.sched, self.gen)


def _resume(state_path: Path, fresh: _Run, vcfg: VAEConfig, cfg: TrainConfig, total_steps: int,
            device: torch.device) -> _Run:
    """Go on from the state a killed run saved, if any, else from the fresh run."""
    if not state_path.exists():
        return fresh
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        step = _restore(state, fresh.model, fresh.opt, fresh.sched, fresh.gen)
        log.info("train: resuming after epoch %d from %s", len(state["metrics"]), state_path)
        return _Run(fresh.model, fresh.opt, fresh.sched, fresh.gen, step, state["metrics"], state["elapsed"])
    except Exception as e:  # a damaged state file costs the epochs it held, nothing else
        log.warning("train: cannot resume from %s (%s); starting again", state_path, e)
        return _Run(*_fresh(vcfg, cfg, total_steps, device), fresh.gen)


def _epoch(run: _Run, images: np.ndarray, tr: torch.Tensor, batch_size: int, cfg: TrainConfig, device: torch.device,
           warmup_steps: int) -> dict:
    """One pass over the training rows `tr` of `images` in a seeded order; returns its metrics row so far (run.step
    moves on)."""
    model, opt, sched, gen = run.model, run.opt, run.sched, run.gen
    model.train()
    t0, total, invariance, beta = time.monotonic(), 0.0, 0.0, cfg.beta
    for batch_idx in torch.randperm(len(tr), generator=gen).split(batch_size):
        beta = cfg.beta * min(1.0, (run.step + 1) / warmup_steps)  # KL warm-up against early collapse
        out = _loss(model, _batch(images, tr[batch_idx]), beta, cfg, gen, device)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        sched.step()
        total += out["loss"].item() * len(batch_idx)
        invariance += out["invariance"].item() * len(batch_idx) if "invariance" in out else 0.0
        run.step += 1
    seconds = time.monotonic() - t0
    return {"train_loss": total / max(len(tr), 1), "train_invariance": invariance / max(len(tr), 1),
            "beta": beta, "seconds": seconds, "images_per_second": len(tr) / seconds}


def _halve_lr(opt: torch.optim.Optimizer) -> None:
    """After a broken epoch: a learning-rate spike can throw the encoder into a state where it ignores its input
    (its active units fall to none; seen on 64 px colour icons at lr 4e-3) and it never comes back, or blow the loss
    up. Training goes on from the state before the epoch at half the learning rate, schedule included."""
    for group in opt.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= 0.5


def _loss(model: VAE, batch: torch.Tensor, beta: float, cfg: TrainConfig, gen: torch.Generator, device: torch.device
          ) -> dict[str, torch.Tensor]:
    """The VAE's loss on a batch as embedding sees it and, weighted per input value by the invariance the model is
    trained for (VAEConfig.invariance), the margin between the searched codes of the batch and of an everyday edit
    of each image (augment.edited, model.invariance_loss)."""
    x = composited(batch, model.config.background).to(device)
    out = model.loss(x, beta=beta)
    weight = model.config.invariance
    if weight:
        code = out["mu"][:, : model.config.latent_dim]
        out["invariance"] = model.invariance_loss(code, model.embed(edited(batch, model.config.background, gen).to(device)),
                                                  cfg.temperature)
        out["loss"] = out["loss"] + weight * x[0].numel() * out["invariance"]
    return out


def _broke(ev: dict[str, float], untrained_elbo: float, was_active: bool) -> bool:
    """The epoch diverged (ELBO not finite or clearly below the untrained model's), or collapsed the posterior: the
    encoder used some latent units before and none now. (Units that are not active *yet* early on are normal, and so
    is an ELBO that wobbles around the untrained one while the decoder still learns the mean image.)"""
    diverged = not math.isfinite(ev["elbo"]) or ev["elbo"] < untrained_elbo - 0.01 * abs(untrained_elbo)
    return diverged or (was_active and ev["active_units"] == 0)


def _snapshot(model: VAE, opt: torch.optim.Optimizer, sched, gen: torch.Generator) -> dict:
    """Everything training needs to go on from here: kept in memory for restarts, saved to disk for resumes.

    On a GPU the reparameterisation noise comes from the GPU's own generator, not the CPU's: without its state a
    resumed run drew other noise and ended as another model (tests/test_reindex.py, on an H100).
    """
    device = next(model.parameters()).device
    return copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                          "device_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                          "step": sched.last_epoch})


def _restore(snapshot: dict, model: VAE, opt: torch.optim.Optimizer, sched, gen: torch.Generator) -> int:
    """Put training back to a snapshot; returns its step count."""
    model.load_state_dict(snapshot["model"])
    opt.load_state_dict(snapshot["optimizer"])
    sched.load_state_dict(snapshot["scheduler"])
    gen.set_state(snapshot["generator"])
    torch.set_rng_state(snapshot["torch_rng"])
    device = next(model.parameters()).device
    if device.type == "cuda" and snapshot.get("device_rng") is not None:  # None: saved by a run on the CPU
        torch.cuda.set_rng_state(snapshot["device_rng"], device)
    return snapshot["step"]


def _fresh(vcfg: VAEConfig, cfg: TrainConfig, total_steps: int, device: torch.device):
    """A seeded new model, its Adam optimiser and one-cycle schedule."""
    torch.manual_seed(cfg.seed)
    model = VAE(vcfg).to(device)
    lr = cfg.peak_lr(vcfg.image_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.1)
    return model, opt, sched


def adopt_checkpoint(checkpoint: Path, manifest_path: Path, workdir: Workdir, cfg: TrainConfig = TrainConfig()) -> TrainResult:
    """Use a given checkpoint instead of training: loaded weights-only, copied under its own model id.

    Refused when its input (channels, size) is not what this collection calls for, unless the user
    asked for that input explicitly (cfg.channels / cfg.image_size).
    """
    model = load_checkpoint(checkpoint)
    wanted = model_config_for(read_ok(manifest_path), cfg)
    have = model.config
    if (have.channels, have.image_size) != (wanted.channels, wanted.image_size):
        raise VaepipeError(
            f"checkpoint {checkpoint} takes {have.channels}-channel {have.image_size}x{have.image_size} input, but this "
            f"collection calls for {wanted.channels}-channel {wanted.image_size}x{wanted.image_size}; pass --channels "
            f"{have.channels} --image-size {have.image_size} to use it anyway, or train a model for these images")
    return _publish(model, workdir, [], {"adopted_from": str(Path(checkpoint).resolve())})


def _publish(model: VAE, workdir: Workdir, metrics: list[dict], provenance: dict) -> TrainResult:
    mid = model_id(model)
    d = workdir.model_dir(mid)
    save_checkpoint(model, workdir.model_file(mid))
    # What lets a re-index read this model without torch (model_dir.model_config); only for weights it would load.
    checked = {} if nonfinite_weights(model.state_dict()) else {"checkpoint_sha256": sha256_file(workdir.model_file(mid))}
    write_json({"model_id": mid, "vae": asdict(model.config), **checked, **provenance}, d / MODEL_CONFIG_FILE)
    write_json({"likelihood": model.config.likelihood, "units": "nats per image", "epochs": metrics}, d / METRICS_FILE)
    log.info("train: model %s saved to %s", mid, d)
    return TrainResult(d, mid, metrics)

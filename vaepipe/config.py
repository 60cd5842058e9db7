"""Every knob of a run, in one typed place. The CLI and the Prefect flows both build these.

Defaults are the recipe measured in BENCHMARKS.md; they work without any flag.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from vaepipe.errors import VaepipeError
from vaepipe.images import ImageSpec


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, which `taskset` or a container's cpuset narrows."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _refuse(problems: list[str]) -> None:
    """Each config checks its settings where it is made (__post_init__): a ValueError names every bad one."""
    if problems:
        raise ValueError("; ".join(problems))


@dataclass
class IngestConfig:
    include_hidden: bool = False  # dot-files and dot-directories are skipped unless asked for
    # Globs matched against each file's path relative to the folder ('*' also matches '/'): matching files are not
    # read, as if they were not there (e.g. "*.json", "thumbnails/*").
    exclude: tuple[str, ...] = ()
    max_pixels: int = 64_000_000  # larger declared sizes are rejected before decoding (decompression bombs)
    follow_symlinks_outside: bool = False  # symlinked files whose target is outside the root are errors
    workers: int = field(default_factory=usable_cores)  # processes that hash and decode files: one per core
    checkpoint_every: int = 5_000  # files; a killed ingest resumes from its last checkpoint

    def __post_init__(self) -> None:
        _refuse([f"{name} must be at least 1, not {value}" for name, value in
                 (("workers", self.workers), ("max pixels", self.max_pixels), ("checkpoint every", self.checkpoint_every))
                 if value < 1])


@dataclass
class TrainConfig:
    # Model shape. image_size / channels / fit of None are chosen from the data (see train.model_config_for).
    image_size: int | None = None
    channels: int | None = None
    fit: Literal["trim", "letterbox"] | None = None  # how an image becomes the square input (images.ImageSpec)
    latent_dim: int = 32  # the searched code
    # Latent dimensions the decoder uses and search does not, and batch norm on the posterior means
    # (model.VAEConfig); None: 8 and on when training for invariance, else 0 and off.
    extra_dim: int | None = None
    normalised_means: bool | None = None
    # The encoder sees each image minus its mean, over its standard deviation (model.VAEConfig). None: on for folders
    # trained for copies that are mostly opaque (photos, whose darker and brighter copies it finds again), off for
    # transparent ones (it cost icons more than it gave) and small framed images (BENCHMARKS.md, tuning table).
    standardised_input: bool | None = None
    width: int = 16  # 16 matches 32 on search quality at ~2.7x the speed on CPU (BENCHMARKS.md)
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    batch_norm: bool | None = None  # after every convolution; None: see use_batch_norm()
    # Grey level behind transparent pixels and in the letterbox bars. Clip art and icons flattened on white (the
    # common way to drop transparency) are found again best on 255 (BENCHMARKS.md, "Everyday copies").
    background: int = 255
    # Invariance to everyday edits (augment.edited): weight per input value of the margin term between the searched
    # codes of images and of their edited copies (model.invariance_loss; 0: a plain VAE), and its temperature.
    # None: see invariance_for().
    invariance: float | None = None
    temperature: float = 0.1
    # Optimisation.
    # None: as many epochs as the collection needs (epochs_for), so that training time follows the collection's size.
    epochs: int | None = None
    max_minutes: float | None = None  # stop after the epoch that crosses this wall-clock budget
    batch_size: int | None = None  # None: batch_for
    lr: float | None = None  # peak of the one-cycle schedule; None: see peak_lr()
    beta: float = 0.05  # KL weight; < 1 trades sample quality for sharper search (see BENCHMARKS.md)
    warmup_epochs: float = 1.0  # KL weight ramps 0 -> beta linearly over this many epochs
    val_fraction: float = 0.1
    max_images: int = 60_000  # train on a seeded sample of at most this many images (decoded once, 4 KB each)
    seed: int = 0
    min_epochs: int = 11  # with epochs=None (see epochs_for)
    image_passes: int = 60_000  # with epochs=None (see epochs_for)
    checkpoint_minutes: float = 0.5  # training state is saved at most this often: a killed run loses at most this much
    max_restarts: int = 3  # an epoch that collapses the model is redone from the state before it, at half the lr
    retrain_when_grown: float | None = None  # re-index retrains once the collection grew by this fraction (0.5 = +50%)

    def __post_init__(self) -> None:
        """Settings that cannot train are refused where they are made, before anything is read or written."""
        problems = []
        if self.image_size is not None and not (8 <= self.image_size <= 512 and self.image_size % 4 == 0):
            problems.append(f"image size must be a multiple of 4 from 8 to 512 (e.g. 28, 32, 64), not {self.image_size}")
        if not 1 <= self.latent_dim <= 1024:
            problems.append(f"latent dimension must be from 1 to 1024, not {self.latent_dim}")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be at least 1, not {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch size must be at least 1, not {self.batch_size}")
        if not (math.isfinite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0):
            problems.append(f"checkpoint minutes must be 0 or more, not {self.checkpoint_minutes}")
        if not 0 <= self.background <= 255:
            problems.append(f"background must be a grey level from 0 to 255, not {self.background}")
        if self.invariance is not None and not (math.isfinite(self.invariance) and self.invariance >= 0):
            problems.append(f"invariance must be 0 or more, not {self.invariance}")
        if self.seed < 0:
            problems.append(f"seed must be at least 0, not {self.seed}")
        _refuse(problems)

    def use_batch_norm(self, image_size: int) -> bool:
        """Batch norm gave +0.007 precision@10 on 28 px Fashion-MNIST, but on 64 px colour icons it trained far slower
        (val ELBO -4,722 vs -1,736 nats after 4 epochs); the 32 px recipe for photos and icons was tuned without it.
        So it is on for the small-image size only (BENCHMARKS.md)."""
        return self.batch_norm if self.batch_norm is not None else image_size <= 28

    def invariance_for(self, fit: str) -> float:
        """On trimmed inputs (photos, art, icons) training for invariance took edited copies of photos from 0.40 to
        0.94 recall@1; on small framed images (Fashion-MNIST) it cost 0.02 precision@10, as it pushes apart the
        nearest images of one kind (BENCHMARKS.md, "Everyday copies"). So it is on for trimmed inputs only."""
        return self.invariance if self.invariance is not None else (0.03 if fit == "trim" else 0.0)

    def epochs_for(self, n_train: int) -> int:
        """A small collection needs many passes over it to learn its images apart (600 images x 11 epochs was
        ~50 optimisation steps); a large one needs a few. At least min_epochs, and at least image_passes images."""
        return self.epochs if self.epochs is not None else max(self.min_epochs, math.ceil(self.image_passes / max(n_train, 1)))

    def batch_for(self, n_train: int) -> int:
        """Small batches for small collections (more steps in the same time), up to 128 for large ones."""
        return self.batch_size if self.batch_size is not None else int(min(128, max(32, n_train // 100)))

    def peak_lr(self, image_size: int) -> float:
        """4e-3 won on 28 px Fashion-MNIST; 64 px colour inputs were unstable there (collapse at 4e-3, spikes at
        2e-3, smooth at 1e-3 on a folder of icons); the 32 px recipe was tuned at 1e-3. See BENCHMARKS.md."""
        if self.lr is not None:
            return self.lr
        return 4e-3 if image_size <= 28 else 1e-3


@dataclass
class EmbedConfig:
    batch_size: int = 256
    # DataLoader worker processes that decode images and, on CPU, encode them, one torch thread each (see
    # embed.encode_files): one per core keeps every core busy with the same work.
    workers: int = field(default_factory=usable_cores)
    part_rows: int = 50_000  # rows per Parquet part (= per shard task); bounds memory whatever the folder size
    threads: int | None = None  # torch threads encoding in the main process (GPU, or workers=0); None: the cores the workers leave

    def __post_init__(self) -> None:
        _refuse([f"{name} must be at least {least}, not {value}" for name, value, least in
                 (("batch size", self.batch_size, 1), ("workers", self.workers, 0),
                  ("shard size (part rows)", self.part_rows, 1),
                  ("threads", 1 if self.threads is None else self.threads, 1)) if value < least])


@dataclass
class IndexConfig:
    kind: Literal["auto", "flat", "hnsw", "ivf", "ivf-disk"] = "auto"
    metric: Literal["cosine", "l2"] = "cosine"  # cosine = inner product of centred, normalised means
    exact_below: int = 50_000  # "auto" uses exact search below this many vectors, HNSW above
    # ... and above this many, IVF built part by part with its lists on disk ("ivf-disk"): building HNSW holds every
    # vector and the graph in RAM (~1 GB per million at 32-d, BENCHMARKS.md), ivf-disk one part and a sample.
    in_ram_below: int = 10_000_000
    target_recall: float = 0.95  # the search-time knob (efSearch / nprobe) is raised until recall@10 reaches this
    recall_sample: int = 1_000  # queries used to measure recall against exact search

    def __post_init__(self) -> None:
        problems = [f"{name} must be {what}, not {value!r}" for name, value, what, ok in (
            ("index kind", self.kind, "one of auto, flat, hnsw, ivf, ivf-disk", self.kind in ("auto", "flat", "hnsw", "ivf", "ivf-disk")),
            ("metric", self.metric, "cosine or l2", self.metric in ("cosine", "l2")),
            ("target recall", self.target_recall, "more than 0 and at most 1", 0 < self.target_recall <= 1),
            ("recall sample", self.recall_sample, "at least 1", self.recall_sample >= 1)) if not ok]
        _refuse(problems)


@dataclass
class BuildConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    index: IndexConfig = field(default_factory=IndexConfig)

    def excluding(self, globs: Sequence[str]) -> BuildConfig:
        """This config with more paths left out (IngestConfig.exclude): a flow's `exclude` parameter."""
        return replace(self, ingest=replace(self.ingest, exclude=self.ingest.exclude + tuple(globs)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VAEConfig:
    image_size: int = 28
    channels: int = 1
    latent_dim: int = 32  # the code search uses: the first latent_dim dimensions of the posterior mean
    # More latent dimensions that the decoder uses and search does not: room for what everyday edits change
    # (brightness, colour, framing), which the searched code is trained to ignore but a reconstruction needs.
    extra_dim: int = 0
    # Batch norm on the posterior means (without a learned scale; Zhu et al. 2020, "BN-VAE"): the means keep a spread
    # that the decoder can read. Without it, training for invariance shrank them until the decoder ignored them.
    normalised_means: bool = False
    # The encoder sees each image standardised (minus its mean, over its standard deviation, over all its pixels):
    # a copy made brighter, darker or of other contrast is then the same input. The decoder still draws the image.
    standardised_input: bool = False
    # Weight of the invariance term training used (TrainConfig.invariance_for; 0: a plain VAE). Recorded because it
    # sets what a similarity means: duplicates.calibrate_threshold reads it.
    invariance: float = 0.0
    width: int = 32  # channels after the first convolution; doubles at each downsampling
    likelihood: str = "bernoulli"  # "bernoulli" | "gaussian"
    background: int = 0  # part of the model: inputs must be preprocessed the same way at query time
    fit: str = "trim"  # how an image becomes the square input (images.ImageSpec); part of the model too
    # Batch norm after every convolution (training picks it by input size: TrainConfig.use_batch_norm). In eval
    # mode it uses running statistics, so an image's embedding never depends on the rest of its batch.
    batch_norm: bool = True

    @property
    def spec(self) -> ImageSpec:
        return ImageSpec(self.image_size, self.channels, self.background, self.fit)

    def downsamplings(self) -> tuple[int, int]:
        """Halve the side while it is even and above 7: 28 -> 14 -> 7, 64 -> 32 -> 16 -> 8 -> 4."""
        n, side = 0, self.image_size
        while side % 2 == 0 and side > 7:
            side //= 2
            n += 1
        return n, side

    def __post_init__(self) -> None:
        problems = []
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, not {self.channels}")
        # Bounds before any allocation: a damaged or hostile config claiming a huge size is refused, not built.
        if not (1 <= self.latent_dim <= 1024 and 0 <= self.extra_dim <= 1024 and 1 <= self.width <= 512
                and 8 <= self.image_size <= 512):
            problems.append(f"sizes out of range: latent_dim {self.latent_dim} (1-1024), extra_dim {self.extra_dim} "
                            f"(0-1024), width {self.width} (1-512), image_size {self.image_size} (8-512)")
        elif self.downsamplings()[0] < 2:
            problems.append(f"image_size must be divisible by 4 (e.g. 28, 32, 64), not {self.image_size}")
        if not 0 <= self.background <= 255:
            problems.append(f"background must be a grey level from 0 to 255, not {self.background}")
        if not (math.isfinite(self.invariance) and self.invariance >= 0):
            problems.append(f"invariance must be 0 or more, not {self.invariance}")
        if self.fit not in ("trim", "letterbox"):
            problems.append(f"fit must be 'trim' or 'letterbox', not {self.fit!r}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            problems.append(f"likelihood must be 'bernoulli' or 'gaussian', not {self.likelihood!r}")
        _refuse(problems)


def vae_config(source: object, config: dict) -> VAEConfig:
    """The VAEConfig a checkpoint's (or its model directory's) config dict describes; a VaepipeError naming `source`
    if it does not describe one."""
    known = {f.name for f in fields(VAEConfig)}
    # Checkpoints from before batch norm, and from before inputs were trimmed, have no such keys.
    config = {"batch_norm": False, "fit": "letterbox", **config}
    try:
        vae = VAEConfig(**{k: v for k, v in config.items() if k in known})
    except (TypeError, ValueError) as e:
        raise VaepipeError(f"checkpoint {source} does not match the VAE it describes: {e}") from None
    return vae

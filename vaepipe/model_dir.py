"""A model's directory (models/<model_id>/), read without torch where it can be: the model's config, and whether the
collection's current model can be reused.

A re-index that changes nothing needs only the model's config (the latent size, for planning) and the knowledge that
its checkpoint still loads; reading the checkpoint takes importing torch, most of such a command's time. So when a
model is published, its config.json records the checkpoint's sha256 beside the config of its weights (checked
finite); a checkpoint whose bytes still hash to that is the checkpoint recorded, and its config is read from
config.json. Anything else (no record, other bytes, a damaged config.json) is read from the checkpoint with torch,
and, when the index build reads it, recorded for the next time (a model directory from before the record).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from vaepipe.config import TrainConfig, VAEConfig, vae_config
from vaepipe.errors import VaepipeError
from vaepipe.store import MODEL_CONFIG_FILE, MODEL_FILE, Workdir, read_json, sha256_file, write_json

log = logging.getLogger("vaepipe")


@dataclass
class TrainResult:
    model_dir: Path
    model_id: str
    metrics: list[dict]  # one dict per epoch; empty for an adopted checkpoint


def model_config(model_dir: Path, keep_record: bool = False) -> VAEConfig:
    """The VAEConfig of the checkpoint in `model_dir`; a VaepipeError if the checkpoint does not load.

    keep_record: where the checkpoint had to be read with torch and loaded (a model directory published before the
    record existed, or one whose record is stale), record it in config.json, so that the next read needs no torch.
    Only the index build asks for this: it is the one writer of a workdir's models.
    """
    checkpoint = Path(model_dir) / MODEL_FILE
    record, sha = None, None
    try:
        record = read_json(Path(model_dir) / MODEL_CONFIG_FILE)
        sha = sha256_file(checkpoint)
        if record["checkpoint_sha256"] == sha:
            return vae_config(checkpoint, record["vae"])
    except (OSError, ValueError, KeyError, TypeError, VaepipeError):
        pass  # no usable record of this checkpoint: it is read and checked itself
    from vaepipe.model import load_checkpoint  # torch, imported only here: a re-index of a recorded model needs none

    config = load_checkpoint(checkpoint).config  # finite weights that load, or a VaepipeError
    if keep_record and isinstance(record, dict) and sha is not None:
        try:
            write_json({**record, "vae": asdict(config), "checkpoint_sha256": sha}, Path(model_dir) / MODEL_CONFIG_FILE)
            log.info("train: recorded model %s's checkpoint in its %s", Path(model_dir).name, MODEL_CONFIG_FILE)
        except OSError as e:  # only a later read's speed is lost
            log.warning("train: could not record the checkpoint in %s (%s)", model_dir, e)
    return config


def reusable_model(workdir: Workdir, n_images: int, cfg: TrainConfig = TrainConfig()) -> TrainResult | None:
    """The collection's current model, unless it no longer loads or the collection outgrew it (cfg.retrain_when_grown)."""
    if not workdir.collection.exists():
        return None
    try:
        mid = workdir.read_collection()["model_id"]
        d = workdir.model_dir(mid)
        model_config(d, keep_record=True)
    except (VaepipeError, KeyError) as e:
        log.warning("train: the collection's model cannot be reused (%s); training a new one", e)
        return None
    try:
        trained_on = read_json(d / MODEL_CONFIG_FILE).get("images")
    except (OSError, ValueError, AttributeError) as e:  # the checkpoint loads: a damaged side file is no reason to retrain
        log.warning("train: %s is unreadable (%s); reusing model %s as it is", d / MODEL_CONFIG_FILE, type(e).__name__, mid)
        trained_on = None
    if cfg.retrain_when_grown is not None and trained_on and n_images > trained_on * (1 + cfg.retrain_when_grown):
        log.info("train: the collection grew from %d to %d images since model %s was trained; training a new one",
                 trained_on, n_images, mid)
        return None
    return TrainResult(d, mid, [])

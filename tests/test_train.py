"""Training on real images: held-out metrics per epoch, reproducible by seed, artefacts saved."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import FAST_TRAIN, write_mixed
from vaepipe.config import IngestConfig, TrainConfig
from vaepipe.embed import PosteriorMean
from vaepipe.ingest import ingest, read_ok
from vaepipe.model import load_checkpoint, model_id
from vaepipe.errors import VaepipeError
from vaepipe.store import Workdir
from vaepipe.train import adopt_checkpoint, model_config_for, train


def test_training_writes_weights_config_and_metrics(built):
    collection = json.loads(built.collection.read_text())
    d = built.model_dir(collection["model_id"])
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["likelihood"] == "bernoulli" and metrics["units"] == "nats per image"
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, FAST_TRAIN.epochs + 1))
    assert all(e["val_elbo"] < 0 and e["val_kl"] > 0 for e in epochs)
    assert epochs[-1]["val_elbo"] > epochs[0]["val_elbo"]  # it learned something
    assert epochs[-1]["val_active_units"] >= 8
    model = load_checkpoint(d / "model.pt")
    assert model_id(model) == collection["model_id"] == d.name
    config = json.loads((d / "config.json").read_text())
    assert config["vae"]["image_size"] == 28 and config["vae"]["channels"] == 1
    assert config["held_out"] == 60 and config["images"] == 600


def test_same_seed_same_model(fmnist_dir, built, tmp_path):
    wd = Workdir(tmp_path)
    ingest(fmnist_dir, wd.manifest, IngestConfig(workers=1))
    again = train(fmnist_dir, wd.manifest, wd, FAST_TRAIN, workers=0)
    assert again.model_id == json.loads(built.collection.read_text())["model_id"]


def test_training_and_encoding_run_cudnn_in_float32_with_deterministic_algorithms(fmnist_dir, tmp_path):
    """cuDNN's defaults on a GPU (TF32 convolutions, algorithms that add in any order) gave two models from one seed
    and embeddings ~2e-4 from the CPU's on an H100 (BENCHMARKS.md, "On a GPU machine"). A CPU has no cuDNN, so this
    checks the settings every forward pass of training and of encoding sees, and that they are put back after."""
    seen = set()

    def record(module, args, output):
        seen.add((torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark))

    wd = Workdir(tmp_path)
    ingest(fmnist_dir, wd.manifest, IngestConfig(workers=1))
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        trained = train(fmnist_dir, wd.manifest, wd, replace(FAST_TRAIN, epochs=1), workers=0)
        assert seen == {(False, True, False)}
        seen.clear()
        PosteriorMean(load_checkpoint(trained.model_dir / "model.pt"))(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
        assert seen == {(False, True, False)}
    finally:
        handle.remove()
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.deterministic


def test_time_budget_stops_training(fmnist_dir, built, tmp_path):
    wd = Workdir(tmp_path)
    result = train(fmnist_dir, built.manifest, wd, TrainConfig(epochs=50, max_minutes=0.0001), workers=0)
    assert len(result.metrics) == 1


def test_training_state_is_saved_at_most_every_checkpoint_minutes(fmnist_dir, built, tmp_path, caplog, monkeypatch):
    saved = []
    monkeypatch.setattr("vaepipe.train.save_torch", lambda state, path: saved.append(len(state["metrics"])))
    cfg = TrainConfig(epochs=3, batch_size=64, max_images=200, seed=0)
    train(fmnist_dir, built.manifest, Workdir(tmp_path / "a"), cfg, workers=0)
    assert saved == []  # three short epochs: under half a minute, nothing to lose
    train(fmnist_dir, built.manifest, Workdir(tmp_path / "b"), replace(cfg, checkpoint_minutes=0), workers=0)
    assert saved == [1, 2, 3]
    with pytest.raises(ValueError, match="checkpoint minutes"):  # refused where the config is made
        replace(cfg, checkpoint_minutes=-1)


def test_model_shape_follows_the_data(tmp_path, fmnist_dir, built):
    write_mixed(tmp_path / "imgs")
    ingest(tmp_path / "imgs", tmp_path / "m.parquet", IngestConfig(workers=1))
    ok = read_ok(tmp_path / "m.parquet")
    cfg = model_config_for(ok, TrainConfig())
    assert cfg.channels == 3 and cfg.image_size == 32 and cfg.fit == "trim"  # colour files, median side 60
    assert cfg.invariance > 0 and cfg.extra_dim == 8 and cfg.normalised_means  # trained to find copies
    assert cfg.standardised_input  # mostly opaque: a darker or brighter copy is the same input
    assert not model_config_for(ok, TrainConfig(standardised_input=False)).standardised_input
    assert not cfg.batch_norm  # the 32 px copies recipe was tuned without it (BENCHMARKS.md)
    small = model_config_for(ok, TrainConfig(channels=1, image_size=28))
    assert small.channels == 1 and small.batch_norm
    assert not model_config_for(ok, TrainConfig(image_size=28, batch_norm=False)).batch_norm
    plain = model_config_for(ok, TrainConfig(invariance=0.0))
    assert plain.invariance == 0 and plain.extra_dim == 0 and not plain.normalised_means and not plain.standardised_input

    # Small opaque images (Fashion-MNIST) are taken as framed, with the plain recipe.
    fm = model_config_for(read_ok(built.manifest), TrainConfig())
    assert (fm.image_size, fm.channels, fm.fit, fm.invariance, fm.extra_dim) == (28, 1, "letterbox", 0.0, 0)
    assert not fm.standardised_input

    # Icons are small too, but transparent: trimmed, and trained to find copies.
    icons = tmp_path / "icons"
    icons.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        rgba = np.zeros((24, 24, 4), np.uint8)
        rgba[4:20, 4:20] = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8) | np.uint8(128)
        Image.fromarray(rgba, "RGBA").save(icons / f"{i}.png")
    ingest(icons, tmp_path / "icons.parquet", IngestConfig(workers=1))
    ic = model_config_for(read_ok(tmp_path / "icons.parquet"), TrainConfig())
    assert (ic.image_size, ic.fit) == (32, "trim") and ic.invariance > 0
    assert not ic.standardised_input  # transparent: standardising cost the icons (BENCHMARKS.md)


def test_epochs_and_batches_follow_the_collection():
    cfg = TrainConfig()
    assert cfg.epochs_for(600) == 100 and cfg.epochs_for(54_000) == cfg.min_epochs
    assert cfg.batch_for(600) == 32 and cfg.batch_for(5_000) == 50 and cfg.batch_for(54_000) == 128
    assert TrainConfig(epochs=3, batch_size=7).epochs_for(600) == 3 and TrainConfig(batch_size=7).batch_for(600) == 7


def test_too_few_images_is_a_clear_error(tmp_path):
    write_mixed(tmp_path / "imgs")
    for p in (tmp_path / "imgs").rglob("*"):
        if p.is_file() and p.name != "grey.png":
            p.unlink()
    wd = Workdir(tmp_path / "wd")
    ingest(tmp_path / "imgs", wd.manifest, IngestConfig(workers=1))
    with pytest.raises(VaepipeError, match="at least 2"):
        train(tmp_path / "imgs", wd.manifest, wd, FAST_TRAIN, workers=0)


def test_adopting_a_checkpoint_keeps_its_id(built, tmp_path):
    mid = json.loads(built.collection.read_text())["model_id"]
    adopted = adopt_checkpoint(built.model_file(mid), built.manifest, Workdir(tmp_path))
    assert adopted.model_id == mid and (adopted.model_dir / "model.pt").exists()


def test_checkpoint_for_other_input_is_refused(built, tmp_path):
    mid = json.loads(built.collection.read_text())["model_id"]
    write_mixed(tmp_path / "colour")
    ingest(tmp_path / "colour", tmp_path / "m.parquet", IngestConfig(workers=1))
    with pytest.raises(VaepipeError, match="1-channel 28x28 input, but this collection calls for 3-channel 32x32"):
        adopt_checkpoint(built.model_file(mid), tmp_path / "m.parquet", Workdir(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_a_collapsing_epoch_is_redone_at_a_lower_learning_rate(fmnist_dir, built, tmp_path):
    # lr 1.0 throws the encoder off (NaN or no active unit) in the first epoch; the guard goes back and halves it.
    wd = Workdir(tmp_path)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1.0, max_restarts=10)
    result = train(fmnist_dir, built.manifest, wd, cfg, workers=0)
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    first, last = result.metrics[0], result.metrics[-1]
    assert first["restarts"] >= 1 and first["peak_lr"] == 1.0 / 2 ** first["restarts"]
    assert last["val_active_units"] > 0 and last["val_elbo"] > -1e4


def test_held_out_images_are_composited_a_block_at_a_time_as_they_would_be_whole(tmp_path, monkeypatch):
    """The held-out split is composited a block at a time (memory), and is what compositing it whole gave: real
    Tango icons with transparency, blocks of 7 against one block."""
    from vaepipe import train as train_module
    from vaepipe.augment import composited
    from vaepipe.config import VAEConfig

    root = Path("/usr/share/icons/Tango/32x32")
    names = sorted(str(p.relative_to(root)) for p in root.glob("*/*.png"))[:400]
    vcfg = VAEConfig()
    images = train_module.load_images(root, names, vcfg.spec, workers=0, folder=tmp_path)
    cfg = TrainConfig()
    monkeypatch.setattr(train_module, "VAL_BLOCK", 7)
    rows, val = train_module._split(images, vcfg, cfg, torch.Generator().manual_seed(3))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))
    n_val = len(images) - len(rows)
    assert n_val == int(len(images) * cfg.val_fraction) > 7 and torch.equal(rows, order[n_val:])
    whole = composited(torch.from_numpy(images[order[:n_val].numpy()]), vcfg.background).mul_(255).round_()
    assert val.dtype == torch.uint8 and torch.equal(val, whole.to(torch.uint8))
    assert (images[:, -1] < 255).any()  # icons with transparency: the compositing matters


def test_evaluating_in_smaller_batches_draws_the_same_noise(tmp_path):
    """evaluate's z samples come from torch's global generator, which training draws from too: its batch size
    (chosen for memory) must not change the noise drawn, else it would change the model trained. Real Tango icons,
    a seeded untrained model, batches of 16, 128 and all at once."""
    from vaepipe import train as train_module
    from vaepipe.config import VAEConfig
    from vaepipe.model import VAE

    root = Path("/usr/share/icons/Tango/32x32")
    names = sorted(str(p.relative_to(root)) for p in root.glob("*/*.png"))[:300]
    vcfg = VAEConfig(channels=3, extra_dim=8, normalised_means=True, standardised_input=True)
    images = train_module.load_images(root, names, vcfg.spec, workers=0, folder=tmp_path)
    _, val = train_module._split(images, vcfg, TrainConfig(val_fraction=0.9), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = VAE(vcfg)
    runs = []
    for batch_size in (len(val), 128, 16):
        torch.manual_seed(1)
        ev = train_module.evaluate(model, val, batch_size=batch_size)
        runs.append((ev, torch.rand(4)))  # what training would draw next
    assert len(val) % 128 and len(val) % 16  # a short last batch
    for ev, after in runs[1:]:
        assert ev["elbo"] == pytest.approx(runs[0][0]["elbo"], rel=1e-6)
        assert ev["active_units"] == runs[0][0]["active_units"]
        assert torch.equal(after, runs[0][1])

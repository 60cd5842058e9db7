"""The VAE is the standard one, and its checkpoints load safely."""

import pickle

import pytest
import torch

from vaepipe.model import VAE, VAEConfig, folded, load_checkpoint, model_id, save_checkpoint
from vaepipe.errors import VaepipeError


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_shapes(size, channels):
    model = VAE(VAEConfig(image_size=size, channels=channels, latent_dim=8, width=8))
    x = torch.rand(4, channels, size, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, 8)
    assert model.decode(mu).shape == x.shape
    assert model.sample(3).shape == (3, channels, size, size)


@pytest.mark.parametrize("size,channels", [(28, 1), (64, 3)])
def test_folding_batch_norm_keeps_the_function_and_leaves_the_original_alone(size, channels):
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=size, channels=channels, latent_dim=8, width=8))
    model.train()
    for _ in range(3):  # give the batch norms running statistics that are not the identity
        model.loss(torch.rand(16, channels, size, size) * 0.5 + 0.3)
    model.eval()
    fast = folded(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(5, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(fast.encode(x)[0], model.encode(x)[0], atol=1e-4)
        z = torch.randn(5, 8)
        assert torch.allclose(fast.decode(z), model.decode(z), atol=1e-4)


def test_checkpoints_from_before_batch_norm_still_load(tmp_path):
    old = VAE(VAEConfig(latent_dim=8, width=8, batch_norm=False))
    obj = {"config": {k: v for k, v in vars(old.config).items() if k != "batch_norm"}, "state_dict": old.state_dict()}
    torch.save(obj, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.config.batch_norm is False and model_id(loaded) == model_id(old)


def test_bad_config_is_refused_where_it_is_made_naming_every_bad_setting():
    with pytest.raises(ValueError, match="divisible by 4"):
        VAEConfig(image_size=30)
    with pytest.raises(ValueError, match="likelihood.*poisson"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="channels must be 1 or 3.*background must be .* not 300"):
        VAEConfig(channels=2, background=300)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_loss_is_nll_plus_beta_kl_and_elbo_is_its_negative_at_beta_1(likelihood):
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=8, width=8, likelihood=likelihood))
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(1)
    out = model.loss(x, beta=0.3)
    assert torch.allclose(out["loss"], out["nll"] + 0.3 * out["kl"], atol=1e-4)
    assert torch.allclose(out["elbo"], -(out["nll"] + out["kl"]), atol=1e-4)
    assert out["kl"] >= 0
    assert torch.allclose(out["kl_per_dim"].sum(), out["kl"], atol=1e-4)


def test_kl_is_zero_exactly_at_the_prior():
    model = VAE(VAEConfig(latent_dim=4, width=8))
    mu, logvar = torch.zeros(2, 4), torch.zeros(2, 4)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    assert torch.all(kl == 0)
    with torch.no_grad():  # and the model's own KL grows as the posterior leaves the prior
        model.mu.bias.fill_(3.0)
        assert model.loss(torch.rand(2, 1, 28, 28))["kl"] > 4 * 0.5 * 9 * 0.9


def test_reparameterisation_samples_in_training_and_uses_the_mean_in_eval():
    model = VAE(VAEConfig(latent_dim=8, width=8))
    x = torch.rand(2, 1, 28, 28)
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    # gradients reach the encoder through the sample
    model.train()
    model.loss(x)["loss"].backward()
    assert model.logvar.weight.grad is not None and model.logvar.weight.grad.abs().sum() > 0


def test_checkpoint_round_trip_keeps_the_weights_and_id(tmp_path):
    model = VAE(VAEConfig(image_size=32, channels=3, latent_dim=8, width=8, batch_norm=False))
    save_checkpoint(model, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert model_id(loaded) == model_id(model)
    assert loaded.config == model.config


class Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"config": {}, "state_dict": {}, "payload": Boom()}, tmp_path / "evil.pt")
    with pytest.raises(VaepipeError, match="weights-only"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(VaepipeError):
        load_checkpoint(tmp_path / "plain.pkl")
    assert not (tmp_path / "PWNED").exists()


def test_truncated_or_mismatched_checkpoint_is_refused(tmp_path):
    model = VAE(VAEConfig(latent_dim=8, width=8))
    save_checkpoint(model, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(VaepipeError, match="corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"config": {"latent_dim": 16, "width": 8}, "state_dict": model.state_dict()}, tmp_path / "lie.pt")
    # The config alone reads as a VAE; that its weights are another's shows when they are loaded.
    with pytest.raises(VaepipeError, match="(?s)does not match.*size mismatch"):
        load_checkpoint(tmp_path / "lie.pt")
    torch.save({"config": {"channels": 2}, "state_dict": model.state_dict()}, tmp_path / "two.pt")
    with pytest.raises(VaepipeError, match="does not match.*channels must be 1 or 3"):
        load_checkpoint(tmp_path / "two.pt")


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    """A damaged model (NaN or infinite weights) would embed every image as NaN and answer every query with nothing."""
    model = VAE(VAEConfig(image_size=28, channels=1, latent_dim=8, width=8))
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            model.mu.weight[0, 0] = bad
        save_checkpoint(model, tmp_path / f"{bad}.pt")
        with pytest.raises(VaepipeError, match="not finite numbers .* mu.weight"):
            load_checkpoint(tmp_path / f"{bad}.pt")


def test_a_checkpoint_claiming_a_huge_model_is_refused_before_it_is_built(tmp_path):
    model = VAE(VAEConfig(image_size=28, channels=1, latent_dim=8, width=8))
    save_checkpoint(model, tmp_path / "m.pt")
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    obj["config"]["latent_dim"] = 10_000_000  # would allocate gigabytes of linear layers
    torch.save(obj, tmp_path / "huge.pt")
    with pytest.raises(VaepipeError, match="sizes out of range: latent_dim 10000000"):
        load_checkpoint(tmp_path / "huge.pt")


def test_a_standardised_input_makes_a_darker_or_brighter_copy_the_same_input():
    torch.manual_seed(0)
    x, other = torch.rand(4, 3, 32, 32) * 0.8, torch.rand(4, 3, 32, 32) * 0.8
    # (Not exactly the same: the constant added to the deviation, which keeps a flat image finite, does not scale.)
    plain = VAE(VAEConfig(image_size=32, channels=3, batch_norm=False)).eval()
    standardised = VAE(VAEConfig(image_size=32, channels=3, batch_norm=False, standardised_input=True)).eval()
    standardised.load_state_dict(plain.state_dict())  # the same weights: only the input differs
    with torch.no_grad():
        for model, most, least in ((standardised, 0.0, 0.15), (plain, 0.3, 10.0)):
            apart = (model.embed(other) - model.embed(x)).norm(dim=1)  # how far different images are
            for scale in (0.7, 1.2):
                moved = (model.embed(x * scale) - model.embed(x)).norm(dim=1)
                assert (moved >= most * apart).all() and (moved <= least * apart).all(), (moved / apart)
        assert torch.isfinite(standardised.embed(torch.full((1, 3, 32, 32), 0.5))).all()  # a flat image stays finite


def test_a_model_dir_s_record_stands_for_its_checkpoint_only_while_the_checkpoint_is_unchanged(built_copy):
    """config.json records the published checkpoint's sha256 (read without torch by a re-index); a checkpoint replaced
    or damaged since is read itself, and a damaged record costs nothing."""
    import json

    from vaepipe.model_dir import model_config
    from vaepipe.store import sha256_file

    d = built_copy.model_dir(json.loads(built_copy.collection.read_text())["model_id"])
    record = json.loads((d / "config.json").read_text())
    assert record["checkpoint_sha256"] == sha256_file(d / "model.pt")
    assert model_config(d) == load_checkpoint(d / "model.pt").config
    original = (d / "model.pt").read_bytes()

    other = VAE(VAEConfig(image_size=28, channels=1, latent_dim=record["vae"]["latent_dim"] // 2, width=8))
    save_checkpoint(other, d / "model.pt")
    assert model_config(d) == other.config  # not the record's
    (d / "model.pt").write_bytes(original[: len(original) // 2])
    with pytest.raises(VaepipeError, match="corrupt"):
        model_config(d)
    (d / "model.pt").write_bytes(original)
    (d / "config.json").write_text("{")
    assert model_config(d) == load_checkpoint(d / "model.pt").config

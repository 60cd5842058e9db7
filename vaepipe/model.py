"""The convolutional VAE, in one file: network, loss, checkpoint I/O. Its VAEConfig is in vaepipe.config, where a
re-index that reuses a model reads it without importing torch.

    encoder: x -> (mu, logvar)          q(z|x) = N(mu, diag(exp(logvar)))
    sample:  z = mu + exp(logvar / 2) * eps,   eps ~ N(0, I)   (the reparameterisation trick)
    decoder: z -> logits of p(x|z)
    loss:    NLL(x | z) + beta * KL(q(z|x) || N(0, I)),  in nats per image

Two likelihoods, named in every report:
  "bernoulli": pixel intensities in [0, 1] scored with binary cross-entropy (the usual choice for
               MNIST-like data; a proper likelihood only for binary pixels, so its ELBO is comparable
               between our own runs, not to papers using dequantised Gaussians);
  "gaussian":  N(x; sigmoid(logits), sigma^2) with one learned sigma for all pixels (sigma-VAE),
               which keeps reconstruction and KL in balance without hand-tuning beta.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaepipe.config import VAEConfig, vae_config
from vaepipe.errors import VaepipeError
from vaepipe.store import atomic_path


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        n_down, side = config.downsamplings()
        widths = [min(config.width * 2**i, config.width * 8) for i in range(n_down)]

        def act(c: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(c), nn.SiLU()] if config.batch_norm else [nn.SiLU()]

        enc: list[nn.Module] = []
        c_in = config.channels
        for c in widths:
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), *act(c), nn.Conv2d(c, c, 3, padding=1), *act(c)]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.flat_shape = (widths[-1], side, side)
        flat = widths[-1] * side * side
        z_dim = config.latent_dim + config.extra_dim
        hidden = 8 * z_dim
        self.to_hidden = nn.Sequential(nn.Linear(flat, hidden), nn.SiLU())
        self.mu = nn.Linear(hidden, z_dim)
        self.mu_norm = nn.BatchNorm1d(z_dim, affine=False) if config.normalised_means else nn.Identity()
        self.logvar = nn.Linear(hidden, z_dim)

        self.from_latent = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.SiLU(), nn.Linear(hidden, flat), nn.SiLU()
        )
        dec: list[nn.Module] = []
        rev = widths[::-1]
        for i, c in enumerate(rev):
            c_out = rev[i + 1] if i + 1 < len(rev) else config.width
            dec += [nn.Conv2d(c, c, 3, padding=1), *act(c), nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1), *act(c_out)]
        dec += [nn.Conv2d(config.width, config.channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        # sigma-VAE: one learned log standard deviation shared by all pixels (unused for bernoulli).
        self.log_sigma = nn.Parameter(torch.zeros(()), requires_grad=config.likelihood == "gaussian")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of every latent dimension, (B, latent_dim + extra_dim) each."""
        if self.config.standardised_input:
            flat = x.flatten(1)
            x = (x - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 0.05)
        h = self.to_hidden(self.encoder(x))
        return self.mu_norm(self.mu(h)), self.logvar(h).clamp(-12.0, 8.0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """What search uses: the posterior mean's first latent_dim dimensions, (B, latent_dim)."""
        return self.encode(x)[0][:, : self.config.latent_dim]

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a sample of q(z|x) that gradients pass through."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z); `torch.sigmoid` of them is the mean image in [0, 1]."""
        return self.decoder(self.from_latent(z).view(-1, *self.flat_shape))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterise(mu, logvar) if self.training else mu), mu, logvar

    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, in nats."""
        if self.config.likelihood == "bernoulli":
            per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            sigma = self.log_sigma.exp()
            per_pixel = 0.5 * ((x - torch.sigmoid(logits)) / sigma) ** 2 + self.log_sigma + 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(1)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        """Mean over the batch of: loss to minimise, NLL, KL, and the ELBO (always at beta = 1); and the batch's
        posterior means."""
        mu, logvar = self.encode(x)
        nll = self.nll(self.decode(self.reparameterise(mu, logvar)), x)
        kl_per_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
        kl = kl_per_dim.sum(1)
        return {"loss": (nll + beta * kl).mean(), "nll": nll.mean(), "kl": kl.mean(),
                "elbo": -(nll + kl).mean(), "kl_per_dim": kl_per_dim.mean(0), "mu": mu}

    def invariance_loss(self, code: torch.Tensor, code_edited: torch.Tensor, temperature: float,
                        margin: float = 2.0) -> torch.Tensor:
        """How far a batch's searched codes (embed) are from picking out their own edited copies, by search's own
        similarity (cosine on centred codes): a softplus hinge on the gap between each copy's similarity to its own
        original and to the most similar other image of the batch, in units of the temperature, both ways (each
        original should also pick out its own copy). Only the hardest other image counts, as only it can outrank
        the original at rank 1; an InfoNCE over the whole batch was measured below it (BENCHMARKS.md). Each side is
        centred on its own batch mean: centred on the originals' mean, a shift that an edit gives every copy
        (brighter, say) sent the copies of a batch one way, and training made the loss worse, not better."""
        a = F.normalize(code - code.mean(0, keepdim=True), dim=1)
        b = F.normalize(code_edited - code_edited.mean(0, keepdim=True), dim=1)
        logits = b @ a.T / temperature
        own = logits.diagonal()
        others = logits - 1e4 * torch.eye(len(a), device=a.device)
        return 0.5 * (F.softplus(others.max(1).values - own + margin).mean()
                      + F.softplus(others.max(0).values - own + margin).mean())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior, as means in [0, 1]."""
        device = self.mu.weight.device
        z = torch.randn(n, self.config.latent_dim + self.config.extra_dim, generator=generator).to(device)
        return torch.sigmoid(self.decode(z))


def folded(model: VAE) -> VAE:
    """An eval-mode copy for inference, each batch norm folded into the layer before it, weights channels-last.

    The same function to float rounding, with fewer ops per image. Also, on CPU, a model with unfolded batch norm
    grew the embedding process by ~6 KB per image when fed DataLoader batches (330 MB over a 50,000-image part),
    while the folded one stays flat (BENCHMARKS.md, throughput). Channels-last weights make oneDNN run the
    convolutions in its own layout (inputs need no conversion): faster for 64 px colour encoders, the same for 28 px
    grey, means equal to ~1e-6 (BENCHMARKS.md, benchmarks/encoder_variants.py). Its state_dict is not a checkpoint: save the original.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_weights

    model = copy.deepcopy(model).eval()
    if isinstance(model.mu_norm, nn.BatchNorm1d):
        norm, ones = model.mu_norm, torch.ones_like(model.mu_norm.running_mean)
        model.mu.weight, model.mu.bias = fuse_linear_bn_weights(model.mu.weight, model.mu.bias, norm.running_mean,
                                                                norm.running_var, norm.eps, ones, torch.zeros_like(ones))
        model.mu_norm = nn.Identity()
    for name in ("encoder", "decoder"):
        layers, out = list(getattr(model, name)), []
        for layer in layers:
            if isinstance(layer, nn.BatchNorm2d) and out and isinstance(out[-1], (nn.Conv2d, nn.ConvTranspose2d)):
                out[-1] = fuse_conv_bn_eval(out[-1], layer, transpose=isinstance(out[-1], nn.ConvTranspose2d))
            else:
                out.append(layer)
        setattr(model, name, nn.Sequential(*out))
    return model.to(memory_format=torch.channels_last)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def exact_cudnn() -> Iterator[None]:
    """cuDNN's convolutions in full float32 with deterministic algorithms, inside the block (or a decorated call).

    By default, on an Ampere or later GPU, cuDNN rounds a float32 convolution's inputs to TF32 (10 bits of mantissa)
    and may pick algorithms that add in any order. On an H100 that made embeddings differ from the CPU's by ~2e-4,
    and two trainings with one seed gave two different models (BENCHMARKS.md, "On a GPU machine"). With this
    network's size the exact path costs no time that shows. No effect on a CPU.
    """
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        yield


def model_id(model: VAE) -> str:
    """A hash of the weights: the same weights always get the same id, whoever trained them."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(model: VAE, path: Path) -> None:
    """Plain tensors and a dict of primitives: loadable with weights_only=True, no code inside."""
    save_torch({"config": asdict(model.config), "state_dict": model.state_dict()}, Path(path))


def save_torch(obj: dict, path: Path) -> None:
    """torch.save, atomically, serialised in memory first: torch's writer reports a full disk as "file write
    failed", a plain write as OSError(ENOSPC), "No space left on device" (checkpoints are a few MB)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> VAE:
    """Load weights safely: never unpickles objects; refuses files that are not complete vaepipe checkpoints."""
    obj = _read_checkpoint(path)
    config = vae_config(path, obj["config"])
    try:
        model = VAE(config)
        model.load_state_dict(obj["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as e:
        raise VaepipeError(f"checkpoint {path} does not match the VAE it describes: {e}") from None
    return model.to(device).eval()


def _read_checkpoint(path: Path) -> dict:
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VaepipeError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise VaepipeError(f"checkpoint {path} is corrupt or not a weights-only file: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict) or not isinstance(obj.get("state_dict"), dict):
        raise VaepipeError(f"checkpoint {path} is not a vaepipe checkpoint (expected 'config' and 'state_dict')")
    # A model with NaN or infinite weights embeds every image as NaN: the index builds, and queries return nothing.
    broken = nonfinite_weights(obj["state_dict"])
    if broken:
        raise VaepipeError(f"checkpoint {path} has weights that are not finite numbers (NaN or infinite) in "
                           f"{', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}: it is damaged; train a new model")
    return obj


def nonfinite_weights(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinite values."""
    return [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]

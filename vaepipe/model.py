"""The convolutional VAE, in one file: config, network, loss, checkpoint I/O.

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
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaepipe.images import ImageSpec


@dataclass
class VAEConfig:
    image_size: int = 28
    channels: int = 1
    latent_dim: int = 32
    width: int = 32  # channels after the first convolution; doubles at each downsampling
    likelihood: str = "bernoulli"  # "bernoulli" | "gaussian"
    background: int = 0  # part of the model: inputs must be preprocessed the same way at query time
    # Batch norm after every convolution (training picks it by input size: TrainConfig.use_batch_norm). In eval
    # mode it uses running statistics, so an image's embedding never depends on the rest of its batch.
    batch_norm: bool = True

    @property
    def spec(self) -> ImageSpec:
        return ImageSpec(self.image_size, self.channels, self.background)

    def downsamplings(self) -> tuple[int, int]:
        """Halve the side while it is even and above 7: 28 -> 14 -> 7, 64 -> 32 -> 16 -> 8 -> 4."""
        n, side = 0, self.image_size
        while side % 2 == 0 and side > 7:
            side //= 2
            n += 1
        return n, side

    def validate(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', not {self.likelihood!r}")
        if self.downsamplings()[0] < 2:
            raise ValueError(f"image_size must be divisible by 4 (e.g. 28, 32, 64), not {self.image_size}")


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        config.validate()
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
        hidden = 8 * config.latent_dim
        self.to_hidden = nn.Sequential(nn.Linear(flat, hidden), nn.SiLU())
        self.mu = nn.Linear(hidden, config.latent_dim)
        self.logvar = nn.Linear(hidden, config.latent_dim)

        self.from_latent = nn.Sequential(
            nn.Linear(config.latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, flat), nn.SiLU()
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
        h = self.to_hidden(self.encoder(x))
        return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z); `torch.sigmoid` of them is the mean image in [0, 1]."""
        return self.decoder(self.from_latent(z).view(-1, *self.flat_shape))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        return self.decode(z), mu, logvar

    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, in nats."""
        if self.config.likelihood == "bernoulli":
            per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            sigma = self.log_sigma.exp()
            per_pixel = 0.5 * ((x - torch.sigmoid(logits)) / sigma) ** 2 + self.log_sigma + 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(1)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        """Mean over the batch of: loss to minimise, NLL, KL, and the ELBO (always at beta = 1)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        nll = self.nll(self.decode(z), x)
        kl_per_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
        kl = kl_per_dim.sum(1)
        return {"loss": (nll + beta * kl).mean(), "nll": nll.mean(), "kl": kl.mean(),
                "elbo": -(nll + kl).mean(), "kl_per_dim": kl_per_dim.mean(0)}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior, as means in [0, 1]."""
        device = self.mu.weight.device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        return torch.sigmoid(self.decode(z))


def folded(model: VAE) -> VAE:
    """An eval-mode copy for inference, each batch norm folded into the convolution before it, weights channels-last.

    The same function to float rounding, with fewer ops per image. Also, on CPU, a model with unfolded batch norm
    grew the embedding process by ~6 KB per image when fed DataLoader batches (330 MB over a 50,000-image part),
    while the folded one stays flat (BENCHMARKS.md, throughput). Channels-last weights make oneDNN run the
    convolutions in its own layout (inputs need no conversion): 64 px colour encoders +19-46%, 28 px grey within noise,
    means equal to ~1e-6 (benchmarks/encoder_variants.py). Its state_dict is not a checkpoint: save the original.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
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
    from vaepipe.store import atomic_path

    with atomic_path(Path(path)) as tmp:
        torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> VAE:
    """Load weights safely: never unpickles objects; refuses files that are not complete vaepipe checkpoints."""
    from vaepipe.store import VaepipeError

    obj = _read_checkpoint(path)
    config = _config_of(path, obj)
    try:
        model = VAE(config)
        model.load_state_dict(obj["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as e:
        raise VaepipeError(f"checkpoint {path} does not match the VAE it describes: {e}") from None
    return model.to(device).eval()


def checkpoint_config(path: Path) -> VAEConfig:
    """The VAEConfig a checkpoint describes, without building the model and loading weights into it (~12 ms
    against ~40 for load_checkpoint): planning needs only the latent size."""
    return _config_of(path, _read_checkpoint(path))


def _read_checkpoint(path: Path) -> dict:
    from vaepipe.store import VaepipeError

    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VaepipeError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise VaepipeError(f"checkpoint {path} is corrupt or not a weights-only file: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict) or not isinstance(obj.get("state_dict"), dict):
        raise VaepipeError(f"checkpoint {path} is not a vaepipe checkpoint (expected 'config' and 'state_dict')")
    return obj


def _config_of(path: Path, obj: dict) -> VAEConfig:
    from vaepipe.store import VaepipeError

    known = {f.name for f in fields(VAEConfig)}
    config = {"batch_norm": False, **obj["config"]}  # checkpoints from before batch norm have no such key
    try:
        vae = VAEConfig(**{k: v for k, v in config.items() if k in known})
        vae.validate()
    except (TypeError, ValueError) as e:
        raise VaepipeError(f"checkpoint {path} does not match the VAE it describes: {e}") from None
    return vae

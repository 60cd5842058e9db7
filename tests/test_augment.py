"""The everyday edits training learns to see through, and the term that teaches it."""

import numpy as np
import torch
from PIL import Image

from vaepipe.augment import composited, edited
from vaepipe.images import ImageSpec, to_array
from vaepipe.model import VAE, VAEConfig


def _icons(n: int = 8, size: int = 32) -> torch.Tensor:
    """Transparent 'icons' with their alpha plane, as training holds them: (n, 4, size, size) uint8."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[6:26, 6:26, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
        rgba[6:26, 6:26, 3] = 255
        rgba[12:20, 12:20, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
        out.append(to_array(Image.fromarray(rgba, "RGBA"), ImageSpec(size, 3, 255, fit="letterbox"), alpha=False))
    colour = torch.from_numpy(np.stack(out))
    alpha = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    alpha[:, :, 6:26, 6:26] = 255
    return torch.cat([colour, alpha], 1)


def test_composited_is_what_embedding_sees():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 40, 40, 255)
    rgba[0:4, 0:32] = (10, 200, 10, 128)  # half transparent
    img = Image.fromarray(rgba, "RGBA")
    with_alpha = torch.from_numpy(to_array(img, ImageSpec(32, 3, 255), alpha=True))[None]
    trimmed = torch.from_numpy(to_array(img, ImageSpec(32, 3, 255)).astype(np.float32) / 255)[None]
    assert torch.allclose(composited(with_alpha, 255), trimmed, atol=1.5 / 255)


def test_edits_are_seeded_bounded_and_change_the_picture():
    icons = _icons()
    a = edited(icons, 255, torch.Generator().manual_seed(1))
    b = edited(icons, 255, torch.Generator().manual_seed(1))
    c = edited(icons, 255, torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)  # a seeded generator, a new edit per draw
    assert a.min() >= 0 and a.max() <= 1
    assert (a - composited(icons, 255)).abs().mean() > 0.02  # an edit, not the picture itself


def test_the_margin_term_rewards_codes_that_pick_out_their_own_copies():
    model = VAE(VAEConfig(image_size=32, channels=3, latent_dim=8))
    torch.manual_seed(0)
    code = torch.randn(16, 8)
    own = model.invariance_loss(code, code + 0.05 * torch.randn(16, 8), temperature=0.1)
    shuffled = model.invariance_loss(code, code[torch.randperm(16)], temperature=0.1)
    assert 10 * own < shuffled
    # A shift that an edit gives every copy alike (all brighter, say) costs nothing.
    assert torch.isclose(model.invariance_loss(code, code + 3.0, 0.1), model.invariance_loss(code, code, 0.1))

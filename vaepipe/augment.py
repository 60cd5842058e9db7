"""Everyday edits of pictures, made on batches of model inputs: what training teaches the encoder to see through.

People copy images and change them on the way: they re-save them smaller or as JPEG, crop, turn, mirror, make them
brighter or grey, put a caption over them, flatten a transparent icon onto white or black. The model's input
fitting (images.ImageSpec, fit="trim") already undoes the border and the aspect-ratio change; what is left is
simulated here, on the uint8 inputs training holds in memory, as one batched tensor program (no per-image PIL
work, so a CPU can afford a new edit of every image at every step).

`edited(images, background, generator)` takes (B, C + 1, S, S) uint8 inputs with their alpha plane
(images.to_array(alpha=True)) and returns (B, C, S, S) floats in [0, 1]: each image with its own random mix
of the edits below. `composited` makes the unedited view of the same batch, as embedding would see it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def composited(images: torch.Tensor, background: int) -> torch.Tensor:
    """(B, C + 1, S, S) uint8 with alpha -> (B, C, S, S) float in [0, 1] over the background grey: what
    images.to_array gives for the same image, as floats."""
    x = images.float().div_(255.0)
    colour, alpha = x[:, :-1], x[:, -1:]
    return colour * alpha + (background / 255.0) * (1 - alpha)


def _chance(p: float, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _uniform(lo: float, hi: float, n: int, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def edited(images: torch.Tensor, background: int, g: torch.Generator) -> torch.Tensor:
    """A random everyday edit of each image: see the module's docstring."""
    x = images.float().div_(255.0)
    b, c1, s, _ = x.shape
    c = c1 - 1
    colour, alpha = x[:, :c] * x[:, c:], x[:, c:]  # premultiplied, so that resampling does not bleed hidden colour

    # Geometry, one resampling for all of it: crop (zoom in up to 1/0.7 of the side) or shrink with a margin (as a
    # rotation with expand=True leaves), a slight change of aspect, a turn of up to 15 degrees, a mirror, a shift.
    zoom = torch.where(_chance(0.6, b, g), _uniform(1.0, 1.45, b, g), torch.where(_chance(0.3, b, g), _uniform(0.8, 1.0, b, g), torch.ones(b)))
    aspect = torch.exp(_uniform(-0.12, 0.12, b, g))
    angle = torch.where(_chance(0.6, b, g), _uniform(-15.0, 15.0, b, g), torch.zeros(b)) * (math.pi / 180)
    # A turn that keeps the whole picture (expand=True) shrinks it inside the larger canvas.
    zoom = torch.where(_chance(0.5, b, g) & (angle != 0), zoom / (angle.abs().cos() + angle.abs().sin()), zoom)
    flip = torch.where(_chance(0.5, b, g), -1.0, 1.0)
    slack = (1 - 1 / zoom).clamp(min=0)
    shift_x, shift_y = _uniform(-1, 1, b, g) * slack, _uniform(-1, 1, b, g) * slack
    sx, sy = flip / (zoom * aspect), aspect / zoom
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos, -sy * sin, shift_x], 1), torch.stack([sx * sin, sy * cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, [b, c1, s, s], align_corners=False)
    sampled = F.grid_sample(torch.cat([colour, alpha], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    colour, alpha = sampled[:, :c], sampled[:, c:]

    # What shows where the picture is transparent, and in the margins: the collection's own grey half the time,
    # else white, black or any grey (a "save as JPEG" flattens onto white, some tools onto black).
    bg = torch.where(_chance(0.5, b, g), background / 255.0,
                     torch.where(_chance(0.35, b, g), 1.0, torch.where(_chance(0.5, b, g), 0.0, torch.rand(b, generator=g))))
    x = colour + bg.view(b, 1, 1, 1) * (1 - alpha)

    # Light and colour: brighter or darker (clipped, as an editor clips), contrast, less or more colour, or grey.
    bright = torch.where(_chance(0.8, b, g), torch.exp(_uniform(math.log(0.6), math.log(1.6), b, g)), torch.ones(b))
    x = x * bright.view(b, 1, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast = torch.where(_chance(0.4, b, g), _uniform(0.7, 1.3, b, g), torch.ones(b)).view(b, 1, 1, 1)
    x = (x - mean) * contrast + mean
    if c == 3:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        saturation = torch.where(_chance(0.4, b, g), torch.zeros(b),
                                 torch.where(_chance(0.3, b, g), _uniform(0.5, 1.5, b, g), torch.ones(b))).view(b, 1, 1, 1)
        x = grey + (x - grey) * saturation
    x = x.clamp(0, 1)

    # Detail lost: saved smaller and shown larger again, or compressed (noise).
    small = _chance(0.3, b, g)
    if small.any():
        side = int(s * float(_uniform(0.3, 0.8, 1, g)))
        x[small] = F.interpolate(F.interpolate(x[small], size=(side, side), mode="bilinear", antialias=True,
                                               align_corners=False), size=(s, s), mode="bilinear", align_corners=False)
    noisy = _chance(0.3, b, g).view(b, 1, 1, 1)
    x = torch.where(noisy, x + 0.03 * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g), x)

    # Something laid over the picture: a caption band along the top or bottom, with "text" in it.
    x = _banner(x, _chance(0.25, b, g), g)
    return x.clamp(0, 1)


def _banner(x: torch.Tensor, which: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, c, s, _ = x.shape
    n = int(which.sum())
    if not n:
        return x
    rows = torch.arange(s).view(1, s, 1).float()
    cols = torch.arange(s).view(1, 1, s).float()
    height = _uniform(0.1, 0.25, n, g).view(n, 1, 1) * s
    top = torch.where(_chance(0.7, n, g).view(n, 1, 1), s - height, torch.zeros(n, 1, 1))
    band = ((rows >= top) & (rows < top + height)).float()
    dark = _chance(0.8, n, g).view(n, 1, 1, 1)
    fill = torch.where(dark, _uniform(0.0, 0.2, n, g).view(n, 1, 1, 1), _uniform(0.8, 1.0, n, g).view(n, 1, 1, 1))
    opacity = _uniform(0.6, 1.0, n, g).view(n, 1, 1, 1)
    # Text: a row of short strokes of the opposite shade, in the band's middle third.
    mid = (rows >= top + height / 3) & (rows < top + 2 * height / 3)
    period = _uniform(2.0, 5.0, n, g).view(n, 1, 1)
    strokes = (torch.remainder(cols + _uniform(0, 5, n, g).view(n, 1, 1), period) < period / 2) & (cols > s * 0.05) & (cols < s * _uniform(0.4, 0.95, n, g).view(n, 1, 1))
    text = (mid & strokes).float().unsqueeze(1)
    ink = 1 - fill
    y = x[which]
    y = y * (1 - opacity * band.unsqueeze(1)) + fill * opacity * band.unsqueeze(1)
    y = y * (1 - text) + ink * text
    out = x.clone()
    out[which] = y
    return out

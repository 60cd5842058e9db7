"""Image files as batches for torch: decoded by DataLoader worker processes, a failed file a recorded error.

`vaepipe.images` says what a file becomes (decode, orient, flatten, letterbox) and needs no torch; this module feeds
its arrays to training, embedding and the duplicate check's signatures in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vaepipe.images import ImageSpec, load_batch, load_signatures, load_views


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1], the model's input scale."""
    return batch.float().div_(255.0)


class ImageFiles(Dataset):
    """Decodes files in DataLoader workers; a failure is returned, not raised, so one file can't stop a run.

    A worker decodes a whole batch into one array (`__getitems__`, which DataLoader prefers to one call per
    item): a tensor per 28 px image and the stack after them cost a third as much again as its decode.
    """

    def __init__(self, paths: Sequence[str | Path], spec: ImageSpec, max_pixels: int = 64_000_000,
                 then: Callable[[torch.Tensor], Any] | None = None, alpha: bool = False, grey: bool = False,
                 what: str = "inputs"):
        self.paths = paths
        self.spec = spec
        self.max_pixels = max_pixels
        self.then = then
        self.alpha = alpha
        self.grey = grey
        self.what = what

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, list[int], list[str]]:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[Any, list[int], list[str]]:
        paths = [self.paths[i] for i in indices]
        if self.what == "views":
            batch, errors = load_views(paths, self.spec, self.max_pixels)
        elif self.what == "signatures":
            sigs, colour, errors = load_signatures(paths, self.max_pixels)
            return (sigs, colour), list(indices), errors
        else:
            batch, errors = load_batch(paths, self.spec, self.max_pixels, self.alpha, self.grey)
        pixels = torch.from_numpy(batch)
        return (self.then(pixels) if self.then else pixels), list(indices), errors


def iter_image_batches(
    paths: Sequence[str | Path], spec: ImageSpec, batch_size: int, workers: int, max_pixels: int = 64_000_000,
    then: Callable[[torch.Tensor], Any] | None = None, alpha: bool = False, grey: bool = False, what: str = "inputs",
) -> Iterator[tuple[Any, list[int], list[str]]]:
    """Yield (uint8 images, positions in `paths`, error per image or '') in order, decoded by `workers` processes.

    A failed image's slot in the batch is zeros; its error says why. `then`, if given, maps each uint8 batch in
    the worker that decoded it to what is yielded instead of the images (arrays: they come back pickled). alpha:
    see images.to_array; grey: see load_batch; what: "inputs" (load_batch), or each image's edited views ("views",
    load_views) or pixel signatures and colours ("signatures", load_signatures: a pair of float32 arrays) instead.
    """
    loader = DataLoader(
        ImageFiles(paths, spec, max_pixels, then, alpha, grey, what),
        batch_size=batch_size,
        num_workers=workers if len(paths) > batch_size else 0,
        shuffle=False,
        collate_fn=_as_is,
    )
    yield from loader


def _as_is(batch: tuple[Any, list[int], list[str]]) -> tuple[Any, list[int], list[str]]:
    return batch  # ImageFiles.__getitems__ already made the batch

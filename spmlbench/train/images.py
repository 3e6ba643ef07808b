"""Image datasets for end-to-end training with the protocol transform (docs/protocol.md, section 5).

Transform (all papers): ``Image.open(...).convert("RGB")`` -> ``Resize((S, S))`` (no crop, aspect
not kept, S = 448) -> ``RandomHorizontalFlip(0.5)`` for training only -> ``ToTensor`` -> ImageNet
normalisation. The workers stop after the resize/flip and hand over ``uint8`` HWC tensors (4x less
to copy and pin); ``BackboneSpec.prepare`` finishes ``ToTensor`` + ``Normalize`` on the device with
the same arithmetic (``x / 255``, then ``(x - mean) / std``).

Flip decisions are a pure function of ``(seed, epoch, row)`` (:func:`flip_mask`), so they are the
same for every loss, every number of decode workers and a resumed run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from spmlbench.flips import flip_mask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROTOCOL_IMAGE_SIZE = 448


def load_resized(path: str | os.PathLike[str], image_size: int, mode: str = "RGB") -> np.ndarray:
    """Open, ``.convert(mode)`` and ``Resize((S, S))`` (PIL bilinear with antialias, exactly torchvision's
    ``Resize`` on a PIL image): uint8 (S, S, 3) for RGB."""
    with Image.open(path) as img:
        img = img.convert(mode)
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.array(img, dtype=np.uint8, copy=True)


def reference_transform(image_size: int = PROTOCOL_IMAGE_SIZE, train: bool = False):  # noqa: ANN201
    """The protocol transform as a plain torchvision ``Compose`` (the reference style, float output)."""
    from torchvision import transforms as T

    steps = [T.Resize((image_size, image_size))]
    if train:
        steps.append(T.RandomHorizontalFlip(0.5))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


class ImageDataset(Dataset):
    """Images of one split as uint8 HWC tensors, resized to ``image_size`` (flip for training keys).

    ``dataset[row]`` gives the unflipped image (evaluation, EM-APL's pass); ``dataset[(row,
    epoch)]`` gives the training view, flipped when ``flip_mask(flip_seed, epoch, [row])``. Items
    are ``(image uint8 (S, S, 3), row)`` where ``row`` is the position in ``images``; a collated
    batch (B, S, S, 3) goes to the device as is and ``BackboneSpec.prepare`` finishes ``ToTensor`` +
    ``Normalize`` there (a permuted view: channels-last for free).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        images: Sequence[str],
        *,
        image_size: int = PROTOCOL_IMAGE_SIZE,
        flip_seed: int = 0,
        mode: str = "RGB",
    ) -> None:
        self.root = Path(root)
        self.images = list(images)
        self.image_size = int(image_size)
        self.flip_seed = int(flip_seed)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            row, epoch = int(key[0]), int(key[1])
            flip = bool(flip_mask(self.flip_seed, epoch, [row])[0])
        else:
            row, flip = int(key), False
        arr = load_resized(self.root / self.images[row], self.image_size, self.mode)
        if flip:
            arr = np.ascontiguousarray(arr[:, ::-1])
        return torch.from_numpy(arr), row


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(row, epoch)`` keys following one permutation per epoch; the last partial batch is kept.

    ``orders[e - 1]`` is epoch ``e``'s permutation of the training rows (from
    :func:`spmlbench.train.seeding.epoch_orders`, so the order depends on the seed only). Call
    :meth:`set_epoch` before iterating (works with persistent workers: sampling runs in the main
    process).
    """

    def __init__(self, orders: Sequence[torch.Tensor], batch_size: int) -> None:
        self.orders = list(orders)
        self.n = int(len(self.orders[0])) if self.orders else 0
        self.batch_size = int(batch_size)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (1-based) whose order and flips the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.orders[self.epoch - 1].tolist()
        for i in range(0, self.n, self.batch_size):
            yield [(row, self.epoch) for row in order[i : i + self.batch_size]]

"""Feeding models from the on-disk image array: normalised batches, the shift augmentation,
batched inference. Shared by the auto teacher, frozen teachers and the student."""

from __future__ import annotations

import numpy as np


class Batches:
    """Normalised float batches read from a (N, H, W, C) uint8 array (a memmap is fine).

    `mean`/`std` (per channel, on the [0, 1] scale) default to those of a 4,096-image sample;
    `per_image` instead brings each image and channel to zero mean and unit spread. `size`
    resizes (bilinear) to size x size."""

    def __init__(
        self, images: np.ndarray, device: str, size: int | None = None, mean=None, std=None, per_image: bool = False
    ):
        import torch

        self.images = images
        self.per_image = per_image
        self.device = device
        self.size = size
        if mean is None:
            rng = np.random.default_rng(0)
            idx = np.sort(rng.choice(len(images), size=min(len(images), 4096), replace=False))
            sample = np.asarray(images[idx], dtype=np.float32) / 255.0
            mean = sample.mean(axis=(0, 1, 2))
            std = sample.std(axis=(0, 1, 2)) + 1e-6
        self.mean = torch.tensor(np.asarray(mean, dtype=np.float32)).view(1, -1, 1, 1).to(device)
        self.std = torch.tensor(np.asarray(std, dtype=np.float32)).view(1, -1, 1, 1).to(device)

    def get(self, idx: np.ndarray):
        """The rows `idx` (any order; read from the array in sorted order) as a (n, C, H, W) tensor."""
        import torch
        import torch.nn.functional as F

        order = np.argsort(idx)
        arr = np.asarray(self.images[idx[order]])
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        x = torch.from_numpy(arr[inv]).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.per_image:  # each image and channel to zero mean, unit spread: tint and contrast drop out
            x = x - x.mean(dim=(2, 3), keepdim=True)
            return x / x.std(dim=(2, 3), keepdim=True).clamp_min(0.02)
        return (x - self.mean) / self.std


class GrayAsRGB:
    """View of a one-channel image array as three channels (for ImageNet-shaped models)."""

    def __init__(self, images):
        self.images = images
        self.shape = images.shape[:3] + (3,)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return np.repeat(np.asarray(self.images[idx]), 3, axis=-1)


def as_rgb(images):
    """`images` itself when it has three channels, else a GrayAsRGB view of it."""
    return images if images.shape[3] == 3 else GrayAsRGB(images)


def random_shift(x, gen, pad: int):
    """Pad with edge values and crop back at a random offset per sample (`pad` 0: `x` itself,
    and nothing is drawn from `gen`)."""
    import torch
    import torch.nn.functional as F

    if pad <= 0:
        return x
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    return torch.stack([xp[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(n)])


def shift_pad(image_side: int) -> int:
    """Largest shift of the augmentation: 1/8 of the image side, at least one pixel."""
    return max(1, int(image_side) // 8)


def effective_batch_size(requested: int, n: int) -> int:
    """The requested batch size, shrunk on small datasets so an epoch has about ten steps
    (a 150-sample fold with batch 256 would otherwise train one step per epoch)."""
    return int(max(1, min(requested, n, max(16, n // 10))))


def infer(model_fn, batches: Batches, idx: np.ndarray, batch_size: int, task=None, precision: str = "fp32") -> list:
    """[model_fn(x) for each batch of rows `idx`], under inference mode and the autocast of
    `precision`; `task.advance` after each batch."""
    import torch

    from labelfix.runtime import autocast

    outs = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            x = batches.get(b)
            with autocast(batches.device, precision):
                outs.append(model_fn(x))
            if task is not None:
                task.advance(len(b))
    return outs

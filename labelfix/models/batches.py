"""Feeding models from the on-disk image array: normalised batches, read ahead in a background
thread while the model computes (`Prefetch`), the shift augmentation, batched inference. Shared
by the auto teacher, frozen teachers and the student."""

from __future__ import annotations

import queue
import threading

import numpy as np

# Batches read ahead of the model by `Batches.stream`: at most this many are ready or being read
# while the model computes on the current one (0: read each batch when it is needed).
READ_AHEAD = 2


class Batches:
    """Normalised float batches read from a (N, H, W, C) uint8 array (a memmap is fine).

    `mean`/`std` (per channel, on the [0, 1] scale) default to those of a 4,096-image sample;
    `per_image` instead brings each image and channel to zero mean and unit spread. `size`
    resizes (bilinear) to size x size. `ahead`: batches `stream` reads ahead (READ_AHEAD)."""

    def __init__(
        self, images: np.ndarray, device: str, size: int | None = None, mean=None, std=None, per_image: bool = False
    ):
        import torch

        self.images = images
        self.per_image = per_image
        self.device = device
        self.size = size
        self.ahead = READ_AHEAD
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

    def stream(self, row_lists: list) -> "Prefetch":
        """`get` of each of `row_lists` in order, read `self.ahead` batches ahead in a background
        thread: `with batches.stream(rows) as xs: for x in xs: ...`."""
        return Prefetch(self.get, row_lists, self.ahead)


class Prefetch:
    """Iterates `fn(item)` for `items` in order, computing them in a background thread at most
    `ahead` results ahead of the consumer (one waiting in a queue of `ahead - 1`, one being
    computed). The results are the ones a plain loop would give: `fn` runs on each item once,
    in order. An exception in `fn` is raised by the iteration at that item; leaving the `with`
    block (finished, broken off or raising) stops the thread and waits for it. No thread for
    fewer than two items or `ahead` 0."""

    def __init__(self, fn, items, ahead: int = READ_AHEAD):
        self.fn, self.items, self.ahead = fn, list(items), int(ahead)
        self.queue = queue.Queue(maxsize=max(1, self.ahead - 1))
        self.stopping = threading.Event()
        self.thread = None

    def __enter__(self) -> "Prefetch":
        if self.ahead > 0 and len(self.items) > 1:
            self.thread = threading.Thread(target=self.produce, name="labelfix-prefetch", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        if self.thread is None:
            for item in self.items:
                yield self.fn(item)
            return
        for _ in self.items:
            ok, value = self.queue.get()
            if not ok:
                raise value
            yield value

    def produce(self) -> None:
        """The background thread: each result (or the exception) into the queue, in order."""
        for item in self.items:
            try:
                got = (True, self.fn(item))
            except BaseException as exc:  # handed to the consumer, raised there
                got = (False, exc)
            while not self.stopping.is_set():
                try:
                    self.queue.put(got, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if self.stopping.is_set() or not got[0]:
                return

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        while not self.queue.empty():  # drop the batches read ahead
            self.queue.get_nowait()


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

    chunks = [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    outs = []
    with torch.inference_mode(), batches.stream(chunks) as xs:
        for b, x in zip(chunks, xs):
            with autocast(batches.device, precision):
                outs.append(model_fn(x))
            if task is not None:
                task.advance(len(b))
    return outs

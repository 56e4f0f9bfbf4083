"""The image path at scale (issue 13): decoding in worker processes gives the bytes and hash
of decoding in this process, errors from a worker name the file and CSV row, and the batch
prefetcher gives the batches (and trained weights) of plain reads, raising without hanging."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from labelfix.errors import InputError
from labelfix.files.images import ProcessWorkers, choose_parallel, decode_images, unreadable_rows
from labelfix.models.batches import Batches, Prefetch, infer
from labelfix.models.nets import build_small_resnet
from labelfix.models.train import HardLabelLoss, TrainPlan, fit
from labelfix.runtime import resolve_runtime


def write_images(folder, n=50, seed=0):
    """n tiny images of mixed modes and sizes (gray, RGB, palette, alpha, 16-bit)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        side = int(rng.integers(10, 24))
        a = rng.integers(0, 256, (side, side + i % 3), dtype=np.uint8)
        kind = i % 5
        if kind == 0:
            im = Image.fromarray(a, "L")
        elif kind == 1:
            im = Image.fromarray(np.stack([a, a[::-1], 255 - a], -1), "RGB")
        elif kind == 2:
            im = Image.fromarray(a, "L").convert("P")
        elif kind == 3:
            im = Image.fromarray(np.stack([a, a, a, a[:, ::-1]], -1), "RGBA")
        else:
            im = Image.fromarray(a.astype(np.uint16) * 257)  # I;16
        files.append(folder / f"{i:03d}.png")
        im.save(files[-1])
    return files


class Counting:
    def __init__(self):
        self.advanced = {}

    @contextmanager
    def task(self, description, total):
        self.advanced[description] = 0
        outer = self

        class T:
            def advance(self, n=1):
                outer.advanced[description] += n

        yield T()

    def log(self, message):
        pass


def decoded(files, path, **kw):
    arr = decode_images(files, path, csv_name="labels.csv", **kw)
    return arr, np.array(arr.open())


def test_worker_processes_decode_the_same_bytes_and_hash(tmp_path):
    files = write_images(tmp_path / "img")
    ref, ref_px = decoded(files, tmp_path / "inline.u8", workers=1)
    progress = Counting()
    got, px = decoded(files, tmp_path / "proc.u8", workers=2, parallel="processes", progress=progress)
    thr, thr_px = decoded(files, tmp_path / "thr.u8", workers=3, parallel="threads")
    assert ref.shape == got.shape == thr.shape and ref.shape[0] == 50 and ref.shape[3] == 3
    assert ref.images_sha256 == got.images_sha256 == thr.images_sha256
    assert (tmp_path / "inline.u8").read_bytes() == (tmp_path / "proc.u8").read_bytes()
    assert np.array_equal(ref_px, px) and np.array_equal(ref_px, thr_px)
    assert progress.advanced == {"probe images": 50, "decode images": 50}
    sized, _ = decoded(files, tmp_path / "s.u8", workers=2, parallel="processes", image_size=9)
    assert sized.shape == (50, 9, 9, 3)


def test_auto_picks_inline_threads_then_processes():
    assert choose_parallel("auto", 10**6, 1) == "inline"
    assert choose_parallel("auto", 100, 4) == "threads"
    assert choose_parallel("auto", 10**6, 4) == "processes"
    with pytest.raises(ValueError):
        choose_parallel("fork", 10, 2)


@pytest.mark.parametrize("stage", ["probe", "decode"])
def test_an_unreadable_file_in_a_worker_names_the_file_and_row(tmp_path, stage):
    files = write_images(tmp_path / "img")
    bad = [37, 44]  # both in late chunks: the first one (in row order) is named
    for i in bad:
        raw = files[i].read_bytes()
        # "probe": not an image at all; "decode": a valid header, then the data cut off
        files[i].write_bytes(b"not an image" if stage == "probe" else raw[: len(raw) // 2])
    messages = []
    for kw in ({"workers": 1}, {"workers": 2, "parallel": "processes"}, {"workers": 2, "parallel": "threads"}):
        with pytest.raises(InputError) as err:
            decode_images(files, tmp_path / "x.u8", csv_name="labels.csv", **kw)
        messages.append(str(err.value))
    assert messages[0] == messages[1] == messages[2]
    assert messages[0].startswith(f"{files[37]}: unreadable image (row 39 of labels.csv): ")
    found = unreadable_rows(files, 2, parallel="processes")
    assert sorted(found) == bad and found == unreadable_rows(files, 1)


def test_a_crashing_worker_is_an_error_not_a_hang(tmp_path):
    with ProcessWorkers(1) as pool:
        with pytest.raises(RuntimeError, match="image decoding worker"):
            pool.call({"kind": "decode", "paths": ["x"], "start": 0, "csv_name": "c", "out": "/nonexistent/x"})
        assert pool.call({"kind": "probe", "paths": [], "start": 0, "csv_name": "c"}) == {"probes": [], "error": None}
        pool.procs[0].kill()
        pool.procs[0].wait()
        for _ in range(2):  # a dead worker fails every call at once (no caller waits on it forever)
            with pytest.raises(RuntimeError, match="worker process exited"):
                pool.call({"kind": "probe", "paths": [], "start": 0, "csv_name": "c"})


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "labelfix-prefetch"]


@pytest.mark.parametrize("per_image,size", [(True, None), (False, 12)])
def test_prefetched_batches_equal_plain_reads(per_image, size):
    images = np.random.default_rng(1).integers(0, 256, (300, 10, 10, 3), dtype=np.uint8)
    batches = Batches(images, "cpu", size=size, per_image=per_image)
    rows = [np.random.default_rng(i).choice(300, 32, replace=False) for i in range(7)]
    with batches.stream(rows) as xs:
        got = list(xs)
    assert len(got) == 7 and all(a.equal(batches.get(r)) for a, r in zip(got, rows))
    assert not prefetch_threads()
    with Prefetch(batches.get, rows[:1]) as one:  # one batch: no thread
        assert one.thread is None and list(one)[0].equal(batches.get(rows[0]))


def test_prefetch_raises_where_the_reader_failed_and_stops_its_thread():
    def read(i):
        if i == 3:
            raise KeyError("row 3")
        return i

    seen = []
    with pytest.raises(KeyError, match="row 3"):
        with Prefetch(read, range(10)) as xs:
            for x in xs:
                seen.append(x)
    assert seen == [0, 1, 2] and not prefetch_threads()
    with pytest.raises(ZeroDivisionError):  # the consumer fails while the reader waits on a full queue
        with Prefetch(lambda i: i, range(1000)) as xs:
            for x in xs:
                1 / (x - 5)
    assert not prefetch_threads()


def train_once(ahead: int):
    import torch

    images = np.random.default_rng(2).integers(0, 256, (96, 12, 12, 1), dtype=np.uint8)
    y = np.arange(96) % 3
    batches = Batches(images, "cpu", per_image=True)
    batches.ahead = ahead
    torch.manual_seed(0)
    model = build_small_resnet(1, 3, 4)
    cfg = type("Cfg", (), {"gce_q": 0.7, "elr_lambda": 0.0, "elr_beta": 0.7})()
    objective = HardLabelLoss(y, 3, "cpu", lambda e: "ce", cfg)
    plan = TrainPlan(epochs=2, batch_size=16, lr=0.01, pad=1, seed=3)
    res = fit(model, batches, np.arange(80), objective, plan, resolve_runtime("cpu", "fp32"))
    out = torch.cat(infer(model, batches, np.arange(96), 20))
    return [r.loss_sum for r in res], model.state_dict(), out


def test_training_and_inference_with_prefetch_are_bit_identical():
    losses0, state0, out0 = train_once(0)
    losses2, state2, out2 = train_once(2)
    assert losses0 == losses2
    assert all(state0[k].equal(state2[k]) for k in state0)
    assert out0.equal(out2)
    assert not prefetch_threads()

"""An interrupted scan (SIGTERM, as CI time-outs and `kill` send) leaves no partial output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelfix.commands.demo import write_digits_folder


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_leaves_no_partial_output(tmp_path):
    csv, _, _ = write_digits_folder(tmp_path / "data", 0.2, 0, n=120)
    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "labelfix"
    proc = subprocess.Popen(
        [
            str(exe),
            "scan",
            str(tmp_path / "data" / "images"),
            "--labels",
            str(csv),
            "--out",
            str(out),
            "--epochs",
            "500",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while not out.exists() and time.time() < deadline:  # wait until the run has started writing
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not out.exists(), list(out.rglob("*"))

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


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_swallowed_sigterm_still_ends_the_run():
    """A library that catches the SystemExit a SIGTERM raised (torch's import does, when the
    signal lands inside it) cannot keep the run going: the next progress call raises it again.
    This was CI's failure: the scan went on training for 500 epochs."""
    code = (
        "import os, signal, sys\n"
        "from labelfix import cli_support as cs\n"
        "signal.signal(signal.SIGTERM, cs.on_terminate)\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    signal.sigtimedwait([], 0.5)\n"
        "except BaseException:\n"
        "    print('swallowed', flush=True)\n"
        "progress = cs.progress(False)\n"
        "with progress.task('train', total=3) as task:\n"
        "    task.advance()\n"
        "print('went on', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stdout.split() == ["swallowed"]

"""Progress on stderr when it is not a terminal: plain lines (issue 12, part 5)."""

from __future__ import annotations

import io

from labelfix.terminal import PlainProgress, make_progress


def test_plain_lines_every_interval_with_time_left():
    now = [0.0]
    out = io.StringIO()
    prog = PlainProgress(out, interval=10.0, clock=lambda: now[0])
    with prog.task("teacher fold 1/2", total=100) as t:
        for _ in range(50):
            now[0] += 0.5
            t.advance()
    lines = out.getvalue().splitlines()
    assert lines[0] == "labelfix: teacher fold 1/2: started (100 steps)"
    assert "20/100 (20%), 10s elapsed, about 40s left" in lines[1]
    assert "40/100" in lines[2] and lines[-1].endswith("done in 25s")
    assert len(lines) == 4


def test_make_progress_picks_plain_lines_for_a_file():
    assert isinstance(make_progress(True, io.StringIO()), PlainProgress)
    assert not isinstance(make_progress(False, io.StringIO()), PlainProgress)

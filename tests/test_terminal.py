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


def test_class_tables_show_the_busiest_classes_and_say_how_many_are_left_out(capsys):
    """1,000 classes would print 1,000 table rows: above TABLE_CLASSES the tables show the
    classes with the most flags (scan) or changes (refine) and a line for the rest."""
    from labelfix import render

    c = render.TABLE_CLASSES + 7
    per_class = [{"class": f"k{i:02d}", "n": 100, "issues": i % 5, "estimated_noise_rate": 0.05} for i in range(c)]
    summary = {
        "counts": {"samples": 100 * c, "classes": c, "issues": sum(r["issues"] for r in per_class)},
        "per_class": per_class,
        "estimated_noise_rate": 0.05,
        "teacher_heldout_agreement_with_given": 0.9,
        "timings_s": {"graph": 1.0},
    }
    render.render_scan(summary)
    out = capsys.readouterr().out
    shown = [r["class"] for r in per_class if r["class"] in out.split()]
    assert len(shown) == render.TABLE_CLASSES
    assert all(r["issues"] >= 1 for r in per_class if r["class"] in shown)  # the 6 classes with no flags are left out
    assert "7 more classes" in out and "summary.json" in out
    assert f"{100 * c}" in out  # the 'all' row counts every class

    few = {**summary, "per_class": per_class[:3], "counts": {**summary["counts"], "classes": 3}}
    render.render_scan(few)
    assert "more classes" not in capsys.readouterr().out

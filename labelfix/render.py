"""Terminal rendering of library results (tables on stdout, JSON with --json)."""

from __future__ import annotations

from pathlib import Path


def _console():
    from rich.console import Console

    return Console()


def render_scan(summary: dict, as_json: bool = False) -> None:
    if as_json:
        from .outputs import to_json

        print(to_json(summary))
        return
    from rich.table import Table

    con = _console()
    t = Table(title=f"labelfix scan: {summary['counts']['samples']} samples, {summary['counts']['classes']} classes")
    t.add_column("class")
    t.add_column("samples", justify="right")
    t.add_column("flagged", justify="right")
    t.add_column("est. noise rate", justify="right")
    for row in summary["per_class"]:
        t.add_row(row["class"], str(row["n"]), str(row["issues"]), f"{row['estimated_noise_rate']:.1%}")
    t.add_section()
    t.add_row(
        "all", str(summary["counts"]["samples"]), str(summary["counts"]["issues"]), f"{summary['estimated_noise_rate']:.1%}"
    )
    con.print(t)
    times = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items())
    con.print(f"teacher agreement with given labels (out-of-sample): {summary['teacher_heldout_agreement_with_given']:.1%}")
    con.print(f"time: {times}")


def render_demo(summary: dict, metrics: dict, out: Path) -> None:
    render_scan(summary)
    con = _console()
    con.print(
        f"demo: digits, {metrics['samples']} images, {metrics['noise']:.0%} symmetric noise "
        f"({metrics['injected']} wrong labels injected)"
    )
    con.print(
        f"flags vs injected truth: precision {metrics['precision']:.3f}  recall {metrics['recall']:.3f}  "
        f"F1 {metrics['f1']:.3f}  AUROC {metrics['auroc']:.3f}"
    )
    con.print(f"outputs: {Path(out) / 'run'}")

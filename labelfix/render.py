"""Terminal rendering of library results (tables on stdout, JSON with --json)."""

from __future__ import annotations

from pathlib import Path

TABLE_CLASSES = 20  # classes shown in the terminal tables; all of them are in summary.json


def _console():
    from rich.console import Console

    return Console()


def _shown_classes(rows: list[dict], key) -> tuple[list[dict], int]:
    """All rows up to TABLE_CLASSES classes; above, the TABLE_CLASSES with the largest `key`
    (ties: the order given), and how many were left out."""
    if len(rows) <= TABLE_CLASSES:
        return rows, 0
    top = sorted(range(len(rows)), key=lambda i: (-key(rows[i]), i))[:TABLE_CLASSES]
    return [rows[i] for i in top], len(rows) - TABLE_CLASSES


def _left_out_row(t, hidden: int, what: str) -> None:
    if hidden:
        t.add_row(f"... {hidden} more classes", *[""] * (len(t.columns) - 1))
        t.caption = f"the {TABLE_CLASSES} classes with the most {what}; every class is in summary.json (per_class)"


def render_scan(summary: dict, as_json: bool = False) -> None:
    if as_json:
        from labelfix.files.outputs import to_json

        print(to_json(summary))
        return
    from rich.table import Table

    con = _console()
    t = Table(title=f"labelfix scan: {summary['counts']['samples']} samples, {summary['counts']['classes']} classes")
    t.add_column("class")
    t.add_column("samples", justify="right")
    t.add_column("flagged", justify="right")
    t.add_column("est. noise rate", justify="right")
    shown, hidden = _shown_classes(summary["per_class"], lambda r: r["issues"])
    for row in shown:
        t.add_row(row["class"], str(row["n"]), str(row["issues"]), f"{row['estimated_noise_rate']:.1%}")
    _left_out_row(t, hidden, "flagged rows")
    t.add_section()
    t.add_row(
        "all",
        str(summary["counts"]["samples"]),
        str(summary["counts"]["issues"]),
        f"{summary['estimated_noise_rate']:.1%}",
    )
    con.print(t)
    times = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items())
    con.print(
        f"teacher agreement with given labels (out-of-sample): {summary['teacher_heldout_agreement_with_given']:.1%}"
    )
    con.print(f"time: {times}")
    for w in summary.get("warnings", []):
        con.print(f"[bold yellow]warning:[/] {w}")


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
    if metrics.get("report"):
        con.print(f"report: {metrics['report']} (open it in a browser)")


def render_refine(stats: dict, as_json: bool = False) -> None:
    if as_json:
        from labelfix.files.outputs import to_json

        print(to_json(stats))
        return
    from rich.table import Table

    con = _console()
    t = Table(title="labelfix refine: what changed per class")
    for col in ("class", "samples", "relabelled from", "relabelled to", "review"):
        t.add_column(col, justify="left" if col == "class" else "right")
    shown, hidden = _shown_classes(
        stats["per_class"], lambda r: r["relabelled_from"] + r["relabelled_to"] + r["review"]
    )
    for row in shown:
        t.add_row(
            row["class"], str(row["n"]), str(row["relabelled_from"]), str(row["relabelled_to"]), str(row["review"])
        )
    _left_out_row(t, hidden, "changes")
    t.add_section()
    c = stats["counts"]
    t.add_row(
        "all", str(sum(r["n"] for r in stats["per_class"])), str(c["relabel"]), str(c["relabel"]), str(c["review"])
    )
    con.print(t)
    con.print(
        f"keep {c['keep']}, relabel {c['relabel']}, review {c['review']}; mean ambiguity {stats['mean_ambiguity']:.3f}; "
        f"mutual rounds: {'yes' if stats['mutual_rounds'] else 'no'}{_view_note(stats)}; {stats['time_s']:.1f}s"
    )


def _view_note(stats: dict) -> str:
    view = stats.get("student_view")
    return f" (student view {view})" if view and view not in ("none", "used") else ""


def _guard_line(guard: dict | None) -> str | None:
    if not guard or not guard.get("heldout_rows"):
        return None
    return (
        f"student {guard['student_accuracy']:.2%} vs teacher {guard['teacher_accuracy']:.2%} on "
        f"{guard['heldout_rows']} held-out rows (tolerance {guard['tolerance']:.2%}): "
        + ("mutual round allowed" if guard["passed"] else "student worse, mutual round skipped")
    )


def render_distill(report: dict, run_dir: Path, as_json: bool = False) -> None:
    if as_json:
        from labelfix.files.outputs import to_json

        print(to_json(report))
        return
    con = _console()
    cfg = report["config"]
    last = report["epochs"][-1] if report["epochs"] else {}
    con.print(
        f"student {cfg['student']}: {report['train_rows']} training rows, {report['excluded_review_rows']} review rows "
        f"left out, {len(report['epochs'])} epochs, final loss {last.get('loss', float('nan')):.4f}"
    )
    for r in report.get("rounds", [])[:-1]:
        c = r.get("mutual_refine") or {}
        acc_r = r.get("heldout_accuracy_vs_refined")
        con.print(
            f"round {r['round']}: held-out accuracy {acc_r if acc_r is None else f'{acc_r:.2%}'}, "
            f"then keep {c.get('keep')}, relabel {c.get('relabel')}, review {c.get('review')}"
        )
    acc = report["heldout_accuracy_vs_refined"]
    if acc is not None:
        con.print(f"held-out accuracy against refined labels: {acc:.2%} ({report['heldout_rows']} rows)")
    line = _guard_line(report.get("mutual_guard"))
    if line:
        con.print(line)
    if "mutual_refine" in report:
        c = report["mutual_refine"]
        con.print(f"mutual refinement: keep {c['keep']}, relabel {c['relabel']}, review {c['review']}")
    seconds = sum(r.get("train_seconds") or 0 for r in report.get("rounds", [])) or report["train_seconds"]
    con.print(f"saved {Path(run_dir) / 'student.pt'} and student.json; {seconds:.0f}s")


def render_predict(report: dict, as_json: bool = False) -> None:
    if as_json:
        from labelfix.files.outputs import to_json

        print(to_json(report))
        return
    con = _console()
    con.print(f"{report['images']} images -> {report['out']}")
    if "accuracy" in report:
        con.print(f"accuracy against --labels: {report['accuracy']:.2%}")


def render_bench(row: dict, as_json: bool = False) -> None:
    if as_json:
        from labelfix.files.outputs import to_json

        print(to_json(row))
        return
    from rich.table import Table

    con = _console()
    t = Table(
        title=f"labelfix bench: {row['samples']} samples, {row['noise']} noise, actual rate {row['actual_noise_rate']:.1%}"
    )
    for col in ("method", "precision", "recall", "F1", "AUROC", "flagged"):
        t.add_column(col, justify="left" if col == "method" else "right")
    methods = {"labelfix flags": row["labelfix flags"], "labelfix refined != given": row["labelfix refined != given"]}
    methods.update(row.get("cleanlab", {}))
    for name, m in methods.items():
        if "f1" not in m:
            t.add_row(name, "-", "-", "-", "-", m.get("skipped", ""))
            continue
        au = "-" if m["auroc"] is None else f"{m['auroc']:.3f}"
        t.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", au, str(m["flagged"]))
    con.print(t)
    con.print(
        f"refined-label accuracy {row['refined_accuracy']:.3f} (given {row['given_accuracy']:.3f}); "
        f"teacher accuracy {row['teacher_accuracy']:.3f}; scan {row['scan_wall_s']:.0f}s"
    )

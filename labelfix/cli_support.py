"""What every CLI command shares: progress, one-line errors, output checks, the CI gates."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from labelfix.config import check_finite
from labelfix.errors import GateFailed, InputError, LabelfixError, from_os_error
from labelfix.files.paths import check_path_flag

# Signals received (SIGTERM): a run that got one never goes on, even where a library swallowed the
# SystemExit it raised (seen: torch's C code imports numpy and takes any error there, SystemExit
# included, for 'numpy not installed').
TERMINATED: list[int] = []


def on_terminate(signum, frame) -> None:
    """SIGTERM (CI time-outs, kill) unwinds like Ctrl-C, so staged outputs are removed."""
    TERMINATED.append(signum)
    raise SystemExit(128 + signum)


def check_terminated() -> None:
    """Raise the exit of a signal received earlier, if one was (and swallowed on the way)."""
    if TERMINATED:
        raise SystemExit(128 + TERMINATED[0])


class Interruptible:
    """A `Progress` that ends the run at its next call once a signal has been received."""

    def __init__(self, inner):
        self.inner = inner

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator:
        check_terminated()
        with self.inner.task(description, total) as t:
            yield _InterruptibleTask(t)
        check_terminated()

    def log(self, message: str) -> None:
        check_terminated()
        self.inner.log(message)


class _InterruptibleTask:
    def __init__(self, inner):
        self.inner = inner

    def advance(self, n: int = 1) -> None:
        check_terminated()
        self.inner.advance(n)


def progress(enabled: bool = True):
    """Bars on a terminal, plain lines when stderr is a file or a CI log (labelfix.terminal);
    LABELFIX_PROGRESS=none silences them. Every call first checks for a received signal."""
    import os

    from labelfix.terminal import make_progress

    return Interruptible(make_progress(enabled and os.environ.get("LABELFIX_PROGRESS", "") != "none"))


def fail(exc: LabelfixError) -> None:
    msg = " ".join(str(exc).split())
    typer.echo(f"labelfix: error: {msg}", err=True)
    raise typer.Exit(exc.exit_code)


def warn(warnings: list[str]) -> None:
    for w in warnings:
        typer.echo(f"labelfix: warning: {w}", err=True)


@contextmanager
def one_line(outputs: dict[str, Optional[Path]], inputs: Optional[dict[str, Optional[Path]]] = None) -> Iterator[None]:
    """Turn labelfix errors and the system's (full disk, read-only folder, a path it refuses)
    into one line on stderr and the documented exit code; `outputs` and `inputs` map flags to
    paths so the line names the flag whose file failed."""
    try:
        yield
    except LabelfixError as exc:
        fail(exc)
    except OSError as exc:
        fail(from_os_error(exc, outputs, inputs))


def check_output_file(path: Optional[Path], flag: str) -> None:
    """labelfix.files.outputs.check_output_file (imported when used: numpy is slow to import)."""
    from labelfix.files.outputs import check_output_file as check

    check(path, flag)


def prepare_out(out: Path, flag: str = "--out") -> None:
    """Refuse an unwritable output folder before any work; clear what killed runs left there.
    RUN_DIR (refine, distill) is checked only when it is a folder: the command says what is
    wrong with a missing one (exit 4)."""
    from labelfix.files.outputs import check_output_dir, remove_stale_staging

    if flag == "RUN_DIR" and not out.is_dir():
        check_path_flag(out, flag)
        return
    check_output_dir(out, flag)
    if out.is_dir():
        remove_stale_staging(out)


def check_gates(fail_above, fail_on_new, baseline) -> None:
    check_finite({"--fail-above": fail_above})
    if fail_above is not None and not 0.0 <= fail_above <= 1.0:
        raise InputError(f"--fail-above must be in [0, 1] (got {fail_above})")
    if fail_on_new is not None and fail_on_new < 0:
        raise InputError(f"--fail-on-new must be >= 0 (got {fail_on_new})")
    if fail_on_new is not None and baseline is None:
        raise InputError("--fail-on-new needs --baseline (the run to compare with)")


def after_scan(result, out: Path, report: bool, summary_md: Optional[Path]) -> None:
    """The files written after the run's commit: the report and the Markdown summary."""
    if report:
        from labelfix.report import write_report

        write_report(out)
    if summary_md is not None:
        from labelfix.files.baseline import summary_markdown
        from labelfix.files.outputs import atomic_write_bytes

        atomic_write_bytes(summary_md, summary_markdown(result.summary, result.baseline).encode())


def next_steps(out: Path, report: bool) -> None:
    """The next commands, with paths quoted for a shell (a space in a folder name)."""
    from shlex import quote

    opened = f"open {quote(str(out / 'report.html'))}" if report else f"labelfix report {quote(str(out))}"
    typer.echo(
        f"labelfix: outputs in {out}/ (scan.parquet, summary.json); next: {opened}, or labelfix refine {quote(str(out))}"
    )


def gates(result, fail_above, fail_on_new, strict) -> None:
    """The CI gates, after the outputs are written: --fail-above, --fail-on-new, --strict. Every
    gate that trips prints its line; the exit code is the first one's (10, 11, 12)."""
    from labelfix.errors import NewIssues, StrictWarnings

    tripped = []
    rate = result.summary["estimated_noise_rate"]
    if fail_above is not None and rate > fail_above:
        tripped.append(GateFailed(f"estimated share of wrong labels {rate:.4f} exceeds --fail-above {fail_above}"))
    if fail_on_new is not None and result.baseline is not None and len(result.baseline.new) > fail_on_new:
        new = len(result.baseline.new)
        tripped.append(
            NewIssues(
                f"{new} new issue{'s' if new != 1 else ''} against --baseline {result.baseline.baseline} (--fail-on-new {fail_on_new})"
            )
        )
    if strict and result.summary.get("warnings"):
        n = len(result.summary["warnings"])
        tripped.append(StrictWarnings(f"--strict: the run has {n} warning(s): {result.summary['warnings'][0]}"))
    for gate in tripped:
        typer.echo(f"labelfix: error: {' '.join(str(gate).split())}", err=True)
    if tripped:
        raise typer.Exit(tripped[0].exit_code)

"""Exceptions raised by labelfix, each carrying the process exit code the CLI maps it to.

Exit codes (documented in the README):
    0  success
    1  unexpected internal error
    2  bad input: a file, row, column or flag at fault (also typer's usage errors), or an output
       that cannot be written (read-only or full --out: the flag naming it is at fault)
    3  a teacher or its weights cannot be had (offline, missing checkpoint)
    4  the run directory is missing files or was written by another labelfix version
    5  the teacher's out-of-sample agreement with the given labels is not clearly above chance
       (predictions unrelated to the labels): its flags would be noise, so none are written
       (`--allow-weak-teacher` writes them, marked)
    10 the `--fail-above` gate tripped: estimated share of wrong labels above the threshold
    11 the `--fail-on-new` gate tripped: more new issues against `--baseline` than allowed
    12 `--strict` and the run has warnings (a weak teacher allowed through, a stalled fold...)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class LabelfixError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class InternalError(LabelfixError):
    """labelfix itself went wrong (for example a NaN on its way into a JSON file); exit 1."""


class InputError(LabelfixError):
    """The user's input is wrong: the message names the file, row, column or flag at fault."""

    exit_code = 2


class OutputError(InputError):
    """An output cannot be written (read-only folder, full disk, a file where a folder is due):
    the message names the flag and the file; nothing partial is left behind."""


class TeacherUnavailable(LabelfixError):
    """A pretrained or user checkpoint cannot be loaded (weights not cached and no network...)."""

    exit_code = 3


class RunDirError(LabelfixError):
    """A run directory is missing files or comes from an incompatible labelfix version."""

    exit_code = 4


class WeakTeacher(LabelfixError):
    """The probabilities (auto teacher, pretrained teacher or --pred-probs) are at chance."""

    exit_code = 5


class GateFailed(LabelfixError):
    """Estimated share of wrong labels exceeds `--fail-above`."""

    exit_code = 10


class NewIssues(LabelfixError):
    """More new issues against --baseline than --fail-on-new allows."""

    exit_code = 11


class StrictWarnings(LabelfixError):
    """--strict and the run has warnings."""

    exit_code = 12


EXIT_CODES = {
    0: "success",
    1: "internal error",
    2: "bad input (a file, row, column or flag at fault) or an output that cannot be written",
    3: "a teacher or its weights cannot be had",
    4: "the run directory is missing files, corrupt, or from another labelfix version",
    5: "the evidence is at chance (weak teacher): nothing written",
    10: "--fail-above: estimated share of wrong labels above the threshold",
    11: "--fail-on-new: more new issues against --baseline than allowed",
    12: "--strict: the run has warnings",
    130: "interrupted by Ctrl-C (SIGINT): staged outputs removed",
    143: "terminated by SIGTERM: staged outputs removed",
}


# errno values that mean "this output cannot be written here" rather than "this input is bad"
WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EACCES", "EPERM", "ENOSPC", "EROFS", "EFBIG", "EDQUOT") if hasattr(errno, name)
)


def from_os_error(exc: OSError, outputs: dict[str, object], inputs: dict[str, object] | None = None) -> LabelfixError:
    """A one-line error for an OSError (full disk, read-only folder, unreadable file) that names
    the flag whose path holds the file: `outputs` and `inputs` map flags to paths. A write error
    without a file name (ENOSPC from a write) names the first output flag."""
    reason = exc.strerror or " ".join(str(exc).split()) or exc.__class__.__name__
    name = exc.filename
    where = os.fspath(name) if isinstance(name, (str, bytes, os.PathLike)) else None
    for kind, flags in ((OutputError, outputs), (InputError, inputs or {})):
        for flag, path in flags.items():
            if path is None or where is None:
                continue
            root = Path(os.fspath(path)).absolute()
            target = Path(where).absolute()
            temp = target.parent == root.parent and target.name.startswith(f".{root.name}.")  # atomic write's
            if target == root or target.is_relative_to(root) or temp:
                return kind(f"{flag} {path}: {reason} ({where})")
    if exc.errno in WRITE_ERRNOS and outputs:
        flag, path = next(iter(outputs.items()))
        return OutputError(f"{flag} {path}: {reason}" + (f" ({where})" if where else ""))
    return InputError(f"{where or 'a file'}: {reason}")

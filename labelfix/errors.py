"""Exceptions raised by labelfix, each carrying the process exit code the CLI maps it to.

Exit codes (documented in the README):
    0  success
    1  unexpected internal error
    2  bad input: a file, row, column or flag at fault (also typer's usage errors)
    3  a teacher or its weights cannot be had (offline, missing checkpoint)
    4  the run directory is missing files or was written by another labelfix version
    5  the teacher's out-of-sample agreement with the given labels is not clearly above chance
       (predictions unrelated to the labels): its flags would be noise, so none are written
       (`--allow-weak-teacher` writes them, marked)
    10 the `--fail-above` gate tripped: estimated share of wrong labels above the threshold
"""

from __future__ import annotations


class LabelfixError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class InputError(LabelfixError):
    """The user's input is wrong: the message names the file, row, column or flag at fault."""

    exit_code = 2


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

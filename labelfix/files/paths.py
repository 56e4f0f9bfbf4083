"""Paths the user typed (flags, CSV cells): refused with one line before the system chokes.

A NUL byte or a name over the file system's limit makes Python raise ValueError or OSError
deep inside a command; these checks name the flag or row instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from labelfix.errors import InputError

NAME_MAX = 255  # bytes of one path component on Linux, macOS and Windows file systems
PATH_MAX = 4095  # bytes of a whole path (Linux PATH_MAX less the terminating NUL)


def show(value, limit: int = 60) -> str:
    """repr of a user's value for a one-line message, shortened in the middle when long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 4 :]} ({len(str(value))} chars)"


def path_problem(value) -> str | None:
    """Why `value` cannot be a path on this system (NUL byte, too long), or None."""
    text = os.fspath(value)
    if "\x00" in text:
        return "contains a NUL byte"
    raw = os.fsencode(text)
    if len(raw) > PATH_MAX:
        return f"is {len(raw)} bytes long (the limit is {PATH_MAX})"
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        return f"has a {longest}-byte name (the limit is {NAME_MAX} bytes per folder or file name)"
    return None


def check_path_flag(value, flag: str) -> Path | None:
    """The Path of a path flag's value, or a one-line InputError naming the flag."""
    if value is None:
        return None
    problem = path_problem(value)
    if problem:
        raise InputError(f"{flag} {show(os.fspath(value))}: {problem}")
    return Path(value)

"""Names and relative paths read from configs and data files, checked before they become file paths.

A split name, a scene-list name, a log name or a ``log_dir`` / ``scene_list`` entry of a split definition
comes from a user's command line or a YAML file; none of them may lead outside the folder it is relative to
(``split=../../..``, ``scene_list: ../../etc/passwd``, ``log_dir: ../other``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

#: A plain name: letters, digits, ``_``, ``-`` and ``.``, not starting with a dot (so never ``..``).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def plain_name(value: object, what: str, error: type[ValueError] = ValueError) -> str:
    """``value`` when it is a plain file name (no folder part, no ``..``); else raise ``error`` naming it.

    Args:
        value: the name (a split, a scene list, a log).
        what: what it names, for the message (``"split"``).
        error: the exception class to raise.
    """
    if not isinstance(value, str) or _PLAIN_NAME.fullmatch(value) is None:
        raise error(f"{what} {value!r} is not a plain name (letters, digits, '_', '-', '.'; no folders, no '..')")
    return value


def path_inside(
    root: str | os.PathLike[str], relative: object, what: str, error: type[ValueError] = ValueError
) -> Path:
    """``root / relative`` when ``relative`` is a relative path that stays inside ``root``; else raise ``error``.

    The check is on the path's text (absolute paths, drive letters and ``..`` parts are refused), so a
    ``root`` that is itself a symbolic link keeps working.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise error(f"{what} {relative!r} is not a relative path")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise error(f"{what} {relative!r} leaves its folder {root} (absolute paths and '..' are not allowed)")
    return Path(root) / relative

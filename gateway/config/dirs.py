"""Directories only the gateway's user may enter: the state dir, its subdirectories, the servers' work dirs."""

from __future__ import annotations

from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create `path` and every missing parent with mode 0700; return `path`.

    `Path.mkdir(parents=True, mode=...)` gives the mode to the last directory only,
    so whichever command created the state dir first (`manifests validate` in the
    quickstart) decided whether other users could list it. Existing directories
    are left as they are.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process
            pass
    return path

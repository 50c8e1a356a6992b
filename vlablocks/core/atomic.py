"""Atomic directory writes: build in a temporary sibling, rename into place, never half-written.

What they create has the user's umask, like any file they write: `tempfile` makes its folders 0700 and its files
0600, which renamed into place would keep a checkpoint unreadable to the rest of a shared cluster's group.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read from /proc where it can be: os.umask alone cannot read it without setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask_allows(path: str | os.PathLike, directory: bool) -> None:
    """Sets `path`'s mode to what a plain mkdir / open would have given it (0777 / 0666 less the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def with_umask(root: Path) -> None:
    """`root` and everything under it get the modes a plain mkdir / open gives (executable bits kept)."""
    mask = current_umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o111
        os.chmod(path, (0o777 if executable else 0o666) & ~mask)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary directory that replaces `target` only if the block finishes.

    A crash or kill inside the block leaves `target` as it was (the temporary `.name.tmp-*` sibling
    is removed on exceptions; after SIGKILL it is left behind but never mistaken for a checkpoint).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    as_umask_allows(tmp, directory=True)
    try:
        yield tmp
        with_umask(tmp)  # what the block wrote with a narrower mode (safetensors writes 0600) gets the umask's
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Writes `target` through a temporary sibling and a rename: a reader (another rank on shared storage)
    sees the old file or the whole new one, never a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    as_umask_allows(tmp, directory=False)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

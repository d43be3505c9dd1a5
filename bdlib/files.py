"""How bdlib writes files, for the store and the figure writer alike: the permissions new files
get (the process's umask, read once) and one paragraph for a full disk. Nothing of bdlib is
imported here."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["UMASK", "disk_full_named"]


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The process's umask, read once at import (setting the umask to read it is not thread-safe):
# what new entries and figures are opened up to.
UMASK = _read_umask()


@contextlib.contextmanager
def disk_full_named(directory: Path, what: str) -> Iterator[None]:
    """Turn a write in the block that failed because ``directory``'s disk is full (an ENOSPC
    OSError, or safetensors' error with "No space left on device") into one OSError(ENOSPC)
    paragraph naming ``what`` and ``directory`` and its free space; other errors pass unchanged."""
    try:
        yield
    except Exception as err:
        if getattr(err, "errno", None) != errno.ENOSPC and "No space left on device" not in str(err):
            raise
        try:
            free = f"{shutil.disk_usage(directory).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        raise OSError(
            errno.ENOSPC,
            f"no space left on the disk of the {what} {directory} ({free}): nothing was half-written; free some "
            f"space there, or point {'BDLIB_CACHE' if what == 'store' else 'BDLIB_FIGURES (--figures)'} at a "
            "disk with room, and rerun (finished results are kept in the store).",
        ) from None

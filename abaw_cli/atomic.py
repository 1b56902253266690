"""The one way the project writes a file: to a temporary name beside it, renamed into place only
when the content is complete, so a reader (or a resumed run) never sees half a file.

    with atomic_open(path, "w") as fh: ...          # text or binary file objects
    atomic_write_text(path, text)
    with atomic_path(path) as tmp: torch.save(obj, tmp)     # for writers that want a file name
    pending = PendingFile(path); writer = open_something(pending.tmp); ...; pending.commit()

The temporary name is `.<name>.tmp-<pid>` in the target's folder: the same file system (so the
rename is atomic), hidden, and not matched by a glob for the target's suffix (`*.json` finds
finished files only). Writers that choose the container from the file name (OpenCV's video
writer) ask for a temporary suffix: `.<stem>.tmp-<pid><suffix>`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_name(path: Path, suffix: str | None = None) -> Path:
    """The temporary name this process writes `path` under (ending in `suffix` when given)."""
    if suffix:
        return path.with_name(f".{path.stem}.tmp-{os.getpid()}{suffix}")
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class PendingFile:
    """A temporary file next to `path` that becomes `path` on `commit()`; `abort()` drops it.

    Also a context manager over the temporary path: commit on success, abort on an error.
    """

    def __init__(self, path: str | os.PathLike, suffix: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_name(self.path, suffix)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> PendingFile:
    """`with atomic_path(path) as tmp:` write `tmp` by any means; it becomes `path` on success."""
    return PendingFile(path, suffix)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", fsync: bool = False, **kwargs: Any) -> Iterator[IO]:
    """Open the temporary file of `path`; it replaces `path` only if the block succeeds.

    Text mode defaults to UTF-8 and newline="" (CSV writers choose their own line ends).
    `fsync` flushes the data to disk before the rename (checkpoints: survive a power loss).
    """
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    pending = PendingFile(path)
    try:
        with open(pending.tmp, mode, **kwargs) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        pending.commit()
    finally:
        pending.abort()  # a no-op after the rename


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


class AtomicWriter(ABC):
    """Context-manager rule for streaming writers built over a PendingFile: on success `close()`
    moves the file into place, on an error `abort()` drops it."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @abstractmethod
    def close(self) -> Any: ...

    @abstractmethod
    def abort(self) -> None: ...

"""Safe writers, the run lock and a full disk: how every artefact reaches the disk.

A file is written to a temporary name, fsynced and renamed into place, so a killed process never
leaves a half-written file that looks finished; a full disk (ENOSPC) raises DiskFullError, one line
naming the file, with every earlier file intact. A directory is written by one process at a time
(`dir_lock`, an flock that the kernel frees when its holder dies). Records (evilspectra.artefacts.records)
are read and written through `load_record` / `write_record`, the only JSON reader and writer of a
contract file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from evilspectra.errors import DataError, EvilSpectraError

LOCK = ".lock"  # DIRECTORY/.lock: the flock of the process writing the directory (holds its pid)


class DiskFullError(EvilSpectraError):
    """The disk filled up while writing an artefact; earlier files are intact."""


class RunLockedError(EvilSpectraError):
    """Another live process is writing the run directory."""


# how the libraries word ENOSPC when they raise an error of their own: safetensors' SafetensorError and
# pyarrow quote the OS message, sqlite says SQLITE_FULL's text
DISK_FULL_MESSAGES = (os.strerror(errno.ENOSPC), "database or disk is full")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, whether raised as an OSError or as a library's own error type."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return any(text in str(exc) for text in DISK_FULL_MESSAGES)


@contextlib.contextmanager
def disk_full_guard(path: Path, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into DiskFullError naming `path`; remove `cleanup` (a temp) first."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True) if cleanup.is_dir() else cleanup.unlink(missing_ok=True)
        raise DiskFullError(
            f"{path}: disk full (ENOSPC) while writing it; earlier files are intact; free space and rerun "
            "(finished work is reused)"
        ) from None


@contextlib.contextmanager
def named_as_target(path: Path) -> Iterator[None]:
    """Report an OSError about a writer's temporary file (`.spectra.csv.x1y2.tmp`, a name the user
    never chose) as an error about `path`, the file being written (read-only or missing folder...)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None or Path(exc.filename) == path:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc


def file_mode() -> int:
    """The mode a new file gets under the user's umask (mkstemp and safetensors create files 0600,
    which a group sharing the results could not read)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory + fsync + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with named_as_target(path):
        with disk_full_guard(path):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with disk_full_guard(path), os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), file_mode())
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)` (e.g. DataFrame.to_parquet, Figure.savefig), then rename the temp file into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with named_as_target(path):
            with disk_full_guard(path):
                write(tmp)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # no temporary to remove; a read-only folder refuses even that
            tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    """`obj` (JSON-able, or a pydantic model: every field) as indented JSON, atomically."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_record(path: Path, record: BaseModel) -> None:
    """A contract file from its record: the fields the writer set (a file never gains defaults it did
    not hold), under their on-disk names (`class`), in the record's field order."""
    atomic_write_json(path, record.model_dump(mode="json", by_alias=True, exclude_unset=True))


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written directory into place, replacing any older version."""
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def write_dir(final_dir: Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_dir)` then move tmp_dir into place; ENOSPC -> DiskFullError, old version kept."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_guard(final_dir, cleanup=tmp):
        write(tmp)
    mode = file_mode()
    for written in tmp.rglob("*"):
        if written.is_file():
            written.chmod(mode)
    replace_dir(tmp, final_dir)
    return final_dir


def read_json(path: Path) -> Any:
    """A JSON file written by a stage, or None when absent or unreadable (not written yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


R = TypeVar("R", bound=BaseModel)


def load_record(cls: type[R], path: Path) -> R | None:
    """Read and validate a JSON artefact; None when absent or torn; DataError naming the field when wrong."""
    data = read_json(path)
    if data is None:
        return None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise DataError(f"{path}: field {field}: {err['msg']}; expected a file written by evilspectra") from None


# ----------------------------------------------------------------------------------- locks

_HELD: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth): re-entrant within a process


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on DIRECTORY/.lock; refuse (RunLockedError) while a live process holds it.

    The kernel drops an flock when its holder exits, even on SIGKILL, so a stale lock never blocks.
    Re-entrant within a process (a sweep worker locks a run, then train() locks it again).
    """
    path = (Path(directory) / LOCK).resolve()
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
        try:
            yield
        finally:
            _HELD[path] = (fd, _HELD[path][1] - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunLockedError(
            f"{directory}: in use by process {holder}; wait for it to finish (the lock frees itself when it exits)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[path] = (fd, 1)
    try:
        yield
    finally:
        if _HELD[path][1] <= 1:
            del _HELD[path]
            os.close(fd)  # closing the descriptor releases the flock
        else:
            _HELD[path] = (fd, _HELD[path][1] - 1)

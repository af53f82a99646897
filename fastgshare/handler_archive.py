"""A handler (or template) folder as the provider receives it from a CLI on another machine.

Local mode's "image" is a folder. A CLI on the provider's machine names the folder; one elsewhere
sends it as a gzipped tar (``pack``), which the provider unpacks under its state directory
(``unpack``): regular files and folders only, no absolute paths, no ``..``, no links, within a
size and file-count bound. ``folder_digest`` names a folder's content, so both sides can tell
whether they mean the same code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".venv", "node_modules", ".pytest_cache"})
"""Folders left out of digests and archives (caches and tooling, not code)."""
MAX_FILES = 2000
"""A folder with more files than this is refused (it is code, not data)."""
MAX_UNPACKED_BYTES = 64 << 20
"""Largest total size of an unpacked archive."""


class ArchiveError(ValueError):
    """A folder or archive that cannot be taken (too big, unsafe member, not a tar.gz)."""


def _files(folder: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for f in sorted(files):
            if f.endswith(".pyc"):
                continue
            out.append(Path(root) / f)
            if len(out) > MAX_FILES:
                raise ArchiveError(f"{folder} has more than {MAX_FILES} files")
    return out


def folder_digest(folder: Path) -> str:
    """sha256 over the folder's files (relative paths and contents, in order), caches left out."""
    h = hashlib.sha256()
    for path in _files(folder):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def pack(folder: Path) -> bytes:
    """The folder's files as a gzipped tar (paths relative to it; same files as the digest).
    Deterministic: the same content packs to the same bytes (no times, owners or modes beyond
    the executable bit), so the provider can name what it unpacks by the archive's hash."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in _files(folder):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size = len(data)
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> Path:
    """Unpack ``pack``'s output into ``dest`` (created; kept as it is when it exists already, as
    the caller names it by content). Raises ``ArchiveError`` for anything unsafe or too big."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        try:
            tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArchiveError(f"not a gzipped tar: {e}") from e
        with tar:
            total, count = 0, 0
            for member in tar:
                rel = PurePosixPath(member.name)
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise ArchiveError(f"unsafe path {member.name!r}")
                if member.isdir():
                    (tmp / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise ArchiveError(f"{member.name!r} is not a regular file or folder")
                count += 1
                total += member.size
                if count > MAX_FILES or total > MAX_UNPACKED_BYTES:
                    raise ArchiveError(f"more than {MAX_FILES} files or {MAX_UNPACKED_BYTES >> 20} MiB")
                src = tar.extractfile(member)
                if src is None:
                    raise ArchiveError(f"{member.name!r} cannot be read")
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with src, open(tmp / rel, "wb") as out:
                    shutil.copyfileobj(src, out)
        try:
            tmp.rename(dest)
        except OSError:  # another request unpacked the same content first
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return dest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Handler folders sent to the provider as archives (``fastgshare.handler_archive``): what packs,
what unpacks, and what is refused. Real files in a temporary folder."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fastgshare.handler_archive import ArchiveError, folder_digest, pack, unpack


def make_folder(root: Path) -> Path:
    d = root / "fn"
    (d / "lib").mkdir(parents=True)
    (d / "handler.py").write_text("def handle(event, context):\n    return 'x'\n")
    (d / "lib" / "util.py").write_text("X = 1\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"\0cache")
    return d


def test_pack_unpack_round_trip_keeps_the_digest(tmp_path: Path) -> None:
    d = make_folder(tmp_path)
    data = pack(d)
    assert pack(d) == data, "deterministic: same content, same bytes"
    out = unpack(data, tmp_path / "out" / "a")
    assert (out / "lib" / "util.py").read_text() == "X = 1\n"
    assert not (out / "__pycache__").exists()
    assert folder_digest(out) == folder_digest(d)
    assert unpack(data, out) == out, "an existing destination (same name, same content) is kept"


def test_the_digest_follows_content_and_names(tmp_path: Path) -> None:
    d = make_folder(tmp_path)
    before = folder_digest(d)
    (d / "__pycache__" / "other.pyc").write_bytes(b"more cache")
    assert folder_digest(d) == before
    (d / "lib" / "util.py").write_text("X = 2\n")
    assert folder_digest(d) != before
    (d / "lib" / "util.py").write_text("X = 1\n")
    (d / "lib" / "util.py").rename(d / "lib" / "util2.py")
    assert folder_digest(d) != before


def tar_gz(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(("data", "why"), [
    (b"not an archive", "not a gzipped tar"),
    (tar_gz((member("/etc/evil"), b"x")), "unsafe path"),
    (tar_gz((member("../evil"), b"x")), "unsafe path"),
    (tar_gz((member("a/../../evil"), b"x")), "unsafe path"),
    (tar_gz((member("link", tarfile.SYMTYPE, "/etc/passwd"), b"")), "not a regular file"),
    (tar_gz((member("hard", tarfile.LNKTYPE, "handler.py"), b"")), "not a regular file"),
])
def test_unsafe_archives_are_refused_and_leave_nothing(tmp_path: Path, data: bytes, why: str) -> None:
    with pytest.raises(ArchiveError, match=why):
        unpack(data, tmp_path / "images" / "x")
    assert list((tmp_path / "images").iterdir()) == []
    assert not (tmp_path.parent / "evil").exists()

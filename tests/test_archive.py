"""Safe extraction: good archives extract exactly; unsafe members are refused and leave nothing."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from spmlbench.data.archive import safe_extract
from spmlbench.errors import DataError

FILES = {"top/a.txt": b"alpha\n", "top/sub/b.bin": bytes(range(256)) * 10, "top/empty.txt": b""}


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    tar.addfile(info)


def make_tar(path: Path, members: list[tuple[str, object]], mode: str = "w") -> Path:
    """members: (name, bytes) for files, (name, (type, linkname)) for links/specials."""
    with tarfile.open(path, mode) as tar:
        for name, what in members:
            if isinstance(what, bytes):
                add_file(tar, name, what)
            else:
                kind, linkname = what  # type: ignore[misc]
                add_special(tar, name, kind, linkname)
    return path


def make_zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def assert_nothing_left(workdir: Path, dest: Path, archive: Path) -> None:
    """Neither ``dest`` nor any temporary folder exists beside it, and nothing escaped."""
    assert not dest.exists()
    assert sorted(p.name for p in workdir.iterdir()) == [archive.name]
    assert not (workdir.parent / "evil").exists()


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_any_compression_extracts_exactly(tmp_path: Path, mode: str) -> None:
    members: list[tuple[str, object]] = [("top", (tarfile.DIRTYPE, ""))]
    members += list(FILES.items())
    members += [
        ("top/link_to_a", (tarfile.SYMTYPE, "a.txt")),
        ("top/sub/up_link", (tarfile.SYMTYPE, "../a.txt")),  # '..' inside a link target that stays inside
        ("top/hard_a", (tarfile.LNKTYPE, "top/a.txt")),
    ]
    archive = make_tar(tmp_path / "ok.tar", members, mode)
    dest = tmp_path / "out" / "dest"
    assert safe_extract(archive, dest, progress=False) == dest
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert os.readlink(dest / "top/link_to_a") == "a.txt"
    assert (dest / "top/sub/up_link").read_bytes() == b"alpha\n"
    assert (dest / "top/hard_a").read_bytes() == b"alpha\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dest"]  # no temp folder left


BAD_TARS = {
    "dotdot": ([("top/ok.txt", b"ok"), ("../evil", b"x")], "'..' component", "../evil"),
    "nested_dotdot": ([("top/ok.txt", b"ok"), ("top/../../evil", b"x")], "'..' component", "top/../../evil"),
    "absolute": ([("top/ok.txt", b"ok"), ("/tmp/spml_evil_abs", b"x")], "absolute path", "/tmp/spml_evil_abs"),
    "symlink_out": (
        [("top/ok.txt", b"ok"), ("top/link", (tarfile.SYMTYPE, "../../evil"))],
        "points outside",
        "top/link",
    ),
    "symlink_abs": ([("top/ok.txt", b"ok"), ("top/link", (tarfile.SYMTYPE, "/etc/passwd"))], "absolute", "top/link"),
    "hardlink_out": ([("top/ok.txt", b"ok"), ("top/hard", (tarfile.LNKTYPE, "../evil"))], "'..'", "top/hard"),
    "hardlink_abs": ([("top/hard", (tarfile.LNKTYPE, "/etc/passwd"))], "absolute path", "top/hard"),
    # each link stays inside on paper, but 'u' is the root itself, so 'u/v' -> '..' leaves it
    "symlink_chain": (
        [("u", (tarfile.SYMTYPE, ".")), ("u/v", (tarfile.SYMTYPE, ".."))],
        "points outside",
        "u/v",
    ),
    "char_device": ([("top/ok.txt", b"ok"), ("top/null", (tarfile.CHRTYPE, ""))], "device file", "top/null"),
    "block_device": ([("top/disk", (tarfile.BLKTYPE, ""))], "device file", "top/disk"),
    "fifo": ([("top/pipe", (tarfile.FIFOTYPE, ""))], "FIFO", "top/pipe"),
}


@pytest.mark.parametrize("case", list(BAD_TARS))
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_unsafe_tar_members_are_refused_and_nothing_is_left(tmp_path: Path, case: str, mode: str) -> None:
    members, why, member = BAD_TARS[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = make_tar(work / "bad.tar", members, mode)  # type: ignore[arg-type]
    dest = work / "dest"
    with pytest.raises(DataError) as info:
        safe_extract(archive, dest, progress=False)
    msg = str(info.value)
    assert str(archive) in msg and repr(member) in msg and str(why) in msg and "\n" not in msg
    assert_nothing_left(work, dest, archive)
    assert not Path("/tmp/spml_evil_abs").exists()


def test_zip_extracts_exactly_with_inside_symlink(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "ok.zip", [("top/", b""), *FILES.items()], symlinks={"top/ln": "sub/b.bin"})
    dest = tmp_path / "dest"
    safe_extract(archive, dest, progress=False)
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert os.readlink(dest / "top/ln") == "sub/b.bin"
    assert (dest / "top/ln").read_bytes() == FILES["top/sub/b.bin"]


@pytest.mark.parametrize(
    ("members", "symlinks", "why", "member"),
    [
        ([("top/ok.txt", b"ok"), ("../evil", b"x")], None, "'..' component", "../evil"),
        ([("top/ok.txt", b"ok"), ("..\\evil", b"x")], None, "'..' component", "..\\evil"),
        ([("top/ok.txt", b"ok"), ("/tmp/spml_evil_abs", b"x")], None, "absolute path", "/tmp/spml_evil_abs"),
        ([("top/ok.txt", b"ok")], {"top/ln": "../../evil"}, "points outside", "top/ln"),
        ([("top/ok.txt", b"ok")], {"top/ln": "/etc/passwd"}, "absolute", "top/ln"),
    ],
)
def test_unsafe_zip_members_are_refused_and_nothing_is_left(
    tmp_path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None, why: str, member: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = make_zip(work / "bad.zip", members, symlinks)
    dest = work / "dest"
    with pytest.raises(DataError) as info:
        safe_extract(archive, dest, progress=False)
    msg = str(info.value)
    assert str(archive) in msg and repr(member) in msg and why in msg
    assert_nothing_left(work, dest, archive)


def test_extracting_into_an_existing_folder_merges_top_level_entries(tmp_path: Path) -> None:
    dest = tmp_path / "coco"
    safe_extract(make_zip(tmp_path / "ann.zip", [("annotations/i.json", b"{}")]), dest, progress=False)
    safe_extract(make_zip(tmp_path / "val.zip", [("val2014/a.jpg", b"jpg")]), dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["annotations", "val2014"]
    assert (dest / "val2014/a.jpg").read_bytes() == b"jpg"
    # the same archive again: refused, the existing folder untouched, no temp folder left
    again = make_tar(tmp_path / "val.tar", [("val2014/a.jpg", b"other")])
    with pytest.raises(DataError, match=r"val2014 already exists \(extracted before\?\); delete it"):
        safe_extract(again, dest, progress=False)
    assert (dest / "val2014/a.jpg").read_bytes() == b"jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.zip", "coco", "val.tar", "val.zip"]


def test_not_an_archive_corrupt_archive_and_bad_dest(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not an archive" * 100)
    with pytest.raises(DataError, match="not a tar or zip archive"):
        safe_extract(junk, tmp_path / "d1", progress=False)
    good = make_tar(tmp_path / "good.tar.gz", list(FILES.items()), "w:gz")
    truncated = tmp_path / "trunc.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"trunc.tar.gz: corrupt or truncated archive"):
        safe_extract(truncated, tmp_path / "d2", progress=False)
    with pytest.raises(DataError, match="archive not found"):
        safe_extract(tmp_path / "missing.zip", tmp_path / "d3", progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        safe_extract(good, tmp_path / "afile", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "good.tar.gz", "junk.tar", "trunc.tar.gz"]


def test_progress_bar_path_runs(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "p.tar.gz", list(FILES.items()), "w:gz")
    assert (safe_extract(archive, tmp_path / "d", progress=True) / "top/a.txt").read_bytes() == b"alpha\n"

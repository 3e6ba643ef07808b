"""Downloads against a loopback HTTP server: resume, fallback, verification, clear errors."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import filelock
import pytest

from spmlbench.data.download import fetch, hash_file, verify_file
from spmlbench.data.manifest import FileSpec
from spmlbench.errors import DataError, DownloadError
from spmlbench.progress import TaskAdvance, TaskEnd, TaskStart

try:  # the fixture module lives in tests/ (package or rootdir-on-path layouts)
    from tests.http_server import LoopbackServer, http_server  # noqa: F401
except ImportError:  # pragma: no cover
    from http_server import LoopbackServer, http_server  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.network

PAYLOAD = random.Random(1200).randbytes(300_000)
NAME = "data.bin"


def spec_for(*urls: str, data: bytes = PAYLOAD, md5: bool = True, sha256: bool = True) -> FileSpec:
    """A FileSpec whose checks are computed here with hashlib (independent of the code under test)."""
    return FileSpec(
        name=NAME,
        urls=tuple(urls),
        size=len(data),
        md5=hashlib.md5(data).hexdigest() if md5 else None,
        sha256=hashlib.sha256(data).hexdigest() if sha256 else None,
    )


def leftovers(folder: Path) -> list[str]:
    """Files in ``folder`` other than the lock file."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_fetch_downloads_and_verifies(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD)
    events: list[object] = []
    out = fetch(spec_for(url), tmp_path / "dl", progress=events.append)
    assert out == tmp_path / "dl" / NAME
    start, *advances, end = events  # progress is a stream of events: one task per connection
    assert isinstance(start, TaskStart) and start.unit == "bytes" and start.total == len(PAYLOAD)
    assert all(isinstance(e, TaskAdvance) and e.key is start.key for e in advances)
    assert sum(e.amount for e in advances) == len(PAYLOAD)
    assert isinstance(end, TaskEnd) and end.key is start.key
    assert out.read_bytes() == PAYLOAD
    assert leftovers(tmp_path / "dl") == [NAME]
    assert [r.range for r in http_server.requests_for("/data.bin")] == [None]


def test_interrupted_download_resumes_with_range(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD, drop_after=100_000)  # first response dies mid-body
    out = fetch(spec_for(url), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    reqs = http_server.requests_for("/data.bin")
    assert [(r.range, r.status) for r in reqs] == [(None, 200), ("bytes=100000-", 206)]
    assert leftovers(tmp_path) == [NAME]


def test_part_file_from_a_killed_run_is_resumed(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD)
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:123_456])
    out = fetch(spec_for(url), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r.range for r in http_server.requests_for("/data.bin")] == ["bytes=123456-"]


def test_complete_part_file_is_verified_and_renamed_without_network(
    http_server: LoopbackServer, tmp_path: Path
) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD)
    out = fetch(spec_for(http_server.url("/data.bin")), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD and http_server.requests == []


def test_server_ignoring_range_restarts_from_zero(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD, ignore_range=True)
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:50_000])
    out = fetch(spec_for(url), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [(r.range, r.status) for r in http_server.requests_for("/data.bin")] == [("bytes=50000-", 200)]


def test_stale_part_with_other_bytes_is_restarted_once(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD)
    (tmp_path / f"{NAME}.part").write_bytes(b"\x00" * 1000)  # not a prefix of PAYLOAD
    out = fetch(spec_for(url), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r.range for r in http_server.requests_for("/data.bin")] == ["bytes=1000-", None]


def test_redirect_keeps_the_range_header(http_server: LoopbackServer, tmp_path: Path) -> None:
    http_server.add("/real.bin", PAYLOAD, drop_after=70_000)
    url = http_server.add("/old.bin", redirect_to="/real.bin")
    out = fetch(spec_for(url), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r.range for r in http_server.requests_for("/real.bin")] == [None, "bytes=70000-"]


def test_wrong_checksum_leaves_no_file_and_names_the_url(http_server: LoopbackServer, tmp_path: Path) -> None:
    bad = bytearray(PAYLOAD)
    bad[12345] ^= 0xFF  # same size, one byte differs
    url = http_server.add("/data.bin", bytes(bad))
    with pytest.raises(DownloadError) as info:
        fetch(spec_for(url), tmp_path, progress=False)
    msg = str(info.value)
    assert url in msg and "md5" in msg and hashlib.md5(bytes(bad)).hexdigest() in msg
    assert "--from PATH" in msg and "\n" not in msg
    assert leftovers(tmp_path) == []


def test_sha256_alone_is_checked(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD[::-1])  # same size, other bytes
    with pytest.raises(DownloadError, match="sha256"):
        fetch(spec_for(url, md5=False), tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_wrong_size_from_server_is_refused_before_downloading(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD[:-10])
    with pytest.raises(DownloadError, match=r"server has 299990 bytes, expected 300000"):
        fetch(spec_for(url), tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_bad_mirror_falls_through_to_a_good_one(http_server: LoopbackServer, tmp_path: Path) -> None:
    bad = http_server.add("/bad.bin", PAYLOAD[::-1])
    good = http_server.add("/good.bin", PAYLOAD)
    out = fetch(spec_for(bad, good), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert len(http_server.requests_for("/bad.bin")) == 1


def test_dead_first_mirror_falls_back_to_the_second(http_server: LoopbackServer, tmp_path: Path) -> None:
    good = http_server.add("/data.bin", PAYLOAD)
    out = fetch(spec_for(http_server.dead_url("/data.bin"), good), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD


def test_404_mirror_falls_back_and_extra_urls_come_first(http_server: LoopbackServer, tmp_path: Path) -> None:
    mine = http_server.add("/mine.bin", PAYLOAD)
    official = http_server.add("/official.bin", PAYLOAD)
    out = fetch(spec_for(http_server.url("/gone.bin"), official), tmp_path, extra_urls=[mine], progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r.path for r in http_server.requests] == ["/mine.bin"]


def test_404_everywhere_gives_one_clear_line(http_server: LoopbackServer, tmp_path: Path) -> None:
    urls = [http_server.url("/a/data.bin"), http_server.url("/b/data.bin")]
    dead = http_server.dead_url("/c/data.bin")
    with pytest.raises(DownloadError) as info:
        fetch(spec_for(*urls, dead), tmp_path, progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{NAME}: download failed from every mirror")
    assert f"{urls[0]} (HTTP 404" in msg and f"{urls[1]} (HTTP 404" in msg
    assert f"{dead} (" in msg and "refused" in msg.lower()
    assert "--from PATH" in msg
    assert leftovers(tmp_path) == []


def test_connection_dying_before_any_byte_gives_up_on_that_mirror(
    http_server: LoopbackServer, tmp_path: Path
) -> None:
    flaky = http_server.add("/flaky.bin", PAYLOAD, drop_after=0, drops=100)
    with pytest.raises(DownloadError, match=r"flaky.bin \(connection lost after 0 bytes"):
        fetch(spec_for(flaky), tmp_path, progress=False)
    assert len(http_server.requests_for("/flaky.bin")) == 3


def test_existing_verified_file_skips_network(http_server: LoopbackServer, tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(PAYLOAD)
    out = fetch(spec_for(http_server.url("/data.bin"), LoopbackServer.dead_url("/x")), tmp_path, progress=False)
    assert out == tmp_path / NAME and http_server.requests == []


def test_existing_corrupt_file_is_downloaded_again(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD)
    (tmp_path / NAME).write_bytes(PAYLOAD[:-1] + b"?")
    assert fetch(spec_for(url), tmp_path, progress=False).read_bytes() == PAYLOAD
    assert len(http_server.requests) == 1


def test_unverifiable_spec_trusts_a_complete_transfer(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD, drop_after=1000)
    spec = FileSpec(name=NAME, urls=(url,))
    assert fetch(spec, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert [r.range for r in http_server.requests] == [None, "bytes=1000-"]


def test_a_second_process_downloading_the_same_file_is_refused(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.add("/data.bin", PAYLOAD)
    with filelock.FileLock(str(tmp_path / f".{NAME}.lock")):
        with pytest.raises(DownloadError, match="another spmlbench process is downloading"):
            fetch(spec_for(url), tmp_path, progress=False)
    assert http_server.requests == []


def test_verify_file_and_hash_file(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(PAYLOAD)
    spec = spec_for()
    verify_file(path, spec)  # no error
    assert hash_file(path) == {
        "size": len(PAYLOAD),
        "md5": hashlib.md5(PAYLOAD).hexdigest(),
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
    }
    path.write_bytes(PAYLOAD[:-1])
    with pytest.raises(DataError, match=rf"{NAME}: size 299999 bytes, expected 300000;.*--from"):
        verify_file(path, spec)
    path.write_bytes(b"x" + PAYLOAD[1:])
    with pytest.raises(DataError) as info:
        verify_file(path, spec)
    assert f"md5 {hashlib.md5(b'x' + PAYLOAD[1:]).hexdigest()}, expected {spec.md5}" in str(info.value)
    with pytest.raises(DataError, match="file not found"):
        verify_file(tmp_path / "missing.bin", spec)

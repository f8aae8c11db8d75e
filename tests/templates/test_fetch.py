"""Tests of template downloads, mirrors, trust on first use and TemplateFlow look-ups.

Nothing here reaches the internet: files are served by a local HTTP server or
through ``file://`` URLs, and the upstream URLs used point at the reserved
``.invalid`` domain.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from isyb.errors import IsybError
from isyb.templates import fetch
from isyb.templates.fetch import (
    DigestMismatchError,
    UnpinnedDigestWarning,
    digest_sidecar,
    download,
    fetch_pinned,
    resolve_url,
    templateflow_files,
)

UPSTREAM = "https://upstream.invalid/projects/isybdemo/Template/CN200.nii.gz"
WRONG = "0" * 64


@pytest.fixture(autouse=True)
def _local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No mirror from the caller's environment, and no proxy for the local servers."""
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)
    for key in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(key, "127.0.0.1,localhost")


def make_nifti(path: Path, seed: int) -> bytes:
    """Write a small random NIfTI volume to ``path`` and return its bytes."""
    rng = np.random.default_rng(seed)
    data = rng.random((10, 10, 10), dtype=np.float32)
    nib.Nifti1Image(data, np.eye(4)).to_filename(str(path))
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/served``; counts GET requests."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state = {"running": True}

    def stop() -> None:
        if state["running"]:
            state["running"] = False
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)

    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}/x",
                          requests=requests, stop=stop)
    stop()


@pytest.fixture
def served(server: SimpleNamespace) -> SimpleNamespace:
    """The HTTP server, with ``x/CN200.nii.gz`` served and set as the mirror."""
    folder = server.root / "x"
    folder.mkdir()
    server.data = make_nifti(folder / "CN200.nii.gz", seed=1)
    server.file = folder / "CN200.nii.gz"
    return server


@pytest.fixture
def file_mirror(tmp_path: Path) -> SimpleNamespace:
    """A ``file://`` mirror folder holding ``CN200.nii.gz``."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    data = make_nifti(folder / "CN200.nii.gz", seed=2)
    return SimpleNamespace(root=folder, url=folder.as_uri(), data=data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- mirrors


def test_resolve_url_without_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)
    assert resolve_url(UPSTREAM) == UPSTREAM
    monkeypatch.setenv(fetch.MIRROR_ENV, "")
    assert resolve_url(UPSTREAM) == UPSTREAM


@pytest.mark.parametrize("mirror", ["http://127.0.0.1:8000/x", "http://127.0.0.1:8000/x/",
                                    "file:///srv/mirror"])
def test_resolve_url_with_mirror(monkeypatch: pytest.MonkeyPatch, mirror: str) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, mirror)
    expected = mirror.rstrip("/") + "/CN200.nii.gz"
    assert resolve_url(UPSTREAM) == expected
    assert resolve_url(UPSTREAM + "?raw=true") == expected
    assert resolve_url(resolve_url(UPSTREAM)) == expected


def test_resolve_url_with_folder_mirror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, str(tmp_path))
    assert resolve_url(UPSTREAM) == tmp_path.resolve().as_uri() + "/CN200.nii.gz"


def test_resolve_url_without_file_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, "file:///srv/mirror")
    with pytest.raises(IsybError, match="no file name"):
        resolve_url("https://upstream.invalid/")


# --------------------------------------------------------------------------- download


def test_download_over_http_returns_digest(served: SimpleNamespace, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "CN200.nii.gz"
    digest = download(f"{served.url}/CN200.nii.gz", dest, None, progress=True)
    assert digest == sha256(served.data)
    assert dest.read_bytes() == served.data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["CN200.nii.gz"]


def test_http_mirror_with_correct_sha256(served: SimpleNamespace, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, served.url)
    dest = tmp_path / "cache" / "CN200.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnpinnedDigestWarning)
        assert fetch_pinned(UPSTREAM, dest, sha256(served.data).upper()) == dest
    assert dest.read_bytes() == served.data
    assert served.requests == ["/x/CN200.nii.gz"]
    loaded = np.asarray(nib.load(str(dest)).dataobj)
    expected = np.asarray(nib.load(str(served.file)).dataobj)
    np.testing.assert_array_equal(loaded, expected)
    assert digest_sidecar(dest).read_text().split() == [sha256(served.data), "CN200.nii.gz"]


def test_file_mirror_with_correct_sha256(file_mirror: SimpleNamespace, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, file_mirror.url)
    dest = tmp_path / "cache" / "CN200.nii.gz"
    assert fetch_pinned(UPSTREAM, dest, sha256(file_mirror.data)) == dest
    assert dest.read_bytes() == file_mirror.data


@pytest.mark.parametrize("kind", ["http", "file"])
def test_wrong_sha256_leaves_no_file(kind: str, served: SimpleNamespace,
                                     file_mirror: SimpleNamespace, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = served.url if kind == "http" else file_mirror.url
    monkeypatch.setenv(fetch.MIRROR_ENV, mirror)
    dest_dir = tmp_path / "cache"
    dest = dest_dir / "CN200.nii.gz"
    with pytest.raises(DigestMismatchError) as info:
        fetch_pinned(UPSTREAM, dest, WRONG)
    message = str(info.value)
    assert "\n" not in message
    assert f"{mirror}/CN200.nii.gz" in message
    assert WRONG in message
    served_data = served.data if kind == "http" else file_mirror.data
    assert sha256(served_data) in message
    assert list(dest_dir.iterdir()) == []  # no file, no temporary file, no sidecar

    with pytest.raises(DigestMismatchError):
        download(resolve_url(UPSTREAM), dest, WRONG)
    assert list(dest_dir.iterdir()) == []


def test_http_404(served: SimpleNamespace, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "CN2020.nii.gz"
    with pytest.raises(IsybError, match=r"^cannot download .*CN2020\.nii\.gz: HTTP 404") as info:
        download(f"{served.url}/CN2020.nii.gz", dest, None)
    assert "\n" not in str(info.value)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_missing_file_url(tmp_path: Path) -> None:
    with pytest.raises(IsybError, match="cannot download file://"):
        download((tmp_path / "nothing.nii.gz").as_uri(), tmp_path / "out.nii.gz", None)
    assert not (tmp_path / "out.nii.gz").exists()


def test_connection_refused(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/CN200.nii.gz"
    with pytest.raises(IsybError, match=r"^cannot download http://127\.0\.0\.1:\d+/CN200"):
        download(url, tmp_path / "CN200.nii.gz", None, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_timeout(tmp_path: Path) -> None:
    """A server that accepts the connection but never answers is given up on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/CN200.nii.gz"
        with pytest.raises(IsybError, match="timed out"):
            download(url, tmp_path / "CN200.nii.gz", None, timeout=0.3)
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer(tmp_path: Path) -> None:
    """A body shorter than its Content-Length is an error, not a short file."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/CN200.nii.gz"
        with pytest.raises(IsybError, match="10 of 1000 bytes"):
            download(url, tmp_path / "CN200.nii.gz", None, timeout=5)
        thread.join(timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(IsybError, match="not a SHA-256 digest"):
        download("file:///x.nii.gz", tmp_path / "x.nii.gz", "abc")
    with pytest.raises(IsybError, match="unsupported URL scheme"):
        download("ftp://upstream.invalid/x.nii.gz", tmp_path / "x.nii.gz", None)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- fetch_pinned


def test_cached_file_is_used_without_network(served: SimpleNamespace, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, served.url)
    dest = tmp_path / "cache" / "CN200.nii.gz"
    digest = sha256(served.data)
    fetch_pinned(UPSTREAM, dest, digest)
    assert len(served.requests) == 1
    served.stop()
    assert fetch_pinned(UPSTREAM, dest, digest) == dest
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnpinnedDigestWarning)
        assert fetch_pinned(UPSTREAM, dest, None) == dest  # unpinned: the recorded digest
    assert len(served.requests) == 1
    assert dest.read_bytes() == served.data
    # With the server gone, a real download attempt fails with one line.
    dest.unlink()
    with pytest.raises(IsybError, match=r"^cannot download http://127\.0\.0\.1"):
        fetch_pinned(UPSTREAM, dest, digest, timeout=5)


def test_trust_on_first_use(served: SimpleNamespace, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, served.url)
    dest = tmp_path / "cache" / "CN200.nii.gz"
    sidecar = digest_sidecar(dest)
    first = sha256(served.data)

    with pytest.warns(UnpinnedDigestWarning, match="recorded .* on first use"):
        fetch_pinned(UPSTREAM, dest, None)
    assert sidecar.read_text().split()[0] == first
    assert dest.read_bytes() == served.data

    # Upstream changes; the cached copy is still the recorded one and is kept.
    changed = make_nifti(served.file, seed=99)
    assert sha256(changed) != first
    requests_before = len(served.requests)
    assert fetch_pinned(UPSTREAM, dest, None) == dest
    assert len(served.requests) == requests_before

    # A re-download must match the recorded digest: refused, nothing left behind.
    dest.unlink()
    with pytest.raises(DigestMismatchError, match="recorded on first use") as info:
        fetch_pinned(UPSTREAM, dest, None)
    assert first in str(info.value)
    assert str(sidecar) in str(info.value)
    assert sorted(p.name for p in dest.parent.iterdir()) == [sidecar.name]
    assert sidecar.read_text().split()[0] == first

    # Deleting the record accepts the new file, again with a warning.
    sidecar.unlink()
    with pytest.warns(UnpinnedDigestWarning):
        fetch_pinned(UPSTREAM, dest, None)
    assert sidecar.read_text().split()[0] == sha256(changed)


def test_damaged_cache_is_downloaded_again(served: SimpleNamespace, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, served.url)
    dest = tmp_path / "cache" / "CN200.nii.gz"
    with pytest.warns(UnpinnedDigestWarning):
        fetch_pinned(UPSTREAM, dest, None)
    dest.write_bytes(served.data[:100])
    assert fetch_pinned(UPSTREAM, dest, None) == dest
    assert dest.read_bytes() == served.data
    assert len(served.requests) == 2


def test_new_pin_replaces_recorded_file(served: SimpleNamespace, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, served.url)
    dest = tmp_path / "cache" / "CN200.nii.gz"
    fetch_pinned(UPSTREAM, dest, sha256(served.data))
    changed = make_nifti(served.file, seed=5)
    assert fetch_pinned(UPSTREAM, dest, sha256(changed)) == dest
    assert dest.read_bytes() == changed
    assert digest_sidecar(dest).read_text().split()[0] == sha256(changed)


def test_file_placed_by_hand_is_trusted_on_first_use(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.MIRROR_ENV, f"http://127.0.0.1:{free_port()}/none")
    dest = tmp_path / "cache" / "CN200.nii.gz"
    dest.parent.mkdir()
    data = make_nifti(dest, seed=3)
    with pytest.warns(UnpinnedDigestWarning):
        assert fetch_pinned(UPSTREAM, dest, None) == dest
    assert digest_sidecar(dest).read_text().split()[0] == sha256(data)
    # pinned and matching: accepted offline without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnpinnedDigestWarning)
        assert fetch_pinned(UPSTREAM, dest, sha256(data)) == dest


def test_corrupt_sidecar(tmp_path: Path) -> None:
    dest = tmp_path / "CN200.nii.gz"
    digest_sidecar(dest).write_text("not a digest\n")
    with pytest.raises(IsybError, match="does not hold a SHA-256 digest"):
        fetch_pinned(UPSTREAM, dest, None)


# --------------------------------------------------------------------------- TemplateFlow


def _inside(path: Path, folder: Path) -> bool:
    return path.is_relative_to(folder)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["MNI152NLin6Asym", "MNI152NLin2009cAsym"])
def test_templateflow_local_home(templateflow_home: Path, name: str) -> None:
    head, mask = templateflow_files(name)
    assert head == templateflow_home / f"tpl-{name}" / f"tpl-{name}_res-01_T1w.nii.gz"
    assert mask == templateflow_home / f"tpl-{name}" / f"tpl-{name}_res-01_desc-brain_mask.nii.gz"
    assert nib.load(str(head)).shape == nib.load(str(mask)).shape


@pytest.mark.realdata
def test_templateflow_fresh_process(templateflow_home: Path) -> None:
    """A fresh interpreter picks TEMPLATEFLOW_HOME up at import and writes nothing there."""
    before = sorted(str(p.relative_to(templateflow_home)) for p in templateflow_home.rglob("*"))
    code = ("import json; from isyb.templates.fetch import templateflow_files as t; "
            "print(json.dumps({n: [str(p) for p in t(n)] "
            "for n in ('MNI152NLin6Asym', 'MNI152NLin2009cAsym')}))")
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(templateflow_home)}
    env.pop("TEMPLATEFLOW_AUTOUPDATE", None)  # isyb sets it itself
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (head, mask) in found.items():
        assert _inside(Path(head), templateflow_home / f"tpl-{name}")
        assert Path(head).name == f"tpl-{name}_res-01_T1w.nii.gz"
        assert Path(mask).name == f"tpl-{name}_res-01_desc-brain_mask.nii.gz"
    after = sorted(str(p.relative_to(templateflow_home)) for p in templateflow_home.rglob("*"))
    assert after == before


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["NoSuchTemplate", "MNI152Lin"])
def test_templateflow_unknown_template(templateflow_home: Path, name: str) -> None:
    with pytest.raises(IsybError, match=f"template {name} not found in TemplateFlow home") as info:
        templateflow_files(name)
    assert "\n" not in str(info.value)
    assert "MNI152NLin6Asym" in str(info.value)  # lists what the home has


def test_templateflow_bad_name() -> None:
    with pytest.raises(IsybError, match="not a TemplateFlow template name"):
        templateflow_files("../MNI152NLin6Asym")


@pytest.mark.realdata
def test_templateflow_missing_resolution(templateflow_home: Path) -> None:
    with pytest.raises(IsybError, match="has no res-03 T1w head image"):
        templateflow_files("MNI152NLin6Asym", resolution=3)


def _s3_config(monkeypatch: pytest.MonkeyPatch, s3_root: str) -> None:
    """Point TemplateFlow's downloads (loaded for the current home) at ``s3_root``."""
    api, _ = fetch._templateflow_api()
    cache = getattr(api, "_cache", None)
    if cache is None or not hasattr(cache, "config"):
        pytest.skip("this TemplateFlow version has no configurable S3 root")
    monkeypatch.setattr(cache.config, "s3_root", s3_root)
    monkeypatch.setattr(cache.config, "timeout", 5)


@pytest.mark.realdata
def test_templateflow_placeholder_without_network(templateflow_home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A file TemplateFlow lists but cannot download gives one line, and no partial file."""
    folder = templateflow_home / "tpl-MNI152NLin6Asym"
    placeholder = folder / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
    placeholder.touch()
    _s3_config(monkeypatch, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(IsybError, match=r"not found in TemplateFlow home .* could not "
                                        r"be downloaded") as info:
        templateflow_files("MNI152NLin6Asym", resolution=2)
    assert "\n" not in str(info.value)
    assert placeholder.stat().st_size == 0


@pytest.mark.realdata
def test_templateflow_downloads_placeholder(templateflow_home: Path, data_root: Path,
                                            server: SimpleNamespace,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """TemplateFlow fills an empty placeholder from its (here local) S3 root."""
    name = "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
    source = data_root / "templates" / name
    if not source.is_file():
        pytest.skip(f"{source} not found in the test data")
    (templateflow_home / "tpl-MNI152NLin6Asym" / name).touch()
    remote = server.root / "x" / "tpl-MNI152NLin6Asym"
    remote.mkdir(parents=True)
    (remote / name).symlink_to(source)
    _s3_config(monkeypatch, server.url)
    head, mask = templateflow_files("MNI152NLin6Asym", resolution=2)
    assert head == templateflow_home / "tpl-MNI152NLin6Asym" / name
    assert mask is None  # no res-02 mask in this home
    assert head.read_bytes() == source.read_bytes()
    assert server.requests == [f"/x/tpl-MNI152NLin6Asym/{name}"]

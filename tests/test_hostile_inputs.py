"""Hostile images, tampered caches and broken downloads (issue 17; issue 13 item 7).

One table of hostile inputs, run through every command that reads an image
(``deface``, ``qc anat``, ``evaluate``, ``templates prepare``; ``qc bold`` for
the 4-D cases). Each must end with exit 2, exactly one ``isyb: error:`` line
on stderr, no traceback and nothing written. The memory bombs run in one child
process whose peak RSS (``resource.getrusage``) bounds what they cost.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO_ROOT, assert_one_line_error, run_cli
from isyb.errors import IsybError
from isyb.io import load_volume
from isyb.templates import fetch, registry
from isyb.templates.fetch import git_blob_id

RNG = np.random.default_rng(17)
SHAPE = (24, 24, 24)


# --------------------------------------------------------------------------- hostile files


def _save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
                    ).to_filename(str(path))
    return path


def _head(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return (RNG.random(shape) * 100).astype(np.float32)


def _header_only(path: Path, shape: tuple[int, ...], dtype: type = np.int16,
                 klass: type = nib.Nifti1Image) -> Path:
    """A header claiming ``shape`` followed by 4 KB of data: a header memory bomb."""
    header = klass.header_class()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), 1)
    raw = header.binaryblock.ljust(int(header["vox_offset"]), b"\0") + bytes(4096)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _gzip_bomb(path: Path, declared: tuple[int, int, int]) -> Path:
    """A 600³ float32 image of zeros (864 MB) in about 1 MB of gzip, its header claiming
    ``declared``: 14 gzip members of 64 MiB of zeros each follow the header's member."""
    header = nib.Nifti1Header()
    header.set_data_shape(declared)
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), 1)
    member = gzip.compress(bytes(64 * 1024 ** 2), compresslevel=9)
    path.write_bytes(gzip.compress(header.binaryblock.ljust(352, b"\0")) + member * 14)
    return path


def _rgb(path: Path) -> Path:
    return _save(np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), path)


def _degenerate(path: Path, shape: tuple[int, ...] = SHAPE) -> Path:
    image = nib.Nifti1Image(_head(shape), None)
    image.header.set_qform(None, 0)
    image.header.set_sform(None, 0)
    image.header["pixdim"][1:4] = 0
    image.to_filename(str(path))
    return path


def _singular(path: Path) -> Path:
    """An sform (code 2) whose third row is zero: no voxel-to-world inverse."""
    header = nib.Nifti1Image(_head(), np.eye(4)).header.copy()
    header["srow_z"] = 0
    header.set_qform(None, 0)
    nib.Nifti1Image(_head(), None, header=header).to_filename(str(path))
    return path


def _truncated(path: Path, shape: tuple[int, ...] = SHAPE) -> Path:
    _save(_head(shape), path)
    path.write_bytes(path.read_bytes()[:-400])
    return path


def _nan(path: Path, shape: tuple[int, ...] = SHAPE) -> Path:
    data = _head(shape)
    data[1, 1, 1] = np.nan
    return _save(data, path)


def _text(path: Path) -> Path:
    path.write_text("this is not an image\n")
    return path


#: 3-D cases: name -> (writer, a fragment of the error line).
CASES_3D: dict[str, tuple[Callable[[Path], Path], str]] = {
    "constant": (lambda p: _save(np.full(SHAPE, 100, np.int16), p), "constant"),
    "RGB24": (_rgb, "RGB voxels"),
    "complex": (lambda p: _save(_head().astype(np.complex64), p), "complex voxels"),
    "degenerate affine": (_degenerate, "affine is degenerate"),
    "singular sform": (lambda p: _singular(p), "not invertible"),
    "huge voxels": (lambda p: _save(_head(), p, np.diag([500.0, 2.0, 2.0, 1.0])), "voxel size"),
    "truncated gzip": (_truncated, "cannot be read as an image"),
    "text as .nii.gz": (_text, "cannot be read as an image"),
    "NaN": (_nan, "NaN"),
    "4-D for 3-D": (lambda p: _save(_head((*SHAPE, 3)), p), "expected a 3-D image"),
}

#: 4-D cases for ``qc bold``.
CASES_4D: dict[str, tuple[Callable[[Path], Path], str]] = {
    "constant": (lambda p: _save(np.full((*SHAPE, 12), 7, np.int16), p), "constant"),
    "degenerate affine": (partial(_degenerate, shape=(*SHAPE, 12)), "affine is degenerate"),
    "truncated gzip": (partial(_truncated, shape=(*SHAPE, 12)), "cannot be read as an image"),
    "NaN": (partial(_nan, shape=(*SHAPE, 12)), "NaN"),
    "3-D for 4-D": (lambda p: _save(_head(), p), "expected a 4-D BOLD series"),
}


def _commands(image: Path, out: Path) -> dict[str, list[object]]:
    return {"deface": ["deface", image, out / "defaced.nii.gz"],
            "qc anat": ["qc", "anat", image],
            "evaluate": ["evaluate", image, image, "--mask", image, "--renders", out / "r.png"],
            "templates prepare": ["templates", "prepare", image]}


def _assert_refused(result, fragment: str, out: Path, home: Path, what: str) -> None:
    assert "Traceback" not in result.stderr, what
    assert_one_line_error(result.returncode, result.stderr, fragment)
    assert list(out.iterdir()) == [], what
    assert not home.exists() or list(home.rglob("*")) == [], what


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """(input folder, output folder = current folder, ISYB_HOME), all empty."""
    inputs, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    inputs.mkdir()
    out.mkdir()
    monkeypatch.setenv("ISYB_HOME", str(home))
    monkeypatch.chdir(out)
    return inputs, out, home


@pytest.mark.parametrize("case", CASES_3D)
def test_a_hostile_image_is_one_line_exit_2_in_every_command(case: str, places) -> None:
    inputs, out, home = places
    write, fragment = CASES_3D[case]
    image = write(inputs / "hostile.nii.gz")
    for command, argv in _commands(image, out).items():
        _assert_refused(run_cli(*argv), fragment, out, home, f"{case}: {command}")
        assert [p.name for p in inputs.iterdir()] == ["hostile.nii.gz"]


@pytest.mark.parametrize("case", CASES_4D)
def test_a_hostile_series_is_one_line_exit_2_in_qc_bold(case: str, places) -> None:
    inputs, out, home = places
    write, fragment = CASES_4D[case]
    image = write(inputs / "hostile_bold.nii.gz")
    _assert_refused(run_cli("qc", "bold", image, "--tr", "2"), fragment, out, home, case)
    assert [p.name for p in inputs.iterdir()] == ["hostile_bold.nii.gz"]


# --------------------------------------------------------------------------- memory bombs

#: Bombs: file name -> (writer, fragment, commands). Run in one child process.
BOMBS: dict[str, tuple[Callable[[Path], Path], str, tuple[str, ...]]] = {
    "hdr2000.nii.gz": (lambda p: _header_only(p, (2000,) * 3), "too large", ()),
    "hdr32767.nii": (lambda p: _header_only(p, (32767,) * 3), "too large", ()),
    "nifti2.nii": (lambda p: _header_only(p, (100000,) * 3, klass=nib.Nifti2Image),
                   "too large", ()),
    "gzbomb.nii.gz": (lambda p: _gzip_bomb(p, (600, 600, 600)), "MiB of data", ()),
    "gzlie.nii.gz": (lambda p: _gzip_bomb(p, (64, 64, 64)), "inflates to over", ()),
    "bold4d.nii.gz": (lambda p: _header_only(p, (256, 256, 256, 1000), np.float32),
                      "MiB of data", ("qc bold",)),
}

_CHILD = """
import contextlib, io, json, resource, sys, time
from isyb.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([argv, code, err.getvalue(), time.perf_counter() - start])
# Peak RSS of this program: VmHWM belongs to the memory map that exec made, whereas Linux
# carries ru_maxrss over exec from the forking parent (a large pytest worker).
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
maxrss = int(peak[0].split()[1]) / 1024 if peak else \
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"results": results, "maxrss_mb": maxrss}))
"""


def test_memory_bombs_are_refused_fast_and_in_little_memory(places) -> None:
    inputs, out, home = places
    runs, fragments = [], {}
    for name, (write, fragment, commands) in BOMBS.items():
        image = write(inputs / name)
        assert image.stat().st_size < 5 * 1024 ** 2  # the bomb is small on disk
        every = _commands(image, out)
        every["qc bold"] = ["qc", "bold", image, "--tr", "2"]
        for command in commands or ("deface", "qc anat", "evaluate", "templates prepare"):
            runs.append([str(a) for a in every[command]])
            fragments[len(runs) - 1] = fragment
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(runs)], cwd=out, env=env,
                           capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(child.stdout.splitlines()[-1])
    for index, (argv, code, err, seconds) in enumerate(report["results"]):
        assert "Traceback" not in err, argv
        assert_one_line_error(code, err, fragments[index])
        assert seconds < 5.0, (argv, seconds)
    assert report["maxrss_mb"] < 500, report["maxrss_mb"]
    assert list(out.iterdir()) == [] and not home.exists()


# --------------------------------------------------------------------------- header checks


def _sheared_head(data_root: Path, tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A real head saved again with a small shear (0.08 and -0.05) in its affine."""
    plain = data_root / "heads" / "myconnectome_T1w_1p6mm.nii.gz"
    source = nib.load(str(plain))
    shear = np.eye(4)
    shear[0, 1], shear[1, 2] = 0.08, -0.05
    path = tmp_path / "sheared.nii.gz"
    nib.Nifti1Image(np.asanyarray(source.dataobj), source.affine @ shear,
                    header=source.header).to_filename(str(path))
    return plain, path, source.affine @ shear @ np.linalg.inv(source.affine)


def test_a_real_head_with_a_small_shear_still_loads(data_root: Path, tmp_path: Path) -> None:
    """An oblique scan's valid sheared affine is not "degenerate": same voxels, sheared axes."""
    plain, path, world_shear = _sheared_head(data_root, tmp_path)
    straight, oblique = load_volume(plain), load_volume(path)
    np.testing.assert_array_equal(oblique.data, straight.data)
    np.testing.assert_allclose(oblique.affine[:3, :3] @ np.linalg.inv(straight.affine[:3, :3]),
                               world_shear[:3, :3], atol=1e-5)


@pytest.mark.slow
def test_qc_anat_runs_on_a_real_head_with_a_small_shear(data_root: Path, tmp_path: Path) -> None:
    _, path, _ = _sheared_head(data_root, tmp_path)
    run = run_cli("qc", "anat", path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["isyb_snr"] > 0


# --------------------------------------------------------------------------- Git blob ids


def test_git_blob_id_is_what_git_computes(tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    expected = hashlib.sha1(b"blob 6\0hello\n").hexdigest()
    assert git_blob_id(path) == expected == "ce013625030ba8dba906f756967f9e9ca394464a"
    if shutil.which("git"):
        got = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert got == expected


def test_the_pinned_ccs_blob_ids_are_the_issue_s() -> None:
    assert registry.BUILTINS["CN200"].git_blob == "3c980cf6ed8eaf8407f76cd6adda4371bfd9f698"
    assert registry.BUILTINS["Chinese2020"].git_blob == "c19eb9092540e9fe1c96d71be42d2bbcd47224ef"


@pytest.mark.parametrize(("name", "file", "blob"), [
    ("CN200", "CN200.nii.gz", "3c980cf6ed8eaf8407f76cd6adda4371bfd9f698"),
    ("CN2020", "CN2020.nii.gz", "c19eb9092540e9fe1c96d71be42d2bbcd47224ef"),
])
def test_the_real_pins_refuse_any_other_file(name: str, file: str, blob: str, places,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Not trusted on first use: a mirror's copy that is not the pinned blob is refused."""
    inputs, _, home = places
    (inputs / file).write_bytes(b"another head\n")
    monkeypatch.setenv(fetch.MIRROR_ENV, str(inputs))
    run = run_cli("templates", "prepare", name)
    assert_one_line_error(run.returncode, run.stderr, "Git blob id mismatch", blob,
                          git_blob_id(inputs / file))
    assert list((home / "downloads").iterdir()) == []


# --------------------------------------------------------------------------- mirrors


class _Handler(BaseHTTPRequestHandler):
    """Serves ``routes``: path -> (status, body, announced Content-Length)."""

    routes: ClassVar[dict[str, tuple[int, bytes, int]]] = {}

    def do_GET(self) -> None:
        status, body, length = self.routes.get(self.path, (404, b"not found", 9))
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    routes: dict[str, tuple[int, bytes, int]] = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield routes, f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two phantom heads (a CN200-shaped one and a reference one) and their brain masks."""
    from isyb.study.simulate import phantom_head

    folder = tmp_path_factory.mktemp("heads")
    paths = {}
    for name, linear in (("cn", np.diag([1.0457, 0.9702, 0.9210])), ("ref", np.eye(3))):
        image, affine, brain = phantom_head(strength=1.0, linear=linear, voxel_mm=3.0,
                                            noise_sd=0.0)
        paths[name] = _save(image.astype(np.float32), folder / f"{name}.nii.gz", affine)
        np.save(folder / f"{name}_brain.npy", brain)
        paths[f"{name}_brain"] = folder / f"{name}_brain.npy"
    return paths


@pytest.fixture
def cn200(heads, places, monkeypatch: pytest.MonkeyPatch):
    """CN200 pinned to the Git blob id of the phantom head ``cn``, served by a folder mirror.

    The brain mask comes from the phantom (known ground truth) instead of deepbet."""
    inputs, _, home = places
    mirror = inputs / "mirror"
    mirror.mkdir()
    shutil.copyfile(heads["cn"], mirror / "CN200.nii.gz")
    entry = dataclasses.replace(registry.BUILTINS["CN200"], git_blob=git_blob_id(heads["cn"]))
    monkeypatch.setitem(registry.BUILTINS, "CN200", entry)
    monkeypatch.setenv(fetch.MIRROR_ENV, str(mirror))
    brain = np.load(heads["cn_brain"])
    monkeypatch.setattr(registry, "extract_brain", lambda data, zooms: brain)
    return mirror, home


def test_a_download_with_another_git_blob_id_is_refused(cn200, heads) -> None:
    mirror, home = cn200
    shutil.copyfile(heads["ref"], mirror / "CN200.nii.gz")
    run = run_cli("templates", "prepare", "CN200")
    line = assert_one_line_error(run.returncode, run.stderr, "Git blob id mismatch",
                                 git_blob_id(heads["cn"]))
    assert git_blob_id(heads["ref"]) in line
    assert list((home / "downloads").iterdir()) == []
    assert not (home / "templates").exists()


def test_a_tampered_prepared_template_is_prepared_again(cn200, heads) -> None:
    _, home = cn200
    run = run_cli("templates", "prepare", "CN200")
    assert run.returncode == 0, run.stderr
    prepared = home / "templates" / "tpl-CN200" / "tpl-CN200_T1w.nii.gz"
    meta = json.loads((prepared.parent / "template.json").read_text())
    assert set(meta["files"]) == {"tpl-CN200_T1w.nii.gz", "tpl-CN200_desc-brain_mask.nii.gz",
                                  "tpl-CN200_desc-face_mask.nii.gz"}
    assert meta["files"][prepared.name] == fetch.sha256_file(heads["cn"])
    shutil.copyfile(heads["ref"], prepared)  # another head under CN200's name
    run = run_cli("templates", "prepare", "CN200")
    assert run.returncode == 0, run.stderr
    assert "tpl-CN200_T1w.nii.gz changed since it was prepared" in run.stderr
    assert prepared.read_bytes() == heads["cn"].read_bytes()  # prepared again from the source


def test_a_cache_without_file_digests_or_readable_json_is_prepared_again(cn200) -> None:
    _, home = cn200
    assert run_cli("templates", "prepare", "CN200").returncode == 0
    meta_path = home / "templates" / "tpl-CN200" / "template.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]  # as written before file digests were recorded
    meta_path.write_text(json.dumps(meta))
    run = run_cli("templates", "prepare", "CN200")
    assert run.returncode == 0 and "no SHA-256 recorded for its prepared files" in run.stderr
    assert "files" in json.loads(meta_path.read_text())
    meta_path.write_text("{not json")
    run = run_cli("templates", "prepare", "CN200")
    assert run.returncode == 0 and "template.json is unreadable" in run.stderr
    assert run_cli("templates", "list").returncode == 0


def test_a_file_changed_under_a_template_in_use_is_refused(cn200, heads) -> None:
    template = registry.load_template("CN200")
    shutil.copyfile(heads["ref"], template.head)
    with pytest.raises(registry.TamperedCacheError, match="SHA-256 mismatch with the digest "
                       "recorded when the template was prepared"):
        template.load()


def test_a_tampered_working_grid_cache_is_recomputed(cn200) -> None:
    template = registry.load_template("CN200")
    first = template.working_grid()
    path = template.head.parent / "tpl-CN200_res-4mm_grid.npz"
    with np.load(path) as stored:
        arrays = dict(stored)
    arrays["head"] = np.zeros_like(arrays["head"])  # a forged grid with the right stamp
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)
    np.testing.assert_array_equal(template.working_grid().head, first.head)


def test_a_tampered_download_is_fetched_again_or_refused(cn200, heads) -> None:
    mirror, home = cn200
    assert run_cli("templates", "prepare", "CN200").returncode == 0
    download = home / "downloads" / "CN200.nii.gz"
    shutil.copyfile(heads["ref"], download)
    assert run_cli("templates", "prepare", "CN200").returncode == 0  # fetched again, verified
    assert download.read_bytes() == heads["cn"].read_bytes()
    shutil.copyfile(heads["ref"], download)
    (mirror / "CN200.nii.gz").unlink()
    run = run_cli("templates", "prepare", "CN200")
    assert_one_line_error(run.returncode, run.stderr, "cannot download", "CN200.nii.gz")
    assert list((home / "downloads").iterdir()) == []


@pytest.mark.parametrize("kind", ["404", "truncated"])
def test_a_broken_mirror_is_one_line_and_leaves_nothing(kind: str, server, places,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, home = places
    routes, base = server
    body = bytes(range(256)) * 64
    if kind == "truncated":
        routes["/m/CN200.nii.gz"] = (200, body[:1000], len(body))
    monkeypatch.setenv(fetch.MIRROR_ENV, f"{base}/m")
    run = run_cli("templates", "prepare", "CN200")
    fragment = "HTTP 404" if kind == "404" else "transfer ended after 1000 of 16384 bytes"
    assert_one_line_error(run.returncode, run.stderr, "cannot download", fragment)
    assert not (home / "downloads").exists() or list((home / "downloads").iterdir()) == []
    assert not (home / "templates").exists()


def test_a_download_timeout_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts the connection, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/CN200.nii.gz"
        with pytest.raises(IsybError, match=r"^cannot download .*: timed out$") as info:
            fetch.fetch_pinned(url, tmp_path / "d" / "CN200.nii.gz", None,
                               git_blob="3c980cf6ed8eaf8407f76cd6adda4371bfd9f698", timeout=0.5)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "d").exists() or list((tmp_path / "d").iterdir()) == []


# --------------------------------------------------------------------------- TemplateFlow


def test_another_template_under_a_templateflow_name_is_caught(data_root: Path, tmp_path: Path,
                                                              places, monkeypatch) -> None:
    """MNI152NLin2009cAsym's files laid out as MNI152NLin6Asym's."""
    from conftest import build_templateflow_home

    home = build_templateflow_home(data_root, tmp_path / "tf",
                                   {"MNI152NLin2009cAsym": ()})
    folder = home / "tpl-MNI152NLin6Asym"
    folder.mkdir()
    for part in ("T1w", "desc-brain_mask"):
        source = data_root / "templates" / f"tpl-MNI152NLin2009cAsym_res-01_{part}.nii.gz"
        (folder / f"tpl-MNI152NLin6Asym_res-01_{part}.nii.gz").symlink_to(source)
    (folder / "template_description.json").write_text('{"Identifier": "MNI152NLin6Asym"}')
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    run = run_cli("templates", "prepare", "MNI152NLin6Asym")
    assert_one_line_error(run.returncode, run.stderr, "not TemplateFlow's MNI152NLin6Asym",
                          "(193, 229, 193)")
    _, _, isyb_home = places
    assert not isyb_home.exists()


# --------------------------------------------------------------------------- BIDS-App


def test_a_description_that_is_not_json_is_one_line_at_the_group_level(places) -> None:
    from isyb.synthetic.demo import build_demo_dataset

    inputs, out, home = places
    bids = build_demo_dataset(inputs / "bids", n_subjects=1)
    (bids / "dataset_description.json").write_bytes(b"{not json")
    run = run_cli(bids, out / "release", "group")
    assert "Traceback" not in run.stderr
    assert_one_line_error(run.returncode, run.stderr, "dataset_description.json",
                          "cannot be read as JSON")
    assert list(out.iterdir()) == []
    assert not home.exists()

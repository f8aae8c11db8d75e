"""The ``isyb`` command line: one-line errors for bad input, help, templates and a good run.

Every user error must give exit code 2, exactly one line ``isyb: error: ...``
on stderr, and no output file (nor a stray temporary file). Bad input must be
refused before any brain extraction or registration, so these tests fail
loudly if the engine is reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import isyb
from conftest import assert_one_line_error
from isyb.cli import main
from isyb.synthetic.phantom import make_phantom, to_nifti

BUILTIN_NAMES = ("default", "MNI152NLin6Asym", "MNI152NLin2009cAsym", "CN200", "Chinese2020")


# --------------------------------------------------------------------------- helpers


def call(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, int]:
    """Run ``isyb.cli.main`` in-process; return exit code, stdout, stderr and the number
    of deepbet brain extractions it ran. An error must come before any (the expensive
    step; checked by count, not wall time, which is noisy)."""
    from isyb.head import brain

    real, runs = brain._deepbet_model, []

    def counted():
        runs.append(1)
        return real()

    brain._deepbet_model = counted
    try:
        code = main([str(a) for a in argv])
    finally:
        brain._deepbet_model = real
    out, err = capsys.readouterr()
    return code, out, err, len(runs)


def stray_files(folder: Path) -> list[Path]:
    """Temporary files of an atomic write left in ``folder`` (or below it)."""
    return [p for p in folder.rglob("*") if ".part" in p.name]


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """No template mirror from the caller's environment."""
    monkeypatch.delenv("ISYB_TEMPLATE_MIRROR", raising=False)


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom head (1.75 mm, stored LIA, int16)."""
    path = tmp_path_factory.mktemp("phantom") / "sub-01_T1w.nii.gz"
    to_nifti(make_phantom(voxel_size=1.75), "LIA").to_filename(str(path))
    path.chmod(0o444)  # no test may change it
    return path


@pytest.fixture
def no_brain_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if brain extraction or registration starts."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input must be refused before brain extraction/registration")

    monkeypatch.setattr("isyb.deface.engine.extract_brain", refuse)
    monkeypatch.setattr("isyb.deface.engine.register_template", refuse)
    monkeypatch.setattr("isyb.templates.registry.extract_brain", refuse)


# --------------------------------------------------------------------------- bad input files


def _text_file(tmp: Path, phantom: Path) -> Path:
    path = tmp / "notes.nii.gz"
    path.write_text("this is not an image\n")
    return path


def _truncated_gzip(tmp: Path, phantom: Path) -> Path:
    data = phantom.read_bytes()
    path = tmp / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _four_d(tmp: Path, phantom: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp / "bold.nii.gz"
    data = rng.integers(0, 1000, (16, 16, 12, 4)).astype(np.int16)
    nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.5, 1.0])).to_filename(str(path))
    return path


def _all_zero(tmp: Path, phantom: Path) -> Path:
    path = tmp / "zero.nii.gz"
    nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)).to_filename(str(path))
    return path


def _with_nans(tmp: Path, phantom: Path) -> Path:
    data = np.full((20, 20, 20), 100.0, np.float32)
    data[5, 6, 7] = np.nan
    path = tmp / "nans.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(str(path))
    return path


def _missing(tmp: Path, phantom: Path) -> Path:
    return tmp / "missing.nii.gz"


def _folder(tmp: Path, phantom: Path) -> Path:
    path = tmp / "folder.nii.gz"
    path.mkdir()
    return path


def _truncated_nii(tmp: Path, phantom: Path) -> Path:
    path = tmp / "cut.nii"
    nib.load(str(phantom)).to_filename(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_INPUTS: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    # the wording for unreadable files comes from nibabel or gzip: only the name is checked
    "text-named-nii-gz": (_text_file, ()),
    "truncated-gzip": (_truncated_gzip, ()),
    "synthetic-4d": (_four_d, ("3-D",)),
    "all-zero": (_all_zero, ("all zero",)),
    "nan": (_with_nans, ("NaN",)),
    "missing": (_missing, ("no such file",)),
    "folder-named-nii-gz": (_folder, ("folder",)),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error(case: str, tmp_path: Path, phantom_file: Path,
                                     default_template, no_brain_work,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    make, fragments = BAD_INPUTS[case]
    bad = make(tmp_path, phantom_file)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err, extractions = call(["deface", bad, out_dir / "defaced.nii.gz"], capsys)
    assert_one_line_error(code, err, *fragments, bad.name)
    assert out == ""
    assert list(out_dir.iterdir()) == []
    assert extractions == 0


def test_truncated_uncompressed_nifti_is_one_line_error(tmp_path: Path, phantom_file: Path,
                                                        default_template, no_brain_work,
                                                        capsys) -> None:
    bad = _truncated_nii(tmp_path, phantom_file)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err, _ = call(["deface", bad, out_dir / "defaced.nii.gz"], capsys)
    assert_one_line_error(code, err, bad.name)
    assert list(out_dir.iterdir()) == []


def test_real_4d_bold_is_one_line_error(data_root: Path, tmp_path: Path, default_template,
                                        no_brain_work, capsys) -> None:
    bold = data_root / "bold" / "ge_epi_10vol.nii.gz"
    if not bold.is_file():
        pytest.skip(f"{bold} not found in the test data")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err, extractions = call(["deface", bold, out_dir / "bold_defaced.nii.gz"], capsys)
    assert_one_line_error(code, err, "3-D", bold.name)
    assert list(out_dir.iterdir()) == []
    assert extractions == 0


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_output_is_input_needs_force(spelling: str, tmp_path: Path, phantom_file: Path,
                                     default_template, no_brain_work, capsys) -> None:
    source = tmp_path / "in.nii.gz"
    shutil.copyfile(phantom_file, source)
    before = source.read_bytes()
    (tmp_path / "sub").mkdir()
    if spelling == "same":
        target = source
    elif spelling == "dotdot":
        target = tmp_path / "sub" / ".." / "in.nii.gz"
    elif spelling == "symlink":
        target = tmp_path / "sub" / "link.nii.gz"
        target.symlink_to(source)
    else:
        target = tmp_path / "sub" / "hard.nii.gz"
        os.link(source, target)
    code, out, err, extractions = call(["deface", source, target], capsys)
    assert_one_line_error(code, err, "--force")
    assert out == ""
    assert source.read_bytes() == before
    assert stray_files(tmp_path) == []
    assert not list(tmp_path.glob("*_isyb.*")) and not list(tmp_path.glob("sub/*_isyb.*"))
    assert extractions == 0


def test_existing_output_needs_force(tmp_path: Path, phantom_file: Path, default_template,
                                     no_brain_work, capsys) -> None:
    target = tmp_path / "defaced.nii.gz"
    target.write_bytes(b"previous result")
    code, _, err, extractions = call(["deface", phantom_file, target], capsys)
    assert_one_line_error(code, err, "exists", "--force")
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["defaced.nii.gz"]
    assert extractions == 0


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--template", "no-such-template"], "unknown template"),
    (["--participant-label", "01"], "BIDS dataset"),
    (["--guard-mm", "-1"], "guard"),
])
def test_bad_options_are_one_line_errors(extra: list[str], fragment: str, tmp_path: Path,
                                         phantom_file: Path, default_template, no_brain_work,
                                         capsys) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err, extractions = call(["deface", phantom_file, out_dir / "d.nii.gz", *extra], capsys)
    assert_one_line_error(code, err, fragment)
    assert list(out_dir.iterdir()) == []
    assert extractions == 0


def test_output_name_must_be_an_image(tmp_path: Path, phantom_file: Path, default_template,
                                      no_brain_work, capsys) -> None:
    code, _, err, _ = call(["deface", phantom_file, tmp_path / "defaced.txt"], capsys)
    assert_one_line_error(code, err, "defaced.txt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mask_name", ["mask.txt", "in.nii.gz", "out.nii.gz"])
def test_save_mask_path_is_checked_first(mask_name: str, tmp_path: Path, phantom_file: Path,
                                         default_template, no_brain_work, capsys) -> None:
    source = tmp_path / "in.nii.gz"
    shutil.copyfile(phantom_file, source)
    before = source.read_bytes()
    code, _, err, extractions = call(["deface", source, tmp_path / "out.nii.gz",
                                  "--save-mask", tmp_path / mask_name], capsys)
    assert_one_line_error(code, err)
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]
    assert extractions == 0


def test_cn200_checksum_mismatch(tmp_path: Path, phantom_file: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A CN200 download that does not match the pinned digest: refused, nothing kept."""
    from isyb.templates import registry

    home = tmp_path / "isyb_home"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    served = mirror / "CN200.nii.gz"
    rng = np.random.default_rng(1)
    nib.Nifti1Image(rng.random((12, 12, 12), dtype=np.float32), np.eye(4)).to_filename(
        str(served))
    served_digest = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setenv("ISYB_HOME", str(home))
    monkeypatch.setenv("ISYB_TEMPLATE_MIRROR", mirror.as_uri())
    entry = registry.BUILTINS["CN200"]
    monkeypatch.setitem(registry.BUILTINS, "CN200", dataclasses.replace(entry, sha256="0" * 64))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err, extractions = call(
        ["deface", phantom_file, out_dir / "d.nii.gz", "--template", "CN200"], capsys)
    line = assert_one_line_error(code, err, "SHA-256 mismatch", "CN200.nii.gz")
    assert served_digest in line  # the served file was really downloaded and hashed
    assert out == ""
    assert list(out_dir.iterdir()) == []
    downloads = home / "downloads"
    assert not (downloads / "CN200.nii.gz").exists()
    assert not (downloads / "CN200.nii.gz.sha256").exists()
    assert not downloads.exists() or stray_files(downloads) == []
    assert not (home / "templates" / "tpl-CN200").exists()
    assert served.read_bytes()  # the mirror is untouched
    assert extractions == 0


# --------------------------------------------------------------------------- subprocess


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ISYB_TEMPLATE_MIRROR", None)
    env.pop("ISYB_DEBUG", None)
    return env


def test_subprocess_bad_input(tmp_path: Path, phantom_file: Path, default_template) -> None:
    """End to end: a text file named .nii.gz through ``python -m isyb.cli``."""
    bad = _text_file(tmp_path, phantom_file)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "isyb.cli", "deface", str(bad), str(out_dir / "d.nii.gz")],
        capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert_one_line_error(result.returncode, result.stderr, bad.name)
    assert result.stdout == ""
    assert list(out_dir.iterdir()) == []


def test_console_script_missing_file(tmp_path: Path) -> None:
    """End to end through the installed ``isyb`` script."""
    script = shutil.which("isyb")
    if script is None:
        pytest.skip("the isyb console script is not on PATH")
    result = subprocess.run([script, "deface", str(tmp_path / "nope.nii.gz"),
                             str(tmp_path / "out.nii.gz")],
                            capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert_one_line_error(result.returncode, result.stderr, "no such file")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- help, version


@pytest.mark.parametrize(("argv", "expected"), [
    (["--help"], ["deface", "templates", "demo", "--version"]),
    (["deface", "--help"], ["IN", "OUT", "--template", "--method", "--ears", "--neck",
                            "--guard-mm", "--save-mask", "--force", "--no-png",
                            "--participant-label", "--nprocs", "--quiet", "examples:"]),
    (["templates", "--help"], ["list", "show", "prepare"]),
    (["demo", "--help"], ["OUT_DIR", "--subjects", "--nprocs", "--quiet"]),
])
def test_help(argv: list[str], expected: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: isyb")
    assert err == ""
    for option in expected:
        assert option in out, option


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"isyb {isyb.__version__}"


# --------------------------------------------------------------------------- templates


def test_templates_list(isyb_home: Path, capsys) -> None:
    code, out, err, _ = call(["templates", "list"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "prepared"]
    assert [line.split()[0] for line in lines[1:]] == list(BUILTIN_NAMES)


def test_templates_show_templateflow(templateflow_pinned: Path, data_root: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    templateflow_home = templateflow_pinned
    monkeypatch.setenv("ISYB_HOME", str(tmp_path / "isyb_home"))
    code, out, err, _ = call(["templates", "show", "MNI152NLin6Asym"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["name"] == "MNI152NLin6Asym"
    mask = templateflow_home / "tpl-MNI152NLin6Asym" / \
        "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"
    assert Path(info["brain_mask"]).resolve() == mask.resolve()  # given, not derived
    assert "derived" not in info["brain_mask"]
    rule = info["face_rule"]
    assert isinstance(rule, dict) and rule
    for key in ("head", "brain_mask_file", "face_mask_file"):
        assert Path(info[key]).is_file(), key
    assert info["head_sha256"] == hashlib.sha256(
        (data_root / "templates" / "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz").read_bytes()
    ).hexdigest()


def test_templates_prepare_path_derives_mask_and_caches(data_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys) -> None:
    source = data_root / "templates" / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
    if not source.is_file():
        pytest.skip(f"{source} not found in the test data")
    head = tmp_path / "heads" / source.name  # no sibling brain mask here
    head.parent.mkdir()
    shutil.copyfile(source, head)
    home = tmp_path / "isyb_home"
    monkeypatch.setenv("ISYB_HOME", str(home))

    code, out, err, _ = call(["templates", "prepare", head], capsys)
    assert code == 0, err
    metas = list((home / "templates").glob("tpl-*/template.json"))
    assert len(metas) == 1
    meta = json.loads(metas[0].read_text())
    assert meta["brain_mask"] == "derived by deepbet"
    assert meta["source"] == str(head.resolve())
    assert str(metas[0].parent) in out
    mtime = metas[0].stat().st_mtime_ns

    code, out2, err2, extractions = call(["templates", "prepare", head], capsys)
    assert code == 0, err2
    assert "preparing" not in err2
    assert out2 == out
    assert metas[0].stat().st_mtime_ns == mtime
    assert list((home / "templates").glob("tpl-*/template.json")) == metas
    assert extractions == 0


# --------------------------------------------------------------------------- a good run


@dataclasses.dataclass
class GoodRun:
    source: Path
    out: Path
    mask: Path
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def good_run(phantom_file: Path, default_template,
             tmp_path_factory: pytest.TempPathFactory) -> GoodRun:
    """One single-file run through the CLI, shared by the tests below."""
    folder = tmp_path_factory.mktemp("good_run")
    out = folder / "out" / "sub-01_defaced.nii.gz"
    mask = folder / "sub-01_facemask.nii.gz"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["deface", str(phantom_file), str(out), "--save-mask", str(mask)])
    return GoodRun(phantom_file, out, mask, code, stdout.getvalue(), stderr.getvalue())


def test_good_run_summary(good_run: GoodRun) -> None:
    assert good_run.code == 0, good_run.stderr
    assert "error" not in good_run.stderr
    lines = good_run.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["changed_voxels"] > 0
    assert summary["brain_guard_passed"] is True
    assert summary["output"] == str(good_run.out)
    assert summary["method"] == "blur"
    assert summary["little_or_no_face"] is False


def test_good_run_output_on_input_grid(good_run: GoodRun) -> None:
    source, out = nib.load(str(good_run.source)), nib.load(str(good_run.out))
    assert out.shape == source.shape
    assert np.array_equal(out.affine, source.affine)
    assert out.get_data_dtype() == source.get_data_dtype()
    assert not np.array_equal(np.asarray(out.dataobj), np.asarray(source.dataobj))
    assert stray_files(good_run.out.parent) == []


def test_good_run_mask(good_run: GoodRun) -> None:
    source, mask = nib.load(str(good_run.source)), nib.load(str(good_run.mask))
    assert mask.shape == source.shape
    assert np.array_equal(mask.affine, source.affine)
    assert mask.get_data_dtype() == np.uint8
    values = np.asarray(mask.dataobj)
    assert set(np.unique(values).tolist()) == {0, 1}
    # every changed voxel was allowed by the mask
    changed = np.asarray(nib.load(str(good_run.out)).dataobj) != np.asarray(source.dataobj)
    assert not (changed & (values == 0)).any()


def test_good_run_sidecars(good_run: GoodRun) -> None:
    provenance = good_run.out.parent / "sub-01_defaced_isyb.json"
    png = good_run.out.parent / "sub-01_defaced_isyb.png"
    record = json.loads(provenance.read_text())
    summary = json.loads(good_run.stdout)
    assert record["changed_voxels"] == summary["changed_voxels"]
    assert record["brain_guard"]["passed"] is True
    assert record["brain_guard"]["changed_voxels_in_guard"] == 0
    assert record["template"]["name"] == "default"
    assert record["input"] == str(good_run.source)
    assert record["qc_png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in good_run.out.parent.iterdir()) == [
        "sub-01_defaced.nii.gz", "sub-01_defaced_isyb.json", "sub-01_defaced_isyb.png"]


def test_good_run_outputs_respect_umask(good_run: GoodRun) -> None:
    expected = 0o666 & ~umask()
    for path in (good_run.out, good_run.mask, *good_run.out.parent.glob("*_isyb.*")):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


@pytest.mark.parametrize(("argv", "fragment"), [
    ([], "COMMAND"),
    (["--quiet", "deface", "in.nii.gz", "out.nii.gz"], "go after the command"),
    (["-v", "qc", "anat", "in.nii.gz"], "go after the command"),
    (["--bogus", "deface", "in.nii.gz", "out.nii.gz"], "--bogus"),
])
def test_a_bad_top_level_call_is_one_line(argv: list[str], fragment: str, capsys) -> None:
    """The top-level parser refuses as the commands' parsers do: one line, exit 2."""
    assert_one_line_error(main(argv), capsys.readouterr().err, fragment)

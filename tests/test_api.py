"""The public Python API: lazy names, ``isyb.deface`` from a path or an image, fail closed, README.

``isyb.deface`` must give exactly what ``isyb deface IN OUT`` writes, whether
the head comes as a path or as an in-memory nibabel image, and must refuse
(raise, return nothing, write nothing) a result whose brain-guard check on
the stored values failed. The README's "Python API" examples run here as
doctests, on a synthetic phantom with the locally prepared default template.
"""

from __future__ import annotations

import doctest
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import isyb
from isyb.deface import checked as checked_mod
from isyb.deface.engine import DefaceOptions, Defacing
from isyb.deface.file import deface_file
from isyb.synthetic.phantom import make_phantom, to_nifti

README = Path(__file__).resolve().parents[1] / "README.md"
PUBLIC = ("deface", "DefaceOptions", "DefaceResult", "Template", "load_template",
          "evaluate_defacing", "qc_anat", "qc_bold", "load_volume", "Volume", "IsybError")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- names


def test_every_public_name_is_listed_and_resolves_to_its_definition() -> None:
    from isyb.deface.api import DefaceResult
    from isyb.errors import IsybError
    from isyb.evaluate.anonymization import evaluate_defacing
    from isyb.io import Volume, load_volume
    from isyb.templates.registry import Template, load_template

    assert set(PUBLIC) <= set(isyb.__all__) and set(PUBLIC) <= set(dir(isyb))
    assert isyb.DefaceOptions is DefaceOptions
    assert isyb.DefaceResult is DefaceResult
    assert isyb.Template is Template and isyb.load_template is load_template
    assert isyb.evaluate_defacing is evaluate_defacing
    assert isyb.load_volume is load_volume and isyb.Volume is Volume
    assert isyb.IsybError is IsybError
    assert callable(isyb.deface)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        isyb.nothing  # noqa: B018


@pytest.mark.parametrize("name", ["qc_anat", "qc_bold"])
def test_qc_functions_are_public(name: str) -> None:
    import importlib

    module = importlib.import_module(f"isyb.qc.{name.removeprefix('qc_')}")
    if not hasattr(module, name):
        pytest.skip(f"isyb.qc.{name.removeprefix('qc_')} has no {name} yet")
    assert getattr(isyb, name) is getattr(module, name)


def test_deface_stays_callable_after_its_modules_are_imported() -> None:
    """``isyb.deface`` is the package and the function; importing a submodule keeps both."""
    code = ("import sys, isyb, isyb.deface.engine, isyb.deface.dataset\n"
            "from isyb import deface\n"
            "assert deface is isyb.deface and callable(deface)\n"
            "assert isyb.deface.engine.DefaceOptions is isyb.DefaceOptions\n"
            "print(' '.join(m for m in ('torch', 'ants') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""  # neither import nor attribute access loads torch or ANTs


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="guard_milimetres"):
        isyb.deface("unused.nii.gz", guard_milimetres=5)


def test_missing_file_is_an_isyb_error(tmp_path: Path) -> None:
    with pytest.raises(isyb.IsybError, match="no such file"):
        isyb.deface(tmp_path / "missing.nii.gz")


# --------------------------------------------------------------------------- same bytes as the CLI


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 mm phantom head stored LIA, int16: the README's example head (and
    test_evaluate's), so the run's work cache extracts its brain and registers it once."""
    path = tmp_path_factory.mktemp("api") / "sub-01_T1w.nii.gz"
    to_nifti(make_phantom(voxel_size=2.0, seed=5), "LIA").to_filename(str(path))
    return path


@pytest.fixture(scope="module")
def written(head: Path, default_template) -> tuple[Path, Path, dict]:
    """What ``deface_file`` (the CLI) writes for ``head``: image, mask, record."""
    out, mask = head.parent / "cli_defaced.nii.gz", head.parent / "cli_mask.nii.gz"
    record = deface_file(head, out, default_template, DefaceOptions(), save_mask=mask,
                         qc_png=False)
    return out, mask, record


@pytest.mark.parametrize("given", ["path", "image"])
def test_api_gives_the_bytes_the_cli_writes(given: str, head: Path, written, default_template,
                                            tmp_path: Path) -> None:
    out, mask, record = written
    source = nib.load(str(head))
    result = isyb.deface(head if given == "path" else source, template=default_template)

    assert result.image.shape == source.shape
    assert np.array_equal(result.image.affine, source.affine)
    assert result.image.get_data_dtype() == source.get_data_dtype()
    assert np.array_equal(np.asarray(result.image.dataobj), np.asarray(nib.load(out).dataobj))
    assert result.mask.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(result.mask.dataobj), np.asarray(nib.load(mask).dataobj))
    result.to_filename(tmp_path / "api.nii.gz")
    result.image.to_filename(str(tmp_path / "nibabel.nii.gz"))  # unscaled input: same bytes
    result.mask.to_filename(str(tmp_path / "api_mask.nii.gz"))
    assert sha256(tmp_path / "api.nii.gz") == sha256(out)
    assert sha256(tmp_path / "nibabel.nii.gz") == sha256(out)
    assert sha256(tmp_path / "api_mask.nii.gz") == sha256(mask)

    report = result.report.to_json()
    assert result.report.brain_guard.passed and report["brain_guard"]["passed"] is True
    for key in ("template", "method", "options", "changed_voxels", "brain_guard",
                "face_surface_changed_fraction", "registration", "allowed_voxels"):
        assert report[key] == record[key], key
    assert report.get("input") == (str(head) if given == "path" else None)
    assert "output" not in report and "qc_png" not in report
    assert report["timings_s"]["total_s"] > 0


def test_record_keys_keep_their_order(written) -> None:
    """The provenance record's key order is part of its bytes (checksums across versions)."""
    _, _, record = written
    assert list(record) == [
        "input", "output", "template", "method", "options", "changed_voxels", "brain_guard",
        "face_surface_changed_fraction", "face_skin_in_guard_fraction", "face_reference",
        "registration", "brain_mask_ml",
        "face_region_voxels",
        "allowed_voxels", "face_tissue_ml", "template_face_tissue_ml", "little_or_no_face",
        "face_surface_voxels", "face_surface_voxels_in_guard", "timings_s", "created",
        "versions"]
    assert list(record["brain_guard"]) == ["margin_mm", "guard_voxels_checked",
                                           "changed_voxels_in_guard", "passed"]
    assert list(record["timings_s"])[-1] == "total_s"


# --------------------------------------------------------------------------- fail closed


def _breaking_the_guard(volume, template, options, *, alignment=None, subject=None) -> Defacing:
    """A defacing that changes the brain guard (the case the stored-value check exists for)."""
    guard = np.zeros(volume.shape, dtype=bool)
    guard[tuple(s // 2 for s in volume.shape)] = True
    nothing = np.zeros(volume.shape, dtype=bool)
    return Defacing(volume.data + 100.0, np.ones(volume.shape, dtype=bool), nothing, guard,
                    nothing, nothing, nothing, {},  # type: ignore[typeddict-item]
                    nothing.astype(np.uint8), nothing)


def test_a_failing_guard_check_returns_and_writes_nothing(head: Path, default_template,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checked_mod, "deface_volume", _breaking_the_guard)
    for image in (head, nib.load(str(head))):
        with pytest.raises(checked_mod.BrainGuardError, match="1 voxels inside the brain guard"):
            isyb.deface(image, template=default_template)
    out = tmp_path / "out" / "defaced.nii.gz"
    with pytest.raises(isyb.IsybError, match="fail closed"):
        deface_file(head, out, default_template, DefaceOptions(),
                    save_mask=tmp_path / "out" / "mask.nii.gz")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- README


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_readme_python_api_examples_run(default_template, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    section = readme_section("Python API")
    test = doctest.DocTestParser().get_doctest(section, {}, "README: Python API", str(README), 0)
    assert test.examples, "the section has no >>> examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, f"{runner.failures} README example(s) failed (see output)"

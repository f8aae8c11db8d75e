"""``isyb derive`` on the extended demo dataset: participant and group levels, bad input.

The demo's BOLD, DWI and ASL runs come from :mod:`isyb.synthetic.runs` with
known truth (CBF 60/22 ml/100 g/min in GM/WM, WM FA 0.80), so the numbers
the dataset mode reports are checked, not only the files. A third subject
carries the bad inputs the issue lists: a DWI run without bval, a DWI run
with a bvec of the wrong shape, an ASL run without aslcontext.tsv, and a
BOLD run too short for the 0.01-0.1 Hz band. They fail with a one-line
error each, the good subjects go on, and the command exits 1 (finished, some
runs failed). Normalisation is affine here to keep the test short; SyN is
tested in test_normalize.py. The FreeSurfer test reuses the fixture's work
folder, so the subject's tissues and normalisation come from the cache. The
Dask test runs one subject's DWI and ASL again through ``--executor dask``
and checks that the maps are the same bytes (the subject's anatomy comes
from the fixture's work folder; its brain and tissues were checked to be the
same bytes with 1, 2 and 4 torch threads). Refusals (exit 2) and other cheap
checks are in test_derive_inputs.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import coarser_demo_t1w
from isyb.cli import main
from isyb.synthetic.demo import build_demo_dataset
from isyb.synthetic.runs import Geometry, rest_bold

pytestmark = pytest.mark.slow

DERIV = Path("derivatives") / "isyb"
SPACE = "MNI152NLin2009aSym"


T1W_MM = 2.0  # the demo's T1w is 1.5 mm; brain, tissues and normalisation cost by the voxel


def _add_bad_subject(bids: Path) -> None:
    good = bids / "sub-01"
    bad = bids / "sub-03"
    shutil.copytree(good / "anat", bad / "anat")
    for path in (bad / "anat").iterdir():
        path.rename(path.with_name(path.name.replace("sub-01", "sub-03")))
    (bad / "dwi").mkdir(parents=True)
    for run in ("1", "2"):
        for ext in (".nii.gz", ".json", ".bval", ".bvec"):
            shutil.copyfile(good / "dwi" / f"sub-01_dwi{ext}",
                            bad / "dwi" / f"sub-03_run-{run}_dwi{ext}")
    (bad / "dwi" / "sub-03_run-1_dwi.bval").unlink()
    bvec = bad / "dwi" / "sub-03_run-2_dwi.bvec"
    bvec.write_text("\n".join(bvec.read_text().splitlines()[:2]) + "\n")  # 2 rows, not 3
    (bad / "perf").mkdir()
    for ext in (".nii.gz", "_asl.json"):
        name = "asl.nii.gz" if ext == ".nii.gz" else "asl.json"
        shutil.copyfile(good / "perf" / f"sub-01_{name}", bad / "perf" / f"sub-03_{name}")
    (bad / "func").mkdir()
    run = rest_bold(Geometry(), n_volumes=16, tr=1.0)
    image = nib.Nifti1Image(run.series, run.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.to_filename(str(bad / "func" / "sub-03_task-rest_bold.nii.gz"))
    (bad / "func" / "sub-03_task-rest_bold.json").write_text(
        json.dumps({"TaskName": "rest", "RepetitionTime": 1.0}))
    with open(bids / "participants.tsv", "a") as table:
        table.write("sub-03\tn/a\tn/a\tn/a\n")


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("derive")
    bids = build_demo_dataset(root / "bids", n_subjects=2,
                              modalities=("anat", "func", "dwi", "perf"))
    coarser_demo_t1w(bids, 2, T1W_MM)
    _add_bad_subject(bids)
    out = root / "out"
    # One process: no worker imports isyb again (the Dask test runs a subject out of process).
    # One thread per task, as the Dask test's: ANTs gives other bytes at other ITK thread
    # counts, and a local task's default is cores // nprocs, a Dask task's 1.
    code = main(["derive", str(bids), str(out), "participant", "--normalization", "Affine",
                 "--nprocs", "1", "--omp-nthreads", "1", "--quiet"])
    group_code = main(["derive", str(bids), str(out), "group"])
    return {"bids": bids, "out": out, "code": code, "group_code": group_code}


def _record(out: Path, relative: str) -> dict:
    return json.loads((out / DERIV / relative).read_text())


def test_participant_level_writes_native_and_template_maps(derived: dict) -> None:
    out = derived["out"]
    func = out / DERIV / "sub-01" / "func"
    for metric in ("alff", "falff", "reho"):
        assert (func / f"sub-01_task-rest_desc-{metric}_map.nii.gz").is_file()
    for metric in ("alff", "falff", "reho", "vmhc"):
        for desc in (metric, f"{metric}z"):
            path = func / f"sub-01_task-rest_space-{SPACE}_desc-{desc}_map.nii.gz"
            assert path.is_file(), path.name
    z = nib.load(str(func / f"sub-01_task-rest_space-{SPACE}_desc-alffz_map.nii.gz"))
    values = np.asarray(z.dataobj)
    inside = values[values != 0]
    assert abs(inside.mean()) < 1e-3 and inside.std() == pytest.approx(1.0, abs=0.02)
    record = _record(out, "sub-01/func/sub-01_task-rest_desc-derive_bold.json")
    assert record["status"] == "ok" and record["volumes_dropped"] == 5
    assert record["slice_timing_corrected"] is True
    assert any("csf" in name.lower() for name in record["regressors"])


def test_dwi_and_asl_numbers_match_the_phantom_truth(derived: dict) -> None:
    out = derived["out"]
    dwi = _record(out, "sub-01/dwi/sub-01_desc-derive_dwi.json")
    assert dwi["status"] == "ok"
    tissue = dwi["tissue"]
    fa_wm = next(v for k, v in tissue.items() if k.lower().startswith("fa") and "wm" in k.lower())
    fa_gm = next(v for k, v in tissue.items() if k.lower().startswith("fa") and "gm" in k.lower())
    assert fa_wm > 0.5 > 0.3 > fa_gm  # truth: WM 0.80, GM 0.14, blurred by 4 mm partial volume
    asl = _record(out, "sub-01/perf/sub-01_desc-derive_asl.json")
    assert asl["status"] == "ok"
    assert 40.0 < asl["cbf_gm_mean"] < 65.0  # truth 60 in GM, 22 in WM; partial volume lowers it


def test_bad_runs_fail_with_one_line_errors_the_others_go_on_and_the_exit_code_is_1(
        derived: dict) -> None:
    assert derived["code"] == 1
    out = derived["out"]
    expected = {
        "sub-03/dwi/sub-03_run-1_desc-derive_dwi.json": "bval",
        "sub-03/dwi/sub-03_run-2_desc-derive_dwi.json": "bvec",
        "sub-03/perf/sub-03_desc-derive_asl.json": "aslcontext",
        "sub-03/func/sub-03_task-rest_desc-derive_bold.json": "frequency bin",
    }
    for relative, word in expected.items():
        record = _record(out, relative)
        assert record["status"] == "failed", relative
        assert word in record["error"] and "\n" not in record["error"], record["error"]
        assert str(derived["bids"]) not in record["error"]  # no local paths in the records
    for subject in ("sub-01", "sub-02"):
        for path in (out / DERIV / subject).rglob("*_desc-derive_*.json"):
            assert json.loads(path.read_text())["status"] == "ok", path.name


def test_group_level_maps_and_figures(derived: dict) -> None:
    assert derived["group_code"] == 0
    group = derived["out"] / DERIV / "group"
    summary = json.loads((group / "group_derive.json").read_text())
    for metric in ("alff", "falff", "reho", "vmhc", "fa", "md", "cbf"):
        entry = summary["metrics"][metric]
        assert entry["n"] == 2, metric
        assert (group / entry["figure"]).stat().st_size > 10_000
        mean = nib.load(str(group / f"group_space-{SPACE}_desc-{metric}mean_map.nii.gz"))
        mask = np.asarray(nib.load(str(group / f"group_space-{SPACE}_desc-{metric}_mask.nii.gz"))
                          .dataobj) > 0
        assert mask.sum() > 1000 and np.all(np.isfinite(np.asarray(mean.dataobj)[mask]))
    table = pd.read_csv(group / "group_derive.tsv", sep="\t")
    assert set(table["status"]) == {"ok", "failed"} and (table["status"] == "failed").sum() == 4


def test_rerun_skips_finished_runs(derived: dict, capsys) -> None:
    out = derived["out"]
    record = out / DERIV / "sub-01" / "dwi" / "sub-01_desc-derive_dwi.json"
    before = record.stat().st_mtime_ns
    main(["derive", str(derived["bids"]), str(out), "participant", "--normalization", "Affine",
          "--participant-label", "01", "--quiet"])
    assert record.stat().st_mtime_ns == before


def test_freesurfer_outputs_are_summarised_per_region(derived: dict, tmp_path: Path) -> None:
    from test_surface import _subject as write_freesurfer_subject

    write_freesurfer_subject(tmp_path / "fs", "sub-01")
    out = tmp_path / "out"
    code = main(["derive", str(derived["bids"]), str(out), "participant", "--metrics", "cbf",
                 "--normalization", "Affine", "--participant-label", "01", "--freesurfer-dir",
                 str(tmp_path / "fs"), "--work-dir", str(derived["out"] / "work" / "derive"),
                 "--quiet"])
    assert code == 0
    table = pd.read_csv(out / DERIV / "sub-01" / "anat" / "sub-01_desc-surface_metrics.tsv",
                        sep="\t")
    thickness = table[(table.hemi == "lh") & (table.region == "precentral")
                      & (table.metric == "thickness")]
    assert float(thickness.value.iloc[0]) == pytest.approx(2.75)  # mean of 2, 2.5, 3, 3.5
    assert main(["derive", str(derived["bids"]), str(out), "group", "--metrics", "cbf"]) == 0
    assert (out / DERIV / "group" / "group_surface_metrics.tsv").is_file()


def test_dask_executor_gives_the_same_maps_as_local_processes(derived: dict,
                                                              tmp_path: Path) -> None:
    """One subject's DWI and ASL runs (tensor fit, CBF, ANTs coregistration, template warps)
    again through ``--executor dask``: the same bytes as the local run. The BOLD maps are not
    redone here (their preprocessing is the costly part and runs the same code in a worker)."""
    out = tmp_path / "dask"
    code = main(["derive", str(derived["bids"]), str(out), "participant", "--normalization",
                 "Affine", "--participant-label", "01", "--metrics", "fa,md,cbf",
                 "--executor", "dask", "--nprocs", "1", "--omp-nthreads", "1", "--work-dir",
                 str(derived["out"] / "work" / "derive"), "--quiet"])
    assert code == 0
    maps = sorted((out / DERIV / "sub-01").glob("*/*_map.nii.gz"))
    assert len(maps) == 3 * 3  # FA, MD, CBF: native, template space, z-scored
    for path in maps:
        local = derived["out"] / DERIV / "sub-01" / path.parent.name / path.name
        assert path.read_bytes() == local.read_bytes(), path.name

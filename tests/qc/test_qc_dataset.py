"""Dataset mode of `isyb qc` end to end: both levels on a small BIDS dataset, resume, reports
(slow: brain extraction and motion correction of every run)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from isyb.qc.report import REPORT_METRICS
from isyb.synthetic.epi import phantom_bold

pytestmark = pytest.mark.slow


def _save_bold(path: Path, series: np.ndarray, vox: tuple[float, float, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(series, np.diag([*vox, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.to_filename(str(path))


@pytest.fixture(scope="module")
def qc_dataset(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict:
    """A BIDS dataset with one real T1w, five phantom BOLD runs and one broken run,
    taken through both levels of `isyb qc` (TR from an inherited top-level sidecar)."""
    root = tmp_path_factory.mktemp("qc") / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "qc test", "BIDSVersion": "1.9.0"}')
    (root / "task-rest_bold.json").write_text('{"RepetitionTime": 2.0, "TaskName": "rest"}')
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copyfile(data_root / "heads" / "itk-kmeans_T1w_LSA_2x2x3mm.nii.gz",
                    anat / "sub-01_T1w.nii.gz")
    vox = (6.0, 6.0, 6.0)
    motion = {"01": 0.05, "02": 0.05, "03": 0.05, "04": 0.05, "05": 4.0}
    for index, (label, size) in enumerate(motion.items()):
        series, _ = phantom_bold((32, 32, 20), vox, 16, max_trans=size, max_rot_deg=size,
                                 seed=index)
        _save_bold(root / f"sub-{label}" / "func" / f"sub-{label}_task-rest_bold.nii.gz",
                   series, vox)
    short, _ = phantom_bold((32, 32, 20), vox, 6, seed=9)
    _save_bold(root / "sub-06" / "func" / "sub-06_task-rest_bold.nii.gz", short, vox)
    out = root.parent / "out"
    participant = run_cli("qc", root, out, "participant", "--quiet")
    group = run_cli("qc", root, out, "group")
    return {"root": root, "out": out, "derivatives": out / "derivatives" / "isyb",
            "participant": participant, "group": group}


def test_participant_level_writes_every_run_and_goes_on_after_a_failure(qc_dataset) -> None:
    run = qc_dataset["participant"]
    assert run.returncode == 1, run.stderr  # one run failed, the others were done
    assert "failed: sub-06/func/sub-06_task-rest_bold.nii.gz" in run.stderr
    derivatives = qc_dataset["derivatives"]
    anat = json.loads((derivatives / "sub-01" / "anat" / "sub-01_desc-qc_T1w.json").read_text())
    assert anat["status"] == "ok" and anat["metrics"]["isyb_snr"] > 0
    assert (derivatives / "sub-01" / "anat" / "sub-01_desc-qc_T1w.html").is_file()
    for label in ("02", "05"):
        stem = derivatives / f"sub-{label}" / "func" / f"sub-{label}_task-rest_desc-qc_"
        record = json.loads(Path(f"{stem}bold.json").read_text())
        assert record["status"] == "ok" and record["tr_s"] == 2.0
        frames = pd.read_csv(f"{stem}timeseries.tsv", sep="\t")
        assert len(frames) == 16 and "framewise_displacement" in frames
        page = Path(f"{stem}bold.html").read_text()
        assert page.count("data:image/png;base64,") == 2  # traces and carpet
    failed = json.loads((derivatives / "sub-06" / "func" /
                         "sub-06_task-rest_desc-qc_bold.json").read_text())
    assert failed["status"] == "failed" and "at least 10 volumes" in failed["error"]
    assert json.loads((derivatives / "dataset_description.json").read_text())[
        "DatasetType"] == "derivative"


def test_participant_level_resumes_without_recomputing(qc_dataset) -> None:
    derivatives = qc_dataset["derivatives"]
    record = derivatives / "sub-02" / "func" / "sub-02_task-rest_desc-qc_bold.json"
    before = record.stat().st_mtime_ns
    rerun = run_cli("qc", qc_dataset["root"], qc_dataset["out"], "participant",
                    "--participant-label", "02")
    assert rerun.returncode == 0, rerun.stderr
    assert "1 run(s) already measured, skipped" in rerun.stderr
    assert record.stat().st_mtime_ns == before


def _plotted(table: pd.DataFrame, modality: str) -> list[str]:
    return [m for m in REPORT_METRICS[modality] if m in table]


def test_group_level_tables_exclusions_and_report_agree(qc_dataset) -> None:
    assert qc_dataset["group"].returncode == 0, qc_dataset["group"].stderr
    derivatives = qc_dataset["derivatives"]
    bold = pd.read_csv(derivatives / "group_bold.tsv", sep="\t")
    assert bold["bids_name"].tolist() == [f"sub-0{i}_task-rest_bold" for i in range(1, 6)]
    assert {"fd_mean", "dvars_std", "gcor", "tsnr", "fwhm_avg"} <= set(bold.columns)
    t1w = pd.read_csv(derivatives / "group_T1w.tsv", sep="\t")
    assert t1w["bids_name"].tolist() == ["sub-01_T1w"]
    excluded = pd.read_csv(derivatives / "exclusions.tsv", sep="\t")
    # Only the run with large motion breaks the FD rule; with 5 runs no |z| can pass
    # (n - 1) / sqrt(n) = 1.79, so the SD rule excludes nothing.
    assert bold.set_index("bids_name")["fd_mean"].gt(0.2).tolist() == [False] * 4 + [True]
    assert excluded["bids_name"].tolist() == ["sub-05_task-rest_bold"]
    assert excluded["rules"].tolist() == ["fd"]
    report = (derivatives / "group_qc.html").read_text()
    marked = set(re.findall(r"class='excluded' data-run='([^']+)'", report))
    assert marked == set(excluded["bids_name"])
    assert "sub-06/func/sub-06_task-rest_bold.nii.gz" in report  # the failure is listed
    plots = re.findall(r"<svg class='metric-plot' data-metric='([^']+)'", report)
    # one plot per report metric the table has (a phantom without air has no snrd_gm, cnr)
    assert plots == [*_plotted(t1w, "T1w"), *_plotted(bold, "bold")]
    assert {"isyb_snr", "efc", "fd_mean"} <= set(plots)


def test_group_report_in_headless_chromium(qc_dataset, tmp_path: Path) -> None:
    """Render the report in a real browser: no console errors, one plot per metric."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    report = qc_dataset["derivatives"] / "group_qc.html"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
              "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "group_qc.png"
    screenshot = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1300,4200",
                                 report.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20000, screenshot.stderr[-2000:]
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True,
                         text=True, timeout=120)
    console = [line for line in (screenshot.stderr + dom.stderr).splitlines()
               if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    # The page's script counts the plots it finds and marks the body; it ran without error.
    derivatives = qc_dataset["derivatives"]
    expected = sum(len(_plotted(pd.read_csv(derivatives / f"group_{m}.tsv", sep="\t"), m))
                   for m in ("T1w", "bold"))
    assert f'data-plots="{expected}"' in dom.stdout
    from PIL import Image

    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 20  # the excluded run is drawn in red

"""``--dti-fit iwls``: MRtrix3's default tensor fit, against a hand computation and ``dwi2tensor``.

The hand computation solves each weighted step as a least-squares problem on
the rows scaled by their weights (``numpy.linalg.lstsq``), not by the normal
equations :func:`isyb.derive.dti.iwls_tensor` uses. The MRtrix test runs
``dwi2tensor`` and ``tensor2metric`` (Debian's ``mrtrix3`` package) on a noisy
tensor phantom and on a crop of the real DWI, and skips when they are absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.derive.dti import design_matrix, fa_md, iwls_tensor, read_gradients

BVALS = np.r_[0.0, 0.0, np.full(20, 1000.0), np.full(10, 2500.0)]


def _directions(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


BVECS = np.vstack([np.zeros((2, 3)), _directions(20), _directions(10, seed=1)])


def _hand_iwls(signal: np.ndarray, design: np.ndarray, iterations: int) -> np.ndarray:
    """Veraart 2013 / dwi2tensor, one voxel: the weighted fits as row-scaled least squares."""
    floor = 1e-6 * signal.max()
    signal = np.maximum(signal, floor)
    weights = signal.copy()
    x = np.zeros(design.shape[1])
    for _ in range(iterations + 1):
        x = np.linalg.lstsq(weights[:, None] * design, weights * np.log(signal), rcond=None)[0]
        if iterations > 1:
            weights = np.exp(design @ x)
    return x


def _noisy_voxels(n: int, seed: int = 2) -> np.ndarray:
    """``n`` voxels, each its own random tensor, S0 1000, Rician noise (sigma 20)."""
    rng = np.random.default_rng(seed)
    signals = []
    for _ in range(n):
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        values = rng.uniform(0.2e-3, 2.0e-3, size=3)
        tensor = rotation @ np.diag(values) @ rotation.T
        clean = 1000.0 * np.exp(-BVALS * np.einsum("ni,ij,nj->n", BVECS, tensor, BVECS))
        noise = rng.normal(0.0, 20.0, size=(2, BVALS.size))
        signals.append(np.hypot(clean + noise[0], noise[1]))
    return np.array(signals)


@pytest.mark.parametrize("iterations", [0, 1, 2, 4])
def test_iwls_equals_a_hand_computation_of_each_reweighting(iterations: int) -> None:
    design = design_matrix(BVALS, BVECS)
    signals = _noisy_voxels(12)
    signals[0, 5] = 0.0  # a zero signal is raised to 1e-6 of the voxel's maximum
    fitted = iwls_tensor(signals, design, iterations=iterations)
    for voxel, signal in enumerate(signals):
        np.testing.assert_allclose(fitted[voxel], _hand_iwls(signal, design, iterations),
                                   rtol=1e-8, atol=1e-12)


def test_iwls_recovers_a_noise_free_tensor_and_its_fa_and_md() -> None:
    values = np.array([1.7e-3, 0.3e-3, 0.3e-3])
    tensor = np.diag(values)
    signal = 800.0 * np.exp(-BVALS * np.einsum("ni,ij,nj->n", BVECS, tensor, BVECS))
    x = iwls_tensor(signal[None], design_matrix(BVALS, BVECS))[0]
    np.testing.assert_allclose(x, [np.log(800.0), *values, 0.0, 0.0, 0.0], atol=1e-10)
    series = np.broadcast_to(signal, (2, 2, 1, BVALS.size)).copy()
    fa, md = fa_md(series, BVALS, BVECS, fit_method="IWLS")
    md_true = values.mean()
    fa_true = np.sqrt(1.5 * ((values - md_true) ** 2).sum() / (values ** 2).sum())
    np.testing.assert_allclose(fa, fa_true, atol=1e-9)
    np.testing.assert_allclose(md, md_true, rtol=1e-9)


def test_iwls_is_not_dipys_wls_on_noisy_data_and_zero_outside_the_mask() -> None:
    series = _noisy_voxels(8).reshape(2, 4, 1, BVALS.size)
    iwls, _ = fa_md(series, BVALS, BVECS, fit_method="IWLS")
    wls, _ = fa_md(series, BVALS, BVECS, fit_method="WLS")
    assert np.abs(iwls - wls).max() > 1e-4
    mask = np.zeros(series.shape[:3], dtype=bool)
    mask[0] = True
    masked, md = fa_md(series, BVALS, BVECS, fit_method="IWLS", mask=mask)
    assert np.all(masked[~mask] == 0) and np.all(md[~mask] == 0)
    np.testing.assert_allclose(masked[mask], iwls[mask], atol=1e-12)


def _mrtrix_fa(series: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
               folder: Path) -> np.ndarray:
    """FA of ``dwi2tensor`` (default IWLS) then ``tensor2metric -fa``, on an identity grid."""
    nib.Nifti1Image(series.astype(np.float32), np.eye(4)).to_filename(str(folder / "dwi.nii"))
    np.savetxt(folder / "dwi.bval", bvals[None], fmt="%g")
    np.savetxt(folder / "dwi.bvec", bvecs.T, fmt="%.8f")
    common = ["-quiet", "-force", "-nthreads", "1"]
    subprocess.run(["dwi2tensor", *common, "-fslgrad", str(folder / "dwi.bvec"),
                    str(folder / "dwi.bval"), str(folder / "dwi.nii"), str(folder / "dt.nii")],
                   check=True)
    subprocess.run(["tensor2metric", *common, "-fa", str(folder / "fa.nii"),
                    str(folder / "dt.nii")], check=True)
    return np.asarray(nib.load(str(folder / "fa.nii")).dataobj, dtype=np.float64)


needs_mrtrix = pytest.mark.skipif(
    shutil.which("dwi2tensor") is None or shutil.which("tensor2metric") is None,
    reason="MRtrix3 (dwi2tensor, tensor2metric) is not installed; apt-get install mrtrix3")


@needs_mrtrix
def test_iwls_fa_equals_mrtrix_dwi2tensor_on_a_noisy_phantom(tmp_path: Path) -> None:
    series = _noisy_voxels(64).reshape(4, 4, 4, BVALS.size).astype(np.float32)
    mrtrix = np.clip(_mrtrix_fa(series, BVALS, BVECS, tmp_path), 0.0, 1.0)
    fa, _ = fa_md(series.astype(np.float64), BVALS, BVECS, fit_method="IWLS")
    assert np.abs(fa - mrtrix).max() < 1e-3
    ols, _ = fa_md(series.astype(np.float64), BVALS, BVECS, fit_method="OLS")
    assert np.abs(ols - mrtrix).max() > 1e-3  # the comparison can tell the fits apart


@needs_mrtrix
def test_iwls_fa_equals_mrtrix_dwi2tensor_on_the_real_dwi(data_root: Path,
                                                           tmp_path: Path) -> None:
    """Eight axial slices of the real 80-direction DWI; every voxel whose signals are all > 0
    (a zero b = 0 signal makes the fit ill-conditioned in the background)."""
    stem = data_root / "dwi" / "DWI_dir80_AP"
    if not Path(f"{stem}.nii.gz").is_file():
        pytest.skip(f"no real DWI at {stem}.nii.gz")
    image = nib.load(f"{stem}.nii.gz")
    series = np.asarray(image.dataobj, dtype=np.float32)[:, :, 16:24]
    bvals, bvecs = read_gradients(Path(f"{stem}.bval"), Path(f"{stem}.bvec"), series.shape[3])
    raw_bvecs = np.loadtxt(f"{stem}.bvec").T
    mrtrix = _mrtrix_fa(series, bvals, raw_bvecs, tmp_path)
    positive = series.min(axis=3) > 0
    assert positive.sum() > 5000
    fa, _ = fa_md(series.astype(np.float64), bvals, bvecs, fit_method="IWLS")
    assert np.abs(fa - np.clip(mrtrix, 0.0, 1.0))[positive].max() < 1e-3

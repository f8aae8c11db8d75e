"""FA and MD from a diffusion tensor fit (dipy, or MRtrix3's IWLS), with BIDS bval/bvec reading.

The tensor is fitted by dipy's ``TensorModel``: ordinary least squares on the
log signal by default, as FSL's ``dtifit`` does, or weighted least squares
(``fit_method="WLS"``); or by MRtrix3's iteratively reweighted least squares
(``fit_method="IWLS"``). FA is dimensionless (0..1); MD is in mm²/s when the
b-values are in s/mm² (BIDS).

The fits and what they equal (independent check on real data, issue 16):

* ``OLS`` (dipy) equals MRtrix3's ``dwi2tensor -ols`` to 2e-7 in FA.
* ``WLS`` is dipy's ``wls_fit_tensor`` (Chung et al. 2006, NeuroImage
  33:531): one OLS fit, then *one* weighted fit of the log signal with
  weights equal to the OLS-*predicted* signal squared. It is **not**
  MRtrix3's default fit: a median |ΔFA| of 0.0024-0.0050 on the real DWI.
* ``IWLS`` (:func:`iwls_tensor`, isyb's numpy code, because dipy has no
  fit with MRtrix's weights) is MRtrix3's default ``dwi2tensor`` fit
  (Veraart et al. 2013, NeuroImage 81:335; ``cmd/dwi2tensor.cpp``): signals
  under 1e-6 of the voxel's maximum are raised to it, a first weighted fit of
  the log signal with weights equal to the *measured* signal, then
  ``iterations`` (MRtrix's ``-iter``, default 2) refits with weights equal
  to the previous fit's *predicted* signal. The weighted normal equations
  are ``(A^T W^2 A) x = A^T W^2 log S`` with ``W = diag(w)``.
  Equal to ``dwi2tensor`` (MRtrix 3.0) within 1e-3 FA: see
  ``tests/derive/test_dti_iwls.py``.

BIDS conventions (``*_dwi.bval``: one row of N b-values in s/mm²;
``*_dwi.bvec``: three rows of N unit vectors, in the image's voxel axes).
FA and MD are rotation invariants: a gradient table that is consistently
flipped or permuted relative to the image gives the same FA and MD, so the
voxel-axis convention only matters for tensor directions, which isyb does
not report.

Tissue summaries (:func:`tissue_summary`) give FA and MD in white and grey
matter (FA-WM, FA-GM, MD-WM, MD-GM), from masks of a T1w segmentation
already brought into DWI space. The value the descriptor reports is the
mean over the tissue's voxels; the median is given too, as it is robust to
partial-volume voxels at the tissue borders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isyb.errors import IsybError

B0_THRESHOLD = 50.0  # s/mm²: volumes at or under this are b = 0
FIT_METHODS = ("OLS", "WLS", "IWLS")
IWLS_ITERATIONS = 2  # MRtrix3 dwi2tensor's DEFAULT_NITER


class DWIInputError(IsybError, ValueError):
    """A diffusion run whose gradient table cannot be used."""


def read_gradients(bval_path: Path, bvec_path: Path, n_volumes: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """``(bvals (N,), bvecs (N, 3))`` from BIDS files, checked against the run's N volumes.

    Non-unit vectors of diffusion-weighted volumes are normalised (scanners
    write them rounded); the b = 0 vectors are set to zero.
    """
    for path in (bval_path, bvec_path):
        if not Path(path).is_file():
            raise DWIInputError(f"{path}: missing; a DWI run needs its .bval and .bvec")
    try:
        bvals = np.loadtxt(bval_path, dtype=float, ndmin=1).ravel()
        bvecs = np.loadtxt(bvec_path, dtype=float, ndmin=2)
    except ValueError as exc:
        raise DWIInputError(f"{bval_path} or {bvec_path}: not a table of numbers ({exc})") from None
    if bvals.size != n_volumes:
        raise DWIInputError(f"{bval_path}: {bvals.size} b-values for {n_volumes} volumes")
    if bvecs.shape != (3, n_volumes):
        raise DWIInputError(f"{bvec_path}: shape {bvecs.shape}, expected 3 rows of "
                            f"{n_volumes} (BIDS: one row per axis)")
    bvecs = bvecs.T.copy()
    weighted = bvals > B0_THRESHOLD
    if not (~weighted).any():
        raise DWIInputError(f"{bval_path}: no b = 0 volume (b <= {B0_THRESHOLD:g} s/mm²)")
    if weighted.sum() < 6:
        raise DWIInputError(f"{bval_path}: {int(weighted.sum())} diffusion-weighted volumes; "
                            "a tensor needs at least 6 directions")
    norms = np.linalg.norm(bvecs[weighted], axis=1)
    if np.any(norms < 0.5):
        raise DWIInputError(f"{bvec_path}: a diffusion-weighted volume has a zero gradient")
    bvecs[weighted] /= norms[:, None]
    bvecs[~weighted] = 0.0
    return bvals, bvecs


def design_matrix(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """The log-linear tensor model's design ``A`` (N, 7): ``log S = A @ x``.

    ``x = (log S0, Dxx, Dyy, Dzz, Dxy, Dxz, Dyz)``, D in mm²/s for b in s/mm²
    (Basser et al. 1994, J Magn Reson B 103:247).
    """
    g = np.asarray(bvecs, dtype=np.float64)
    b = np.asarray(bvals, dtype=np.float64)[:, None]
    products = np.column_stack([g[:, 0] ** 2, g[:, 1] ** 2, g[:, 2] ** 2,
                                2 * g[:, 0] * g[:, 1], 2 * g[:, 0] * g[:, 2],
                                2 * g[:, 1] * g[:, 2]])
    return np.column_stack([np.ones(len(b)), -b * products])


def iwls_tensor(signal: np.ndarray, design: np.ndarray, *,
                iterations: int = IWLS_ITERATIONS) -> np.ndarray:
    """MRtrix3's default tensor fit (``dwi2tensor``, IWLS) of signals ``(V, N)``: ``x (V, 7)``.

    See the module docstring for the steps; MRtrix's quirk is kept: with
    ``iterations == 1`` the weights are not updated (``if (maxit > 1)`` in
    ``cmd/dwi2tensor.cpp``), so the one refit repeats the first.
    """
    signal = np.array(signal, dtype=np.float64, ndmin=2)
    small = 1e-6 * signal.max(axis=1, keepdims=True)
    signal = np.where(np.isfinite(signal) & (signal >= small), signal, small)
    log_signal = np.log(signal)
    weights = signal
    x = np.zeros((signal.shape[0], design.shape[1]))
    for _ in range(iterations + 1):
        weighted = design[None] * (weights ** 2)[:, :, None]  # (V, N, 7): W² A
        normal = np.einsum("vnj,nk->vjk", weighted, design)
        rhs = np.einsum("vnj,vn->vj", weighted, log_signal)
        x = np.linalg.solve(normal, rhs[..., None])[..., 0]
        if iterations > 1:
            weights = np.exp(x @ design.T)
    return x


def _iwls_fa_md(series: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
                keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    design = design_matrix(bvals, bvecs)
    fa = np.zeros(series.shape[:3])
    md = np.zeros(series.shape[:3])
    rows = series[keep]
    values = []
    for start in range(0, len(rows), 20000):  # bounded memory: (V, N, 7) per chunk
        x = iwls_tensor(rows[start:start + 20000], design)
        tensor = x[:, [1, 4, 5, 4, 2, 6, 5, 6, 3]].reshape(-1, 3, 3)
        values.append(np.linalg.eigvalsh(tensor))
    eigen = np.concatenate(values) if values else np.zeros((0, 3))
    mean = eigen.mean(axis=1)
    norm = np.sqrt((eigen ** 2).sum(axis=1))
    spread = np.sqrt(1.5 * ((eigen - mean[:, None]) ** 2).sum(axis=1))
    fa[keep] = np.divide(spread, norm, out=np.zeros_like(norm), where=norm > 0)
    md[keep] = mean
    return fa, md


def fa_md(series: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, *,
          mask: np.ndarray | None = None, fit_method: str = "OLS") -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """FA (0..1) and MD (mm²/s) maps of a 4-D DWI series; 0 outside ``mask``.

    ``fit_method``: ``OLS`` or ``WLS`` (dipy's ``TensorModel``), or ``IWLS``
    (MRtrix3's default, :func:`iwls_tensor`).
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    if fit_method not in FIT_METHODS:
        raise DWIInputError(f"fit method {fit_method!r}: use {', '.join(FIT_METHODS)}")
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 4 or series.shape[3] != bvals.size:
        raise DWIInputError(f"DWI shape {series.shape} does not match {bvals.size} b-values")
    if fit_method == "IWLS":
        keep = (np.ones(series.shape[:3], dtype=bool) if mask is None
                else np.asarray(mask, dtype=bool))
        keep = keep & (series.max(axis=3) > 0)
        fa, md = _iwls_fa_md(series, bvals, bvecs, keep)
    else:
        table = gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD)
        fit = TensorModel(table, fit_method=fit_method).fit(series, mask=mask)
        fa, md = fit.fa, fit.md
    fa = np.nan_to_num(np.clip(fa, 0.0, 1.0))
    md = np.nan_to_num(md)
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        fa[~keep] = 0.0
        md[~keep] = 0.0
    return fa, md


def tissue_summary(fa: np.ndarray, md: np.ndarray, wm: np.ndarray,
                   gm: np.ndarray) -> dict[str, float | int]:
    """Mean and median FA (0..1) and MD (mm²/s) over the white- and grey-matter masks.

    ``wm`` and ``gm`` are boolean masks, or partial-volume maps taken as
    > 0.5; all four arrays share one grid (the DWI's; the caller checks the
    affines). Voxels with MD <= 0 or a non-finite FA or MD are left out:
    :func:`fa_md` writes 0 outside its fit mask. Keys: ``fa_wm_mean``,
    ``fa_wm_median``, ``fa_gm_mean``, ..., ``md_gm_median``, and the voxels
    used, ``wm_voxels`` and ``gm_voxels``. The means are the reported
    FA-WM, FA-GM, MD-WM and MD-GM.
    """
    fa = np.asarray(fa, dtype=np.float64)
    md = np.asarray(md, dtype=np.float64)
    shapes = {"FA": fa.shape, "MD": md.shape, "WM mask": np.shape(wm), "GM mask": np.shape(gm)}
    if len(set(shapes.values())) != 1:
        raise DWIInputError("FA, MD and the tissue masks are on different grids: "
                            + ", ".join(f"{key} {shape}" for key, shape in shapes.items()))
    masks = {"wm": np.asarray(wm), "gm": np.asarray(gm)}
    masks = {key: mask if mask.dtype == bool else mask > 0.5 for key, mask in masks.items()}
    overlap = int((masks["wm"] & masks["gm"]).sum())
    if overlap:
        raise DWIInputError(f"the WM and GM masks overlap in {overlap} voxels")
    fitted = np.isfinite(fa) & np.isfinite(md) & (md > 0)
    out: dict[str, float | int] = {}
    for tissue, mask in masks.items():
        keep = mask & fitted
        if not keep.any():
            raise DWIInputError(f"the {tissue.upper()} mask is empty where FA and MD were "
                                f"fitted ({int(mask.sum())} mask voxels, none with MD > 0)")
        for name, image in (("fa", fa), ("md", md)):
            out[f"{name}_{tissue}_mean"] = float(image[keep].mean())
            out[f"{name}_{tissue}_median"] = float(np.median(image[keep]))
        out[f"{tissue}_voxels"] = int(keep.sum())
    return out

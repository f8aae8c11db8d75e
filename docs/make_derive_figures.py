"""Make the README's figure of the real CBF and FA maps (axial slices, no face in view).

Run: python docs/make_derive_figures.py [DATA_DIR]  (default ../shared/data; writes
docs/images/real_cbf_fa.png). The ASL and DWI runs are the real ones of the
shared data folder; both fields of view hold the brain only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from dipy.segment.mask import median_otsu

from isyb.derive.cbf import asl_cbf
from isyb.derive.dti import fa_md, read_gradients
from isyb.qc.bold import bold_brain_mask

OUT = Path(__file__).parent / "images" / "real_cbf_fa.png"


def real_cbf(data: Path) -> tuple[np.ndarray, np.ndarray]:
    run = data / "asl" / "perf" / "sub-01_asl"
    image = nib.as_closest_canonical(nib.load(f"{run}.nii.gz"))
    series = np.asarray(image.dataobj, dtype=float)
    types = (data / "asl" / "perf" / "sub-01_aslcontext.tsv").read_text().split()[1:]
    m0 = series[..., np.asarray(types) == "m0scan"].mean(axis=-1)
    brain = bold_brain_mask(m0)
    cbf, _ = asl_cbf(series, types, json.loads(Path(f"{run}.json").read_text()), mask=brain)
    return cbf, brain


def real_fa(data: Path) -> tuple[np.ndarray, np.ndarray]:
    stem = data / "dwi" / "DWI_dir80_AP"
    image = nib.as_closest_canonical(nib.load(f"{stem}.nii.gz"))
    series = np.asarray(image.dataobj, dtype=float)
    bvals, bvecs = read_gradients(Path(f"{stem}.bval"), Path(f"{stem}.bvec"), series.shape[3])
    _, brain = median_otsu(series, vol_idx=np.flatnonzero(bvals > 50), median_radius=2,
                           numpass=2)
    fa, _ = fa_md(series, bvals, bvecs, mask=brain)
    return fa, brain


def _row(axes, volume: np.ndarray, brain: np.ndarray, cmap: str, vmax: float, label: str):
    slices = np.flatnonzero(brain.any(axis=(0, 1)))
    picks = np.linspace(slices[1], slices[-2], len(axes)).round().astype(int)
    for ax, k in zip(axes, picks, strict=True):
        shown = ax.imshow(np.where(brain[..., k], volume[..., k], np.nan).T, origin="lower",
                          cmap=cmap, vmin=0.0, vmax=vmax)
        ax.set_axis_off()
        ax.set_title(f"z = {k}", fontsize=8)
    return shown


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[2] / "shared" / \
        "data"
    cbf, asl_brain = real_cbf(data)
    fa, dwi_brain = real_fa(data)
    figure, axes = plt.subplots(2, 6, figsize=(13, 5.2), layout="constrained")
    shown = _row(axes[0], cbf, asl_brain, "hot", 100.0, "CBF")
    figure.colorbar(shown, ax=axes[0], shrink=0.8, label="CBF (ml/100 g/min)")
    shown = _row(axes[1], fa, dwi_brain, "gray", 0.8, "FA")
    figure.colorbar(shown, ax=axes[1], shrink=0.8, label="FA")
    figure.suptitle(f"Real pCASL: CBF, brain mean {cbf[asl_brain].mean():.1f} ml/100 g/min   |   "
                    f"real DWI (b = 2500): FA, median over FA > 0.2 "
                    f"{np.median(fa[dwi_brain & (fa > 0.2)]):.2f}", fontsize=10)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=90)
    print(OUT)


if __name__ == "__main__":
    main()

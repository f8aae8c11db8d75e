"""Make the README's before/after figure from the synthetic phantom (no real face).

Run: python docs/make_figures.py  (writes docs/images/phantom_deface.png)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from isyb.deface.engine import DefaceOptions, align, deface_volume
from isyb.io import volume_from_image
from isyb.synthetic.phantom import make_phantom, to_nifti
from isyb.templates.registry import resolve
from isyb.viz.render import render_face

OUT = Path(__file__).parent / "images" / "phantom_deface.png"


def main() -> None:
    volume = volume_from_image(to_nifti(make_phantom(voxel_size=1.25, seed=0), "LIA",
                                        dtype=np.float32))
    template = resolve("default")
    alignment = align(volume, template)
    panels = [("phantom (synthetic)", volume.data)]
    for method in ("blur", "remove", "noise"):
        result = deface_volume(volume, template, DefaceOptions(method=method),
                               alignment=alignment)
        panels.append((f"--method {method}", result.data))
    figure, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.4))
    middle = volume.shape[0] // 2
    for column, (title, data) in enumerate(panels):
        axes[0, column].imshow(render_face(data, volume.zooms), cmap="gray")
        axes[0, column].set_title(title, fontsize=10)
        axes[1, column].imshow(data[middle].T, cmap="gray", origin="lower")
        for axis in axes[:, column]:
            axis.set_axis_off()
    figure.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=80)
    print(OUT)


if __name__ == "__main__":
    main()

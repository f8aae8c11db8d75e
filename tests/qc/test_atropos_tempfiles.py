"""Atropos leaves nothing in the temporary folder, and gives ANTsPy's own posteriors (issue 14)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from isyb.head import tissue
from isyb.synthetic.phantom import Label, make_phantom


@pytest.fixture(scope="module")
def coarse_phantom():
    return make_phantom(voxel_size=4.0, noise_sd=3.0, seed=5)


def test_atropos_leaves_no_file_in_the_temporary_folder(coarse_phantom, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    brain = coarse_phantom.mask(Label.GM, Label.WM, Label.CSF)
    found = tissue.atropos_tissues(coarse_phantom.image, brain, coarse_phantom.voxel_size,
                                   engine="ants")
    assert found.posteriors[:, brain].sum(axis=0) == pytest.approx(1.0, abs=1e-3)
    assert list(tmp_path.iterdir()) == []


def test_the_posteriors_are_those_of_antspy_atropos(coarse_phantom, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The same call as ``ants.atropos`` (which leaves its three files behind, here in tmp_path)."""
    import ants

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    brain = coarse_phantom.mask(Label.GM, Label.WM, Label.CSF)
    spacing = tuple(float(v) for v in np.broadcast_to(coarse_phantom.voxel_size, 3))
    image = ants.from_numpy(np.ascontiguousarray(coarse_phantom.image, dtype=np.float32),
                            spacing=spacing)
    mask = ants.from_numpy(brain.astype(np.float32), spacing=spacing)
    args = {"init": "KMeans[3,20x60x110]", "mrf": "[0.01,1x1x1]", "convergence": "[5,0]"}
    ours = tissue._atropos_posteriors(image, mask, **args)
    theirs = ants.atropos(a=image, x=mask, i=args["init"], m=args["mrf"],
                          c=args["convergence"], verbose=0)["probabilityimages"]
    assert len(list(tmp_path.glob("antsr*prob*.nii.gz"))) == 3  # ANTsPy's own leftovers
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)

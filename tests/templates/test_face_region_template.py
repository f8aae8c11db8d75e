"""The ``template`` face-region mode: the registered template's own face plus a margin.

Ground truth comes from the phantom: its face voxels and skin are known, and
the simulated population templates (:func:`isyb.study.simulate.phantom_head`)
share the phantom's world frame, so with an identity registration the
distance of every subject voxel to the template's face is computed directly
(a k-d tree over the template's tissue points, independent of the distance
field and interpolation the engine uses).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial import cKDTree

from conftest import assert_one_line_error
from isyb.cli import main
from isyb.deface.engine import Alignment, DefaceOptions, align, deface_volume
from isyb.deface.file import deface_file
from isyb.errors import IsybError
from isyb.head.morphology import head_mask, skin_surface, skin_threshold
from isyb.head.register import Registration
from isyb.io import Volume, load_volume
from isyb.study.simulate import FOV_CENTRE_MM, FOV_MM, phantom_head
from isyb.synthetic.phantom import Label, make_phantom
from isyb.templates.face import (
    FACE_MARGIN_MM,
    FaceRule,
    face_region,
    template_face,
    within_template_face,
)
from isyb.templates.registry import prepare

VOXEL_MM = 2.0
#: The subject's grid differs from the templates', so the distance field is interpolated.
SUBJECT_MM = 3.0
#: Diagonal of the linear part of CAPIIO_to_CN200.mat, rounded (the tests do
#: not need the shared data): wider, shallower, shorter faces.
CN200_LINEAR = np.diag([1.0457, 0.9702, 0.9210])
#: Trilinear interpolation of a distance field sampled every 2 mm, plus rounding.
TOLERANCE_MM = 2.0


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.Nifti1Image(np.asarray(data), affine).to_filename(str(path))
    return path


def _template(folder: Path, name: str, strength: float):
    image, affine, brain = phantom_head(strength=strength, linear=CN200_LINEAR,
                                        voxel_mm=VOXEL_MM, noise_sd=0.0)
    head = _save(image.astype(np.float32), affine, folder / f"{name}_T1w.nii.gz")
    mask = _save(brain.astype(np.uint8), affine, folder / f"{name}_desc-brain_mask.nii.gz")
    return prepare(name, head, mask, source="test phantom")


@pytest.fixture(scope="module")
def subject():
    phantom = make_phantom(voxel_size=SUBJECT_MM, fov_mm=FOV_MM, fov_center_mm=FOV_CENTRE_MM,
                           seed=5)
    image = nib.Nifti1Image(phantom.image.astype(np.float32), phantom.affine)
    volume = Volume(phantom.image.astype(np.float32), phantom.affine, image, None)
    return phantom, volume


@pytest.fixture(scope="module")
def templates(isyb_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("face_templates")
    return {"same": _template(folder, "facesame", 0.0),
            "smaller": _template(folder, "facesmaller", 3.0)}


def _identity(volume: Volume, brain: np.ndarray) -> Alignment:
    """The templates share the phantom's world frame: no registration needed."""
    return Alignment(brain, 0.0, Registration(np.eye(4), 1.0, "identity"), {})


def _world(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _face_skin(phantom, rule_region: np.ndarray) -> np.ndarray:
    return skin_surface(phantom.head_mask) & rule_region


def test_same_template_covers_the_face(subject, templates) -> None:
    phantom, volume = subject
    template = templates["same"]
    alignment = align(volume, template, brain=phantom.brain_mask)
    rule = deface_volume(volume, template, DefaceOptions(method="remove"), alignment=alignment)
    own = deface_volume(volume, template, DefaceOptions(method="remove", face_region="template"),
                        alignment=alignment)
    face_skin = _face_skin(phantom, rule.region)
    coverage = float(own.region[face_skin].mean())
    assert coverage >= 0.95, coverage  # measured 1.000
    for label in (Label.NOSE, Label.LIPS, Label.EYES):
        assert own.region[phantom.labels == label].mean() > 0.99, label.name
    assert not (own.region & ~rule.region).any()  # within the rule, guard removed
    assert not (own.region & own.guard).any()
    changed = own.data != volume.data
    assert not (changed & ~own.region).any()
    # the template's face, not the rule's half-spaces: far less air in front of the face
    assert own.region.sum() < 0.3 * rule.region.sum()


@pytest.mark.parametrize("method", ["blur", "noise"])
def test_blur_and_noise_stay_inside_the_template_face(subject, templates, method: str) -> None:
    phantom, volume = subject
    template = templates["same"]
    result = deface_volume(volume, template, DefaceOptions(method=method, face_region="template"),
                           alignment=_identity(volume, phantom.brain_mask))
    changed = result.data != volume.data
    assert not (changed & ~result.region).any() and not (changed & result.guard).any()
    assert changed[phantom.labels == Label.NOSE].mean() > 0.9


def test_a_smaller_template_face_leaves_the_part_beyond_the_margin(subject, templates) -> None:
    phantom, volume = subject
    template = templates["smaller"]
    alignment = _identity(volume, phantom.brain_mask)
    options = DefaceOptions(method="remove", face_region="template")
    result = deface_volume(volume, template, options, alignment=alignment)
    rule = deface_volume(volume, template, DefaceOptions(method="remove"), alignment=alignment)
    face_skin = _face_skin(phantom, rule.region)

    # independent truth: distance (mm) of each face-skin voxel to the template's
    # head tissue inside its own rule region (ears and neck included)
    tpl_volume = load_volume(template.head)
    tpl_tissue = head_mask(tpl_volume.data, skin_threshold(tpl_volume.data)) & face_region(
        template.rule, tpl_volume.shape, tpl_volume.affine, ears=True, neck=True)
    tree = cKDTree(_world(np.argwhere(tpl_tissue), tpl_volume.affine))
    points = np.argwhere(face_skin)
    distance, _ = tree.query(_world(points, volume.affine))
    covered = result.region[tuple(points.T)]
    far = distance > FACE_MARGIN_MM + TOLERANCE_MM
    near = distance < FACE_MARGIN_MM - TOLERANCE_MM
    assert far.sum() >= 20, far.sum()  # the shorter, shallower face misses part of this one
    assert not covered[far].any()
    assert covered[near].all()
    # what is left is where the shorter, shallower face ends: under the chin
    # (below the lips) and at the nose tip (in front of the nose's base)
    missed = face_skin & ~result.region
    world = _world(np.argwhere(missed), volume.affine)
    lips = _world(np.argwhere(phantom.labels == Label.LIPS), volume.affine)
    nose = _world(np.argwhere(phantom.labels == Label.NOSE), volume.affine)
    under_chin = world[:, 2] < lips[:, 2].min()
    at_nose = world[:, 1] >= nose[:, 1].min()
    assert (under_chin | at_nose).all()
    assert under_chin.sum() >= 20 and at_nose.sum() >= 1  # measured 60 and 4
    assert not (result.data != volume.data)[missed].any()


def test_distance_mapping_through_an_affine_and_beyond_the_fov() -> None:
    """A ball of tissue: subject voxels within radius + margin, and past the FOV, are in."""
    everywhere = FaceRule(face_normal=(0.0, 1.0, 0.0), face_offset=-1e9, back_y=-1e9,
                          chin_z=-1e9, ear_inner_x=(0.0, 0.0), ear_y=(0.0, 0.0),
                          ear_z=(0.0, 0.0))
    tpl_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    tpl_affine[:3, 3] = -40.0
    ijk = np.indices((81, 81, 81)).reshape(3, -1).T
    ball = (np.linalg.norm(ijk - 40.0, axis=1) <= 15.0).reshape(81, 81, 81)
    face = template_face(ball, tpl_affine, everywhere)
    # a subject grid of 3 mm voxels, rotated 90 degrees about z and shifted
    subject_affine = np.array([[0.0, -3.0, 0.0, 45.0], [3.0, 0.0, 0.0, -45.0],
                               [0.0, 0.0, 3.0, -45.0], [0.0, 0.0, 0.0, 1.0]])
    shape = (31, 31, 31)
    region = np.ones(shape, dtype=bool)
    kept = within_template_face(region, face, subject_affine, margin_mm=6.0)
    points = np.indices(shape).reshape(3, -1).T @ subject_affine[:3, :3].T + subject_affine[:3, 3]
    radius = np.linalg.norm(points, axis=1).reshape(shape)
    outside_fov = (np.abs(points) > 40.0).any(axis=1).reshape(shape)
    assert kept[radius <= 15.0 + 6.0 - 1.5].all()
    assert not kept[(radius >= 15.0 + 6.0 + 1.5) & ~outside_fov].any()
    assert kept[outside_fov].all()  # beyond the template's FOV the rule alone decides
    assert not within_template_face(np.zeros(shape, dtype=bool), face, subject_affine).any()


def test_face_is_cached_beside_the_template(templates) -> None:
    template = templates["same"]
    first = template.face()
    path = template.head.parent / f"tpl-{template.name}_desc-face_distance.npz"
    assert path.is_file()
    again = template.face()
    assert np.array_equal(first.field, again.field) and np.allclose(first.affine, again.affine)
    assert np.nanmin(first.field) < 0 < np.nanmax(first.field)


def test_options_are_checked_and_recorded(subject, templates, tmp_path: Path) -> None:
    with pytest.raises(IsybError, match="face region"):
        DefaceOptions(face_region="box")
    with pytest.raises(IsybError, match="face_margin_mm"):
        DefaceOptions(face_region="template", face_margin_mm=-1.0)
    assert DefaceOptions().face_region == "rule"  # the default is unchanged
    phantom, volume = subject
    source = tmp_path / "in.nii.gz"
    volume.source.to_filename(str(source))
    options = DefaceOptions(method="remove", face_region="template", face_margin_mm=5.0)
    record = deface_file(source, tmp_path / "out.nii.gz", templates["same"], options,
                         qc_png=False, alignment=_identity(volume, phantom.brain_mask))
    assert record["options"]["face_region"] == "template"
    assert record["options"]["face_margin_mm"] == 5.0
    written = json.loads((tmp_path / "out_isyb.json").read_text())
    assert written["options"] == record["options"]


@pytest.mark.parametrize("command", ["deface", "study"])
def test_cli_options(command: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--face-region" in out and "--face-margin" in out
    args = ([command, str(tmp_path / "in.nii.gz"), str(tmp_path / "out.nii.gz")]
            if command == "deface" else [command, str(tmp_path), str(tmp_path / "out"),
                                          "--templates", "a,b"])
    code = main([*args, "--face-region", "template", "--face-margin", "-2"])
    assert_one_line_error(code, capsys.readouterr().err, "--face-margin")
    assert not (tmp_path / "out.nii.gz").exists() and not (tmp_path / "out").exists()

"""Coregistration, normalization and resampling of isyb.derive.normalize, on known transforms.

The phantom head (isyb.synthetic.phantom) and the template itself, moved by known
matrices (and a known smooth warp), are the ground truth. Orientation is
checked with a blob in the left hemisphere (x < 0 in RAS) and with images
stored with a flipped x axis. ANTs runs on one thread (the module sets it).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from isyb.derive.normalize import (
    Normalization,
    NormalizeError,
    coregister,
    normalization_template,
    normalize,
    to_space,
    to_template,
)
from isyb.errors import IsybError, RegistrationError
from isyb.head.register import dice, resample_to
from isyb.synthetic.phantom import make_phantom

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])


def rigid(angles_deg: tuple[float, float, float], shift: tuple[float, float, float],
          scale: float = 1.0) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() * scale
    out[:3, 3] = shift
    return out


def flipped_x(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with array axis 0 running Right -> Left."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
    return data[::-1].copy(), affine @ flip


def centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.array(ndimage.center_of_mass(mask)) + affine[:3, 3]


def ball(shape: tuple[int, ...], affine: np.ndarray, center: np.ndarray,
         radius: float) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(world - center, axis=1) <= radius).reshape(shape)


@pytest.fixture(scope="module")
def phantom():
    """A 3 mm phantom head with a bright blob in the left hemisphere."""
    p = make_phantom(voxel_size=3.0, noise_sd=2.0)
    blob = ball(p.shape, p.affine, np.array([-35.0, 0.0, 20.0]), 9.0)
    image = np.where(blob, 160.0, p.image).astype(np.float32)
    return p, image, blob


@pytest.fixture(scope="module")
def template():
    return normalization_template(4)


#: subject point = SUBJECT @ template point: an anisotropic scale and a shift.
SUBJECT = np.diag([1.12, 0.92, 1.08, 1.0])
SUBJECT[:3, 3] = [8.0, -10.0, 6.0]
SUBJECT_AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
SUBJECT_AFFINE[:3, 3] = [-115.0, -150.0, -95.0]
SUBJECT_SHAPE = (78, 92, 72)
BULGE_CENTER = np.array([25.0, -30.0, 15.0])


def subject_from_template(template, bulge_mm: float = 0.0) -> dict[str, np.ndarray]:
    """The template moved by SUBJECT onto a 3 mm grid, optionally inflated around a point.

    Returns the head (scaled to scanner-like values), brain mask, white matter
    probability and a left-hemisphere blob, all on the subject grid.
    """
    ijk = np.indices(SUBJECT_SHAPE).reshape(3, -1).T.astype(float)
    back = np.linalg.inv(SUBJECT)
    points = (ijk @ SUBJECT_AFFINE[:3, :3].T + SUBJECT_AFFINE[:3, 3]) @ back[:3, :3].T + back[:3, 3]
    offset = points - BULGE_CENTER
    weight = np.exp(-(offset ** 2).sum(axis=1) / (2 * 20.0 ** 2))
    points = points - bulge_mm * weight[:, None] * offset / 20.0
    inverse = np.linalg.inv(template.affine)
    source = (points @ inverse[:3, :3].T + inverse[:3, 3]).T

    def sample(array: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(array.astype(np.float32), source, order=1).reshape(
            SUBJECT_SHAPE)

    blob_center = np.array([-40.0, -10.0, 20.0])
    blob = ball(template.shape, template.affine, blob_center, 10.0)
    head = sample(template.head) * 700.0
    return {"head": np.where(sample(blob) > 0.5, 900.0, head), "brain": sample(template.brain_mask)
            > 0.5, "wm": sample(template.wm), "blob": sample(blob) > 0.5,
            "blob_center": blob_center}


@pytest.fixture(scope="module")
def subject(template):
    return subject_from_template(template)


@pytest.fixture(scope="module")
def affine_normalization(template, subject, tmp_path_factory):
    folder = tmp_path_factory.mktemp("work") / "sub-01_norm"
    return normalize(subject["head"], SUBJECT_AFFINE, subject["brain"], template, folder,
                     kind="Affine"), folder


def test_template_is_symmetric_icbm_2009a():
    t = normalization_template(2)
    assert t.shape == (99, 117, 95)
    assert t.brain_mask.dtype == bool and 1000 < t.brain_mask.sum() * 8 / 1000 < 2000  # ml
    for tissue in (t.gm, t.wm, t.csf):
        assert tissue.min() >= 0 and tissue.max() <= 1 and tissue[~t.brain_mask].max() < 0.5
    assert abs((t.affine @ [(t.shape[0] - 1) / 2, 0, 0, 1])[0]) < 1e-6  # grid centred on x = 0
    mirrored = resample_to(t.head, t.affine, t.shape, t.affine, MIRROR_X)
    r = np.corrcoef(t.head[t.brain_mask], mirrored[t.brain_mask])[0, 1]
    assert r > 0.95, r  # measured 1.0000 (the 2009c asymmetric template: 0.65)
    assert normalization_template(2) is t  # cached
    with pytest.raises(NormalizeError):
        normalization_template(0)


def check_recovered(found: np.ndarray, truth: np.ndarray, points: np.ndarray) -> None:
    """Within 1 degree of rotation and 1 mm of displacement over ``points``."""
    error = np.linalg.inv(truth) @ found
    polar = np.linalg.svd(error[:3, :3])
    angle = np.degrees(Rotation.from_matrix(polar[0] @ polar[2]).magnitude())
    shift = np.linalg.norm(points @ (error[:3, :3] - np.eye(3)).T + error[:3, 3], axis=1)
    assert angle < 1.0, angle
    assert shift.max() < 1.0, shift.max()


@pytest.mark.parametrize("kind, scale", [("Rigid", 1.0), ("Affine", 1.06)])
def test_coregister_recovers_a_known_transform(phantom, kind, scale):
    p, image, _ = phantom
    truth = rigid((6.0, -4.0, 5.0), (4.0, -3.0, 5.0), scale)  # fixed point -> moving point
    moving_affine = np.diag([3.5, 3.5, 3.5, 1.0])
    moving_affine[:3, 3] = [-112.0, -118.0, -150.0]
    shape = (64, 72, 80)
    moved = resample_to(image, p.affine, shape, moving_affine, np.linalg.inv(truth))
    moved = 100.0 * np.sqrt(moved / moved.max())  # another contrast, monotone
    found = coregister(moved, moving_affine, image, p.affine, kind=kind)
    check_recovered(found, truth, p.world(np.argwhere(p.brain_mask)))

    head = p.head_mask
    back = to_space(moved, moving_affine, p.shape, p.affine, np.linalg.inv(found)) > 20
    unaligned = to_space(moved, moving_affine, p.shape, p.affine, np.eye(4)) > 20
    assert dice(back, head) > 0.95 and dice(unaligned, head) < dice(back, head) - 0.03
    moved_head = resample_to(head.astype(np.float32), p.affine, shape, moving_affine,
                             np.linalg.inv(truth)) > 0.5
    there = to_space(head, p.affine, shape, moving_affine, found, order=0)
    assert set(np.unique(there)) <= {0.0, 1.0}
    assert dice(there > 0.5, moved_head) > 0.95


def test_coregister_keeps_left_on_the_left(phantom):
    p, image, blob = phantom
    truth = rigid((-5.0, 3.0, 8.0), (-6.0, 4.0, 3.0))
    moving_affine = np.diag([3.5, 3.5, 3.5, 1.0])
    moving_affine[:3, 3] = [-112.0, -118.0, -150.0]
    moved = resample_to(image, p.affine, (64, 72, 80), moving_affine, np.linalg.inv(truth))
    stored, stored_affine = flipped_x(moved, moving_affine)  # LAS voxel order
    found = coregister(stored, stored_affine, image, p.affine, fixed_mask=p.head_mask)
    check_recovered(found, truth, p.world(np.argwhere(p.brain_mask)))
    back = to_space(stored, stored_affine, p.shape, p.affine, np.linalg.inv(found))
    where = centroid(back > 140, p.affine)
    assert where[0] < -25 and np.linalg.norm(where - centroid(blob, p.affine)) < 2.0, where


def test_normalize_affine_and_reuse(template, subject, affine_normalization):
    norm, folder = affine_normalization
    assert norm.kind == "Affine" and not norm.reused and norm.seconds > 0
    assert [path.rsplit("/", 1)[0] for path in norm.forward] == [str(folder)]
    brain = to_template(subject["brain"].astype(np.float32), SUBJECT_AFFINE, norm, template) > 0.5
    unaligned = resample_to(subject["brain"].astype(np.float32), SUBJECT_AFFINE, template.shape,
                            template.affine) > 0.5
    assert dice(brain, template.brain_mask) > 0.9 > dice(unaligned, template.brain_mask) + 0.05
    assert norm.brain_dice > 0.9

    loaded = Normalization.load(folder)
    assert loaded is not None and loaded.forward == norm.forward and loaded.reused
    assert loaded.stamp == norm.stamp and loaded.seconds == norm.seconds
    mtimes = {path: (folder / path).stat().st_mtime_ns for path in ("affine.mat",
                                                                     "normalization.json")}
    again = normalize(subject["head"], SUBJECT_AFFINE, subject["brain"], template, folder,
                      kind="Affine")
    assert again.reused and again.forward == norm.forward
    assert {path: (folder / path).stat().st_mtime_ns for path in mtimes} == mtimes
    assert not [p for p in folder.iterdir() if ".part" in p.name]
    assert Normalization.load(folder.parent / "elsewhere") is None


def test_changed_input_is_registered_again(template, subject, tmp_path):
    first = normalize(subject["head"], SUBJECT_AFFINE, subject["brain"], template, tmp_path,
                      kind="Affine")
    second = normalize(subject["head"] * 1.5 + 10.0, SUBJECT_AFFINE, subject["brain"], template,
                       tmp_path, kind="Affine")
    assert not second.reused and second.stamp != first.stamp
    assert Normalization.load(tmp_path).stamp == second.stamp
    (tmp_path / "affine.mat").unlink()
    assert Normalization.load(tmp_path) is None


def test_normalize_left_stays_left(template, subject, affine_normalization):
    norm, _ = affine_normalization
    stored, stored_affine = flipped_x(subject["head"], SUBJECT_AFFINE)  # LAS voxel order
    blob = to_template(stored, stored_affine, norm, template) > 800
    where = centroid(blob, template.affine)
    assert where[0] < -25 and np.linalg.norm(where - subject["blob_center"]) < 4.0, where


def test_syn_improves_on_affine_for_a_warped_subject(template, tmp_path):
    warped = subject_from_template(template, bulge_mm=10.0)
    scores = {}
    for kind in ("Affine", "SyN"):
        norm = normalize(warped["head"], SUBJECT_AFFINE, warped["brain"], template,
                         tmp_path / kind, kind=kind)
        assert norm.kind == kind and len(norm.forward) == (2 if kind == "SyN" else 1)
        brain = to_template(warped["brain"], SUBJECT_AFFINE, norm, template,
                            interpolation="genericLabel")
        wm = to_template(warped["wm"], SUBJECT_AFFINE, norm, template) > 0.5
        head = to_template(warped["head"], SUBJECT_AFFINE, norm, template)
        inside = template.brain_mask
        scores[kind] = (dice(brain, inside), dice(wm, template.wm > 0.5),
                        np.corrcoef(head[inside], template.head[inside])[0, 1])
    # measured: Affine (0.997, 0.875, 0.871), SyN (0.995, 0.897, 0.902)
    assert scores["SyN"][0] > 0.9
    assert scores["SyN"][1] > scores["Affine"][1] + 0.01, scores
    assert scores["SyN"][2] > scores["Affine"][2] + 0.01, scores
    assert Normalization.load(tmp_path / "SyN").forward[0].endswith("warp.nii.gz")


def test_to_template_matches_ants_apply_transforms(template, subject, affine_normalization):
    import ants

    from isyb.head.ants import to_ants

    norm, _ = affine_normalization
    ours = to_template(subject["head"], SUBJECT_AFFINE, norm, template)
    theirs = ants.apply_transforms(to_ants(template.head, template.affine),
                                   to_ants(subject["head"], SUBJECT_AFFINE),
                                   list(norm.forward), whichtoinvert=[False]).numpy()
    inside = ndimage.binary_erosion(
        to_template(np.ones(SUBJECT_SHAPE, np.float32), SUBJECT_AFFINE, norm, template) > 0.999)
    assert inside.mean() > 0.5
    assert np.abs(ours - theirs)[inside].max() < 1e-3 * subject["head"].max()

    labels = (subject["brain"].astype(np.int16) + subject["blob"]).astype(np.int16)
    ours = to_template(labels, SUBJECT_AFFINE, norm, template, interpolation="genericLabel")
    theirs = ants.apply_transforms(to_ants(template.head, template.affine),
                                   to_ants(labels, SUBJECT_AFFINE), list(norm.forward),
                                   interpolator="genericLabel").numpy()
    assert ours.dtype == np.int16 and set(np.unique(ours)) == {0, 1, 2}
    assert np.mean(ours[inside] == np.rint(theirs[inside])) > 0.99

    nearest = to_template(labels, SUBJECT_AFFINE, norm, template,
                          interpolation="nearestNeighbor")
    assert set(np.unique(nearest)) == {0, 1, 2} and np.mean(nearest == ours) > 0.97

    series = np.stack([subject["head"], subject["wm"], 2.0 * subject["head"]], axis=-1)
    stacked = to_template(series, SUBJECT_AFFINE, norm, template)
    single = to_template(subject["wm"], SUBJECT_AFFINE, norm, template)
    assert stacked.shape == (*template.shape, 3)
    np.testing.assert_allclose(stacked[..., 1], single, atol=1e-5)
    np.testing.assert_allclose(stacked[..., 2], 2 * stacked[..., 0], rtol=1e-5, atol=1e-3)


def test_to_template_composes_pre_in_one_step(template, subject, affine_normalization):
    norm, _ = affine_normalization
    to_bold = rigid((4.0, -3.0, 6.0), (5.0, -4.0, 3.0))  # T1w point -> BOLD point
    bold_affine = np.diag([3.5, 3.5, 4.0, 1.0])
    bold_affine[:3, 3] = [-115.0, -140.0, -80.0]
    bold_shape = (66, 70, 48)
    bold = resample_to(subject["head"], SUBJECT_AFFINE, bold_shape, bold_affine,
                       np.linalg.inv(to_bold))
    direct = to_template(bold, bold_affine, norm, template, pre=to_bold)
    in_t1w = to_space(bold, bold_affine, SUBJECT_SHAPE, SUBJECT_AFFINE, np.linalg.inv(to_bold))
    two_steps = to_template(in_t1w, SUBJECT_AFFINE, norm, template)
    truth = to_template(subject["head"], SUBJECT_AFFINE, norm, template)
    inside = template.brain_mask

    def r(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a[inside], b[inside])[0, 1])

    wrong = to_template(bold, bold_affine, norm, template, pre=np.linalg.inv(to_bold))
    without = to_template(bold, bold_affine, norm, template)
    # measured: 0.996, 0.979 > 0.967 (one interpolation fewer); 0.32 and 0.51
    assert r(direct, two_steps) > 0.98
    assert r(direct, truth) > max(0.95, r(two_steps, truth))
    assert max(r(wrong, truth), r(without, truth)) < 0.8


def test_a_subjects_composed_points_serve_every_map(template, subject, affine_normalization,
                                                    monkeypatch):
    """``Anatomy.template_points`` composes the transforms once per subject and template;
    ``to_template`` with those points gives the bytes it gives when it composes them."""
    from isyb.derive import anatomy as anatomy_module
    from isyb.derive import normalize as normalize_module

    norm, _ = affine_normalization
    anatomy = anatomy_module.Anatomy(subject["head"], SUBJECT_AFFINE, subject["brain"],
                                     subject["wm"].astype(np.uint8), norm)
    calls = []
    compose = normalize_module.template_points
    monkeypatch.setattr(normalize_module, "template_points",
                        lambda *args: calls.append(args) or compose(*args))
    first = anatomy.template_points(template)
    assert anatomy.template_points(template) is first and len(calls) == 1
    assert not first.flags.writeable
    np.testing.assert_array_equal(first, compose(norm, template))
    for image in (subject["head"], subject["wm"]):
        np.testing.assert_array_equal(
            to_template(image, SUBJECT_AFFINE, norm, template, points=first),
            to_template(image, SUBJECT_AFFINE, norm, template))


def test_fails_closed_and_rejects_bad_input(template, subject, tmp_path):
    head, brain = subject["head"], subject["brain"]
    with pytest.raises(RegistrationError):
        normalize(head, SUBJECT_AFFINE, brain, template, tmp_path, kind="Affine",
                  fail_below=1.01)
    assert Normalization.load(tmp_path) is None
    bad = [
        lambda: normalize(head, SUBJECT_AFFINE, brain, template, tmp_path, kind="Elastic"),
        lambda: normalize(head, SUBJECT_AFFINE, brain[:-1], template, tmp_path),
        lambda: normalize(head, SUBJECT_AFFINE, np.zeros_like(brain), template, tmp_path),
        lambda: normalize(head[..., 0], SUBJECT_AFFINE, brain, template, tmp_path),
        lambda: coregister(head, SUBJECT_AFFINE, head, np.zeros((4, 4))),
        lambda: coregister(head, SUBJECT_AFFINE, head, SUBJECT_AFFINE, kind="SyN"),
        lambda: to_space(head, SUBJECT_AFFINE, (4, 4, 4), SUBJECT_AFFINE, np.eye(3)),
        lambda: to_space(head, SUBJECT_AFFINE, (4, 4, 4), SUBJECT_AFFINE, np.eye(4), order=3),
        lambda: to_template(head, SUBJECT_AFFINE, None, template, interpolation="cubic"),
        lambda: to_template(head[..., 0], SUBJECT_AFFINE, None, template),
    ]
    for call in bad:
        with pytest.raises(NormalizeError) as caught:
            call()
        assert isinstance(caught.value, IsybError) and "\n" not in str(caught.value)

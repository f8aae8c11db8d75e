"""The re-identification attack (isyb.evaluate.reid): its parts, and the attack on cohorts.

The cohort tests register every gallery scan and every re-scan to the default
template from scratch, as an attacker would. To stay within a few minutes on
two cores they take two shortcuts, both documented where they are used:
phantom brain masks are the phantoms' exact labels (carried through the
re-scan's known head motion), and defaced probes reuse the gallery scan's own
registration, which favours the attacker, so "near chance" is a conservative
finding. ``benchmarks/reid_experiment.py`` runs the attack without shortcuts.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from isyb.deface.engine import (
    Alignment,
    DefaceOptions,
    SubjectMasks,
    align,
    deface_volume,
    subject_masks,
)
from isyb.evaluate import reid, surface_match
from isyb.head.morphology import head_mask, skin_threshold
from isyb.head.register import resample_to
from isyb.io import Volume, load_volume, volume_from_image
from isyb.synthetic import rescan
from isyb.synthetic.phantom import Label, make_phantom, to_nifti
from real_alignments import real_alignment

N_PHANTOMS = 6
VOXEL_MM = 2.0
FULL_FACE = ("pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz", "mne-sample_T1w_3mm.mgz")


# ---------------------------------------------------------------------------
# Parts, on synthetic surfaces


def _face_surface(bumps: list[tuple[float, float, float, float]], size: int = 120) -> np.ndarray:
    """A face-like depth map (mm): a dome plus Gaussian bumps (row, col, height, width)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    centre = (size - 1) / 2
    depth = 100.0 - ((rows - centre) ** 2 + (cols - centre) ** 2) / 150.0
    for r, c, height, width in bumps:
        depth += height * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * width**2))
    inside = (rows - centre) ** 2 + (cols - centre) ** 2 < (0.48 * size) ** 2
    return np.where(inside, depth, np.nan).astype(np.float32)


def _moved(depth: np.ndarray, rotation_deg: tuple[float, float, float],
           shift: tuple[float, float, float]) -> np.ndarray:
    """The same surface seen after a rigid motion: its points moved, then re-gridded."""
    from scipy.interpolate import griddata

    points = surface_match.surface_points(depth)
    rot = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    centre = points.mean(axis=0)
    moved = (points - centre) @ rot.T + centre + np.asarray(shift)
    rows, cols = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
    out = griddata(moved[:, [2, 0]], moved[:, 1], (rows, cols), method="linear")
    return out.astype(np.float32)


NOSE = [(60, 60, 25, 7), (85, 60, 6, 10), (40, 42, -6, 6), (40, 78, -6, 6)]
OTHER = [(64, 58, 18, 9), (88, 60, 9, 12), (38, 40, -9, 7), (38, 80, -4, 5)]


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 3)) * 30
    rot = Rotation.from_euler("xyz", [4, -3, 7], degrees=True).as_matrix()
    target = 1.04 * points @ rot.T + np.array([2.0, -5.0, 1.0])
    s, rotation, shift = surface_match.similarity_fit(points, target)
    assert s == pytest.approx(1.04, abs=1e-9)
    np.testing.assert_allclose(rotation, rot, atol=1e-9)
    np.testing.assert_allclose(shift, [2.0, -5.0, 1.0], atol=1e-9)
    assert surface_match.similarity_fit(points, target, scale=False)[0] == 1.0


def test_surface_distance_ignores_pose_but_sees_the_face() -> None:
    face = _face_surface(NOSE)
    assert surface_match.descriptor_distance(face, face) == pytest.approx(0.0, abs=1e-6)
    posed = _moved(face, (3.0, -4.0, 3.0), (3.0, 6.0, -2.0))
    other = _face_surface(OTHER)
    same = surface_match.descriptor_distance(posed, face)
    different = surface_match.descriptor_distance(other, face)
    assert same < 0.05  # mm: re-gridding error only
    assert different > 10 * same
    # a change of the coarse shape only: the surface distance sees it, the detail
    # distance (5 mm high-pass) hardly does, but still sees other features
    flatter = face + 0.002 * (np.arange(120)[None, :] - 60.0) ** 2
    assert surface_match.descriptor_distance(flatter, face) > 0.5
    detail_flatter = surface_match.descriptor_distance(flatter, face, highpass_mm=5.0)
    assert detail_flatter < 0.5 * surface_match.descriptor_distance(other, face, highpass_mm=5.0)


def test_one_alignment_gives_the_surface_and_the_detail_distance() -> None:
    """``descriptor_distances`` and ``distance_matrices`` fit once and give, to the bit,
    what one ``descriptor_distance`` call per high-pass setting gives."""
    faces = [_face_surface(NOSE), _face_surface(OTHER), _moved(_face_surface(NOSE),
                                                               (2.0, -3.0, 1.0), (1.0, 2.0, 0.0))]
    settings = (None, 5.0, 8.0)
    assert surface_match.descriptor_distances(faces[2], faces[0], highpass=settings) == tuple(
        surface_match.descriptor_distance(faces[2], faces[0], highpass_mm=h) for h in settings)
    matrices = reid.distance_matrices(faces[:2], faces[1:])
    assert set(matrices) == {None, reid.DETAIL_HIGHPASS_MM}
    for highpass_mm, matrix in matrices.items():
        np.testing.assert_array_equal(
            matrix, reid.distance_matrix(faces[:2], faces[1:], highpass_mm=highpass_mm))
    empty = np.full_like(faces[0], np.nan)
    assert surface_match.descriptor_distances(empty, faces[0], highpass=settings) == (
        float("inf"),) * 3


def test_the_gallery_tree_finds_what_scipys_default_tree_finds() -> None:
    """``point_tree``'s settings change the speed, not the fit: a posed face (near the
    gallery's surface) and a face with a removed middle moved 12 mm off it (most points far
    from it) fit to the same bytes as on ``cKDTree``'s default tree."""
    from scipy.spatial import cKDTree

    face = _face_surface(NOSE)
    removed = _face_surface(OTHER)
    removed[30:90, 30:90] = np.nan
    gallery = surface_match.surface_points(face)
    normals = surface_match.surface_normals(face)
    for probe in (_moved(face, (3.0, -4.0, 3.0), (3.0, 6.0, -2.0)), removed + 12.0):
        points = surface_match.surface_points(probe, stride=surface_match.PROBE_STRIDE)
        tuned = surface_match.align_surfaces(points, gallery, normals)
        default = surface_match.align_surfaces(points, gallery, normals, tree=cKDTree(gallery))
        for field in ("scale", "rotation", "shift", "residuals", "gaps"):
            np.testing.assert_array_equal(getattr(tuned, field), getattr(default, field), field)


def test_distance_needs_overlap_and_one_frame() -> None:
    face = _face_surface(NOSE)
    empty = np.full_like(face, np.nan)
    assert surface_match.descriptor_distance(empty, face) == float("inf")
    with pytest.raises(ValueError, match="different frames"):
        surface_match.descriptor_distance(face[:100], face)


def test_identification_counts_ties_as_random() -> None:
    diagonal = np.full((4, 4), 5.0) - 4 * np.eye(4)
    result = reid.identification([np.zeros(1)] * 4, [np.zeros(1)] * 4, distances=diagonal)
    assert result["rank1"] == 1.0 and result["chance"] == 0.25 and result["n"] == 4
    np.testing.assert_array_equal(result["ranks"], 1.0)
    assert result["p_value"] == pytest.approx(0.25**4)
    tied = reid.identification([np.zeros(1)] * 4, [np.zeros(1)] * 4, distances=np.ones((4, 4)))
    assert tied["rank1"] == pytest.approx(0.25)  # a four-way tie is a 1-in-4 draw
    np.testing.assert_array_equal(tied["ranks"], 2.5)
    hub = np.tile([1.0, 2.0, 3.0, 4.0], (4, 1))  # everyone nearest to entry 0
    assert reid.identification([0] * 4, [0] * 4, distances=hub)["rank1"] == 0.25
    with pytest.raises(ValueError):
        reid.identification([0] * 4, [0] * 3, distances=np.ones((4, 4)))


# ---------------------------------------------------------------------------
# Re-scans and face variation, on one phantom


@pytest.fixture(scope="module")
def phantom_volume() -> tuple[Volume, object]:
    phantom = make_phantom(voxel_size=VOXEL_MM, fov_mm=rescan.PHANTOM_FOV_MM,
                           fov_center_mm=rescan.PHANTOM_FOV_CENTRE_MM, seed=7)
    return volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32)), phantom


def test_rescan_moves_regrids_and_renoises(phantom_volume) -> None:
    volume, _ = phantom_volume
    rng = np.random.default_rng(3)
    again, motion = rescan.simulate_rescan(volume, rng)
    angle = np.degrees(Rotation.from_matrix(motion[:3, :3]).magnitude())
    assert 0 < angle <= 5.0 * np.sqrt(3)
    ratio = again.zooms / volume.zooms
    assert np.all((ratio >= 0.9) & (ratio <= 1.1)) and not np.allclose(ratio, 1.0)
    # the same head, moved: intensities agree once the motion is undone, up to noise
    back = resample_to(again.data, again.affine, volume.shape, volume.affine, motion)
    head = volume.data > skin_threshold(volume.data)
    inner = head & (back > 0)
    residual = back[inner] - volume.data[inner]
    level = rescan.tissue_level(volume.data)
    assert abs(float(np.median(residual))) < 0.05 * level
    air = again.data[:8, :8, -8:]  # a corner of the FOV: Rician noise of ~4 % of the tissue level
    assert 0.02 * level < float(air.mean()) < 0.12 * level


def test_vary_face_moves_only_the_face_and_keeps_it_whole(phantom_volume,
                                                          default_template) -> None:
    volume, phantom = phantom_volume
    intracranial = phantom.mask(Label.GM, Label.WM, Label.CSF)
    alignment = align(volume, default_template, brain=intracranial)
    weight = rescan.face_weight(volume, alignment.registration.subject_to_template,
                              default_template.rule, brain=intracranial)
    assert weight.max() == pytest.approx(1.0) and weight.min() == 0.0
    varied = rescan.vary_face(volume, weight, np.random.default_rng(5))
    changed = np.abs(varied.data - volume.data) > 1e-3
    assert not changed[weight == 0].any()
    assert not changed[intracranial].any()
    nose = phantom.labels == Label.NOSE
    assert changed[nose].mean() > 0.2
    # a smooth warp: the face stays attached to the head (no tear, no fold)
    head = head_mask(varied.data, skin_threshold(varied.data))
    assert head[nose & (varied.data > skin_threshold(varied.data))].mean() > 0.99
    again = rescan.vary_face(volume, weight, np.random.default_rng(5))
    np.testing.assert_array_equal(again.data, varied.data)


# ---------------------------------------------------------------------------
# The attack on a phantom cohort: six heads of different shape and face


class Cohort:
    """Gallery and probe descriptors of a cohort, all in one face frame."""

    def __init__(self, frame: reid.FaceFrame) -> None:
        self.frame = frame
        self.names: list[str] = []
        self.volumes: list[Volume] = []
        self.alignments: list[Alignment] = []
        self.subjects: dict[int, SubjectMasks] = {}
        self.descriptors: dict[str, list[np.ndarray]] = {}

    def add(self, kind: str, descriptor: np.ndarray) -> None:
        self.descriptors.setdefault(kind, []).append(descriptor)


def _probe_defaced(cohort: Cohort, template, method: str, index: int) -> np.ndarray:
    volume, alignment = cohort.volumes[index], cohort.alignments[index]
    if index not in cohort.subjects:  # shared by the methods, as in isyb study
        cohort.subjects[index] = subject_masks(volume, alignment.brain, DefaceOptions().guard_mm)
    result = deface_volume(volume, template, DefaceOptions(method=method), alignment=alignment,
                           subject=cohort.subjects[index])
    defaced = volume_from_image(nib.Nifti1Image(result.data.astype(np.float32), volume.affine))
    # the gallery scan's own registration: the best alignment an attacker could hope for
    return reid.face_descriptor(defaced, alignment.registration.subject_to_template, cohort.frame)


def _add_subject(cohort: Cohort, template, name: str, volume: Volume, brain: np.ndarray | None,
                 rng: np.random.Generator, alignment: Alignment | None = None) -> None:
    """Gallery and re-scan descriptors of one head; ``alignment`` if already computed."""
    alignment = alignment or align(volume, template, brain=brain)
    cohort.names.append(name)
    cohort.volumes.append(volume)
    cohort.alignments.append(alignment)
    cohort.add("gallery", reid.face_descriptor(
        volume, alignment.registration.subject_to_template, cohort.frame))
    again, motion = rescan.simulate_rescan(volume, rng)
    # the re-scan's own brain mask: the gallery's, carried by the known head motion
    # (what a perfect brain extractor would find); its registration is its own
    carried = resample_to(alignment.brain.astype(np.float32), volume.affine, again.shape,
                          again.affine, np.linalg.inv(motion)) > 0.5
    moved = align(again, template, brain=carried)
    cohort.add("rescan", reid.face_descriptor(
        again, moved.registration.subject_to_template, cohort.frame))


@pytest.fixture(scope="module")
def phantom_cohort(default_template) -> Cohort:
    cohort = Cohort(reid.frame_for(default_template))
    reference_to_template = rescan.reference_to_template(default_template, voxel_size=VOXEL_MM)
    rng = np.random.default_rng(2024)
    for k in range(N_PHANTOMS):
        volume, brain = rescan.varied_phantom(k, reference_to_template, default_template.rule,
                                            voxel_size=VOXEL_MM)
        _add_subject(cohort, default_template, f"phantom{k}", volume, brain, rng)
    for method in ("remove", "blur", "noise"):
        for index in range(N_PHANTOMS):
            cohort.add(method, _probe_defaced(cohort, default_template, method, index))
    return cohort


@pytest.fixture(scope="module")
def rescans_identified(phantom_cohort: Cohort) -> dict:
    """The re-scans against the gallery, computed once for the tests that read it."""
    return reid.identification(phantom_cohort.descriptors["gallery"],
                               phantom_cohort.descriptors["rescan"])


@pytest.mark.slow
def test_same_head_in_two_poses_is_closer_than_another_head(rescans_identified: dict) -> None:
    distances = rescans_identified["distances"]  # [re-scan i, gallery j], mm
    own = np.diag(distances)
    others = distances[~np.eye(N_PHANTOMS, dtype=bool)]
    assert own[0] < distances[0, 1:].min()
    assert np.median(own) < 0.6 * np.median(others)


@pytest.mark.slow
def test_distance_matrix_is_the_pairwise_descriptor_distance(phantom_cohort: Cohort,
                                                             rescans_identified: dict) -> None:
    """What the shared matrix holds: probe i against gallery entry j (spot checks)."""
    gallery, rescans = phantom_cohort.descriptors["gallery"], phantom_cohort.descriptors["rescan"]
    for i, j in ((0, 0), (0, 1), (2, 5)):
        assert rescans_identified["distances"][i, j] == pytest.approx(
            surface_match.descriptor_distance(rescans[i], gallery[j]), rel=1e-9, abs=1e-9)


@pytest.mark.slow
def test_rescans_are_identified_far_above_chance(rescans_identified: dict) -> None:
    result = rescans_identified
    assert result["n"] == N_PHANTOMS and result["chance"] == pytest.approx(1 / N_PHANTOMS)
    assert result["distances"].shape == (N_PHANTOMS, N_PHANTOMS)
    # 5 of 6 or better; by chance that has p = 26 / 6**6 < 0.001
    assert result["rank1"] >= 5 / 6
    assert result["p_value"] < 0.001


@pytest.mark.slow
def test_removed_faces_are_identified_near_chance(phantom_cohort: Cohort) -> None:
    result = reid.identification(phantom_cohort.descriptors["gallery"],
                                 phantom_cohort.descriptors["remove"])
    # at most 2 of 6 (chance: 1 of 6): with the gallery's own registration, which
    # favours the attacker
    assert result["rank1"] <= 2 / N_PHANTOMS


@pytest.mark.slow
@pytest.mark.parametrize("method", ["blur", "noise"])
def test_blurred_and_noised_faces_are_identified_near_chance(phantom_cohort: Cohort,
                                                            method: str) -> None:
    """What blur and noise do to the attack (numbers in benchmarks/README.md).

    Both give the face the registered template's smoothed outline, so neither
    the surface attack nor the detail attack (5 mm high-pass) finds more than
    ``remove`` may: at most 2 of 6 (chance: 1 of 6), with the gallery's own
    registration, which favours the attacker. With the subject's own outline
    smoothed (the method before) the surface attack found 5 of 12.
    """
    gallery = phantom_cohort.descriptors["gallery"]
    probes = phantom_cohort.descriptors[method]
    matrices = reid.distance_matrices(gallery, probes, highpass=(None, 5.0))  # one ICP per pair
    for highpass_mm in (None, 5.0):
        found = reid.identification(gallery, probes, distances=matrices[highpass_mm])
        assert found["rank1"] <= 2 / N_PHANTOMS, highpass_mm


# ---------------------------------------------------------------------------
# Real heads, in a gallery with the phantoms


@pytest.mark.slow
@pytest.mark.realdata
def test_real_heads_rescanned_are_found_and_removed_faces_are_not(
        data_root, default_template, phantom_cohort: Cohort, shared_dir) -> None:
    paths = [data_root / "heads" / name for name in FULL_FACE]
    if not all(path.is_file() for path in paths):
        pytest.skip("the full-face real heads are not in the test data")
    real = Cohort(phantom_cohort.frame)
    rng = np.random.default_rng(7)
    for path in paths:
        # deepbet for the original's brain mask, then the attacker's registration (the same
        # alignment as test_deface_real's, computed once per run)
        _add_subject(real, default_template, path.name, load_volume(path), None, rng,
                     real_alignment(shared_dir, path, default_template))
    for index in range(len(paths)):
        real.add("remove", _probe_defaced(real, default_template, "remove", index))
    gallery = phantom_cohort.descriptors["gallery"] + real.descriptors["gallery"]
    truth = [N_PHANTOMS + i for i in range(len(paths))]
    rescans = reid.identification(gallery, real.descriptors["rescan"], truth=truth)
    assert rescans["rank1"] == 1.0
    removed = reid.identification(gallery, real.descriptors["remove"], truth=truth)
    assert removed["hits"] <= 1.0  # chance: 3 probes x 1/9

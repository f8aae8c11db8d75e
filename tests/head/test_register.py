"""Template-to-subject registration: known-transform recovery, retries, fail closed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from isyb.errors import RegistrationError
from isyb.head.register import (
    STARTS,
    SubjectGrid,
    TemplateGrid,
    register_template,
    resample_to,
)
from isyb.synthetic.phantom import make_phantom

# Registration itself is under test: nothing comes from the run's work cache.
pytestmark = pytest.mark.usefixtures("without_work_cache")

# Linear part of the ISYB team's CAPIIO -> CN200 matrix (zuoxinian/CCS): a
# Chinese head is wider, shorter front to back and lower than the Western atlas.
CN200_SHAPE = np.array([[1.045734549, -0.008453204487, -0.01772608509],
                        [-0.005123259195, 0.9702216508, 0.007175299745],
                        [0.003709698792, -0.04190349062, 0.9210394349]])


@pytest.fixture(scope="module")
def template():
    return make_phantom(voxel_size=2.0, seed=0)


def _grid(template) -> TemplateGrid:
    return TemplateGrid.from_arrays(template.image, template.affine, template.brain_mask)


def _subject(template, matrix: np.ndarray, shift: np.ndarray):
    """The template head seen through ``subject_world -> template_world = matrix @ p + shift``."""
    truth = np.eye(4)
    truth[:3, :3] = matrix
    truth[:3, 3] = shift
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    shape = (140, 160, 180)
    affine[:3, 3] = -np.array(shape) * 1.5 / 2 + [0, 10, -10]
    image = resample_to(template.image, template.affine, shape, affine, truth)
    brain = resample_to(template.brain_mask.astype(np.float32), template.affine, shape,
                        affine, truth) > 0.5
    return image, affine, brain, truth


def _landmark_error(template, found: np.ndarray, truth: np.ndarray) -> float:
    """Largest error (mm) at the phantom's face landmarks, mapped into subject space."""
    errors = []
    for name in ("nose_tip", "nasion", "menton", "eye_left", "eye_right", "vertex"):
        point = np.append(template.landmarks[name], 1.0)
        in_subject = np.linalg.solve(truth, point)
        errors.append(np.linalg.norm(found @ in_subject - point))
    return float(max(errors))


@pytest.mark.parametrize("case", ["cn200-shape", "rotated-shifted"])
def test_recovers_a_known_affine(template, case: str) -> None:
    if case == "cn200-shape":
        matrix, shift = np.linalg.inv(CN200_SHAPE), np.array([0.94, 7.1, 11.1])
    else:
        matrix = Rotation.from_euler("xyz", [12, -6, 8], degrees=True).as_matrix() * 1.05
        shift = np.array([25.0, -40.0, 60.0])
    image, affine, brain, truth = _subject(template, matrix, shift)
    result = register_template(image, affine, brain, _grid(template))
    assert result.score > 0.9
    assert _landmark_error(template, result.subject_to_template, truth) < 3.0


def test_a_shared_subject_grid_gives_the_same_registration(template) -> None:
    """``isyb study`` builds the subject's working grid once for all its templates: the
    registration is then bit for bit the one that builds it itself; a grid of another
    spacing is not used."""
    image, affine, brain, _ = _subject(template, np.linalg.inv(CN200_SHAPE), np.zeros(3))
    grid = _grid(template)
    alone = register_template(image, affine, brain, grid)
    shared = SubjectGrid.from_arrays(image, affine, brain, grid.spacing_mm)
    assert shared.brain.dtype == bool and shared.spacing_mm == grid.spacing_mm
    given = register_template(image, affine, brain, grid, subject_grid=shared)
    assert np.array_equal(given.subject_to_template, alone.subject_to_template)
    assert (given.score, given.start, given.attempts) == (alone.score, alone.start,
                                                          alone.attempts)
    other = SubjectGrid.from_arrays(image, affine, ~brain, grid.spacing_mm + 1.0)
    ignored = register_template(image, affine, brain, grid, subject_grid=other)
    assert np.array_equal(ignored.subject_to_template, alone.subject_to_template)


def test_poor_scores_try_every_start_and_keep_the_best(template,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    starts = STARTS[:3]
    monkeypatch.setattr("isyb.head.register.STARTS", starts)
    image, affine, brain, _ = _subject(template, np.eye(3), np.zeros(3))
    result = register_template(image, affine, brain, _grid(template), accept=1.01)
    assert [a["start"] for a in result.attempts] == [s[0] for s in starts]
    assert round(result.score, 4) == max(a["brain_dice"] for a in result.attempts)


def test_fails_closed_when_nothing_fits(template, monkeypatch: pytest.MonkeyPatch) -> None:
    """No start reaches ``fail_below``: an error, not the best of bad fits. Two starts
    (the test above checks that every start is tried), each as costly as a real one."""
    monkeypatch.setattr("isyb.head.register.STARTS", STARTS[:2])
    image, affine, brain, _ = _subject(template, np.eye(3), np.zeros(3))
    wrong = np.zeros_like(brain)
    wrong[:30, :30, :30] = True  # a "brain" in a corner of the FOV
    with pytest.raises(RegistrationError, match="registration failed"):
        register_template(image, affine, wrong, _grid(template))


def test_cn200_matrix_in_the_test_data_is_the_one_used_here(data_root: Path) -> None:
    matrix = np.loadtxt(data_root / "transforms" / "CAPIIO_to_CN200.mat")
    assert np.allclose(matrix[:3, :3], CN200_SHAPE)


def test_prepared_template_keeps_its_working_grid_on_disk(default_template) -> None:
    head, brain = default_template.load()
    expected = TemplateGrid.from_arrays(head.data, head.affine, brain)
    path = default_template.head.parent / f"tpl-{default_template.name}_res-4mm_grid.npz"
    path.unlink(missing_ok=True)
    first = default_template.working_grid()
    assert path.is_file()
    second = default_template.working_grid()
    for grid in (first, second):
        np.testing.assert_array_equal(grid.head, expected.head)
        np.testing.assert_array_equal(grid.brain, expected.brain)
        np.testing.assert_array_equal(grid.affine, expected.affine)
    path.write_bytes(b"not an npz")  # a damaged cache entry is recomputed, not trusted
    np.testing.assert_array_equal(default_template.working_grid().head, expected.head)
    with np.load(path) as stored:
        assert str(stored["stamp"]).startswith(default_template.info["head_sha256"])

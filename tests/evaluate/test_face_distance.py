"""Whose face is a defaced face (isyb.evaluate.face_distance), with phantom ground truth.

The "template" is a phantom and the subject the same phantom with its own face
(:func:`isyb.synthetic.rescan.vary_face`), so the subject->template map is the
identity and no registration runs. A defacing that puts the template's face in
the face region must come out closer to the template; one that keeps the
subject's face, closer to the original.
"""

from __future__ import annotations

import numpy as np
import pytest

from face_heads import refaced_phantom
from isyb.evaluate import face_distance
from isyb.evaluate.reid import face_descriptor, frame_samples
from isyb.head.morphology import skin_threshold
from isyb.synthetic.phantom import make_phantom, to_nifti


@pytest.fixture(scope="module")
def heads() -> dict:
    return refaced_phantom()


def test_a_face_replaced_by_the_templates_is_closer_to_the_template(heads) -> None:
    result = face_distance.face_distances(heads["subject"], heads["refaced"], heads["mask"],
                                          np.eye(4), heads["frame"])
    assert result.pixels >= face_distance.MIN_PIXELS
    assert result.to_template < 0.2  # the template's own voxels: the same surface
    assert result.original_to_template > 1.0  # vary_face moved the face by mm
    assert result.to_original == pytest.approx(result.original_to_template, rel=0.05)
    assert result.closer_to == "template"
    assert result.to_json()["closer_to"] == "template"


def test_a_callers_threshold_samples_and_descriptor_give_the_same_distances(heads) -> None:
    """``isyb study`` hands in what it has computed already (the original's skin threshold,
    its descriptor, the defaced head's frame samples): the same distances, to the bit; the
    threshold is the one used (another one moves the surfaces)."""
    args = (heads["subject"], heads["refaced"], heads["mask"], np.eye(4), heads["frame"])
    alone = face_distance.face_distances(*args)
    threshold = skin_threshold(heads["subject"].data)
    given = face_distance.face_distances(
        *args, threshold=threshold,
        original_descriptor=face_descriptor(heads["subject"], np.eye(4), heads["frame"],
                                            threshold=threshold),
        defaced_samples=frame_samples(heads["refaced"], np.eye(4), heads["frame"]))
    assert given == alone
    other = face_distance.face_distances(*args, threshold=threshold * 3)
    assert other.original_to_template != alone.original_to_template


def test_a_kept_face_is_the_subjects(heads) -> None:
    result = face_distance.face_distances(heads["subject"], heads["subject"], heads["mask"],
                                          np.eye(4), heads["frame"])
    assert result.to_original == 0.0
    assert result.to_template > 1.0
    assert result.closer_to == "original"


def test_depth_distances_are_mean_absolute_differences_over_the_region() -> None:
    original = np.zeros((20, 20))
    template = np.full((20, 20), 3.0)
    defaced = np.full((20, 20), 1.0)
    defaced[0, 0] = np.nan  # no skin: left out
    region = np.ones((20, 20), dtype=bool)
    result = face_distance.depth_distances(original, defaced, template, region)
    assert (result.to_original, result.to_template, result.original_to_template) == (1.0, 2.0, 3.0)
    assert result.closer_to == "original"
    small = face_distance.depth_distances(original, defaced, template, np.eye(20, dtype=bool))
    assert small.to_original is None and small.closer_to is None


def test_all_three_distances_use_the_same_pixels() -> None:
    original = np.zeros((20, 20))
    defaced = np.full((20, 20), 1.0)
    template = np.full((20, 20), 3.0)
    defaced[:10] = 9.0  # far from both, where the template has no skin
    template[:10] = np.nan
    result = face_distance.depth_distances(original, defaced, template,
                                           np.ones((20, 20), dtype=bool))
    assert (result.to_original, result.to_template, result.pixels) == (1.0, 2.0, 200)


def test_decisive_pixels_say_whose_face_where_the_faces_differ() -> None:
    # the faces differ by 2 mm on 640 pixels (under the 3 mm voxel), where the defaced
    # surface is the subject's or halfway; on the 160 where they differ by 6 mm it is
    # 1 mm from the template's: over the whole region the two means tie
    original = np.zeros((40, 20))
    template = np.full((40, 20), 2.0)
    template[:8] = 6.0
    defaced = np.zeros((40, 20))
    defaced[8:, ::2] = 1.0
    defaced[:8] = 5.0
    region = np.ones((40, 20), dtype=bool)
    result = face_distance.depth_distances(original, defaced, template, region, decisive_mm=3.0)
    assert result.to_original == pytest.approx(1.4) and result.to_template == pytest.approx(1.4)
    assert result.decisive_pixels == 160
    assert (result.decisive_to_original, result.decisive_to_template) == (5.0, 1.0)
    assert result.decisive_closer_to == "template"
    assert result.to_json()["decisive_closer_to"] == "template"
    same = face_distance.depth_distances(original, defaced, original, region)
    assert same.decisive_pixels == 0 and same.decisive_closer_to is None


@pytest.mark.slow
def test_evaluate_cli_reports_the_face_distances_with_a_template(default_template, tmp_path,
                                                                 capsys) -> None:
    import json

    from isyb.cli import main
    from isyb.deface.engine import DefaceOptions
    from isyb.deface.file import deface_file

    source = tmp_path / "phantom.nii.gz"
    to_nifti(make_phantom(voxel_size=2.0, seed=4), "LIA").to_filename(str(source))
    out, mask = tmp_path / "defaced.nii.gz", tmp_path / "mask.nii.gz"
    deface_file(source, out, default_template, DefaceOptions(method="blur"), save_mask=mask,
                qc_png=False)
    capsys.readouterr()
    assert main(["evaluate", str(source), str(out), "--mask", str(mask), "--detect", "haar",
                 "--template", "default"]) == 0
    record = json.loads(capsys.readouterr().out)
    distance = record["face_distance"]
    assert record["face_distance_template"] == "default" and "ensemble_defaced" not in record
    assert distance["pixels"] >= face_distance.MIN_PIXELS
    assert distance["to_original"] > 0 and distance["to_template"] > 0
    assert distance["closer_to"] in ("original", "template")

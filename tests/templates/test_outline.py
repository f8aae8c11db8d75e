"""The template outline cache (:mod:`isyb.templates.outline`), on a small synthetic template."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
from scipy import ndimage

from isyb.head.morphology import head_mask, skin_threshold
from isyb.templates import outline as outline_module
from isyb.templates.face import FaceRule, face_region
from isyb.templates.fetch import digest_sidecar, sha256_file
from isyb.templates.outline import skin_level, template_outline


def _template(folder, digest: str) -> SimpleNamespace:
    grid = np.indices((40, 40, 40))
    data = np.where(((grid - 20) ** 2).sum(axis=0) <= 12**2, 100.0, 0.0).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -40.0
    path = folder / "tpl-toy_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return SimpleNamespace(name="toy", head=path, info={"head_sha256": digest}), data, affine


def test_outline_is_built_once_and_kept_beside_the_template(tmp_path) -> None:
    template, data, affine = _template(tmp_path, "aaa")
    outline_module._cached.cache_clear()
    built = outline_module.outline_for(template, 8.0)
    expected = template_outline(head_mask(data, skin_threshold(data)), affine, 8.0)
    assert np.allclose(built.field, expected.field) and np.allclose(built.affine, expected.affine)
    stored = tmp_path / "tpl-toy_desc-outline_smooth-8mm.npz"
    assert stored.is_file()
    assert digest_sidecar(stored).read_text().split()[0] == sha256_file(stored)
    # a tampered file, even with the right stamp, lacks the recorded SHA-256: rebuilt (issue 17)
    with np.load(stored) as saved:
        fields = dict(saved)
    np.savez(stored, **{**fields, "field": fields["field"] * 0.5})
    outline_module._cached.cache_clear()
    assert np.allclose(outline_module.outline_for(template, 8.0).field, expected.field)
    assert digest_sidecar(stored).read_text().split()[0] == sha256_file(stored)
    # a new process reads the file: a stored field with its stamp and digest is used as is
    np.savez(stored, **{**fields, "field": fields["field"] * 0.5})
    digest_sidecar(stored).write_text(f"{sha256_file(stored)}  {stored.name}\n")
    outline_module._cached.cache_clear()
    assert np.allclose(outline_module.outline_for(template, 8.0).field, 0.5 * expected.field)
    # another head (new digest) makes it stale: rebuilt
    template.info["head_sha256"] = "bbb"
    outline_module._cached.cache_clear()
    assert np.allclose(outline_module.outline_for(template, 8.0).field, expected.field)


def _front_surface(outline, x: float, z: float) -> float:
    """Most anterior y (mm) where ``outline``'s field crosses 0.5 on the ray at (x, z)."""
    ys = np.arange(120.0, -1.0, -0.1)
    points = np.stack([np.full_like(ys, x), ys, np.full_like(ys, z), np.ones_like(ys)])
    index = (np.linalg.inv(outline.affine) @ points)[:3]
    values = ndimage.map_coordinates(outline.field, index, order=1, cval=0.0)
    return float(ys[np.argmax(values > 0.5)])


def test_outline_level_lies_on_the_face_skin_not_behind_it(tmp_path) -> None:
    """Issue 15 item 5: cut at 0.5, a 16 mm-smoothed ball of radius 50 mm recedes by about
    sigma² / R (5 mm) at its front, so a face given that outline is some millimetres from
    every face. Levelled on the skin of the face region, it lies on the ball's front,
    and a nose still flattens out."""
    grid = np.indices((64, 64, 64)).astype(float) * 2.0 - 64.0  # 2 mm, centred on 0
    head = (grid**2).sum(axis=0) <= 50.0**2
    nose = (np.abs(grid[0]) <= 4) & (np.abs(grid[2]) <= 4) & (grid[1] > 0) & (grid[1] <= 62)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -64.0
    face = grid[1] > 20.0  # the front of the ball
    plain = template_outline(head | nose, affine, 16.0)
    levelled = template_outline(head | nose, affine, 16.0, face=face)
    # off the nose, on the front of the ball (skin at y = 50 * cos(asin(20 / 50)) = 45.8 mm)
    skin = float(np.sqrt(50.0**2 - 20.0**2))
    assert skin - _front_surface(plain, 20.0, 0.0) > 3.0
    assert abs(_front_surface(levelled, 20.0, 0.0) - skin) < 1.5
    assert abs(_front_surface(levelled, 0.0, 20.0) - skin) < 1.5
    # the nose (tip at 62 mm) is still gone: at most a low bump over the ball's front
    assert _front_surface(levelled, 0.0, 0.0) < 50.0 + 3.0
    assert skin_level(plain.field, plain.field > 2.0, np.eye(3)) == 0.5  # no surface: 0.5


def test_outline_for_levels_on_the_rule_face_region(tmp_path) -> None:
    template, data, affine = _template(tmp_path, "ccc")
    template.rule = FaceRule(face_normal=(0.0, 1.0, 0.0), face_offset=5.0, back_y=-100.0,
                             chin_z=-100.0, ear_inner_x=(-1.0, 1.0), ear_y=(-1.0, 1.0),
                             ear_z=(-1.0, 1.0))
    outline_module._cached.cache_clear()
    built = outline_module.outline_for(template, 8.0)
    head = head_mask(data, skin_threshold(data))
    expected = template_outline(head, affine, 8.0,
                                face=face_region(template.rule, data.shape, affine))
    assert np.allclose(built.field, expected.field)
    assert not np.allclose(built.field, template_outline(head, affine, 8.0).field)

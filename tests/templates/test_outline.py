"""The template outline cache (:mod:`isyb.templates.outline`), on a small synthetic template."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np

from isyb.head.morphology import head_mask, skin_threshold
from isyb.templates import outline as outline_module
from isyb.templates.fetch import digest_sidecar, sha256_file
from isyb.templates.outline import template_outline


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

"""Image I/O: RAS view, exact write-back, atomic writes, one-line errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.errors import IsybError
from isyb.io import (
    atomic_path,
    edit_stored,
    load_volume,
    mask_image,
    save_like,
    save_mask_like,
    stored_data,
    stored_image,
    volume_from_image,
    write_stored,
)


def _image(orientation: str, dtype: type = np.int16, *, slope: float = 1.0,
           inter: float = 0.0) -> nib.Nifti1Image:
    rng = np.random.default_rng(0)
    ras = rng.integers(0, 1000, size=(7, 9, 11)).astype(dtype)
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-3, -6, -10]
    ornt = nib.orientations.axcodes2ornt(orientation)
    to_target = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    data = nib.orientations.apply_orientation(ras, to_target)
    new_affine = affine @ nib.orientations.inv_ornt_aff(to_target, ras.shape)
    img = nib.Nifti1Image(data, new_affine)
    img.header.set_slope_inter(slope, inter)
    return img


@pytest.mark.parametrize("orientation", ["RAS", "LIA", "LSA", "PIR"])
def test_canonical_view_is_independent_of_storage_order(orientation: str) -> None:
    ras = volume_from_image(_image("RAS"))
    other = volume_from_image(_image(orientation))
    assert np.array_equal(ras.data, other.data)
    assert np.allclose(ras.affine, other.affine)
    assert np.allclose(other.zooms, [1.0, 1.5, 2.0])


@pytest.mark.parametrize("orientation", ["RAS", "LIA", "LSA"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mgz"])
def test_edit_round_trip_keeps_grid_dtype_and_untouched_bits(tmp_path: Path, orientation: str,
                                                             suffix: str) -> None:
    source = _image(orientation)
    if suffix == ".mgz":
        source = nib.MGHImage(np.asarray(source.dataobj).astype(np.int16), source.affine)
    path = tmp_path / f"in{suffix}"
    source.to_filename(str(path))
    volume = load_volume(path)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[2:4, 3:5, 1:3] = True
    new = volume.data.copy()
    new[mask] = -5.0
    out = tmp_path / f"out{suffix}"
    write_stored(edit_stored(volume, new, mask), volume, out)
    written = nib.load(str(out))
    original = nib.load(str(path))
    assert written.shape == original.shape
    assert np.allclose(written.affine, original.affine)
    assert written.get_data_dtype() == original.get_data_dtype()
    back = load_volume(out)
    assert np.array_equal(back.data[~mask], volume.data[~mask])
    assert np.all(back.data[mask] == -5.0)


def test_scaled_integers_keep_their_scaling(tmp_path: Path) -> None:
    path = tmp_path / "scaled.nii.gz"
    _image("LIA", slope=0.5, inter=10.0).to_filename(str(path))
    volume = load_volume(path)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[0, 0, 0] = True
    new = volume.data.copy()
    new[mask] = 42.0
    out = tmp_path / "out.nii.gz"
    write_stored(edit_stored(volume, new, mask), volume, out)
    raw_in, slope, inter = stored_data(nib.load(str(path)))
    raw_out, slope_out, inter_out = stored_data(nib.load(str(out)))
    assert (slope_out, inter_out) == (slope, inter) == (0.5, 10.0)
    changed = raw_in != raw_out
    assert changed.sum() == 1
    assert load_volume(out).data[mask][0] == 42.0


def test_save_like_writes_masks_on_the_input_grid(tmp_path: Path) -> None:
    path = tmp_path / "in.nii.gz"
    _image("LSA").to_filename(str(path))
    volume = load_volume(path)
    mask = volume.data > 500
    save_like(mask, volume, tmp_path / "mask.nii.gz", dtype=np.uint8)
    written = nib.load(str(tmp_path / "mask.nii.gz"))
    assert written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, volume.source.affine)
    assert np.array_equal(load_volume(tmp_path / "mask.nii.gz").data > 0, mask)


def test_atomic_path_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "4d", "zeros", "nan", "name"])
def test_bad_inputs_raise_one_line_errors(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.nii.gz"
    data = np.ones((6, 6, 6), dtype=np.float32)
    if case == "text":
        path.write_text("this is not an image\n")
    elif case == "truncated":
        nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)), np.eye(4)).to_filename(
            str(path))
        path.write_bytes(path.read_bytes()[:-400])
    elif case == "4d":
        nib.Nifti1Image(np.ones((6, 6, 6, 4), np.float32), np.eye(4)).to_filename(str(path))
    elif case == "zeros":
        nib.Nifti1Image(data * 0, np.eye(4)).to_filename(str(path))
    elif case == "nan":
        data[1, 1, 1] = np.nan
        nib.Nifti1Image(data, np.eye(4)).to_filename(str(path))
    elif case == "name":
        path = tmp_path / "image.png"
        path.write_bytes(b"x")
    with pytest.raises(IsybError) as info:
        load_volume(path)
    assert "\n" not in str(info.value)


def test_plain_gzip_of_text_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "text.nii.gz"
    with gzip.open(path, "wt") as stream:
        stream.write("hello")
    with pytest.raises(IsybError, match="cannot be read as an image"):
        load_volume(path)


@pytest.mark.parametrize(("suffix_in", "suffix_out"), [(".mgz", ".nii.gz"), (".nii.gz", ".mgz")])
def test_output_format_follows_the_output_name(tmp_path: Path, suffix_in: str,
                                               suffix_out: str) -> None:
    image = _image("LIA")
    data = np.asarray(image.dataobj).astype(np.int16)
    klass = nib.MGHImage if suffix_in == ".mgz" else nib.Nifti1Image
    klass(data, image.affine).to_filename(str(tmp_path / f"in{suffix_in}"))
    volume = load_volume(tmp_path / f"in{suffix_in}")
    mask = np.zeros(volume.shape, dtype=bool)
    write_stored(edit_stored(volume, volume.data, mask), volume, tmp_path / f"out{suffix_out}")
    save_like(mask, volume, tmp_path / f"mask{suffix_out}", dtype=np.uint8)
    back = load_volume(tmp_path / f"out{suffix_out}")
    assert np.array_equal(back.data, volume.data)
    assert np.allclose(back.affine, volume.affine)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mgz"])
def test_an_in_memory_image_loads_like_its_file(tmp_path: Path, suffix: str) -> None:
    image = _image("LIA", slope=0.5, inter=10.0)
    if suffix == ".mgz":
        image = nib.MGHImage(np.asarray(image.dataobj), image.affine)
    path = tmp_path / f"in{suffix}"
    image.to_filename(str(path))
    from_file, in_memory = load_volume(path), load_volume(nib.load(str(path)))
    assert np.array_equal(from_file.data, in_memory.data)
    assert np.array_equal(from_file.affine, in_memory.affine)
    assert from_file.path == path and in_memory.path is None


@pytest.mark.parametrize("case", ["4d", "zeros", "nan"])
def test_bad_in_memory_images_raise_one_line_errors(case: str) -> None:
    data = np.ones((6, 6, 6, 4) if case == "4d" else (6, 6, 6), dtype=np.float32)
    if case == "zeros":
        data[:] = 0
    elif case == "nan":
        data[1, 1, 1] = np.nan
    with pytest.raises(IsybError, match=r"^image: "):
        load_volume(nib.Nifti1Image(data, np.eye(4)))


def test_anything_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="ndarray"):
        load_volume(np.ones((6, 6, 6)))


@pytest.mark.parametrize("suffix", [".nii", ".mgz"])
def test_stored_image_is_what_write_stored_writes(tmp_path: Path, suffix: str) -> None:
    """In memory: the stored values, scaling and header of the written file."""
    image = _image("LIA", slope=0.5, inter=10.0)
    if suffix == ".mgz":
        image = nib.MGHImage(np.asarray(image.dataobj), image.affine)
    path = tmp_path / f"in{suffix}"
    image.to_filename(str(path))
    volume = load_volume(path)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[1:3, 2:4, 3:5] = True
    new = volume.data.copy()
    new[mask] = 42.0
    raw = edit_stored(volume, new, mask)
    out = tmp_path / f"out{suffix}"
    write_stored(raw, volume, out)
    in_memory, written = stored_image(raw, volume), nib.load(str(out))
    assert type(in_memory) is type(volume.source)
    (raw_mem, *scaling_mem), (raw_out, *scaling_out) = stored_data(in_memory), stored_data(written)
    assert np.array_equal(raw_mem, raw_out) and raw_mem.dtype == raw_out.dtype
    assert scaling_mem == scaling_out
    assert np.array_equal(in_memory.get_fdata(), written.get_fdata())
    assert np.array_equal(in_memory.affine, written.affine)
    assert np.array_equal(load_volume(in_memory).data, load_volume(out).data)
    save_mask_like(mask, volume, tmp_path / f"mask{suffix}")
    written_mask = nib.load(str(tmp_path / f"mask{suffix}"))
    assert mask_image(mask, volume).get_data_dtype() == written_mask.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(mask_image(mask, volume).dataobj),
                          np.asarray(written_mask.dataobj))

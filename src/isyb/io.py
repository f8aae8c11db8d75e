"""Image input and output at the edges of isyb.

Every image is read into a :class:`Volume`: a float32 array in the closest
canonical RAS orientation (axis 0 runs left->Right, axis 1 posterior->Anterior,
axis 2 inferior->Superior) plus the matching affine. Results are written back
on the input's own grid, voxel order, dtype, affine and header, atomically
(a temporary file in the same folder, then a rename), so that a crash never
leaves a half-written output behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from isyb.errors import IsybError
from isyb.image_checks import (
    MAX_BYTES_3D,
    MAX_BYTES_4D,
    check_gzip,
    check_header,
    check_raw_nifti,
    check_values,
    data_bytes,
)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")
RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


@dataclass
class Volume:
    """A 3-D image in canonical RAS voxel order.

    ``data`` is float32 in RAS order; ``affine`` maps its voxel indices to
    scanner millimetres; ``source`` is the image as stored on disk, kept so that
    results can be written back on its grid, orientation and dtype.
    """

    data: np.ndarray
    affine: np.ndarray
    source: nib.spatialimages.SpatialImage
    path: Path | None = None

    @property
    def zooms(self) -> np.ndarray:
        """Voxel size in mm along the RAS array axes."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape  # type: ignore[return-value]


def image_suffix(path: str | os.PathLike) -> str:
    """The image extension of ``path`` (``.nii.gz``, ``.nii``, ``.mgz`` or ``.mgh``)."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise IsybError(f"{path}: not a NIfTI or MGZ file name (expected one of {IMAGE_SUFFIXES})")


def strip_image_suffix(path: str | os.PathLike) -> str:
    """``path`` as a string without its image extension."""
    text = str(path)
    return text[: len(text) - len(image_suffix(text))]


def load_image(path: str | os.PathLike, *,
               allow_4d: bool = False) -> nib.spatialimages.SpatialImage:
    """Open a NIfTI or MGZ file, with one-line errors for the ways it can be wrong.

    The header is checked before any data is read (:func:`isyb.image_checks.check_header`), and
    a gzipped file is checked not to inflate past the byte cap
    (:func:`isyb.image_checks.check_gzip`), so hostile files are refused in constant memory.
    """
    path = Path(path)
    if not path.exists():
        raise IsybError(f"{path}: no such file")
    if path.is_dir():
        raise IsybError(f"{path}: is a folder, expected an image file")
    suffix = image_suffix(path)
    check_raw_nifti(path, suffix)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise IsybError(f"{path}: cannot be read as an image ({exc})") from None
    check_header(img, path, allow_4d=allow_4d)
    if suffix in (".nii.gz", ".mgz"):
        cap = MAX_BYTES_4D if len(img.shape) == 4 and img.shape[3] > 1 else MAX_BYTES_3D
        expected = data_bytes(img)
        check_gzip(path, expected, min(cap, 2 * expected + 16 * 1024 ** 2))
    return img


#: What the public entry points accept as an image: a file path or an in-memory nibabel image
#: (nilearn's ``check_niimg`` convention).
ImageLike = str | os.PathLike | nib.spatialimages.SpatialImage


def load_volume(image: ImageLike) -> Volume:
    """Read a 3-D head image, given by path or in memory, into a RAS :class:`Volume`.

    ``image`` is a NIfTI or MGZ path, or a nibabel image (3-D, or 4-D with one
    volume). Raises :class:`IsybError` for a missing, corrupt, hostile
    (:func:`load_image`) or 4-D image, and for NaN, infinite, all-zero or
    constant voxels (:func:`check_values`); messages name the path, or
    ``image`` for an in-memory one.
    """
    in_memory = isinstance(image, nib.spatialimages.SpatialImage)
    if not in_memory and not isinstance(image, str | os.PathLike):
        raise TypeError(f"expected a path or a nibabel image, got {type(image).__name__}")
    name = "image" if in_memory else image
    img = _check_in_memory(image) if in_memory else load_image(image)
    try:
        volume = volume_from_image(img)
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # truncated or corrupt data
        raise IsybError(f"{name}: cannot be read as an image ({exc})") from None
    volume.path = None if in_memory else Path(image)
    check_values(volume.data, name)
    return volume


def _check_in_memory(img: nib.spatialimages.SpatialImage) -> nib.spatialimages.SpatialImage:
    """An in-memory image, refused unless it holds one 3-D volume (:func:`check_header`)."""
    check_header(img, "image")
    return img


def volume_from_image(img: nib.spatialimages.SpatialImage) -> Volume:
    """Reorient an in-memory image to the closest canonical RAS view."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    ornt = nib.orientations.io_orientation(img.affine)
    to_ras = nib.orientations.ornt_transform(ornt, RAS)
    ras = nib.orientations.apply_orientation(data, to_ras)
    affine = img.affine @ nib.orientations.inv_ornt_aff(to_ras, data.shape)
    return Volume(np.ascontiguousarray(ras, dtype=np.float32), affine, img)


def to_source_order(array: np.ndarray, source: nib.spatialimages.SpatialImage) -> np.ndarray:
    """Bring a RAS-ordered array back to the voxel order of ``source``."""
    ornt = nib.orientations.io_orientation(source.affine)
    from_ras = nib.orientations.ornt_transform(RAS, ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, from_ras))


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip float values into an integer ``dtype``; pass floats through.

    Values already of ``dtype`` are copied as they are (the same result: rounding
    through ``np.rint`` cost 0.18 s on a 1 mm uint8 mask, most of writing it).
    """
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values.copy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the file's extension, in lower case, so that
    writers that pick a format from the name (nibabel) work whatever the case of
    ``path``'s extension (``.NII.GZ``). On error the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lowered = path.name.lower()
    suffix = "".join(Path(lowered).suffixes[-2:]) if lowered.endswith(".gz") \
        else Path(lowered).suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; use what open() would
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def move_tree(staged: Path, target: Path) -> None:
    """Move every file below ``staged`` to the same place below ``target``, each by one
    atomic rename, or by an atomic copy when the two are on different file systems."""
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        destination = target / path.relative_to(staged)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with atomic_path(destination) as tmp:
                shutil.copy2(path, tmp)


def sweep_partial(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`atomic_path` leaves when a process is killed.

    They are named ``.<name>.<random>.part<ext>``; a killed run leaves them
    behind, and the run that resumes removes them. Returns what was removed.
    """
    removed = []
    root = Path(folder)
    if root.is_dir():
        for path in root.rglob(".*.part*"):
            if path.is_file() and re.fullmatch(r"\..+\.[^.]+\.part(\..+)?", path.name):
                path.unlink()
                removed.append(path)
    return removed


def sweep_partial_of(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed run left beside the single output ``path`` and
    its companions (``<stem>_isyb.json``, ``<stem>_isyb.png``): only names that start with
    the output's stem, only in its folder, never below it."""
    path = Path(path)
    stem = Path(strip_image_suffix(path)).name if path.name.lower().endswith(
        IMAGE_SUFFIXES) else path.stem
    removed = []
    if path.parent.is_dir():
        stem = glob_escape(stem)
        for partial in [*path.parent.glob(f".{stem}.*.part*"),
                        *path.parent.glob(f".{stem}_*.part*")]:
            if partial.is_file() and re.fullmatch(r"\..+\.[^.]+\.part(\..+)?", partial.name):
                partial.unlink()
                removed.append(partial)
    return removed


def glob_escape(text: str) -> str:
    """``text`` with the glob wildcards ``*?[`` matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def check_output_folder(out_dir: str | os.PathLike, *, ours: bool) -> None:
    """Refuse, before any work, an output folder that cannot be used: a path under a file,
    a file, or an existing non-empty folder that isyb did not write (``ours`` False), whose
    files a run would mix with its own."""
    out_dir = Path(out_dir)
    for folder in (out_dir, *out_dir.parents):
        if folder.exists() and not folder.is_dir():
            where = "is a file" if folder == out_dir else f"is under a file ({folder})"
            raise IsybError(f"{out_dir}: {where}; expected a folder")
    if out_dir.is_dir() and not ours and any(out_dir.iterdir()):
        raise IsybError(f"{out_dir}: exists and holds files isyb did not write; give a new "
                        "or empty folder")


def cached_arrays(path: str | os.PathLike, stamp: str,
                  compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays kept in an ``.npz`` cache file keyed by ``stamp``; ``compute()`` on a miss.

    A missing, stale (other stamp) or unreadable file is recomputed and
    rewritten atomically; a folder that cannot be written only costs the
    recomputation.
    """
    path = Path(path)
    try:
        with np.load(path) as stored:
            if str(stored["stamp"]) == stamp:
                return {key: stored[key] for key in stored.files if key != "stamp"}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    arrays = compute()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, stamp=stamp, **arrays)
    except OSError:
        pass
    return arrays


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def stored_data(img: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, float, float]:
    """The voxel values as stored on disk, with the scaling nibabel would apply.

    Returns ``(raw, slope, inter)`` with ``raw * slope + inter`` the image's values.
    """
    proxy = img.dataobj
    if nib.is_proxy(proxy) and hasattr(proxy, "get_unscaled"):
        return np.asarray(proxy.get_unscaled()), float(proxy.slope), float(proxy.inter)
    return np.asarray(proxy), 1.0, 0.0


def edit_stored(reference: Volume, new_ras: np.ndarray, mask_ras: np.ndarray) -> np.ndarray:
    """The reference's stored array with the voxels of ``mask_ras`` set from ``new_ras``.

    Voxels outside the mask keep their stored bits exactly; edited values are
    unscaled, rounded and clipped to the stored dtype. The result is in the
    stored voxel order.
    """
    raw, slope, inter = stored_data(reference.source)
    mask = to_source_order(mask_ras, reference.source)
    values = to_source_order(new_ras, reference.source)[mask]
    out = raw.copy()
    view = out[..., 0] if out.ndim == 4 else out
    view[mask] = cast_like((values.astype(np.float64) - inter) / slope, raw.dtype)
    return out


def _build_image(data: np.ndarray, reference: Volume, path: str | os.PathLike | None,
                 slope: float = 1.0, inter: float = 0.0) -> nib.spatialimages.SpatialImage:
    """An image of the format that ``path``'s extension names, on the reference grid.

    Without ``path``, the format is the reference's own (NIfTI-1, NIfTI-2 or
    MGH; any other kind becomes NIfTI-1). The reference header is kept when
    the format is the same; otherwise (MGZ in, NIfTI out, or the reverse) a
    fresh header of the target format is made from the affine and the data.
    """
    source = reference.source
    mgh = (image_suffix(path) in (".mgz", ".mgh") if path is not None
           else isinstance(source, nib.MGHImage))
    target = (nib.MGHImage if mgh
              else type(source) if isinstance(source, nib.Nifti1Image) else nib.Nifti1Image)
    if isinstance(source, target):
        header = source.header.copy()
        header.set_data_dtype(data.dtype)
        image = target(data, source.affine, header)
    else:
        image = target(data, source.affine)
    if hasattr(image.header, "set_slope_inter"):
        image.header.set_slope_inter(slope, inter)
    return image


def stored_image(raw: np.ndarray, reference: Volume) -> nib.spatialimages.SpatialImage:
    """A stored-order array as the image :func:`write_stored` writes, in memory.

    Same format, header, affine, dtype and scaling as the reference, read back
    from the serialised bytes, so that its values are scaled like a loaded
    file's (``dataobj.get_unscaled()`` is ``raw``). Saving it again with
    nibabel rescales an image with scaling, as for any loaded image; write
    ``raw`` with :func:`write_stored` to keep the stored values.
    """
    _, slope, inter = stored_data(reference.source)
    image = _build_image(raw, reference, None, slope, inter)
    return type(image).from_bytes(image.to_bytes())


def write_stored(raw: np.ndarray, reference: Volume, path: str | os.PathLike) -> None:
    """Write a stored-order array with the reference's affine, header and scaling, atomically."""
    _, slope, inter = stored_data(reference.source)
    image = _build_image(raw, reference, path, slope, inter)
    with atomic_path(path) as tmp:
        image.to_filename(str(tmp))


def save_like(ras_data: np.ndarray, reference: Volume, path: str | os.PathLike, *,
              dtype: np.dtype | str = np.float32) -> None:
    """Write a derived RAS array (a mask, a map) on the grid and orientation of ``reference``.

    Values are cast to ``dtype`` (integers are rounded and clipped), unscaled.
    """
    data = cast_like(to_source_order(ras_data, reference.source), np.dtype(dtype))
    image = _build_image(data, reference, path)
    with atomic_path(path) as tmp:
        image.to_filename(str(tmp))


def mask_image(mask_ras: np.ndarray, reference: Volume) -> nib.spatialimages.SpatialImage:
    """A binary RAS mask as the uint8 image :func:`save_mask_like` writes, in memory."""
    data = to_source_order(mask_ras.astype(np.uint8), reference.source)
    image = _build_image(data, reference, None)
    return type(image).from_bytes(image.to_bytes())


def save_mask_like(mask_ras: np.ndarray, reference: Volume, path: str | os.PathLike) -> None:
    """Write a binary RAS mask as uint8 on the grid of ``reference``."""
    save_like(mask_ras.astype(np.uint8), reference, path, dtype=np.uint8)

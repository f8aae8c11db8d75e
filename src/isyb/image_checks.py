"""What cannot be a head image, refused before or while it is read (issue 17).

Header caps (dimensions, bytes, dtype, affine), decompression bombs, the raw
NIfTI header of a degenerate fallback affine, and voxel values that are not
real, finite or varying. Each refusal is one line naming the file or the
data. :func:`isyb.io.load_image` applies the file checks in order.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from isyb.errors import IsybError

#: Most voxels in one 3-D volume, and most volumes in a 4-D series (BOLD, DWI, ASL).
MAX_VOXELS_3D, MAX_VOLUMES = 1024 ** 3, 100_000
#: Most bytes of data after decompression: 512 MiB in a 3-D image (a 0.5 mm head, 480 × 480 ×
#: 400 float32, is 369 MB; the 600³ float32 bomb of issue 17 is 864 MB), 4 GiB in a 4-D series
#: (an HCP resting run, 104 × 90 × 72 × 1200 int16, is 1.6 GB).
MAX_BYTES_3D, MAX_BYTES_4D = 512 * 1024 ** 2, 4 * 1024 ** 3
#: Largest voxel edge (mm), and largest condition number of the affine's 3 × 3 part.
MAX_VOXEL_MM, MAX_AFFINE_CONDITION = 100.0, 1e6


def check_header(img: nib.spatialimages.SpatialImage, name: object, *,
                 allow_4d: bool = False) -> None:
    """Refuse, from the header alone, an image that cannot be a head scan.

    Nothing is read but the header, so a header that claims terabytes costs
    nothing. Required: 3 dimensions (a 4th only with ``allow_4d``), none
    empty; at most :data:`MAX_VOXELS_3D` voxels per volume and
    :data:`MAX_VOLUMES` volumes; at most :data:`MAX_BYTES_3D` (3-D) or
    :data:`MAX_BYTES_4D` (4-D) bytes of data; an integer or real
    floating-point dtype (not complex, RGB or another compound type); a
    finite, invertible affine (condition number at most
    :data:`MAX_AFFINE_CONDITION`) with voxel edges of at most
    :data:`MAX_VOXEL_MM` mm. Sheared and oblique affines are valid.
    """
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 and not (allow_4d and len(shape) == 4):
        raise IsybError(f"{name}: expected a 3-D image, got shape {tuple(img.shape)}")
    if min(shape) < 1:
        raise IsybError(f"{name}: the image is empty (shape {shape})")
    volumes = shape[3] if len(shape) == 4 else 1
    if int(np.prod(shape[:3], dtype=object)) > MAX_VOXELS_3D or volumes > MAX_VOLUMES:
        raise IsybError(f"{name}: shape {shape} is too large for a head image (at most 1024³ "
                        f"voxels per volume and {MAX_VOLUMES} volumes)")
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind not in "uif" or dtype.fields is not None:
        what = "complex" if dtype.kind == "c" else "RGB" if dtype.fields else "non-numeric"
        raise IsybError(f"{name}: {what} voxels ({dtype}) cannot be a head image; expected "
                        "integer or real floating-point values")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    cap = MAX_BYTES_4D if len(shape) == 4 else MAX_BYTES_3D
    if size > cap:
        raise IsybError(f"{name}: shape {shape} of {dtype} is {size / 1024 ** 2:.0f} MiB of "
                        f"data, over the {cap // 1024 ** 2} MiB that isyb reads")
    affine = np.asarray(img.affine, dtype=float)
    if not np.isfinite(affine).all() or np.linalg.cond(affine[:3, :3]) > MAX_AFFINE_CONDITION:
        raise IsybError(f"{name}: the voxel-to-world affine is degenerate or not invertible")
    edges = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if edges.max() > MAX_VOXEL_MM:
        raise IsybError(f"{name}: voxel size {tuple(float(e) for e in np.round(edges, 3))} mm "
                        f"cannot be a head image (at most {MAX_VOXEL_MM:g} mm)")


def data_bytes(img: nib.spatialimages.SpatialImage) -> int:
    """Bytes a file of ``img`` inflates to as its header describes it (header, then data)."""
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    return offset + int(np.prod(img.shape, dtype=object)) * np.dtype(img.get_data_dtype()).itemsize


def check_gzip(path: str | os.PathLike, expected: int, cap: int) -> None:
    """Refuse a gzip file that inflates to more than ``cap`` bytes, without holding it in memory.

    The ISIZE trailer (uncompressed size mod 2^32, RFC 1952 section 2.3.1) is
    only a hint: when it equals ``expected`` mod 2^32, the size the header
    describes, the file is taken as described (nibabel then inflates only the
    bytes that the already capped header asks for). Otherwise the stream
    (every member) is inflated 1 MiB at a time and counted, and refused as
    soon as the count passes ``cap`` (:func:`isyb.io.load_image`: the byte cap, or twice
    ``expected`` plus 16 MiB for an MGH footer or padding, whichever is less).
    """
    with open(path, "rb") as raw:
        raw.seek(max(0, os.fstat(raw.fileno()).st_size - 4))
        if int.from_bytes(raw.read(4), "little") == expected % 2 ** 32:
            return
        raw.seek(0)
        inflated = 0
        try:
            with gzip.GzipFile(fileobj=raw) as stream:
                while chunk := stream.read(1 << 20):
                    inflated += len(chunk)
                    if inflated > cap:
                        raise IsybError(f"{path}: inflates to over {cap / 1024 ** 2:.0f} MiB, "
                                        f"more than the {expected} bytes its header describes "
                                        "(a decompression bomb?)")
        except (OSError, EOFError, zlib.error) as exc:
            raise IsybError(f"{path}: cannot be read as an image ({exc})") from None


def check_raw_nifti(path: Path, suffix: str) -> None:
    """Refuse a NIfTI header whose affine is the fallback of zero voxel sizes.

    With sform_code 0 the affine comes from pixdim (NIfTI-1 methods 1 and 2);
    nibabel quietly sets zero pixdims to 1, so the raw header bytes are read.
    """
    if suffix not in (".nii", ".nii.gz"):
        return
    try:
        with (gzip.open if suffix == ".nii.gz" else open)(path, "rb") as stream:
            block = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return  # nibabel names the problem
    for byteorder in ("little", "big"):
        size = int.from_bytes(block[:4], byteorder)
        if size in (348, 540) and len(block) >= size:
            break
    else:
        return  # not a NIfTI header: nibabel names the problem
    klass = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    header = klass(block[:size], endianness="<" if byteorder == "little" else ">",
                   check=False)
    zooms = np.asarray(header["pixdim"][1:4], dtype=float)
    if header["sform_code"] == 0 and (not np.isfinite(zooms).all() or np.any(zooms == 0)):
        raise IsybError(f"{path}: the voxel-to-world affine is degenerate (qform_code "
                        f"{int(header['qform_code'])}, sform_code 0, pixdim "
                        f"{tuple(float(z) for z in zooms)})")


def check_real(data: np.ndarray, error: Callable[[str], Exception], what: str) -> None:
    """Refuse values that are not real numbers (non-numeric or complex dtypes) or not finite.

    ``error`` builds the exception from the one-line message, which names ``what``.
    """
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise error(f"{what} must be real numbers, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise error(f"{what} holds {bad} NaN or infinite values")


def check_values(data: np.ndarray, name: object) -> None:
    """Refuse voxel values that cannot be an image: NaN or infinite, all zero, or constant."""
    if not np.isfinite(data).all():
        raise IsybError(f"{name}: image contains NaN or infinite voxels")
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise IsybError(f"{name}: image is all zero" if low == 0 else
                        f"{name}: image is constant (every voxel is {low:g}); no head in it")

"""What a NIfTI file holds besides geometry and voxels, where text can hide.

A release copies images as they are when their headers need no change, so every
place in the file that a reader does not show must be checked too:

* :func:`header_content`: the header fields that carry content rather than
  geometry (every text field but the magic string, and ANALYZE's unused numbers);
* :func:`outside_the_image`: bytes between the header (with its extensions) and
  the voxel data, bytes after the data (also a further gzip member), and the gzip
  header's file name, comment, extra field and modification time (the time a
  converter compressed the file, which can date the scan).

nibabel writes none of these (empty fields, data right after the extensions,
a gzip header with neither name nor time), so an image isyb rewrites is clean.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from isyb.errors import InputError

#: ANALYZE 7.5 header numbers that NIfTI leaves unused: any tool may fill them.
UNUSED_NUMBERS = ("extents", "session_error", "glmax", "glmin")
#: Header text that is format, not content: NIfTI's magic string and ANALYZE's one-byte
#: ``regular`` flag.
FORMAT_TEXT = ("magic", "regular")
#: The most bytes kept of what lies outside the image (searched, and reported when not
#: empty); the file is read whole to find it.
MAX_EXTRA_BYTES = 64 << 20
_GZIP_FLAGS = {"extra field": 4, "file name": 8, "comment": 16}


def header_content(header: nib.Nifti1Header) -> dict[str, bytes]:
    """Every field of a NIfTI-1/2 header that can carry content rather than geometry, as
    bytes (empty when blank or zero): each text field but :data:`FORMAT_TEXT`
    (``descrip``, ``aux_file``, ``intent_name``; NIfTI-1's ``data_type`` and ``db_name``;
    NIfTI-2's ``unused_str``), and each of :data:`UNUSED_NUMBERS` in decimal."""
    fields = {}
    for name in header.structarr.dtype.names:
        value = header[name]
        if header.structarr.dtype[name].kind == "S" and name not in FORMAT_TEXT:
            fields[name] = np.asarray(value).tobytes().strip(b"\x00 ")
        elif name in UNUSED_NUMBERS:
            fields[name] = str(int(value)).encode() if value else b""
    return fields


def _extensions_end(raw: bytes, header: nib.Nifti1Header) -> int:
    """Where the extensions end in the file's first bytes ``raw``, by the sizes stored in
    the file (nibabel recomputes them from the content, which can differ)."""
    position = header.sizeof_hdr + 4
    if len(raw) < position or raw[position - 4] == 0:
        return position
    order = "big" if header.endianness == ">" else "little"
    while position + 8 <= len(raw):
        size = int.from_bytes(raw[position:position + 4], order, signed=True)
        if size < 8 or position + size > len(raw):  # not an extension: bytes in the gap
            break
        position += size
    return position


def _gzip_header(path: Path) -> dict[str, bytes]:
    """The optional fields of a gzip file's header and its modification time (empty
    when not set), per RFC 1952."""
    with open(path, "rb") as stream:
        head = stream.read(64 << 10)
    flags, mtime = head[3], int.from_bytes(head[4:8], "little")
    found = {"modification time": str(mtime).encode() if mtime else b""}
    position = 10
    if flags & _GZIP_FLAGS["extra field"]:
        size = int.from_bytes(head[position:position + 2], "little")
        found["extra field"] = head[position + 2:position + 2 + size]
        position += 2 + size
    for name in ("file name", "comment"):
        if flags & _GZIP_FLAGS[name]:
            end = head.find(b"\x00", position)
            end = len(head) if end < 0 else end
            found[name] = head[position:end]
            position = end + 1
    return found


def outside_the_image(path: Path, image: nib.Nifti1Image) -> dict[str, bytes]:
    """What the single-file NIfTI ``path`` (``image``, loaded from it) holds outside its
    header, extensions and voxel array, by place: ``before the data``, ``after the data``
    (zeros at either end left out; at most :data:`MAX_EXTRA_BYTES` each) and, for a gzip
    file, the fields of its gzip header (:func:`_gzip_header`). Empty values where a place
    holds nothing. A file whose data end early or cannot be decompressed is an
    :class:`~isyb.errors.InputError` naming it."""
    header = image.header
    offset = int(getattr(image.dataobj, "offset", 0))
    end = offset + int(np.prod(header.get_data_shape(), dtype=np.int64)) * \
        header.get_data_dtype().itemsize
    compressed = path.name.endswith(".gz")
    opener = gzip.open if compressed else open
    with opener(path, "rb") as stream:
        try:
            raw = stream.read(offset)
            stream.seek(end)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path.name}: the image data end early or cannot be "
                             f"decompressed ({exc})") from None
        after = bytearray()
        try:
            while len(after) < MAX_EXTRA_BYTES and (chunk := stream.read(1 << 20)):
                after += chunk
        except (OSError, EOFError, zlib.error):  # a broken further member: text too
            with open(path, "rb") as plain:
                after += plain.read()[-MAX_EXTRA_BYTES:]
    found = {"before the data": raw[_extensions_end(raw, header):].strip(b"\x00"),
             "after the data": bytes(after[:MAX_EXTRA_BYTES]).strip(b"\x00")}
    if compressed:
        found.update({f"gzip {k}": v for k, v in _gzip_header(path).items()})
    return found

"""``isyb.io.cast_like`` of values already in the target dtype: an equal copy, so writing a
uint8 mask skips the float rounding and stores the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.io import cast_like


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_values_already_in_the_dtype_are_copied_unchanged(dtype) -> None:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    values = np.random.default_rng(0).uniform(info.min, info.max, (9, 8, 7)).astype(dtype)
    out = cast_like(values, dtype)
    assert out.dtype == np.dtype(dtype) and out is not values
    np.testing.assert_array_equal(out, values)
    # the rounding path, from floats, gives the same values
    np.testing.assert_array_equal(cast_like(values.astype(np.float64), dtype), values)

"""The work cache (``ISYB_CACHE_DIR``): reuse only for the same bytes and settings,
never a damaged entry, nothing stored for a failure, and the cached brain masks and
registrations equal to the computed ones."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from isyb.cache import CACHE_ENV, cache_key, cached, decode_json, encode_json
from isyb.head import brain as brain_module
from isyb.head import register as register_module
from isyb.head.register import TemplateGrid, register_template
from isyb.synthetic.phantom import make_phantom


class Counter:
    """A computation that counts its calls and returns ``{"value": [calls]}``."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"value": np.array([self.calls])}


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """``caplog`` for isyb's warnings even after a CLI test in this process set the
    ``isyb`` logger not to propagate (isyb.cli.main)."""
    monkeypatch.setattr(logging.getLogger("isyb"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="isyb.cache")
    return caplog


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_without_the_variable_every_call_computes(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    compute = Counter()
    for _ in range(2):
        cached("kind", (np.zeros(3),), compute)
    assert compute.calls == 2 and not any(tmp_path.iterdir())


def test_the_same_key_is_reused_and_any_other_is_computed(cache: Path) -> None:
    compute = Counter()
    data = np.arange(6, dtype=np.float32)
    assert cached("kind", (data, 1.0), compute)["value"][0] == 1
    assert cached("kind", (data.copy(), 1.0), compute)["value"][0] == 1  # same bytes: reused
    assert compute.calls == 1
    for other in ((data, 2.0), (data.reshape(2, 3), 1.0), (data.astype(np.float64), 1.0),
                  (data + 1, 1.0), (data, "1.0")):
        cached("kind", other, compute)
    assert compute.calls == 6
    cached("other-kind", (data, 1.0), compute)
    assert compute.calls == 7
    assert len(list((cache / "kind").glob("*.npz"))) == 6


def test_keys_are_unambiguous() -> None:
    """Two part lists that concatenate to the same text must not share a key."""
    assert cache_key("k", ("ab", "c")) != cache_key("k", ("a", "bc"))
    assert cache_key("k", ((1, 2), 3)) != cache_key("k", (1, (2, 3)))
    assert cache_key("k", (1,)) != cache_key("k", (1.0,))
    with pytest.raises(TypeError, match="cannot key"):
        cache_key("k", (object(),))


def test_a_damaged_entry_is_computed_again_and_replaced(cache: Path, warnings_seen) -> None:
    compute = Counter()
    cached("kind", (1,), compute)
    (entry,) = (cache / "kind").glob("*.npz")
    entry.write_bytes(b"not an npz")
    assert cached("kind", (1,), compute)["value"][0] == 2
    assert "unreadable" in warnings_seen.text
    assert cached("kind", (1,), compute)["value"][0] == 2 and compute.calls == 2


def test_a_failed_computation_stores_nothing(cache: Path) -> None:
    def fail() -> dict[str, np.ndarray]:
        raise RuntimeError("no result")

    with pytest.raises(RuntimeError):
        cached("kind", (1,), fail)
    assert not list(cache.rglob("*.npz")) and not list(cache.rglob("*.part*"))


def test_an_unwritable_cache_still_gives_the_result(tmp_path: Path, warnings_seen,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    assert cached("kind", (1,), Counter())["value"][0] == 1
    assert "could not write" in warnings_seen.text


def test_json_records_round_trip() -> None:
    record = {"score": 0.8123456789012345, "start": "centroid",
              "attempts": [{"start": "centroid", "brain_dice": 0.8123}]}
    assert decode_json(encode_json(record)) == record


def test_a_cached_brain_mask_needs_the_same_image_zooms_and_threshold(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_deepbet(data, zooms, threshold):
        calls.append(threshold)
        return data > threshold

    monkeypatch.setattr(brain_module, "_deepbet_mask", fake_deepbet)
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    first = brain_module.extract_brain(data, np.ones(3))
    again = brain_module.extract_brain(data.copy(), np.ones(3))
    assert len(calls) == 1 and again.dtype == bool and np.array_equal(first, again)
    brain_module.extract_brain(data, np.array([1.0, 1.0, 1.2]))
    brain_module.extract_brain(data, np.ones(3), threshold=0.7)
    assert calls == [0.5, 0.5, 0.7]


def test_a_cached_registration_equals_the_computed_one(cache: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    template = make_phantom(voxel_size=3.0, seed=0)
    grid = TemplateGrid.from_arrays(template.image, template.affine, template.brain_mask)
    subject = make_phantom(voxel_size=3.0, seed=1)
    computed = register_template(subject.image, subject.affine, subject.brain_mask, grid)

    def refuse(*args, **kwargs):
        raise AssertionError("registered again instead of reusing the cache")

    monkeypatch.setattr(register_module, "_register", refuse)
    reused = register_template(subject.image, subject.affine, subject.brain_mask, grid)
    assert np.array_equal(reused.subject_to_template, computed.subject_to_template)
    assert reused.subject_to_template.dtype == computed.subject_to_template.dtype
    assert (reused.score, reused.start, reused.attempts) == (computed.score, computed.start,
                                                             computed.attempts)
    with pytest.raises(AssertionError, match="registered again"):
        register_template(subject.image, subject.affine, subject.brain_mask, grid, seed=7)

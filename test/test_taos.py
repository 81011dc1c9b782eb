"""TAOS (Amodal SAM's occlusion synthesis): the invariants of every synthesised pair."""

from __future__ import annotations

import numpy as np
import pytest

from uois_sam_ros.core.amodal.taos import TaosParams, boundary_band, paste_occluder, taos_from_labels


def _scene(seed: int = 0):
    """A textured 120x160 image with two instances and depth: a disc (the target) and a box."""
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 <= 25 ** 2
    box = (yy >= 20) & (yy < 70) & (xx >= 110) & (xx < 150)
    label = np.zeros((h, w), np.int64)
    label[disc], label[box] = 1, 2
    depth = np.full((h, w), 1.0, np.float32)
    depth[disc], depth[box] = 0.8, 0.7
    depth[box & (xx < 114)] = 0.0  # a depth hole on the occluder stays a hole
    return rgb, depth, label


@pytest.mark.parametrize("seed", range(8))
def test_taos_invariants(seed):
    rgb, depth, label = _scene(seed)
    rng = np.random.default_rng(seed)
    params = TaosParams(overlap=(0.15, 0.5), blur_sigma=1.5, band_px=2)
    s = paste_occluder(rgb, depth, label == 1, rgb, depth, label == 2, rng, params)
    assert s is not None
    # the amodal mask is the target, and it contains the visible mask
    assert np.array_equal(s.amodal, label == 1)
    assert not (s.visible & ~s.amodal).any()
    # the occluded part lies exactly under the occluder, and its share is the drawn overlap
    occluded = s.amodal & ~s.visible
    assert occluded.any() and not (occluded & ~s.occluder).any()
    assert np.array_equal(occluded, s.amodal & s.occluder)
    assert 0.15 <= occluded.sum() / s.amodal.sum() <= 0.5
    assert s.overlap == pytest.approx(occluded.sum() / s.amodal.sum())
    # nothing changes outside the occluder and the blurred band; the blur touches only the band
    changed = (s.rgb != rgb).any(axis=2)
    assert not (changed & ~(s.occluder | s.band)).any()
    assert np.array_equal(s.band, boundary_band(s.occluder, 2))
    unblurred = rgb.copy()
    unblurred[s.occluder] = s.rgb[s.occluder]  # the paste alone, to tell the blur's pixels apart
    blurred = (s.rgb != unblurred).any(axis=2) & ~s.occluder
    assert blurred.any() and not (blurred & ~s.band).any()
    # the occluder's depth stands in front of the target; its hole stays a hole
    d_occ = s.depth[s.occluder]
    assert (d_occ[d_occ > 0] < 0.8).all() and (d_occ == 0).any()
    assert np.array_equal(s.depth[~s.occluder], depth[~s.occluder])
    # the inputs are untouched
    assert np.array_equal(rgb, _scene(seed)[0])


def test_no_blur_changes_only_the_occluder():
    rgb, depth, label = _scene(1)
    s = paste_occluder(rgb, None, label == 1, rgb, None, label == 2, np.random.default_rng(1),
                       TaosParams(blur_sigma=0.0))
    assert s is not None and s.depth is None
    assert not ((s.rgb != rgb).any(axis=2) & ~s.occluder).any()


def test_impossible_overlap_gives_none_and_bad_shapes_raise():
    rgb, depth, label = _scene(2)
    # an occluder far larger than the image cannot be placed
    assert paste_occluder(rgb, depth, label == 1, rgb, depth, label == 2, np.random.default_rng(0),
                          TaosParams(scale=(60.0, 60.0))) is None
    assert paste_occluder(rgb, depth, np.zeros_like(label, bool), rgb, depth, label == 2,
                          np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="do not match"):
        paste_occluder(rgb[:10], depth, label == 1, rgb, depth, label == 2, np.random.default_rng(0))


def test_taos_from_labels_any_visible_dataset():
    """Only a visible label image is needed (the target's visible mask is its amodal GT)."""
    rgb, depth, label = _scene(3)
    hits = 0
    for seed in range(10):
        s = taos_from_labels(rgb, depth, label, np.random.default_rng(seed), min_area=100)
        if s is None:
            continue
        hits += 1
        assert any(np.array_equal(s.amodal, label == k) for k in (1, 2))
        assert not (s.amodal & ~s.visible & ~s.occluder).any()
    assert hits >= 5
    assert taos_from_labels(rgb, depth, np.zeros_like(label), np.random.default_rng(0)) is None

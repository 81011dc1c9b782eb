"""The weights-free segmenter takes an object's positive and negative clicks: a negative click cuts
the region, and the interactive loop reaches the ground truth on a rendered scene."""

from __future__ import annotations

import numpy as np
import pytest

from uois_sam_ros.core.adapt.clicks import Protocol
from uois_sam_ros.core.adapt.interactive import GeometricClicks, object_ids, run_object
from uois_sam_ros.core.segment.geometric import GeometricPromptSource, GeometricSegmenter
from uois_sam_ros.core.types import Prompts


@pytest.fixture(scope="module")
def scene():
    synthetic = pytest.importorskip("uois_sam_ros.core.data.synthetic")
    return synthetic.generate_scene(11, synthetic.SceneConfig(width=320, height=240, min_objects=3, max_objects=5))


@pytest.fixture(scope="module")
def seg(scene):
    s = GeometricSegmenter()
    s.set_frame(scene.frame())
    return s


def test_positive_clicks_equal_decode_and_a_negative_click_cuts(scene, seg):
    pr = GeometricPromptSource().prompts(scene.frame())
    assert len(pr) >= 1
    dec = seg.decode(Prompts(pr.points, np.ones(len(pr)), np.ones(len(pr))))
    k = int(np.argmax(dec.masks[:, 0].sum(axis=(1, 2))))  # the largest object
    x, y = (float(v) for v in pr.points[k])
    mask, score = seg.decode_clicks(np.array([[x, y]]), np.array([1]))
    assert np.array_equal(mask, dec.masks[k, 0]) and score == pytest.approx(float(dec.scores[k, 0]))
    assert mask.sum() > 300
    # A negative click on the region pixel farthest from the positive one.
    ys, xs = np.nonzero(mask)
    far = int(np.argmax((xs - x) ** 2 + (ys - y) ** 2))
    nx, ny = int(xs[far]), int(ys[far])
    cut, cut_score = seg.decode_clicks(np.array([[x, y], [nx, ny]]), np.array([1, 0]))
    keep = (xs - x) ** 2 + (ys - y) ** 2 <= (xs - nx) ** 2 + (ys - ny) ** 2
    expected = np.zeros_like(mask)
    expected[ys[keep], xs[keep]] = True
    assert np.array_equal(cut, expected)
    assert not cut[ny, nx] and cut[int(round(y)), int(round(x))]
    assert 0 < cut.sum() < mask.sum()
    assert 0.0 <= cut_score <= 1.0
    # Order does not matter, and negative clicks alone give nothing.
    again, _ = seg.decode_clicks(np.array([[nx, ny], [x, y]]), np.array([0, 1]))
    assert np.array_equal(again, cut)
    empty, s0 = seg.decode_clicks(np.array([[nx, ny]]), np.array([0]))
    assert not empty.any() and s0 == 0.0


def test_bad_clicks_are_clear_errors(seg):
    with pytest.raises(ValueError, match=r"outside the 320x240 image"):
        seg.decode_clicks(np.array([[320.0, 10.0]]), np.array([1]))
    with pytest.raises(ValueError, match="1 .positive. or 0 .negative."):
        seg.decode_clicks(np.array([[10.0, 10.0]]), np.array([2]))
    with pytest.raises(ValueError, match="2 click points but 1 labels"):
        seg.decode_clicks(np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([1]))
    with pytest.raises(RuntimeError, match="set_frame"):
        GeometricSegmenter().decode_clicks(np.array([[1.0, 1.0]]), np.array([1]))


def test_interactive_loop_with_the_weights_free_segmenter(scene, seg):
    user = GeometricClicks(seg)
    ids = object_ids(scene.label, 200)
    assert ids
    results = [run_object(user, scene.label == i, Protocol(10, 0.85), None, "s", i) for i in ids]
    # Every click is the protocol's: the first is positive; IoUs are in [0, 1].
    for r in results:
        assert r.clicks[0].positive and all(0.0 <= v <= 1.0 for v in r.ious)
        assert len(r.ious) == len(r.clicks) <= 10
    # The rendered objects stand on the table: most are segmented well within a few clicks.
    reached = [r for r in results if r.ious[-1] >= 0.85]
    assert len(reached) >= len(results) // 2

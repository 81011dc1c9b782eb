"""Overlay drawing: colours, tints, boundaries, prompt markers, depth/heatmap colouring, PNG I/O."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from uois_sam_ros.core.eval.visualize import (
    colorize_labels,
    depth_to_rgb,
    heatmap_to_rgb,
    overlay_instances,
    save_png,
)
from uois_sam_ros.core.types import Prompts


def test_colours_distinct_deterministic_and_zero_black():
    lab = np.arange(31, dtype=np.int32).reshape(1, 31)
    a = colorize_labels(lab)
    assert a.shape == (1, 31, 3) and a.dtype == np.uint8
    assert (a[0, 0] == 0).all()
    cols = {tuple(c) for c in a[0, 1:]}
    assert len(cols) == 30  # all distinct
    assert all(max(c) > 100 for c in cols)  # none close to black
    # The colour depends only on the id, not on which other ids are present.
    b = colorize_labels(np.array([[7, 0], [3, 3]], np.uint16))
    assert (b[0, 0] == a[0, 7]).all() and (b[1, 0] == a[0, 3]).all() and (b[0, 1] == 0).all()
    with pytest.raises(ValueError, match="integer"):
        colorize_labels(np.zeros((2, 2), np.float32))


def test_overlay_tints_instances_only():
    rgb = np.full((40, 50, 3), 100, np.uint8)
    lab = np.zeros((40, 50), np.int32)
    lab[10:30, 10:20] = 1
    lab[10:30, 30:45] = 2
    out = overlay_instances(rgb, lab, alpha=0.5, boundaries=False)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[lab == 0] == 100).all()  # background untouched
    col = colorize_labels(lab)
    expect = np.round(0.5 * 100 + 0.5 * col[15, 15].astype(float))
    assert np.allclose(out[15, 15], expect, atol=1)
    assert not np.array_equal(out[15, 15], out[15, 35])
    with_b = overlay_instances(rgb, lab, boundaries=True)
    assert (with_b[10, 15] == 255).all()  # top edge of instance 1 is outlined
    assert (with_b[20, 15] == out[20, 15]).all()  # interior unchanged
    assert (with_b[lab == 0] == 100).all()
    with pytest.raises(ValueError, match="does not match"):
        overlay_instances(rgb, lab[:-1])


def test_prompt_markers_at_given_pixels():
    rgb = np.full((60, 80, 3), 128, np.uint8)
    lab = np.zeros((60, 80), np.int32)
    p = Prompts(np.array([[20, 30], [60, 15]]), [1, 0], [0.9, 0.5])
    out = overlay_instances(rgb, lab, prompts=p)
    assert tuple(out[30, 20]) == (0, 255, 0)  # foreground: green, in RGB order
    assert tuple(out[15, 60]) == (255, 0, 0)  # background: red
    assert (out[45, 40] == 128).all()  # away from the markers nothing changes
    assert np.array_equal(overlay_instances(rgb, lab, prompts=Prompts.empty()), rgb)


def test_depth_and_heatmap_colouring():
    d = np.tile(np.linspace(0.5, 2.0, 64, dtype=np.float32), (8, 1))
    d[0, 0] = np.nan
    d[0, 1] = 0.0
    out = depth_to_rgb(d)
    assert out.shape == (8, 64, 3) and out.dtype == np.uint8
    assert (out[0, :2] == 0).all()  # invalid is black
    assert not np.array_equal(out[4, 2], out[4, 60])  # near and far differ
    assert (depth_to_rgb(np.zeros((4, 4), np.float32)) == 0).all()
    h = heatmap_to_rgb(np.array([[0.0, 0.5, 1.0, 7.0]], np.float32))
    assert h.shape == (1, 4, 3) and h.dtype == np.uint8
    assert h[0, 2].sum() > h[0, 1].sum() > h[0, 0].sum()
    assert np.array_equal(h[0, 3], h[0, 2])  # clipped to 1


def test_save_png_rgb_order(tmp_path):
    img = np.zeros((5, 6, 3), np.uint8)
    img[..., 0] = 255  # pure red in RGB
    path = save_png(tmp_path / "a" / "b" / "x.png", img)
    back = cv2.imread(str(path))
    assert back.shape == (5, 6, 3)
    assert (back[..., 2] == 255).all() and (back[..., 0] == 0).all()  # BGR on disk = red
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "y.png", img.astype(np.float32))

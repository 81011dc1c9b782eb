"""The interactive-segmentation loop: a simulated user clicks one object until its mask is good
enough or the click budget is spent, while the segmenter (and its adapter) sees every click.

Two click segmenters share one small interface (set_frame, begin_object, click, end_object):
SAM through a DecoderAdapter (any test-time adaptation configuration, "none" included), and
the weights-free geometric segmenter (no decoder, so no adaptation), which takes positive and
negative clicks through GeometricSegmenter.decode_clicks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

import numpy as np

from uois_sam_ros.core.adapt.adaptation import DecoderAdapter, ImageContext, Prediction
from uois_sam_ros.core.adapt.clicks import Click, Protocol, mask_iou, next_click
from uois_sam_ros.core.types import Frame


class ClickSegmenter(TypingProtocol):
    """A promptable segmenter driven click by click for one object at a time."""

    name: str

    def set_frame(self, frame: Frame) -> None:
        """Per-frame work, once (SAM: the image embedding)."""

    def begin_object(self, class_name: str | None) -> None:
        """A new object starts (R adaptation remembers the weights here)."""

    def click(self, clicks: Sequence[Click]) -> np.ndarray:
        """The (H, W) bool mask after all of this object's clicks so far (the last one is new)."""

    def end_object(self) -> None:
        """The user is done with the object (R resets, RM / CM adapt)."""


class SamClicks:
    """SAM with a DecoderAdapter as a ClickSegmenter. set_frame encodes the frame; several
    instances can share one encoding through use_context (one embedding, many configurations).
    mask_prompt: feed the previous mask's low-res logits back with each click (SAM's usual
    interactive use); off, every click decodes from the clicks alone."""

    def __init__(self, segmenter, adapter: DecoderAdapter, mask_prompt: bool = True) -> None:
        self.segmenter = segmenter  # a SamSegmenter (owns the SamPredictor that encodes)
        self.adapter = adapter
        self.mask_prompt = bool(mask_prompt)
        self.name = getattr(segmenter, "name", "sam")
        self.ctx: ImageContext | None = None
        self._class: str | None = None
        self._last: Prediction | None = None
        self.losses: list[float] = []  # losses before each step (click and after-object steps)

    def set_frame(self, frame: Frame) -> None:
        self.segmenter.set_frame(frame)
        self.use_context(ImageContext.from_predictor(self.segmenter.predictor, frame.stamp))

    def use_context(self, ctx: ImageContext) -> None:
        self.ctx = ctx

    def begin_object(self, class_name: str | None) -> None:
        if self.ctx is None:
            raise RuntimeError("call set_frame (or use_context) before the first object")
        self._class = class_name
        self._last = None
        self.adapter.begin_object(class_name)

    def click(self, clicks: Sequence[Click]) -> np.ndarray:
        prev = self._last.lowres if (self._last is not None and self.mask_prompt) else None
        pred = self.adapter.predict(self.ctx, clicks, prev, self._class, grad=self.adapter.click_grad())
        loss = self.adapter.after_click(self.ctx, pred, self._class)
        if loss is not None:
            self.losses.append(loss)
            pred.logits = pred.logits.detach()  # the graph is spent
        self._last = pred
        return pred.mask

    def end_object(self) -> None:
        loss = self.adapter.end_object(self.ctx, self._last, self._class)
        if loss is not None:
            self.losses.append(loss)
        self._last = None


class GeometricClicks:
    """The weights-free GeometricSegmenter as a ClickSegmenter (it needs depth and intrinsics)."""

    def __init__(self, segmenter) -> None:
        self.segmenter = segmenter  # a GeometricSegmenter
        self.name = "weights_free"
        self.losses: list[float] = []

    def set_frame(self, frame: Frame) -> None:
        self.segmenter.set_frame(frame)

    def begin_object(self, class_name: str | None) -> None:
        pass

    def click(self, clicks: Sequence[Click]) -> np.ndarray:
        pts = np.array([[c.x, c.y] for c in clicks], np.float32)
        labels = np.array([1 if c.positive else 0 for c in clicks], np.int64)
        return self.segmenter.decode_clicks(pts, labels)[0]

    def end_object(self) -> None:
        pass


@dataclass
class ObjectResult:
    """One object's interaction: the IoU after each click (it stops at the protocol's threshold)."""

    image: str
    instance: int
    class_name: str | None
    area: int
    ious: list[float]
    clicks: list[Click]
    seconds: float
    extra: dict = field(default_factory=dict)


def run_object(seg: ClickSegmenter, gt: np.ndarray, protocol: Protocol, class_name: str | None = None,
               image: str = "", instance: int = 0) -> ObjectResult:
    """Click the object gt with the simulated user until IoU >= protocol.threshold or
    protocol.max_clicks clicks; the result mask is the last one. gt must not be empty."""
    gt = np.asarray(gt, bool)
    if not gt.any():
        raise ValueError(f"{image} instance {instance}: empty ground-truth mask")
    t0 = time.perf_counter()
    seg.begin_object(class_name)
    clicks: list[Click] = []
    ious: list[float] = []
    pred = np.zeros_like(gt)
    try:
        for _ in range(protocol.max_clicks):
            c = next_click(gt, pred, clicks)
            if c is None:  # nothing left to click: the mask stays as it is
                break
            clicks.append(c)
            pred = np.asarray(seg.click(clicks), bool)
            ious.append(mask_iou(pred, gt))
            if ious[-1] >= protocol.threshold:
                break
    finally:
        seg.end_object()
    return ObjectResult(image, int(instance), class_name, int(gt.sum()), ious, clicks, time.perf_counter() - t0)


def object_ids(label: np.ndarray, min_area: int = 0) -> list[int]:
    """The instance ids of a label map (0 = background) with at least min_area pixels, ascending."""
    ids, counts = np.unique(np.asarray(label), return_counts=True)
    return [int(i) for i, n in zip(ids, counts) if i != 0 and n >= max(1, min_area)]


def shifted_scene_config(width: int = 640, height: int = 480):
    """Synthetic scenes off the small SAM's training distribution (the generator's defaults):
    irregular and round object families only, every object textured, half of them camouflaged
    against the table, see-through objects in half the scenes, dim warm light, under-exposure,
    strong sensor noise and blur. A pure function of the seed, like every synthetic scene."""
    from uois_sam_ros.core.data.synthetic import SceneConfig

    return SceneConfig(
        width=width, height=height, min_objects=3, max_objects=8,
        shapes=("bowl", "mug", "blob", "hull", "bag", "plate", "lid", "cutlery", "marker", "sphere"),
        object_texture_prob=1.0, camouflage_prob=0.5, transparent_prob=0.5, transparent_fraction=0.5,
        ambient=(0.1, 0.3), colour_temp_k=(2200.0, 3200.0), exposure=(0.55, 0.8),
        image_noise=(0.02, 0.04), blur_px=(1.0, 1.8))

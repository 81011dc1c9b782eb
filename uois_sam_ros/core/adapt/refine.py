"""Interactive refinement of a recent frame from clicks: the ROS-free half of the segmentation
node's ``~/refine`` service (test-time adaptation, DESIGN.md section 6).

Right after ``UOISPipeline.run`` the node hands every frame to ``Refiner.add``: the frame, its
instances and, when SAM encoded it, its image embedding (an ImageContext) go into a bounded cache
keyed by the frame's stamp in integer nanoseconds (exact, as ROS stamps are). A request names a
cached stamp, the clicks on one object so far (oldest first), the instance they correct (0 = an
object the frame's instances missed) and a class name (the decoder copy that adapts).

SAM: the clicks are decoded on the cached embedding, never encoded again, through a
DecoderAdapter with the configured adaptation: a step after every click (R / C) and one after the
object (U / E / CM). A request carries all clicks so far, so an object stays *open* while the next
request extends its clicks (same stamp, class and instance): only the new clicks are decoded and
adapted, as in the paper's loop, instead of replaying (and re-adapting on) the old ones. The
object ends (R restores the weights, the RM / CM step runs, the class's decoder is written to
decoder_dir) when a request for another object arrives, its frame leaves the cache, the
configuration or the model changes, or ``finish`` is called (the node: on deactivate).

The weights-free segmenter has no decoder: each request decodes all its clicks with
GeometricSegmenter.decode_clicks on the frame's regions (negative clicks cut).

The refined instance replaces the one it corrects (or is appended) and the frame's instances are
sorted by score again, so instance ids stay "1..N in descending score" as InstanceArray says;
the result says the refined instance's new id.

Thread safety: the adapter decodes through functional_call, which swaps parameters into the SAM
model that the pipeline also runs, so ``lock`` must be held around ``UOISPipeline.run`` (the node's
worker does); every method here takes it.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from uois_sam_ros.core.adapt.adaptation import (
    DecoderAdapter,
    ImageContext,
    Prediction,
    adapt_spec,
    adapts,
    check_adapt_config,
)
from uois_sam_ros.core.adapt.clicks import Click
from uois_sam_ros.core.config import AdaptConfig
from uois_sam_ros.core.types import Frame, Instances
from uois_sam_ros.core.weights import CheckpointError

NS = 1_000_000_000
SHARED_FILE = "shared.pt"  # decoder_dir file of the shared decoder (requests without a class name)


class RefineError(ValueError):
    """A request that cannot be served; the message says why and what would work."""


def stamp_text(stamp_ns: int) -> str:
    """'12.000000345': seconds with all nine nanosecond digits, as ROS stamps are exact."""
    return f"{int(stamp_ns) // NS}.{int(stamp_ns) % NS:09d}"


def decoder_file(directory: str | Path, class_key: str) -> Path:
    """Where a class's adapted decoder lives in decoder_dir: shared.pt for the shared decoder,
    class-<name, percent-encoded>.pt for a class, so any name is one safe file name."""
    return Path(directory) / (SHARED_FILE if not class_key else f"class-{quote(class_key, safe='')}.pt")


def sort_by_score(inst: Instances) -> tuple[Instances, np.ndarray]:
    """inst in descending score order (stable) and the order used (new position -> old index)."""
    order = np.argsort(-inst.scores, kind="stable")
    out = Instances(inst.masks[order], inst.scores[order], sam_iou=inst.sam_iou[order],
                    prompts=inst.prompts[order], stamp=inst.stamp, timings=dict(inst.timings))
    return out, order


@dataclass
class CachedFrame:
    """One processed frame, as kept for requests."""

    stamp_ns: int
    frame: Frame
    instances: Instances  # descending score: instance id k is row k - 1
    context: ImageContext | None = None  # SAM's embedding of the frame (None: not encoded yet)
    geometric: Any = None  # a GeometricSegmenter holding this frame's regions (weights-free)
    meta: Any = None  # the caller's own data (the node: the colour header)


@dataclass
class RefineResult:
    """A served request: the frame's instances with the refined one, and where it is."""

    entry: CachedFrame
    instances: Instances  # == entry.instances, sorted by descending score
    index: int  # row of the refined instance; its id is index + 1
    mask: np.ndarray  # (H, W) bool
    score: float  # SAM's predicted IoU, or the geometric segmenter's confidence
    decoded: int  # clicks decoded for this request (only the new ones while the object is open)
    continued: bool  # the request extended the open object

    @property
    def instance_id(self) -> int:
        return self.index + 1


@dataclass
class _OpenObject:
    """The object being clicked (SAM): its clicks so far, its last prediction, its instance row."""

    stamp_ns: int
    class_name: str
    ctx: ImageContext
    ids: set[int]
    index: int | None
    clicks: tuple[Click, ...] = ()
    last: Prediction | None = None
    losses: list[float] = field(default_factory=list)


def _pixel(x: float, y: float, positive: bool, width: int, height: int, i: int) -> Click:
    """A request click as a core Click on the nearest pixel centre; RefineError when outside the
    image (pixel centres are at integer coordinates, so x must lie in [-0.5, width - 0.5))."""
    x, y = float(x), float(y)
    if not (math.isfinite(x) and math.isfinite(y) and -0.5 <= x < width - 0.5 and -0.5 <= y < height - 0.5):
        raise RefineError(f"click {i + 1} at ({x:g}, {y:g}) is outside the {width}x{height} image "
                          f"(x in [-0.5, {width - 0.5:g}), y in [-0.5, {height - 0.5:g}))")
    return Click(int(math.floor(x + 0.5)), int(math.floor(y + 0.5)), bool(positive))


class Refiner:
    """The cache of recent frames, the decoder adapter, and the request logic (see the module doc).

    capacity: frames kept (0 = none, every request fails with the reason). decoder_dir: adapted
    decoders are loaded from it when a SAM is bound and written to it after each adapted object
    (None = in memory only). logger: anything with .info / .warning (the node's logger).
    """

    def __init__(self, capacity: int = 5, cfg: AdaptConfig | None = None, decoder_dir: str | Path | None = None,
                 logger: Any = None) -> None:
        self.lock = threading.RLock()
        self.capacity = max(0, int(capacity))
        self.cfg = check_adapt_config(cfg or AdaptConfig())
        self.decoder_dir = Path(decoder_dir) if decoder_dir else None
        self.log = logger or logging.getLogger(__name__)
        self.pipeline: Any = None
        self.adapter: DecoderAdapter | None = None
        self._frames: OrderedDict[int, CachedFrame] = OrderedDict()
        self._open: _OpenObject | None = None
        self.requests = 0  # requests received, served or not
        self.objects = 0  # SAM objects ended (their after-object step done)

    # ------------------------------------------------------------------ state
    @property
    def stamps(self) -> list[int]:
        """The cached stamps (ns), oldest first."""
        with self.lock:
            return list(self._frames)

    def entry(self, stamp_ns: int) -> CachedFrame | None:
        with self.lock:
            return self._frames.get(int(stamp_ns))

    @property
    def open_object(self) -> tuple[int, str, int] | None:
        """(stamp ns, class name, clicks) of the open SAM object, or None."""
        op = self._open
        return None if op is None else (op.stamp_ns, op.class_name, len(op.clicks))

    @property
    def mode(self) -> str:
        """'weights_free', or the adaptation as a table row ('none', 'R+E+CM', ...)."""
        if self.pipeline is not None and self.adapter is None:
            return "weights_free"
        return adapt_spec(self.cfg)

    # ------------------------------------------------------------------ the pipeline
    def bind(self, pipeline: Any) -> None:
        """Serve requests with this UOISPipeline's segmenter. Another pipeline object (new weights)
        ends the open object and drops the cache and the adapter (a SAM gets a new one, with the
        decoders of decoder_dir loaded); the same one again changes nothing."""
        with self.lock:
            if pipeline is self.pipeline:
                return
            self.finish()
            self._frames.clear()
            self.pipeline, self.adapter = pipeline, None
            if pipeline is not None and self._is_sam(pipeline):
                self.adapter = self._make_adapter(pipeline.segmenter.model)

    @staticmethod
    def _is_sam(pipeline: Any) -> bool:
        return getattr(pipeline, "method", "") != "weights_free" and hasattr(pipeline.segmenter, "predictor")

    def _make_adapter(self, model: Any) -> DecoderAdapter:
        adapter = DecoderAdapter(model, self.cfg)
        d = self.decoder_dir
        if d is not None and d.is_dir():
            for path in sorted(d.glob("*.pt")):
                try:
                    key = adapter.load(path)
                except (CheckpointError, ValueError, OSError) as e:
                    self.log.warning(f"adapted decoder {path} not loaded: {e}")
                    continue
                self.log.info(f"adapted decoder of {_class_text(key)} loaded from {path}")
        return adapter

    def set_config(self, cfg: AdaptConfig) -> None:
        """New adaptation modes from the next object on (the open one ends first). The learning
        rate of decoder copies that exist already stays as it was."""
        cfg = check_adapt_config(cfg)
        with self.lock:
            self.finish()
            self.cfg = cfg
            if self.adapter is not None:
                self.adapter.cfg = cfg

    def set_capacity(self, capacity: int) -> None:
        with self.lock:
            self.capacity = max(0, int(capacity))
            self._trim()

    def clear(self) -> None:
        """End the open object and forget the frames, the pipeline and the adapter (cleanup)."""
        with self.lock:
            self.finish()
            self._frames.clear()
            self.pipeline = self.adapter = None

    # ------------------------------------------------------------------ frames
    def _encoded(self) -> bool:
        """Whether the last UOISPipeline.run set the segmenter to its frame: the pipeline skips the
        segmenter's per-frame step (SAM's encoder) when a frame has no prompt, unless HPG itself
        ran on SAM's embedding."""
        p = self.pipeline
        if len(p.last_prompts) > 0:
            return True
        hpg = getattr(p, "hpg", None)
        return self.adapter is not None and hpg is not None and bool(hpg.needs_sam_embedding)

    def add(self, stamp_ns: int, frame: Frame, instances: Instances, meta: Any = None) -> CachedFrame | None:
        """Keep a frame the bound pipeline just ran on (call it under ``lock``, right after run,
        before the segmenter sees another frame). The oldest frame beyond capacity is dropped."""
        with self.lock:
            if self.capacity <= 0 or self.pipeline is None:
                return None
            stamp_ns = int(stamp_ns)
            ctx = geo = None
            if self._encoded():
                if self.adapter is not None:
                    ctx = ImageContext.from_predictor(self.pipeline.segmenter.predictor, frame.stamp)
                else:
                    # set_frame rebinds (never mutates) the segmenter's regions: a shallow copy keeps this frame's
                    geo = copy.copy(self.pipeline.segmenter)
            if self._open is not None and self._open.stamp_ns == stamp_ns:
                self.finish()  # the same stamp again (a looping bag): its rows are not the open object's
            entry = CachedFrame(stamp_ns, frame, sort_by_score(instances)[0], ctx, geo, meta)
            self._frames[stamp_ns] = entry
            self._frames.move_to_end(stamp_ns)
            self._trim()
            return entry

    def _trim(self) -> None:
        while len(self._frames) > self.capacity:
            old, _ = self._frames.popitem(last=False)
            if self._open is not None and self._open.stamp_ns == old:
                self.finish()

    def _entry(self, stamp_ns: int) -> CachedFrame:
        entry = self._frames.get(stamp_ns)
        if entry is not None:
            return entry
        if self.capacity <= 0:
            raise RefineError("refinement is off: no frame is kept (refine_frames is 0)")
        have = ", ".join(stamp_text(s) for s in self._frames) or "none yet"
        raise RefineError(f"no cached frame at stamp {stamp_text(stamp_ns)}: the last {self.capacity} frames "
                          f"are kept, cached stamps (oldest first): {have}")

    # ------------------------------------------------------------------ requests
    def refine(self, stamp_ns: int, clicks: Sequence[tuple[float, float, bool]], instance_id: int = 0,
               class_name: str = "") -> RefineResult:
        """Serve one request: clicks are (x, y, positive) in pixels, oldest first. RefineError
        (nothing changes) for an unknown stamp, no click, a click outside the image, an unknown
        instance id, or a class beyond adapt.max_classes; RefineError after decoding when the
        clicks give an empty mask (the object stays open, so a further click can fix it)."""
        with self.lock:
            self.requests += 1
            if self.pipeline is None:
                raise RefineError("no model is loaded (the node is not configured)")
            stamp_ns, instance_id, class_name = int(stamp_ns), int(instance_id), str(class_name or "")
            entry = self._entry(stamp_ns)
            if len(clicks) == 0:
                raise RefineError("no click: a request needs at least one click on the object")
            h, w = entry.frame.height, entry.frame.width
            pts = tuple(_pixel(x, y, pos, w, h, i) for i, (x, y, pos) in enumerate(clicks))
            op = self._open
            continued = (self.adapter is not None and op is not None and op.stamp_ns == stamp_ns
                         and op.class_name == class_name and instance_id in op.ids
                         and pts[:len(op.clicks)] == op.clicks)
            if not continued:
                n = len(entry.instances)
                if instance_id != 0 and not 1 <= instance_id <= n:
                    ids = f"ids 1..{n}" if n else "no instance"
                    raise RefineError(f"unknown instance id {instance_id}: the frame at {stamp_text(stamp_ns)} has "
                                      f"{ids} (0 = an object it missed)")
            if self.adapter is None:
                return self._refine_geometric(entry, pts, instance_id)
            return self._refine_sam(entry, pts, instance_id, class_name, continued)

    def _refine_sam(self, entry: CachedFrame, pts: tuple[Click, ...], instance_id: int, class_name: str,
                    continued: bool) -> RefineResult:
        ad = self.adapter
        name = class_name or None
        if continued:
            op = self._open
        else:
            key = ad.class_key(name)
            if adapts(self.cfg) and key not in ad.classes and len(ad.classes) >= self.cfg.max_classes:
                raise RefineError(f"adapt.max_classes={self.cfg.max_classes} decoder copies are held "
                                  f"({', '.join(_class_text(c) for c in ad.classes)}); cannot add "
                                  f"{_class_text(key)}")
            self.finish()
            if entry.context is None:  # the pipeline skipped the encoder (no prompt): the first encoding
                self.pipeline.segmenter.set_frame(entry.frame)
                entry.context = ImageContext.from_predictor(self.pipeline.segmenter.predictor, entry.frame.stamp)
            ad.begin_object(name)
            op = self._open = _OpenObject(entry.stamp_ns, class_name, entry.context, {instance_id},
                                          None if instance_id == 0 else instance_id - 1)
        start = len(op.clicks)
        grad = ad.click_grad()
        for i in range(start, len(pts)):
            prev = op.last.lowres if op.last is not None else None
            pred = ad.predict(op.ctx, pts[:i + 1], prev, name, grad=grad)
            loss = ad.after_click(op.ctx, pred, name)
            if loss is not None:
                op.losses.append(loss)
                pred.logits = pred.logits.detach()  # the graph is spent
            op.last, op.clicks = pred, pts[:i + 1]
        last = op.last
        if not last.mask.any():
            raise RefineError(f"the {len(pts)} click(s) give an empty mask; add a positive click on the object")
        result = self._store(entry, op.index, last.mask, last.score, last.score, pts, len(pts) - start, continued)
        op.index = result.index
        op.ids = {instance_id, result.instance_id}
        return result

    def _refine_geometric(self, entry: CachedFrame, pts: tuple[Click, ...], instance_id: int) -> RefineResult:
        seg = entry.geometric
        if seg is None:  # the pipeline found no prompt on this frame: its regions now, once
            from uois_sam_ros.core.segment.geometric import GeometricSegmenter

            seg = GeometricSegmenter(self.pipeline.config.geometric)
            seg.set_frame(entry.frame)
            entry.geometric = seg
        points = np.array([[c.x, c.y] for c in pts], np.float32)
        labels = np.array([1 if c.positive else 0 for c in pts], np.int64)
        mask, conf = seg.decode_clicks(points, labels)
        if not mask.any():
            raise RefineError(f"the {len(pts)} click(s) select no object region: the weights-free segmenter "
                              "needs a positive click on an object standing on the table")
        return self._store(entry, None if instance_id == 0 else instance_id - 1, mask, conf, float("nan"),
                           pts, len(pts), False)

    @staticmethod
    def _store(entry: CachedFrame, index: int | None, mask: np.ndarray, score: float, sam_iou: float,
               pts: tuple[Click, ...], decoded: int, continued: bool) -> RefineResult:
        inst = entry.instances
        first = next((c for c in pts if c.positive), pts[0])
        masks, scores = inst.masks.copy(), inst.scores.copy()
        ious, prompts = inst.sam_iou.copy(), inst.prompts.copy()
        if index is None:
            index = len(inst)
            masks = np.concatenate([masks, mask[None]], 0)
            scores, ious = np.append(scores, np.float32(score)), np.append(ious, np.float32(sam_iou))
            prompts = np.concatenate([prompts, np.array([[first.x, first.y]], np.float32)], 0)
        else:
            masks[index], scores[index], ious[index] = mask, score, sam_iou
            prompts[index] = (first.x, first.y)
        out, order = sort_by_score(Instances(masks, scores, sam_iou=ious, prompts=prompts, stamp=inst.stamp,
                                             timings=dict(inst.timings)))
        entry.instances = out
        new = int(np.flatnonzero(order == index)[0])
        return RefineResult(entry, out, new, np.asarray(mask, bool), float(score), int(decoded), continued)

    def finish(self) -> float | None:
        """End the open SAM object: R restores the class's weights, then the RM / CM step; the
        class's decoder is written to decoder_dir when the configuration adapts. Returns that
        step's loss before it (None: no open object, or no step)."""
        with self.lock:
            op, self._open = self._open, None
            if op is None or self.adapter is None:
                return None
            name = op.class_name or None
            loss = self.adapter.end_object(op.ctx, op.last, name)
            self.objects += 1
            if self.decoder_dir is not None and adapts(self.cfg):
                self.save(name)
            return loss

    def save(self, class_name: str | None = None) -> Path | None:
        """Write a class's decoder to decoder_dir; None (with a warning) when that fails."""
        if self.adapter is None or self.decoder_dir is None:
            return None
        key = self.adapter.class_key(class_name)
        path = decoder_file(self.decoder_dir, key)
        try:
            return self.adapter.save(path, class_name, meta={"adaptation": adapt_spec(self.cfg)})
        except OSError as e:
            self.log.warning(f"adapted decoder of {_class_text(key)} not saved to {path}: {e}")
            return None


def _class_text(key: str) -> str:
    return f"class {key!r}" if key else "the shared decoder"

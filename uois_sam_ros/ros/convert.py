"""core types <-> ROS messages: the only place where the nodes' data changes form.

Every conversion here has an exact inverse, so a result can cross the graph (or a bag)
and come back equal; `instance_arrays_diff` names every field that does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest
from std_msgs.msg import Header

from uois_sam_ros.core.types import Frame, FrameError, Instances, Intrinsics
from uois_sam_ros.core.types import Prompts as CorePrompts
from uois_sam_ros.msg import Instance, InstanceArray
from uois_sam_ros.msg import Prompt as PromptMsg
from uois_sam_ros.msg import Prompts as PromptsMsg
from uois_sam_ros.ros.image import ImageConversionError, image_to_numpy, numpy_to_image, paste_crop, to_rgb

# ---------------------------------------------------------------------------------- time


def stamp_to_sec(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    """Nearest-nanosecond Time; round-trips stamp_to_sec for any stamp a camera produces."""
    if not math.isfinite(t):
        raise ValueError(f"stamp must be a finite number of seconds, got {t}")
    sec = math.floor(t)
    nsec = int(round((t - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return Time(sec=int(sec), nanosec=nsec)


def same_stamp(a: Time, b: Time) -> bool:
    """Exact equality: synchronisation matches by stamp, never by float seconds."""
    return a.sec == b.sec and a.nanosec == b.nanosec


def make_header(stamp: float | Time, frame_id: str) -> Header:
    return Header(stamp=copy_stamp(stamp) if isinstance(stamp, Time) else sec_to_stamp(stamp), frame_id=frame_id)


def copy_stamp(stamp: Time) -> Time:
    return Time(sec=stamp.sec, nanosec=stamp.nanosec)


def copy_header(header: Header) -> Header:
    """A fresh Header: rclpy messages hold references, and a shared one would alias edits."""
    return Header(stamp=copy_stamp(header.stamp), frame_id=header.frame_id)


# ---------------------------------------------------------------------------- instances


def _u8(mask: np.ndarray) -> np.ndarray:
    """A bool (or 0/1 uint8) mask as uint8 without a copy where possible (OpenCV takes uint8)."""
    m = np.asarray(mask)
    return m.view(np.uint8) if m.dtype == bool else (m != 0).view(np.uint8)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (exclusive); all zero for an empty mask. One pass in OpenCV: numpy's
    any() along both axes cost about 1 ms per 640x480 mask, per instance, per frame."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(_u8(mask)))
    if w == 0 or h == 0:
        return 0, 0, 0, 0
    return int(x), int(y), int(x + w), int(y + h)


def _area(mask: np.ndarray) -> int:
    return int(cv2.countNonZero(np.ascontiguousarray(_u8(mask))))


def _crop_to_msg(mask: np.ndarray, header: Header) -> tuple[RegionOfInterest, Image]:
    x0, y0, x1, y1 = _tight_box(mask)
    roi = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0, do_rectify=False)
    crop = _u8(mask[y0:y1, x0:x1]) * np.uint8(255)  # 0 / 255
    return roi, numpy_to_image(crop, "mono8", copy_header(header))


def _paste_from_msg(roi: RegionOfInterest, img: Image, height: int, width: int, what: str) -> np.ndarray:
    """Full-size bool mask from an roi-cropped mono8 mask; error names the instance field."""
    try:
        crop = image_to_numpy(img, expected_encoding="mono8")
    except ImageConversionError as e:
        raise ValueError(f"{what}: {e}") from e
    if crop.shape != (roi.height, roi.width):
        raise ValueError(f"{what}: mask is {crop.shape[1]}x{crop.shape[0]} but its roi is "
                         f"{roi.width}x{roi.height}")
    return paste_crop(crop, roi.x_offset, roi.y_offset, height, width, what)


def _f32(x: float) -> float:
    """The value a float32 field holds after transport, so sent and received messages compare equal."""
    return float(np.float32(x))


def _sorted_by_score(inst: Instances) -> Instances:
    order = np.argsort(-inst.scores, kind="stable")
    if np.array_equal(order, np.arange(len(inst))):
        return inst

    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a)[order]

    return Instances(masks=inst.masks[order], scores=inst.scores[order], sam_iou=pick(inst.sam_iou),
                     prompts=pick(inst.prompts), amodal_masks=pick(inst.amodal_masks),
                     occlusion_rates=pick(inst.occlusion_rates), stamp=inst.stamp, timings=inst.timings)


def instances_to_msg(inst: Instances, header: Header) -> InstanceArray:
    """InstanceArray with ids 1..N in descending score order and a mono16 label map."""
    inst = _sorted_by_score(inst)
    h, w = inst.shape
    if inst.amodal_masks is not None and np.shape(inst.amodal_masks) != inst.masks.shape:
        raise ValueError(f"amodal_masks shape {np.shape(inst.amodal_masks)} does not match masks "
                         f"shape {inst.masks.shape}")
    msg = InstanceArray(header=copy_header(header), height=h, width=w)
    for i in range(len(inst)):
        m = inst.masks[i]
        roi, mask_img = _crop_to_msg(m, header)
        item = Instance(id=i + 1, score=_f32(inst.scores[i]), sam_iou=_f32(inst.sam_iou[i]),
                        prompt_x=_f32(inst.prompts[i, 0]), prompt_y=_f32(inst.prompts[i, 1]),
                        area=_area(m), roi=roi, mask=mask_img, has_amodal=False,
                        occlusion_rate=float("nan"))
        if inst.amodal_masks is not None:
            am = np.asarray(inst.amodal_masks[i], bool)
            item.has_amodal = True
            item.amodal_roi, item.amodal_mask = _crop_to_msg(am, header)
            if inst.occlusion_rates is not None:
                item.occlusion_rate = _f32(inst.occlusion_rates[i])
            else:
                a_area = _area(am)
                item.occlusion_rate = _f32(1.0 - item.area / a_area) if a_area else float("nan")
        msg.instances.append(item)
    msg.label_map = numpy_to_image(inst.label_map(), "mono16", copy_header(header))
    return msg


def msg_to_instances(msg: InstanceArray) -> Instances:
    """Full-size core.Instances from an InstanceArray (inverse of instances_to_msg)."""
    h, w = int(msg.height), int(msg.width)
    n = len(msg.instances)
    if n == 0:
        return Instances.empty(h, w, stamp=stamp_to_sec(msg.header.stamp))
    masks = np.stack([_paste_from_msg(it.roi, it.mask, h, w, f"instance {it.id}") for it in msg.instances])
    amodal = occl = None
    if any(it.has_amodal for it in msg.instances):
        amodal = np.stack([
            _paste_from_msg(it.amodal_roi, it.amodal_mask, h, w, f"instance {it.id} amodal")
            if it.has_amodal else masks[k] for k, it in enumerate(msg.instances)])
        occl = np.array([it.occlusion_rate if it.has_amodal else np.nan for it in msg.instances], np.float32)
    return Instances(
        masks=masks,
        scores=np.array([it.score for it in msg.instances], np.float32),
        sam_iou=np.array([it.sam_iou for it in msg.instances], np.float32),
        prompts=np.array([[it.prompt_x, it.prompt_y] for it in msg.instances], np.float32),
        amodal_masks=amodal, occlusion_rates=occl, stamp=stamp_to_sec(msg.header.stamp))


# ------------------------------------------------------------------------------ prompts


def prompts_to_msg(p: CorePrompts, header: Header, height: int, width: int) -> PromptsMsg:
    """Prompts message sorted by descending score (stable, so ties keep their order)."""
    order = np.argsort(-p.scores, kind="stable")
    msg = PromptsMsg(header=copy_header(header), height=int(height), width=int(width))
    for k in order:
        lab = int(p.labels[k])
        if lab not in (0, 1):
            raise ValueError(f"prompt label must be 1 (foreground) or 0 (background), got {lab}")
        msg.prompts.append(PromptMsg(x=_f32(p.points[k, 0]), y=_f32(p.points[k, 1]), label=lab,
                                     score=_f32(p.scores[k])))
    return msg


def msg_to_prompts(msg: PromptsMsg) -> CorePrompts:
    if not msg.prompts:
        return CorePrompts.empty()
    return CorePrompts(points=np.array([[q.x, q.y] for q in msg.prompts], np.float32),
                       labels=np.array([q.label for q in msg.prompts], np.int64),
                       scores=np.array([q.score for q in msg.prompts], np.float32))


# ---------------------------------------------------------------------------- camera


def intrinsics_to_camera_info(intr: Intrinsics, header: Header) -> CameraInfo:
    """CameraInfo with the camera's distortion model and coefficients, as realsense2_camera publishes.

    No distortion is written as zeros of the model's length (5 for plumb_bob, 4 for equidistant).
    """
    msg = CameraInfo(header=copy_header(header), height=int(intr.height), width=int(intr.width))
    msg.distortion_model = intr.distortion_model or "plumb_bob"
    zeros = {"plumb_bob": 5, "equidistant": 4, "rational_polynomial": 8}.get(msg.distortion_model, 0)
    msg.d = [float(c) for c in intr.distortion] if intr.distortion else [0.0] * zeros
    msg.k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def camera_info_to_intrinsics(msg: CameraInfo) -> Intrinsics:
    k = np.asarray(msg.k, dtype=float)
    if not np.any(k):
        raise FrameError("camera_info K is all zero: the camera is not calibrated (no intrinsics)")
    if not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0:
        raise FrameError(f"camera_info K has invalid focal lengths fx={k[0]}, fy={k[4]}")
    if msg.width == 0 or msg.height == 0:
        raise FrameError(f"camera_info has no image size ({msg.width}x{msg.height})")
    if not all(math.isfinite(c) for c in msg.d):
        raise FrameError(f"camera_info has non-finite distortion coefficients {list(msg.d)}")
    return Intrinsics(fx=float(k[0]), fy=float(k[4]), cx=float(k[2]), cy=float(k[5]),
                      width=int(msg.width), height=int(msg.height),
                      distortion_model=msg.distortion_model or "plumb_bob",
                      distortion=tuple(float(c) for c in msg.d))


def frame_from_msgs(color: Image, depth: Image | None = None, info: CameraInfo | None = None,
                    depth_scale: float = 0.001) -> Frame:
    """A validated core.Frame; raises FrameError naming the first problem.

    depth: 16UC1 / mono16 in units of depth_scale metres (RealSense: millimetres), or
    32FC1 metres. The stamp and frame_id come from the colour image.
    """
    try:
        rgb = to_rgb(color)
    except ImageConversionError as e:
        raise FrameError(f"colour image: {e}") from e
    d = None
    if depth is not None:
        try:
            if depth.encoding in ("16UC1", "mono16"):
                d = image_to_numpy(depth, copy=False).astype(np.float32)  # the one copy: a view, then float
                d *= np.float32(depth_scale)
            elif depth.encoding == "32FC1":
                d = image_to_numpy(depth)
            else:
                raise FrameError(f"depth image encoding {depth.encoding!r} is not supported; "
                                 "expected 16UC1 (millimetres) or 32FC1 (metres)")
        except ImageConversionError as e:
            raise FrameError(f"depth image: {e}") from e
    intr = camera_info_to_intrinsics(info) if info is not None else None
    frame = Frame(rgb=rgb, depth=d, intrinsics=intr, stamp=stamp_to_sec(color.header.stamp),
                  frame_id=color.header.frame_id)
    frame.validate()
    return frame


# --------------------------------------------------------------------------- comparison


def _values_differ(a: object, b: object) -> str | None:
    """None when equal (NaN equals NaN, arrays by content), else a short description."""
    if isinstance(a, float) or isinstance(b, float):
        fa, fb = float(a), float(b)
        if (math.isnan(fa) and math.isnan(fb)) or fa == fb:
            return None
        return f"{a!r} != {b!r}"
    if isinstance(a, (str, bool, int)) and isinstance(b, (str, bool, int)):
        return None if a == b else f"{a!r} != {b!r}"
    xa, xb = np.asarray(a), np.asarray(b)
    if xa.shape != xb.shape:
        return f"length {xa.size} != {xb.size}"
    if xa.dtype.kind == "f" or xb.dtype.kind == "f":
        bad = ~((xa == xb) | (np.isnan(xa.astype(float)) & np.isnan(xb.astype(float))))
    else:
        bad = xa != xb
    if bad.any():
        idx = np.flatnonzero(bad.ravel())
        first = int(idx[0])
        return (f"{idx.size} element(s) differ, first at index {first}: "
                f"{xa.ravel()[first].item()!r} != {xb.ravel()[first].item()!r}")
    return None


def message_diff(a: object, b: object, path: str = "") -> list[str]:
    """Every differing leaf field of two ROS messages, as 'path.to.field: how'."""
    if type(a) is not type(b):
        return [f"{path or '<root>'}: type {type(a).__name__} != {type(b).__name__}"]
    if not hasattr(a, "get_fields_and_field_types"):
        d = _values_differ(a, b)
        return [] if d is None else [f"{path or '<root>'}: {d}"]
    out: list[str] = []
    for name in a.get_fields_and_field_types():
        va, vb = getattr(a, name), getattr(b, name)
        p = f"{path}.{name}" if path else name
        if isinstance(va, Sequence) and not isinstance(va, (str, bytes)) and va and hasattr(va[0], "get_fields_and_field_types"):
            if len(va) != len(vb):
                out.append(f"{p}: length {len(va)} != {len(vb)}")
                continue
            for k, (ea, eb) in enumerate(zip(va, vb)):
                out.extend(message_diff(ea, eb, f"{p}[{k}]"))
        elif isinstance(vb, Sequence) and not isinstance(vb, (str, bytes)) and vb and hasattr(vb[0], "get_fields_and_field_types"):
            out.append(f"{p}: length {len(va)} != {len(vb)}")
        else:
            out.extend(message_diff(va, vb, p))
    return out


def instance_arrays_diff(a: InstanceArray, b: InstanceArray) -> list[str]:
    """Every field (header, each instance's scalars, rois, mask bytes, label map) that differs."""
    return message_diff(a, b)


def assert_instance_arrays_equal(a: InstanceArray, b: InstanceArray) -> None:
    diff = instance_arrays_diff(a, b)
    if diff:
        raise AssertionError("InstanceArray messages differ:\n  " + "\n  ".join(diff))

"""The depth channel of an RGB-D SAM encoder (vit_synth with ``in_chans`` 4).

Why: a small SAM trained here from scratch on rendered scenes sees objects whose random textures
often match the table's, so colour alone leaves their borders ambiguous; the depth step at an
object's border does not. The paper names depth as its next step (UOIS-SAM, Sec. V).

Why this encoding: one uint8 channel stacked behind R, G, B, so the image goes through
segment-anything's own ResizeLongestSide, the trainer's crops and flips, and Sam.preprocess
(normalised with DEPTH_PIXEL_MEAN / DEPTH_PIXEL_STD) exactly like the colour. The value is depth
relative to the frame's median valid depth, DEPTH_STEP_M per level (128 = the median, +-0.5 m
in range), because the camera's height over the table varies between scenes while the steps
between an object and its surroundings do not. Invalid depth (0, NaN, negative) is level 0,
which no valid pixel takes, so holes stay recognisable.
"""

from __future__ import annotations

import cv2
import numpy as np
from segment_anything.utils.transforms import ResizeLongestSide

from uois_sam_ros.core.types import FrameError

DEPTH_STEP_M = 0.004
DEPTH_CENTRE = 128
DEPTH_PIXEL_MEAN = 128.0
DEPTH_PIXEL_STD = 64.0
ENCODER_CHANNELS = (3, 4)


def depth_code(depth: np.ndarray) -> np.ndarray:
    """(H, W) uint8: 1..255 for valid depth (DEPTH_CENTRE at the median), 0 where invalid."""
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 2:
        raise FrameError(f"depth must have shape (H, W), got {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros(d.shape, np.uint8)
    if not valid.any():
        return out
    med = float(np.median(d[valid]))
    lev = np.rint(DEPTH_CENTRE + (d[valid] - med) / DEPTH_STEP_M)
    out[valid] = np.clip(lev, 1, 255).astype(np.uint8)
    return out


def encoder_image(rgb: np.ndarray, depth: np.ndarray | None, in_chans: int) -> np.ndarray:
    """What an encoder with in_chans channels takes: the rgb itself (3), or rgb + depth_code (4)."""
    if in_chans == 3:
        return rgb
    if in_chans != 4:
        raise ValueError(f"SAM encoders here take 3 (RGB) or 4 (RGB-D) channels, not {in_chans}")
    if depth is None:
        raise FrameError("this SAM's encoder takes RGB-D (vit_synth with in_chans 4), but the frame has no depth")
    if depth.shape != rgb.shape[:2]:
        raise FrameError(f"depth size {depth.shape[1]}x{depth.shape[0]} does not match colour size "
                         f"{rgb.shape[1]}x{rgb.shape[0]}")
    return np.ascontiguousarray(np.dstack([rgb, depth_code(depth)]))


def encoder_channels(model: object) -> int:
    """Input channels of a SAM's image encoder (3 for every official SAM and MobileSAM)."""
    enc = getattr(model, "image_encoder", None)
    proj = getattr(getattr(enc, "patch_embed", None), "proj", None)
    return int(getattr(proj, "in_channels", 3))


def resize_longest_side(image: np.ndarray, img_size: int) -> np.ndarray:
    """An encoder image (H, W, 3 or 4) with its longest side at img_size.

    The colour goes through segment-anything's ResizeLongestSide exactly as SamPredictor.set_image
    resizes it. The depth channel is resized on its own, nearest-neighbour: PIL would treat a fourth
    channel as alpha and premultiply the colour by it (black colour at every depth hole), and
    interpolating would blend holes (0) with valid depth into depths that are in neither."""
    rgb = ResizeLongestSide(img_size).apply_image(np.ascontiguousarray(image[..., :3]))
    if image.shape[2] == 3:
        return rgb
    d = cv2.resize(np.ascontiguousarray(image[..., 3]), (rgb.shape[1], rgb.shape[0]),
                   interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(np.dstack([rgb, d]))

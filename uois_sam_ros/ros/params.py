"""The ROS parameter schema of every node: names, types, defaults, descriptions, rules.

One ParamSpec per parameter. The nodes declare exactly these (nodes/common.py), the graph
description checks parameter files against them (ros/graph.py), and the README's parameter
tables are generated from them. The core parameters are one per scalar leaf of the core
Config tree, so a YAML key, a ROS parameter and a README row cannot disagree.

Pure Python: no rclpy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from uois_sam_ros.core.config import Config, field_docs
from uois_sam_ros.core.data.sources import SOURCE_KINDS


class GraphError(ValueError):
    """A parameter file or launch argument that does not fit the graph; the message names it."""


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: name, type (bool|int|double|string), default, meaning, rules."""

    name: str
    type: str
    default: Any
    description: str
    read_only: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None

    @property
    def full_description(self) -> str:
        """What `ros2 param describe` and the README say: the meaning plus the allowed values."""
        desc = self.description
        if self.choices:
            desc += f" (one of {', '.join(map(str, self.choices))})"
        return desc

    def coerce(self, value: Any, where: str) -> Any:
        """The value as this parameter's ROS type; raises GraphError naming where it came from."""
        t = self.type
        if t == "bool" and isinstance(value, bool):
            out: Any = value
        elif t == "int" and isinstance(value, int) and not isinstance(value, bool):
            out = value
        elif t == "double" and isinstance(value, int | float) and not isinstance(value, bool):
            out = float(value)
        elif t == "string" and (isinstance(value, str) or value is None):
            out = "" if value is None else value
        else:
            raise GraphError(f"{where}: parameter {self.name!r} expects a {t}, got {value!r}")
        problem = self.check(out)
        if problem:
            raise GraphError(f"{where}: {problem}")
        return out

    def check(self, value: Any) -> str | None:
        """Why value is not allowed, or None (also used by the nodes' set-parameter callback)."""
        if self.choices and value not in self.choices:
            return f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                return f"parameter {self.name!r} must be finite, got {value!r}"
            if self.min is not None and value < self.min:
                return f"parameter {self.name!r} must be >= {self.min}, got {value!r}"
            if self.max is not None and value > self.max:
                return f"parameter {self.name!r} must be <= {self.max}, got {value!r}"
        return None


_LIFECYCLE: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", "bool", True,
              "configure and activate at start-up (false: wait for the lifecycle services)", True),
)

CAMERA_PARAMS: tuple[ParamSpec, ...] = _LIFECYCLE + (
    ParamSpec("source", "string", "synthetic", "where frames come from", True, choices=SOURCE_KINDS),
    ParamSpec("rate", "double", 5.0, "publish rate, Hz (changeable at run time)", min=0.01, max=1000.0),
    ParamSpec("frame_id", "string", "camera_color_optical_frame", "frame_id of all published headers"),
    ParamSpec("width", "int", 0, "image width (0 = the source's own; RealSense 640)", True, min=0),
    ParamSpec("height", "int", 0, "image height (0 = the source's own; RealSense 480)", True, min=0),
    ParamSpec("seed", "int", 0, "synthetic: seed of the first scene (scene i uses seed + i)", True),
    ParamSpec("count", "int", 0, "synthetic: number of scenes, then stop (0 = endless)", True, min=0),
    ParamSpec("folder", "string", "", "folder: directory with camera.json and NNNN-color.png + NNNN-depth.png (or rgb/ + depth/)",
              True),
    ParamSpec("loop", "bool", True, "folder/dataset: start again after the last frame", True),
    ParamSpec("dataset_kind", "string", "", "dataset: reader name (ocid, osd, ...)", True),
    ParamSpec("dataset_root", "string", "", "dataset: root directory", True),
    ParamSpec("dataset_annotations", "string", "", "dataset: annotation file (COCO-style sets)", True),
    ParamSpec("serial", "string", "", "realsense: device serial number ('' = first device found)", True),
    ParamSpec("fps", "int", 30, "realsense: stream rate, frames per second", True, choices=(6, 15, 30, 60, 90)),
    ParamSpec("spatial_filter", "bool", False, "realsense: edge-preserving spatial depth filter", True),
    ParamSpec("temporal_filter", "bool", False, "realsense: temporal depth filter", True),
    ParamSpec("hole_filling_filter", "bool", False, "realsense: fill depth holes from neighbours", True),
)

_NODE_COMMON: tuple[ParamSpec, ...] = _LIFECYCLE + (
    ParamSpec("depth_scale", "double", 0.001, "metres per unit of 16UC1 depth images (RealSense: 0.001)",
              min=1e-6, max=10.0),
    ParamSpec("sync_slop", "double", 0.0,
              "seconds by which colour, depth, camera_info (and prompts) stamps may differ and still pair "
              "(0 = exact stamps)", True, min=0.0, max=10.0),
)

HPG_PARAMS: tuple[ParamSpec, ...] = _NODE_COMMON + (
    ParamSpec("publish_debug", "bool", True, "publish hpg/foreground and hpg/heatmap debug images"),
)

SEGMENTATION_PARAMS: tuple[ParamSpec, ...] = _NODE_COMMON + (
    ParamSpec("single_node", "bool", False,
              "run the prompt source inside this node (no prompts topic, one hop less)", True),
    ParamSpec("publish_overlay", "bool", True, "publish instances/overlay (rgb8)"),
    ParamSpec("frame_buffer", "int", 30,
              "split mode: frames kept waiting for their prompts (30 = 1 s of a 30 Hz camera; fewer than the "
              "frames the camera sends while hpg works on one, and no frame finds its prompts)", min=1, max=100),
    ParamSpec("refine_frames", "int", 5,
              "~/refine: recent frames kept with their instances and SAM image embedding (0 = no refinement)",
              min=0, max=50),
    ParamSpec("decoder_dir", "string", "",
              "~/refine: folder of the adapted SAM decoders, one file per class name, loaded at configure and "
              "written after each adapted object ('' = kept in memory only)", True),
)

GRASP_PARAMS: tuple[ParamSpec, ...] = _NODE_COMMON + (
    ParamSpec("use_amodal", "bool", False,
              "subscribe to instances/amodal (an InstanceArray with amodal masks) instead of instances", True),
    ParamSpec("frame_buffer", "int", 30, "depth images kept waiting for the instances of their stamp",
              min=1, max=300),
    ParamSpec("camera_to_base", "string", "",
              "hand-eye extrinsic T_base_camera: 16 numbers (row-major 4x4) or 7 (x y z qx qy qz qw); "
              "'' = grasps in the camera frame"),
    ParamSpec("base_frame", "string", "panda_link0", "frame_id of the grasps when camera_to_base or use_tf is set"),
    ParamSpec("use_tf", "bool", False, "take T_base_camera from TF (base_frame <- the instances' frame; "
              "needs tf2_ros)", True),
    ParamSpec("tf_timeout", "double", 0.2, "use_tf: seconds to wait for the transform", min=0.0, max=10.0),
    ParamSpec("publish_markers", "bool", True, "publish grasps/markers (Franka hand models for RViz2)"),
    ParamSpec("markers_per_instance", "int", 1, "grasps per instance drawn in grasps/markers", min=0, max=50),
    ParamSpec("publish_clouds", "bool", False,
              "publish grasps/clouds: the instance point clouds (PointCloud2 with an instance_id field)"),
)

AMODAL_PARAMS: tuple[ParamSpec, ...] = _NODE_COMMON + (
    ParamSpec("publish_overlay", "bool", True, "publish instances/amodal_overlay (rgb8)"),
    ParamSpec("frame_buffer", "int", 10, "frames kept waiting for the instances of their stamp", min=1, max=100),
)

# Core config fields that cannot change at run time. Every other core field can: thresholds
# apply from the next frame, and model paths/types load the new model in the background
# (nodes/inputs.py PipelineHolder). Random weights must never be switched on in a running graph.
# adapt.lr: the decoder copies that exist keep their optimiser, so a new rate would not reach them.
_READ_ONLY_CONFIG = {"sam.allow_random_weights", "adapt.lr"}
_CONFIG_CHOICES = {"sam.model_type": ("vit_h", "vit_l", "vit_b", "vit_t", "vit_synth"),
                   "grasp.backend": ("antipodal", "gsnet"),
                   "amodal.method": ("auto", "completer", "sameo", "amodal_sam", "convex_hull", "visible"),
                   "pipeline.weights_free_prompts": ("geometric", "hpg"),
                   "adapt.click_adaptation": ("none", "R", "C"), "adapt.result_mask": ("none", "U", "E")}


def _ros_type(tp: Any) -> tuple[str, bool] | None:
    """(ROS type, nullable) for a config field type; None when ROS parameters cannot hold it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and args[0] is str:
            return "string", True
        return None
    return {bool: ("bool", False), int: ("int", False), float: ("double", False),
            str: ("string", False)}.get(tp)


# The Config sections of the segmentation graph (hpg, segmentation nodes) and of the grasp node.
SEGMENT_SECTIONS = ("sam", "hpg", "hdnet", "postprocess", "geometric", "pipeline")
GRASP_SECTIONS = ("grasp",)
AMODAL_SECTIONS = ("sam", "amodal")  # the amodal node: its own section, and the SAM that SAMEO / Amodal SAM use


@functools.cache
def config_param_specs(sections: tuple[str, ...] = SEGMENT_SECTIONS) -> tuple[ParamSpec, ...]:
    """One ROS parameter per scalar leaf of the given sections of the core Config tree
    ('sam.checkpoint', 'hpg.top_k', ...; the grasp node: 'grasp.top_n', ...).

    Optional string fields (checkpoints) use '' for None. Cached: the descriptions are read from
    config.py's source (about 10 ms), and the Config tree never changes at run time.
    """
    out = []
    root = Config()
    for sec in dataclasses.fields(Config):
        if sec.name not in sections:
            continue
        sub = getattr(root, sec.name)
        if not dataclasses.is_dataclass(sub):
            continue
        hints = typing.get_type_hints(type(sub))
        docs = field_docs(type(sub))
        for f in dataclasses.fields(sub):
            rt = _ros_type(hints[f.name])
            if rt is None:
                continue
            name = f"{sec.name}.{f.name}"
            default = getattr(sub, f.name)
            if default is None:
                default = ""
            doc = docs.get(f.name) or (type(sub).__doc__ or "").strip().splitlines()[0]
            desc = doc + ("; '' = none" if rt[1] else "")
            out.append(ParamSpec(name, rt[0], default, desc, name in _READ_ONLY_CONFIG,
                                 choices=_CONFIG_CHOICES.get(name, ())))
    return tuple(out)


def params_to_config(values: dict[str, Any]) -> Config:
    """Core Config from flat 'section.key' parameter values ('' -> None for optional strings)."""
    from uois_sam_ros.core.config import config_from_dict

    tree: dict[str, dict] = {}
    nullable = {s.name for s in config_param_specs() + config_param_specs(GRASP_SECTIONS)
                + config_param_specs(AMODAL_SECTIONS) if s.type == "string"}
    for k, v in values.items():
        if "." not in k:
            continue
        sec, key = k.split(".", 1)
        if k in nullable and v == "":
            opt = _ros_type(typing.get_type_hints(type(getattr(Config(), sec)))[key])
            v = None if opt and opt[1] else v
        tree.setdefault(sec, {})[key] = v
    return config_from_dict(tree)


# The segmentation node's ~/refine service adapts SAM's mask decoder from clicks (core/adapt): the
# adapt.* parameters are that node's alone, so they join its own list (and its README table).
ADAPT_SECTIONS = ("adapt",)
SEGMENTATION_PARAMS = SEGMENTATION_PARAMS + config_param_specs(ADAPT_SECTIONS)

NODE_PARAMS: dict[str, tuple[ParamSpec, ...]] = {
    "camera": CAMERA_PARAMS,
    "hpg": HPG_PARAMS + config_param_specs(),
    "segmentation": SEGMENTATION_PARAMS + config_param_specs(),
    "grasp": GRASP_PARAMS + config_param_specs(GRASP_SECTIONS),
    "amodal": AMODAL_PARAMS + config_param_specs(AMODAL_SECTIONS),
}


def param_specs(kind: str) -> dict[str, ParamSpec]:
    return {p.name: p for p in NODE_PARAMS[kind]}


def param_table(specs: Iterable[ParamSpec]) -> str:
    """The README's markdown table of parameters; a test keeps the README equal to it."""
    rows = ["| name | type | default | meaning |", "|---|---|---|---|"]
    for p in specs:
        meaning = p.full_description.replace("|", "\\|") + (" Read-only." if p.read_only else "")
        rows.append(f"| `{p.name}` | {p.type} | `{p.default!r}` | {meaning} |")
    return "\n".join(rows)

"""THE one description of the tabletop graph: nodes, executables, parameters, remaps, namespace.

launch/tabletop.launch.py (for users with ROS 2 installed) and the in-process bringup
(apps/bringup.py, pip-only installs and the tests) both call ``describe_graph``, so the two
cannot drift. The parameter schemas of every node live here too: the nodes declare exactly
these parameters, and a YAML key that no node declares is reported instead of ignored.

Pure Python: no rclpy, no launch import.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from uois_sam_ros.core.config import Config, field_docs
from uois_sam_ros.core.sources import SOURCE_KINDS

PACKAGE = "uois_sam_ros"


def default_params_file() -> Path:
    """config/tabletop.yaml of the source tree, else of the installed package share directory."""
    here = Path(__file__).resolve().parents[2] / "config" / "tabletop.yaml"
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE)) / "config" / "tabletop.yaml"
    except (ImportError, LookupError, ValueError):
        return here

# realsense2_camera topic names (relative, so a namespace applies to all of them).
COLOR_TOPIC = "camera/color/image_raw"
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "camera/color/camera_info"
CAMERA_TOPICS = (COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC)


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


CAMERA_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("source", "string", "synthetic", "where frames come from", True, choices=SOURCE_KINDS),
    ParamSpec("rate", "double", 5.0, "publish rate, Hz (changeable at run time)", min=0.01, max=1000.0),
    ParamSpec("frame_id", "string", "camera_color_optical_frame", "frame_id of all published headers"),
    ParamSpec("width", "int", 0, "image width (0 = the source's own; RealSense 640)", True, min=0),
    ParamSpec("height", "int", 0, "image height (0 = the source's own; RealSense 480)", True, min=0),
    ParamSpec("seed", "int", 0, "synthetic: seed of the first scene (scene i uses seed + i)", True),
    ParamSpec("count", "int", 0, "synthetic: number of scenes, then stop (0 = endless)", True, min=0),
    ParamSpec("folder", "string", "", "folder: directory of NNNN-color.png + NNNN-depth.png and camera.json",
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

_NODE_COMMON: tuple[ParamSpec, ...] = (
    ParamSpec("depth_scale", "double", 0.001, "metres per unit of 16UC1 depth images (RealSense: 0.001)",
              min=1e-6, max=10.0),
)

HPG_PARAMS: tuple[ParamSpec, ...] = _NODE_COMMON + (
    ParamSpec("publish_debug", "bool", True, "publish hpg/foreground and hpg/heatmap debug images"),
)

SEGMENTATION_PARAMS: tuple[ParamSpec, ...] = _NODE_COMMON + (
    ParamSpec("single_node", "bool", False,
              "run the prompt source inside this node (no prompts topic, one hop less)", True),
    ParamSpec("publish_overlay", "bool", True, "publish instances/overlay (rgb8)"),
    ParamSpec("frame_buffer", "int", 10, "split mode: frames kept waiting for their prompts", min=1, max=100),
)

# Core config fields that load models: changing them at run time would silently reload
# weights, so they are fixed at start-up.
_READ_ONLY_CONFIG = {"sam.model_type", "sam.checkpoint", "sam.device", "hpg.backbone", "hpg.checkpoint",
                     "hpg.backbone_checkpoint", "hpg.device", "hdnet.checkpoint", "pipeline.method",
                     "pipeline.weights_free_prompts"}
_CONFIG_CHOICES = {"sam.model_type": ("vit_h", "vit_l", "vit_b", "vit_t"),
                   "pipeline.weights_free_prompts": ("geometric", "hpg")}


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


@functools.cache
def config_param_specs() -> tuple[ParamSpec, ...]:
    """One ROS parameter per scalar leaf of the core Config tree ('sam.checkpoint', 'hpg.top_k', ...).

    Optional string fields (checkpoints) use '' for None. Cached: the descriptions are read from
    config.py's source (about 10 ms), and the Config tree never changes at run time.
    """
    out = []
    root = Config()
    for sec in dataclasses.fields(Config):
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
    nullable = {s.name for s in config_param_specs() if s.type == "string"}
    for k, v in values.items():
        if "." not in k:
            continue
        sec, key = k.split(".", 1)
        if k in nullable and v == "":
            opt = _ros_type(typing.get_type_hints(type(getattr(Config(), sec)))[key])
            v = None if opt and opt[1] else v
        tree.setdefault(sec, {})[key] = v
    return config_from_dict(tree)


@dataclass(frozen=True)
class NodeKind:
    executable: str  # script in lib/uois_sam_ros (launch) and the uois-sam-<name> console script
    module: str  # "module:Class" that the in-process bringup instantiates
    params: tuple[ParamSpec, ...]


NODE_KINDS: dict[str, NodeKind] = {
    "camera": NodeKind("camera", "uois_sam_ros.nodes.camera:CameraNode", CAMERA_PARAMS),
    "hpg": NodeKind("hpg", "uois_sam_ros.nodes.hpg:HPGNode", HPG_PARAMS + config_param_specs()),
    "segmentation": NodeKind("segmentation", "uois_sam_ros.nodes.segmentation:SegmentationNode",
                             SEGMENTATION_PARAMS + config_param_specs()),
}


def param_specs(kind: str) -> dict[str, ParamSpec]:
    return {p.name: p for p in NODE_KINDS[kind].params}


def param_table(specs: Iterable[ParamSpec]) -> str:
    """The README's markdown table of parameters; a test keeps the README equal to it."""
    rows = ["| name | type | default | meaning |", "|---|---|---|---|"]
    for p in specs:
        meaning = p.full_description.replace("|", "\\|") + (" Read-only." if p.read_only else "")
        rows.append(f"| `{p.name}` | {p.type} | `{p.default!r}` | {meaning} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class NodeSpec:
    """Everything needed to start one node, the same for launch_ros.Node and in-process rclpy."""

    name: str
    kind: str
    executable: str
    module: str
    namespace: str
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    package: str = PACKAGE


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_params_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """A ROS 2 parameter file -> {node name or '/**': flat params}."""
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"parameter file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GraphError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise GraphError(f"{path}: top level must map node names to ros__parameters")
    out = {}
    for node, body in data.items():
        node = str(node).strip("/") if node != "/**" else "/**"
        if not isinstance(body, dict) or "ros__parameters" not in body:
            raise GraphError(f"{path}: section {node!r} must contain 'ros__parameters'")
        out[node] = _flatten(body["ros__parameters"] or {})
    return out


def parse_source(arg: str) -> dict[str, Any]:
    """'synthetic' | 'folder:DIR' | 'realsense' | 'realsense:SERIAL' | 'dataset:KIND:ROOT' -> camera params."""
    kind, _, rest = arg.partition(":")
    if kind not in SOURCE_KINDS:
        raise GraphError(f"unknown camera source {arg!r}; use synthetic, folder:DIR, realsense[:SERIAL] "
                         "or dataset:KIND:ROOT")
    out: dict[str, Any] = {"source": kind}
    if kind == "folder":
        if not rest:
            raise GraphError("source 'folder' needs a directory: folder:/path/to/frames")
        out["folder"] = rest
    elif kind == "realsense" and rest:
        out["serial"] = rest
    elif kind == "dataset":
        dkind, _, root = rest.partition(":")
        if not dkind or not root:
            raise GraphError("source 'dataset' needs a reader and a root: dataset:ocid:/data/OCID")
        out.update(dataset_kind=dkind, dataset_root=root)
    return out


def _truthy(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off"):
        return False
    raise GraphError(f"expected true/false, got {v!r}")


def describe_graph(params_file: str | Path | None = None, *, namespace: str = "", source: str = "",
                   single_node: bool | str | None = None, use_camera: bool | str = True,
                   camera_prefix: str = "camera", sam_checkpoint: str = "", sam_model_type: str = "",
                   hpg_checkpoint: str = "", hdnet_checkpoint: str = "", device: str = "",
                   overrides: dict[str, dict[str, Any]] | None = None) -> list[NodeSpec]:
    """The tabletop graph: camera -> hpg -> segmentation, or camera -> segmentation (single node).

    params_file: a ROS 2 parameter file (default config/tabletop.yaml); '/**' applies to every
    node that declares the key. Empty-string arguments mean "as in the file", which is what
    launch arguments left at their defaults pass in.
    overrides: {node name: {param: value}} applied last (tests, CLI flags).
    """
    path = Path(params_file) if params_file else default_params_file()
    file_params = load_params_file(path)
    shared = file_params.pop("/**", {})
    names = {"camera", "hpg", "segmentation"}
    for node in file_params:
        if node not in names:
            raise GraphError(f"{path}: unknown node {node!r}; the graph has {sorted(names)}")

    seg_file = {**shared, **file_params.get("segmentation", {})}
    single = _truthy(seg_file.get("single_node", False) if single_node in (None, "") else single_node)
    cli: dict[str, dict[str, Any]] = {"camera": {}, "hpg": {}, "segmentation": {"single_node": single}}
    if source:
        cli["camera"].update(parse_source(source))
    for key, val in (("sam.checkpoint", sam_checkpoint), ("sam.model_type", sam_model_type),
                     ("hpg.checkpoint", hpg_checkpoint), ("hdnet.checkpoint", hdnet_checkpoint),
                     ("sam.device", device), ("hpg.device", device)):
        if val:
            cli["hpg"][key] = val
            cli["segmentation"][key] = val

    ns = namespace.strip()
    if ns and not ns.startswith("/"):
        ns = "/" + ns
    prefix = camera_prefix.strip().strip("/") or "camera"
    remaps = tuple((t, prefix + t[len("camera"):]) for t in CAMERA_TOPICS) if prefix != "camera" else ()

    order = ["camera"] if _truthy(use_camera) else []
    order += ["segmentation"] if single else ["hpg", "segmentation"]
    specs = []
    for name in order:
        kind = NODE_KINDS[name]
        schema = param_specs(name)
        params: dict[str, Any] = {}
        for k, v in shared.items():  # '/**' keys apply only where declared, as in ROS
            if k in schema:
                params[k] = schema[k].coerce(v, f"{path} [/**]")
        for k, v in file_params.get(name, {}).items():
            if k not in schema:
                raise GraphError(f"{path} [{name}]: unknown parameter {k!r}; node {name!r} declares "
                                 f"{sorted(schema)}")
            params[k] = schema[k].coerce(v, f"{path} [{name}]")
        for src, where in ((cli.get(name, {}), "launch argument"), ((overrides or {}).get(name, {}), "override")):
            for k, v in src.items():
                if k not in schema:
                    raise GraphError(f"{where}: node {name!r} has no parameter {k!r}")
                params[k] = schema[k].coerce(v, where)
        specs.append(NodeSpec(name=name, kind=name, executable=kind.executable, module=kind.module,
                              namespace=ns, parameters=dict(sorted(params.items())), remappings=remaps))
    return specs


# Launch arguments shared by tabletop.launch.py and uois-sam-bringup: (name, default, help).
LAUNCH_ARGUMENTS: tuple[tuple[str, str, str], ...] = (
    ("params_file", "", "ROS 2 parameter file for the graph ('' = the package's config/tabletop.yaml)"),
    ("namespace", "", "namespace of every node and topic"),
    ("source", "", "camera source: synthetic | folder:DIR | realsense[:SERIAL] | dataset:KIND:ROOT "
                   "('' = as in the parameter file)"),
    ("single_node", "", "true: HPG runs inside the segmentation node ('' = as in the parameter file)"),
    ("use_camera", "true", "false: no camera node (e.g. use the official realsense2_camera driver)"),
    ("camera_prefix", "camera", "topic prefix of the camera topics (realsense2_camera names)"),
    ("sam_checkpoint", "", "SAM checkpoint path ('' = weights-free backend)"),
    ("sam_model_type", "", "vit_h | vit_l | vit_b | vit_t ('' = as in the parameter file)"),
    ("hpg_checkpoint", "", "HPG checkpoint path ('' = the checkpoint shipped with the package)"),
    ("hdnet_checkpoint", "", "HDNet checkpoint path"),
    ("device", "", "torch device for SAM and HPG: cpu | cuda | cuda:N ('' = as in the parameter file)"),
)


def describe_graph_from_arguments(args: dict[str, str]) -> list[NodeSpec]:
    """describe_graph from launch-argument strings (what both the launch file and bringup hold)."""
    known = {n for n, _, _ in LAUNCH_ARGUMENTS}
    unknown = sorted(set(args) - known)
    if unknown:
        raise GraphError(f"unknown launch argument(s) {unknown}; valid: {sorted(known)}")
    a = {n: args.get(n, d) for n, d, _ in LAUNCH_ARGUMENTS}
    return describe_graph(a["params_file"] or None, namespace=a["namespace"], source=a["source"],
                          single_node=a["single_node"], use_camera=a["use_camera"],
                          camera_prefix=a["camera_prefix"], sam_checkpoint=a["sam_checkpoint"],
                          sam_model_type=a["sam_model_type"], hpg_checkpoint=a["hpg_checkpoint"],
                          hdnet_checkpoint=a["hdnet_checkpoint"], device=a["device"])


def launch_node_kwargs(spec: NodeSpec) -> dict[str, Any]:
    """Keyword arguments of launch_ros.actions.Node for one node of the graph."""
    return {"package": spec.package, "executable": spec.executable, "name": spec.name,
            "namespace": spec.namespace, "parameters": [dict(spec.parameters)],
            "remappings": [tuple(r) for r in spec.remappings], "output": "screen"}


def remap_cli_args(spec: NodeSpec) -> list[str]:
    """The same remaps as rclpy command-line arguments (in-process bringup)."""
    if not spec.remappings:
        return []
    out = ["--ros-args"]
    for a, b in spec.remappings:
        out += ["-r", f"{a}:={b}"]
    return out

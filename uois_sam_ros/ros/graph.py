"""THE one description of the tabletop graph: nodes, executables, parameters, remaps, namespace.

launch/tabletop.launch.py (for users with ROS 2 installed) and the in-process bringup
(apps/bringup.py, pip-only installs and the tests) both call ``describe_graph``, so the two
cannot drift. Parameter files are checked against the nodes' schemas (ros/params.py): a YAML
key that no node declares is reported instead of ignored.

Pure Python: no rclpy, no launch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from uois_sam_ros.core.data.sources import SOURCE_KINDS
from uois_sam_ros.ros.params import GraphError, param_specs

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


@dataclass(frozen=True)
class NodeKind:
    executable: str  # script in lib/uois_sam_ros (launch) and the uois-sam-<name> console script
    # (grasp: uois-sam-grasp-node, since uois-sam-grasp is the offline grasp CLI)
    module: str  # "module:Class" that the in-process bringup instantiates


NODE_KINDS: dict[str, NodeKind] = {
    "camera": NodeKind("camera", "uois_sam_ros.nodes.camera:CameraNode"),
    "hpg": NodeKind("hpg", "uois_sam_ros.nodes.hpg:HPGNode"),
    "segmentation": NodeKind("segmentation", "uois_sam_ros.nodes.segmentation:SegmentationNode"),
    "amodal": NodeKind("amodal", "uois_sam_ros.nodes.amodal:AmodalNode"),
    "grasp": NodeKind("grasp", "uois_sam_ros.nodes.grasp:GraspNode"),
}


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
                   autostart: bool | str = True, use_sim_time: bool | str = False, method: str = "",
                   amodal: bool | str = True, grasp: bool | str = False,
                   overrides: dict[str, dict[str, Any]] | None = None) -> list[NodeSpec]:
    """The tabletop graph: camera -> hpg -> segmentation, or camera -> segmentation (single node).

    params_file: a ROS 2 parameter file (default config/tabletop.yaml); '/**' applies to every
    node that declares the key. Empty-string arguments mean "as in the file", which is what
    launch arguments left at their defaults pass in.
    autostart: every node configures and activates itself (false: wait for lifecycle calls).
    use_sim_time: every node takes its clock from /clock (bag replay).
    overrides: {node name: {param: value}} applied last (tests, CLI flags).
    hpg.backbone=sam makes the graph single-node: those prompts need SAM's image embedding,
    which only the segmentation node computes (the hpg node never loads SAM).
    amodal: the amodal node completes /instances into instances/amodal (false: no amodal node).
    grasp: the grasp node turns the instances (instances/amodal when the amodal node runs) into
    Franka grasps (grasps, grasps/markers).
    """
    kwargs = dict(namespace=namespace, source=source, use_camera=use_camera, camera_prefix=camera_prefix,
                  sam_checkpoint=sam_checkpoint, sam_model_type=sam_model_type, hpg_checkpoint=hpg_checkpoint,
                  hdnet_checkpoint=hdnet_checkpoint, device=device, autostart=autostart,
                  use_sim_time=use_sim_time, method=method, amodal=amodal, grasp=grasp,
                  overrides=overrides)
    path = Path(params_file) if params_file else default_params_file()
    file_params = load_params_file(path)
    shared = file_params.pop("/**", {})
    names = {"camera", "hpg", "segmentation", "amodal", "grasp"}
    for node in file_params:
        if node not in names:
            raise GraphError(f"{path}: unknown node {node!r}; the graph has {sorted(names)}")

    seg_file = {**shared, **file_params.get("segmentation", {})}
    single = _truthy(seg_file.get("single_node", False) if single_node in (None, "") else single_node)
    auto = _truthy(autostart)
    cli: dict[str, dict[str, Any]] = {"camera": {"autostart": auto}, "hpg": {"autostart": auto},
                                      "segmentation": {"single_node": single, "autostart": auto},
                                      "amodal": {"autostart": auto},
                                      "grasp": {"autostart": auto, "use_amodal": _truthy(amodal)}}
    if source:
        cli["camera"].update(parse_source(source))
    for key, val in (("sam.checkpoint", sam_checkpoint), ("sam.model_type", sam_model_type),
                     ("hpg.checkpoint", hpg_checkpoint), ("hdnet.checkpoint", hdnet_checkpoint),
                     ("sam.device", device), ("hpg.device", device), ("pipeline.method", method)):
        if val:
            cli["hpg"][key] = val
            cli["segmentation"][key] = val
            if key.startswith("sam."):  # the SAM of SAMEO / Amodal SAM is the graph's SAM
                cli["amodal"][key] = val
    if device:
        cli["amodal"]["amodal.device"] = device

    ns = namespace.strip()
    if ns and not ns.startswith("/"):
        ns = "/" + ns
    prefix = camera_prefix.strip().strip("/") or "camera"
    remaps = tuple((t, prefix + t[len("camera"):]) for t in CAMERA_TOPICS) if prefix != "camera" else ()

    order = ["camera"] if _truthy(use_camera) else []
    order += ["segmentation"] if single else ["hpg", "segmentation"]
    order += ["amodal"] if _truthy(amodal) else []
    order += ["grasp"] if _truthy(grasp) else []
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
        if name == "hpg" and params.get("hpg.backbone") == "sam":
            return describe_graph(params_file, single_node=True, **kwargs)
        if _truthy(use_sim_time):
            params["use_sim_time"] = True  # declared by rclpy itself in every node
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
    ("method", "", "pipeline.method: auto | uois_sam | heatmap_hdnet | heatmap | grid_fg | grid | weights_free "
                   "('' = as in the parameter file)"),
    ("sam_checkpoint", "", "SAM checkpoint path ('' = the shipped small SAM for the SAM methods)"),
    ("sam_model_type", "", "vit_h | vit_l | vit_b | vit_t | vit_synth ('' = as in the parameter file)"),
    ("hpg_checkpoint", "", "HPG checkpoint path ('' = the checkpoint shipped with the package)"),
    ("hdnet_checkpoint", "", "HDNet checkpoint path"),
    ("device", "", "torch device for SAM and HPG: auto | cpu | cuda | cuda:N ('' = as in the parameter file)"),
    ("autostart", "true", "configure and activate every node at start-up (false: drive them through "
                          "the lifecycle services)"),
    ("use_sim_time", "false", "take every node's clock from /clock (replaying a bag)"),
    ("amodal", "true", "false: no amodal node (instances/amodal: full shapes of occluded instances, "
                       "and instances/occlusion_order)"),
    ("grasp", "false", "true: add the grasp node (Franka grasps for the instances: grasps, grasps/markers)"),
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
                          hdnet_checkpoint=a["hdnet_checkpoint"], device=a["device"],
                          autostart=a["autostart"], use_sim_time=a["use_sim_time"], method=a["method"],
                          amodal=a["amodal"], grasp=a["grasp"])


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

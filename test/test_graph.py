"""The one graph description: parameter file handling, and launch file == in-process bringup."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from uois_sam_ros.ros.graph import (
    LAUNCH_ARGUMENTS,
    GraphError,
    describe_graph,
    describe_graph_from_arguments,
    launch_node_kwargs,
)
from uois_sam_ros.ros.params import (
    CAMERA_PARAMS,
    HPG_PARAMS,
    SEGMENTATION_PARAMS,
    config_param_specs,
    param_table,
    params_to_config,
)

REPO = Path(__file__).resolve().parents[1]


def _load_launch_file_with_recorders(monkeypatch):
    """launch/launch_ros are not installable here: record what the launch file builds instead."""
    rec: dict = {"nodes": [], "args": []}
    launch = types.ModuleType("launch")
    actions = types.ModuleType("launch.actions")
    subs = types.ModuleType("launch.substitutions")
    lros = types.ModuleType("launch_ros")
    lros_actions = types.ModuleType("launch_ros.actions")

    class LaunchDescription(list):
        pass

    class DeclareLaunchArgument:
        def __init__(self, name, default_value="", description=""):
            self.name, self.default = name, default_value
            rec["args"].append(self)

    class OpaqueFunction:
        def __init__(self, function):
            self.function = function

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class Node:
        def __init__(self, **kw):
            self.kw = kw
            rec["nodes"].append(kw)

    class SetEnvironmentVariable:
        def __init__(self, name, value):
            self.name, self.value = name, value

    launch.LaunchDescription = LaunchDescription
    actions.DeclareLaunchArgument, actions.OpaqueFunction = DeclareLaunchArgument, OpaqueFunction
    actions.SetEnvironmentVariable = SetEnvironmentVariable
    subs.LaunchConfiguration = LaunchConfiguration
    lros_actions.Node = Node
    for name, mod in (("launch", launch), ("launch.actions", actions), ("launch.substitutions", subs),
                      ("launch_ros", lros), ("launch_ros.actions", lros_actions)):
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("tabletop_launch", REPO / "launch" / "tabletop.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, rec


@pytest.mark.parametrize("args", [
    {},
    {"single_node": "true", "namespace": "robot1", "source": "folder:/data/frames", "device": "cuda:0",
     "sam_checkpoint": "/w/sam_vit_l_0b3195.pth", "camera_prefix": "d435"},
    {"use_camera": "false", "hdnet_checkpoint": "/w/hdnet.pt"},
])
def test_launch_file_equals_bringup_description(monkeypatch, args):
    mod, rec = _load_launch_file_with_recorders(monkeypatch)
    ld = mod.generate_launch_description()
    defaults = {a.name: a.default for a in rec["args"]}
    assert defaults == {n: d for n, d, _ in LAUNCH_ARGUMENTS}
    opaque = ld[-1]
    opaque.function({**defaults, **args})
    from_launch = rec["nodes"]
    bringup = [launch_node_kwargs(s) for s in describe_graph_from_arguments({**defaults, **args})]
    assert from_launch == bringup
    names = [n["name"] for n in from_launch]
    single = args.get("single_node") == "true"
    cam = args.get("use_camera", "true") == "true"
    assert names == (["camera"] if cam else []) + (["segmentation"] if single else ["hpg", "segmentation"]) + ["amodal"]
    seg = next(n for n in from_launch if n["name"] == "segmentation")
    if "sam_checkpoint" in args:
        assert seg["parameters"][0]["sam.checkpoint"] == args["sam_checkpoint"]
        assert seg["parameters"][0]["sam.device"] == "cuda:0"
        assert seg["namespace"] == "/robot1"
        assert ("camera/color/image_raw", "d435/color/image_raw") in seg["remappings"]
        assert from_launch[0]["parameters"][0]["folder"] == "/data/frames"


def test_yaml_parameters_and_errors(tmp_path):
    specs = describe_graph()
    seg = next(s for s in specs if s.name == "segmentation")
    cfg = params_to_config(seg.parameters)
    assert cfg.sam.checkpoint is None and cfg.hdnet.iou_threshold == pytest.approx(0.48)
    assert isinstance(next(s for s in specs if s.name == "camera").parameters["rate"], float)
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera:\n  ros__parameters:\n    rat: 5.0\n")
    with pytest.raises(GraphError, match="unknown parameter 'rat'"):
        describe_graph(bad)
    bad.write_text("camera:\n  ros__parameters:\n    rate: fast\n")
    with pytest.raises(GraphError, match="'rate' expects a double"):
        describe_graph(bad)
    bad.write_text("camera:\n  ros__parameters:\n    source: kinect\n")
    with pytest.raises(GraphError, match="must be one of"):
        describe_graph(bad)
    with pytest.raises(GraphError, match="parameter file not found"):
        describe_graph(tmp_path / "missing.yaml")
    with pytest.raises(GraphError, match="unknown camera source"):
        describe_graph(source="webcam")


def _readme_section(readme: str, heading: str) -> str:
    start = readme.index(heading)
    nxt = readme.find("\n#", start + len(heading))
    return readme[start:nxt if nxt >= 0 else len(readme)]


@pytest.mark.parametrize("heading,specs", [
    ("### Node `camera`", CAMERA_PARAMS),
    ("### Node `hpg`", HPG_PARAMS),
    ("### Node `segmentation`", SEGMENTATION_PARAMS),
    ("### Core parameters", config_param_specs()),
])
def test_readme_parameter_tables_match_the_declared_parameters(heading, specs):
    """Each README node section lists exactly the parameters the node declares: name, type, default, meaning."""
    section = _readme_section((REPO / "README.md").read_text(), heading)
    assert param_table(specs) in section, f"README section {heading!r} is out of date: regenerate with param_table()"


def test_every_core_parameter_has_its_own_meaning():
    specs = config_param_specs()
    assert {s.name for s in specs} >= {"hpg.top_k", "hdnet.iou_threshold", "postprocess.nms_iou", "sam.checkpoint"}
    for s in specs:
        section = s.name.split(".")[0]
        assert s.description and not s.description.startswith(section), s.name
    by_name = {s.name: s for s in specs}
    assert by_name["hdnet.iou_threshold"].description.startswith("keep a prompt's best mask")
    assert by_name["sam.checkpoint"].description.endswith("'' = none")
    assert "(one of vit_h, vit_l, vit_b, vit_t, vit_synth)" in by_name["sam.model_type"].full_description
    assert "\\|" in param_table([by_name["pipeline.method"]])  # a '|' in a meaning must not split the row

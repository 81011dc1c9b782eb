"""ros2 launch uois_sam_ros tabletop.launch.py [source:=realsense] [sam_checkpoint:=/path/sam.pth] ...

camera -> hpg -> segmentation -> /instances -> amodal -> instances/amodal (-> grasp -> grasps,
with grasp:=true). The graph (nodes,
parameters, remaps) comes from uois_sam_ros.ros.graph.describe_graph_from_arguments, the same
function that uois-sam-bringup calls, so the launch file and the in-process bringup cannot
drift. Run
`ros2 launch uois_sam_ros tabletop.launch.py --show-args` for the arguments.

Every node process gets the package's Fast DDS profile (uois_sam_ros/data/fastdds_shm.xml:
camera images over shared memory) unless FASTDDS_DEFAULT_PROFILES_FILE is already set.
"""

import os  # noqa: I001 - the block below is ROS launch, not this repo's launch/ folder

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from uois_sam_ros.ros.dds import apply_default_profile
from uois_sam_ros.ros.graph import LAUNCH_ARGUMENTS, describe_graph_from_arguments, launch_node_kwargs


def _dds_profile(context, *args, **kwargs):
    """The package's Fast DDS profile for the node processes, unless the user configured Fast DDS."""
    env = dict(getattr(context, "environment", os.environ))
    before = dict(env)
    apply_default_profile(env)
    return [SetEnvironmentVariable(k, v) for k, v in env.items() if before.get(k) != v]


def _nodes(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in LAUNCH_ARGUMENTS}
    return [Node(**launch_node_kwargs(spec)) for spec in describe_graph_from_arguments(values)]


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(name, default_value=default, description=help_text)
                for name, default, help_text in LAUNCH_ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_dds_profile),
                                         OpaqueFunction(function=_nodes)])

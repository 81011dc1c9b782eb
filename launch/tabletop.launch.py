"""ros2 launch uois_sam_ros tabletop.launch.py [source:=realsense] [sam_checkpoint:=/path/sam.pth] ...

camera -> hpg -> segmentation -> /instances. The graph (nodes, parameters, remaps) comes from
uois_sam_ros.ros.graph.describe_graph_from_arguments, the same function that uois-sam-bringup
calls, so the launch file and the in-process bringup cannot drift. Run
`ros2 launch uois_sam_ros tabletop.launch.py --show-args` for the arguments.
"""

from launch import LaunchDescription  # noqa: I001 - ROS launch, not this repo's launch/ folder
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from uois_sam_ros.ros.graph import LAUNCH_ARGUMENTS, describe_graph_from_arguments, launch_node_kwargs


def _nodes(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in LAUNCH_ARGUMENTS}
    return [Node(**launch_node_kwargs(spec)) for spec in describe_graph_from_arguments(values)]


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(name, default_value=default, description=help_text)
                for name, default, help_text in LAUNCH_ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])

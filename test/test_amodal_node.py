"""The amodal lifecycle node over real rclpy loopback: one instances/amodal array per /instances
message, with the same stamp and ids, equal to the core stage; the occlusion order; zero instances."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("uois_sam_ros.msg")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from wait_helper import wait_until  # noqa: E402

from uois_sam_ros.core.amodal.stage import AmodalStage  # noqa: E402
from uois_sam_ros.core.config import AmodalConfig  # noqa: E402
from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene  # noqa: E402
from uois_sam_ros.core.types import Instances  # noqa: E402
from uois_sam_ros.msg import InstanceArray  # noqa: E402
from uois_sam_ros.nodes.amodal import AMODAL_TOPIC, ORDER_TOPIC, AmodalNode  # noqa: E402
from uois_sam_ros.nodes.common import shutdown_executor  # noqa: E402
from uois_sam_ros.ros.convert import (  # noqa: E402
    frame_from_msgs,
    instances_to_msg,
    intrinsics_to_camera_info,
    make_header,
    msg_to_instances,
)
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC  # noqa: E402
from uois_sam_ros.ros.image import image_to_numpy, numpy_to_image  # noqa: E402
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS  # noqa: E402

W, H = 320, 240


class Rig:
    """The amodal node alone, plus a probe that plays the camera and the segmentation node."""

    def __init__(self) -> None:
        self.ctx = Context()
        rclpy.init(context=self.ctx)
        self.node = AmodalNode("amodal", context=self.ctx)
        assert self.node.autostart(), self.node.configure_failure
        self.probe = rclpy.create_node("probe", context=self.ctx)
        self.got: list[InstanceArray] = []
        self.orders: list[Image] = []
        self.probe.create_subscription(InstanceArray, AMODAL_TOPIC, self.got.append, LATEST_QOS)
        self.probe.create_subscription(Image, ORDER_TOPIC, self.orders.append, LATEST_QOS)
        self.pubs = {t: self.probe.create_publisher(m, t, q) for t, m, q in (
            (COLOR_TOPIC, Image, SENSOR_QOS), (DEPTH_TOPIC, Image, SENSOR_QOS), (INFO_TOPIC, CameraInfo, SENSOR_QOS),
            ("instances", InstanceArray, LATEST_QOS))}
        self.ex = MultiThreadedExecutor(num_threads=3, context=self.ctx)
        self.ex.add_node(self.node)
        self.ex.add_node(self.probe)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()
        assert self.wait(lambda: all(p.get_subscription_count() >= 1 for p in self.pubs.values()), 20)
        assert self.wait(lambda: self.node.pub_amodal.get_subscription_count() >= 1, 20)

    wait = staticmethod(wait_until)

    def send(self, sample, inst: Instances, stamp: float) -> tuple:
        header = make_header(stamp, "camera_color_optical_frame")
        mm = np.clip(np.round(sample.depth * 1000.0), 0, 65535).astype(np.uint16)
        msgs = (intrinsics_to_camera_info(sample.intrinsics, header), numpy_to_image(sample.rgb, "rgb8", header),
                numpy_to_image(mm, "16UC1", header), instances_to_msg(inst, header))
        for topic, m in zip((INFO_TOPIC, COLOR_TOPIC, DEPTH_TOPIC, "instances"), msgs, strict=True):
            self.pubs[topic].publish(m)
        return msgs

    def close(self) -> None:
        shutdown_executor(self.ex)
        self.thread.join(timeout=5.0)  # spin() has returned: no wait set holds the nodes' entities
        self.node.destroy_node()
        self.probe.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def _gt_instances(seed: int) -> tuple:
    s = generate_scene(seed, SceneConfig(width=W, height=H, min_objects=4, max_objects=8, pile_prob=1.0))
    vis = np.stack([s.label == i for i in s.ids])
    keep = vis.any(axis=(1, 2))
    vis = vis[keep]
    scores = np.linspace(0.95, 0.5, len(vis)).astype(np.float32)
    return s.sample(), Instances(masks=vis, scores=scores)


def test_amodal_node_one_array_per_instances_message_and_zero_instances():
    rig = Rig()
    try:
        stage = AmodalStage(AmodalConfig(device="cpu"))
        for k, seed in enumerate((3, 4)):
            sample, inst = _gt_instances(seed)
            n_before = len(rig.got)
            info, color, depth, inst_msg = rig.send(sample, inst, 100.0 + k)
            assert rig.wait(lambda n=n_before: len(rig.got) > n, 60), "no instances/amodal for the frame"
            assert rig.wait(lambda: rig.node.worker.wait_idle(0.1), 10)
            time.sleep(0.2)
            out = rig.got[n_before:]
            assert len(out) == 1, "exactly one amodal array per /instances message"
            msg = out[0]
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (inst_msg.header.stamp.sec,
                                                                        inst_msg.header.stamp.nanosec)
            assert [i.id for i in msg.instances] == [i.id for i in inst_msg.instances]
            assert all(i.has_amodal for i in msg.instances)
            back = msg_to_instances(msg)
            assert np.array_equal(back.masks, msg_to_instances(inst_msg).masks)  # visible fields untouched
            assert not (back.masks & ~back.amodal_masks).any()  # amodal contains visible
            # equal to the core stage on the frame as the messages carry it
            frame = frame_from_msgs(color, depth, info)
            ref = stage.run(frame, msg_to_instances(inst_msg))
            assert np.array_equal(back.amodal_masks, ref.amodal)
            np.testing.assert_allclose(back.occlusion_rates, ref.occlusion_rates, rtol=1e-6)
            assert rig.wait(lambda m=msg: any(o.header.stamp == m.header.stamp for o in rig.orders), 10)
            order = next(o for o in rig.orders if o.header.stamp == msg.header.stamp)
            assert np.array_equal(image_to_numpy(order) > 0, ref.order)
        # zero instances: an empty array with the frame's stamp, not an error
        sample, _ = _gt_instances(5)
        n_before, errors = len(rig.got), rig.node.errors.count
        rig.send(sample, Instances.empty(H, W), 200.0)
        assert rig.wait(lambda: len(rig.got) > n_before, 30)
        empty = rig.got[-1]
        assert empty.instances == [] and empty.header.stamp.sec == 200
        assert rig.node.errors.count == errors
        assert rig.wait(lambda: any(o.header.stamp.sec == 200 for o in rig.orders), 10)
        st = {kv.key: kv.value for kv in rig.node.diagnostic_status().values}
        assert st["method"] == "completer" and float(st["ms_per_instance"]) > 0
    finally:
        rig.close()


def test_amodal_node_bad_parameter_rejected_and_bad_input_logged():
    rig = Rig()
    try:
        res = rig.node.set_parameters([Parameter("amodal.method", value="sameo")])[0]
        assert not res.successful and "decoder_checkpoint" in res.reason
        assert rig.node.stage.method == "completer"
        res = rig.node.set_parameters([Parameter("amodal.threshold", value=0.7)])[0]
        assert res.successful
        # instances of another size than the frame: logged, the node keeps serving
        sample, inst = _gt_instances(6)
        small = Instances(masks=inst.masks[:, :100, :100], scores=inst.scores)
        header = make_header(300.0, "camera_color_optical_frame")
        mm = np.clip(np.round(sample.depth * 1000.0), 0, 65535).astype(np.uint16)
        rig.pubs[INFO_TOPIC].publish(intrinsics_to_camera_info(sample.intrinsics, header))
        rig.pubs[COLOR_TOPIC].publish(numpy_to_image(sample.rgb, "rgb8", header))
        rig.pubs[DEPTH_TOPIC].publish(numpy_to_image(mm, "16UC1", header))
        rig.pubs["instances"].publish(instances_to_msg(small, header))
        assert rig.wait(lambda: rig.node.errors.count > 0, 30)
        assert "100x100" in rig.node.errors.last_message
        n_before = len(rig.got)
        rig.send(sample, inst, 301.0)
        assert rig.wait(lambda: len(rig.got) > n_before, 60)
        assert rig.node.stage.cfg.threshold == pytest.approx(0.7)
    finally:
        rig.close()


def test_readme_tables_match_the_amodal_parameters():
    """The README's amodal sections list exactly what the node declares (scripts/readme_tables.py)."""
    from pathlib import Path

    from uois_sam_ros.ros.params import AMODAL_PARAMS, config_param_specs, param_specs, param_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for heading, specs in (("### Node `amodal`", AMODAL_PARAMS), ("### Amodal parameters", config_param_specs(("amodal",)))):
        start = readme.index(heading)
        end = readme.find("\n#", start + len(heading))
        assert param_table(specs) in readme[start:end], f"{heading}: regenerate with scripts/readme_tables.py"
    declared = param_specs("amodal")
    assert {"amodal.method", "amodal.checkpoint", "sam.checkpoint", "frame_buffer"} <= set(declared)
    assert "(one of auto, completer, sameo, amodal_sam, convex_hull, visible)" in declared["amodal.method"].full_description

"""The in-process graph over real rclpy loopback: per-frame outputs, stale-frame dropping, bad inputs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("uois_sam_ros.msg")

from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from wait_helper import wait_until  # noqa: E402

from uois_sam_ros.apps.bringup import build_nodes  # noqa: E402
from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene  # noqa: E402
from uois_sam_ros.core.segment.pipeline import UOISPipeline  # noqa: E402
from uois_sam_ros.msg import InstanceArray  # noqa: E402
from uois_sam_ros.nodes.common import shutdown_executor  # noqa: E402
from uois_sam_ros.ros.convert import (  # noqa: E402
    assert_instance_arrays_equal,
    frame_from_msgs,
    instance_arrays_diff,
    instances_to_msg,
    intrinsics_to_camera_info,
    make_header,
    stamp_to_sec,
)
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC, describe_graph  # noqa: E402
from uois_sam_ros.ros.image import numpy_to_image  # noqa: E402
from uois_sam_ros.ros.params import params_to_config  # noqa: E402
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS  # noqa: E402

W, H = 320, 240


class Graph:
    """Nodes from the graph description + a probe node, spun by one executor in a thread."""

    def __init__(self, **describe_kwargs) -> None:
        self.ctx = Context()
        rclpy.init(context=self.ctx)
        self.specs = describe_graph(**describe_kwargs)
        self.nodes = {n.get_name(): n for n in build_nodes(self.specs, context=self.ctx)}
        self.probe = rclpy.create_node("probe", context=self.ctx)
        self.results: list[tuple[float, InstanceArray]] = []
        self.logs: list[Log] = []
        self.probe.create_subscription(InstanceArray, "instances",
                                       lambda m: self.results.append((time.time(), m)), LATEST_QOS)
        # rosout publishers keep their history (transient local): a late-matching subscription
        # still gets the lines logged before discovery finished, so the log checks cannot race it.
        self.probe.create_subscription(Log, "/rosout", self.logs.append,
                                       QoSProfile(depth=1000, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        # What the camera topics carried, by stamp (sec, nanosec).
        self.camera_msgs: dict[str, dict[tuple[int, int], object]] = {}
        for topic, mtype in ((COLOR_TOPIC, Image), (DEPTH_TOPIC, Image), (INFO_TOPIC, CameraInfo)):
            got = self.camera_msgs.setdefault(topic, {})
            self.probe.create_subscription(
                mtype, topic, lambda m, d=got: d.__setitem__((m.header.stamp.sec, m.header.stamp.nanosec), m),
                SENSOR_QOS)
        self.pub_color = self.probe.create_publisher(Image, COLOR_TOPIC, SENSOR_QOS)
        self.pub_depth = self.probe.create_publisher(Image, DEPTH_TOPIC, SENSOR_QOS)
        self.pub_info = self.probe.create_publisher(CameraInfo, INFO_TOPIC, SENSOR_QOS)
        self.ex = MultiThreadedExecutor(num_threads=3, context=self.ctx)
        for n in [*self.nodes.values(), self.probe]:
            self.ex.add_node(n)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    wait_for = staticmethod(wait_until)

    def wait_connected(self, n_subs: int = 1) -> None:
        n = n_subs + 1  # the probe's own recording subscriptions count too
        assert self.wait_for(lambda: self.pub_color.get_subscription_count() >= n
                             and self.pub_depth.get_subscription_count() >= n
                             and self.pub_info.get_subscription_count() >= n, 20)
        # every node's /rosout publisher is known to the probe before a test provokes an error line
        # (transient local covers a late match only within rosout's 10 s lifespan)
        assert self.wait_for(lambda: set(self.nodes) <= {
            i.node_name for i in self.probe.get_publishers_info_by_topic("/rosout")}, 20)

    def send(self, rgb, depth_mm, intr, stamp_sec: float | None = None, color_enc: str = "rgb8",
             info: bool = True):
        now = self.probe.get_clock().now().to_msg() if stamp_sec is None else stamp_sec
        header = make_header(now, "camera_color_optical_frame")
        if info:
            self.pub_info.publish(intrinsics_to_camera_info(intr, header))
        self.pub_color.publish(numpy_to_image(rgb, color_enc, header))
        self.pub_depth.publish(numpy_to_image(depth_mm, "16UC1", header))
        return stamp_to_sec(header.stamp)

    def close(self) -> None:
        shutdown_executor(self.ex)
        self.thread.join(timeout=5.0)  # spin() has returned: no wait set holds the nodes' entities
        for n in [*self.nodes.values(), self.probe]:
            n.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def scene(seed: int):
    s = generate_scene(seed, SceneConfig(width=W, height=H))
    mm = np.clip(np.round(s.depth * 1000.0), 0, 65535).astype(np.uint16)
    return s, mm


@pytest.mark.parametrize("single", [False, True])
def test_bringup_graph_matches_core_pipeline(single):
    """One InstanceArray per camera frame, with the frame's stamp, equal to the core pipeline's output."""
    g = Graph(single_node=single, overrides={"camera": {"source": "synthetic", "width": W, "height": H,
                                                         "rate": 0.01}})
    try:
        assert ("hpg" in g.nodes) == (not single)
        cam = g.nodes["camera"]
        sent: list[tuple[float, object]] = []
        cam.on_publish.append(lambda stamp, sample: sent.append((stamp, sample)))
        seg = g.nodes["segmentation"]
        # hpg (split mode), segmentation and the probe's recorder
        assert g.wait_for(lambda: cam.pub_color.get_subscription_count() >= (2 if single else 3), 20)
        cfg = params_to_config(next(s for s in g.specs if s.name == "segmentation").parameters)
        core = UOISPipeline(cfg)
        for seed in (11, 12):
            sample = cam.source.scene_sample(seed)
            n_before = len(g.results)
            stamp = cam.publish_sample(sample)
            assert g.wait_for(lambda n=n_before: len(g.results) > n, 60), "no InstanceArray for the frame"
            assert g.wait_for(lambda: seg.worker.wait_idle(0.1), 10)
            time.sleep(0.2)
            got = [m for _, m in g.results[n_before:]]
            assert len(got) == 1, "exactly one InstanceArray per frame"
            msg = got[0]
            assert abs(stamp_to_sec(msg.header.stamp) - stamp) < 1e-6
            # The core pipeline on the frame exactly as the messages carry it: the very colour,
            # depth (16UC1 millimetres) and camera_info messages of this stamp, converted as the node does.
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            assert g.wait_for(lambda k=key: all(k in g.camera_msgs[t] for t in (COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC)), 10)
            frame = frame_from_msgs(g.camera_msgs[COLOR_TOPIC][key], g.camera_msgs[DEPTH_TOPIC][key],
                                    g.camera_msgs[INFO_TOPIC][key], depth_scale=seg.params.get("depth_scale"))
            # ... which is the camera's sample, depth rounded to millimetres.
            mm = np.clip(np.round(sample.depth.astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
            assert np.array_equal(frame.rgb, sample.rgb)
            assert np.array_equal(frame.depth, mm.astype(np.float32) * np.float32(0.001))
            assert frame.intrinsics == sample.intrinsics
            expected = instances_to_msg(core.run(frame), msg.header)
            assert len(expected.instances) > 0, "the synthetic scene should have objects"
            assert_instance_arrays_equal(msg, expected)
        assert len(sent) == 2
    finally:
        g.close()


def test_frame_paired_with_camera_info_of_its_own_stamp():
    """camera_info that arrives after its images (topics are not ordered against each other) is
    still the one used for them, not the previous frame's with other intrinsics."""
    g = Graph(single_node=True, use_camera=False)
    try:
        seg = g.nodes["segmentation"]
        seg.inputs.INFO_WAIT = 10.0  # no fallback to the latest camera_info while the test waits
        core = UOISPipeline(params_to_config(next(s for s in g.specs if s.name == "segmentation").parameters))
        (s1, mm1), (s2, mm2) = scene(11), scene(12)
        assert s1.intrinsics != s2.intrinsics
        g.wait_connected()
        g.send(s1.rgb, mm1, s1.intrinsics)
        assert g.wait_for(lambda: len(g.results) == 1, 30), "no InstanceArray for the first frame"
        header = make_header(g.probe.get_clock().now().to_msg(), "camera_color_optical_frame")
        color, depth = numpy_to_image(s2.rgb, "rgb8", header), numpy_to_image(mm2, "16UC1", header)
        info = intrinsics_to_camera_info(s2.intrinsics, header)
        g.pub_color.publish(color)
        g.pub_depth.publish(depth)
        time.sleep(0.5)
        assert len(g.results) == 1, "the frame was served before its camera_info arrived"
        g.pub_info.publish(info)
        assert g.wait_for(lambda: len(g.results) == 2, 30), "no InstanceArray once the camera_info arrived"
        msg = g.results[-1][1]
        frame = frame_from_msgs(color, depth, info)
        assert_instance_arrays_equal(msg, instances_to_msg(core.run(frame), msg.header))
        # With the previous frame's intrinsics the result would differ.
        frame.intrinsics = s1.intrinsics
        assert instance_arrays_diff(msg, instances_to_msg(core.run(frame), msg.header))
    finally:
        g.close()


def test_fast_publisher_drops_stale_frames_latency_bounded():
    """A camera faster than the pipeline: old frames are dropped, never queued.

    Each worker step is made to take at least STEP seconds, so the expected counts do not
    depend on how fast this machine runs the real pipeline.
    """
    STEP = 0.4
    g = Graph(single_node=True, use_camera=False)
    try:
        seg = g.nodes["segmentation"]
        real = seg.worker._process

        def slow(item):
            time.sleep(STEP)
            real(item)

        seg.worker._process = slow
        s, mm = scene(11)
        g.wait_connected()
        sent = 0
        t0 = time.monotonic()
        while time.monotonic() < t0 + 4.0:  # up to 30 Hz, far faster than one frame per STEP
            g.send(s.rgb, mm, s.intrinsics)
            sent += 1
            time.sleep(1 / 30)
        sending = time.monotonic() - t0
        assert g.wait_for(lambda: seg.worker.wait_idle(0.1), 20)
        time.sleep(0.3)
        lat = [t - stamp_to_sec(m.header.stamp) for t, m in g.results]
        # One result per STEP at most while frames kept coming, plus the newest one at the end.
        assert 4 <= len(lat) <= sending / STEP + 2, f"{len(lat)} results for {sent} frames in {sending:.1f} s"
        assert len(lat) < sent / 3, f"{len(lat)} results for {sent} frames: stale frames were not dropped"
        assert seg.worker.dropped > 0
        # Every frame the worker was given was either processed or replaced by a newer one.
        assert seg.worker.processed == len(lat)
        assert seg.worker.processed + seg.worker.dropped <= sent
        # Queueing would make latency grow with every frame (about sent x STEP by the end).
        proc = max(np.diff([t for t, _ in g.results]).max(), STEP)
        assert max(lat) < 3 * proc + 0.5, f"latency {max(lat):.2f} s, processing {proc:.2f} s"
        assert np.mean(lat[-3:]) < np.mean(lat[:3]) + 2 * proc + 0.3
    finally:
        g.close()


def test_bad_inputs_logged_and_next_good_frame_served():
    g = Graph(single_node=True, use_camera=False)
    try:
        seg = g.nodes["segmentation"]
        s, mm = scene(12)
        g.wait_connected()

        def expect_error(fragment: str, send) -> None:
            n_err, n_res = seg.errors.count, len(g.results)
            send()
            assert g.wait_for(lambda: seg.errors.count > n_err, 20), f"no error for {fragment}"
            assert fragment in seg.errors.last_message, seg.errors.last_message
            assert len(g.results) == n_res
            assert g.wait_for(lambda: any(fragment in m.msg and m.level >= 40 for m in g.logs), 30), \
                f"no /rosout error mentioning {fragment!r}"

        # missing camera_info: nothing published on it yet
        expect_error("no camera_info", lambda: g.send(s.rgb, mm, s.intrinsics, info=False))
        expect_error("mono8", lambda: g.send(s.rgb[..., 0].copy(), mm, s.intrinsics, color_enc="mono8"))
        expect_error("does not match", lambda: g.send(s.rgb, mm[:, :-8].copy(), s.intrinsics))
        expect_error("no valid pixel", lambda: g.send(s.rgb, np.zeros_like(mm), s.intrinsics))
        expect_error("empty", lambda: g.send(np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), np.uint16),
                                             s.intrinsics))
        n_res = len(g.results)
        stamp = g.send(s.rgb, mm, s.intrinsics)
        assert g.wait_for(lambda: len(g.results) > n_res, 30), "the good frame after bad ones was not served"
        msg = g.results[-1][1]
        assert abs(stamp_to_sec(msg.header.stamp) - stamp) < 1e-6
        assert len(msg.instances) > 0
    finally:
        g.close()


def test_runtime_parameter_validation():
    g = Graph(single_node=True, use_camera=False)
    try:
        from rclpy.parameter import Parameter

        seg = g.nodes["segmentation"]
        ok = seg.set_parameters([Parameter("postprocess.nms_iou", value=0.5)])[0]
        assert ok.successful and seg.holder.loads == 1
        bad = seg.set_parameters([Parameter("frame_buffer", value=0)])[0]
        assert not bad.successful and "frame_buffer" in bad.reason
        ro = seg.set_parameters([Parameter("sam.allow_random_weights", value=True)])[0]
        assert not ro.successful
        assert seg.describe_parameter("sam.allow_random_weights").read_only
        desc = seg.describe_parameter("sam.checkpoint")
        assert not desc.read_only and desc.description.startswith("path to the official .pth/.pt")
        assert "the most prompts per frame" in seg.describe_parameter("hpg.top_k").description
    finally:
        g.close()

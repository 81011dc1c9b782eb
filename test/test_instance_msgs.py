"""core <-> message conversions, and InstanceArray over real rclpy/DDS in one and in two processes."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from instance_msgs_helper import CORRUPTIONS, HEIGHT, WIDTH, corrupt, sample_header, sample_instances
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from uois_sam_ros.core.types import FrameError, Instances, Intrinsics, Prompts
from uois_sam_ros.msg import InstanceArray
from uois_sam_ros.ros.convert import (
    assert_instance_arrays_equal,
    camera_info_to_intrinsics,
    frame_from_msgs,
    instance_arrays_diff,
    instances_to_msg,
    intrinsics_to_camera_info,
    msg_to_instances,
    msg_to_prompts,
    prompts_to_msg,
    same_stamp,
    sec_to_stamp,
    stamp_to_sec,
)
from uois_sam_ros.ros.image import image_to_numpy, numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS

HELPER = Path(__file__).with_name("instance_msgs_helper.py")
TIMEOUT_S = 20.0

# the fields each corruption touches, as instance_arrays_diff names them
CORRUPTED_PATH = {
    "mask": "instances[1].mask.data",
    "roi": "instances[2].roi.x_offset",
    "score": "instances[0].score",
    "label_map": "label_map.data",
    "stamp": "header.stamp.nanosec",
    "amodal_mask": "instances[0].amodal_mask.data",
    "instances": "instances: length 4 != 3",
}


def expected_fields(inst: Instances, msg: InstanceArray) -> None:
    """Check every field of msg against values computed here from the masks, not by convert.py."""
    order = np.argsort(-inst.scores, kind="stable")
    assert (msg.height, msg.width) == inst.shape
    assert len(msg.instances) == len(inst)
    label = np.zeros(inst.shape, np.uint16)
    for rank, i in enumerate(order[::-1]):
        label[inst.masks[i]] = len(inst) - rank
    for k, i in enumerate(order):
        it = msg.instances[k]
        m = inst.masks[i]
        ys, xs = np.nonzero(m)
        assert it.id == k + 1
        assert it.score == pytest.approx(float(inst.scores[i]), abs=0)
        np.testing.assert_array_equal(np.float32(it.sam_iou), inst.sam_iou[i])
        np.testing.assert_array_equal(np.float32([it.prompt_x, it.prompt_y]), inst.prompts[i])
        assert it.area == m.sum()
        assert (it.roi.x_offset, it.roi.y_offset, it.roi.width, it.roi.height) == (
            xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert it.mask.encoding == "mono8"
        crop = image_to_numpy(it.mask)
        np.testing.assert_array_equal(crop, np.where(m, 255, 0)[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        assert it.has_amodal == (inst.amodal_masks is not None)
        if it.has_amodal:
            am = inst.amodal_masks[i]
            ay, ax = np.nonzero(am)
            assert (it.amodal_roi.x_offset, it.amodal_roi.y_offset) == (ax.min(), ay.min())
            np.testing.assert_array_equal(
                image_to_numpy(it.amodal_mask), np.where(am, 255, 0)[ay.min():ay.max() + 1, ax.min():ax.max() + 1])
            assert it.occlusion_rate == pytest.approx(1 - m.sum() / am.sum(), abs=1e-6)
        else:
            assert np.isnan(it.occlusion_rate)
    assert msg.label_map.encoding == "mono16"
    np.testing.assert_array_equal(image_to_numpy(msg.label_map), label)


def assert_inverse(inst: Instances, back: Instances) -> None:
    order = np.argsort(-inst.scores, kind="stable")
    np.testing.assert_array_equal(back.masks, inst.masks[order])
    np.testing.assert_array_equal(back.scores, inst.scores[order])
    np.testing.assert_array_equal(back.sam_iou, inst.sam_iou[order])
    np.testing.assert_array_equal(back.prompts, inst.prompts[order])
    if inst.amodal_masks is None:
        assert back.amodal_masks is None
    else:
        np.testing.assert_array_equal(back.amodal_masks, inst.amodal_masks[order])


# ----------------------------------------------------------------------- conversions


def test_instances_to_msg_fields_and_inverse() -> None:
    inst = sample_instances()
    msg = instances_to_msg(inst, sample_header())
    expected_fields(inst, msg)
    assert [it.id for it in msg.instances] == [1, 2, 3, 4]
    assert [round(it.score, 2) for it in msg.instances] == [0.93, 0.77, 0.61, 0.35]
    assert same_stamp(msg.header.stamp, sample_header().stamp)
    assert msg.header.frame_id == "camera_color_optical_frame"
    back = msg_to_instances(msg)
    assert_inverse(inst, back)
    assert back.stamp == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    np.testing.assert_array_equal(back.label_map(), image_to_numpy(msg.label_map))


def test_without_amodal_and_empty() -> None:
    inst = sample_instances()
    inst.amodal_masks = None
    msg = instances_to_msg(inst, sample_header())
    expected_fields(inst, msg)
    assert all(not it.has_amodal and len(it.amodal_mask.data) == 0 for it in msg.instances)
    assert msg_to_instances(msg).amodal_masks is None
    empty = instances_to_msg(Instances.empty(HEIGHT, WIDTH), sample_header())
    assert len(empty.instances) == 0 and not image_to_numpy(empty.label_map).any()
    assert msg_to_instances(empty).masks.shape == (0, HEIGHT, WIDTH)


def test_header_not_aliased() -> None:
    header = sample_header()
    msg = instances_to_msg(sample_instances(), header)
    header.stamp.sec = 5
    msg.header.frame_id = "other"
    assert msg.header.stamp.sec == 1_700_000_000
    assert msg.instances[0].mask.header.frame_id == "camera_color_optical_frame"


def test_msg_to_instances_rejects_bad_masks() -> None:
    msg = instances_to_msg(sample_instances(), sample_header())
    bad = copy.deepcopy(msg)
    bad.instances[1].roi.width += 1
    with pytest.raises(ValueError, match="instance 2: mask is .* but its roi is"):
        msg_to_instances(bad)
    bad = copy.deepcopy(msg)
    bad.instances[0].roi.x_offset = WIDTH - 1
    with pytest.raises(ValueError, match="instance 1: roi .* extends past the 64x48 image"):
        msg_to_instances(bad)
    bad = copy.deepcopy(msg)
    bad.instances[2].mask.encoding = "mono16"
    with pytest.raises(ValueError, match="instance 3: image encoding is 'mono16', expected 'mono8'"):
        msg_to_instances(bad)


@pytest.mark.parametrize("field", [c for c in CORRUPTIONS if c != "none"])
def test_diff_reports_each_corrupted_field(field: str) -> None:
    sent = instances_to_msg(sample_instances(), sample_header())
    received = copy.deepcopy(sent)
    assert instance_arrays_diff(sent, received) == []
    corrupt(received, field)
    diff = instance_arrays_diff(sent, received)
    assert len(diff) == 1 and diff[0].startswith(CORRUPTED_PATH[field]), diff
    with pytest.raises(AssertionError, match=r"InstanceArray messages differ:\n  " + re.escape(CORRUPTED_PATH[field])):
        assert_instance_arrays_equal(sent, received)


def test_prompts_round_trip() -> None:
    p = Prompts(points=[[10.5, 3.5], [1.0, 2.0], [7.25, 9.75]], labels=[1, 0, 1], scores=[0.2, 0.9, 0.5])
    msg = prompts_to_msg(p, sample_header(), 48, 64)
    assert (msg.height, msg.width, msg.header.frame_id) == (48, 64, "camera_color_optical_frame")
    assert [(q.x, q.y, q.label) for q in msg.prompts] == [(1.0, 2.0, 0), (7.25, 9.75, 1), (10.5, 3.5, 1)]
    back = msg_to_prompts(msg)
    np.testing.assert_array_equal(back.points, p.points[[1, 2, 0]])
    np.testing.assert_array_equal(back.labels, [0, 1, 1])
    np.testing.assert_array_equal(back.scores, p.scores[[1, 2, 0]])
    assert len(msg_to_prompts(prompts_to_msg(Prompts.empty(), sample_header(), 4, 4))) == 0
    with pytest.raises(ValueError, match="prompt label must be 1 .* or 0 .*, got 3"):
        prompts_to_msg(Prompts(points=[[1, 1]], labels=[3], scores=[1]), sample_header(), 4, 4)


def test_stamps() -> None:
    t = Time(sec=100, nanosec=123_456_789)
    assert stamp_to_sec(t) == pytest.approx(100.123456789, abs=1e-12)
    assert same_stamp(sec_to_stamp(stamp_to_sec(t)), t)
    big = Time(sec=1_700_000_000, nanosec=999_999_999)  # float64 keeps ~0.2 us at this magnitude
    assert abs(stamp_to_sec(sec_to_stamp(stamp_to_sec(big))) - stamp_to_sec(big)) < 1e-6
    assert same_stamp(sec_to_stamp(12.5), Time(sec=12, nanosec=500_000_000))
    assert same_stamp(sec_to_stamp(3.9999999999), Time(sec=4, nanosec=0))  # no nanosec overflow
    assert not same_stamp(Time(sec=1, nanosec=2), Time(sec=1, nanosec=3))
    with pytest.raises(ValueError, match="finite"):
        sec_to_stamp(float("nan"))


def test_camera_info_round_trip_and_errors() -> None:
    intr = Intrinsics(612.937, 613.173, 322.549, 248.158, 640, 480)
    info = intrinsics_to_camera_info(intr, sample_header())
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    assert list(info.k) == [612.937, 0, 322.549, 0, 613.173, 248.158, 0, 0, 1]
    assert list(info.p) == [612.937, 0, 322.549, 0, 0, 613.173, 248.158, 0, 0, 0, 1, 0]
    assert list(info.r) == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert camera_info_to_intrinsics(info) == intr
    info.k = [0.0] * 9
    with pytest.raises(FrameError, match="camera_info K is all zero"):
        camera_info_to_intrinsics(info)


# ------------------------------------------------------------------------------ frames


def _frame_msgs(h: int = 6, w: int = 8, seed: int = 1) -> tuple[np.ndarray, np.ndarray, Image, Image]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth_mm = rng.integers(0, 3000, (h, w), dtype=np.uint16)
    header = Header(stamp=Time(sec=42, nanosec=250_000_000), frame_id="cam_optical")
    return rgb, depth_mm, numpy_to_image(rgb, "rgb8", header), numpy_to_image(depth_mm, "16UC1", header)


def test_frame_from_msgs() -> None:
    rgb, depth_mm, color, depth = _frame_msgs()
    info = intrinsics_to_camera_info(Intrinsics(5.0, 5.0, 4.0, 3.0, 8, 6), color.header)
    f = frame_from_msgs(color, depth, info)
    np.testing.assert_array_equal(f.rgb, rgb)
    assert f.depth.dtype == np.float32
    np.testing.assert_allclose(f.depth, depth_mm.astype(np.float32) / 1000, rtol=1e-6)
    assert f.stamp == pytest.approx(42.25) and f.frame_id == "cam_optical"
    assert f.intrinsics == Intrinsics(5.0, 5.0, 4.0, 3.0, 8, 6)
    bgr = numpy_to_image(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8", color.header)
    metres = numpy_to_image(depth_mm.astype(np.float32) / 1000, "32FC1", color.header)
    f2 = frame_from_msgs(bgr, metres, None)
    np.testing.assert_array_equal(f2.rgb, rgb)
    np.testing.assert_array_equal(f2.depth, depth_mm.astype(np.float32) / 1000)
    assert f2.intrinsics is None
    assert frame_from_msgs(color, None, None).depth is None


def test_frame_from_msgs_errors() -> None:
    rgb, depth_mm, color, depth = _frame_msgs()
    with pytest.raises(FrameError, match="colour image: colour image encoding 'mono8' is not supported"):
        frame_from_msgs(numpy_to_image(rgb[:, :, 0].copy(), "mono8"), depth, None)
    with pytest.raises(FrameError, match="depth image encoding 'mono8' is not supported; expected 16UC1"):
        frame_from_msgs(color, numpy_to_image(depth_mm.astype(np.uint8), "mono8"), None)
    with pytest.raises(FrameError, match="depth size 7x6 does not match colour size 8x6"):
        frame_from_msgs(color, numpy_to_image(depth_mm[:, :7].copy(), "16UC1"), None)
    with pytest.raises(FrameError, match="depth has no valid pixel"):
        frame_from_msgs(color, numpy_to_image(np.zeros_like(depth_mm), "16UC1"), None)
    with pytest.raises(FrameError, match="depth has no valid pixel"):
        frame_from_msgs(color, numpy_to_image(np.full((6, 8), np.nan, np.float32), "32FC1"), None)
    info = intrinsics_to_camera_info(Intrinsics(5.0, 5.0, 4.0, 3.0, 16, 12), color.header)
    with pytest.raises(FrameError, match="intrinsics are for 16x12, image is 8x6"):
        frame_from_msgs(color, depth, info)
    truncated = copy.deepcopy(color)
    truncated.data = truncated.data[:-3]
    with pytest.raises(FrameError, match="colour image: image data is truncated"):
        frame_from_msgs(truncated, depth, None)


def test_frame_from_real_realsense_frame(real_rgbd_dir: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    bgr = cv2.imread(str(real_rgbd_dir / "0000-color.png"), cv2.IMREAD_COLOR)
    depth_mm = cv2.imread(str(real_rgbd_dir / "0000-depth.png"), cv2.IMREAD_UNCHANGED)
    assert depth_mm.dtype == np.uint16
    intr = Intrinsics.from_json(real_rgbd_dir / "camera.json")
    header = Header(stamp=Time(sec=3, nanosec=0), frame_id="camera_color_optical_frame")
    f = frame_from_msgs(numpy_to_image(bgr, "bgr8", header), numpy_to_image(depth_mm, "16UC1", header),
                        intrinsics_to_camera_info(intr, header))
    np.testing.assert_array_equal(f.rgb, bgr[:, :, ::-1])
    assert (f.width, f.height) == (640, 480) and f.intrinsics == intr
    valid = depth_mm > 0
    np.testing.assert_allclose(f.depth[valid], depth_mm[valid] / 1000.0, rtol=1e-6)


# ------------------------------------------------------------------------------ rclpy


@pytest.fixture
def ros_context():
    """A private rclpy Context per test, so a failing test cannot leak nodes into the next."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    nodes: list = []

    def make_node(name: str):
        node = rclpy.create_node(name, context=ctx)
        nodes.append(node)
        executor.add_node(node)
        return node

    try:
        yield ctx, executor, make_node
    finally:
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown(context=ctx)


def _spin_until(executor: SingleThreadedExecutor, done, timeout: float = TIMEOUT_S) -> None:
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    assert done(), f"no message within {timeout:.0f} s (ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')})"


def _topic() -> str:
    return f"/test_instances_{uuid.uuid4().hex[:8]}"


def test_qos_profiles() -> None:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
    assert (SENSOR_QOS.reliability, SENSOR_QOS.history, SENSOR_QOS.depth, SENSOR_QOS.durability) == (
        ReliabilityPolicy.BEST_EFFORT, HistoryPolicy.KEEP_LAST, 1, DurabilityPolicy.VOLATILE)
    assert (LATEST_QOS.reliability, LATEST_QOS.history, LATEST_QOS.depth) == (
        ReliabilityPolicy.RELIABLE, HistoryPolicy.KEEP_LAST, 1)


def test_pub_sub_one_process(ros_context) -> None:
    _, executor, make_node = ros_context
    inst = sample_instances()
    sent = instances_to_msg(inst, sample_header())
    topic = _topic()
    received: list[InstanceArray] = []
    pub_node, sub_node = make_node("instances_pub"), make_node("instances_sub")
    pub = pub_node.create_publisher(InstanceArray, topic, LATEST_QOS)
    sub_node.create_subscription(InstanceArray, topic, received.append, LATEST_QOS)
    pub_node.create_timer(0.05, lambda: pub.publish(sent))
    _spin_until(executor, lambda: bool(received))
    got = received[0]
    assert got is not sent
    assert_instance_arrays_equal(sent, got)
    expected_fields(inst, got)
    assert_inverse(inst, msg_to_instances(got))


def _receive_from_helper(ros_context, corruption: str) -> InstanceArray:
    _, executor, make_node = ros_context
    topic = _topic()
    received: list[InstanceArray] = []
    make_node("instances_sub").create_subscription(InstanceArray, topic, received.append, LATEST_QOS)
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    proc = subprocess.Popen([sys.executable, str(HELPER), "--topic", topic, "--corrupt", corruption,
                             "--timeout", str(TIMEOUT_S + 5)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + TIMEOUT_S
        while not received and time.monotonic() < end and proc.poll() is None:
            executor.spin_once(timeout_sec=0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert received, f"publisher process sent nothing within {TIMEOUT_S:.0f} s; rc={proc.returncode}, output:\n{out}"
    assert proc.returncode == 0, f"publisher process failed (rc {proc.returncode}):\n{out}"
    return received[0]


def test_pub_sub_two_processes(ros_context) -> None:
    inst = sample_instances()
    got = _receive_from_helper(ros_context, "none")
    assert_instance_arrays_equal(instances_to_msg(inst, sample_header()), got)
    expected_fields(inst, got)
    assert_inverse(inst, msg_to_instances(got))


def test_two_processes_corrupted_field_is_detected(ros_context) -> None:
    got = _receive_from_helper(ros_context, "label_map")
    diff = instance_arrays_diff(instances_to_msg(sample_instances(), sample_header()), got)
    assert diff == [diff[0]] and diff[0].startswith("label_map.data: 1 element(s) differ"), diff
    with pytest.raises(AssertionError):
        expected_fields(sample_instances(), got)

"""Amodal ground truth in bags (/ground_truth/amodal) and the amodal table of `uois-sam-bag eval`.

The end-to-end run through the real graph is in test_bag.py (it shares that file's graph fixture).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image
from test_bag import _frame_msgs, _write, make_samples, run_cli

from uois_sam_ros.apps import bag as app
from uois_sam_ros.apps.bag_player import FrameResult
from uois_sam_ros.core.types import Instances, Sample
from uois_sam_ros.msg import InstanceArray
from uois_sam_ros.ros import bag
from uois_sam_ros.ros.convert import instances_to_msg, msg_to_instances
from uois_sam_ros.ros.image import numpy_to_image
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS


@pytest.fixture(scope="module")
def syn() -> list[Sample]:
    """Two small synthetic scenes: amodal GT with occluded objects (what the synthetic reader fills)."""
    s = list(app.synthetic_samples(2, seed=0, width=160, height=120))
    assert all(x.amodal is not None and len(x.amodal_ids) for x in s)
    assert any((x.amodal[k] & (x.label != i)).any() for x in s for k, i in enumerate(x.amodal_ids))
    return s


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def syn_bag(request, tmp_path_factory, syn) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "bag"
    assert bag.write_samples(out, syn, storage=request.param) == 2
    return out


def test_amodal_gt_roundtrip_bit_exact(syn_bag: Path, syn: list[Sample]) -> None:
    info = bag.bag_info(syn_bag)
    assert info.topics[bag.GT_AMODAL_TOPIC] == ("uois_sam_ros/msg/InstanceArray", 2)
    frames = bag.read_frames(syn_bag)
    msgs = bag.read_messages(syn_bag, [bag.GT_AMODAL_TOPIC])[bag.GT_AMODAL_TOPIC]
    for f, s, (_, raw) in zip(frames, syn, msgs, strict=True):
        assert f.amodal.dtype == bool and f.amodal.shape == s.amodal.shape
        assert np.array_equal(f.amodal, s.amodal) and np.array_equal(f.amodal_ids, s.amodal_ids)
        # the message is the shape the amodal node publishes: rclpy reads it, visible = label == id
        msg = deserialize_message(raw, InstanceArray)
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == f.stamp_ns
        inst = msg_to_instances(msg)
        assert [it.id for it in msg.instances] == s.amodal_ids.tolist()
        assert all(it.has_amodal and it.score == 1.0 for it in msg.instances)
        assert np.array_equal(inst.masks, np.stack([s.label == i for i in s.amodal_ids]))
        assert np.array_equal(inst.amodal_masks, s.amodal)
        vis, am = inst.masks.sum((1, 2)), s.amodal.sum((1, 2))
        assert np.allclose(inst.occlusion_rates, 1 - vis / am, atol=1e-6)
        assert (msg.label_map.encoding, msg.label_map.width) == ("mono16", 160)


def test_bag_without_amodal_topic_and_mixed_samples(tmp_path: Path, syn: list[Sample]) -> None:
    plain = tmp_path / "plain"
    bag.write_samples(plain, make_samples(2))
    assert bag.GT_AMODAL_TOPIC not in bag.bag_info(plain).topics
    assert all(f.amodal is None and f.amodal_ids is None for f in bag.read_frames(plain))
    # only the samples with amodal GT get a message; the others read as None
    s0 = syn[0]
    mixed = tmp_path / "mixed"
    bag.write_samples(mixed, [Sample(s0.rgb, s0.depth, s0.intrinsics, s0.label, "no_amodal"), syn[1]],
                      storage="sqlite3", topics=bag.BagTopics(gt_amodal="/gt/am"))
    assert bag.bag_info(mixed).topics["/gt/am"] == ("uois_sam_ros/msg/InstanceArray", 1)
    f0, f1 = bag.read_frames(mixed, bag.BagTopics(gt_amodal="/gt/am"))
    assert f0.amodal is None and np.array_equal(f1.amodal, syn[1].amodal)
    with pytest.raises(bag.BagError, match="17 amodal masks but 2 amodal_ids"):
        bag.write_samples(tmp_path / "bad", [Sample(s0.rgb, s0.depth, s0.intrinsics, s0.label, "x",
                                                    np.zeros((17, 120, 160), bool), np.array([1, 2]))])
    assert not (tmp_path / "bad").exists()


def test_amodal_gt_stamp_type_and_truncation_errors(tmp_path: Path, syn: list[Sample], capsys) -> None:
    s = syn[0]
    t1, t2 = 10**9, 2 * 10**9

    def gt_amodal(t: int, stamp: int) -> tuple[str, str, int, bytes]:
        return (bag.GT_AMODAL_TOPIC, bag.INSTANCE_ARRAY, t, bag.amodal_gt_cdr(s.label, s.amodal, s.amodal_ids, stamp, "c"))

    base = _frame_msgs(s, t1) + _frame_msgs(s, t2)
    p = _write(tmp_path / "stamp", base + [gt_amodal(t1, t1), gt_amodal(t2, t2 + 7)])
    with pytest.raises(bag.BagError, match=r"1 amodal ground-truth stamps on /ground_truth/amodal match no "
                                           r"colour stamp \(first: 2.000000007 s\)"):
        bag.read_frames(p)
    rc, err = run_cli(capsys, "eval", p, "--external")
    assert rc == 2 and "amodal ground-truth stamps" in err and "Traceback" not in err

    good = bag.amodal_gt_cdr(s.label, s.amodal, s.amodal_ids, t1, "c")
    p = _write(tmp_path / "cut", base + [(bag.GT_AMODAL_TOPIC, bag.INSTANCE_ARRAY, t1, good[:len(good) // 2])])
    with pytest.raises(bag.BagError, match="a message on /ground_truth/amodal cannot be decoded as "
                                           "uois_sam_ros/msg/InstanceArray"):
        bag.read_frames(p)

    p = _write(tmp_path / "type", base + [(bag.GT_AMODAL_TOPIC, bag.IMAGE, t1, bag.image_cdr(s.label, "mono16", t1, "c"))])
    with pytest.raises(bag.BagError, match="topic /ground_truth/amodal is sensor_msgs/msg/Image, expected "
                                           "uois_sam_ros/msg/InstanceArray"):
        bag.read_frames(p)


def _result(f: bag.BagFrame, answer: InstanceArray | None, amodal: InstanceArray | None) -> FrameResult:
    return FrameResult(f.stamp_ns, f.name, published=1.0, answered=1.1 if answer is not None else None,
                       answer=answer, amodal_answered=None if amodal is None else 1.2, amodal_answer=amodal)


def test_score_amodal_perfect_visible_only_and_no_stage(syn_bag: Path, tmp_path: Path) -> None:
    frames = bag.read_frames(syn_bag)
    gt = [deserialize_message(raw, InstanceArray)
          for _, raw in bag.read_messages(syn_bag, [bag.GT_AMODAL_TOPIC])[bag.GT_AMODAL_TOPIC]]

    # the GT amodal itself as the answer: perfect on every figure
    res = app.score(frames, [_result(f, g, g) for f, g in zip(frames, gt, strict=True)], "t", "lockstep",
                    amodal_title="gt as answer")
    a = res.amodal
    assert a is not None and a["frames"] == 2
    assert a["mIoU_full"] == pytest.approx(100) and a["mIoU_occ"] == pytest.approx(100)
    assert a["AP"] == pytest.approx(100) and a["AR"] == pytest.approx(100)
    assert "gt as answer" in res.amodal_table and "mIoU_occ" in res.amodal_table
    assert "amodal: 2 frames scored" in res.summary() and res.amodal_table in res.summary()
    out = tmp_path / "r.json"
    res.to_json(out)
    doc = json.loads(out.read_text())
    assert set(doc["amodal"]) == {"mIoU_full", "mIoU_occ", "AP", "AP50", "AP75", "AR", "frames"}
    assert doc["frames"][0]["amodal_answered"] and doc["frames"][0]["amodal_IoU_full"] == pytest.approx(1.0)

    # the visible masks as the completion: nothing of the hidden parts, mIoU_occ = 0
    header = numpy_to_image(np.zeros((1, 1), np.uint8), "mono8").header
    vis_msgs = []
    for f in frames:
        vis = np.stack([f.label == i for i in f.amodal_ids])
        vis_msgs.append(instances_to_msg(Instances(vis, np.ones(len(vis)), amodal_masks=vis), header))
    res = app.score(frames, [_result(f, m, m) for f, m in zip(frames, vis_msgs, strict=True)], "t", "lockstep")
    assert res.amodal["mIoU_occ"] == 0.0 and 0 < res.amodal["mIoU_full"] < 100

    # only frames with an amodal answer count
    res = app.score(frames, [_result(frames[0], gt[0], gt[0]), _result(frames[1], gt[1], None)], "t", "rate x1")
    assert res.amodal["frames"] == 1 and "of 2 with amodal GT and 2 answered" in res.summary()

    # amodal GT but a graph without the amodal stage: one line, no table, not an error
    res = app.score(frames, [_result(f, g, None) for f, g in zip(frames, gt, strict=True)], "t", "lockstep",
                    amodal_stage=False)
    assert res.amodal is None and res.amodal_table == ""
    assert "the bag has amodal GT (2 frames) but the graph has no amodal stage" in res.summary()
    assert res.means["OF"] == pytest.approx(100)  # the segmentation table is unaffected
    # a bag without amodal GT says nothing about amodal
    plain = [bag.BagFrame(f.stamp_ns, f.name, f.color, f.depth, f.info, f.label) for f in frames]
    res = app.score(plain, [_result(f, g, g) for f, g in zip(plain, gt, strict=True)], "t", "lockstep")
    assert res.amodal is None and "amodal" not in res.summary() and math.isfinite(res.means["OF"])


def test_cli_amodal_args(tmp_path: Path) -> None:
    a = app.build_parser().parse_args(["eval", "x", "--amodal", "false", "--gt-amodal-topic", "/a",
                                       "--amodal-topic", ""])
    assert (a.amodal, a.gt_amodal_topic, a.amodal_topic) == ("false", "/a", "")
    specs = app.graph_specs({"amodal": "false"})
    assert [s.name for s in specs] == ["hpg", "segmentation"]
    assert [s.name for s in app.graph_specs({})][-1] == "amodal"
    specs = app.graph_specs({}, {"amodal.method": "convex_hull"})
    assert next(s for s in specs if s.name == "amodal").parameters["amodal.method"] == "convex_hull"


class AmodalRelay:
    """A stand-in amodal node: /instances in, /instances/amodal out (amodal = visible). Its
    publisher appears only with the first camera frame, like an amodal node that configures
    late, so the player finds it during the warm-up, not in wait_for_graph."""

    def __init__(self) -> None:
        self.node = rclpy.create_node("amodal_relay")
        self.pub = None
        self.node.create_subscription(Image, bag.COLOR_TOPIC, self.on_color, SENSOR_QOS)
        self.node.create_subscription(InstanceArray, "/instances", self.on_instances, LATEST_QOS)
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    def on_color(self, _msg) -> None:
        if self.pub is None:
            self.pub = self.node.create_publisher(InstanceArray, "/instances/amodal", LATEST_QOS)

    def on_instances(self, msg: InstanceArray) -> None:
        if self.pub is not None:
            inst = msg_to_instances(msg)
            self.pub.publish(instances_to_msg(Instances(inst.masks, inst.scores, amodal_masks=inst.masks),
                                              msg.header))

    def stop(self) -> None:
        self.ex.shutdown(timeout_sec=1.0)
        self.thread.join(timeout=5.0)  # spin() has returned: no wait set holds the nodes' entities
        self.node.destroy_node()


def test_player_waits_for_a_late_amodal_publisher(tmp_path: Path, syn: list[Sample]) -> None:
    """Lockstep collects every frame's instances/amodal answer even when the amodal publisher is
    discovered only during the warm-up (its first answer may have gone out before we subscribed)."""
    from test_bag import EchoGraph

    syn_bag = tmp_path / "bag"
    bag.write_samples(syn_bag, syn)

    def start() -> app.Graph:
        echo, relay = EchoGraph(delay=0.2), AmodalRelay()

        def stop() -> None:
            relay.stop()
            echo.stop()
        return app.Graph(stop, "echo")

    res = app.evaluate(syn_bag, lockstep=True, timeout=20, graph=start)
    assert (res.published, res.answered) == (2, 2)
    assert res.amodal is not None and res.amodal["frames"] == 2, res.summary()
    assert not any("warm-up" in n for n in res.amodal_notes), res.amodal_notes
    assert res.amodal["mIoU_occ"] == 0.0  # the relay's "completion" is the visible mask

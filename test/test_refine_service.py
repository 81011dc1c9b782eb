"""The segmentation node's ~/refine service over real rclpy loopback (a random-weight small SAM with
C+E+CM adaptation), and the refine cache on the weights-free segmenter (ROS-free)."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("uois_sam_ros.srv")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from wait_helper import wait_until  # noqa: E402

from uois_sam_ros.core.adapt.refine import RefineError, Refiner, decoder_file  # noqa: E402
from uois_sam_ros.core.config import AdaptConfig, config_from_dict  # noqa: E402
from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene  # noqa: E402
from uois_sam_ros.core.segment.geometric import GeometricSegmenter  # noqa: E402
from uois_sam_ros.core.segment.pipeline import UOISPipeline  # noqa: E402
from uois_sam_ros.msg import Click, InstanceArray  # noqa: E402
from uois_sam_ros.nodes.common import shutdown_executor  # noqa: E402
from uois_sam_ros.nodes.segmentation import SegmentationNode  # noqa: E402
from uois_sam_ros.ros.convert import intrinsics_to_camera_info  # noqa: E402
from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC  # noqa: E402
from uois_sam_ros.ros.image import image_to_numpy, numpy_to_image  # noqa: E402
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS  # noqa: E402
from uois_sam_ros.srv import Refine  # noqa: E402

W, H = 320, 240
NS = 1_000_000_000


def inside_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel deepest inside a mask."""
    d = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(x), int(y)


def largest_objects(label: np.ndarray, n: int) -> list[int]:
    ids, counts = np.unique(label[label > 0], return_counts=True)
    return [int(i) for i in ids[np.argsort(-counts)][:n]]


# ------------------------------------------------------------------------------ weights-free, ROS-free
def test_weights_free_refine_replaces_appends_and_bounds_the_cache():
    s = generate_scene(3, SceneConfig(width=W, height=H))
    pipe = UOISPipeline(config_from_dict({"pipeline": {"method": "weights_free"}}))
    frame = s.frame()
    inst = pipe.run(frame)
    assert len(inst) >= 2
    ref = Refiner(capacity=2)
    ref.bind(pipe)
    assert ref.mode == "weights_free"
    stamps = [k * NS + 17 for k in (1, 2, 3)]
    for st in stamps:
        ref.add(st, frame, inst)
    assert ref.stamps == stamps[1:], "the oldest stamp leaves the bounded cache"
    with pytest.raises(RefineError, match=r"no cached frame at stamp 1\.000000017: the last 2 frames are kept, "
                                          r"cached stamps \(oldest first\): 2\.000000017, 3\.000000017"):
        ref.refine(stamps[0], [(10, 10, True)])

    region = inst.masks[0]  # a region the geometric segmenter finds
    pos = inside_point(region)
    neg_mask = region.copy()
    neg_mask[:, :pos[0] + 3] = False  # a negative click on the object's right part cuts that side off
    neg = inside_point(neg_mask)
    clicks = [(pos[0] + 0.3, pos[1] - 0.2, True), (float(neg[0]), float(neg[1]), False)]
    ref_seg = GeometricSegmenter(pipe.config.geometric)
    ref_seg.set_frame(frame)
    want, conf = ref_seg.decode_clicks(np.array([pos, neg], np.float32), np.array([1, 0]))
    assert want.any() and not want[neg[1], neg[0]]

    before = ref.entry(stamps[2]).instances
    res = ref.refine(stamps[2], clicks, instance_id=2)  # replaces instance 2
    assert np.array_equal(res.mask, want) and res.score == pytest.approx(conf)
    assert len(res.instances) == len(before)
    assert np.array_equal(res.instances.masks[res.index], want)
    assert res.instance_id == res.index + 1
    assert np.all(np.diff(res.instances.scores) <= 0), "ids stay 1..N in descending score"
    kept = [i for i in range(len(before)) if i != 1]
    for i in kept:  # every other instance is still there, unchanged
        assert any(np.array_equal(before.masks[i], m) for m in res.instances.masks)
    assert np.isnan(res.instances.sam_iou[res.index])
    assert tuple(res.instances.prompts[res.index]) == pos  # the first positive click, on its pixel

    res2 = ref.refine(stamps[2], clicks[:1], instance_id=0)  # an object the frame missed: appended
    assert len(res2.instances) == len(before) + 1

    n = len(res2.instances)
    for args, msg in (
        ((stamps[2], []), "no click: a request needs at least one click"),
        ((stamps[2], [(5, 5, True), (W - 0.5, 10, True)]), r"click 2 at \(319.5, 10\) is outside the 320x240 image"),
        ((stamps[2], [(5, 5, True), (5, -0.6, False)]), r"click 2 at \(5, -0.6\) is outside"),
        ((stamps[2], [(5, 5, True), (float("nan"), 5, True)]), "outside"),
        ((stamps[2], clicks, n + 1), f"unknown instance id {n + 1}: the frame at 3.000000017 has ids 1..{n}"),
    ):
        with pytest.raises(RefineError, match=msg):
            ref.refine(*args)
    assert len(ref.entry(stamps[2]).instances) == n, "a refused request changes nothing"
    assert ref.requests == 8


# ------------------------------------------------------------------------------ the node over rclpy
class Rig:
    """The segmentation node alone (single-node mode, random small SAM), plus a probe that plays the
    camera, records /instances and calls ~/refine."""

    def __init__(self, params: dict) -> None:
        self.ctx = Context()
        rclpy.init(context=self.ctx)
        self.node = SegmentationNode("segmentation", context=self.ctx,
                                     parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        assert self.node.autostart(), self.node.configure_failure
        self.probe = rclpy.create_node("probe", context=self.ctx)
        self.got: list[InstanceArray] = []
        self.probe.create_subscription(InstanceArray, "instances", self.got.append, LATEST_QOS)
        self.pubs = {t: self.probe.create_publisher(m, t, SENSOR_QOS) for t, m in (
            (COLOR_TOPIC, Image), (DEPTH_TOPIC, Image), (INFO_TOPIC, CameraInfo))}
        self.client = self.probe.create_client(Refine, "/segmentation/refine")
        self.ex = MultiThreadedExecutor(num_threads=3, context=self.ctx)
        self.ex.add_node(self.node)
        self.ex.add_node(self.probe)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()
        assert self.wait(lambda: all(p.get_subscription_count() >= 1 for p in self.pubs.values()), 20)
        assert self.wait(lambda: self.node.pub_instances.get_subscription_count() >= 1, 20)
        assert self.client.wait_for_service(timeout_sec=20)

    wait = staticmethod(wait_until)

    def send(self, sample, stamp: Time) -> None:
        """One camera frame; returns once its /instances message arrived."""
        n = len(self.got)
        header = Header(stamp=stamp, frame_id="camera_color_optical_frame")
        mm = np.clip(np.round(sample.depth * 1000.0), 0, 65535).astype(np.uint16)
        self.pubs[INFO_TOPIC].publish(intrinsics_to_camera_info(sample.intrinsics, header))
        self.pubs[COLOR_TOPIC].publish(numpy_to_image(sample.rgb, "rgb8", header))
        self.pubs[DEPTH_TOPIC].publish(numpy_to_image(mm, "16UC1", header))
        assert self.wait(lambda: len(self.got) > n, 30), "no /instances for the frame"

    def call(self, stamp: Time, clicks: list[tuple[float, float, bool]], instance_id: int = 0,
             class_name: str = "") -> Refine.Response:
        req = Refine.Request(stamp=stamp, instance_id=instance_id, class_name=class_name,
                             clicks=[Click(x=float(x), y=float(y), positive=p) for x, y, p in clicks])
        fut = self.client.call_async(req)
        assert self.wait(fut.done, 30), "no refine response"
        return fut.result()

    def close(self) -> None:
        shutdown_executor(self.ex)
        self.thread.join(timeout=5.0)  # spin() has returned: no wait set holds the nodes' entities
        self.node.destroy_node()
        self.probe.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def _same_instance(a, b) -> bool:
    return (a.id == b.id and a.roi == b.roi and a.area == b.area and bytes(a.mask.data) == bytes(b.mask.data)
            and a.score == b.score)


def test_refine_service_round_trip_errors_cache_and_adaptation(tmp_path):
    rig = Rig({"single_node": True, "sam.model_type": "vit_synth", "sam.allow_random_weights": True,
               "sam.device": "cpu", "hpg.device": "cpu", "hpg.top_k": 2, "pipeline.method": "heatmap",
               "publish_overlay": False, "refine_frames": 2, "adapt.click_adaptation": "C",
               "adapt.result_mask": "E", "adapt.click_mask": True, "decoder_dir": str(tmp_path)})
    try:
        node = rig.node
        encodes: list[int] = []
        node.pipeline.segmenter.model.image_encoder.register_forward_hook(lambda *a: encodes.append(1))
        samples = [generate_scene(seed, SceneConfig(width=W, height=H)) for seed in (3, 4, 5)]
        stamps = [Time(sec=100 + k, nanosec=7) for k in range(3)]
        for sample, st in zip(samples, stamps):
            rig.send(sample, st)
        assert node.worker.wait_idle(10)
        assert len(encodes) == 3, "one encoder pass per frame"
        assert node.refiner.stamps == [101 * NS + 7, 102 * NS + 7], "refine_frames=2 keeps the last two"

        # Bad requests: success=false with the reason; the node keeps serving.
        bad = [
            (dict(stamp=stamps[0], clicks=[(5, 5, True)]),
             "no cached frame at stamp 100.000000007: the last 2 frames are kept, cached stamps (oldest first): "
             "101.000000007, 102.000000007"),
            (dict(stamp=stamps[2], clicks=[]), "no click: a request needs at least one click on the object"),
            (dict(stamp=stamps[2], clicks=[(5, 5, True), (W, 5, False)]),
             "click 2 at (320, 5) is outside the 320x240 image"),
            (dict(stamp=stamps[2], clicks=[(5, 5, True)], instance_id=99), "unknown instance id 99: the frame at "
             "102.000000007 has"),
        ]
        n_msgs = len(rig.got)
        for kw, msg in bad:
            r = rig.call(**kw)
            assert not r.success and msg in r.message, r.message
        time.sleep(0.2)
        assert len(rig.got) == n_msgs, "a refused request publishes nothing"

        sample = samples[2]
        n_inst = len(rig.got[-1].instances)
        a, b = largest_objects(sample.label, 2)
        pa, pb = inside_point(sample.label == a), inside_point(sample.label == b)

        # A new object (id 0), class 'mug': the refined instance comes back and /instances is
        # published again with the frame's stamp, holding that very instance.
        r1 = rig.call(stamps[2], [(*pa, True)], 0, "mug")
        assert r1.success, r1.message
        inst = r1.instance
        assert inst.mask.encoding == "mono8" and (inst.mask.height, inst.mask.width) == (inst.roi.height, inst.roi.width)
        assert 0 < inst.roi.width <= W and 0 < inst.roi.height <= H
        assert inst.roi.x_offset + inst.roi.width <= W and inst.roi.y_offset + inst.roi.height <= H
        crop = image_to_numpy(inst.mask, expected_encoding="mono8")
        assert inst.area == int((crop > 0).sum()) > 0
        assert inst.mask.header.stamp == stamps[2]
        assert rig.wait(lambda: len(rig.got) > n_msgs, 10), "no re-published /instances"
        out = rig.got[-1]
        assert out.header.stamp == stamps[2] and (out.height, out.width) == (H, W)
        assert len(out.instances) == n_inst + 1
        assert _same_instance(out.instances[inst.id - 1], inst)
        assert "1 decoded now" in r1.message and "adaptation C+E+CM" in r1.message

        # All clicks so far, the returned id: the open object goes on (only the new click is decoded),
        # its instance is replaced, and continual click adaptation has changed the 'mug' decoder.
        n_msgs = len(rig.got)
        neg = (float(min(W - 1, pa[0] + 40)), float(pa[1]))
        r2 = rig.call(stamps[2], [(*pa, True), (*neg, False)], inst.id, "mug")
        assert r2.success and "2 click(s), 1 decoded now" in r2.message, r2.message
        assert rig.wait(lambda: len(rig.got) > n_msgs, 10)
        out = rig.got[-1]
        assert out.header.stamp == stamps[2] and len(out.instances) == n_inst + 1
        assert _same_instance(out.instances[r2.instance.id - 1], r2.instance)
        ad = node.refiner.adapter
        orig, mug = ad.original_state_dict(), ad.state_dict("mug")
        assert any(not torch.equal(orig[k], mug[k]) for k in orig), "C adaptation changed the decoder"
        assert not decoder_file(tmp_path, "mug").exists(), "the object is still open"

        # Another object ends the first one: its after-object (E + CM) step, and the class's file.
        n_msgs = len(rig.got)
        r3 = rig.call(stamps[2], [(*pb, True)], 0, "mug")
        assert r3.success, r3.message
        assert decoder_file(tmp_path, "mug").is_file()
        assert rig.wait(lambda: len(rig.got) > n_msgs, 10)
        assert len(rig.got[-1].instances) == n_inst + 2
        assert len(encodes) == 3, "refinement never re-encodes a frame"
        assert node.refiner.objects == 1

        # The modes are parameters: checked, and applied from the next object on.
        res = node.set_parameters([Parameter("adapt.result_mask", value="X")])[0]
        assert not res.successful and "adapt.result_mask" in res.reason
        res = node.set_parameters([Parameter("adapt.result_mask", value="U")])[0]
        assert res.successful, res.reason
        assert rig.wait(lambda: node.refiner.cfg.result_mask == "U", 5)
        assert node.refiner.objects == 2, "a mode change ends the open object"

        # Deactivate ends the open object too (its decoder is written) and takes the service away.
        r4 = rig.call(stamps[1], [(*inside_point(samples[1].label == largest_objects(samples[1].label, 1)[0]), True)],
                      0, "bowl")
        assert r4.success and "adaptation C+U+CM" in r4.message, r4.message
        assert not decoder_file(tmp_path, "bowl").exists()
        node.trigger_deactivate()
        assert node.refiner.objects == 3 and decoder_file(tmp_path, "bowl").is_file()
        assert rig.wait(lambda: not rig.client.service_is_ready(), 10)

        # A new refiner on the same SAM loads the saved decoder by its class name.
        fresh = Refiner(2, AdaptConfig(click_adaptation="C"), tmp_path)
        fresh.bind(node.pipeline)
        assert fresh.adapter.classes == ["bowl", "mug"]
        saved = torch.load(decoder_file(tmp_path, "mug"), weights_only=True)["state_dict"]
        assert all(torch.equal(saved[k], v) for k, v in fresh.adapter.state_dict("mug").items())
    finally:
        rig.close()

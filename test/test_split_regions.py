"""Split mode computes the weights-free regions once per frame: the hpg node sends them (hpg/regions,
packed in a mono16 image) and the segmentation node rebuilds them bit for bit instead of segmenting
the frame again; without them it computes them itself, with the same result."""

from __future__ import annotations

import numpy as np
import pytest

from uois_sam_ros.core.config import Config, GeometricConfig
from uois_sam_ros.core.data.synthetic import SceneConfig, generate_scene
from uois_sam_ros.core.segment import geometric
from uois_sam_ros.core.segment.pipeline import UOISPipeline
from uois_sam_ros.core.types import FrameError


def _frame(seed: int, width: int, height: int):
    frame = generate_scene(seed, SceneConfig(width=width, height=height)).frame()
    frame.depth = np.round(frame.depth * 1000.0).astype(np.float32) * np.float32(0.001)  # as 16UC1 mm
    return frame


@pytest.mark.parametrize("seed,size", [(0, (640, 480)), (3, (320, 240)), (7, (320, 240))])
def test_packed_regions_rebuild_the_same_segments(seed, size):
    cfg = GeometricConfig()
    frame = _frame(seed, *size)
    source = geometric.GeometricPromptSource(cfg)
    prompts = source.prompts(frame)
    packed = source.packed_regions()
    assert packed.dtype == np.uint16 and packed.shape == (frame.height, frame.width)
    a = source.last_segments
    seg = geometric.GeometricSegmenter(cfg)  # another process: no prompt source of its own
    seg.set_frame(frame, packed)
    b = seg._seg
    assert b is not a and b.plane.candidates == []  # rebuilt, not refitted
    assert np.array_equal(a.plane.coefficients, b.plane.coefficients)
    assert np.array_equal(a.plane.height, b.plane.height, equal_nan=True)
    for name in ("inliers", "region"):
        assert np.array_equal(getattr(a.plane, name), getattr(b.plane, name)), name
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.above, b.above) and a._slices == b._slices
    ref = geometric.GeometricSegmenter(cfg)
    ref.set_frame(frame)
    d_ref, d = ref.decode(prompts), seg.decode(prompts)
    assert np.array_equal(d_ref.masks, d.masks) and np.array_equal(d_ref.scores, d.scores)
    clicks = prompts.points[:1]
    assert seg.decode_clicks(clicks, np.ones(1, np.int64))[1] == ref.decode_clicks(clicks, np.ones(1, np.int64))[1]


def test_split_pipelines_with_packed_regions_equal_the_full_pipeline():
    cfg = Config()
    cfg.pipeline.method = "weights_free"
    full, hpg, masks = (UOISPipeline(cfg, part=p) for p in ("full", "prompts", "masks"))
    assert masks.takes_regions and not UOISPipeline(cfg, part="prompts").takes_regions
    frame = _frame(11, 320, 240)
    prompts = hpg.prompts(frame)
    packed = hpg.packed_regions()
    expected = full.run(frame)
    for regions in (packed, None):  # None: the segmenter computes the regions itself
        got = masks.run(frame, prompts, regions)
        assert np.array_equal(got.masks, expected.masks) and np.array_equal(got.scores, expected.scores)
    bad = np.zeros((10, 10), np.uint16)
    with pytest.raises(FrameError, match="packed regions"):
        masks.run(frame, prompts, bad)


def test_too_many_regions_for_14_bits_are_not_packed():
    frame = _frame(0, 320, 240)
    source = geometric.GeometricPromptSource(GeometricConfig())
    source.prompts(frame)
    source.last_segments.labels = source.last_segments.labels.copy()
    source.last_segments.labels[0, 0] = geometric.REGION_ID_MASK + 1
    assert source.packed_regions() is None


# ------------------------------------------------------------------------- the nodes
def test_split_graph_sends_the_regions_and_falls_back_without_them():
    pytest.importorskip("rclpy")
    pytest.importorskip("uois_sam_ros.msg")
    from test_nodes import Graph, scene

    from uois_sam_ros.ros.convert import assert_instance_arrays_equal, frame_from_msgs, instances_to_msg
    from uois_sam_ros.ros.graph import COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC
    from uois_sam_ros.ros.params import params_to_config

    g = Graph(single_node=False, use_camera=False, overrides={"hpg": {"pipeline.method": "weights_free"},
                                                              "segmentation": {"pipeline.method": "weights_free"}})
    try:
        seg, hpg = g.nodes["segmentation"], g.nodes["hpg"]
        core = UOISPipeline(params_to_config(next(s for s in g.specs if s.name == "segmentation").parameters))
        pipeline = seg.pipeline
        given: list = []
        real_run = pipeline.run
        pipeline.run = lambda frame, prompts=None, regions=None: given.append(regions) or real_run(frame, prompts,
                                                                                                     regions)
        g.wait_connected(2)
        assert g.wait_for(lambda: hpg.pub_regions.get_subscription_count() >= 1, 20)
        for k, seed in enumerate((11, 12)):
            if k == 1:  # an hpg node that sends no regions: the segmentation node computes them itself
                hpg.pipeline.packed_regions = lambda: None
            s, mm = scene(seed)
            stamp = g.send(s.rgb, mm, s.intrinsics)
            assert g.wait_for(lambda n=k: len(g.results) > n, 60), "no InstanceArray for the frame"
            msg = g.results[-1][1]
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            assert abs(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 - stamp) < 1e-6
            assert g.wait_for(lambda kk=key: all(kk in g.camera_msgs[t] for t in (COLOR_TOPIC, DEPTH_TOPIC,
                                                                                  INFO_TOPIC)), 10)
            frame = frame_from_msgs(*(g.camera_msgs[t][key] for t in (COLOR_TOPIC, DEPTH_TOPIC, INFO_TOPIC)),
                                    depth_scale=seg.params.get("depth_scale"))
            assert_instance_arrays_equal(msg, instances_to_msg(core.run(frame), msg.header))
        assert len(given) == 2
        assert given[0] is not None and given[0].dtype == np.uint16, "the first frame came with its regions"
        assert given[1] is None, "without regions from hpg the segmenter computes them"
        status = {kv.key: kv.value for kv in seg.diagnostic_status().values}
        assert {"time_arrive_ms", "time_sync_ms", "time_queue_ms", "time_convert_ms", "time_core_ms",
                "time_output_ms"} <= set(status)
    finally:
        g.close()

"""Every dataset reader on a generated copy of its on-disk layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import dataset_layouts as L  # noqa: E402

from uois_sam_ros.core.data.datasets import DatasetError, ocid_table_sequence, open_dataset  # noqa: E402
from uois_sam_ros.core.types import Intrinsics  # noqa: E402


def test_ocid_floor_and_table_by_path_component_under_a_root_named_table(tmp_path):
    root = tmp_path / "my_table_experiments" / "OCID-dataset"  # 'table' in the root path
    written = L.write_ocid(root)
    ds = open_dataset("ocid", root)
    assert len(ds) == 8 and ds.name == "ocid"
    seen_floor_id2 = False
    for i in range(len(ds)):
        s = ds[i]
        rel = next(k for k in written if s.name == k.replace("/label/", "/").removesuffix(".png").replace("/", "__"))
        table, raw = written[rel]
        expect = raw.copy()
        expect[raw == 1] = 0
        if table:
            expect[raw == 2] = 0
        np.testing.assert_array_equal(s.label, expect)
        assert (s.label == 2).any() != table  # id 2 is an object only in floor sequences
        seen_floor_id2 |= not table and (s.label == 2).any()
        assert s.depth.dtype == np.float32 and 0.6 < s.depth.max() < 0.95  # mm -> m
        assert s.intrinsics is None and s.rgb.shape == (L.H, L.W, 3)
    assert seen_floor_id2
    # A sub-tree works too, and the given intrinsics fill the gap.
    sub = open_dataset("ocid", root / "ARID20" / "table", intrinsics=Intrinsics(500, 500, 32, 24, 0, 0))
    assert len(sub) == 2
    s = sub[0]
    assert s.intrinsics == Intrinsics(500, 500, 32, 24, L.W, L.H)
    assert not (s.label == 2).any() and not (s.label == 1).any()


def test_ocid_table_detection_rule():
    assert ocid_table_sequence(Path("/data/table_top/OCID/ARID20/floor/top/seq01/label/x.png")) is False
    assert ocid_table_sequence(Path("/d/YCB10/table/bottom/box/seq07/label/x.png")) is True
    assert ocid_table_sequence(Path("/d/renamed/table/top/seq01/label/x.png")) is True
    assert ocid_table_sequence(Path("/d/renamed/tables/top/seq01/label/x.png")) is False


def test_osd_with_and_without_amodal(tmp_path):
    root = L.write_osd(tmp_path / "OSD-0.2-depth")
    ds = open_dataset("osd", root)
    assert len(ds) == 3
    s = ds[1]
    rgb, depth, label, am = L.scene(101)
    np.testing.assert_array_equal(s.label, label)
    np.testing.assert_array_equal(s.rgb, rgb)
    np.testing.assert_allclose(s.depth, depth / 1000.0, rtol=1e-6)
    assert s.amodal.shape == (3, L.H, L.W)
    np.testing.assert_array_equal(s.amodal_ids, [1, 2, 3])
    np.testing.assert_array_equal(s.amodal, np.stack(am))
    plain = L.write_osd(tmp_path / "plain", amodal=False)
    assert open_dataset("osd", plain)[0].amodal is None


def test_phocal_data_list_sampling_and_per_sequence_intrinsics(tmp_path):
    root = L.write_phocal(tmp_path / "PhoCAL", depth_scale=0.5)
    assert len(open_dataset("phocal", root)) == 24
    ds = open_dataset("phocal", root, sample_every=10)
    assert ds.names == ["sequence_1__000000", "sequence_1__000010", "sequence_2__000000", "sequence_2__000010"]
    s = ds[3]
    assert s.intrinsics.fx == L.INTR["fx"] + 2 and (s.intrinsics.width, s.intrinsics.height) == (L.W, L.H)
    assert ds[0].intrinsics.fx == L.INTR["fx"] + 1
    _, depth, label, _ = L.scene(200 + 100 + 10)
    np.testing.assert_array_equal(s.label, label)
    np.testing.assert_allclose(s.depth, np.round(depth / 0.5) * 0.5 / 1000.0, rtol=1e-6)
    assert len(open_dataset("phocal", root, sample_every=10, limit=2)) == 2
    (root / "data_list.txt").write_text("sequence_9/rgb/000000.png\n")
    with pytest.raises(DatasetError, match=r"data_list.txt:1: .*sequence_9"):
        open_dataset("phocal", root)


def test_housecat6d_255_is_background_and_scene_intrinsics(tmp_path):
    root = L.write_housecat6d(tmp_path / "HouseCat6D")
    ds = open_dataset("housecat6d", root, sample_every=10)
    assert len(ds) == 4
    s = ds[3]  # scene02, frame 10
    _, _, label, _ = L.scene(400 + 100 + 10)
    expect = np.where(label == 0, 0, label - 1)  # 255 -> 0; object 1 had id 0 and merges into bg
    np.testing.assert_array_equal(s.label, expect)
    assert not (s.label == 255).any()
    assert s.intrinsics.fx == pytest.approx(2 * L.INTR["fx"])
    assert ds[0].intrinsics.fx == pytest.approx(L.INTR["fx"])


@pytest.mark.parametrize("compressed", [True, False])
def test_uoais_sim_coco_json(tmp_path, compressed):
    ann = L.write_uoais(tmp_path / "UOAIS-Sim", compressed=compressed)
    ds = open_dataset("uoais-sim", tmp_path / "UOAIS-Sim", ann)
    assert len(ds) == 3
    s = ds[0]
    doc = json.loads(ann.read_text())
    a = [x for x in doc["annotations"] if x["image_id"] == 1]
    assert s.amodal.shape == (len(a), L.H, L.W)
    # Object 1 is partly occluded: its amodal mask is larger than its visible label region.
    assert s.amodal[0].sum() > (s.label == 1).sum() > 0
    assert (s.amodal[0] & (s.label == len(a))).any()  # hidden under the last object
    assert s.intrinsics == Intrinsics(L.INTR["fx"], L.INTR["fy"], L.INTR["cx"], L.INTR["cy"], L.W, L.H)
    assert s.depth.max() == pytest.approx(0.9, abs=0.01)
    assert s.name == "images__color__000000"


def test_uoais_sim_errors(tmp_path):
    ann = L.write_uoais(tmp_path / "U")
    with pytest.raises(DatasetError, match="needs --annotations"):
        open_dataset("uoais-sim", tmp_path / "U")
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["visible_mask"]["counts"] = [5, 5]
    ann.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="RLE runs cover 10 pixels"):
        open_dataset("uoais-sim", tmp_path / "U", ann)[0]


def test_folder_reader_pairs_by_stem_with_camera_json(tmp_path):
    root = L.write_folder(tmp_path / "mine")
    ds = open_dataset("folder", root)
    assert ds.names == ["frame000", "frame001", "frame002"]
    s = ds[2]
    _, depth, label, _ = L.scene(802)
    np.testing.assert_array_equal(s.label, label)
    np.testing.assert_allclose(s.depth, depth / 1000.0, rtol=1e-6)
    assert s.intrinsics.fx == L.INTR["fx"]
    bare = L.write_folder(tmp_path / "bare", labels=False, depth=False, camera=False)
    s = open_dataset("folder", bare)[0]
    assert s.label is None and s.depth is None and s.intrinsics is None
    s = open_dataset("folder", bare, intrinsics=Intrinsics(1, 2, 3, 4, 10, 10))
    with pytest.raises(DatasetError, match="intrinsics are for 10x10"):
        s[0]


def test_real_fixture_frames_as_a_folder(tmp_path, real_rgbd_dir):
    import shutil

    for f in sorted(real_rgbd_dir.glob("000[01]-color.png")):
        stem = f.name.split("-")[0]
        (tmp_path / "rgb").mkdir(exist_ok=True)
        (tmp_path / "depth").mkdir(exist_ok=True)
        shutil.copy(f, tmp_path / "rgb" / f"{stem}.png")
        shutil.copy(real_rgbd_dir / f"{stem}-depth.png", tmp_path / "depth" / f"{stem}.png")
    shutil.copy(real_rgbd_dir / "camera.json", tmp_path / "camera.json")
    s = open_dataset("folder", tmp_path)[0]
    assert s.rgb.shape == (480, 640, 3) and s.intrinsics.fx == pytest.approx(612.937)
    valid = s.depth[s.depth > 0]
    assert 0.2 < np.median(valid) < 3.0  # a tabletop in metres


def test_bad_roots_and_kinds(tmp_path):
    with pytest.raises(DatasetError, match="ocid root folder not found"):
        open_dataset("ocid", tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown dataset 'coco2017'"):
        open_dataset("coco2017", tmp_path)
    for kind, what in [("ocid", "no OCID frames"), ("osd", "no OSD frames"), ("phocal", "no PhoCAL frames"),
                       ("housecat6d", "no HouseCat6D frames"), ("folder", "no images under")]:
        with pytest.raises(DatasetError, match=what):
            open_dataset(kind, tmp_path)


# ------------------------------------------------------------------------- one folder format
def _same_sample(a, b) -> None:
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert a.intrinsics == b.intrinsics
    assert (a.label is None) == (b.label is None)
    if a.label is not None:
        np.testing.assert_array_equal(a.label, b.label)


def test_flat_and_subfolder_layouts_read_alike_by_eval_and_the_camera_source(tmp_path):
    from uois_sam_ros.core.data.sources import FolderSource

    flat = L.write_flat_folder(tmp_path / "flat", labels=(0, 2))
    sub = L.write_folder(tmp_path / "sub")
    ds = open_dataset("folder", flat)
    assert ds.names == ["0000", "0001", "0002"]  # '-color' is not part of the frame name
    for i in range(3):
        s = ds[i]
        rgb, depth, label, _ = L.scene(800 + i)
        np.testing.assert_array_equal(s.rgb, rgb)
        np.testing.assert_allclose(s.depth, depth / 1000.0, rtol=1e-6)
        assert s.intrinsics == Intrinsics(L.INTR["fx"], L.INTR["fy"], L.INTR["cx"], L.INTR["cy"], L.W, L.H)
        if i in (0, 2):  # labels are optional per frame
            np.testing.assert_array_equal(s.label, label)
        else:
            assert s.label is None
        _same_sample(s, FolderSource(flat, loop=False).load(i))
    # the subfolder layout gives the same frames to both readers
    sub_ds = open_dataset("folder", sub)
    src = FolderSource(sub, loop=False)
    assert len(src) == 3 and [p[0].parent.name for p in src.pairs] == ["rgb"] * 3
    for i in range(3):
        _same_sample(sub_ds[i], src.read())
        np.testing.assert_array_equal(sub_ds[i].depth, ds[i].depth)
    # other colour tokens and separators (the D435 fixture names its frames NNN-opaque-rgb-img.jpg)
    other = L.write_flat_folder(tmp_path / "rgbimg", n=2, labels=(), token="opaque-rgb-img")
    assert open_dataset("folder", other).names == ["0000-opaque", "0001-opaque"]


def test_folder_layout_errors(tmp_path):
    from uois_sam_ros.core.data.datasets import discover_folder
    from uois_sam_ros.core.data.sources import FolderSource, SourceError

    # colour without depth: the dataset reader gives depth None, the camera source refuses it
    part = L.write_flat_folder(tmp_path / "part", depth=False)
    assert open_dataset("folder", part)[0].depth is None
    with pytest.raises(SourceError, match="no colour/depth pairs"):
        FolderSource(part)
    import shutil

    shutil.copy(L.write_flat_folder(tmp_path / "one", n=1) / "0000-depth.png", part / "0000-depth.png")
    with pytest.raises(SourceError, match=r"2 colour image\(s\) without depth, e.g. 0001-color.png"):
        FolderSource(part)
    dup = L.write_flat_folder(tmp_path / "dup", n=1)
    shutil.copy(dup / "0000-color.png", dup / "0000-rgb.png")
    with pytest.raises(DatasetError, match="0000-color.png and 0000-rgb.png .* are both frame '0000'"):
        discover_folder(dup)
    with pytest.raises(DatasetError, match="no images under .*NNNN-color.png"):
        discover_folder(tmp_path / "one" / "..")  # only sub-folders, no frames
    # camera.json for another size: a uniform resize scales the intrinsics, another aspect ratio is an error
    cam = tmp_path / "one" / "camera.json"
    cam.write_text(json.dumps({**L.INTR, "width": 2 * L.W, "height": 2 * L.H}))
    s = open_dataset("folder", tmp_path / "one")[0]
    assert s.intrinsics == Intrinsics(L.INTR["fx"] / 2, L.INTR["fy"] / 2, L.INTR["cx"] / 2, L.INTR["cy"] / 2, L.W, L.H)
    assert FolderSource(tmp_path / "one").read().intrinsics == s.intrinsics
    cam.write_text(json.dumps({**L.INTR, "width": 100, "height": 100}))
    with pytest.raises(DatasetError, match="is for 100x100, the image is 64x48"):
        open_dataset("folder", tmp_path / "one")[0]
    with pytest.raises(SourceError, match="is for 100x100"):
        FolderSource(tmp_path / "one").read()


def test_shared_fixture_folders_read_directly(real_rgbd_dir):
    from uois_sam_ros.core.data.sources import FolderSource

    ds = open_dataset("folder", real_rgbd_dir)
    src = FolderSource(real_rgbd_dir, loop=False)
    assert ds.names == [f"{i:04d}" for i in range(9)] and len(src) == 9
    s = ds[0]
    assert s.rgb.shape == (480, 640, 3) and s.intrinsics.fx == pytest.approx(612.937) and s.label is None
    assert 0.2 < np.median(s.depth[s.depth > 0]) < 3.0
    _same_sample(s, src.read())
    d435 = real_rgbd_dir.parent / "d435_transparent"
    if d435.is_dir():
        ds = open_dataset("folder", d435)
        assert len(ds) == 8 and "000000080-opaque" in ds.names and "000000080-transparent" in ds.names
        assert ds[0].depth is not None and ds[0].label is None  # *-mask.png is not an instance label
        assert len(FolderSource(d435)) == 8


def test_bag_from_dataset_reads_a_flat_folder(tmp_path, capsys):
    pytest.importorskip("rosbags")
    from uois_sam_ros.apps import bag as app
    from uois_sam_ros.ros import bag

    flat = L.write_flat_folder(tmp_path / "flat", labels=(0, 1, 2))
    out = tmp_path / "bag"
    assert app.main(["-q", "from-dataset", "--dataset", "folder", "--root", str(flat), "--out", str(out)]) == 0
    assert "wrote 3 frames (folder)" in capsys.readouterr().out
    frames = bag.read_frames(out)
    assert [f.name for f in frames] == ["0000", "0001", "0002"]
    np.testing.assert_array_equal(frames[2].label, L.scene(802)[2])


def test_uoais_sim_duplicate_image_entries_are_one_frame_with_all_annotations(tmp_path):
    ann = L.write_uoais(tmp_path / "U")
    root = tmp_path / "U"
    before = open_dataset("uoais-sim", root, ann)
    ref = [before[i] for i in range(len(before))]
    doc = json.loads(ann.read_text())
    # one image entry per annotation, as some exporters write them (ids interleaved with the others)
    images, next_id = list(doc["images"]), 1000
    for a in doc["annotations"]:
        im = next(i for i in doc["images"] if i["id"] == a["image_id"])
        images.append({**im, "id": next_id})
        a["image_id"] = next_id
        next_id += 1
    images.append(dict(images[0]))  # and one entry listed twice, same id
    doc["images"] = images
    ann.write_text(json.dumps(doc))
    ds = open_dataset("uoais-sim", root, ann)
    assert len(ds) == 3 and ds.names == before.names  # each file once, in the original order
    for i, r in enumerate(ref):
        s = ds[i]
        np.testing.assert_array_equal(s.label, r.label)  # the union of the entries' instances
        np.testing.assert_array_equal(s.amodal, r.amodal)
        assert len(s.amodal) == 3
    assert len(open_dataset("uoais-sim", root, ann, sample_every=2)) == 2
    doc["images"][-2]["depth_file_name"] = "images/depth/other.png"
    ann.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="both list images/color/.* but disagree on depth_file_name"):
        open_dataset("uoais-sim", root, ann)

"""grasp node: /instances (+ aligned depth + camera_info) in, Franka grasps out.

Subscribes ``instances`` (or ``instances/amodal`` with use_amodal: an InstanceArray whose
instances carry amodal masks), camera/aligned_depth_to_color/image_raw and
camera/color/camera_info. Each InstanceArray is paired with the depth image of its stamp
(within sync_slop; the depth images wait in a buffer of frame_buffer, since segmentation takes
longer than a camera frame) and with the camera_info of that stamp (else the latest).

Publishes, once per InstanceArray and with its stamp:
- ``grasps`` (uois_sam_ros/GraspArray): the best grasp.top_n grasps of every instance, by
  descending score; poses in the instances' frame (the camera optical frame), or in base_frame
  (panda_link0) through camera_to_base or TF (use_tf, when tf2_ros is importable);
- ``grasps/markers`` (visualization_msgs/MarkerArray): the Franka hand (two fingers and the
  hand body, coloured by score) of the best markers_per_instance grasps of each instance;
- ``grasps/clouds`` (sensor_msgs/PointCloud2, with publish_clouds): the instance clouds, one
  point cloud with an instance_id field.

Service ``~/plan`` (uois_sam_ros/srv/PlanGrasp, created on configure): an instance id in, the
best grasp of that instance in the latest processed frame out (the same pose, width and score as
the first grasp of that instance on ``grasps``, in the same frame), or success false and the
reason (no frame yet, unknown id, no grasp). An instance without valid depth gets no grasp and a
warning; the node never stops for a bad frame.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from rclpy.duration import Duration
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from uois_sam_ros.core.config import ConfigError
from uois_sam_ros.core.grasp.frames import (
    ExtrinsicError,
    matrix_to_quaternion,
    parse_extrinsic,
    quaternion_to_matrix,
)
from uois_sam_ros.core.grasp.franka import hand_boxes
from uois_sam_ros.core.grasp.types import Grasp as CoreGrasp
from uois_sam_ros.core.grasp.types import GraspResult
from uois_sam_ros.core.types import FrameError
from uois_sam_ros.msg import Grasp as GraspMsg
from uois_sam_ros.msg import GraspArray, InstanceArray

try:
    from uois_sam_ros.srv import PlanGrasp
except ImportError as _e:  # an install built before srv/PlanGrasp.srv: say what to do
    raise ImportError(f"the grasp node needs the service type uois_sam_ros/srv/PlanGrasp, which this install "
                      f"does not have ({_e}); rebuild the package's interfaces (colcon build "
                      f"--packages-select uois_sam_ros) so that srv/PlanGrasp.srv is generated") from _e

from uois_sam_ros.nodes.common import LatestWorker, ManagedNode, spin_node
from uois_sam_ros.nodes.inputs import NS, PairingWatch, StampSync, _key, _ns
from uois_sam_ros.ros.convert import camera_info_to_intrinsics, copy_header, msg_to_instances, stamp_to_sec
from uois_sam_ros.ros.graph import DEPTH_TOPIC, INFO_TOPIC
from uois_sam_ros.ros.image import ImageConversionError, image_to_numpy
from uois_sam_ros.ros.params import GRASP_SECTIONS, params_to_config
from uois_sam_ros.ros.qos import LATEST_QOS, SENSOR_QOS

INSTANCES_TOPIC = "instances"
AMODAL_TOPIC = "instances/amodal"
GRASPS_TOPIC = "grasps"
MARKERS_TOPIC = "grasps/markers"
CLOUDS_TOPIC = "grasps/clouds"


# ------------------------------------------------------------------------------ conversions


def pose_to_msg(t: np.ndarray) -> Pose:
    q = matrix_to_quaternion(t[:3, :3])
    return Pose(position=Point(x=float(t[0, 3]), y=float(t[1, 3]), z=float(t[2, 3])),
                orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def msg_to_pose(p: Pose) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = quaternion_to_matrix([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w])
    t[:3, 3] = (p.position.x, p.position.y, p.position.z)
    return t


def grasp_to_msg(g: CoreGrasp) -> GraspMsg:
    return GraspMsg(instance_id=int(g.instance_id), pose=pose_to_msg(g.pose), width=float(g.width),
                    score=float(g.score))


def grasps_to_msg(grasps: list[CoreGrasp], header: Header) -> GraspArray:
    """GraspArray sorted by descending score (stable)."""
    order = sorted(grasps, key=lambda g: -g.score)
    return GraspArray(header=copy_header(header), grasps=[grasp_to_msg(g) for g in order])


def depth_from_msg(msg: Image, depth_scale: float) -> np.ndarray:
    """Float32 metres from 16UC1/mono16 (x depth_scale) or 32FC1 depth; FrameError otherwise."""
    try:
        if msg.encoding in ("16UC1", "mono16"):
            return image_to_numpy(msg).astype(np.float32) * np.float32(depth_scale)
        if msg.encoding == "32FC1":
            return image_to_numpy(msg).astype(np.float32)
    except ImageConversionError as e:
        raise FrameError(f"depth image: {e}") from e
    raise FrameError(f"depth image encoding {msg.encoding!r} is not supported; expected 16UC1 (millimetres) or "
                     "32FC1 (metres)")


def _colour(score: float, alpha: float = 0.85) -> ColorRGBA:
    s = float(np.clip(score, 0.0, 1.0))
    return ColorRGBA(r=1.0 - s, g=s, b=0.15, a=alpha)


def markers_for(grasps: list[CoreGrasp], header: Header, per_instance: int) -> MarkerArray:
    """A DELETEALL, then the Franka hand (left finger, right finger, hand body as CUBEs) of each
    instance's best ``per_instance`` grasps, in namespace instance_<id>."""
    out = MarkerArray()
    clear = Marker(header=copy_header(header), action=Marker.DELETEALL)
    out.markers.append(clear)
    by_inst: dict[int, list[CoreGrasp]] = {}
    for g in sorted(grasps, key=lambda g: -g.score):
        by_inst.setdefault(g.instance_id, []).append(g)
    mid = 0
    for iid, gs in sorted(by_inst.items()):
        for g in gs[:per_instance]:
            for box in hand_boxes(g.width):
                centre = g.pose[:3, :3] @ box.centre + g.pose[:3, 3]
                pose = np.eye(4)
                pose[:3, :3] = g.pose[:3, :3]
                pose[:3, 3] = centre
                size = box.size
                out.markers.append(Marker(
                    header=copy_header(header), ns=f"instance_{iid}", id=mid, type=Marker.CUBE, action=Marker.ADD,
                    pose=pose_to_msg(pose), scale=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])),
                    color=_colour(g.score)))
                mid += 1
    return out


def cloud_msg(result: GraspResult, header: Header, transform: np.ndarray | None) -> PointCloud2:
    """The instance clouds as one PointCloud2: x, y, z (float32) and instance_id (uint32)."""
    pts, ids = [], []
    if result.scene is not None:
        for iid, c in result.scene.instances.items():
            pts.append(c.points)
            ids.append(np.full(len(c.points), iid, np.uint32))
    p = np.concatenate(pts) if pts else np.zeros((0, 3))
    if transform is not None and len(p):
        p = p @ transform[:3, :3].T + transform[:3, 3]
    data = np.zeros(len(p), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("instance_id", "<u4")])
    if len(p):
        data["x"], data["y"], data["z"] = p[:, 0], p[:, 1], p[:, 2]
        data["instance_id"] = np.concatenate(ids)
    fields = [PointField(name=n, offset=4 * k, datatype=PointField.FLOAT32 if k < 3 else PointField.UINT32, count=1)
              for k, n in enumerate(("x", "y", "z", "instance_id"))]
    return PointCloud2(header=copy_header(header), height=1, width=len(p), fields=fields, is_bigendian=False,
                       point_step=16, row_step=16 * len(p), data=data.tobytes(), is_dense=True)


# ------------------------------------------------------------------------------ inputs


class GraspInputs:
    """Instances + depth synced by stamp (the instances are the pivot), and camera_info by stamp."""

    def __init__(self, node: ManagedNode, instances_topic: str, depth: int, slop_s: float, on_set: Any,
                 callback_group: Any = None) -> None:
        self.node, self.on_set = node, on_set
        self.instances_topic = instances_topic
        self.sync = StampSync([instances_topic, DEPTH_TOPIC], depth=depth, slop_ns=int(round(slop_s * NS)))
        names = {t: node.resolve_topic_name(t) for t in self.sync.topics}
        self.watch = PairingWatch(self.sync, node.get_logger().warning, names=names)
        self.infos: OrderedDict[tuple[int, int], CameraInfo] = OrderedDict()
        self.info: CameraInfo | None = None
        self._lock = threading.Lock()
        cg = callback_group
        self._entities: list[Any] = [
            node.create_timer(1.0, self.watch.check, callback_group=cg),
            node.create_subscription(InstanceArray, instances_topic, lambda m: self._add(instances_topic, m),
                                     LATEST_QOS, callback_group=cg),
            node.create_subscription(Image, DEPTH_TOPIC, lambda m: self._add(DEPTH_TOPIC, m), SENSOR_QOS,
                                     callback_group=cg),
            node.create_subscription(CameraInfo, INFO_TOPIC, self._info, SENSOR_QOS, callback_group=cg),
        ]

    def close(self) -> None:
        for e in self._entities:
            if hasattr(e, "cancel"):
                e.cancel()
                self.node.destroy_timer(e)
            else:
                self.node.destroy_subscription(e)
        self._entities = []

    def _info(self, msg: CameraInfo) -> None:
        with self._lock:
            self.info = msg
            self.infos[_key(msg)] = msg
            while len(self.infos) > 2 * self.sync.depth:
                self.infos.popitem(last=False)

    def info_for(self, key: tuple[int, int]) -> CameraInfo | None:
        """The camera_info of this stamp (within sync_slop), else the latest one."""
        with self._lock:
            exact = self.infos.get(key)
            if exact is not None:
                return exact
            best, best_d = None, None
            for k, m in self.infos.items():
                d = abs(_ns(k) - _ns(key))
                if d <= self.sync.slop_ns and (best_d is None or d < best_d):
                    best, best_d = m, d
            return best if best is not None else self.info

    def _add(self, topic: str, msg: Any) -> None:
        self.watch.received(topic)
        out = self.sync.add(topic, msg)
        if out is None:
            return
        self.watch.paired()
        self.on_set(out, self.info_for(_key(out[self.instances_topic])))


# ------------------------------------------------------------------------------ node


class GraspNode(ManagedNode):
    KIND = "grasp"

    def __init__(self, node_name: str = "grasp", **kwargs: Any) -> None:
        self.pub_grasps = self.pub_markers = self.pub_clouds = None
        self.planner: Any = None
        self.inputs: GraspInputs | None = None
        self.worker: LatestWorker | None = None
        self.extrinsic: np.ndarray | None = None
        self.tf_buffer: Any = None
        self._tf_listener: Any = None
        self._pending_planner: Any = None
        self._lock = threading.Lock()
        self.latest: tuple[Header, dict[int, list[CoreGrasp]]] | None = None
        self.published = 0
        self.warnings = 0
        self._warned: dict[str, float] = {}
        self.plan_service: Any = None
        super().__init__(node_name, **kwargs)

    # -------------------------------------------------------------- helpers
    def _grasp_config(self, values: dict[str, Any]):
        return params_to_config({k: v for k, v in values.items() if k.split(".")[0] in GRASP_SECTIONS}).grasp

    def _build_planner(self, values: dict[str, Any]) -> Any:
        from uois_sam_ros.core.grasp import GraspPlanner

        return GraspPlanner(self._grasp_config(values))

    def warn(self, message: str, every: float = 5.0) -> None:
        """A throttled warning (per message text) that keeps the node going."""
        self.warnings += 1
        now = time.monotonic()
        if now - self._warned.get(message, -1e9) >= every:
            self._warned[message] = now
            self.get_logger().warning(message)

    @property
    def output_frame(self) -> str | None:
        """base_frame when poses go to the robot base, else None (the instances' own frame)."""
        if self.extrinsic is not None or self.params.get("use_tf"):
            return str(self.params.get("base_frame"))
        return None

    # -------------------------------------------------------------- lifecycle
    def load(self) -> None:
        try:
            self.extrinsic = parse_extrinsic(self.params.get("camera_to_base"))
        except ExtrinsicError as e:
            raise ValueError(str(e)) from None
        if self.params.get("use_tf"):
            try:
                import tf2_ros  # optional: not installable everywhere
            except ImportError:
                raise ValueError("use_tf needs tf2_ros, which is not importable here; set camera_to_base "
                                 "(the hand-eye extrinsic) instead") from None
            self.tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self.tf_buffer, self)
        try:
            self.planner = self._build_planner(self.params.values())
        except ConfigError as e:
            raise ValueError(str(e)) from None
        self.lifecycle_publisher("pub_grasps", GraspArray, GRASPS_TOPIC, LATEST_QOS)
        self.lifecycle_publisher("pub_markers", MarkerArray, MARKERS_TOPIC, LATEST_QOS)
        self.lifecycle_publisher("pub_clouds", PointCloud2, CLOUDS_TOPIC, LATEST_QOS)
        self._create_plan_service()
        frame = self.output_frame or "the instances' frame (camera optical frame)"
        self.get_logger().info(f"grasp planner: {self.planner.name}; poses in {frame}")

    def _create_plan_service(self) -> None:
        if self.plan_service is None:
            self.plan_service = self.create_service(PlanGrasp, "~/plan", self._plan_callback)

    def _plan_callback(self, request: PlanGrasp.Request, response: PlanGrasp.Response) -> PlanGrasp.Response:
        """~/plan: plan() for the requested id; header and grasp stay default when there is none."""
        ok, message, header, grasp = self.plan(int(request.instance_id))
        response.success, response.message = ok, message
        if header is not None:
            response.header = header
        if grasp is not None:
            response.grasp = grasp
        return response

    def unload(self) -> None:
        self.planner = None
        self._tf_listener = None
        self.tf_buffer = None
        if self.plan_service is not None:
            self.destroy_service(self.plan_service)
            self.plan_service = None

    def start_io(self) -> None:
        topic = AMODAL_TOPIC if self.params.get("use_amodal") else INSTANCES_TOPIC
        self.worker = LatestWorker(self._process, self._worker_error, name="grasp", on_drop=self.stats.on_drop)
        self.inputs = GraspInputs(self, topic, int(self.params.get("frame_buffer")), self.params.get("sync_slop"),
                                  self._on_set, callback_group=self.io_group)
        self.get_logger().info(f"grasp: instances from {self.resolve_topic_name(topic)}")

    def stop_io(self) -> None:
        if self.inputs is not None:
            self.inputs.close()
            self.inputs = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def _on_set(self, msgs: dict[str, Any], info: CameraInfo | None) -> None:
        self.stats.on_input(self.now_s())
        if self.worker is not None:
            self.worker.put((msgs, info))

    def _validate_change(self, values: dict[str, Any], changed: set[str]) -> str | None:
        if "camera_to_base" in changed:
            try:
                parse_extrinsic(values["camera_to_base"])
            except ExtrinsicError as e:
                return str(e)
        if any(n.split(".")[0] in GRASP_SECTIONS for n in changed):
            try:
                planner = self._build_planner(values)
            except (ConfigError, ImportError, ValueError) as e:
                return str(e).splitlines()[0]
            with self._lock:
                self._pending_planner = planner
        return None

    def _params_changed(self, names: set[str]) -> None:
        if "camera_to_base" in names:
            self.extrinsic = parse_extrinsic(self.params.get("camera_to_base"))

    def _worker_error(self, e: BaseException) -> None:
        if self.alive():
            self.errors(f"grasp planning failed on a frame: {type(e).__name__}: {e}")

    # -------------------------------------------------------------- frames
    def _base_transform(self, header: Header) -> np.ndarray | None:
        """T_base_camera for this frame: the parameter, or TF (use_tf), or None (camera frame)."""
        if self.extrinsic is not None:
            return self.extrinsic
        if not self.params.get("use_tf") or self.tf_buffer is None:
            return None
        from rclpy.time import Time

        tf = self.tf_buffer.lookup_transform(self.params.get("base_frame"), header.frame_id,
                                             Time.from_msg(header.stamp),
                                             Duration(seconds=float(self.params.get("tf_timeout"))))
        tr, rot = tf.transform.translation, tf.transform.rotation
        t = np.eye(4)
        t[:3, :3] = quaternion_to_matrix([rot.x, rot.y, rot.z, rot.w])
        t[:3, 3] = (tr.x, tr.y, tr.z)
        return t

    def _process(self, item: tuple[dict[str, Any], CameraInfo | None]) -> None:
        msgs, info = item
        with self._lock:
            if self._pending_planner is not None:
                self.planner, self._pending_planner = self._pending_planner, None
        planner = self.planner
        if planner is None or self.inputs is None:
            return
        inst_msg: InstanceArray = msgs[self.inputs.instances_topic]
        stamp = stamp_to_sec(inst_msg.header.stamp)
        try:
            if info is None:
                raise FrameError(f"no camera_info received on {self.resolve_topic_name(INFO_TOPIC)} yet")
            depth = depth_from_msg(msgs[DEPTH_TOPIC], self.params.get("depth_scale"))
            intr = camera_info_to_intrinsics(info)
            if depth.shape != (intr.height, intr.width):
                raise FrameError(f"depth is {depth.shape[1]}x{depth.shape[0]}, camera_info says "
                                 f"{intr.width}x{intr.height}")
            if (inst_msg.height, inst_msg.width) != depth.shape:
                raise FrameError(f"instances are {inst_msg.width}x{inst_msg.height}, depth is "
                                 f"{depth.shape[1]}x{depth.shape[0]} (depth must be aligned to colour)")
            try:
                inst = msg_to_instances(inst_msg)
            except ValueError as e:
                raise FrameError(f"instances: {e}") from e
            ids = [int(it.id) for it in inst_msg.instances]
            amodal = inst.amodal_masks if self.params.get("use_amodal") else None
            result = planner.plan(depth, intr, inst.masks, ids, amodal=amodal)
        except FrameError as e:
            self.errors(f"bad input at t={stamp:.3f}: {e}")
            return
        for w in result.warnings:
            self.warn(w)
        header = copy_header(inst_msg.header)
        transform = None
        try:
            transform = self._base_transform(header)
        except Exception as e:  # noqa: BLE001 - TF errors differ between distributions
            self.errors(f"no transform {self.params.get('base_frame')} <- {header.frame_id} at t={stamp:.3f}: {e}")
            return
        grasps = {i: [g.transformed(transform) if transform is not None else g for g in gs]
                  for i, gs in result.grasps.items()}
        if transform is not None:
            header.frame_id = str(self.params.get("base_frame"))
        flat = [g for gs in grasps.values() for g in gs]
        with self._lock:
            self.latest = (header, grasps)
        if not self.safe_publish(self.pub_grasps, grasps_to_msg(flat, header)):
            return
        if self.params.get("publish_markers") and self.pub_markers is not None:
            self.safe_publish(self.pub_markers, markers_for(flat, header, int(self.params.get("markers_per_instance"))))
        if self.params.get("publish_clouds") and self.pub_clouds is not None:
            self.safe_publish(self.pub_clouds, cloud_msg(result, header, transform))
        self.published += 1
        self.stats.on_output(self.now_s(), stamp)

    # -------------------------------------------------------------- service logic
    def plan(self, instance_id: int) -> tuple[bool, str, Header | None, GraspMsg | None]:
        """(success, message, header, grasp): the best grasp of an instance in the latest frame."""
        with self._lock:
            latest = self.latest
        if latest is None:
            return False, "no frame has been processed yet", None, None
        header, grasps = latest
        if instance_id not in grasps:
            known = sorted(grasps)
            return False, f"instance {instance_id} is not in the latest frame (instances: {known})", header, None
        gs = grasps[instance_id]
        if not gs:
            return False, f"instance {instance_id} has no grasp in the latest frame", header, None
        return True, f"best of {len(gs)} grasps, score {gs[0].score:.3f}", header, grasp_to_msg(gs[0])

    def diagnostic_values(self) -> dict[str, Any]:
        return {"backend": getattr(self.planner, "name", ""), "grasp_arrays": self.published,
                "instance_warnings": self.warnings,
                "frame": self.output_frame or "instances' frame"}


def main(argv: list[str] | None = None) -> None:
    sys.exit(spin_node(GraspNode, argv))

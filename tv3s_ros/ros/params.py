"""The parameters of ``tv3s_node``: one table, declared with descriptors, validated at start.

The table (:data:`PARAMETERS`) is plain data so that tests, the launch file check and the
documentation can read it without rclpy. :func:`declare_parameters` turns it into
``ParameterDescriptor`` declarations; :func:`read_settings` reads and validates every value
and raises one :class:`ParameterError` listing every problem found, so a misconfigured node
fails at start with a readable message instead of at the first frame.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from tv3s_ros.camera_names import camera_info_topic, is_compressed_topic, resolve_camera_names
from tv3s_ros.image_encode import DEFAULT_JPEG_QUALITY, check_jpeg_quality
from tv3s_ros.model.device import PRECISIONS
from tv3s_ros.outputs import IMAGE_OUTPUTS, OUTPUT_RESOLUTIONS

__all__ = [
    "ParamSpec",
    "PARAMETERS",
    "PARAMETER_NAMES",
    "ParameterError",
    "NodeSettings",
    "declare_parameters",
    "read_settings",
    "validate_overlay_alpha",
    "validate_jpeg_quality",
]

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# Engine's GRAPH_MODES and gpu_jpeg settings, repeated here so that --help needs no torch.
GRAPH_MODES = ("auto", "on", "off", "no_capture")
GPU_JPEG_MODES = ("auto", "true", "false")


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    ``kind`` is ``string``, ``bool``, ``integer``, ``double`` or ``string_array``. A ``default``
    of None declares the parameter without a value (only ``camera_names``: rclpy cannot
    declare an empty string array with its type).
    """

    name: str
    kind: str
    default: Any
    description: str
    read_only: bool = True
    choices: Tuple[str, ...] = ()
    value_range: Optional[Tuple[float, float]] = None
    constraints: str = ""
    # Also accepts a bool: `-p graphs:=off` and `gpu_jpeg: false` reach the node as bools (the
    # YAML rules of ROS read on/off/true/false as booleans).
    bool_too: bool = False


PARAMETERS: Tuple[ParamSpec, ...] = (
    ParamSpec("model", "string", "tv3s_b1_cityscapes",
              "Model preset name (see model/*.yaml) or path to a preset YAML file."),
    ParamSpec("model_overrides", "string", "",
              "YAML mapping of ModelConfig fields overriding the preset, e.g. '{num_classes: 7}'. "
              "Empty: none.", constraints="YAML mapping"),
    ParamSpec("weights", "string", "",
              "Checkpoint file (mmcv layout, .pth). Empty: the weights the preset ships (tv3s_demo "
              "ships its own); a preset without them needs this unless allow_random_weights is true.",
              constraints="existing file"),
    ParamSpec("allow_random_weights", "bool", False,
              "Start without weights (random initialisation). Tests and plumbing checks only: "
              "the segmentation output is meaningless."),
    ParamSpec("seed", "integer", -1,
              "Seed of torch's RNG before the model is built (reproducible random weights); "
              "-1: do not seed.", value_range=(-1, 2**31 - 1)),
    ParamSpec("device", "string", "auto",
              "Where the model runs: auto (CUDA when available), cpu, cuda or cuda:N.",
              constraints="auto | cpu | cuda | cuda:N"),
    ParamSpec("precision", "string", "fp32",
              "Inference precision. fp16 needs CUDA; bf16 needs CPU or a GPU supporting it.",
              choices=tuple(PRECISIONS)),
    ParamSpec("camera_topics", "string_array", ["/camera/front/image_raw"],
              "Camera topics. A topic ending in /compressed is sensor_msgs/CompressedImage "
              "(jpeg/png), any other sensor_msgs/Image."),
    ParamSpec("camera_names", "string_array", None,
              "Optional camera names, one per topic (output namespace ~/<name>/). Unset: "
              "derived from the topic (/sensing/camera/front/image_raw -> front)."),
    ParamSpec("camera_info_topics", "string_array", None,
              "Optional sensor_msgs/CameraInfo topic per camera, in camera_topics order; '' (or the "
              "parameter unset): the image topic's sibling (/cam/front/image_raw[/compressed] -> "
              "/cam/front/camera_info); 'none': no ~/<camera>/camera_info for that camera."),
    ParamSpec("input_size", "string", "official",
              "Model input size: 'official' (the preset's test-time resize), 'HxW' (e.g. "
              "'512x1024') or 'keep_aspect:N' (short side N, multiples of 32).",
              constraints="official | HxW | keep_aspect:N"),
    ParamSpec("output_resolution", "string", "input",
              "Resolution of labels/color/overlay/confidence: 'input' (camera size) or "
              "'model' (network input size, cheaper).", choices=OUTPUT_RESOLUTIONS),
    ParamSpec("publish", "string_array", list(IMAGE_OUTPUTS),
              "Image outputs to offer per camera (each is computed only while it has a "
              "subscriber): labels, color, overlay, confidence. coverage is always published.",
              constraints="subset of labels, color, overlay, confidence"),
    ParamSpec("overlay_alpha", "double", 0.5,
              "Weight of the class colour in the overlay image (0: camera only, 1: colours only).",
              read_only=False, value_range=(0.0, 1.0)),
    ParamSpec("publish_compressed", "bool", True,
              "Also offer ~/<camera>/<output>/compressed (sensor_msgs/CompressedImage, the "
              "compressed_image_transport format) for each image output in publish: labels and "
              "confidence as lossless PNG, color and overlay as JPEG. Each is encoded only while it "
              "has a subscriber."),
    ParamSpec("jpeg_quality", "integer", DEFAULT_JPEG_QUALITY,
              "JPEG quality (1..100) of color/compressed and overlay/compressed. Changeable at runtime.",
              read_only=False, value_range=(1, 100)),
    ParamSpec("reliability", "string", "best_effort",
              "QoS reliability of the camera subscriptions (depth 1): best_effort matches every "
              "publisher; reliable only reliable publishers.", choices=("best_effort", "reliable")),
    ParamSpec("max_gap_s", "double", 1.0,
              "Reset a camera's state when its stamps advance by more than this many seconds "
              "(and on ROS time jumps forward by more); 0 disables.", value_range=(0.0, 86400.0)),
    ParamSpec("max_state_frames", "integer", 0,
              "Reset a camera's state after this many frames (frames_since_reset runs "
              "0..N-1); 0: never.", value_range=(0, 2**31 - 1)),
    ParamSpec("diagnostics_period_s", "double", 1.0,
              "Period of the /diagnostics message (steady clock: it keeps running while a "
              "simulated /clock pauses).", value_range=(0.1, 60.0)),
    # Input limits: a bad frame is rejected before it reaches the model.
    ParamSpec("max_pixels", "integer", 40_000_000,
              "Reject frames with more pixels than this (reason bad_size); jpeg/png sizes are read "
              "from the compressed header, before decoding (decompression bombs). 0: no limit.",
              value_range=(0, 2**31 - 1)),
    ParamSpec("max_aspect", "double", 16.0,
              "Reject frames whose long side exceeds this many times the short side (reason "
              "bad_size; a 1x4000 frame is not a camera image). 0: no limit.", value_range=(0.0, 1e6)),
    ParamSpec("allow_16bit_cameras", "string_array", None,
              "Camera names whose 16-bit images (mono16, 16UC1, rgb16, bayer_*16, 16-bit png) are "
              "real camera images, scaled to 8 bit. Any other camera rejects 16-bit and float "
              "encodings (reason unsupported_encoding): a depth image on a camera topic."),
    ParamSpec("stall_error_s", "double", 5.0,
              "A camera whose input flows but none of whose frames was published for this many "
              "seconds is an ERROR in /diagnostics (processing stuck or far too slow).",
              value_range=(0.1, 3600.0)),
    ParamSpec("skip_warn_ratio", "double", 0.8,
              "WARN in /diagnostics when more than this share of a camera's frames over the last "
              "5 s was skipped (the model is much slower than the camera); 1.0 never warns.",
              value_range=(0.0, 1.0)),
    ParamSpec("max_consecutive_errors", "integer", 10,
              "After this many engine failures in a row (a sticky CUDA error, out of memory), log "
              "FATAL and exit with code 3 so that launch's respawn restarts the node; 0: never exit.",
              value_range=(0, 2**31 - 1)),
    ParamSpec("graphs", "string", "auto",
              "CUDA graphs kill switch: auto (on for CUDA, off for CPU), on, off, or no_capture "
              "(the graph path without capturing; debugging).", choices=GRAPH_MODES, bool_too=True),
    ParamSpec("gpu_jpeg", "string", "auto",
              "jpeg decoding on the GPU (nvJPEG via torchvision): auto (when available), true "
              "(required) or false (OpenCV on the CPU).", choices=GPU_JPEG_MODES, bool_too=True),
    ParamSpec("regions", "string", "",
              "Regions of interest: YAML/JSON mapping camera name (or '*' for every camera) -> region "
              "name -> polygon [[x, y], ...] (at least 3 points, normalised 0..1, x right, y down), e.g. "
              "'{\"*\": {\"bottom_third\": [[0, 0.667], [1, 0.667], [1, 1], [0, 1]]}}'. Per-class coverage "
              "inside each region goes to ~/<camera>/region_coverage. Empty: none.",
              constraints="YAML mapping {camera|'*': {name: [[x, y], ...]}}"),
    ParamSpec("draw_regions", "bool", True,
              "Draw the outlines and names of the regions of interest into ~/<camera>/overlay."),
    ParamSpec("max_stamp_age_s", "double", 0.5,
              "WARN in /diagnostics (and one throttled log line) when a frame is published with a "
              "header stamp older than this on the node clock (transport, queueing and processing; "
              "meaningful when cameras stamp with the node's clock, use_sim_time for bags); 0 disables.",
              value_range=(0.0, 3600.0)),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)


class ParameterError(ValueError):
    """Invalid node parameters; the message lists every problem, one per line."""


@dataclass
class NodeSettings:
    """Validated parameter values."""

    model: str
    model_overrides: Dict[str, Any]
    weights: Optional[str]
    allow_random_weights: bool
    seed: int
    device: str
    precision: str
    camera_topics: List[str]
    camera_names: List[str]
    compressed: List[bool]
    input_size: str
    output_resolution: str
    publish: List[str]
    overlay_alpha: float
    reliability: str
    max_gap_s: float
    max_state_frames: int
    diagnostics_period_s: float
    max_pixels: int = 40_000_000
    max_aspect: float = 16.0
    allow_16bit_cameras: Tuple[str, ...] = ()
    stall_error_s: float = 5.0
    skip_warn_ratio: float = 0.8
    max_consecutive_errors: int = 10
    graphs: str = "auto"
    gpu_jpeg: str = "auto"
    weights_origin: str = "given"   # or "shipped with the preset" (weights parameter empty)
    camera_info_topics: Tuple[str, ...] = ()   # one per camera; "": none (see _camera_info_topics)
    publish_compressed: bool = True
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    regions: Dict[str, list] = field(default_factory=dict)   # camera -> [tv3s_ros.regions.Region]
    draw_regions: bool = True
    max_stamp_age_s: float = 0.5

    def engine_settings(self):
        """The :class:`~tv3s_ros.engine.EngineSettings` these parameters ask for."""
        from tv3s_ros.engine.settings import EngineSettings

        return EngineSettings(
            model=self.model, weights=self.weights, allow_random_weights=self.allow_random_weights,
            model_overrides=self.model_overrides or {}, device=self.device, precision=self.precision,
            input_size=self.input_size, output_resolution=self.output_resolution,
            overlay_alpha=self.overlay_alpha, max_gap_s=self.max_gap_s, max_state_frames=self.max_state_frames,
            graphs=self.graphs, gpu_jpeg=self.gpu_jpeg, max_pixels=self.max_pixels, max_aspect=self.max_aspect)


def _descriptor(spec: ParamSpec):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {
        "string": ParameterType.PARAMETER_STRING,
        "bool": ParameterType.PARAMETER_BOOL,
        "integer": ParameterType.PARAMETER_INTEGER,
        "double": ParameterType.PARAMETER_DOUBLE,
        "string_array": ParameterType.PARAMETER_STRING_ARRAY,
    }
    constraints = spec.constraints or (" | ".join(spec.choices) if spec.choices else "")
    desc = ParameterDescriptor(name=spec.name, type=types[spec.kind], description=spec.description,
                               additional_constraints=constraints, read_only=spec.read_only,
                               dynamic_typing=spec.bool_too)
    if spec.value_range is not None:
        lo, hi = spec.value_range
        if spec.kind == "integer":
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def declare_parameters(node) -> None:
    """Declare every parameter of :data:`PARAMETERS` on ``node`` (values from overrides)."""
    from rclpy.parameter import Parameter

    for spec in PARAMETERS:
        default = spec.default
        if default is None:
            default = Parameter.Type.STRING_ARRAY   # declared without a value
        node.declare_parameter(spec.name, default, _descriptor(spec))


def _value(node, name: str, fallback: Any = None) -> Any:
    from rclpy.parameter import Parameter

    param = node.get_parameter_or(name, Parameter(name, Parameter.Type.NOT_SET, None))
    return fallback if param.value is None else param.value


def _mode(value: Any, true_text: str, false_text: str) -> str:
    """A string-or-bool mode parameter as lower-case text (True -> ``true_text``)."""
    if isinstance(value, bool):
        return true_text if value else false_text
    return str(value).strip().lower()


def validate_overlay_alpha(value: Any) -> Optional[str]:
    """Problem text for an invalid overlay_alpha, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        return f"overlay_alpha must be a number in 0..1, got {value!r}"
    return None


def validate_jpeg_quality(value: Any) -> Optional[str]:
    """Problem text for an invalid jpeg_quality, or None."""
    try:
        check_jpeg_quality(value)
    except ValueError as err:
        return str(err)
    return None


def _shipped_weights(model: str, overrides: Dict[str, Any]) -> Optional[str]:
    """The preset's shipped checkpoint; None when it ships none or cannot be read here (the
    model build reports a bad preset with its own message)."""
    from tv3s_ros.model.presets import load_config, shipped_weights

    try:
        cfg = load_config(model, **overrides)
    except Exception:  # noqa: BLE001 - reported when the model is built
        return None
    return shipped_weights(cfg)


def read_settings(node) -> NodeSettings:
    """Read and validate every parameter of ``node`` (raises :class:`ParameterError`)."""
    import yaml

    problems: List[str] = []
    get = lambda name, fallback=None: _value(node, name, fallback)  # noqa: E731

    model = str(get("model", "")).strip()
    if not model:
        problems.append("model is empty: give a preset name (e.g. tv3s_b1_cityscapes) or a preset YAML path")

    overrides: Dict[str, Any] = {}
    text = str(get("model_overrides", "")).strip()
    if text:
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as err:
            problems.append(f"model_overrides is not valid YAML: {err}")
        else:
            if parsed is None:
                parsed = {}
            if not isinstance(parsed, dict):
                problems.append(f"model_overrides must be a YAML mapping of ModelConfig fields, got {text!r}")
            else:
                overrides = parsed

    allow_random = bool(get("allow_random_weights", False))
    weights = str(get("weights", "")).strip() or None
    weights_origin = "given"
    if weights is None and model:
        try:
            weights = _shipped_weights(model, overrides)
            weights_origin = "shipped with the preset"
        except FileNotFoundError as err:   # the preset names a file that is not there
            problems.append(str(err))
    if weights is None and not allow_random:
        problems.append("weights is not set: give the path of a TV3S checkpoint (see model/README.md); "
                        "allow_random_weights:=true starts without one, for tests only")
    elif weights is not None and not os.path.isfile(os.path.expanduser(weights)):
        problems.append(f"weights file not found: {weights}")

    device = str(get("device", "auto")).strip().lower()
    if not DEVICE_PATTERN.match(device):
        problems.append(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")

    precision = str(get("precision", "fp32")).strip().lower()
    if precision not in PRECISIONS:
        problems.append(f"precision must be fp32, fp16 or bf16, got {precision!r}")

    topics = [str(t).strip() for t in (get("camera_topics", []) or [])]
    names_given = [str(n).strip() for n in (get("camera_names", []) or [])]
    names: List[str] = []
    try:
        names = resolve_camera_names(topics, names_given or None)
    except ValueError as err:
        problems.append(str(err))

    info_topics = _camera_info_topics(topics, [str(t).strip() for t in (get("camera_info_topics", []) or [])],
                                      problems)

    input_size = str(get("input_size", "official")).strip()
    try:
        from tv3s_ros.preprocess import parse_input_size

        parse_input_size(input_size)
    except ValueError as err:
        problems.append(f"input_size: {err}")

    output_resolution = str(get("output_resolution", "input")).strip().lower()
    if output_resolution not in OUTPUT_RESOLUTIONS:
        problems.append(f"output_resolution must be input or model, got {output_resolution!r}")

    publish: List[str] = []
    for output in get("publish", []) or []:
        output = str(output).strip().lower()
        if output == "coverage":
            continue  # always published
        if output not in IMAGE_OUTPUTS:
            problems.append(f"publish: unknown output {output!r} (choose from {', '.join(IMAGE_OUTPUTS)})")
        elif output not in publish:
            publish.append(output)

    overlay_alpha = get("overlay_alpha", 0.5)
    problem = validate_overlay_alpha(overlay_alpha)
    if problem:
        problems.append(problem)

    reliability = str(get("reliability", "best_effort")).strip().lower()
    if reliability not in ("best_effort", "reliable"):
        problems.append(f"reliability must be best_effort or reliable, got {reliability!r}")

    max_gap_s = float(get("max_gap_s", 1.0))
    if not math.isfinite(max_gap_s) or max_gap_s < 0:
        problems.append(f"max_gap_s must be >= 0 seconds (0 disables), got {max_gap_s}")
    max_state_frames = int(get("max_state_frames", 0))
    if max_state_frames < 0:
        problems.append(f"max_state_frames must be >= 0 (0 = never), got {max_state_frames}")
    period = float(get("diagnostics_period_s", 1.0))
    if not math.isfinite(period) or period <= 0:
        problems.append(f"diagnostics_period_s must be > 0, got {period}")

    max_pixels = int(get("max_pixels", 40_000_000))
    if max_pixels < 0:
        problems.append(f"max_pixels must be >= 0 (0 = no limit), got {max_pixels}")
    max_aspect = float(get("max_aspect", 16.0))
    if not math.isfinite(max_aspect) or (max_aspect != 0 and max_aspect < 1):
        problems.append(f"max_aspect must be >= 1 (0 = no limit), got {max_aspect}")
    allow_16bit = tuple(str(n).strip() for n in (get("allow_16bit_cameras", []) or []))
    unknown = [n for n in allow_16bit if names and n not in names]
    if unknown:
        problems.append(f"allow_16bit_cameras names unknown camera(s) {unknown} (cameras: {names})")
    stall_error_s = float(get("stall_error_s", 5.0))
    if not math.isfinite(stall_error_s) or stall_error_s <= 0:
        problems.append(f"stall_error_s must be > 0 seconds, got {stall_error_s}")
    skip_warn_ratio = float(get("skip_warn_ratio", 0.8))
    if not 0.0 <= skip_warn_ratio <= 1.0:
        problems.append(f"skip_warn_ratio must be in 0..1, got {skip_warn_ratio}")
    max_errors = int(get("max_consecutive_errors", 10))
    if max_errors < 0:
        problems.append(f"max_consecutive_errors must be >= 0 (0 = never exit), got {max_errors}")
    graphs = _mode(get("graphs", "auto"), "on", "off")
    if graphs not in GRAPH_MODES:
        problems.append(f"graphs must be one of {', '.join(GRAPH_MODES)}, got {graphs!r}")
    elif graphs == "on" and device == "cpu":
        problems.append("graphs=on needs a CUDA device (CUDA graphs); use auto or off with device=cpu")
    gpu_jpeg = _mode(get("gpu_jpeg", "auto"), "true", "false")
    if gpu_jpeg not in GPU_JPEG_MODES:
        problems.append(f"gpu_jpeg must be one of {', '.join(GPU_JPEG_MODES)}, got {gpu_jpeg!r}")
    elif gpu_jpeg == "true" and device == "cpu":
        problems.append("gpu_jpeg=true needs a CUDA device; use auto or false with device=cpu")

    publish_compressed = get("publish_compressed", True)
    if not isinstance(publish_compressed, bool):
        problems.append(f"publish_compressed must be true or false, got {publish_compressed!r}")
    jpeg_quality = get("jpeg_quality", DEFAULT_JPEG_QUALITY)
    problem = validate_jpeg_quality(jpeg_quality)
    if problem:
        problems.append(problem)
    regions: Dict[str, list] = {}
    try:
        from tv3s_ros.regions import RegionsError, parse_regions

        regions = parse_regions(str(get("regions", "")), names)
    except RegionsError as err:
        problems.extend(str(err).splitlines())
    max_stamp_age_s = float(get("max_stamp_age_s", 0.5))
    if not math.isfinite(max_stamp_age_s) or max_stamp_age_s < 0:
        problems.append(f"max_stamp_age_s must be >= 0 seconds (0 disables), got {max_stamp_age_s}")

    if problems:
        raise ParameterError("invalid parameters:\n  - " + "\n  - ".join(problems))
    return NodeSettings(
        model=model, model_overrides=overrides, weights=weights, allow_random_weights=allow_random,
        seed=int(get("seed", -1)), device=device, precision=precision, camera_topics=topics,
        camera_names=names, compressed=[is_compressed_topic(t) for t in topics], input_size=input_size,
        output_resolution=output_resolution, publish=publish, overlay_alpha=float(overlay_alpha),
        reliability=reliability, max_gap_s=max_gap_s, max_state_frames=max_state_frames,
        diagnostics_period_s=period, max_pixels=max_pixels, max_aspect=max_aspect,
        allow_16bit_cameras=allow_16bit, weights_origin=weights_origin, stall_error_s=stall_error_s,
        skip_warn_ratio=skip_warn_ratio,
        max_consecutive_errors=max_errors, graphs=graphs, gpu_jpeg=gpu_jpeg, camera_info_topics=info_topics,
        publish_compressed=bool(publish_compressed), jpeg_quality=int(jpeg_quality),
        regions=regions, draw_regions=bool(get("draw_regions", True)), max_stamp_age_s=max_stamp_age_s)


def _camera_info_topics(topics: List[str], given: List[str], problems: List[str]) -> Tuple[str, ...]:
    """The CameraInfo topic of each camera ("" for none) from ``camera_info_topics``."""
    if given and len(given) != len(topics):
        problems.append(f"camera_info_topics has {len(given)} entries but camera_topics has {len(topics)}; "
                        "give one per camera ('' for the sibling camera_info topic, 'none' for none) "
                        "or leave it unset")
        return ()
    result = []
    for i, topic in enumerate(topics):
        choice = given[i] if given else ""
        if choice.lower() == "none":
            result.append("")
            continue
        try:
            choice = choice or camera_info_topic(topic)
            from rclpy.validate_topic_name import validate_topic_name

            validate_topic_name(choice)
        except Exception as err:  # noqa: BLE001 - ValueError or rclpy's InvalidTopicNameException
            problems.append(f"camera_info_topics: no valid camera_info topic for camera topic {topic!r}: {err}")
            choice = ""
        result.append(choice)
    return tuple(result)

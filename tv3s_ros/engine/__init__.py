"""The streaming segmentation engine shared by the node, the bag tool and the benchmarks.

One :class:`Engine` owns the TV3S model, the device and precision, one recurrent
:class:`~tv3s_ros.model.state.StreamState` per camera and the reset policy
(:class:`~tv3s_ros.streams.StreamManager`). :meth:`Engine.process` takes decoded frames of
any number of cameras and returns, per frame, the requested uint8 images and the class
coverage as numpy arrays:

    frames -> reset policy per camera -> group by model input size -> stack the group's
    states -> upload uint8 (pinned, async on CUDA) -> preprocess -> forward_stream ->
    logits to the input (or model) resolution -> postprocess -> numpy

With CUDA graphs (``graphs``: on by default on CUDA) a group of cameras with one raw frame
size runs as one replay of a :class:`~tv3s_ros.engine.cuda_graphs.CudaGraphStreamer`: the frames are
copied into its static input, every camera's state lives in a row of its static state (no
copy while the batch stays the same), and only the requested uint8 images and the coverage
tables come back, after one synchronisation. Groups mixing raw sizes run eagerly.

ROS-free: callers convert messages with :mod:`tv3s_ros.image_codec` (or :meth:`Engine.decode_msg`,
which decodes jpeg on the GPU when it can) and publish the results themselves.

Modules: :mod:`.engine` (the Engine: reset policy, grouping, per-camera isolation),
:mod:`.settings` (EngineSettings, building the model), :mod:`.frames` (inputs, outputs,
errors), :mod:`.upload` (host-to-device frames), :mod:`.eager_runner` and
:mod:`.graphed_runner` (one batch, without or with CUDA graphs), :mod:`.cuda_graphs` (the
captured step and its pool).
"""
from tv3s_ros.engine.engine import Engine, EngineStats
from tv3s_ros.engine.frames import FrameErrors, FrameInput, FrameOutput, FrameRejected, Outputs
from tv3s_ros.engine.settings import (
                                      DEFAULT_MAX_ASPECT,
                                      DEFAULT_MAX_PIXELS,
                                      GRAPH_MODES,
                                      EngineSettings,
                                      load_model,
                                      resolve_graphs,
)

__all__ = ["Engine", "EngineStats", "EngineSettings", "FrameInput", "FrameOutput", "FrameRejected",
           "FrameErrors", "Outputs", "load_model", "resolve_graphs", "GRAPH_MODES", "DEFAULT_MAX_PIXELS",
           "DEFAULT_MAX_ASPECT"]

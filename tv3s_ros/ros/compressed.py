"""``~/<camera>/<output>/compressed``: the image outputs as ``sensor_msgs/CompressedImage``.

For links between computers: labels and confidence as lossless PNG (JPEG would change class
ids), color and overlay as JPEG of quality ``jpeg_quality``, each in the format string of
``compressed_image_transport`` (:mod:`tv3s_ros.image_encode`), so ``image_transport
republish``, RViz (Image display, transport hint "compressed") and any image_transport
subscriber read them.

A compressed topic is encoded only while it has a subscriber, and its subscriber makes the
engine compute the underlying output (:meth:`CompressedOutputs.wanted`). The worker encodes
after it has published every raw topic and the coverage of a batch, so the raw consumers
never wait for an encoder; the outputs of one batch are encoded in parallel (OpenCV releases
the GIL while it encodes).

/diagnostics (the node's "model" status) carries, per camera and compressed output that has
been published, ``compressed.<camera>.<output>.published`` (messages so far) and its mean
``kb_per_frame`` and ``encode_ms`` over the last 50.
"""
from __future__ import annotations

import array
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Set, Tuple

from sensor_msgs.msg import CompressedImage

from tv3s_ros.image_encode import DEFAULT_JPEG_QUALITY, check_jpeg_quality, encode_compressed
from tv3s_ros.outputs import COMPRESSED_OUTPUTS, OUTPUTS, image_encoding

__all__ = ["CompressedOutputs", "compressed_msg", "COMPRESSED_SUFFIX"]

COMPRESSED_SUFFIX = "compressed"        # image_transport's topic for the "compressed" transport
_MAX_ENCODER_THREADS = 4
_STATS_WINDOW = 50            # diagnostics: mean size and encode time over the last frames


def compressed_msg(header, data, encoding: str, codec: str, jpeg_quality: int) -> CompressedImage:
    """A ``CompressedImage`` of one output array (format as compressed_image_transport writes it)."""
    encoded = encode_compressed(data, encoding, codec, jpeg_quality=jpeg_quality)
    msg = CompressedImage()
    msg.header = header
    msg.format = encoded.format
    msg.data = array.array("B", encoded.data.tobytes())
    return msg


class CompressedOutputs:
    """Encodes and publishes the compressed topics of every camera.

    Args:
        jpeg_quality: JPEG quality 1..100 (``jpeg_quality`` parameter; the node updates the
            attribute when the parameter changes).
        warn: ``warn(key, text)``, a throttled warning (the worker's log throttle).
    """

    def __init__(self, jpeg_quality: int = DEFAULT_JPEG_QUALITY, warn=None):
        self.jpeg_quality = check_jpeg_quality(jpeg_quality)
        self._warn = warn
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        # (camera, output) -> [messages published, recent (bytes, encode seconds)]
        self._stats: Dict[Tuple[str, str], list] = {}

    @staticmethod
    def create_publishers(node, camera: str, outputs: Iterable[str], qos) -> Dict[str, object]:
        """``~/<camera>/<output>/compressed`` publishers for those of ``outputs`` that have a codec."""
        return {name: node.create_publisher(CompressedImage, f"~/{camera}/{name}/{COMPRESSED_SUFFIX}", qos)
                for name in outputs if name in COMPRESSED_OUTPUTS}

    @staticmethod
    def wanted(publishers: Dict[str, object]) -> Set[str]:
        """The outputs whose compressed topic has a subscriber now (the engine must compute them)."""
        return {name for name, pub in publishers.items() if pub.get_subscription_count() > 0}

    def publish(self, jobs: List[Tuple[object, object, object]]) -> None:
        """Encode and publish, for each ``(camera channel, header, frame output)``, every output
        the frame has whose compressed topic has a subscriber. Never raises for one image: an
        encoder failure is a throttled warning and the other images still go out."""
        work = []
        for cam, header, out in jobs:
            for name, pub in getattr(cam, "compressed_publishers", {}).items():
                data = out.output(name)
                if data is not None and pub.get_subscription_count() > 0:
                    work.append((cam, name, pub, header, data))
        if not work:
            return
        if len(work) == 1:
            messages = [self._encode(*work[0])]
        else:
            pool = self._executor()
            messages = [f.result() for f in [pool.submit(self._encode, *item) for item in work]]
        # Published from this thread, in a fixed order, once every image of the batch is encoded.
        for (cam, name, pub, _, _), result in zip(work, messages):
            if result is None:
                continue
            msg, seconds = result
            pub.publish(msg)
            with self._stats_lock:
                stats = self._stats.setdefault((cam.name, name), [0, deque(maxlen=_STATS_WINDOW)])
                stats[0] += 1
                stats[1].append((len(msg.data), seconds))

    def diagnostic_values(self) -> List[Tuple[str, str]]:
        """``compressed.<camera>.<output>.{published,kb_per_frame,encode_ms}`` of every compressed
        topic published so far (none: nobody subscribed to one yet)."""
        with self._stats_lock:
            items = [(key, count, list(recent)) for key, (count, recent) in sorted(self._stats.items())]
        values = []
        for (camera, name), count, recent in items:
            prefix = f"compressed.{camera}.{name}"
            size = sum(b for b, _ in recent) / len(recent) / 1000.0
            seconds = sum(t for _, t in recent) / len(recent)
            values += [(f"{prefix}.published", str(count)), (f"{prefix}.kb_per_frame", f"{size:.1f}"),
                       (f"{prefix}.encode_ms", f"{seconds * 1000.0:.1f}")]
        return values

    def _encode(self, cam, name: str, pub, header, data) -> Optional[Tuple[CompressedImage, float]]:
        try:
            start = time.perf_counter()
            msg = compressed_msg(header, data, image_encoding(name, data), OUTPUTS[name].compressed,
                                 self.jpeg_quality)
            return msg, time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - one image that does not encode must not stop the others
            if self._warn is not None:
                self._warn((cam.name, f"encode:{name}"),
                           f"camera {cam.name}: cannot encode {name}/{COMPRESSED_SUFFIX}: {type(err).__name__}: {err}")
            return None

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                workers = max(1, min(_MAX_ENCODER_THREADS, os.cpu_count() or 1))
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tv3s_encode")
            return self._pool

    def close(self) -> None:
        """Stop the encoder threads (a later :meth:`publish` starts new ones)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

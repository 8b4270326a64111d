"""tv3s-demo, the quick start's main command: node process, real ROS 2 graph, the shipped
demo weights. It must segment the synthetic world meaningfully (its printed coverage names the
classes that really dominate the frames) and write the camera | prediction | truth panels."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import cv2
import numpy as np

from tv3s_ros.data import World
from tv3s_ros.model.presets import load_config


def test_demo_segments_the_world_and_writes_panels(tmp_path):
    frames, seed = 4, 2000
    save = tmp_path / "demo.png"
    env = dict(os.environ)          # the session's ROS_DOMAIN_ID, discovery on localhost only
    proc = subprocess.run([sys.executable, "-m", "tv3s_ros.tools.demo", "--frames", str(frames), "--rate", "2",
                           "--seed", str(seed), "--panels", "2", "--panel-scale", "0.5", "--save", str(save),
                           "--device", "cpu", "--node-log", str(tmp_path / "node.log")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "the weights shipped with preset tv3s_demo" in out, out
    done = re.search(r"summary: (\d+)/(\d+) frames segmented; mean coverage: (.*)", out)
    assert done and int(done.group(1)) >= 1 and int(done.group(2)) == frames, out
    printed = [item.rsplit(" ", 1)[0] for item in done.group(3).split(", ")]

    # The ground truth's dominant classes over the same frames.
    names = load_config("tv3s_demo").class_names
    counts = np.zeros(len(names))
    for _, label, _ in World(seed, (256, 512)).frames(frames):
        counts += np.bincount(label[label < len(names)].ravel(), minlength=len(names))[:len(names)]
    truth = [names[i] for i in np.argsort(-counts)[:4]]
    assert set(printed[:2]) <= set(truth), (printed, truth)

    image = cv2.imread(str(save))
    assert image is not None and image.shape[0] >= 2 * 128 and image.shape[1] >= 3 * 256, getattr(image, "shape", None)

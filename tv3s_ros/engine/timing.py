"""Per-stage timing of one batch (upload and preprocess, model, postprocess) without extra syncs.

On the CPU every boundary is a ``time.perf_counter()`` reading. On CUDA the work is
asynchronous: a host clock at a boundary would only say when the kernels were *launched*. So
each boundary records a CUDA event on the current stream (no synchronisation); the time
between two events is when the GPU got from one boundary to the next. The last stage ends on
the host, after the synchronisation that brings the results back (which the step does anyway):
it gets the wall time from the start minus the GPU stages before it. The stream is idle when a
batch starts (the previous one was synchronised), so the stages add up to the batch's wall time.

A stage may be marked more than once; its parts add up (the CUDA-graph path counts the graph
set-up before the upload and the replay after it as ``model``).
"""
from __future__ import annotations

import time
from typing import Dict, List, Tuple

import torch

__all__ = ["StageTimer", "ENGINE_STAGES"]

# The stages the engine reports in FrameOutput.stage_s, in order.
ENGINE_STAGES = ("upload_preprocess", "model", "postprocess")


class StageTimer:
    """Start at construction; :meth:`mark` ends a stage; :meth:`finish` ends the last and returns seconds per stage."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self._start_s = time.perf_counter()
        self._marks: List[Tuple[str, object]] = []
        self._start_event = self._event() if self.cuda else None

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, stage: str) -> None:
        """The work issued since the previous mark belongs to ``stage``."""
        self._marks.append((stage, self._event() if self.cuda else time.perf_counter()))

    def finish(self, stage: str) -> Dict[str, float]:
        """End ``stage`` now (on the host, after the results' synchronisation); seconds per stage."""
        end_s = time.perf_counter()
        stages: Dict[str, float] = {}
        if not self.cuda:
            previous = self._start_s
            for name, t in self._marks:
                stages[name] = stages.get(name, 0.0) + max(0.0, t - previous)
                previous = t
            stages[stage] = stages.get(stage, 0.0) + max(0.0, end_s - previous)
            return stages
        previous = self._start_event
        gpu_total = 0.0
        for name, event in self._marks:
            if not event.query():         # only when the caller skipped the results' sync
                event.synchronize()
            seconds = max(0.0, previous.elapsed_time(event) / 1000.0)
            stages[name] = stages.get(name, 0.0) + seconds
            gpu_total += seconds
            previous = event
        stages[stage] = stages.get(stage, 0.0) + max(0.0, end_s - self._start_s - gpu_total)
        return stages

"""Command-line plumbing shared by the offline tools (tv3s-eval, tv3s-train)."""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator, Optional, Tuple, Type

from tv3s_ros.host_memory import keep_freed_memory

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SIGINT = 0, 1, 2, 130


class BadInput(Exception):
    """A problem with the user's input: reported as one ``<tool>: error:`` line, exit status 2."""


@contextlib.contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """Use ``count`` torch CPU threads inside the block (unchanged when None)."""
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_tool(tool: str, run: Callable[[], int], cpu_threads: Optional[int] = None,
             interrupted: str = "stopped by SIGINT", bad_input: Type[Exception] = BadInput) -> int:
    """``run()`` with the torch thread count set; bad input and Ctrl-C become one line and an exit status."""
    keep_freed_memory()
    try:
        with torch_threads(cpu_threads):
            return run()
    except bad_input as error:
        print(f"{tool}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{tool}: {interrupted}", file=sys.stderr)
        return EXIT_SIGINT


def hxw(text: str) -> Tuple[int, int]:
    """argparse type for a ``HxW`` size such as ``256x512`` (positive integers)."""
    from tv3s_ros.preprocess import parse_hxw

    try:
        return parse_hxw(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None

"""mmemu: an emulation engine of Linux memory-management semantics.

    import mmemu
    m = mmemu.Machine(kernel="5.8")
    p = m.spawn()
"""
from ._version import __version__
from . import constants as _constants
from .constants import *  # noqa: F401,F403  Linux UAPI names and values
from . import constants as _constants
from .eras import VERSIONS, policy_for
from .errors import (Deadlock, EmulatedSignal, InvariantError, Livelock, MmemuError, OutOfMemory, Sigbus,
                     Sigsegv, WouldBlock)
from .gup import Pin, Pipe
from .machine import Machine
from .pageinfo import FrameInfo, PagemapEntry
from .process import Process, Thread
from .uffd import Resolver, Uffd, UffdError, UffdMsg
from .explore import Counterexample, ExploreResult, explore, rerun
from . import cost  # noqa: E402  emulated time: CostModel, Link
from .numa import MoveStatus  # noqa: E402  move_pages(2)'s status array

__all__ = ["__version__", "Machine", "Process", "Thread", "Pin", "Pipe", "FrameInfo",
           "PagemapEntry", "Sigsegv", "Sigbus", "EmulatedSignal", "OutOfMemory",
           "InvariantError", "MmemuError", "WouldBlock", "Deadlock", "Livelock", "Uffd", "UffdMsg", "UffdError",
           "Resolver", "VERSIONS", "policy_for", "explore", "rerun", "ExploreResult", "Counterexample",
           "MoveStatus"]
# A form type checkers follow (mypy, pyright): the constants' static __all__.
__all__ += _constants.__all__

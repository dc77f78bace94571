"""The host-kernel side of the oracle: the engine's API on the real kernel.

HostMachine mirrors mmemu.Machine with real processes; mmemu.program runs
the same programs on either; compare and diff check one against the other.
"""
from .caps import capabilities
from .machine import (FrameInfo, HostError, HostGupRef, HostMachine, HostPin, HostPipe,
                      HostProcess, HostThread, PagemapEntry, Unsupported)

__all__ = ["HostMachine", "HostProcess", "HostThread", "HostPipe", "HostPin", "HostGupRef",
           "PagemapEntry", "FrameInfo", "HostError", "Unsupported", "capabilities"]

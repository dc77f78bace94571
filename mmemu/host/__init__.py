"""The host-kernel side of the oracle: the engine's API on the real kernel.

HostMachine mirrors mmemu.Machine with real processes; mmemu.program runs
the same programs on either; compare and diff check one against the other.
VmMachine is HostMachine on a Debian kernel booted under QEMU (vm.py).
"""
from .caps import capabilities
from .machine import (FrameInfo, HostError, HostGupRef, HostMachine, HostPin, HostPipe,
                      HostProcess, HostThread, PagemapEntry, Unsupported)
from .vm import VmMachine, VmUnavailable

__all__ = ["HostMachine", "HostProcess", "HostThread", "HostPipe", "HostPin", "HostGupRef",
           "PagemapEntry", "FrameInfo", "HostError", "Unsupported", "capabilities",
           "VmMachine", "VmUnavailable"]

"""io_uring fixed buffers: the one FOLL_PIN user space can hold on this host.

IORING_REGISTER_BUFFERS pins the buffer with FOLL_WRITE|FOLL_PIN|
FOLL_LONGTERM (io_uring/rsrc.c io_pin_pages -> pin_user_pages_fast) and keeps
the pin until IORING_UNREGISTER_BUFFERS. IORING_OP_WRITE_FIXED / READ_FIXED
then act as the device: they move data through the pinned pages, never
through the process's page tables, so a COW that split the mapping away
from the pin is visible (the selftests' cow.c does the same).

Raw syscalls (425 setup, 426 enter, 427 register) and ring layout from
include/uapi/linux/io_uring.h; no liburing needed.
"""
import ctypes
import os

from ..constants import MAP_POPULATE, MAP_SHARED, PROT_READ, PROT_WRITE
from ..errors import oserror
from . import syscalls as sc

IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_ENTER_GETEVENTS = 1 << 0
IORING_REGISTER_BUFFERS = 0
IORING_UNREGISTER_BUFFERS = 1
IORING_OP_READ_FIXED = 4
IORING_OP_WRITE_FIXED = 5
SQE_SIZE = 64
CQE_SIZE = 16


class _SqringOffsets(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in
                ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array",
                 "resv1")] + [("user_addr", ctypes.c_uint64)]


class _CqringOffsets(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in
                ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags",
                 "resv1")] + [("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("sq_thread_cpu", ctypes.c_uint32),
                ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
                ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
                ("sq_off", _SqringOffsets), ("cq_off", _CqringOffsets)]


assert ctypes.sizeof(_Params) == 120  # struct io_uring_params


def _u32(addr):
    return ctypes.c_uint32.from_address(addr)


class FixedBufferRing:
    """An io_uring with one registered (pinned) buffer and a memfd as the
    device's backing store."""

    def __init__(self, addr, length, entries=4):
        self.addr = addr
        self.length = length
        self.fd = -1
        self._maps = []
        self._registered = False
        params = _Params()
        self.fd = sc.syscall(sc.SYS_io_uring_setup, entries, ctypes.byref(params),
                             call="io_uring_setup")
        try:
            self._map_rings(params)
            self.devfd = os.memfd_create("mmemu-pin-device", os.MFD_CLOEXEC)
            iov = sc.Iovec(addr, length)
            # pin_user_pages faults the buffer in: counted as the program's.
            sc.counted(sc.SYS_io_uring_register, self.fd, IORING_REGISTER_BUFFERS,
                       ctypes.addressof(iov), 1, call="io_uring_register")
            self._registered = True
        except BaseException:
            self.close()
            raise

    def _map_rings(self, p):
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * CQE_SIZE
        flags = MAP_SHARED | MAP_POPULATE
        prot = PROT_READ | PROT_WRITE
        if p.features & IORING_FEAT_SINGLE_MMAP:
            sq_size = cq_size = max(sq_size, cq_size)
        sq = sc.mmap_internal(0, sq_size, prot, flags, self.fd, IORING_OFF_SQ_RING)
        self._maps.append((sq, sq_size))
        if p.features & IORING_FEAT_SINGLE_MMAP:
            cq = sq
        else:
            cq = sc.mmap_internal(0, cq_size, prot, flags, self.fd, IORING_OFF_CQ_RING)
            self._maps.append((cq, cq_size))
        sqes = sc.mmap_internal(0, p.sq_entries * SQE_SIZE, prot, flags, self.fd, IORING_OFF_SQES)
        self._maps.append((sqes, p.sq_entries * SQE_SIZE))
        self._sq_tail = _u32(sq + p.sq_off.tail)
        self._sq_mask = _u32(sq + p.sq_off.ring_mask).value
        self._sq_array = sq + p.sq_off.array
        self._cq_head = _u32(cq + p.cq_off.head)
        self._cq_tail = _u32(cq + p.cq_off.tail)
        self._cq_mask = _u32(cq + p.cq_off.ring_mask).value
        self._cqes = cq + p.cq_off.cqes
        self._sqes = sqes

    def _submit_wait(self, opcode, addr, length, call):
        tail = self._sq_tail.value
        idx = tail & self._sq_mask
        sqe = self._sqes + idx * SQE_SIZE
        ctypes.memset(sqe, 0, SQE_SIZE)
        ctypes.c_uint8.from_address(sqe).value = opcode
        ctypes.c_int32.from_address(sqe + 4).value = self.devfd
        ctypes.c_uint64.from_address(sqe + 8).value = 0          # file offset
        ctypes.c_uint64.from_address(sqe + 16).value = addr
        ctypes.c_uint32.from_address(sqe + 24).value = length
        ctypes.c_uint64.from_address(sqe + 32).value = tail + 1  # user_data
        ctypes.c_uint16.from_address(sqe + 40).value = 0         # buf_index
        _u32(self._sq_array + idx * 4).value = idx
        # x86 is TSO: the SQE stores are visible before the tail store.
        self._sq_tail.value = tail + 1
        submitted = False
        while True:
            try:
                sc.syscall(sc.SYS_io_uring_enter, self.fd, 0 if submitted else 1, 1,
                           IORING_ENTER_GETEVENTS, None, 0, call="io_uring_enter")
                submitted = True
            except InterruptedError:
                submitted = True
            head = self._cq_head.value
            if head != self._cq_tail.value:
                break
        cqe = self._cqes + (head & self._cq_mask) * CQE_SIZE
        res = ctypes.c_int32.from_address(cqe + 8).value
        self._cq_head.value = head + 1
        if res < 0:
            raise oserror(-res, call)
        return res

    def device_read(self, off, n):
        """What a device reading the pinned pages sees (WRITE_FIXED to the memfd)."""
        if n == 0:
            return b""
        done = self._submit_wait(IORING_OP_WRITE_FIXED, self.addr + off, n, "WRITE_FIXED")
        return os.pread(self.devfd, done, 0)

    def device_write(self, off, data):
        """The device writes data into the pinned pages (READ_FIXED from the memfd)."""
        if not data:
            return
        os.pwrite(self.devfd, data, 0)
        os.ftruncate(self.devfd, len(data))
        self._submit_wait(IORING_OP_READ_FIXED, self.addr + off, len(data), "READ_FIXED")

    def close(self):
        """Unpin (synchronously: IORING_UNREGISTER_BUFFERS drops the pins before
        it returns when nothing is in flight), then free the ring. Closing the
        ring fd alone would unpin later, from io_ring_exit_work."""
        if self.fd >= 0:
            if self._registered:
                sc.syscall(sc.SYS_io_uring_register, self.fd, IORING_UNREGISTER_BUFFERS,
                           None, 0, call="io_uring_register")
                self._registered = False
            for addr, size in self._maps:
                sc.munmap(addr, size)
            self._maps = []
            os.close(self.fd)
            self.fd = -1
        if getattr(self, "devfd", -1) >= 0:
            os.close(self.devfd)
            self.devfd = -1

    def forget(self):
        """In a forked child: drop the inherited ring without unregistering
        (the pins belong to the parent's ring; the child's fd and ring
        mappings only hold references on the ring's file)."""
        for addr, size in self._maps:
            sc.munmap(addr, size)
        self._maps = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if getattr(self, "devfd", -1) >= 0:
            os.close(self.devfd)
            self.devfd = -1

"""Decoding films in child processes with a time and a memory limit, for the front ends that
read films from strangers (``cxr_tf.inference.readers.read_film``: predict, the service, the
DICOM node, DICOMweb).

The codestream checks (``cxr_tf.data.codestream``, ``images.check_budget``) refuse every bomb
we know of in milliseconds, before any decoder runs. This is the guard for the ones we do not
know: a decoder that loops or allocates on input its header check let through. Each film is
decoded by a child process (``python -m cxr_tf.data.decode_guard``, numpy/OpenCV/pydicom
imported once) whose address space is capped (``RLIMIT_AS``: its size after the imports plus
``memory`` bytes) and whose CPU time per film is capped at ``seconds`` (``RLIMIT_CPU``, raised
before each film; the kernel ends the child past it). CPU time, not wall time, so a busy
machine does not refuse a film that is merely slow to get the CPU (a lossless JPEG 2000 film of
3,000 px takes 2.7 s of CPU in OpenJPEG); a wall-clock backstop of ``WALL_FACTOR`` x ``seconds``
catches a child that stops answering. A film that ends its child is refused naming the limit,
and a fresh child is started at once for the next film. A child is started the first
time no idle one is free, so concurrent callers (the node's association threads) decode side by
side, and kept for the next film. The parent only ever holds the film's bytes and the decoded
uint8 pixels.

Measured (``tools/bench_readers.py``): the round trip costs the good film a few milliseconds
of pickling on top of its decode; the first film pays the child's start (~0.4 s).
"""

import fcntl
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from cxr_tf.data.images import ImageError

WALL_FACTOR = 3
"""The wall-clock backstop, in multiples of the CPU-time limit."""
_HOME = str(Path(__file__).resolve().parents[2])  # the folder holding cxr_tf: the child imports it from there
_CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_HOME, os.environ.get("PYTHONPATH")]))}


class DecodeGuard:
    """Children that run ``images.read_image`` / ``images.read_dicom`` under the limits."""

    def __init__(self, seconds, memory):
        self.seconds, self.memory = float(seconds), int(memory)
        self._idle, self._lock = [], threading.Lock()

    def decode(self, data, name, limits, dicom):
        """(pixels, meta, header) of ``data`` as ``images.read_dicom`` gives them (``dicom``),
        or (pixels, None, None) as ``images.read_image`` does; ImageError naming ``name`` for a
        film it refuses, one over the time or memory limit, or one that kills its decoder."""
        with self._lock:
            child = self._idle.pop() if self._idle else None
        if child is None:
            child = _Child(self.memory, self.seconds)
        try:
            answer = child.ask((data, name, limits, dicom), self.seconds * WALL_FACTOR)
        except Exception as err:  # noqa: BLE001 - timeout, a closed pipe (the child ended), a garbled reply
            code = child.kill()
            with self._lock:
                self._idle.append(_Child(self.memory, self.seconds))  # started now, ready for the next film
            if isinstance(err, TimeoutError) or code == -signal.SIGXCPU or code == -signal.SIGKILL:
                raise ImageError(name, f"decoding took longer than the time limit of {self.seconds:g} s "
                                       "(Limits.decode_seconds)") from None
            raise ImageError(name, f"the decoder died on this film (exit status {code}) under the memory "
                                   f"limit of {self.memory:,} bytes (Limits.decode_memory)") from None
        with self._lock:
            self._idle.append(child)
        kind, value = answer
        if kind == "ok":
            return value
        raise ImageError(name, value)

    def close(self):
        """End the idle children (the busy ones end with their film)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()


class _Child:
    """One decoding process and the two pipes to it."""

    def __init__(self, memory, seconds):
        to_child, self._request = os.pipe()
        self._reply, from_child = os.pipe()
        for fd in (to_child, from_child):
            try:  # 1 MiB pipes: a film's bytes and pixels cross in 16x fewer switches than in 64 KiB
                fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 2**20)
            except OSError:
                pass
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cxr_tf.data.decode_guard", str(to_child), str(from_child), str(memory),
             str(seconds)],
            pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL, start_new_session=True, env=_CHILD_ENV)
        os.close(to_child)
        os.close(from_child)
        self.requests = Connection(self._request, readable=False)
        self.replies = Connection(self._reply, writable=False)

    def ask(self, request, seconds):
        """Send (data, name, limits, dicom); ("ok", (pixels, meta, header)) or ("error", reason).
        The film's bytes and pixels travel as raw messages beside a small pickle (no copies
        into and out of pickles: 2-3 ms less per 3,000 px film)."""
        data, *rest = request
        self.requests.send_bytes(pickle.dumps(rest, pickle.HIGHEST_PROTOCOL))
        self.requests.send_bytes(data)
        if not self.replies.poll(seconds):
            raise TimeoutError
        kind, *answer = pickle.loads(self.replies.recv_bytes())
        if kind != "ok":
            return kind, answer[0]
        shape, meta, header = answer
        pixels = np.empty(shape, np.uint8)
        self.replies.recv_bytes_into(pixels.reshape(-1))  # a flat view: Connection counts len() items
        return kind, (pixels, meta, header)

    def kill(self):
        """End the child now; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        code = self.process.wait()
        self.requests.close()
        self.replies.close()
        return code


def _serve(request_fd, reply_fd, memory, seconds):
    """The child: import the decoders, cap the address space, answer films until the pipe closes."""
    import cv2
    import pydicom.pixels  # noqa: F401 - imported before the cap: the decoders are part of the baseline

    from cxr_tf.data.images import read_dicom, read_image

    for module in ("PIL.JpegImagePlugin", "PIL.Jpeg2KImagePlugin", "jpeg_ls"):
        try:
            __import__(module)
        except ImportError:
            pass
    cv2.setNumThreads(1)  # threads reserve address space; one film at a time needs none
    with open("/proc/self/statm") as statm:
        baseline = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (baseline + memory, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.RLIM_INFINITY))  # a killed decoder leaves no core file
    requests, replies = Connection(request_fd, writable=False), Connection(reply_fd, readable=False)
    while True:
        try:
            name, limits, dicom = pickle.loads(requests.recv_bytes())
            data = requests.recv_bytes()
        except EOFError:
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu = math.ceil(used.ru_utime + used.ru_stime + seconds)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))  # SIGXCPU there ends the child
        pixels = None
        try:
            pixels, meta, header = read_dicom(data, name, limits) if dicom else (read_image(data, name, limits=limits),
                                                                                 None, None)
            pixels = np.ascontiguousarray(pixels)
            answer = ("ok", pixels.shape, meta, header)
        except ImageError as err:
            answer = ("error", err.reason)
        except MemoryError:
            answer = ("error", f"decoding needs more than the memory limit of {memory:,} bytes "
                               "(Limits.decode_memory)")
        except Exception as err:  # noqa: BLE001 - a decoder's own failure is this film's error
            answer = ("error", f"damaged or unsupported file ({type(err).__name__}: {str(err)[:200]})")
        del data
        replies.send_bytes(pickle.dumps(answer, pickle.HIGHEST_PROTOCOL))
        if answer[0] == "ok":
            replies.send_bytes(memoryview(pixels).cast("B"))  # a flat byte view: no copy


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))

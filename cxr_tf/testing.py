"""A real uvicorn server on a free loopback port, in a background thread: used by the
service tests and `tools/bench_serve.py`."""

import socket
import threading
import time


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """``LiveServer(app).start()`` serves ``app`` at ``.url`` until ``.stop()``."""

    def __init__(self, app, port=None):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self, timeout=30):
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the test server on {self.url} did not start within {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self):
        self._server.should_exit = True
        self._thread.join(timeout=10)

"""DelayRelay: a TCP relay on loopback that holds every byte half a round trip in each direction,
the task API as seen from a GPU box in another region (latency only; bandwidth is loopback's).
It counts the bytes it carries each way: what crosses the network, headers included.

`in_process=False` runs it in a forked process of its own (the benchmark: in the peers' process its
threads would take the GIL from the sandbox); create it before the process starts any thread."""

from __future__ import annotations

import multiprocessing
import queue
import socket
import threading
import time


class DelayRelay:
    def __init__(self, upstream_port: int, rtt_seconds: float, *, in_process: bool = True) -> None:
        self.upstream_port, self.delay = upstream_port, rtt_seconds / 2
        self.sent_up = multiprocessing.Value("q", 0)        # bytes to the API
        self.sent_down = multiprocessing.Value("q", 0)      # bytes from it
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.process = None
        if in_process:
            threading.Thread(target=self._accept, daemon=True).start()
        else:
            self.process = multiprocessing.get_context("fork").Process(target=self._accept, daemon=True)
            self.process.start()
            self.listener.close()       # the child holds it now

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for source, target, counter in ((client, upstream, self.sent_up), (upstream, client, self.sent_down)):
                self._pipe(source, target, counter)

    def _pipe(self, source: socket.socket, target: socket.socket, counter) -> None:
        held: queue.Queue = queue.Queue()

        def read() -> None:
            try:
                while data := source.recv(65536):
                    with counter.get_lock():
                        counter.value += len(data)
                    held.put((time.monotonic() + self.delay, data))
            except OSError:
                pass
            held.put(None)

        def write() -> None:
            try:
                while (item := held.get()) is not None:
                    due, data = item
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    target.sendall(data)
                target.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.join(5)
        else:
            self.listener.close()

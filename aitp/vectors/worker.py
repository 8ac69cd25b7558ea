"""A vector worker process (`python -m aitp.vectors.worker FD`), and the wire it shares with the
parent's pool (aitp/vectors/pool.py).

Kept apart from the pool so that a worker imports only what it needs (no subprocess, threading or
concurrent.futures): a worker starts with some 10 ms less CPU, at every start and restart.

One message per job on a socket, length-prefixed, its first byte saying what it is. Jobs and
results go as msgpack (a batch's vectors are some 140 kB in), which pickle would copy through more
layers; only an exception goes as a pickle.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys

import msgspec

from aitp.vectors.jobs import VectorJob

PING, STOP, JOB = b"P", b"S", b"J"
RESULT, ERROR = b"R", b"E"
_LENGTH = struct.Struct("!Q")
_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(VectorJob)


class Pipe:
    """Length-prefixed messages on a socket. Each message is read straight into a buffer of its
    size: multiprocessing's Connection reads into a fresh object of the remaining size per read,
    and for these messages that cost about 75 us more per batch on each side (mmap and copies)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @staticmethod
    def message(tag: bytes) -> bytearray:
        """A message holding `tag`, with room for its length in front; append the rest, then send."""
        return bytearray(_LENGTH.size) + tag

    def send(self, message: bytearray) -> None:
        _LENGTH.pack_into(message, 0, len(message) - _LENGTH.size)
        self._sock.sendall(message)

    def receive(self) -> memoryview:
        """The next message; EOFError at the end of the pipe."""
        (length,) = _LENGTH.unpack(self._read(_LENGTH.size))
        return memoryview(self._read(length))

    def _read(self, length: int) -> bytearray:
        buffer = bytearray(length)
        view, have = memoryview(buffer), 0
        while have < length:
            count = self._sock.recv_into(view[have:])
            if not count:
                raise EOFError("the other end closed the pipe")
            have += count
        return buffer

    def close(self) -> None:
        self._sock.close()


def tagged(kind: bytes, value: msgspec.Struct) -> bytearray:
    message = Pipe.message(kind)
    _encoder.encode_into(value, message, len(message))      # written after the tag: no second copy
    return message


def pickled(exc: Exception) -> bytes:
    try:
        return pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be pickled goes as its text
        return pickle.dumps(RuntimeError(f"vector work failed: {exc!r}"))


def serve(pipe: Pipe) -> None:
    """The worker process: answer each job with its result or the exception it raised."""
    from aitp.vectors.work import process_job
    while True:
        try:
            message = pipe.receive()
        except (EOFError, OSError):
            return
        kind = bytes(message[:1])
        if kind == STOP:
            return
        try:
            answer = (Pipe.message(PING) if kind == PING
                      else tagged(RESULT, process_job(_job_decoder.decode(message[1:]), rows_by_place=True)))
        except Exception as exc:  # noqa: BLE001 - every error goes back to the job's future
            answer = Pipe.message(ERROR) + pickled(exc)
        try:
            pipe.send(answer)
        except (EOFError, OSError):
            return


if __name__ == "__main__":
    # Ctrl-C and a SIGTERM to the whole group (systemd does that) are for the service to handle:
    # it finishes its batches, then stops its workers; a worker that outlives it reads end-of-file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(Pipe(socket.socket(fileno=int(sys.argv[1]))))
    os._exit(0)      # nothing to flush or close: skip the interpreter's teardown (CPU at every stop)

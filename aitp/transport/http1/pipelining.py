"""Pipelining: groups of requests sent back to back on one connection, and when to read their answers."""

from __future__ import annotations

import logging
import time
from typing import Callable

from aitp.timers import running_mean
from aitp.transport.http1.connection import _Connection
from aitp.transport.http1.errors import HttpTransportError, _ClosedBeforeAnswer
from aitp.transport.http1.response import Response

log = logging.getLogger("aitp.http1")

Progress = Callable[[list[Response]], None]


class Pipelining:
    """One client's pipelining: whether it still pipelines, and how long its groups' answers took."""

    def __init__(self, enabled: bool, server: str) -> None:
        # Off for good once a server (or a proxy before it) answered part of a group and then went
        # silent: `pipeline` then sends one request at a time.
        self.enabled = enabled
        self._server = server             # host:port, for the log line
        # Seconds per answer of the last pipelined groups, by the size class of their requests (a
        # claim's answer comes sooner than a result's), and seconds to their first answer: how long
        # `pipeline` naps before reading.
        self._answer_seconds: dict[int, float] = {}
        self._latency_seconds: dict[int, float] = {}

    def run(self, take: Callable[[], tuple[_Connection, bool]], give_back: Callable[[_Connection], None],
            method: str, messages: list[bytes], progress: Progress | None) -> list[Response | HttpTransportError]:
        """Send `messages` (whole requests) in groups, each on a connection from `take`, and read
        their answers, as Http1Client.pipeline describes. The pool's two methods are passed with
        each call, not kept, so that this object holds no reference back to its client."""
        answers = _Answers(len(messages), progress)
        results = answers.results
        while len(results) < len(messages):
            start = len(results)
            end = next_group(messages, start) if self.enabled else start + 1
            try:
                connection, reused = take()
            except HttpTransportError as exc:         # refused, or no route: none can be sent
                answers.fail_the_rest(exc)
                break
            try:
                keep_alive = self._send_group(connection, method, messages[start:end], answers)
            except _ClosedBeforeAnswer as exc:
                connection.close()
                _send_again_or_fail(answers, exc, answered=len(results) > start, reused=reused)
                continue
            except HttpTransportError as exc:
                connection.close()
                self._stop_after_silence(exc, answered=len(results) > start)
                answers.fail_the_rest(exc)
                break
            except BaseException:
                connection.close()
                raise
            if keep_alive:
                give_back(connection)
            else:
                connection.close()
        return results

    def _send_group(self, connection: _Connection, method: str, group: list[bytes], answers: _Answers) -> bool:
        """Send `group` in one write, nap, then read its answers into `answers`; whether the
        connection may be used again."""
        count = len(group)
        payload = b"".join(group)
        size_class = (len(payload) // count).bit_length()
        connection.start_deadline()
        connection.send(payload)
        sent_at = time.monotonic()
        latency = self._latency_seconds.get(size_class, 0.0)
        if nap := gather_seconds(self._answer_seconds.get(size_class), count, latency):
            time.sleep(nap)
        start = len(answers.results)
        first_at, keep_alive = _read_group(connection, method, count, answers)
        if len(answers.results) - start == count and first_at is not None:
            self._learn(size_class, count, latency, nap, sent_at, first_at, time.monotonic())
        return keep_alive

    def _learn(self, size_class: int, count: int, latency: float, nap: float, sent_at: float, first_at: float,
               done_at: float) -> None:
        """A whole group was answered: what its first answer and the rest took, for the next nap."""
        latency = _learned_latency(latency, first_at - sent_at, nap)
        self._latency_seconds[size_class] = latency
        self._answer_seconds[size_class] = _learned_answer_seconds(
            self._answer_seconds.get(size_class), done_at - sent_at - latency, count)

    def _stop_after_silence(self, exc: HttpTransportError, answered: bool) -> None:
        """The fall-back from a server (or a proxy before it) that answered part of a group and
        then went silent: from now on, one request at a time."""
        if exc.kind == "Timeout" and answered and self.enabled:
            self.enabled = False
            log.warning("a server answered part of a group of pipelined requests, then nothing: "
                        "sending one request at a time from now on",
                        extra={"fields": {"server": self._server}})


# Pipelined requests go out in groups of at most this size: it bounds the copy that joins them.
# (Each group used to fit the socket buffers, 64 kB, so that sending it could not wait on a
# server waiting for its answers to be read; _Connection.send now reads while it sends. A
# batch's 15 results, some 145 kB, now go in one group instead of three: three naps and three
# rounds of reads became one, some 20 us of CPU per task in the benchmark.)
PIPELINE_GROUP_BYTES = 1024 * 1024


def next_group(messages: list[bytes], start: int) -> int:
    """Where the group of pipelined requests that begins at `start` ends: at most
    PIPELINE_GROUP_BYTES, or one request."""
    end, size = start, 0
    while end < len(messages) and (end == start or size + len(messages[end]) <= PIPELINE_GROUP_BYTES):
        size += len(messages[end])
        end += 1
    return end


# A server answers pipelined requests one at a time, and reading each answer as it comes costs a
# thread wake-up each: most of a pipelined PATCH's client CPU on loopback against the sandbox.
# So after sending a group the reader first sleeps through most of the time its answers took
# last time, per answer, for requests of that size, and then reads what has come together. The
# nap is at most GATHER_MAX_SECONDS: a server that got slower, or stalls, costs little latency,
# and one that got faster shortens the next nap, as the group's time then is mostly the nap.
_GATHER_SHARE = 0.8
GATHER_MAX_SECONDS = 0.01


def _gather_nap(seconds_per_answer: float, count: int) -> float:
    """The gather nap: most of the time the answers after the first took last time."""
    return min(GATHER_MAX_SECONDS, _GATHER_SHARE * seconds_per_answer * (count - 1))


# Far from the server, nothing can come back before a round trip: the nap also covers most of
# the latency measured before the first answer (which no wait can shorten), so that a far API's
# answers are read together too, not one wake-up each as they trickle in.
_LATENCY_SHARE = 0.9              # of the measured time to the first answer
_LATENCY_NAP_MAX = 1.0


def _latency_nap(latency: float) -> float:
    """The latency nap: most of the time the first answer took to come."""
    return min(_LATENCY_NAP_MAX, _LATENCY_SHARE * latency)


_GATHER_MIN_SECONDS = 0.0002      # shorter naps save no wake-up


def gather_seconds(seconds_per_answer: float | None, count: int, latency: float = 0.0) -> float:
    """How long to nap before reading the answers to `count` pipelined requests, when such answers
    took `seconds_per_answer` each last time (None: no idea yet, so no nap), after `latency`
    seconds before the first."""
    if seconds_per_answer is None or count < 2:
        return 0.0
    nap = _latency_nap(latency) + _gather_nap(seconds_per_answer, count)
    return nap if nap >= _GATHER_MIN_SECONDS else 0.0


def _read_group(connection: _Connection, method: str, count: int, answers: _Answers) -> tuple[float | None, bool]:
    """Read the answers to a group of `count` into `answers`, fewer if the server closes after one:
    when the first came (None if none did), and whether the connection may be used again."""
    first_at, keep_alive, end = None, True, len(answers.results) + count
    while len(answers.results) < end and keep_alive:
        connection.start_deadline()     # each answer of the group has its own
        connection.expect_answer()
        response, keep_alive = connection.read_response(method)
        answers.results.append(response)
        if first_at is None:
            first_at = time.monotonic()
        answers.hand_over_early(connection)
    return first_at, keep_alive


# Answers handed over early at once, at least: each handing costs the caller a message, and answers
# that trickle in one by one (a server writing each as it is done) would cost one each.
EARLY_ANSWERS = 16


class _Answers:
    """The answers of one `pipeline` call so far, in order, and how many went to `progress`."""

    __slots__ = ("results", "_total", "_progress", "_told")

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.results: list[Response | HttpTransportError] = []
        self._total = total
        self._progress = progress
        self._told = 0          # answers handed to `progress` so far

    def hand_over_early(self, connection: _Connection) -> None:
        """Early answers: `progress` gets the answers so far when reading on would wait for the
        server and EARLY_ANSWERS or more came since it last did (never after the last one)."""
        results = self.results
        if self._progress is not None and len(results) - self._told >= EARLY_ANSWERS \
                and len(results) < self._total and not connection.answer_waiting():
            self._progress(results)
            self._told = len(results)

    def fail_the_rest(self, exc: HttpTransportError) -> None:
        """Every request not answered yet gets `exc`."""
        self.results += [exc] * (self._total - len(self.results))


_GATHER_WEIGHT = 0.5              # of the latest group in the running mean per answer
_LATENCY_DECAY = 0.9              # a first answer already there after the nap: maybe the server is nearer now


def _learned_latency(latency: float, waited: float, nap: float) -> float:
    """The time to the first answer that the next latency nap covers, after one came `waited`
    seconds after sending."""
    # Only a first answer that came after the nap tells how far the server is.
    return running_mean(latency or None, waited, _GATHER_WEIGHT) if waited > nap + 0.001 \
        else latency * _LATENCY_DECAY


def _learned_answer_seconds(previous: float | None, seconds: float, count: int) -> float:
    """Seconds per answer that the next gather nap works from, after `count` answers took
    `seconds` beyond the time to the first."""
    return running_mean(previous, max(0.0, seconds) / count, _GATHER_WEIGHT)


def _send_again_or_fail(answers: _Answers, exc: _ClosedBeforeAnswer, answered: bool, reused: bool) -> None:
    """The fall-back when the server closes before the next answer."""
    # Closed before the next answer: the rest are sent again on a fresh connection
    # (harmless for idempotent requests, even if the server did carry some out),
    # unless this connection was fresh and answered nothing at all.
    if not answered and not reused:
        answers.fail_the_rest(exc)

"""FlowWindow: how many tasks the Poller keeps in flight, sized as TCP sizes its window.

Each task costs round trips to the API (its claim, its result, a share of a poll) on top of the
provider's work. With the API near, `minimum` tasks keep the provider fed; far away, tasks waiting
on the network hold credit the provider needed, and a fixed window caps the rate at window / time
in flight (0.48 of loopback's at 100 ms with 256). So the window is the minimum plus the rate tasks
settle at times ROUND_TRIPS_IN_FLIGHT round trips, never above `maximum`.
"""

from __future__ import annotations

# A task's claim and its result are a round trip each, a poll a third, and one more is headroom
# (as TCP keeps about twice the bandwidth-delay product in flight).
ROUND_TRIPS_IN_FLIGHT = 4
# How often the settle rate is sampled.
RATE_SAMPLE_SECONDS = 0.5
# Slow start: the first window is worked through at the providers' own pace, which the first results
# computed show (their settling comes a round trip later: too late to feed the provider when the
# first window runs out). So, as BBR sizes its window from the bottleneck's rate and the round trip,
# the window is set at once from that pace where the network's part matters at all; a pace held
# down by the window itself still grows it, as the window it asks for is larger than the one that
# held it. The start ends, as BBR's, when two samples in a row beat the best one so far by less
# than STARTUP_GROWTH: the window no longer holds the rate down. The window never shrinks before.
STARTUP_GROWTH = 1.25
STARTUP_SAMPLE_SECONDS = 0.1      # the shortest sample in the slow start
PACE_SECONDS = 0.02               # the shortest span of results computed that tells the pace


class FlowWindow:
    def __init__(self, minimum: int, maximum: int, now: float) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.size = self.minimum
        self.settle_rate = 0.0        # tasks settled per second: up at once, down by halves
        self._settled, self._since = 0, now
        self.starting = True          # slow start: sized from the pace of the first results
        self._best, self._flat = 0.0, 0
        self._first_computed_at: float | None = None
        self._last_computed_at = now
        self._computed_after_first = 0
        self.start_pace = 0.0         # tasks computed per second in the start, as last measured
        self._reported = self.size    # the size last worth a log line

    def describe(self) -> dict:
        """The window's state, for a log line."""
        return {"window": self.size, "settle_rate": round(self.settle_rate, 1), "start_pace": round(self.start_pace, 1)}

    def start(self, now: float) -> None:
        """Count the rate from now (the first take), not from start-up."""
        self._settled, self._since = 0, now

    def settled(self, count: int) -> None:
        self._settled += count

    def computed(self, count: int, now: float) -> None:
        if not self.starting:
            return
        if self._first_computed_at is None or now - self._last_computed_at > RATE_SAMPLE_SECONDS:
            # The first results (their tasks' work came before: not counted), or the first after a
            # lull: the pace counts from here.
            self._first_computed_at, self._computed_after_first = now, 0
        else:
            self._computed_after_first += count
        self._last_computed_at = now

    def _pace(self, now: float) -> float:
        """The rate results are computed at since the first ones (0 until that says anything)."""
        if self._first_computed_at is None or now - self._first_computed_at < PACE_SECONDS:
            return 0.0
        return self._computed_after_first / (now - self._first_computed_at)

    def _network(self, rate: float, round_trip: float | None) -> int:
        """The tasks that wait on the network at `rate`: settle rate times the round trips in flight."""
        return int(rate * ROUND_TRIPS_IN_FLIGHT * (round_trip or 0.0))

    def resize(self, now: float, round_trip: float | None) -> int | None:
        """Widen the window in the slow start, sample the rate when a sample is due and size the
        window again; the size last reported when it moved by a quarter or more since (worth a log
        line), else None."""
        if self.starting:
            self._widen(now, round_trip)
        self._sample(now, round_trip)
        if abs(self.size - self._reported) * 4 < self._reported:
            return None
        old, self._reported = self._reported, self.size
        return old

    def _widen(self, now: float, round_trip: float | None) -> None:
        self.start_pace = self._pace(now) or self.start_pace
        network = self._network(max(self.settle_rate, self.start_pace), round_trip)
        if 4 * network >= self.minimum:         # far enough from the API for the network to matter
            self.size = max(self.size, min(self.maximum, self.minimum + network))

    def _sample(self, now: float, round_trip: float | None) -> None:
        elapsed = now - self._since
        # In the slow start a sample every two round trips, as TCP's window turns over each round trip.
        due = max(STARTUP_SAMPLE_SECONDS, 2 * round_trip) if self.starting and round_trip else RATE_SAMPLE_SECONDS
        if elapsed < min(due, RATE_SAMPLE_SECONDS):
            return
        # A window too small holds the rate down, so a higher sample is the truer one (BBR keeps
        # the highest delivery rate it saw); a lower one may be a lull, so it only halves the way.
        sample = self._settled / elapsed
        self.settle_rate = max(sample, (self.settle_rate + sample) / 2)
        self._settled, self._since = 0, now
        wanted = self.minimum + self._network(self.settle_rate, round_trip)
        if self.starting:
            if sample > self._best * STARTUP_GROWTH:
                self._best, self._flat = sample, 0
            elif sample > 0:
                self._flat += 1
                self.starting = self._flat < 2
            if self.starting:
                wanted = max(wanted, self.size)     # the start's widening stands until it ends
        self.size = max(self.minimum, min(self.maximum, wanted))

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
# Slow start, as TCP's and BBR's: while each sample beats the best so far by this much, the window
# is what holds the rate down, so it doubles (when the network part of it matters at all); two
# samples without such growth end the start.
STARTUP_GROWTH = 1.25
STARTUP_SAMPLE_SECONDS = 0.1      # the shortest sample in the slow start


class FlowWindow:
    def __init__(self, minimum: int, maximum: int, now: float) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.size = self.minimum
        self.settle_rate = 0.0        # tasks settled per second: up at once, down by halves
        self._settled, self._since = 0, now
        self.starting = True          # slow start: doubling while the rate keeps growing
        self._best, self._flat = 0.0, 0

    def start(self, now: float) -> None:
        """Count the rate from now (the first take), not from start-up."""
        self._settled, self._since = 0, now

    def settled(self, count: int) -> None:
        self._settled += count

    def resize(self, now: float, round_trip: float | None) -> int | None:
        """Sample the rate when a sample is due and size the window again; the old size when the
        window moved by a quarter or more (worth a log line), else None."""
        elapsed = now - self._since
        # In the slow start a sample every two round trips, as TCP doubles its window each round trip.
        due = max(STARTUP_SAMPLE_SECONDS, 2 * round_trip) if self.starting and round_trip else RATE_SAMPLE_SECONDS
        if elapsed < min(due, RATE_SAMPLE_SECONDS):
            return None
        # A window too small holds the rate down, so a higher sample is the truer one (BBR keeps
        # the highest delivery rate it saw); a lower one may be a lull, so it only halves the way.
        sample = self._settled / elapsed
        self.settle_rate = max(sample, (self.settle_rate + sample) / 2)
        self._settled, self._since = 0, now
        network = int(self.settle_rate * ROUND_TRIPS_IN_FLIGHT * (round_trip or 0.0))
        wanted = self.minimum + network
        if self.starting and sample > 0:
            if sample > self._best * STARTUP_GROWTH:
                self._best, self._flat = sample, 0
                if 4 * network >= self.minimum:     # far enough from the API for the network to matter
                    wanted = max(wanted, 2 * self.size)
            else:
                self._flat += 1
                self.starting = self._flat < 2
        old, self.size = self.size, max(self.minimum, min(self.maximum, wanted))
        return old if abs(self.size - old) * 4 >= old else None

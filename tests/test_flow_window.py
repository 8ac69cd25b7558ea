"""The Poller's window: the minimum near the API, grown by rate x round trips far from it."""

from actors.flow_window import RATE_SAMPLE_SECONDS, ROUND_TRIPS_IN_FLIGHT, FlowWindow


def _settle_for(window: FlowWindow, rate: float, start: float, seconds: float, round_trip: float | None) -> float:
    """Settle `rate` tasks a second for `seconds`, one sample at a time; the time reached."""
    now = start
    while now < start + seconds:
        window.settled(int(rate * RATE_SAMPLE_SECONDS))
        now += RATE_SAMPLE_SECONDS
        window.resize(now, round_trip)
    return now


def test_near_the_api_the_window_stays_at_the_minimum():
    window = FlowWindow(256, 2048, now=0.0)
    _settle_for(window, 1000, 0.0, 5, round_trip=0.001)
    assert window.size == 256 + int(1000 * ROUND_TRIPS_IN_FLIGHT * 0.001)     # 260: a millisecond adds little
    assert FlowWindow(256, 2048, 0.0).size == 256


def test_far_from_the_api_the_window_covers_the_round_trips_at_the_settle_rate():
    window = FlowWindow(256, 2048, now=0.0)
    _settle_for(window, 1000, 0.0, 5, round_trip=0.1)
    assert window.size == 256 + 400          # 1,000 tasks/s x 4 round trips of 100 ms


def test_the_window_never_passes_the_maximum_nor_falls_below_the_minimum():
    window = FlowWindow(256, 512, now=0.0)
    now = _settle_for(window, 5000, 0.0, 2, round_trip=0.2)
    assert window.size == 512
    _settle_for(window, 0, now, 10, round_trip=0.2)
    assert window.size == 256


def test_a_minimum_above_the_maximum_is_the_maximum():
    window = FlowWindow(256, 4, now=0.0)
    assert window.size == 4
    _settle_for(window, 1000, 0.0, 2, round_trip=0.5)
    assert window.size == 4


def test_the_rate_rises_at_once_and_falls_by_halves():
    window = FlowWindow(100, 10_000, now=0.0)
    now = _settle_for(window, 1000, 0.0, 1, round_trip=None)
    assert window.settle_rate == 1000
    _settle_for(window, 0, now, RATE_SAMPLE_SECONDS, round_trip=None)
    assert window.settle_rate == 500         # a lull halves it, it does not empty the window
    assert window.size == 100                # no round trip measured yet: the minimum


def test_no_resize_before_a_sample_is_due_and_a_small_move_is_not_worth_a_line():
    window = FlowWindow(256, 2048, now=0.0)
    window.settled(100)
    assert window.resize(0.15, 0.1) is None and window.size == 256     # slow start: every 2 round trips
    assert window.resize(0.2, 0.1) == 256                               # moved a lot: the old size
    window.starting = False
    window.settled(100)
    assert window.resize(0.2 + RATE_SAMPLE_SECONDS / 2, 0.1) is None   # after the start: every half second
    assert window.resize(0.2 + RATE_SAMPLE_SECONDS, 0.1) is None       # about the same again: no line


def test_far_from_the_api_the_window_doubles_while_the_rate_keeps_growing():
    window = FlowWindow(256, 4096, now=0.0)
    now, sizes = 0.0, []
    for rate in (500, 900, 1500):                 # each sample well above the last: still held down
        window.settled(int(rate * RATE_SAMPLE_SECONDS))
        now += RATE_SAMPLE_SECONDS
        window.resize(now, 0.1)
        sizes.append(window.size)
    assert sizes == [512, 1024, 2048]             # doubled each time (more than rate x 4 round trips)
    for _ in range(2):                            # the rate stops growing: the start is over
        window.settled(int(1500 * RATE_SAMPLE_SECONDS))
        now += RATE_SAMPLE_SECONDS
        window.resize(now, 0.1)
    assert not window.starting and window.size == 256 + 600


def test_near_the_api_a_growing_rate_does_not_double_the_window():
    window = FlowWindow(256, 4096, now=0.0)
    _settle_for(window, 1000, 0.0, 1, round_trip=0.002)
    assert window.size == 256 + 8

"""The Poller's window: the minimum near the API, grown by rate x round trips far from it."""

from aitp.intake.window import RATE_SAMPLE_SECONDS, ROUND_TRIPS_IN_FLIGHT, FlowWindow


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


def _computed_at_1024_a_second(window: FlowWindow) -> float:
    """Results computed from t=1: the first 16 (whose work came before), then 16 every 1/64 s
    (1,024 a second, exact in binary) for 1/8 s; the time reached."""
    window.computed(16, 1.0)
    for step in range(1, 9):
        window.computed(16, 1.0 + step / 64)
    return 1.125


def test_far_from_the_api_the_pace_of_the_first_results_sizes_the_window_at_once():
    # Their settling comes a round trip later: sized from it, the window would open too late to
    # feed the provider when the first one runs out.
    window = FlowWindow(256, 4096, now=0.0)
    window.start(1.0)
    window.computed(16, 1.0)
    window.computed(16, 1.01)
    window.resize(1.01, 0.125)
    assert window.size == 256                        # 10 ms of results tell no pace yet
    window = FlowWindow(256, 4096, now=0.0)
    window.start(1.0)
    now = _computed_at_1024_a_second(window)
    assert window.resize(now, 0.125) == 256          # worth a line: from 256...
    assert window.size == 256 + 1024 * ROUND_TRIPS_IN_FLIGHT // 8     # ...to 768, before anything settled


def test_the_pace_counts_from_the_first_results_after_a_lull():
    window = FlowWindow(256, 4096, now=0.0)
    window.start(0.0)
    window.computed(16, 0.0)
    window.computed(16, 0.01)        # then nothing for most of a second: an idle service
    now = _computed_at_1024_a_second(window)
    window.resize(now, 0.125)
    assert window.start_pace == 1024 and window.size == 768


def test_near_the_api_the_pace_of_the_first_results_leaves_the_minimum():
    window = FlowWindow(256, 4096, now=0.0)
    window.start(1.0)
    now = _computed_at_1024_a_second(window)
    assert window.resize(now, 0.002) is None and window.size == 256


def test_the_start_keeps_its_window_until_the_rate_stops_growing_then_follows_the_rate():
    window = FlowWindow(256, 4096, now=1.0)
    window.start(1.0)
    now = _computed_at_1024_a_second(window)
    window.resize(now, 0.125)
    window.resize(now + 0.25, 0.125)                 # a sample with nothing settled yet
    assert window.size == 768 and window.starting
    now += 0.25
    for _ in range(3):                               # 500 a second: the best, then twice no better
        window.settled(125)
        now += 0.25
        window.resize(now, 0.125)
    assert not window.starting
    assert window.size == 256 + 500 * ROUND_TRIPS_IN_FLIGHT // 8     # 506: the rate's, not the start's
    window.computed(10_000, now + 0.01)              # computed after the start no longer counts
    window.resize(now + 0.02, 0.125)
    assert window.size == 506


def test_near_the_api_a_growing_rate_does_not_grow_the_window():
    window = FlowWindow(256, 4096, now=0.0)
    _settle_for(window, 1000, 0.0, 1, round_trip=0.002)
    assert window.size == 256 + 8

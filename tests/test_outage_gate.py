"""The outage gate: park failed PATCHes, one probe per backoff period, everything back at the first answer."""

from aitp.transport.outage_gate import OutageGate


def test_one_probe_per_period_and_everything_back_at_the_first_answer():
    waits = []
    gate = OutageGate(lambda failures, retry_after: waits.append((failures, retry_after)) or 0.5 * failures)
    assert not gate.down
    assert gate.failed("a", "item a", None) == ("item a", 0.5)       # the first failure schedules a probe
    assert gate.failed("b", "item b", 3.0) is None                   # the probe is already scheduled
    gate.park("c", "item c")                                          # new work waits with the rest
    assert gate.down and list(gate.parked) == ["a", "b", "c"]
    gate.probing("a")                                                 # the probe goes out
    assert gate.failed("a", "item a", None) == ("item b", 1.0)       # the probe failed: the next one waits longer
    assert waits == [(1, None), (2, None)]     # probes counted, not parked PATCHes
    assert gate.answered("b") == ["item c", "item a"]                 # all but the one that got through
    assert not gate.down and not gate.parked


def test_many_patches_failing_at_once_count_as_one_failure():
    """Issue 28: 45 PATCHes in flight when the API went down made the next probe wait 54 s."""
    waits = []
    gate = OutageGate(lambda failures, retry_after: waits.append(failures) or float(failures))
    assert gate.failed("p0", "p0", None) == ("p0", 1.0)
    for number in range(1, 45):
        assert gate.failed(f"p{number}", f"p{number}", None) is None
    gate.probing("p0")
    assert gate.failed("p0", "p0", None) == ("p1", 2.0)
    assert waits == [1, 2]

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
    assert gate.failed("a", "item a", None) == ("item b", 1.5)       # failed again: the next probe, longer
    assert waits == [(1, None), (3, None)]
    assert gate.answered("b") == ["item c", "item a"]                 # all but the one that got through
    assert not gate.down and not gate.parked

"""Restarts lose nothing: every unhandled message reaches the successor in order, asks waiting in a
dead stage's inbox are answered with an error, restarts back off, and a message that makes a stage
fail twice is quarantined."""

from __future__ import annotations

import threading

import pykka
import pytest

from actors.messages import TakenTask, TasksRejected, TasksTaken
from actors.directory import StageDirectory
from actors.stage import PipelineContext, Stage
from actors.supervisor import ChildSpec, Supervisor
from aitp.config import ChildPolicy, Settings
from aitp.tasks import EmbeddingJob
from aitp.timers import Scheduler
from conftest import wait_until


class Boom:
    """A message that fails the stage the first time it is handled (a new object each time, as a
    real message is: a quarantine goes by the message, not by its kind)."""

    def __eq__(self, other) -> bool:
        return isinstance(other, Boom)

    def __repr__(self) -> str:
        return "boom"


class Recorder(Stage):
    """Records what it handles; blocks on "wait" until the test opens `gate`; raises on a Boom once
    (on every TasksTaken with `poison`)."""

    name = "recorder"
    handled: list = []
    gate = threading.Event()
    boomed: list = []
    poison = False

    def receive(self, message) -> None:
        if message == "wait":
            assert self.gate.wait(30)
        if isinstance(message, Boom) and not self.boomed:
            self.boomed.append(message)
            raise RuntimeError("injected fault")
        if isinstance(message, TasksTaken) and Recorder.poison:
            raise RuntimeError("poisoned by its tasks")
        self.handled.append(message)

    def status(self) -> str:
        return "fine"


class Sink(Stage):
    """Stands in for the Reporter: keeps what it is told."""

    name = "reporter"
    told: list = []

    def receive(self, message) -> None:
        self.told.append(message)


@pytest.fixture
def supervised():
    Recorder.handled, Recorder.boomed, Recorder.gate, Recorder.poison = [], [], threading.Event(), False
    Sink.told = []
    scheduler, started = Scheduler(), []
    delays: list[float] = []

    def start(policy: ChildPolicy) -> tuple[StageDirectory, pykka.ActorRef, list[float]]:
        directory = StageDirectory()
        ctx = PipelineContext(settings=Settings(), directory=directory, scheduler=scheduler)

        def schedule(delay, callback):
            delays.append(delay)
            scheduler.call_later(delay, callback)
        specs = [ChildSpec("reporter", lambda work: Sink.start(ctx, work), ChildPolicy()),
                 ChildSpec("recorder", lambda work: Recorder.start(ctx, work), policy)]
        supervisor = Supervisor.start(directory, specs, {}, on_fatal=lambda reason: None, schedule=schedule)
        ctx.supervisor = supervisor
        started.append(supervisor)
        wait_until(lambda: directory.ref("recorder") is not None, message="the stage to start")
        return directory, supervisor, delays

    yield start
    for supervisor in started:
        supervisor.proxy().stop_children().get(timeout=30)
        supervisor.stop()
    scheduler.stop()


def test_a_restart_hands_over_every_unhandled_message_in_order_and_fails_waiting_asks(supervised):
    directory, _, _ = supervised(ChildPolicy(backoff_seconds=0.2))
    directory.tell("recorder", "wait")            # holds the stage while the rest piles up in its inbox
    directory.tell("recorder", Boom())
    asked = directory.ref("recorder").proxy().status()     # a /health scrape waiting in the inbox
    directory.tell("recorder", "a")
    directory.tell("recorder", "b")
    Recorder.gate.set()
    wait_until(lambda: directory.ref("recorder") is None or Recorder.boomed, message="the failure")
    directory.tell("recorder", "c")               # newer than a and b: waits in the directory, or goes after them
    wait_until(lambda: len(Recorder.handled) == 5, message="every message handled")
    assert Recorder.handled == ["wait", Boom(), "a", "b", "c"]
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=10)


def test_restarts_back_off_exponentially_up_to_the_ceiling(supervised):
    directory, supervisor, delays = supervised(ChildPolicy(intensity=10, backoff_seconds=0.01,
                                                           backoff_max_seconds=0.04))
    for round_number in range(4):
        Recorder.boomed.clear()
        directory.tell("recorder", Boom())
        wait_until(lambda: Recorder.handled.count(Boom()) == round_number + 1,
                   message="the boom handled by the successor")
    assert supervisor.proxy().restarts().get(timeout=10)["recorder"] == 4
    restart_delays = [d for d in delays if d < 0.5]      # the supervisor's watch ticks every 0.5 s
    ceilings = [0.01, 0.02, 0.04, 0.04]
    assert len(restart_delays) == 4
    assert all(ceiling / 2 <= delay <= ceiling for delay, ceiling in zip(restart_delays, ceilings))


def test_a_message_that_fails_a_stage_twice_is_quarantined_and_its_tasks_failed(supervised):
    directory, supervisor, _ = supervised(ChildPolicy(backoff_seconds=0.01))
    Recorder.poison = True
    jobs = [EmbeddingJob(task_id=f"{i:024x}", model="m", text="t") for i in range(3)]
    directory.tell("recorder", TasksTaken([TakenTask(job=job, raw=b"{}") for job in jobs]))
    wait_until(lambda: any(isinstance(m, TasksRejected) for m in Sink.told), message="the quarantine")
    rejected = next(m for m in Sink.told if isinstance(m, TasksRejected))
    assert [r.task_id for r in rejected.rejections] == [job.task_id for job in jobs]
    assert all("quarantined" in r.reason and "recorder" in r.reason for r in rejected.rejections)
    directory.tell("recorder", "after")           # the stage carries on
    wait_until(lambda: Recorder.handled == ["after"], message="the stage to carry on")
    assert supervisor.proxy().restarts().get(timeout=10)["recorder"] == 2


class Stopping(Stage):
    stopped: list = []

    def on_stop(self) -> None:
        super().on_stop()
        Stopping.stopped.append(self.name)


def test_stages_stop_in_the_reverse_of_their_start_but_the_ones_named_last(tmp_path):
    """Issue 29: the Poller, which renews the leases, stopped first while provider calls still ran."""
    Stopping.stopped = []
    scheduler, directory = Scheduler(), StageDirectory()
    ctx = PipelineContext(settings=Settings(), directory=directory, scheduler=scheduler)
    names = ["authenticator", "reporter", "provider_workers", "dispatcher", "poller"]
    stages = {name: type(name, (Stopping,), {"name": name}) for name in names}
    specs = [ChildSpec(name, lambda work, stage=stages[name]: stage.start(ctx, work), ChildPolicy()) for name in names]
    supervisor = Supervisor.start(directory, specs, {}, on_fatal=lambda reason: None, schedule=scheduler.call_later,
                                  stop_last=("poller",))
    try:
        wait_until(lambda: all(directory.ref(name) for name in names), message="every stage started")
        supervisor.proxy().stop_children().get(timeout=30)
    finally:
        supervisor.stop()
        scheduler.stop()
    assert Stopping.stopped == ["dispatcher", "provider_workers", "reporter", "poller", "authenticator"]

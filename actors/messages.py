"""The messages the stages exchange: small frozen structs named for what happened.

A stage's own timers (the Poller's PollDue and LeaseTick, the Dispatcher's LingerOver, the
RateLimiter's ClaimRetryDue, LlmWorkers' ChatRetryDue, the Reporter's ReportDue, the
Authenticator's RefreshDue) are defined beside the stage, not here. A message that carries tasks'
work says which (`carried()`): they fail with it if it is quarantined (actors/supervisor.py).

One embedding batch of 15 tasks, from the poll to its PATCHes, counted by type over a drain of
3,000 tasks with the mock provider on loopback (tests/test_pipeline.py
`test_messages_per_embedding_batch`; a stage's own timers count, a poll's list serves many batches):
- per batch: EmbedBatch, CallFinished and BatchEmbedded (1 each); PatchesAnswered (0.9: a chunk of
  results), ClaimsAnswered (0.7: a chunk of claims); TasksClaimed, TasksSettled, ProviderHungry,
  PollDue, TasksTaken, TasksComputed (the slow start only), LingerOver, ListFetched (a fraction each);
- before issue 27: 7.5 to 7.6 a batch, with a core kept busy or not: every chunk's answer caused
  one TasksClaimed or TasksSettled of its own, every finished call one ProviderHungry.
- now: 5.6 to 5.9 (6.4 to 6.5 with a core kept busy; 7 to 8 in a drain of 300, all slow start).
  What several waiting messages cause goes out as one once the inbox is empty (Stage.tell_soon,
  when_idle): TasksClaimed, the Reporter's sends, TasksSettled, TasksComputed, ProviderHungry.
  Between that and fewer: one answer per chunk of PATCHes (aitp/transport/chunking.py) and a
  CallFinished beside each BatchEmbedded (the slot a call frees is the provider stage's to give).
"""

from __future__ import annotations

from typing import Any

import msgspec

from aitp.errors import ProviderError
from aitp.intake.reader import Rejection, TakenTask
from aitp.tasks import ChatJob, EmbeddingJob
from aitp.transport.task_api import PatchResult
from aitp.vectors.jobs import TaskVector

__all__ = ["BatchEmbedded", "CallFailed", "CallFinished", "ChatTaskDone", "ClaimsAnswered", "EmbedBatch",
           "ListFetched", "PatchesAnswered", "ProviderHungry", "Rejection", "ResultsAdopted", "RunChatTasks",
           "SlowStartChanged", "StageFailed", "TakenTask", "TasksClaimed", "TasksComputed", "TasksRejected",
           "TasksReleased", "TasksSettled", "TasksTaken", "TokenArrived", "computed_in_all", "released_to_pending",
           "tasks_carried"]


# --- the flow of a task ---
class ListFetched(msgspec.Struct, frozen=True):
    """Poller's fetching thread to the Poller: a pending list (or why there is none)."""

    poll_number: int
    pending: Any = None          # aitp.contract.PendingList
    error: Any = None            # TaskApiError or ContractError
    fetched_at: float = 0.0
    seconds: float = 0.0


class TasksTaken(msgspec.Struct, frozen=True):
    """Poller to RateLimiter: tasks to admit and claim."""

    tasks: list[TakenTask]

    def carried(self) -> list[str]:
        return [taken.job.task_id for taken in self.tasks]


class TasksRejected(msgspec.Struct, frozen=True):
    """To Reporter: tasks to report `failed`, each with its reason."""

    rejections: list[Rejection]

    def carried(self) -> list[str]:
        return [rejection.task_id for rejection in self.rejections]


class TasksReleased(msgspec.Struct, frozen=True):
    """To Reporter: no provider could take these tasks now; put them back to `pending` (through the
    outbox, so the release itself survives a crash) for a later poll, rather than fail them."""

    task_ids: list[str]
    reason: str
    batch_id: str = ""

    def carried(self) -> list[str]:
        return list(self.task_ids)


class ClaimsAnswered(msgspec.Struct, frozen=True):
    """A chunk of claim PATCHes came back, in order (to RateLimiter, from its claim threads)."""

    answers: list[tuple[TakenTask, PatchResult]]
    attempt: int

    def carried(self) -> list[str]:
        return [taken.job.task_id for taken, _ in self.answers]


class TasksClaimed(msgspec.Struct, frozen=True):
    """RateLimiter to Dispatcher: admitted, journaled and claimed; ready to compute."""

    jobs: list[EmbeddingJob | ChatJob]

    def carried(self) -> list[str]:
        return [job.task_id for job in self.jobs]


class RunChatTasks(msgspec.Struct, frozen=True):
    """Dispatcher to LlmWorkers: LLM tasks to run, each on its own (not batched)."""

    jobs: list[ChatJob]

    def carried(self) -> list[str]:
        return [job.task_id for job in self.jobs]


class ChatTaskDone(msgspec.Struct, frozen=True):
    """An LlmWorkers thread to its stage: a task's run ended (its slot is free); with `retry_in`,
    it is to run again (`job`, as try `attempt`) after that many seconds, an outage's backoff."""

    task_id: str
    retry_in: float | None = None
    job: Any = None
    attempt: int = 0

    def carried(self) -> list[str]:
        return [self.task_id] if self.retry_in is not None else []


class ProviderHungry(msgspec.Struct, frozen=True):
    """ProviderWorkers to Dispatcher: a call slot is free and no batch waits for it."""


class EmbedBatch(msgspec.Struct, frozen=True):
    """Dispatcher to ProviderWorkers: one provider call's worth of jobs of one model.

    `route` names the providers to try in order (None: route it on arrival, as after a backoff),
    `step` the one whose turn it is, and `failures` what the providers tried in this attempt said.
    """

    batch_id: str
    model: str
    jobs: list[EmbeddingJob]
    attempt: int = 1
    route: list[str] | None = None
    step: int = 0
    failures: list[str] = []

    @property
    def provider(self) -> str | None:
        return self.route[self.step] if self.route and self.step < len(self.route) else None

    def carried(self) -> list[str]:
        return [job.task_id for job in self.jobs]


class CallFinished(msgspec.Struct, frozen=True):
    """A provider thread to ProviderWorkers: a provider call returned; its slot is free."""

    batch_id: str
    provider: str = ""
    model: str = ""
    tokens: int = 0


class CallFailed(msgspec.Struct, frozen=True):
    """A provider thread to ProviderWorkers: a batch's call (or its vector work) failed."""

    batch: EmbedBatch
    error: ProviderError | Exception

    def carried(self) -> list[str]:
        return self.batch.carried()


class BatchEmbedded(msgspec.Struct, frozen=True):
    """To Reporter: finished PATCH bodies (or per-task errors) for one batch."""

    batch_id: str
    model: str
    results: list[TaskVector]
    paid: bool = True            # made by a provider that charges for it: journaled before it is sent

    def carried(self) -> list[str]:
        return [result.task_id for result in self.results]


class PatchesAnswered(msgspec.Struct, frozen=True):
    """A chunk of result PATCHes came back, in order (to Reporter, from its threads)."""

    answers: list[tuple[str, PatchResult]]
    attempt: int

    def carried(self) -> list[str]:
        return [task_id for task_id, _ in self.answers]


class TasksSettled(msgspec.Struct, frozen=True):
    """To Poller: these tasks left the pipeline (reported, released or gone); their credit is free."""

    task_ids: list[str]
    released: bool = False       # pending again on the API (another service may take them at once)


def released_to_pending(task_ids: list[str]) -> TasksSettled:
    """TasksSettled for tasks put back to pending (Stage.tell_soon)."""
    return TasksSettled(task_ids, released=True)


class TasksComputed(msgspec.Struct, frozen=True):
    """Reporter to Poller: a provider computed this many tasks' results (their credit is still held
    until the API takes them). The earliest sign of the pace, which the window's slow start follows;
    sent only while it lasts (SlowStartChanged)."""

    count: int


def computed_in_all(counts: list[int]) -> TasksComputed:
    """The TasksComputed of several batches (Stage.tell_soon)."""
    return TasksComputed(sum(counts))


class SlowStartChanged(msgspec.Struct, frozen=True):
    """Poller to Reporter: the window's slow start began (a new Poller) or ended; TasksComputed is
    wanted only while it lasts."""

    starting: bool


class ResultsAdopted(msgspec.Struct, frozen=True):
    """Poller to Reporter: paid results of tasks taken over from a service that died, sent as they are."""

    entries: list


# --- supervision ---
class StageFailed(msgspec.Struct, frozen=True):
    """A stage to the Supervisor: it is stopping on an unhandled error, handing back held work."""

    stage: str
    error: str
    orphans: list = []       # state the stage held (queued jobs, ids in flight)
    undelivered: list = []   # messages it had not handled, in order (the one it failed on first)
    urn: str = ""            # the failing instance: it may still look alive while its thread ends
    failed_on: object = None  # the message it was handling when it failed (None: in start-up)


class TokenArrived(msgspec.Struct, frozen=True):
    """Authenticator to Poller: a token is held again; polling that waited for one may go on."""


def tasks_carried(message: object) -> list[str]:
    """The ids of the tasks whose work `message` carries: what fails with it if it is quarantined
    (actors/supervisor.py). Messages that carry no task's work give []."""
    carried = getattr(message, "carried", None)
    return carried() if callable(carried) else []

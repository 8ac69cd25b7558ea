"""The messages the stages exchange: small frozen structs named for what happened."""

from __future__ import annotations

from typing import Any

import msgspec

from aitp.errors import ProviderError
from aitp.tasks import ChatJob, EmbeddingJob
from aitp.transport.task_api import PatchResult
from aitp.vectors.jobs import TaskVector


class TakenTask(msgspec.Struct, frozen=True):
    """A task the poller took: its job and the exact JSON the journal keeps for a resume."""

    job: EmbeddingJob | ChatJob
    raw: bytes


class Rejection(msgspec.Struct, frozen=True):
    task_id: str
    reason: str
    batch_id: str = ""


# --- the flow of a task ---
class Poll(msgspec.Struct, frozen=True):
    """Poller to itself: fetch the pending list now."""


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


class TasksRejected(msgspec.Struct, frozen=True):
    """To Reporter: tasks to report `failed`, each with its reason."""

    rejections: list[Rejection]


class TasksReleased(msgspec.Struct, frozen=True):
    """To Reporter: no provider could take these tasks now; put them back to `pending` (through the
    outbox, so the release itself survives a crash) for a later poll, rather than fail them."""

    task_ids: list[str]
    reason: str
    batch_id: str = ""


class ClaimsAnswered(msgspec.Struct, frozen=True):
    """A chunk of claim PATCHes came back, in order (to RateLimiter, from its claim threads)."""

    answers: list[tuple[TakenTask, PatchResult]]
    attempt: int


class RetryClaim(msgspec.Struct, frozen=True):
    task: TakenTask
    attempt: int


class TasksClaimed(msgspec.Struct, frozen=True):
    """RateLimiter to Dispatcher: admitted, journaled and claimed; ready to embed."""

    jobs: list[EmbeddingJob | ChatJob]


class RunChatTasks(msgspec.Struct, frozen=True):
    """Dispatcher to LlmWorkers: LLM tasks to run, each on its own (not batched)."""

    jobs: list[ChatJob]


class ChatTaskRetry(msgspec.Struct, frozen=True):
    """LlmWorkers to itself: run this task again after an outage's backoff."""

    job: ChatJob
    attempt: int


class ChatTaskDone(msgspec.Struct, frozen=True):
    """LlmWorkers to itself: a task's run ended (its slot is free)."""

    task_id: str


class FlushBatches(msgspec.Struct, frozen=True):
    """Dispatcher to itself: the linger is over; send partial batches if a provider would idle."""


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


class CallFinished(msgspec.Struct, frozen=True):
    """ProviderWorkers to itself: a provider call returned; its slot is free."""

    batch_id: str
    provider: str = ""
    model: str = ""
    tokens: int = 0


class CallFailed(msgspec.Struct, frozen=True):
    batch: EmbedBatch
    error: ProviderError | Exception


class BatchEmbedded(msgspec.Struct, frozen=True):
    """To Reporter: finished PATCH bodies (or per-task errors) for one batch."""

    batch_id: str
    model: str
    results: list[TaskVector]
    paid: bool = True            # made by a provider that charges for it: journaled before it is sent


class ReportResults(msgspec.Struct, frozen=True):
    """Reporter to itself: (re)send these journaled outbox entries."""

    task_ids: list[str]
    attempt: int = 1


class PatchesAnswered(msgspec.Struct, frozen=True):
    """A chunk of result PATCHes came back, in order (to Reporter, from its threads)."""

    answers: list[tuple[str, PatchResult]]
    attempt: int


class TasksSettled(msgspec.Struct, frozen=True):
    """To Poller: these tasks left the pipeline (reported, released or gone); their credit is free."""

    task_ids: list[str]
    released: bool = False       # pending again on the API (another service may take them at once)


class TasksComputed(msgspec.Struct, frozen=True):
    """Reporter to Poller: a provider computed this many tasks' results (their credit is still held
    until the API takes them). The earliest sign of the pace, which the window's slow start follows;
    sent only while it lasts (PipelineContext.window_starting)."""

    count: int


class KeepLeases(msgspec.Struct, frozen=True):
    """Poller to itself, every third of a lease: renew the leases held in Redis, take over run-out ones.
    `chain` names the Poller instance that scheduled it: after a restart, the dead instance's tick
    reaches the new one, which drops it rather than run two chains of ticks."""

    chain: int = 0


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


class RefreshToken(msgspec.Struct, frozen=True):
    """Authenticator to itself: fetch a new token; stale when a newer token came meanwhile."""

    generation: int


def tasks_carried(message: object) -> list[str]:
    """The ids of the tasks whose work `message` carries: what fails with it if it is quarantined
    (actors/supervisor.py). Messages that carry no task's work give []."""
    if isinstance(message, TasksTaken):
        return [taken.job.task_id for taken in message.tasks]
    if isinstance(message, RetryClaim):
        return [message.task.job.task_id]
    if isinstance(message, ChatTaskRetry):
        return [message.job.task_id]
    if isinstance(message, ClaimsAnswered):
        return [taken.job.task_id for taken, _ in message.answers]
    if isinstance(message, (TasksClaimed, EmbedBatch, RunChatTasks)):
        return [job.task_id for job in message.jobs]
    if isinstance(message, CallFailed):
        return [job.task_id for job in message.batch.jobs]
    if isinstance(message, BatchEmbedded):
        return [result.task_id for result in message.results]
    if isinstance(message, TasksRejected):
        return [rejection.task_id for rejection in message.rejections]
    if isinstance(message, (TasksReleased, ReportResults)):
        return list(message.task_ids)
    if isinstance(message, PatchesAnswered):
        return [task_id for task_id, _ in message.answers]
    return []

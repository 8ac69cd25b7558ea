"""What the Poller decides, as plain objects: how many tasks may be in flight (`window`), whether a
take may happen now and how large (`admission`), which pending list to take from and where
(`cursor`), and what each entry taken becomes (`reader`)."""

from typing import TYPE_CHECKING, NamedTuple

from aitp.intake.admission import Admission, Verdict
from aitp.intake.cursor import HeldList, PendingCursor, fetch_list
from aitp.intake.reader import Rejection, TakenTask, TaskReader
from aitp.intake.window import FlowWindow

__all__ = ["Admission", "FlowWindow", "HeldList", "Intake", "PendingCursor", "Rejection", "TakenTask", "TaskReader",
           "Verdict", "build_intake", "fetch_list"]


if TYPE_CHECKING:
    from aitp.coordination.lease_keeper import LeaseKeeper


class Intake(NamedTuple):
    """The Poller's plain objects, built from the settings."""

    window: FlowWindow
    cursor: PendingCursor
    reader: TaskReader
    admission: Admission
    keeper: "LeaseKeeper | None"


def build_intake(settings, *, handlers, router, chat_router, rate_limits, credentials, leases=None,
                 wikidata=None, in_flight=(), now: float) -> Intake:
    from aitp.coordination.lease_keeper import LeaseKeeper   # here: it reads aitp.intake.reader itself

    processing, polling = settings.processing, settings.polling
    lease_seconds = settings.coordination.lease_seconds
    admission = Admission(credentials=credentials, needs_token=settings.uses_oauth2, leases=leases, router=router,
                          rate_limits=rate_limits, chat_router=chat_router, interval_seconds=polling.interval_seconds,
                          coordination_seconds=lease_seconds / 3)
    # Tasks in flight at most: grows with the API's distance (aitp/intake/window.py).
    return Intake(FlowWindow(processing.min_in_flight, processing.max_in_flight, now),
                  PendingCursor(handlers, polling.list_reuse_seconds, list(in_flight)),
                  TaskReader(handlers, router, chat_router, wikidata,
                             settings.wikidata.hold_seconds if settings.wikidata.when_down == "unenriched" else None),
                  admission,
                  LeaseKeeper(leases, handlers, lease_seconds, settings.models.dimensions) if leases is not None
                  else None)

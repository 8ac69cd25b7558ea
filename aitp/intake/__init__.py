"""What the Poller decides, as plain objects: how many tasks may be in flight (`window`), whether a
take may happen now and how large (`admission`), which pending list to take from and where
(`cursor`), and what each entry taken becomes (`reader`)."""

from aitp.intake.admission import Admission, Verdict
from aitp.intake.cursor import HeldList, PendingCursor, fetch_list
from aitp.intake.reader import Rejection, TakenTask, TaskReader
from aitp.intake.window import FlowWindow

__all__ = ["Admission", "FlowWindow", "HeldList", "PendingCursor", "Rejection", "TakenTask", "TaskReader",
           "Verdict", "fetch_list"]

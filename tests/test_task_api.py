import time

import pytest

from aitp.transport.chunking import chunk_sizes
from aitp.contract import decode_pending
from aitp.errors import ContractError, TaskApiError
from aitp.sandbox.seed import generated_tasks, object_id
from aitp.transport.task_api import PatchOutcome, TaskApiClient

IN_PROGRESS = b'{"state":"in_progress"}'


class CountingCredentials:
    def __init__(self, sandbox):
        self.sandbox, self.token, self.renewals = sandbox, None, 0
        self.accepted_tokens = set()

    def accepted(self, token):
        self.accepted_tokens.add(token)

    def current(self):
        return self.token

    def renew(self, stale):
        self.renewals += 1
        self.token, _ = self.sandbox.issue_token()
        return self.token


def test_pending_list_ignores_limit_and_returns_everything(sandbox):
    server = sandbox(generated_tasks(30))
    client = TaskApiClient(server.url, timeout=5)
    assert len(decode_pending(client.fetch_pending())) == 30


def test_patch_outcomes_follow_the_contract(sandbox):
    server = sandbox(generated_tasks(2))
    client = TaskApiClient(server.url, timeout=5)
    assert client.patch(object_id(0), IN_PROGRESS).outcome is PatchOutcome.DONE
    assert server.state_of(object_id(0)) == "in_progress"
    assert client.patch(object_id(99), IN_PROGRESS).outcome is PatchOutcome.GONE
    assert client.patch(object_id(1), b'{"state":"done"}').outcome is PatchOutcome.INVALID
    rejected = client.patch(object_id(1), b'{"state":"succeeded","result":{"x":1}}', is_success=True)
    assert rejected.outcome is PatchOutcome.REJECTED_AFTER_SUCCESS
    assert server.state_of(object_id(1)) == "succeeded"


def test_redirect_for_unknown_id_is_never_followed(scripted):
    def script(peer, number):             # the NestJS default for an unknown id: 302 to /404
        while peer.read_request() is not None:
            peer.send(b"HTTP/1.1 302 Found\r\nLocation: /404\r\nContent-Length: 0\r\n\r\n")
    server = scripted(script)
    result = TaskApiClient(server.url, timeout=5).patch(object_id(42), IN_PROGRESS)
    assert (result.outcome, result.status) == (PatchOutcome.GONE, 302)
    assert [request.split(b" ")[:2] for request in server.requests] == \
        [[b"PATCH", f"/api/ai-tasks/{object_id(42)}".encode()]]


@pytest.mark.parametrize("task_id", ["../../x", "68b89107952364b0aad89c1d%2F", "68b89107952364b0aad89c1dA", ""])
def test_unusable_ids_never_reach_a_url(sandbox, task_id):
    server = sandbox([])
    client = TaskApiClient(server.url, timeout=5)
    with pytest.raises(ContractError):
        client.patch(task_id, IN_PROGRESS)
    assert server.request_counts() == {}


def test_403_renews_the_token_once_and_retries(sandbox):
    server = sandbox(generated_tasks(1), client_id="c", client_secret="s")
    credentials = CountingCredentials(server)
    client = TaskApiClient(server.url, timeout=5, credentials=credentials)
    assert client.patch(object_id(0), IN_PROGRESS).outcome is PatchOutcome.DONE
    assert credentials.renewals == 1
    assert credentials.accepted_tokens == {credentials.token}    # told which token the API took
    server.revoke_tokens()
    assert len(decode_pending(client.fetch_pending())) == 0
    assert credentials.renewals == 2


def test_a_refused_chunk_renews_the_token_once_for_all_of_it(sandbox):
    server = sandbox(generated_tasks(3), client_id="c", client_secret="s")
    credentials = CountingCredentials(server)
    client = TaskApiClient(server.url, timeout=5, credentials=credentials)
    results = client.patch_in_order([(object_id(i), IN_PROGRESS, False) for i in range(3)])
    assert [(r.outcome, r.status) for r in results] == [(PatchOutcome.DONE, 200)] * 3
    assert credentials.renewals == 1 and credentials.accepted_tokens == {credentials.token}
    assert [server.state_of(object_id(i)) for i in range(3)] == ["in_progress"] * 3


def test_refused_even_after_renewal_is_retryable_not_fatal(sandbox):
    server = sandbox(generated_tasks(1), client_id="c", client_secret="s")

    class Useless:
        def current(self):
            return "bad"

        def renew(self, stale):
            return "still-bad"

        def accepted(self, token):
            raise AssertionError("a refused token is never reported as accepted")

    result = TaskApiClient(server.url, timeout=5, credentials=Useless()).patch(object_id(0), IN_PROGRESS)
    assert (result.outcome, result.status) == (PatchOutcome.RETRY, 403)
    client = TaskApiClient(server.url, timeout=5, credentials=Useless())
    results = client.patch_in_order([(object_id(0), IN_PROGRESS, False)] * 2)
    assert [(r.outcome, r.status) for r in results] == [(PatchOutcome.RETRY, 403)] * 2
    with pytest.raises(TaskApiError) as caught:
        TaskApiClient(server.url, timeout=5, credentials=Useless()).fetch_pending()
    assert caught.value.status == 403


def test_server_errors_and_throttling_are_retryable_with_retry_after(sandbox):
    server = sandbox(generated_tasks(1))
    client = TaskApiClient(server.url, timeout=5)
    server.fail_next.extend([503, 429])
    assert client.patch(object_id(0), IN_PROGRESS).outcome is PatchOutcome.RETRY
    assert client.patch(object_id(0), IN_PROGRESS).outcome is PatchOutcome.RETRY
    assert client.patch(object_id(0), IN_PROGRESS).outcome is PatchOutcome.DONE


def test_unreachable_api_is_a_task_api_error():
    client = TaskApiClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(TaskApiError, match="GET /api/ai-tasks/pending failed"):
        client.fetch_pending()
    assert client.patch(object_id(0), IN_PROGRESS).outcome is PatchOutcome.RETRY
    results = client.patch_in_order([(object_id(i), IN_PROGRESS, False) for i in range(3)])
    assert [r.outcome for r in results] == [PatchOutcome.RETRY] * 3
    assert "ConnectionError" in results[0].detail and "no answer" in results[2].detail


def test_observer_sees_every_request(sandbox):
    server = sandbox(generated_tasks(1))
    seen = []
    client = TaskApiClient(server.url, timeout=5, observer=lambda *args: seen.append(args[:3]))
    client.fetch_pending()
    client.patch(object_id(0), IN_PROGRESS)
    assert seen == [("/api/ai-tasks/pending", "GET", "200"), ("/api/ai-tasks/:id", "PATCH", "200")]


@pytest.mark.parametrize("pipelining", [True, False])
def test_patches_in_order_each_get_their_own_answer(sandbox, pipelining):
    server = sandbox(generated_tasks(4))
    client = TaskApiClient(server.url, timeout=5, pipelining=pipelining)
    patches = [(object_id(i), IN_PROGRESS, False) for i in range(3)] + [(object_id(99), IN_PROGRESS, False)]
    results = client.patch_in_order(patches)
    assert [(r.outcome, r.status) for r in results] == [(PatchOutcome.DONE, 200)] * 3 + [(PatchOutcome.GONE, 404)]
    assert [server.state_of(object_id(i)) for i in range(4)] == ["in_progress"] * 3 + ["pending"]
    server.start_outage("503")
    assert {(r.outcome, r.status) for r in client.patch_in_order(patches[:2])} == {(PatchOutcome.RETRY, 503)}


def _drops_what_was_pipelined_to_it(peer, number):
    """A server (or proxy) that mishandles pipelining: on the first connection, where the client
    pipelines, it answers the first request and drops the others, however they arrive; later
    connections get an answer per request."""
    answered = 0
    while peer.read_request() is not None:
        if number > 1 or not answered:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            answered += 1


def test_a_server_that_drops_pipelined_requests_costs_one_timeout_then_none(scripted):
    # The group times out once, after its first answer; the client then sends one request at a time.
    server = scripted(_drops_what_was_pipelined_to_it)
    client = TaskApiClient(server.url, timeout=0.5)
    patches = [(object_id(i), IN_PROGRESS, False) for i in range(4)]
    results = client.patch_in_order(patches)
    assert results[0].outcome is PatchOutcome.DONE
    assert [r.outcome for r in results[1:]] == [PatchOutcome.RETRY] * 3
    assert "Timeout" in results[1].detail and all("no answer" in r.detail for r in results[2:])
    assert client.pipelining is False
    # One at a time from now on: each connection answers its one request.
    assert [r.outcome for r in client.patch_in_order(patches[1:])] == [PatchOutcome.DONE] * 3


def _answers_each_request_after(seconds):
    def script(peer, number):
        while peer.read_request() is not None:
            time.sleep(seconds)          # the API's own pace: a database behind it, say
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    return script


def test_the_pace_of_patches_is_measured_for_sizing_chunks(scripted):
    # The stages size their chunks of PATCHes by it (aitp/transport/chunking.py): a slow API gets
    # a large take's claims spread over every thread, not queued on one connection.
    server = scripted(_answers_each_request_after(0.03))
    client = TaskApiClient(server.url, timeout=5)
    assert client.patch_seconds is None
    results = client.patch_in_order([(object_id(i), IN_PROGRESS, False) for i in range(3)])
    assert [r.outcome for r in results] == [PatchOutcome.DONE] * 3
    assert client.patch_seconds >= 0.03
    assert chunk_sizes(256, 8, client.pipelining, client.patch_seconds) == [32] * 8


def test_the_round_trip_is_the_shortest_recent_group(scripted):
    # The Poller sizes its window by it (aitp/intake/window.py): a group of n PATCHes takes at
    # least one round trip, so the shortest recent group is the closest to one.
    server = scripted(_answers_each_request_after(0.03))
    per_request = []      # the observer is told each group's time divided by its size
    client = TaskApiClient(server.url, timeout=5, observer=lambda endpoint, method, status, seconds:
                           per_request.append(seconds))
    assert client.round_trip_seconds is None
    client.patch_in_order([(object_id(9), IN_PROGRESS, False)])
    client.patch_in_order([(object_id(i), IN_PROGRESS, False) for i in range(3)])
    single, three = per_request[0], per_request[1] * 3
    assert three >= 0.09 and single >= 0.03            # answered 30 ms apart
    assert client.round_trip_seconds == pytest.approx(min(single, three))


class _TwoTokens:
    def __init__(self):
        self.token = "first"

    def current(self):
        return self.token

    def renew(self, stale):
        self.token = "second"
        return self.token

    def accepted(self, token):
        pass


def test_answers_final_before_the_group_ends_are_told_early_up_to_a_refused_token(scripted):
    # The stages act on a group's first answers while a busy API still serves the rest
    # (actors/patch_sender.py); a 403 is tried again with a new token, so nothing after it is final.
    import threading
    from aitp.transport.http1 import EARLY_ANSWERS
    released, waited = threading.Event(), []
    count = EARLY_ANSWERS + 2
    done = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    def script(peer, number):
        if number == 1:
            for _ in range(count):
                peer.read_request()
            peer.send(done * (count - 2))
            waited.append(released.wait(10))
            peer.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n" + done)
        while peer.read_request() is not None:
            peer.send(done)

    server = scripted(script)
    client = TaskApiClient(server.url, timeout=15, credentials=_TwoTokens())
    told = []

    def early(count, results):
        told.append((count, [r.outcome for r in results[:count]]))
        released.set()

    results = client.patch_in_order([(object_id(i), IN_PROGRESS, False) for i in range(count)], early=early)
    assert [(r.outcome, r.status) for r in results] == [(PatchOutcome.DONE, 200)] * count
    assert waited == [True]
    assert told == [(count - 2, [PatchOutcome.DONE] * (count - 2))]      # nothing from the 403 on

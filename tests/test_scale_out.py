"""Several `aitp run` on one task API, coordinated through a real redis-server (README "Scaling
out"): no task embedded twice, a service killed with -9 has its tasks finished by another, and
Redis going away or restarting costs time, never a task."""

import json
import signal
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from aitp.sandbox.seed import generated_tasks
from conftest import monitoring_port, wait_until

pytestmark = pytest.mark.timeout(240)


def _env(server, stub, redis, tmp_path, name, **extra):
    return {"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": stub.url,
            "REDIS_URL": redis.url, "AITP_DATA_DIR": str(tmp_path / name), **extra}


def _embedded(stubs) -> int:
    return sum(len(stub.embedded) for stub in stubs)


def _reports_per_task(server, tasks) -> Counter:
    """How many times each task was reported succeeded."""
    return Counter(sum(state == "succeeded" for state in server.history(task["_id"])) for task in tasks)


def _services(count, sandbox, ollama, service, redis, tmp_path, tasks, **extra):
    server = sandbox(tasks)
    stubs = [ollama(models={"nomic-embed-text": 768}, call_cost=0.005, input_cost=0.001) for _ in range(count)]
    processes = [service(_env(server, stub, redis, tmp_path, f"service-{n}", **extra))
                 for n, stub in enumerate(stubs)]
    return server, stubs, processes


@pytest.mark.parametrize("count", [2, 3])
def test_services_sharing_a_redis_drain_one_api_embedding_each_task_once(count, sandbox, ollama, service,
                                                                           redis_server, tmp_path):
    tasks = generated_tasks(2000)
    redis = redis_server()
    server, stubs, processes = _services(count, sandbox, ollama, service, redis, tmp_path, tasks)
    wait_until(lambda: server.counts() == {"succeeded": 2000}, timeout=180, message="every task to succeed")
    assert _reports_per_task(server, tasks) == Counter({1: 2000})      # each reported once
    assert _embedded(stubs) <= 2000 + 30, _embedded(stubs)              # the bound
    assert all(stub.embedded for stub in stubs)                         # every service did its share
    for process in processes:
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_a_service_killed_with_9_has_its_claimed_tasks_finished_by_the_other(sandbox, ollama, service,
                                                                              redis_server, tmp_path):
    tasks = generated_tasks(2000)
    redis = redis_server()
    server, stubs, (doomed, survivor) = _services(2, sandbox, ollama, service, redis, tmp_path, tasks,
                                                  AITP_COORDINATION__LEASE_SECONDS="3")
    wait_until(lambda: len(stubs[0].embedded) > 50, timeout=60, message="the doomed service to be at work")
    stubs[0].gate.clear()                      # its GPU stalls: what it claimed stays claimed at the kill
    wait_until(lambda: stubs[0].waiting_at_gate, message="a call held in flight")
    doomed.signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    stubs[0].gate.set()
    wait_until(lambda: server.counts() == {"succeeded": 2000}, timeout=180, message="every task to succeed")
    logs = [json.loads(line) for line in survivor.logs().splitlines() if line.startswith("{")]
    adopted = sum(line.get("tasks", 0) for line in logs if line["event"] == "tasks taken over from a service "
                                                                         "whose leases ran out")
    assert adopted > 0                        # the dead service's claims: only the leases could finish these
    assert _reports_per_task(server, tasks)[0] == 0


def test_a_service_back_after_its_tasks_were_finished_elsewhere_computes_none_again(sandbox, ollama, service,
                                                                                    redis_server, tmp_path):
    """Issue 29: service A killed holding claims, B finishing them, A restarted once the settled marks
    (120 s) had run out: every claim left in A's journal was resumed, paid for and reported again."""
    tasks = generated_tasks(600)
    redis = redis_server()
    server, stubs, (doomed, survivor) = _services(2, sandbox, ollama, service, redis, tmp_path, tasks,
                                                  AITP_COORDINATION__LEASE_SECONDS="1",
                                                  AITP_COORDINATION__SETTLED_SECONDS="0.5")
    wait_until(lambda: len(stubs[0].embedded) > 30, timeout=60, message="the doomed service to be at work")
    stubs[0].gate.clear()                      # its GPU stalls: what it claimed stays claimed at the kill
    wait_until(lambda: stubs[0].waiting_at_gate, message="a call held in flight")
    doomed.signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    stubs[0].gate.set()                        # the dead service's call ends in the stub, unheard
    wait_until(lambda: server.counts() == {"succeeded": 600}, timeout=180, message="the survivor to finish all")
    client = redis.client()
    wait_until(lambda: not client.keys("*settled:*"), message="every settled mark to run out")
    reported = {task["_id"]: len(server.history(task["_id"])) for task in tasks}
    back = service(_env(server, stubs[0], redis, tmp_path, "service-0"))      # the same journal
    wait_until(lambda: "resuming the last run" in back.logs() or "another service finished" in back.logs(),
               message="the restarted service to read its journal")
    back.signal(signal.SIGTERM)
    assert back.wait(timeout=30) == 0
    assert max(Counter(stubs[0].embedded).values()) == 1                   # nothing computed again
    assert {task["_id"]: len(server.history(task["_id"])) for task in tasks} == reported    # nor reported
    assert "claims of the last run another service finished meanwhile" in back.logs()


def test_redis_restarted_mid_run_costs_time_not_tasks(sandbox, ollama, service, redis_server, tmp_path):
    tasks = generated_tasks(2000)
    redis = redis_server()
    server, stubs, processes = _services(2, sandbox, ollama, service, redis, tmp_path, tasks)
    wait_until(lambda: server.counts().get("succeeded", 0) > 300, timeout=60, message="work under way")
    redis.stop()
    port = wait_until(lambda: monitoring_port(processes[0]), message="the monitoring port")
    wait_until(lambda: _ready_reason(port).startswith("Redis does not answer"), timeout=60,
               message="/ready to say Redis is down")
    assert "aitp_redis_available 0.0" in _metrics(port)
    redis.start()
    wait_until(lambda: server.counts() == {"succeeded": 2000}, timeout=180, message="every task to succeed")
    assert _reports_per_task(server, tasks) == Counter({1: 2000})
    assert _embedded(stubs) <= 2000 + 30, _embedded(stubs)
    wait_until(lambda: "aitp_redis_available 1.0" in _metrics(port), message="/metrics to say Redis is back")


def test_redis_away_for_twice_a_lease_mid_run_costs_no_task_twice(sandbox, ollama, service, redis_server, tmp_path):
    """Issue 29: with Redis stopped 8 s against a 3 s lease, each service's leases had run out when
    it came back, the other took them over, and 234 tasks were reported twice (Ollama mode). Now
    no lease is taken over before a whole lease period of answers: the holders renew first."""
    tasks = generated_tasks(1500)
    redis = redis_server()
    server, stubs, processes = _services(2, sandbox, ollama, service, redis, tmp_path, tasks,
                                         AITP_COORDINATION__LEASE_SECONDS="1")
    wait_until(lambda: server.counts().get("succeeded", 0) > 300, timeout=60, message="work under way")
    redis.stop()
    time.sleep(2.0)                 # the outage itself: twice the lease (not a wait for a condition)
    redis.start()
    wait_until(lambda: server.counts() == {"succeeded": 1500}, timeout=180, message="every task to succeed")
    assert _reports_per_task(server, tasks) == Counter({1: 1500})
    assert _embedded(stubs) <= 1500 + 30, _embedded(stubs)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def _ready_reason(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as answer:
            return json.loads(answer.read())["reason"]
    except urllib.error.HTTPError as error:
        return json.loads(error.read())["reason"]


def test_rate_limits_hold_exactly_across_services(sandbox, service, redis_server, tmp_path):
    tasks = generated_tasks(20)
    server = sandbox(tasks)
    redis = redis_server()
    env = {"API_BASE_URL": server.url, "RATE_LIMIT_PER_MINUTE": "7", "REDIS_URL": redis.url}
    first = service({**env, "AITP_DATA_DIR": str(tmp_path / "first")})
    second = service({**env, "AITP_DATA_DIR": str(tmp_path / "second")})
    for process in (first, second):
        wait_until(lambda process=process: "rate limit reached: polling paused" in process.logs(),
                   message="each service to find the shared limit reached")
    wait_until(lambda: server.counts() == {"succeeded": 7, "pending": 13}, message="seven tasks, no more")
    assert server.counts() == {"succeeded": 7, "pending": 13}       # one limit for both, not seven each


def test_a_breaker_opened_by_one_service_spares_the_others(redis_server):
    from aitp.breakers import ProviderBreaker
    from aitp.coordination.breakers import BreakerMirror, shared_breaker_storage

    redis = redis_server()
    mirrors = [BreakerMirror(redis.client()) for _ in range(3)]      # three services

    def breaker(mirror, endpoint="https://api.openai.com/v1"):
        storage = shared_breaker_storage(mirror, "test:", "openai", endpoint)
        return ProviderBreaker("openai", threshold=3, reset_seconds=60, storage=storage)

    one, other, elsewhere = breaker(mirrors[0]), breaker(mirrors[1]), breaker(mirrors[2], "http://gpu-2:11434")
    for _ in range(3):
        one.end(one.begin(), failed=True)
    assert one.state == "open"
    assert all(mirror.sync() for mirror in mirrors)                  # what the mirrors' thread does
    assert other.state == "open" and other.begin() is None         # learnt from the first: no call made
    assert elsewhere.state == "closed"                              # another endpoint keeps its own


def test_a_redis_that_hangs_costs_a_breaker_nothing(redis_server):
    """Issue 29: each breaker read waited out the socket timeout while holding the breaker's lock
    (one begin and end took 14 s). Now a breaker never waits on Redis: the mirror meets Redis with
    a short timeout from its own thread, and gives up on it meanwhile."""
    import os
    import signal as signals
    import threading

    from aitp.breakers import ProviderBreaker
    from aitp.coordination.breakers import SYNC_TIMEOUT_SECONDS, BreakerMirror, shared_breaker_storage
    from aitp.coordination.leases import connect

    redis = redis_server()
    mirror = BreakerMirror(connect(redis.url, SYNC_TIMEOUT_SECONDS))
    breaker = ProviderBreaker("openai", 3, 60, storage=shared_breaker_storage(mirror, "test:", "openai", "x"))
    assert mirror.sync()
    os.kill(redis.process.pid, signals.SIGSTOP)                      # a paused VM: no answer, no error
    try:
        syncing = threading.Thread(target=mirror.sync)
        syncing.start()                                              # the mirror waits on Redis...
        for _ in range(3):                                           # ...and the breaker does not
            breaker.end(breaker.begin(), failed=True)
        assert breaker.state == "open" and breaker.status()["state"] == "open"
        syncing.join(10)
        assert not mirror.available
    finally:
        os.kill(redis.process.pid, signals.SIGCONT)
    wait_until(mirror.sync, message="Redis to answer again")
    assert redis.client().get("test:breaker:openai:" + __import__("hashlib").sha1(b"x").hexdigest()[:8]
                              + ":pybreaker:state") == b"open"       # what waited went to Redis


def test_a_service_stopped_with_sigterm_gives_its_leases_back_with_its_claims(sandbox, ollama, service,
                                                                              redis_server, tmp_path):
    tasks = generated_tasks(300)
    server = sandbox(tasks)
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.02, input_cost=0.002)
    redis = redis_server()
    process = service(_env(server, stub, redis, tmp_path, "only", AITP_SHUTDOWN__DEADLINE_SECONDS="1",
                           OLLAMA_TIMEOUT="2"))
    wait_until(lambda: server.counts().get("succeeded", 0) >= 20, timeout=60, message="work under way")
    stub.gate.clear()                      # a call held: its tasks are still claimed at the stop
    wait_until(lambda: stub.waiting_at_gate, message="a call held in flight")
    process.signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    stub.gate.set()
    counts = server.counts()
    assert counts.get("pending", 0) > 0 and not counts.get("in_progress")
    client = redis.client()
    leases = [key for key in client.scan_iter(match="aitp:*:leases")]
    assert all(client.zcard(key) == 0 for key in leases)           # none left to run out
    pending = {task["_id"] for task in tasks if server.state_of(task["_id"]) == "pending"}
    settled_pending = [key for key in client.scan_iter(match="aitp:*:settled:*")
                       if key.decode().rsplit(":", 1)[1] in pending]
    assert settled_pending == []                                   # another service may take them at once


# --- several Ollama hosts from one service ---
def test_one_service_keeps_several_ollama_hosts_busy_and_pulls_models_on_each(sandbox, ollama, service, tmp_path):
    server = sandbox(generated_tasks(600))
    hosts = [ollama(models={"nomic-embed-text": 768}, installed=[], call_cost=0.01, input_cost=0.001)
             for _ in range(2)]
    process = service({"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama",
                       "OLLAMA_BASE_URL": ",".join(host.url for host in hosts)})
    wait_until(lambda: server.counts() == {"succeeded": 600}, timeout=120, message="every task to succeed")
    assert [host.pulls for host in hosts] == [["nomic-embed-text"], ["nomic-embed-text"]]
    assert all(len(host.embedded) > 50 for host in hosts), [len(host.embedded) for host in hosts]
    assert sum(len(host.embedded) for host in hosts) == 600
    process.signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_batches_go_to_the_host_that_is_free(sandbox, ollama, service, tmp_path):
    server = sandbox(generated_tasks(300))
    stalled, free = (ollama(models={"nomic-embed-text": 768}) for _ in range(2))
    stalled.gate.clear()                      # this GPU holds every call it gets
    process = service({"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama", "OLLAMA_TIMEOUT": "120",
                       "OLLAMA_BASE_URL": f"{stalled.url},{free.url}", "CONCURRENCY_LIMIT": "2"})
    # The stalled host holds at most its two calls' batches; everything else goes to the free one.
    wait_until(lambda: server.counts().get("succeeded", 0) >= 300 - 2 * 16, timeout=120,
               message="the free host to take the rest")
    assert stalled.waiting_at_gate <= 2 and not stalled.embedded
    stalled.gate.set()
    wait_until(lambda: server.counts() == {"succeeded": 300}, timeout=60, message="every task to succeed")
    process.signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_a_host_that_is_down_leaves_its_work_to_the_others(sandbox, ollama, service, tmp_path):
    server = sandbox(generated_tasks(200))
    up = ollama(models={"nomic-embed-text": 768})
    process = service({"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama", "OLLAMA_TIMEOUT": "2",
                       "OLLAMA_BASE_URL": f"http://127.0.0.1:9,{up.url}"})   # port 9: nothing listens
    wait_until(lambda: server.counts() == {"succeeded": 200}, timeout=120, message="every task to succeed")
    assert len(up.embedded) == 200
    process.signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_a_dead_services_paid_results_are_sent_by_another_never_paid_for_again(sandbox, openai_stub, service,
                                                                                redis_server, tmp_path):
    from aitp.sandbox.openai_stub import STUB_KEY

    stub = openai_stub(models={"text-embedding-ada-002": 8})
    tasks = generated_tasks(6, models=("text-embedding-ada-002",))
    server = sandbox(tasks)
    redis = redis_server()
    env = {"API_BASE_URL": server.url, "OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": stub.url,
           "AITP_MODELS__DIMENSIONS": '{"text-embedding-ada-002": 8}', "RETRY_BACKOFF_FACTOR": "0.05",
           "REDIS_URL": redis.url, "AITP_COORDINATION__LEASE_SECONDS": "2"}
    stub.gate.clear()                           # the embeddings calls wait until the API is down
    doomed = service({**env, "AITP_DATA_DIR": str(tmp_path / "doomed")})
    wait_until(lambda: stub.in_flight, timeout=30, message="an embeddings call")
    server.start_outage("503")                  # its results cannot be reported...
    stub.gate.set()
    client = redis.client()
    wait_until(lambda: sum(client.hexists(key, "result") for key in client.scan_iter(match="aitp:*:lease:*")) == 6,
               timeout=30, message="the paid results in Redis")          # ...but they are in Redis
    doomed.signal(signal.SIGKILL)               # and its journal dies with its host
    doomed.wait(10)
    server.end_outage()
    calls = len(stub.requests)
    survivor = service({**env, "AITP_DATA_DIR": str(tmp_path / "survivor")})
    wait_until(lambda: server.counts() == {"succeeded": 6}, timeout=60, message="the paid results sent")
    assert len(stub.requests) == calls                                     # nothing paid for twice
    logs = [json.loads(line) for line in survivor.logs().splitlines() if line.startswith("{")]
    assert sum(line.get("with_paid_results", 0) for line in logs) == 6
    survivor.signal(signal.SIGTERM)
    assert survivor.wait(60) == 0


def test_a_restarted_poller_keeps_one_chain_of_lease_ticks(sandbox, redis_server, run_pipeline, tmp_path):
    # The Poller renews its leases on a tick that schedules the next. The tick a failed Poller had
    # scheduled still arrives after its restart; taken by the new Poller as its own, it would start
    # a second chain, and renewals would double with every restart. One chain's ticks are a whole
    # interval apart: each is scheduled only when the one before is handled.
    import threading
    import time

    from actors.messages import TasksSettled
    from actors.poller import LeaseTick
    from conftest import FailOnce, settings_for

    fault = FailOnce("poller", lambda stage, message: isinstance(message, TasksSettled))
    ticks: list[tuple[float, int]] = []          # (when handled, chain) of the ticks acted on
    lock = threading.Lock()

    def hook(stage, message):
        if stage.name == "poller" and isinstance(message, LeaseTick) and message.chain == stage.lease_chain:
            with lock:
                ticks.append((time.monotonic(), message.chain))
        fault(stage, message)

    lease_seconds = 0.6
    server = sandbox(generated_tasks(30))
    pipeline = run_pipeline(settings_for(server, tmp_path, f"[coordination]\nlease_seconds = {lease_seconds}\n",
                                         REDIS_URL=redis_server().url), before_message=hook)
    wait_until(lambda: pipeline.status()["restarts"]["poller"] == 1, message="the Poller to restart")

    def after_restart():
        with lock:
            last = ticks[-1][1] if ticks else None
            return [at for at, chain in ticks if chain == last]

    wait_until(lambda: len(after_restart()) >= 8, timeout=60, message="eight ticks after the restart")
    times = after_restart()
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= lease_seconds / 3 - 0.001, gaps


def test_with_wikidata_down_a_paid_answer_is_never_paid_for_again_by_another_service(
        sandbox, openai_stub, service, redis_server, tmp_path, wikidata_stub):
    """Issue 28 with two services: a task whose answer one service paid for stays claimed by it while
    Wikidata is down (released, the other service would take it and pay again)."""
    from aitp.sandbox.openai_stub import STUB_KEY
    from aitp.sandbox.seed import llm_tasks
    stub, redis = openai_stub(), redis_server()
    wikidata = wikidata_stub()
    wikidata.outage = 503
    llm = llm_tasks(5)
    server = sandbox(llm)
    env = {"API_BASE_URL": server.url, "OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": stub.url,
           "REDIS_URL": redis.url, "MAX_RETRIES": "1", "RETRY_BACKOFF_FACTOR": "0.05",
           "AITP_PROCESSING__RETRY_BACKOFF_MAX_SECONDS": "0.3", "AITP_WIKIDATA__MAX_ATTEMPTS": "1",
           "AITP_RESILIENCE__CIRCUIT_BREAKER_RESET_SECONDS": "0.2", "POLLING_INTERVAL_SECONDS": "0.2",
           **wikidata.settings_env()}
    processes = [service({**env, "AITP_DATA_DIR": str(tmp_path / f"service-{n}")}) for n in range(2)]
    wait_until(lambda: len(wikidata.calls()) >= 6 * len(llm), timeout=90, message="many tries of the LLM tasks")
    for process in processes:
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    assert not any(server.state_of(t["_id"]) == "succeeded" for t in llm)
    # Each question (a prompt and a text: several task types share a text) asked once: the stub's
    # answers pass their schema at the first try.
    asked = Counter((request["messages"][0]["content"][:80], request["messages"][-1]["content"])
                    for request in stub.chat_requests)
    assert max(asked.values()) == 1, asked.most_common(3)

from collections import Counter

import requests

from aitp.sandbox.seed import demo_tasks, generated_tasks, object_id


def test_pending_returns_all_and_claiming_is_only_a_state_change(sandbox):
    server = sandbox(generated_tasks(5))
    listed = requests.get(f"{server.url}/api/ai-tasks/pending?limit=1", timeout=5).json()
    assert len(listed) == 5
    requests.patch(f"{server.url}/api/ai-tasks/{object_id(0)}", json={"state": "in_progress"}, timeout=5)
    assert len(requests.get(f"{server.url}/api/ai-tasks/pending", timeout=5).json()) == 4
    assert server.history(object_id(0)) == ["pending", "in_progress"]


def test_bad_id_bad_state_unknown_id_and_body_limit(sandbox):
    server = sandbox(generated_tasks(1))
    url = f"{server.url}/api/ai-tasks"
    answer = requests.patch(f"{url}/xyz", json={"state": "failed"}, timeout=5)
    assert answer.json()["message"] == "Invalid ObjectId format"
    assert requests.patch(f"{url}/{object_id(0)}", json={"state": "x"}, timeout=5).json()["message"] == "Invalid state"
    redirect = requests.patch(f"{url}/{object_id(9)}", json={"state": "failed"}, timeout=5, allow_redirects=False)
    assert (redirect.status_code, redirect.headers["Location"]) == (302, "/404")
    too_big = requests.patch(f"{url}/{object_id(0)}", json={"state": "succeeded", "result": [0.1] * 30000}, timeout=5)
    assert too_big.status_code == 413


def test_token_endpoint_checks_the_client_and_tokens_expire(sandbox):
    server = sandbox(generated_tasks(1), client_id="id", client_secret="secret", token_lifetime=60)
    pending = f"{server.url}/api/ai-tasks/pending"
    assert requests.get(pending, timeout=5).status_code == 403
    wrong = requests.post(server.token_url, data={"grant_type": "client_credentials"}, auth=("id", "nope"), timeout=5)
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    basic = requests.post(server.token_url, data={"grant_type": "client_credentials"}, auth=("id", "secret"), timeout=5)
    post = requests.post(server.token_url, data={"grant_type": "client_credentials", "client_id": "id",
                                                 "client_secret": "secret"}, timeout=5)
    assert basic.json()["expires_in"] == 60 and post.status_code == 200
    token = basic.json()["access_token"]
    assert requests.get(pending, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
    server.revoke_tokens()
    assert requests.get(pending, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 403


def test_demo_queue_holds_the_hard_cases():
    tasks = demo_tasks(10, llm_count=2)
    types = {t.get("type") for t in tasks}
    assert {"text_embedding", "identifying_data", "defining_topics", "defining_impact_area", "defining_severity",
            "summarizing"} <= types
    assert any(t["_id"] == "../../etc/passwd" for t in tasks)


def test_the_admin_routes_need_the_same_client_auth_as_the_task_api(sandbox):
    server = sandbox(generated_tasks(2), client_id="aitp", client_secret="sandbox-secret")
    for method, path in (("GET", "/_sandbox/stats"), ("GET", "/_sandbox/tasks"), ("POST", "/_sandbox/revoke")):
        assert requests.request(method, server.url + path, timeout=5).status_code == 403, path
    token = requests.post(server.token_url, data={"grant_type": "client_credentials"},
                          auth=("aitp", "sandbox-secret"), timeout=5).json()["access_token"]
    stats = requests.get(server.url + "/_sandbox/stats", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert stats.status_code == 200 and stats.json()["counts"] == {"pending": 2}
    wrong = requests.post(server.token_url, data={"grant_type": "client_credentials"},
                          auth=("aitp", "sandbox-secreT"), timeout=5)
    assert wrong.status_code == 401


def test_the_sandbox_warns_when_it_listens_beyond_loopback(caplog):
    from aitp.sandbox import SandboxServer
    server = SandboxServer([], host="0.0.0.0")
    with caplog.at_level("WARNING", logger="aitp.sandbox"):
        server.start()
    server.stop()
    assert any("stand-in for tests and demos" in record.getMessage() for record in caplog.records)


def test_counts_follow_every_change_of_state(sandbox):
    # Kept as states change rather than counted over every task at each read (tests and
    # benchmarks read them every few ms, under the lock the request handlers need).
    server = sandbox(generated_tasks(5))
    assert server.counts() == {"pending": 5}
    requests.patch(f"{server.url}/api/ai-tasks/{object_id(0)}", json={"state": "in_progress"}, timeout=5)
    requests.patch(f"{server.url}/api/ai-tasks/{object_id(1)}", json={"state": "failed", "error": "x"}, timeout=5)
    assert server.counts() == {"pending": 3, "in_progress": 1, "failed": 1}
    server.add_tasks([{**generated_tasks(1)[0], "state": "succeeded"}])   # the same id again, replaced
    server.remove_task(object_id(1))
    server.add_raw_entry("raw-1", b"\xff")
    assert server.counts() == {"pending": 4, "succeeded": 1}
    assert server.counts() == dict(Counter(t["state"] for t in server.store.tasks.values()))

from aitp.storage.journal import Claim, Journal, OutboxEntry


def test_claims_and_results_survive_a_reopen(tmp_path):
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    journal.record_claims([Claim("a", b'{"_id":"a"}'), Claim("b", b'{"_id":"b"}')])
    journal.add_results([OutboxEntry("a", b'{"state":"succeeded","result":[1]}', "succeeded")])
    journal.close()

    reopened = Journal(path)
    assert reopened.claims() == [Claim("b", b'{"_id":"b"}')]          # a's claim retired with its result
    assert reopened.outbox() == [OutboxEntry("a", b'{"state":"succeeded","result":[1]}', "succeeded")]
    reopened.acknowledge(["a"])
    reopened.drop_claims(["b"])
    assert reopened.counts() == {"claims": 0, "outbox": 0}


def test_a_model_is_pinned_once(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.pin_dimension("m", 768) == 768
    assert journal.pin_dimension("m", 1024) == 768
    assert journal.pinned_dimensions() == {"m": 768}


def test_empty_writes_are_no_ops(tmp_path):
    journal = Journal(tmp_path / "deep" / "dir" / "j.sqlite3")
    journal.record_claims([])
    journal.add_results([])
    assert journal.counts() == {"claims": 0, "outbox": 0}


def test_deleting_a_result_does_not_rewrite_its_freed_pages(tmp_path):
    # secure_delete on (some builds' default) overwrites every page a delete frees: for a journal
    # that deletes each result once the API took it, that was most of the cost of acknowledging.
    journal = Journal(tmp_path / "j.sqlite3")
    # Private on purpose (one of the few reach-ins left): secure_delete is a setting of the journal's
    # own connection, which no other connection to the file can see.
    assert journal._db.execute("PRAGMA secure_delete").fetchone()[0] == 2      # 2 is FAST


def test_the_data_directory_is_0700_and_every_file_in_it_0600_whatever_the_umask(sandbox, run_pipeline, tmp_path):
    import os
    import stat
    from aitp.sandbox.seed import generated_tasks
    from conftest import drained, settings_for, wait_until
    previous = os.umask(0o000)              # the most permissive umask there is
    try:
        server = sandbox(generated_tasks(5))
        settings = settings_for(server, tmp_path, RATE_LIMIT_PER_DAY="1000")
        run_pipeline(settings)
        wait_until(lambda: drained(server), message="the queue to drain")
    finally:
        os.umask(previous)
    data = settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [path for path in data.iterdir() if path.is_file()]
    assert {path.name for path in files} >= {"journal.sqlite3", "rate_limits.sqlite3"}
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == \
        {path.name: oct(0o600) for path in files}


def test_a_kept_chat_answer_outlives_a_release_and_goes_with_the_result_made_from_it(tmp_path):
    from aitp.tasks.answers import AnswerBook, KeptAnswer
    journal = Journal(tmp_path / "journal.sqlite3")
    book = AnswerBook(journal)
    paid, unpaid = KeptAnswer('{"a": 1}', "openai", True, 7), KeptAnswer('{"a": 2}', "ollama", False)
    book.keep("t1", "k", paid)
    book.keep("t2", "k", unpaid)
    assert book.get("t1", "k") == paid and book.get("t2", "k") == unpaid
    assert book.get("t1", "another question") is None
    journal.add_results([OutboxEntry("t1", b'{"state":"pending"}', "pending")])      # released: still kept
    reopened = AnswerBook(Journal(tmp_path / "journal.sqlite3"))
    assert reopened.get("t1", "k") == paid and reopened.get("t2", "k") is None          # unpaid: memory only
    journal.add_results([OutboxEntry("t1", b'{"state":"succeeded"}', "succeeded")])  # its result replaces it
    book.done("t2")
    assert book.get("t1", "k") is None and book.get("t2", "k") is None
    assert journal.answers_kept() == 0


def test_answers_kept_for_tasks_never_finished_here_are_purged_by_age(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.keep_answer("t1", "k", b"{}")
    assert journal.purge_answers(older_than_seconds=3600) == 0
    assert journal.purge_answers(older_than_seconds=-1) == 1 and journal.answers_kept() == 0

"""What the listener page's rating requests do on PostgreSQL: the one-statement upsert behind
``rating_submit`` keeps every rule of the SQLite path (retries, late replays, validation, finished
trials) under real concurrency. No browser is needed; these run with the browser tests' database."""

import json
import threading
import time
import uuid

import psycopg
import pytest
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext

from evalsite.core.exceptions import ApplicationError, ConflictError
from evalsite.listening import services
from evalsite.listening.models import Assignment, Participant, Rating
from evalsite.listening.selectors import listener_state
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.integration


@pytest.fixture
def mushra(settings, tmp_path, transactional_db):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=2)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="pg-rating-writes",
            kind="mushra",
            checkpoints=world["checkpoints"],
            training_items=0,
            seed=11,
        )
    )
    participant = services.participant_join(test=test)
    trial = listener_state(participant)["trials"][0]
    return test, participant, trial


def test_the_postgresql_path_is_the_one_tested_here():
    assert connection.vendor == "postgresql"


def test_retries_and_late_replays_keep_the_newest_answer_and_return_what_is_stored(mushra):
    _, p, trial = mushra
    stim = trial["stimuli"][0]["id"]

    def rate(score, rid):
        return services.rating_submit(
            participant=p, trial=trial["id"], stimulus=stim, score=score, request_id=rid
        )

    first = rate(40, "first")
    assert (first.score, first.request_id, first.history, first.participant.pk) == (
        40.0,
        "first",
        ["first"],
        p.pk,
    )
    assert rate(40, "first").pk == first.pk  # the same request again: unchanged
    newer = rate(80, "second")
    assert (newer.pk, newer.score, newer.history) == (first.pk, 80.0, ["first", "second"])
    replay = rate(40, "first")  # a late replay of the older request changes nothing...
    assert (replay.score, replay.request_id) == (80.0, "second")  # ...and answers with what is stored
    stored = Rating.objects.get(participant=p)
    assert (stored.score, stored.request_id, stored.history) == (80.0, "second", ["first", "second"])
    assert stored.updated_at >= stored.created_at and not stored.is_training


def run_at_once(n, fn):
    """Call ``fn(i)`` from ``n`` threads released together; each thread has its own connection."""
    barrier, results = threading.Barrier(n), [None] * n

    def worker(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - returned to the test to assert on
            results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_a_request_sent_many_times_at_once_stores_one_rating(mushra):
    _, p, trial = mushra
    stim = trial["stimuli"][1]["id"]
    results = run_at_once(
        8,
        lambda i: services.rating_submit(
            participant=p.token, trial=trial["id"], stimulus=stim, score=33, request_id="double-click"
        ),
    )
    assert all(not isinstance(r, Exception) for r in results), results
    assert {(r.pk, r.score, tuple(r.history)) for r in results} == {(results[0].pk, 33.0, ("double-click",))}
    assert Rating.objects.filter(participant=p).count() == 1


def test_different_answers_at_once_leave_one_rating_holding_the_last_one_written(mushra):
    _, p, trial = mushra
    stim = trial["stimuli"][2]["id"]
    results = run_at_once(
        6,
        lambda i: services.rating_submit(
            participant=p, trial=trial["id"], stimulus=stim, score=10 * i, request_id=f"r{i}"
        ),
    )
    assert all(not isinstance(r, Exception) for r in results), results
    rating = Rating.objects.get(participant=p)
    assert sorted(rating.history) == [f"r{i}" for i in range(6)]
    assert rating.request_id == rating.history[-1] and rating.score == 10 * int(rating.request_id[1:])


def test_a_rating_waiting_on_a_trial_being_finished_is_refused_and_stores_nothing(mushra):
    _, p, trial = mushra
    assignment = Assignment.objects.get(token=trial["id"])
    db = connection.settings_dict
    # Another session finishes the trial and holds its row lock (as trial_complete does) while the
    # rating arrives: the rating has passed its checks and waits in the upsert for that lock.
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    ) as other:
        other.execute("UPDATE listening_assignment SET completed_at = now() WHERE id = %s", (assignment.pk,))
        outcome = []
        thread = threading.Thread(
            target=lambda: outcome.extend(
                run_at_once(
                    1,
                    lambda i: services.rating_submit(
                        participant=p,
                        trial=trial["id"],
                        stimulus=trial["stimuli"][0]["id"],
                        score=50,
                        request_id="late",
                    ),
                )
            )
        )
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive()  # waiting for the assignment's row lock
        other.commit()
        thread.join(timeout=30)
    assert isinstance(outcome[0], ConflictError) and outcome[0].message == services.TRIAL_ALREADY_COMPLETED
    assert not Rating.objects.filter(participant=p).exists()


def join(client, test):
    client.get(f"/l/i/{test.invite_token}/")
    response = client.post(
        f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    return response["Location"]


def test_through_http_a_rating_is_two_statements_and_bad_input_stores_nothing(mushra):
    test, _, _ = mushra
    client = Client(enforce_csrf_checks=True)
    url = join(client, test)
    trial = client.get(url + "state").json()["trials"][0]

    def post(body):
        return client.post(
            url + "rate",
            json.dumps(body),
            content_type="application/json",
            HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
        )

    body = {"trial": trial["id"], "stimulus": trial["stimuli"][0]["id"], "score": 64, "request_id": "h1"}
    with CaptureQueriesContext(connection) as new:
        assert post(body).json() == {"score": 64.0}
    with CaptureQueriesContext(connection) as again:
        assert post(body).json() == {"score": 64.0}
    assert (len(new.captured_queries), len(again.captured_queries)) == (2, 3)
    for bad, status in [
        ({"score": 101}, 400),
        ({"score": "64"}, 400),
        ({"request_id": ""}, 400),
        ({"stimulus": "nope"}, 404),
        ({"trial": "nope"}, 404),
    ]:
        response = post({**body, "request_id": uuid.uuid4().hex, **bad})
        assert response.status_code == status and "message" in response.json()
    participant = Participant.objects.get(token=url.rstrip("/").rsplit("/", 1)[1])
    assert [(r.score, r.history) for r in Rating.objects.filter(participant=participant)] == [(64.0, ["h1"])]
    services.listening_test_close(test=test)
    closed = post({**body, "score": 10, "request_id": "h2"})
    assert closed.status_code == 409 and closed.json()["message"] == services.TEST_NOT_OPEN
    assert Rating.objects.get(participant=participant).score == 64.0
    with pytest.raises(ApplicationError):
        services.rating_submit(
            participant="no-such-participant", trial=trial["id"], stimulus="x", score=1, request_id="x"
        )

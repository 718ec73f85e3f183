"""The REST API on SQLite: tokens and their reach, field errors, idempotent registration, alert polling."""

import pytest
import yaml
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from evalsite.alerts.models import Alert, AlertRule
from evalsite.alerts.services import alert_create
from evalsite.api.services import researcher_token_issue
from evalsite.jobs.models import Job
from evalsite.listening.models import ListeningTest
from evalsite.runs.models import Checkpoint, Run
from evalsite.runs.services import run_create
from tests.factories import EvalSetFactory, listening_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def researcher():
    user = get_user_model().objects.create_user("ada", password="x")
    return user, researcher_token_issue(user=user)


def client_for(token: str | None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def run_and_token(researcher):
    user, _ = researcher
    run, token = run_create(
        name="voc", kind="vocoder", model_family="hifigan", eval_set=EvalSetFactory(), owner=user
    )
    return run, token


def test_a_researcher_creates_a_run_and_gets_its_token_once_with_default_alert_rules(researcher):
    user, token = researcher
    eval_set = EvalSetFactory(name="ljs-test")
    response = client_for(token).post(
        "/api/v1/runs/",
        {
            "name": "hifigan-ljs",
            "kind": "vocoder",
            "model_family": "hifigan",
            "eval_set": "ljs-test",
            "checkpoint_dir": "/ckpt/hifigan",
            "webhook_url": "https://example.org/hook",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["token"].startswith("evr_") and body["webhook_secret"].startswith("whsec_")
    run = Run.objects.get(pk=body["id"])
    assert run.owner == user and run.eval_set == eval_set and run.api_token_hash != body["token"]
    assert set(AlertRule.objects.filter(run=run).values_list("kind", flat=True)) == {
        "metric_regression",
        "detector_rate",
        "detector_any",
        "listener_flags",
        "score_drop",
    }
    # The token is never shown again.
    again = client_for(token).get(f"/api/v1/runs/{run.pk}/").json()
    assert "token" not in again and "webhook_secret" not in again and again["eval_set"] == "ljs-test"


def test_invalid_input_names_the_field_and_why(researcher):
    _, token = researcher
    response = client_for(token).post(
        "/api/v1/runs/",
        {"name": "x", "kind": "vocodr", "model_family": "h", "eval_set": "nope"},
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert "kind" in body["extra"]["fields"] and "kind" in body["message"] and "vocodr" in body["message"]
    response = client_for(token).post(
        "/api/v1/runs/",
        {"name": "x", "kind": "vocoder", "model_family": "h", "eval_set": "nope"},
        format="json",
    )
    assert response.status_code == 400 and "eval_set" in response.json()["extra"]["fields"]
    response = client_for(token).post("/api/v1/runs/", b"{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON" in response.json()["message"]
    response = client_for(token).post(
        "/api/v1/runs/",
        {"name": "x", "kind": "vocoder", "model_family": "h", "checkpoint_pattern": "ckpt-(\\d+)"},
        format="json",
    )
    assert response.status_code == 400 and "checkpoint_pattern" in response.json()["extra"]["fields"]
    assert not Run.objects.exists()


def test_a_taken_run_name_is_a_409_naming_the_field(researcher, run_and_token):
    _, token = researcher
    response = client_for(token).post(
        "/api/v1/runs/", {"name": "voc", "kind": "vocoder", "model_family": "h"}, format="json"
    )
    assert response.status_code == 409 and "name" in response.json()["extra"]["fields"]


def test_a_run_token_reaches_its_own_run_only(run_and_token, researcher):
    run, token = run_and_token
    other, other_token = run_create(name="other", kind="vocoder", model_family="hifigan")
    client = client_for(token)
    assert client.get(f"/api/v1/runs/{run.pk}/").status_code == 200
    assert [r["name"] for r in client.get("/api/v1/runs/").json()["results"]] == ["voc"]
    for url in (
        f"/api/v1/runs/{other.pk}/",
        f"/api/v1/runs/{other.pk}/checkpoints/",
        f"/api/v1/runs/{other.pk}/alerts/",
    ):
        assert client.get(url).status_code == 404
    assert (
        client.post(
            f"/api/v1/runs/{other.pk}/checkpoints/", {"step": 1, "uri": "/x"}, format="json"
        ).status_code
        == 404
    )
    assert not Checkpoint.objects.filter(run=other).exists()
    response = client.post(
        "/api/v1/runs/", {"name": "new", "kind": "vocoder", "model_family": "h"}, format="json"
    )
    assert response.status_code == 403 and "researcher token" in response.json()["message"]
    # A researcher sees only runs they own or share.
    _, researcher_token = researcher
    assert client_for(researcher_token).get(f"/api/v1/runs/{other.pk}/").status_code == 404
    other.collaborators.add(get_user_model().objects.get(username="ada"))
    assert client_for(researcher_token).get(f"/api/v1/runs/{other.pk}/").status_code == 200


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Bearer evr_wrong", "Bearer evu_wrong", "Token abc", "Bearer x y"]
)
def test_missing_or_bad_tokens_get_401(header, run_and_token):
    run, _ = run_and_token
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(f"/api/v1/runs/{run.pk}/")
    assert response.status_code == 401 and response.json()["message"]


def test_registering_a_checkpoint_is_idempotent_and_a_different_file_at_the_same_step_conflicts(
    run_and_token,
):
    run, token = run_and_token
    client = client_for(token)
    url = f"/api/v1/runs/{run.pk}/checkpoints/"
    first = client.post(url, {"step": 12000, "uri": "/ckpt/g_00012000"}, format="json")
    assert first.status_code == 201 and first.json()["status"] == "registered"
    assert [j["kind"] for j in first.json()["jobs"]] == ["generation"]
    retry = client.post(url, {"step": 12000, "uri": "/ckpt/g_00012000"}, format="json")
    assert retry.status_code == 200 and retry.json()["id"] == first.json()["id"]
    conflict = client.post(url, {"step": 12000, "uri": "/ckpt/other"}, format="json")
    assert conflict.status_code == 409 and "already registered" in conflict.json()["message"]
    assert Checkpoint.objects.filter(run=run).count() == 1
    assert Job.objects.filter(checkpoint__run=run, kind="generation").count() == 1
    bad = client.post(url, {"step": -1, "uri": "", "sha256": "abc"}, format="json")
    assert bad.status_code == 400 and set(bad.json()["extra"]["fields"]) == {"step", "uri", "sha256"}
    detail = client.get(f"{url}12000/").json()
    assert detail["step"] == 12000 and detail["metrics"] == {} and detail["detector_events"] == {}
    assert client.get(f"{url}999/").status_code == 404


def test_evaluate_requeues_a_checkpoint_unless_it_is_being_evaluated(run_and_token):
    run, token = run_and_token
    client = client_for(token)
    client.post(f"/api/v1/runs/{run.pk}/checkpoints/", {"step": 5, "uri": "/ckpt/g_5"}, format="json")
    busy = client.post(f"/api/v1/runs/{run.pk}/checkpoints/5/evaluate/", {}, format="json")
    assert busy.status_code == 409 and "being evaluated" in busy.json()["message"]
    Job.objects.filter(checkpoint__run=run).update(status="failed")
    bad = client.post(f"/api/v1/runs/{run.pk}/checkpoints/5/evaluate/", {"params": {"sed": 1}}, format="json")
    assert (
        bad.status_code == 400
        and "params.sed" in bad.json()["extra"]["fields"]
        and "sed" in bad.json()["message"]
    )
    ok = client.post(f"/api/v1/runs/{run.pk}/checkpoints/5/evaluate/", {"params": {"seed": 1}}, format="json")
    assert ok.status_code == 202 and ok.json()["jobs"][0]["status"] == "queued"
    assert Job.objects.filter(checkpoint__run=run, status="queued").get().params == {"seed": 1}


def test_alerts_are_polled_after_a_cursor_and_an_unchanged_poll_is_a_304(run_and_token):
    run, token = run_and_token
    client = client_for(token)
    url = f"/api/v1/runs/{run.pk}/alerts/"
    empty = client.get(url)
    assert empty.status_code == 200 and empty.json() == {"results": [], "cursor": 0}
    etag = empty["ETag"]
    assert client.get(url, HTTP_IF_NONE_MATCH=etag).status_code == 304
    for i in range(3):
        alert_create(run=run, dedupe_key=f"k{i}", kind="metric_regression", severity="warning", title=f"t{i}")
    alert_create(run=run, dedupe_key="k1", kind="metric_regression", severity="warning", title="again")
    changed = client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert [a["cursor"] for a in changed.json()["results"]] == [1, 2, 3] and changed.json()["cursor"] == 3
    page = client.get(url, {"after": 1, "limit": 1}).json()
    assert [a["title"] for a in page["results"]] == ["t1"] and page["cursor"] == 2
    assert client.get(url, {"after": 3}).json() == {"results": [], "cursor": 3}
    bad = client.get(url, {"after": -1, "limit": 10**6})
    assert bad.status_code == 400 and set(bad.json()["extra"]["fields"]) == {"after", "limit"}
    assert Alert.objects.filter(run=run).count() == 3


def test_alert_rules_are_replaced_and_a_wrong_parameter_is_named(run_and_token):
    run, token = run_and_token
    client = client_for(token)
    url = f"/api/v1/runs/{run.pk}/alert-rules/"
    assert len(client.get(url).json()["rules"]) == 5
    bad = client.put(
        url, {"rules": [{"kind": "metric_regression", "params": {"relatve": 0.1}}]}, format="json"
    )
    assert bad.status_code == 400 and "rules[0].params.relatve" in bad.json()["extra"]["fields"]
    bad = client.put(url, {"rules": [{"kind": "detector_rate", "params": {"factor": 0.5}}]}, format="json")
    assert bad.status_code == 400 and "> 1" in str(bad.json()["extra"]["fields"])
    ok = client.put(
        url,
        {
            "rules": [
                {
                    "kind": "metric_regression",
                    "params": {"relative": 0.02, "metrics": ["pesq"]},
                    "severity": "critical",
                }
            ]
        },
        format="json",
    )
    assert ok.status_code == 200
    rule = AlertRule.objects.get(run=run)
    assert rule.params == {"metrics": ["pesq"], "against": "best", "relative": 0.02, "absolute": 0.0}
    assert rule.severity == "critical"


def test_the_openapi_schema_is_served_and_lists_every_operation(researcher):
    _, token = researcher
    response = client_for(token).get("/api/v1/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    operations = {
        op["operationId"]
        for path in schema["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "operationId" in op
    }
    assert {
        "runs_create",
        "runs_list",
        "checkpoints_register",
        "checkpoints_list",
        "checkpoints_evaluate",
        "alerts_list",
        "alert_rules_replace",
        "listening_tests_create",
        "listening_tests_publish",
    } <= operations
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_a_listening_test_is_built_and_published_through_the_api_by_the_runs_token():
    world = listening_world(runs=("alpha",), n_items=3)
    run = world["checkpoints"][0].run
    from evalsite.runs.services import run_token_issue

    token = run_token_issue(run=run)
    client = client_for(token)
    bad = client.post(
        "/api/v1/listening-tests/",
        {"name": "t", "kind": "smos", "checkpoints": [{"run": run.pk, "step": 1}]},
        format="json",
    )
    assert bad.status_code == 400 and "checkpoints[0]" in bad.json()["extra"]["fields"]
    response = client.post(
        "/api/v1/listening-tests/",
        {
            "name": "smos-alpha",
            "kind": "smos",
            "checkpoints": [{"run": run.pk, "step": 77777}],
            "votes_target": 3,
            "min_listeners": 12,
            "publish": True,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "published" and "/l/i/" in body["invite_url"] and body["trials"] >= 2
    test = ListeningTest.objects.get(pk=body["id"])
    assert test.min_listeners == 12 and test.votes_target == 3
    assert client.get(f"/api/v1/listening-tests/{test.pk}/").json()["name"] == "smos-alpha"
    closed = client.post(f"/api/v1/listening-tests/{test.pk}/close/")
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert client.post(f"/api/v1/listening-tests/{test.pk}/close/").status_code == 409
    # Another run's token does not see it.
    _, other_token = run_create(name="other", kind="vocoder", model_family="hifigan")
    assert client_for(other_token).get(f"/api/v1/listening-tests/{test.pk}/").status_code == 404


def test_an_unchanged_alert_poll_is_answered_304_with_one_query_and_anything_else_falls_through(
    run_and_token, django_assert_num_queries
):
    run, token = run_and_token
    client = client_for(token)
    url = f"/api/v1/runs/{run.pk}/alerts/"
    first = client.get(url, {"after": 0, "limit": 10})
    with django_assert_num_queries(1):
        again = client.get(url, {"after": 0, "limit": 10}, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again["ETag"] == first["ETag"]
    alert_create(run=run, dedupe_key="new", kind="detector_any", severity="info", title="new")
    changed = client.get(url, {"after": 0, "limit": 10}, HTTP_IF_NONE_MATCH=first["ETag"])
    assert changed.status_code == 200 and [a["title"] for a in changed.json()["results"]] == ["new"]
    # The ETag of one query is not the ETag of another, and bad parameters still get the field error.
    assert client.get(url, {"after": 1, "limit": 10}, HTTP_IF_NONE_MATCH=changed["ETag"]).status_code == 200
    bad = client.get(url, {"after": "x"}, HTTP_IF_NONE_MATCH=changed["ETag"])
    assert bad.status_code == 400 and "after" in bad.json()["extra"]["fields"]
    # Another run's id with this token, or a wrong token, is never a 304.
    other, other_token = run_create(name="other", kind="vocoder", model_family="hifigan")
    assert client.get(f"/api/v1/runs/{other.pk}/alerts/", HTTP_IF_NONE_MATCH='"a"').status_code == 404
    stale = client_for("evr_wrong").get(url, {"after": 0, "limit": 10}, HTTP_IF_NONE_MATCH=changed["ETag"])
    assert stale.status_code == 401

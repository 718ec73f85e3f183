"""Schemathesis against the served OpenAPI schema: no 5xx, answers as documented, 4xx bodies that say why.

The schema is loaded from the app itself (``/api/v1/schema/`` through the WSGI handler) and every
operation in it is fuzzed once with a run token and once with a researcher token, so an operation
added later is fuzzed without touching this file. Path parameters mostly point at real objects of a
seeded database (a run with an eval set, checkpoints, alerts, a listening test) and otherwise at
generated ids; request bodies that name checkpoints or eval sets are partly pointed at real ones, so
the success paths run too. ``EXAMPLES`` cases per operation and principal, positive and negative
data mixed, from a fixed seed per operation and principal, without shrinking, so a run takes the
same bounded time every time; a failure prints its case as a curl command. After each operation's
cases, every row the API wrote must be one PostgreSQL would store too (the unit tests use SQLite).

Below the fuzzer, the hostile inputs it does not generate by itself (unpaired surrogates, ``1e999``,
deep nesting, integers past 64 bits, what PostgreSQL refuses but SQLite stores), each a 400 naming
the field.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from evalsite.alerts.services import alert_create
from evalsite.api.services import researcher_token_issue
from evalsite.runs.models import Checkpoint, Run
from evalsite.runs.services import run_token_issue
from evalsite.wsgi import application
from tests.factories import listening_world, make_listening_test

EXAMPLES = int(os.environ.get("EVALSITE_FUZZ_EXAMPLES") or 25)  # more for a deeper run by hand
SCHEMA = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)
OPERATIONS = {op.ok().definition.raw["operationId"]: op.ok() for op in SCHEMA.get_all_operations()}
PRINCIPALS = ("run_token", "researcher_token")


def _component(ref: str) -> dict:
    node: Any = SCHEMA.raw_schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def declared_fields(operation) -> set[str]:
    """What a field error may name: the operation's parameters, its body's properties, or the body."""
    raw = operation.definition.raw
    names = {p["name"] for p in raw.get("parameters", [])}
    # JSON bodies, and multipart ones (the listening-test import's file upload).
    for content in raw.get("requestBody", {}).get("content", {}).values():
        body = content.get("schema")
        if body:
            names |= set((_component(body["$ref"]) if "$ref" in body else body).get("properties", {}))
    return names | {"body", "query"}


FIELD_HEAD = re.compile(r"^[^.\[]+")


@schemathesis.check
def error_body_names_the_field(ctx, response, case) -> None:
    """Every 4xx is JSON ``{"message", "extra"}``; a 400 lists in ``extra.fields`` a field of the request."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), (
        f"a {response.status_code} that is not JSON: {response.text[:200]!r}"
    )
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], (
        f"a {response.status_code} without a message: {body!r}"
    )
    assert isinstance(body.get("extra"), dict), f"a {response.status_code} without extra: {body!r}"
    if response.status_code == 400:
        fields = body["extra"].get("fields")
        assert isinstance(fields, dict) and fields, f"a 400 without extra.fields: {body!r}"
        heads = {m.group(0) for name in fields if (m := FIELD_HEAD.match(name))}
        known = declared_fields(case.operation)
        assert heads & known, (
            f"a 400 naming no field of the request ({sorted(fields)}; known {sorted(known)})"
        )
    if response.status_code == 429:
        assert response.headers.get("retry-after"), "a 429 without Retry-After"
    return None


UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")  # NUL; unpaired surrogates are not UTF-8
PG_INTEGER_RANGES = {
    "SmallIntegerField": (-(2**15), 2**15 - 1),
    "PositiveSmallIntegerField": (0, 2**15 - 1),
    "IntegerField": (-(2**31), 2**31 - 1),
    "PositiveIntegerField": (0, 2**31 - 1),
}


def rows_postgresql_would_refuse() -> list[str]:
    """What SQLite stored but PostgreSQL refuses: over-long varchars, NULs in text, int4/int2 overflow,
    JSON it cannot hold. The unit tests run on SQLite; this keeps the fuzzer honest about production."""
    from django.apps import apps
    from rest_framework.exceptions import ValidationError

    from evalsite.api.fields import storable_json

    def refused(field, value) -> bool:
        kind = field.get_internal_type()
        if value is None:
            return False
        if kind in ("CharField", "TextField"):
            too_long = field.max_length and kind == "CharField" and len(value) > field.max_length
            return bool(UNSTORABLE_TEXT.search(value) or too_long)
        if kind in PG_INTEGER_RANGES:
            low, high = PG_INTEGER_RANGES[kind]
            return not low <= value <= high
        try:
            storable_json(value)
        except ValidationError:
            return True
        return False

    problems = []
    for config in apps.get_app_configs():
        if not config.name.startswith("evalsite"):
            continue
        for model in config.get_models():
            fields = [
                f
                for f in model._meta.concrete_fields
                if f.get_internal_type() in ("CharField", "TextField", "JSONField", *PG_INTEGER_RANGES)
            ]
            for row in model._default_manager.values_list("pk", *(f.attname for f in fields)):
                problems += [
                    f"{model.__name__} {row[0]}: {field.name} = {value!r:.80}"
                    for field, value in zip(fields, row[1:])
                    if refused(field, value)
                ]
    return problems


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    error_body_names_the_field,
]


@pytest.fixture
def requests_keep_the_test_transaction():
    """As Django's test client does: the end of a WSGI request must not close the test's connection."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def world(db, requests_keep_the_test_transaction, settings) -> dict[str, Any]:
    """Two runs of one owner on one eval set (outputs at step 1000), a bare step 2000, alerts, a test."""

    # ignored_auth re-sends successful requests without and with a wrong token; at the real per-IP
    # budget those probes would soon lock this client out (the budget is tested in test_security_settings).
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "anon": "100000/min"},
    }

    owner = get_user_model().objects.create_user("fuzz-owner", password="x")
    seeded = listening_world(runs=("fuzzed-run", "fuzzed-sibling"), n_items=2, seconds=0.25, step=1000)
    checkpoint, sibling = seeded["checkpoints"]
    Run.objects.filter(pk__in=[checkpoint.run_id, sibling.run_id]).update(owner=owner)
    run = Run.objects.get(pk=checkpoint.run_id)
    bare = Checkpoint.objects.create(run=run, step=2000, uri="/ckpt/fuzzed-run/g_00002000")
    for i in range(3):
        alert_create(
            run=run,
            checkpoint=checkpoint,
            dedupe_key=f"seed{i}",
            kind="metric_regression",
            severity="warning",
            title=f"seeded alert {i}",
        )
    test = make_listening_test(name="fuzzed-test", kind="mos", checkpoints=[checkpoint], owner=owner)
    return {
        "run": run,
        "steps": [checkpoint.step, bare.step],
        "test": test,
        "eval_set": seeded["eval_set"].name,
        "item_keys": [item.key for item in seeded["items"]],
        "refs": {
            "run_token": [{"run": run.pk, "step": 1000}, {"run": run.pk, "step": 2000}],
            "researcher_token": [
                {"run": run.pk, "step": 1000},
                {"run": sibling.run_id, "step": 1000},
                {"run": run.pk, "step": 2000},
            ],
        },
        "run_token": run_token_issue(run=run),
        "researcher_token": researcher_token_issue(user=owner),
    }


def real_path_parameters(operation, world: dict[str, Any]) -> list[dict[str, Any]]:
    names = {p["name"] for p in operation.definition.raw.get("parameters", []) if p["in"] == "path"}
    choices: list[dict[str, Any]] = [{}]
    if "run_id" in names:
        choices = [{"run_id": world["run"].pk}]
    if "step" in names:
        choices = [{**c, "step": step} for c in choices for step in world["steps"]]
    if "test_id" in names:
        choices = [{**c, "test_id": world["test"].pk} for c in choices]
    return choices


def pointed_at_real_objects(case, world: dict[str, Any], principal: str):
    """The generated body with its references to checkpoints, items and eval sets made real (varied
    by the generated values, so the builder's own refusals are reached as well as its successes)."""
    body = case.body
    if not isinstance(body, dict):
        return case
    refs = world["refs"][principal]
    if isinstance(body.get("checkpoints"), list):
        body["checkpoints"] = [refs[i % len(refs)] for i in range(1 + len(body["checkpoints"]) % len(refs))]
    if isinstance(body.get("comparison"), dict):
        body["comparison"] = refs[len(body["comparison"]) % len(refs)]
    if isinstance(body.get("items"), list):
        body["items"] = world["item_keys"][: len(body["items"]) % 3 + 1]
    if body.get("allow_no_preference") and body.get("kind") != "ab":
        body["allow_no_preference"] = False
    if isinstance(body.get("eval_set"), str):
        body["eval_set"] = world["eval_set"]
    return case


def cases_for(operation, world: dict[str, Any], principal: str):
    strategies = [
        operation.as_strategy(mode, path_parameters=params)
        for params in real_path_parameters(operation, world)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    strategies.append(operation.as_strategy(GenerationMode.POSITIVE))  # ids of nothing, or of another's
    if operation.definition.raw.get("requestBody"):
        params = real_path_parameters(operation, world)[0]
        strategies.append(
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=params).map(
                lambda case: pointed_at_real_objects(case, world, principal)
            )
        )
    return st.one_of(*strategies)


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("operation_id", sorted(OPERATIONS))
def test_every_operation_survives_fuzzing_and_answers_as_documented(operation_id, principal, world, request):
    operation = OPERATIONS[operation_id]
    headers = {"Authorization": f"Bearer {world[principal]}"}
    statuses: list[int] = []

    @given(case=cases_for(operation, world, principal))
    @seed(
        zlib.crc32(f"{operation_id} {principal}".encode())
    )  # fixed, and not the same cases for both principals
    @hypothesis_settings(
        max_examples=EXAMPLES,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        statuses.append(response.status_code)

    fuzz()
    assert rows_postgresql_would_refuse() == []
    # In the JUnit XML (--junitxml) as properties: how many cases ran and what they got.
    counts = {code: statuses.count(code) for code in sorted(set(statuses))}
    request.node.user_properties += [("fuzz_cases", len(statuses)), ("fuzz_statuses", json.dumps(counts))]
    # Hypothesis stops early only when it has tried every case there is (an operation without inputs).
    has_inputs = bool(
        operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody")
    )
    assert len(statuses) >= (EXAMPLES if has_inputs else 1), f"{operation_id}: only {len(statuses)} cases ran"


def test_the_fuzzed_schema_has_every_api_route():
    from evalsite.api.urls import urlpatterns

    routes = {str(p.pattern) for p in urlpatterns if p.name not in ("schema", "docs", "not-found")}
    paths = {
        re.sub(r"\{(\w+)\}", r"<int:\1>", p.removeprefix("/api/v1/")) for p in SCHEMA.raw_schema["paths"]
    }
    assert paths == routes
    assert len(OPERATIONS) >= 16 and set(OPERATIONS) >= {
        "runs_create",
        "checkpoints_register",
        "alerts_list",
        "listening_tests_create",
        "listening_tests_publish",
    }


# ---------------------------------------------------------------------------------------------
# Hostile inputs the generator does not produce, found by hand around the fuzzer's findings.


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


RUN = '"name": "hostile", "kind": "vocoder", "model_family": "hifigan"'
TEST = '"name": "hostile", "kind": "mos", "checkpoints": [{"run": <run>, "step": 1000}]'
HOSTILE = [
    # (principal, method, path, raw JSON body, the field a 400 must name)
    ("researcher_token", "post", "/api/v1/runs/", "[" * 100_000 + "]" * 100_000, "body"),
    (
        "researcher_token",
        "post",
        "/api/v1/runs/",
        '{"name": "a", "kind": "\\udc00", "model_family": "x"}',
        "kind",
    ),
    ("researcher_token", "post", "/api/v1/runs/", "{" + RUN + ', "config": {"k": "\\udc00"}}', "config.k"),
    (
        "researcher_token",
        "post",
        "/api/v1/runs/",
        "{" + RUN + ', "config": {"k\\u0000": 1}}',
        "config.k\\x00",
    ),
    (
        "researcher_token",
        "post",
        "/api/v1/runs/",
        "{" + RUN + ', "config": {"k": ["a\\u0000"]}}',
        "config.k[0]",
    ),
    ("researcher_token", "post", "/api/v1/runs/", "{" + RUN + ', "config": {"lr": 1e999}}', "config.lr"),
    (
        "researcher_token",
        "post",
        "/api/v1/runs/",
        "{" + RUN + ', "config": {"n": 1' + "0" * 30 + "}}",
        "config.n",
    ),
    (
        "researcher_token",
        "post",
        "/api/v1/runs/",
        "{" + RUN + ', "config": ' + '{"a": ' * 40 + "1" + "}" * 41,
        "config.a.a.a",
    ),
    (
        "researcher_token",
        "post",
        "/api/v1/runs/",
        "{" + RUN + ', "model_family": "a\\u0000"}',
        "model_family",
    ),
    ("researcher_token", "post", "/api/v1/runs/", "null", "body"),
    ("researcher_token", "post", "/api/v1/runs/", "[1, 2]", "body"),
    ("run_token", "patch", "/api/v1/runs/<run>/", '{"config": {"k": "\\ud800x"}}', "config.k"),
    (
        "run_token",
        "post",
        "/api/v1/runs/<run>/checkpoints/",
        '{"step": 18446744073709551616, "uri": "/x"}',
        "step",
    ),
    ("run_token", "post", "/api/v1/runs/<run>/checkpoints/", '{"step": 5, "uri": "/x\\u0000"}', "uri"),
    (
        "run_token",
        "post",
        "/api/v1/runs/<run>/checkpoints/2000/evaluate/",
        '{"params": {"seed": 1' + "0" * 25 + "}}",
        "params.seed",
    ),
    (
        "run_token",
        "put",
        "/api/v1/runs/<run>/alert-rules/",
        '{"rules": [{"kind": "metric_regression", "params": {"metrics": ["pe\\u0000sq"]}}]}',
        "rules[0].params.metrics[0]",
    ),
    (
        "run_token",
        "put",
        "/api/v1/runs/<run>/alert-rules/",
        '{"rules": [{"kind": "metric_regression", "params": {"relative": 1e400}}]}',
        "rules[0].params.relative",
    ),
    (
        "run_token",
        "post",
        "/api/v1/listening-tests/",
        "{" + TEST + ', "trials_per_participant": 2147483648}',
        "trials_per_participant",
    ),
    ("run_token", "post", "/api/v1/listening-tests/", "{" + TEST + ', "kind": "ab"}', "checkpoints"),
    (
        "run_token",
        "post",
        "/api/v1/listening-tests/",
        "{" + TEST + ', "allow_no_preference": true}',
        "allow_no_preference",
    ),
    (
        "run_token",
        "post",
        "/api/v1/listening-tests/",
        "{" + TEST + ', "kind": "cmos", "comparison": {"run": <run>, "step": 1000}}',
        "comparison",
    ),
    ("run_token", "get", "/api/v1/runs/<run>/alerts/?after=1%00", "", "after"),
]


@pytest.mark.parametrize(
    "principal,method,path,raw,field", HOSTILE, ids=[f"{i}-{h[4]}" for i, h in enumerate(HOSTILE)]
)
def test_hostile_input_is_a_400_naming_the_field(world, principal, method, path, raw, field):
    client = _client(world[principal])
    path, raw = (text.replace("<run>", str(world["run"].pk)) for text in (path, raw))
    if method == "get":
        response = client.get(path)
    else:
        response = getattr(client, method)(path, raw.encode(), content_type="application/json")
    body = response.json()
    assert response.status_code == 400, body
    assert any(
        name == field or name.startswith((f"{field}.", f"{field}[")) for name in body["extra"]["fields"]
    ), body
    response.content.decode("utf-8")  # nothing unencodable was echoed (it was a 500 before)


def test_a_test_of_a_run_with_the_longest_allowed_name_can_be_stored_by_postgresql(world):
    longest = "r" * 200
    Run.objects.filter(pk=world["run"].pk).update(name=longest)
    response = _client(world["run_token"]).post(
        "/api/v1/listening-tests/",
        {"name": "longest", "kind": "mos", "checkpoints": [{"run": world["run"].pk, "step": 1000}]},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert rows_postgresql_would_refuse() == []


def test_non_json_404s_and_a_post_to_an_unknown_url_get_the_error_body(world):
    for method, path in [
        ("get", "/api/v1/runs/-1/"),
        ("post", "/api/v1/runs/-1/checkpoints/"),
        ("get", "/api/v1/nothing-here/"),
        ("get", "/api/v1/"),
    ]:
        response = getattr(_client(world["run_token"]), method)(path)
        assert response.status_code == 404 and response["Content-Type"] == "application/json", path
        assert response.json()["message"].startswith("No API endpoint at")
    # Without the slash the usual redirect to the slashed URL still comes first.
    assert _client(world["run_token"]).get(f"/api/v1/runs/{world['run'].pk}").status_code == 301

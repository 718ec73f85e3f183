"""CSRF on every state-changing request a browser can make (SQLite, Django test client).

Every URL pattern of the URL conf is found by walking it (``get_resolver()``), none listed by hand,
and called with a valid researcher session and listener cookie: every unsafe method without a CSRF
token must be refused (403, saying CSRF) and change nothing in the database; with the token it must
not be refused, and for the writes in ``CASES`` it must write. A pattern with no way to call it
here fails the test, so a new form cannot escape. Bearer-token API calls need no CSRF token.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core import signing
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from evalsite.api.services import researcher_token_issue
from evalsite.listening import services, views
from evalsite.listening.models import ListeningTest, Participant
from evalsite.listening.questionnaire import questionnaire_parse
from evalsite.listening.selectors import headphone_trials, listener_state
from evalsite.runs.models import Run
from tests.factories import hear, listening_world, make_listening_test

pytestmark = pytest.mark.django_db

UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
CSRF_SECRET = "Zq8csrfSecretForTheseTests0wXy12"  # 32 characters, as Django's cookie holds
PASSWORD = "a-researcher-password-1"


@dataclass
class World:
    user: object
    run: Run
    checkpoints: list  # with an output for every item
    mushra: ListeningTest
    listener: Participant  # of the MUSHRA test, no checks before the trials
    checked: Participant  # of a test with the headphone check
    draft: ListeningTest  # published through the API
    form_draft: ListeningTest  # published through the researcher's page
    closable: ListeningTest
    state: dict = field(default_factory=dict)


@pytest.fixture
def world() -> World:
    w = listening_world()
    user = get_user_model().objects.create_superuser("root", password=PASSWORD)
    cps = w["checkpoints"]

    def published(name, kind, **kw):
        return services.listening_test_publish(
            test=make_listening_test(name=name, kind=kind, checkpoints=cps, seed=3, votes_target=100, **kw)
        )

    mushra = published("csrf-mushra", "mushra")
    checked = published("csrf-checked", "mos", headphone_check=True)
    listener = services.participant_join(test=mushra)
    return World(
        user=user,
        run=cps[0].run,
        checkpoints=cps,
        mushra=mushra,
        listener=listener,
        checked=services.participant_join(test=checked),
        draft=make_listening_test(name="csrf-draft", kind="mos", checkpoints=cps, seed=3),
        form_draft=make_listening_test(name="csrf-form-draft", kind="mos", checkpoints=cps, seed=3),
        closable=published("csrf-closable", "mos"),
        state=listener_state(listener),
    )


# ---------------------------------------------------------------------------------------------
# How to call each URL pattern


@dataclass
class Case:
    """How to call one URL pattern: its URL arguments, a body for the with-token request (a form's
    fields or JSON), the method that writes, and whether that request must change the database.
    ``forged`` and ``forged_kwargs`` are the body and URL arguments of the requests without a token,
    where they differ."""

    kwargs: Callable[[World], dict] = lambda w: {}
    body: Callable[[World], dict] | None = None
    forged: Callable[[World], dict] | None = None
    forged_kwargs: Callable[[World], dict] | None = None
    form: bool = False
    method: str = "POST"
    writes: bool = False
    setup: Callable[[World], None] | None = None
    without_token: int = 403  # what an unsafe request without the token gets


def _trial(w: World, n: int = 0) -> dict:
    return w.state["trials"][n]


def _rated_second_trial(w: World) -> None:
    trial = _trial(w, 1)
    for stim in trial["stimuli"]:
        services.rating_submit(
            participant=w.listener,
            trial=trial["id"],
            stimulus=stim["id"],
            score=50,
            request_id=f"setup-{stim['id']}",
        )


def _calibrated(w: World) -> None:
    if w.checked.calibrated_at is None:
        hear(w.checked)
        w.checked = services.calibration_confirm(participant=w.checked, plays=1)


def _import_form(name: str) -> dict:
    """A small valid long-CSV import (a fresh file each time: an upload is read once)."""
    rows = "".join(
        f"L{k},utt{j},sys{s},{1 + (k + j + s) % 5}\n" for k in range(2) for j in range(2) for s in range(2)
    )
    data = ("listener,item,system,score\n" + rows).encode()
    return {
        "file": SimpleUploadedFile("ratings.csv", data, content_type="text/csv"),
        "format": "long_csv",
        "kind": "mos",
        "name": name,
        "comparison": "reference",
    }


def _pre_questionnaire(w: World) -> None:
    test = w.listener.test
    test.questionnaire = questionnaire_parse({"pre": ["age_band"]}).as_stored()
    test.save(update_fields=["questionnaire"])


P = lambda w: {"ptoken": w.listener.token}  # noqa: E731 - the listener's URL argument
H = lambda w: {"ptoken": w.checked.token}  # noqa: E731

CASES: dict[str, Case] = {
    "healthz": Case(),
    "favicon": Case(),
    "media": Case(kwargs=lambda w: {"path": w.checkpoints[0].generations.first().asset.file.name}),
    "login": Case(body=lambda w: {"username": "root", "password": PASSWORD}, form=True),
    "logout": Case(form=True),
    "runs:overview": Case(),
    "runs:evalset-detail": Case(kwargs=lambda w: {"pk": w.run.eval_set_id}),
    "runs:run-detail": Case(kwargs=lambda w: {"pk": w.run.pk}),
    # The API takes a browser's session too; DRF checks CSRF for it (a bearer token needs none).
    "api:schema": Case(),
    # Reads no session or token (the same page for everyone): a write is simply not allowed.
    "api:docs": Case(without_token=405),
    "api:eval-sets": Case(),
    "api:runs": Case(
        body=lambda w: {"name": "csrf-made-run", "kind": "vocoder", "model_family": "hifigan"}, writes=True
    ),
    "api:run": Case(
        kwargs=lambda w: {"run_id": w.run.pk},
        body=lambda w: {"checkpoint_dir": "/ckpt/csrf"},
        method="PATCH",
        writes=True,
    ),
    "api:checkpoints": Case(
        kwargs=lambda w: {"run_id": w.run.pk}, body=lambda w: {"step": 5, "uri": "/c/g_5.pt"}, writes=True
    ),
    "api:checkpoint": Case(kwargs=lambda w: {"run_id": w.run.pk, "step": w.checkpoints[0].step}),
    "api:checkpoint-evaluate": Case(
        kwargs=lambda w: {"run_id": w.run.pk, "step": w.checkpoints[0].step}, body=lambda w: {}
    ),
    "api:alerts": Case(kwargs=lambda w: {"run_id": w.run.pk}),
    "api:alert-rules": Case(kwargs=lambda w: {"run_id": w.run.pk}, body=lambda w: {}, method="PUT"),
    "api:listening-tests": Case(
        body=lambda w: {
            "name": "csrf-api-test",
            "kind": "mos",
            "checkpoints": [{"run": w.run.pk, "step": w.checkpoints[0].step}],
        },
        writes=True,
    ),
    "api:listening-test": Case(kwargs=lambda w: {"test_id": w.mushra.pk}),
    "api:listening-test-publish": Case(
        kwargs=lambda w: {"test_id": w.draft.pk}, body=lambda w: {}, writes=True
    ),
    "api:listening-test-close": Case(
        kwargs=lambda w: {"test_id": w.closable.pk}, body=lambda w: {}, writes=True
    ),
    "api:listening-test-results": Case(kwargs=lambda w: {"test_id": w.mushra.pk}),
    # The two import entry points take a multipart upload, as a browser's form sends it.
    "api:listening-test-import": Case(
        body=lambda w: _import_form("csrf-api-import"),
        forged=lambda w: _import_form("csrf-api-import"),
        form=True,
        writes=True,
    ),
    # csrf_exempt, but it only answers "no such endpoint" (404) to every method and writes nothing.
    "api:not-found": Case(kwargs=lambda w: {"path": "no-such-endpoint/"}, without_token=404),
    "analysis:run-analysis": Case(kwargs=lambda w: {"pk": w.run.pk}),
    "analysis:checkpoint-compare": Case(),
    "analysis:test-results": Case(kwargs=lambda w: {"pk": w.mushra.pk}),
    "analysis:test-report": Case(kwargs=lambda w: {"pk": w.mushra.pk}),
    "analysis:test-export": Case(kwargs=lambda w: {"pk": w.mushra.pk, "table": "ratings", "fmt": "csv"}),
    # Listener pages: the consent form, and the page's JSON posts.
    "listening:invite": Case(
        kwargs=lambda w: {"invite_token": w.mushra.invite_token}, body=lambda w: {}, form=True, writes=True
    ),
    "listening:session": Case(kwargs=P),
    "listening:state": Case(kwargs=P),
    "listening:rate": Case(
        kwargs=P,
        body=lambda w: {
            "trial": _trial(w)["id"],
            "stimulus": _trial(w)["stimuli"][1]["id"],
            "score": 70,
            "request_id": "csrf-rate",
        },
        writes=True,
    ),
    "listening:flag": Case(
        kwargs=P,
        body=lambda w: {
            "trial": _trial(w)["id"],
            "stimulus": _trial(w)["stimuli"][0]["id"],
            "start": 0.1,
            "end": 0.2,
            "category": "click",
            "request_id": "csrf-flag",
        },
        writes=True,
    ),
    "listening:complete": Case(
        kwargs=P, body=lambda w: {"trial": _trial(w, 1)["id"]}, setup=_rated_second_trial, writes=True
    ),
    "listening:telemetry": Case(
        kwargs=P,
        body=lambda w: {
            "trial": _trial(w)["id"],
            "events": [{"t": 1, "type": "play", "stimulus": None, "pos": 0}],
        },
        writes=True,
    ),
    "listening:audio": Case(kwargs=lambda w: {**P(w), "token": _trial(w)["stimuli"][0]["id"]}),
    "listening:reference-audio": Case(kwargs=lambda w: {**P(w), "token": _trial(w)["id"]}),
    "listening:calibration": Case(
        kwargs=H, body=lambda w: {"plays": 2}, writes=True, setup=lambda w: hear(w.checked)
    ),
    "listening:questionnaire": Case(
        kwargs=lambda w: {**P(w), "stage": "pre"},
        body=lambda w: {"answers": {"age_band": "25-34"}},
        setup=_pre_questionnaire,
        writes=True,
    ),
    "listening:calibration-audio": Case(kwargs=H),
    "listening:headphone": Case(
        kwargs=H,
        setup=_calibrated,
        writes=True,
        body=lambda w: {"answers": [t["answer"] for t in headphone_trials(w.checked)]},
    ),
    "listening:headphone-audio": Case(
        kwargs=lambda w: {**H(w), "token": headphone_trials(w.checked)[0]["token"]}
    ),
    # Researcher pages.
    "listening-admin:list": Case(),
    "listening-admin:build": Case(
        body=lambda w: {
            "name": "csrf-form-test",
            "kind": "mos",
            "checkpoints": [c.pk for c in w.checkpoints],
            "title": "t",
            "training_items": 0,
            "votes_target": 3,
        },
        form=True,
        writes=True,
    ),
    "listening-admin:detail": Case(kwargs=lambda w: {"pk": w.mushra.pk}),
    "listening-admin:preview": Case(kwargs=lambda w: {"pk": w.mushra.pk, "index": 0}),
    # Starting a listener preview keeps it in the researcher's session only: no row of the site's.
    "listening-admin:listener-preview": Case(
        kwargs=lambda w: {"pk": w.mushra.pk}, body=lambda w: {}, form=True
    ),
    "listening-admin:import": Case(
        body=lambda w: _import_form("csrf-form-import"),
        forged=lambda w: _import_form("csrf-form-import"),
        form=True,
        writes=True,
    ),
    "listening-admin:transition": Case(
        kwargs=lambda w: {"pk": w.form_draft.pk, "action": "publish"}, form=True, writes=True
    ),
}

ADMIN_SITE = {
    "admin:index",
    "admin:login",
    "admin:logout",
    "admin:password_change",
    "admin:password_change_done",
    "admin:autocomplete",
    "admin:jsi18n",
}
ADMIN_MODEL = re.compile(r"^admin:(?P<model>\w+)_(?P<action>changelist|add|change|delete|history)$")


def admin_models() -> dict[str, type]:
    return {f"{m._meta.app_label}_{m._meta.model_name}": m for m in admin.site._registry}


def some_pk(model) -> str:
    # An existing object where there is one; the CSRF check comes before the admin looks it up.
    pk = model._default_manager.values_list("pk", flat=True).first()
    return str(pk if pk is not None else 987654)


def admin_case(key: str, route: str) -> Case | None:
    """The admin's URLs follow its own scheme: one rule per kind of page instead of one row per model."""
    if key in ADMIN_SITE:
        return Case(form=True)
    if key == "admin:app_list":
        return Case(kwargs=lambda w: {"app_label": "listening"}, form=True)
    if key == "admin:view_on_site":
        return Case(
            kwargs=lambda w: {
                "content_type_id": ContentType.objects.get_for_model(ListeningTest).pk,
                "object_id": w.mushra.pk,
            },
            form=True,
        )
    if key == "admin:auth_user_password_change":
        return Case(kwargs=lambda w: {"id": w.user.pk}, form=True)
    match = ADMIN_MODEL.match(key)
    if match and match["model"] in admin_models():
        model = admin_models()[match["model"]]
        needs_object = match["action"] in ("change", "delete", "history")
        existing = (lambda w: {"object_id": some_pk(model)}) if needs_object else (lambda w: {})
        if match["action"] != "delete":
            return Case(kwargs=existing, form=True)
        # Without the token, an existing row's delete form posted confirmed: were it accepted, the row
        # would go. With it (any post deletes), a row that does not exist, so the others' objects stay.
        return Case(
            kwargs=lambda w: {"object_id": "987654"},
            forged_kwargs=existing,
            forged=lambda w: {"post": "yes"},
            form=True,
        )
    unnamed = re.fullmatch(r"admin/(\w+)/(\w+)/<path:object_id>/", route)
    if unnamed and f"{unnamed[1]}_{unnamed[2]}" in admin_models():
        model = admin_models()[f"{unnamed[1]}_{unnamed[2]}"]
        return Case(
            kwargs=lambda w: {"url": f"/admin/{unnamed[1]}/{unnamed[2]}/{some_pk(model)}/"}, form=True
        )
    if route == "admin/(?P<url>.*)$":
        return Case(kwargs=lambda w: {"url": "/admin/no-such-page/"}, form=True)
    return None


# ---------------------------------------------------------------------------------------------
# The walk


@dataclass(frozen=True)
class Found:
    key: str  # "namespace:name", or "namespace:<route>" for an unnamed pattern
    route: str
    callback: Callable


def url_patterns(patterns=None, prefix: str = "", namespace: str = "") -> list[Found]:
    found = []
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            ns = ":".join(filter(None, [namespace, p.namespace]))
            found += url_patterns(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            route = prefix + str(p.pattern)
            name = p.name or f"<{route}>"
            found.append(Found(f"{namespace}:{name}" if namespace else name, route, p.callback))
    return found


def case_for(found: Found) -> Case | None:
    if found.key in CASES:
        return CASES[found.key]
    return admin_case(found.key, found.route) if found.route.startswith("admin/") else None


def url_of(found: Found, kwargs: dict) -> str:
    if "url" in kwargs:  # an unnamed pattern: the URL as given
        return kwargs["url"]
    return reverse(found.key, kwargs=kwargs)


def database_fingerprint() -> str:
    """Every row of every table: two equal fingerprints mean nothing was written in between."""
    digest = hashlib.sha256()
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names(cursor)):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            digest.update(table.encode() + repr(sorted(map(repr, cursor.fetchall()))).encode())
    return digest.hexdigest()


def browser(w: World, kwargs: dict) -> Client:
    """A researcher's browser, signed in, that also joined as the listener its URL names (if any)."""
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.force_login(w.user)
    client.cookies["csrftoken"] = CSRF_SECRET
    if "ptoken" in kwargs:
        signer = signing.get_cookie_signer(salt=views.COOKIE + views.COOKIE_SALT)
        client.cookies[views.COOKIE] = signer.sign(kwargs["ptoken"])
    return client


def send(client: Client, method: str, url: str, case: Case, body: dict | None, token: str | None):
    response = _send(client, method, url, case, body, token)
    response.close()  # a sound is streamed from its file
    return response


def _send(client: Client, method: str, url: str, case: Case, body: dict | None, token: str | None):
    headers = {"HTTP_ACCEPT": "application/json"}
    if case.form:
        data = {**(body or {}), **({"csrfmiddlewaretoken": token} if token else {})}
        if method == "POST":
            return client.post(url, data, **headers)
        # PUT/PATCH/DELETE of a form as a forging page could send them: JSON, without the uploads.
        fields = {k: v for k, v in data.items() if not hasattr(v, "read")}
        return client.generic(method, url, json.dumps(fields), content_type="application/json", **headers)
    if token:
        headers["HTTP_X_CSRFTOKEN"] = token
    return client.generic(method, url, json.dumps(body or {}), content_type="application/json", **headers)


def says_csrf(response) -> bool:
    return not response.streaming and b"CSRF" in response.content


def shown(response) -> str:
    return "<streamed>" if response.streaming else repr(response.content[:200])


def test_every_unsafe_request_a_browser_can_make_needs_the_csrf_token(world):
    found = url_patterns()
    uncovered = [f.key for f in found if case_for(f) is None]
    assert uncovered == [], (
        "URL patterns with no way to call them in tests/site/test_csrf.py (add a Case, so that "
        f"their CSRF protection is tested): {uncovered}"
    )
    unused = set(CASES) - {f.key for f in found}
    assert unused == set(), f"cases for URL patterns that no longer exist: {sorted(unused)}"

    problems, requests, writes = [], 0, 0
    for f in found:
        case = case_for(f)
        if case.setup:
            case.setup(world)
        kwargs = case.kwargs(world)
        url = url_of(f, kwargs)
        body = case.body(world) if case.body else None
        forged = case.forged(world) if case.forged else body
        forged_kwargs = case.forged_kwargs(world) if case.forged_kwargs else kwargs
        forged_url = url_of(f, forged_kwargs)
        # Without a token (the cookie is there, as a forging page would have the browser send it), and
        # with a wrong one: refused, and nothing written.
        attempts = [(method, None) for method in UNSAFE] + [("POST", "Wr0ngWr0ngWr0ngWr0ngWr0ngWr0ng12")]
        for method, token in attempts:
            client = browser(world, forged_kwargs)
            before = database_fingerprint()
            response = send(client, method, forged_url, case, forged, token)
            requests += 1
            if response.status_code != case.without_token or (
                case.without_token == 403 and not says_csrf(response)
            ):
                problems.append(
                    f"{method} {forged_url} ({f.key}) without a valid CSRF token: {response.status_code} "
                    f"{shown(response)}"
                )
            if database_fingerprint() != before:
                problems.append(
                    f"{method} {forged_url} ({f.key}) without a valid CSRF token changed the database"
                )
        # With the token: not refused; the writes in CASES write.
        client = browser(world, kwargs)
        before = database_fingerprint()
        response = send(client, case.method, url, case, body, CSRF_SECRET)
        requests += 1
        refused = response.status_code == 403 and says_csrf(
            response
        )  # a 403 for a missing permission is fine
        if refused or response.status_code >= 500 or (case.writes and response.status_code >= 400):
            problems.append(
                f"{case.method} {url} ({f.key}) with the CSRF token: {response.status_code} {shown(response)}"
            )
        if case.writes:
            writes += 1
            if database_fingerprint() == before:
                problems.append(f"{case.method} {url} ({f.key}) with the CSRF token wrote nothing")
    assert problems == [], "\n".join(problems)
    assert len(found) > 150 and writes >= 15 and requests == 6 * len(found)


def test_the_api_with_a_bearer_token_needs_no_csrf_token_and_a_session_does(world):
    token = researcher_token_issue(user=world.user)
    bearer = APIClient(enforce_csrf_checks=True)
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    made = bearer.post(
        "/api/v1/runs/", {"name": "bearer-run", "kind": "vocoder", "model_family": "hifigan"}, format="json"
    )
    assert made.status_code == 201 and Run.objects.filter(name="bearer-run").exists()
    published = bearer.post(f"/api/v1/listening-tests/{world.draft.pk}/publish/", {}, format="json")
    assert published.status_code == 200
    assert ListeningTest.objects.get(pk=world.draft.pk).status == "published"
    # The same request from a signed-in browser without the token is refused, and says why.
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(world.user)
    refused = session.post(
        "/api/v1/runs/", {"name": "session-run", "kind": "vocoder", "model_family": "x"}, format="json"
    )
    assert refused.status_code == 403 and refused.json()["message"].startswith("CSRF Failed")
    assert not Run.objects.filter(name="session-run").exists()


def test_a_listener_request_refused_for_csrf_gets_the_json_error_the_page_shows_and_a_form_gets_the_html_page(
    world,
):
    listener = Client(enforce_csrf_checks=True)
    listener.cookies["csrftoken"] = CSRF_SECRET
    test = world.mushra
    assert (
        listener.post(f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": CSRF_SECRET}).status_code == 302
    )
    ptoken = Participant.objects.filter(test=test).latest("pk").token
    refused = listener.post(
        f"/l/p/{ptoken}/complete", json.dumps({"trial": "x"}), content_type="application/json"
    )
    assert refused.status_code == 403 and refused["Content-Type"] == "application/json"
    body = refused.json()
    assert body["extra"] == {"fields": {"csrf": [body["message"]]}} and "CSRF check failed" in body["message"]
    assert "Reload the page" in body["message"]
    form = Client(enforce_csrf_checks=True).post(f"/l/i/{test.invite_token}/", {})
    assert (
        form.status_code == 403 and form["Content-Type"].startswith("text/html") and b"CSRF" in form.content
    )

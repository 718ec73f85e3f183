"""Who may reach what: every URL the site serves × seven kinds of caller, each cell written down.

The URL conf is walked (nothing is hand-listed), so a new URL fails ``test_every_url_has_a_row`` until
someone decides who may reach it. The callers:

- ``anonymous``: a browser with no cookie;
- ``listener_a`` / ``listener_b``: browsers that joined published test A / test B through the invite link;
- ``researcher_out``: signed in, owns run S but may not see run R;
- ``researcher_in``: signed in, a collaborator on run R (not its owner, so the collaborator path is tested);
- ``token_r`` / ``token_s``: the API tokens of run R / run S (Bearer header, no cookie).

Every URL is built for the objects of run R and test A (test A rates run R's checkpoint, test B run S's),
with listener A's participant token and sound tokens. A cell is the status expected for GET, then for
POST (and, for anyone who may not read a URL, PUT/PATCH/DELETE are refused too). A refused request
must change nothing in the database, and nothing a caller without access to run R receives may name it.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern
from django.utils import timezone

from evalsite.listening import services
from evalsite.listening.models import Participant, Rating, StimulusHandle
from evalsite.listening.selectors import headphone_trials, listener_state
from evalsite.runs.services import run_token_issue
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db

PRINCIPALS = (
    "anonymous",
    "listener_a",
    "listener_b",
    "researcher_out",
    "researcher_in",
    "token_r",
    "token_s",
)
RUN_R, RUN_S = "matrix-run-r-5e0c2a", "matrix-run-s-91d7b4"
TEST_A, TEST_B = "matrix-test-a-3f8e61", "matrix-test-b-c04d17"
REFUSED = {302, 401, 403, 404, 405}


def row(*statuses):
    """Expected statuses in PRINCIPALS order; None: not sent (an allowed write, covered by the feature tests)."""
    assert len(statuses) == len(PRINCIPALS)
    return dict(zip(PRINCIPALS, statuses))


#                               anon listA listB  r_out r_in  tok_r tok_s
PUBLIC = row(200, 200, 200, 200, 200, 200, 200)
RESEARCHER_PAGE = row(302, 302, 302, 200, 200, 302, 302)  # any signed-in researcher
PAGE_OF_R = row(302, 302, 302, 404, 200, 302, 302)  # a page of run R or test A
LISTENER_A = row(404, 200, 404, 404, 404, 404, 404)  # listener A's own session
NOT_A_GET = row(405, 405, 405, 405, 405, 405, 405)
API_OF_R = row(401, 401, 401, 404, 200, 200, 404)
API_ANY = row(401, 401, 401, 200, 200, 200, 200)
API_NOT_A_GET = row(401, 401, 401, 405, 405, 405, 405)
ADMIN = row(302, 302, 302, 302, 302, 302, 302)  # nobody here is staff
NOT_FOUND = row(404, 404, 404, 404, 404, 404, 404)

# Writes. None where the caller is allowed (the write itself is tested in test_api, test_listening...).
POST_PAGE_OF_R = row(302, 302, 302, 404, None, 302, 302)
POST_RESEARCHER = row(302, 302, 302, None, None, 302, 302)
POST_LISTENER_A = row(404, None, 404, 404, 404, 404, 404)
POST_API_OF_R = row(401, 401, 401, 404, None, None, 404)
POST_API_RESEARCHER = row(401, 401, 401, None, None, 403, 403)  # a run token cannot create runs/tests
NOT_A_POST = row(405, 405, 405, 405, 405, 405, 405)
POST_GET_ONLY_PAGE = row(302, 302, 302, 405, 405, 302, 302)  # sign-in is checked before the method
API_NOT_A_POST = row(401, 401, 401, 405, 405, 405, 405)

# name (or route, for unnamed patterns) -> (GET, POST). Admin URLs are one rule, below.
TABLE = {
    "healthz": (PUBLIC, NOT_A_POST),
    "favicon": (row(301, 301, 301, 301, 301, 301, 301), NOT_A_POST),  # to the static icon
    # Run R's generated audio: its researchers and token only; everyone else "not found", as for a missing file.
    "media": (row(404, 404, 404, 404, 200, 200, 404), NOT_A_POST),
    # A signed-in researcher is sent on from the sign-in page; signing in itself is a form (test_csrf).
    "login": (row(200, 200, 200, 302, 302, 200, 200), row(200, 200, 200, 302, 302, 200, 200)),
    "logout": (NOT_A_GET, row(302, 302, 302, None, None, 302, 302)),
    "api:schema": (PUBLIC, NOT_A_POST),  # the API's description; it names no run
    "api:docs": (PUBLIC, NOT_A_POST),  # the same description, readable (Swagger UI)
    "api:eval-sets": (row(401, 401, 401, 200, 200, 403, 403), API_NOT_A_POST),  # researchers' only
    "api:runs": (API_ANY, POST_API_RESEARCHER),
    "api:run": (API_OF_R, API_NOT_A_POST),
    "api:checkpoints": (API_OF_R, POST_API_OF_R),
    "api:checkpoint": (API_OF_R, API_NOT_A_POST),
    "api:checkpoint-evaluate": (API_NOT_A_GET, POST_API_OF_R),
    "api:alerts": (API_OF_R, API_NOT_A_POST),
    "api:alert-rules": (API_OF_R, API_NOT_A_POST),
    # A run token may build a test of its own run's checkpoints (the automatic listening test does).
    "api:listening-tests": (API_NOT_A_GET, row(401, 401, 401, None, None, None, None)),
    # Importing a test run elsewhere is a researcher's (their own new test); a run token may not.
    "api:listening-test-import": (API_NOT_A_GET, POST_API_RESEARCHER),
    "api:listening-test": (API_OF_R, API_NOT_A_POST),
    "api:listening-test-publish": (API_NOT_A_GET, POST_API_OF_R),
    "api:listening-test-close": (API_NOT_A_GET, POST_API_OF_R),
    "api:listening-test-results": (API_OF_R, API_NOT_A_POST),
    "api:not-found": (NOT_FOUND, NOT_FOUND),
    "analysis:run-analysis": (PAGE_OF_R, POST_GET_ONLY_PAGE),
    "analysis:checkpoint-compare": (RESEARCHER_PAGE, POST_GET_ONLY_PAGE),
    "analysis:test-results": (PAGE_OF_R, POST_GET_ONLY_PAGE),
    "analysis:test-report": (PAGE_OF_R, POST_GET_ONLY_PAGE),
    "analysis:test-export": (PAGE_OF_R, POST_GET_ONLY_PAGE),
    # The consent page is public by design; joining (POST) creates a participant (test_listening).
    # Listener A joined test A: its invite link sends that browser back to its session
    # (test_listener_identity), and listener B, bound to test B only, gets the consent page.
    "listening:invite": (
        row(200, 302, 200, 200, 200, 200, 200),
        row(None, None, None, None, None, None, None),
    ),
    "listening:session": (LISTENER_A, NOT_A_POST),
    "listening:state": (LISTENER_A, NOT_A_POST),
    "listening:rate": (NOT_A_GET, POST_LISTENER_A),
    "listening:flag": (NOT_A_GET, POST_LISTENER_A),
    "listening:complete": (NOT_A_GET, POST_LISTENER_A),
    "listening:telemetry": (NOT_A_GET, POST_LISTENER_A),
    "listening:calibration": (NOT_A_GET, POST_LISTENER_A),
    "listening:headphone": (NOT_A_GET, POST_LISTENER_A),
    "listening:questionnaire": (NOT_A_GET, POST_LISTENER_A),
    "listening:audio": (LISTENER_A, NOT_A_POST),
    "listening:reference-audio": (LISTENER_A, NOT_A_POST),
    "listening:calibration-audio": (LISTENER_A, NOT_A_POST),
    "listening:headphone-audio": (LISTENER_A, NOT_A_POST),
    "listening-admin:list": (RESEARCHER_PAGE, POST_RESEARCHER),
    "listening-admin:build": (RESEARCHER_PAGE, POST_RESEARCHER),
    "listening-admin:import": (RESEARCHER_PAGE, POST_RESEARCHER),
    "listening-admin:detail": (PAGE_OF_R, POST_PAGE_OF_R),
    "listening-admin:preview": (PAGE_OF_R, POST_PAGE_OF_R),
    # Preview as a listener: the consent page, and (POST) a preview that keeps nothing (test_listener_preview).
    "listening-admin:listener-preview": (PAGE_OF_R, POST_PAGE_OF_R),
    "listening-admin:transition": (row(302, 302, 302, 405, 405, 302, 302), POST_PAGE_OF_R),
    "runs:overview": (RESEARCHER_PAGE, POST_RESEARCHER),
    "runs:evalset-detail": (RESEARCHER_PAGE, POST_RESEARCHER),
    "runs:run-detail": (PAGE_OF_R, POST_PAGE_OF_R),
}
ADMIN_TABLE = {
    "admin:login": (
        PUBLIC,
        row(200, 200, 200, 200, 200, 200, 200),
    ),  # a non-staff sign-in is refused (200 + error)
}
# Regex patterns have no route to fill in: a path each matches.
REGEX_SAMPLES = {
    "admin/(?P<url>.*)$": "admin/no-such-page/",
    "admin:app_list": "admin/runs/",
    "api:not-found": "api/v1/no-such-endpoint/",
}


def walk(patterns=None, prefix: str = "", namespace: str = ""):
    """(key, route or regex, pattern) for every URL the site serves."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            yield from walk(
                p.url_patterns,
                prefix + str(p.pattern),
                namespace + (f"{p.namespace}:" if p.namespace else ""),
            )
        elif isinstance(p, URLPattern):
            route = prefix + str(p.pattern)
            yield (f"{namespace}{p.name}" if p.name else route), route, p


def expected(key: str) -> tuple[dict, dict]:
    if key in TABLE:
        return TABLE[key]
    if key in ADMIN_TABLE:
        return ADMIN_TABLE[key]
    if key.startswith("admin"):
        return ADMIN, ADMIN
    raise KeyError(key)


def build_access_world() -> dict:
    User = get_user_model()
    world = listening_world(runs=(RUN_R, RUN_S), n_items=2)
    ckpt_r, ckpt_s = world["checkpoints"]
    run_r, run_s = ckpt_r.run, ckpt_s.run
    run_r.owner = User.objects.create_user("owner-of-r", password="x")
    run_r.save()
    researcher_in = User.objects.create_user("researcher-in", password="x")
    researcher_out = User.objects.create_user("researcher-out", password="x")
    run_r.collaborators.add(researcher_in)
    run_s.owner = researcher_out
    run_s.save()

    test_a = services.listening_test_publish(
        test=make_listening_test(
            name=TEST_A, kind="mushra", checkpoints=[ckpt_r], training_items=0, seed=1, headphone_check=True
        )
    )
    test_b = services.listening_test_publish(
        test=make_listening_test(name=TEST_B, kind="mushra", checkpoints=[ckpt_s], training_items=0, seed=2)
    )

    clients = {"anonymous": Client()}
    for name, test in (("listener_a", test_a), ("listener_b", test_b)):
        client = Client()
        assert client.post(f"/l/i/{test.invite_token}/").status_code == 302
        clients[name] = client
    for name, user in (("researcher_out", researcher_out), ("researcher_in", researcher_in)):
        client = Client()
        client.force_login(user)
        clients[name] = client
    for name, run in (("token_r", run_r), ("token_s", run_s)):
        clients[name] = Client(HTTP_AUTHORIZATION=f"Bearer {run_token_issue(run=run)}")

    participant_a = Participant.objects.get(test=test_a)
    participant_a.calibrated_at = timezone.now()  # so listener A's headphone-check sounds are served
    participant_a.save()
    state = listener_state(participant_a)
    trial = state["trials"][0]
    args = {
        "run_id": run_r.pk,
        "step": ckpt_r.step,
        "test_id": test_a.pk,
        "invite_token": test_a.invite_token,
        "ptoken": participant_a.token,
        "index": 0,
        "action": "publish",
        "stage": "pre",
        "table": "ratings",
        "fmt": "csv",
        "token": StimulusHandle.objects.filter(assignment__participant=participant_a).first().token,
        "object_id": 1,
        "id": 1,
        "app_label": "runs",
        "content_type_id": 1,
        "path": ckpt_r.generations.select_related("asset").first().asset.file.name,
    }
    pk_of = {"runs:evalset-detail": world["eval_set"].pk}
    return {
        **world,
        "clients": clients,
        "args": args,
        "pk_of": pk_of,
        "run_r": run_r,
        "test_a": test_a,
        "test_b": test_b,
        "participant_a": participant_a,
        "trial": trial,
        "ckpt_r": ckpt_r,
        "reference_token": trial["reference"]["url"].rstrip("/").rsplit("/", 1)[-1],
        "headphone_token": headphone_trials(participant_a)[0]["token"],
    }


def path_for(key: str, route: str, pattern, world) -> str:
    if isinstance(pattern.pattern, RegexPattern):
        return "/" + REGEX_SAMPLES[key if key in REGEX_SAMPLES else route]
    args = dict(world["args"])
    args["pk"] = world["pk_of"].get(
        key, world["test_a"].pk if "test" in key or "listening-admin" in key else world["run_r"].pk
    )
    if key == "listening:reference-audio":
        args["token"] = world["reference_token"]
    elif key == "listening:headphone-audio":
        args["token"] = world["headphone_token"]
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(args[m.group(1)]), route)


def database_fingerprint() -> str:
    """Every row of every table but the session store (a signed-in request may touch its session)."""
    digest = hashlib.sha256()
    for model in sorted(apps.get_models(), key=lambda m: m._meta.label):
        if model._meta.label in ("sessions.Session",):
            continue
        for values in model.objects.order_by("pk").values_list():
            digest.update(repr(values).encode())
    return digest.hexdigest()


def secrets_of_r(world) -> list[str]:
    """What a caller without access to run R must never read: its name, its test's name, its file path."""
    return [RUN_R, TEST_A, world["ckpt_r"].uri]


def test_every_url_has_a_row():
    keys = [key for key, _, _ in walk()]
    assert len(keys) > 150  # the walk reaches the admin, the API, the listener and researcher pages
    missing = [k for k in keys if not k.startswith("admin") and k not in TABLE]
    assert missing == [], f"decide who may reach these URLs and add them to TABLE: {missing}"
    assert set(TABLE) - set(keys) == set(), "TABLE names URLs the site no longer serves"


def test_get_matrix(world):
    cells, wrong, leaks = 0, [], []
    may_see_r = {"researcher_in", "token_r"}
    for key, route, pattern in walk():
        path = path_for(key, route, pattern, world)
        cache.clear()  # the API's per-IP limit for token-less callers is tested elsewhere (test_api)
        get_row, _ = expected(key)
        for principal in PRINCIPALS:
            response = world["clients"][principal].get(path)
            cells += 1
            if response.status_code != get_row[principal]:
                wrong.append(
                    f"GET {path} as {principal}: {response.status_code}, expected {get_row[principal]}"
                )
            if principal not in may_see_r and not getattr(response, "streaming", False):
                body = response.content.decode(errors="replace") + str(dict(response.headers))
                leaks += [f"GET {path} as {principal} names {s!r}" for s in secrets_of_r(world) if s in body]
    assert not wrong, "\n".join(wrong)
    assert not leaks, "\n".join(leaks)
    assert cells == len(list(walk())) * len(PRINCIPALS)


def test_post_matrix_and_refused_writes_change_nothing(world):
    sent, wrong, changed = 0, [], []
    # The build form with run R's checkpoint: a researcher who cannot see run R cannot pick it.
    form = {
        "name": "stolen",
        "kind": "mushra",
        "checkpoints": [world["ckpt_r"].pk],
        "title": "t",
        "training_items": 0,
        "votes_target": 1,
    }
    for key, route, pattern in walk():
        path = path_for(key, route, pattern, world)
        cache.clear()  # the API's per-IP limit for token-less callers is tested elsewhere (test_api)
        _, post_row = expected(key)
        before = database_fingerprint()
        for principal in PRINCIPALS:
            if post_row[principal] is None:
                continue
            client = world["clients"][principal]
            if key.startswith("api:"):
                response = client.post(path, {}, content_type="application/json")
            else:
                response = client.post(path, form if key == "listening-admin:build" else {})
            sent += 1
            if response.status_code != post_row[principal]:
                wrong.append(
                    f"POST {path} as {principal}: {response.status_code}, expected {post_row[principal]}"
                )
        if (after := database_fingerprint()) != before:
            changed.append(f"POST {path} changed the database")
            before = after
    assert not wrong, "\n".join(wrong)
    assert not changed, "\n".join(changed)
    assert sent > 800


def test_whoever_may_not_read_a_url_may_not_put_patch_or_delete_it(world):
    sent, wrong = 0, []
    before = database_fingerprint()
    for key, route, pattern in walk():
        path = path_for(key, route, pattern, world)
        cache.clear()  # the API's per-IP limit for token-less callers is tested elsewhere (test_api)
        get_row, _ = expected(key)
        for principal in PRINCIPALS:
            if get_row[principal] not in (302, 401, 404):
                continue
            for method in ("put", "patch", "delete"):
                response = getattr(world["clients"][principal], method)(
                    path, "{}", content_type="application/json"
                )
                sent += 1
                if response.status_code not in REFUSED:
                    wrong.append(f"{method.upper()} {path} as {principal}: {response.status_code}")
    assert not wrong, "\n".join(wrong)
    assert database_fingerprint() == before
    assert sent > 1000


def test_a_listener_cannot_reach_another_participants_trial_or_sounds_through_their_own_session(world):
    """Cross access inside a session: listener B's own URLs with test A's (or participant A's) ids and tokens."""
    listener_b = world["clients"]["listener_b"]
    participant_b = Participant.objects.get(test=world["test_b"])
    own = f"/l/p/{participant_b.token}/"
    trial_a = world["trial"]
    rating = {
        "trial": trial_a["id"],
        "stimulus": trial_a["stimuli"][0]["id"],
        "score": 50,
        "request_id": "x1",
    }
    response = listener_b.post(own + "rate", rating, content_type="application/json")
    assert response.status_code == 404 and Rating.objects.count() == 0
    assert listener_b.get(own + f"audio/{world['args']['token']}").status_code == 404
    assert listener_b.get(own + f"ref/{world['reference_token']}").status_code == 404
    assert listener_b.get(own + f"hp/{world['headphone_token']}").status_code == 404
    # Listener A's cookie does not open listener B's session either.
    assert world["clients"]["listener_a"].get(own + "state").status_code == 404


def test_the_researcher_lists_show_only_what_the_researcher_may_see(world):
    outsider, insider = world["clients"]["researcher_out"], world["clients"]["researcher_in"]
    for path in ("/", "/listening/", f"/analysis/compare/?c={world['ckpt_r'].pk}", "/listening/new/"):
        seen_out, seen_in = outsider.get(path).content.decode(), insider.get(path).content.decode()
        assert RUN_R not in seen_out and TEST_A not in seen_out, path
        assert RUN_S in seen_out or TEST_B in seen_out or path.startswith("/analysis/compare"), path
        assert RUN_R in seen_in or TEST_A in seen_in, path
    # An id the outsider may not see reads as unknown, like one that does not exist.
    assert (
        f"No checkpoint has id {world['ckpt_r'].pk}."
        in outsider.get(f"/analysis/compare/?c={world['ckpt_r'].pk}").content.decode()
    )


def test_a_researcher_signs_in_on_the_sites_own_page_without_being_staff(world):
    browser = Client(enforce_csrf_checks=True)
    page = browser.get(f"/runs/{world['run_r'].pk}/")
    assert page.status_code == 302 and page["Location"].startswith("/accounts/login/?next=")
    login = browser.get(page["Location"])
    assert login.status_code == 200 and "Sign in" in login.content.decode()
    wrong = browser.post(
        "/accounts/login/",
        {
            "username": "researcher-in",
            "password": "nope",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"].value,
        },
    )
    assert wrong.status_code == 200 and "correct username and password" in wrong.content.decode()
    signed_in = browser.post(
        page["Location"],
        {
            "username": "researcher-in",
            "password": "x",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"].value,
        },
    )
    assert signed_in.status_code == 302 and signed_in["Location"] == f"/runs/{world['run_r'].pk}/"
    assert RUN_R in browser.get(signed_in["Location"]).content.decode()
    # The admin stays closed to a researcher who is not staff.
    assert browser.get("/admin/").status_code == 302
    out = browser.post("/accounts/logout/", {"csrfmiddlewaretoken": browser.cookies["csrftoken"].value})
    assert out.status_code == 302 and browser.get("/").status_code == 302

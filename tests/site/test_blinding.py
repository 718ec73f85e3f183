"""Blinding: everything a listener's browser receives, walked as a browser walks it, names no run,
checkpoint, system, eval item or stored file and tells no sound's role; sound URLs are one
participant's own and cannot be guessed (SQLite, Django test client).

The scan is only as good as the names it looks for, so the world here is built with distinctive
ones, and every table the listener could learn a row of starts its ids at an unlikely 8-digit number.
"""

from __future__ import annotations

import io
import json
import re
import string
import struct
import uuid
from dataclasses import dataclass, field

import numpy as np
import pytest
import soundfile as sf
from django.conf import settings
from django.contrib.staticfiles import finders
from django.db import connection
from django.templatetags.static import static
from django.test import Client
from django.urls import reverse

from evalsite.audio.decoding import decoded_from_array
from evalsite.audio.models import AudioAsset
from evalsite.audio.selectors import audio_asset_samples
from evalsite.audio.services import audio_asset_store
from evalsite.listening import services, views
from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    Condition,
    ListeningTest,
    Participant,
    Rating,
    Stimulus,
    StimulusHandle,
    Trial,
)
from evalsite.listening.selectors import headphone_trials
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
from tests.factories import hear

pytestmark = pytest.mark.django_db

RATE = 22050
RUNS = ("qzv-hifigan-blindcheck-run", "wxk-bigvgan-blindcheck-run")
STEP = 918273
PARAMS = "phash-7c1e0d9a"
EVAL_SET = "evset-marigold-x4"
COMPLETION_CODE = "FIN-93KQ"
COMPLETION_REDIRECT = "https://crowd.example.org/submissions/complete?cc=FIN-93KQ"
# Every table whose rows a response could give away by id; each starts at its own unlikely number.
ID_STARTS = {
    Run: 41_300_017,
    Checkpoint: 42_700_023,
    EvalSet: 43_100_031,
    EvalItem: 44_900_041,
    AudioAsset: 45_500_053,
    Generation: 46_200_061,
    ListeningTest: 47_800_071,
    Condition: 48_600_083,
    Trial: 49_400_091,
    Stimulus: 51_100_103,
    Participant: 52_300_113,
    Assignment: 53_700_127,
    StimulusHandle: 54_200_131,
    Rating: 55_900_137,
    ArtifactFlag: 56_400_149,
}
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,}")
# Words that would tell a listener what a sound is. Generic instructions may say "reference" (the open
# reference is shown as such); nothing per sound may say any of these.
ROLE_WORDS = (
    "hidden",
    "anchor",
    "lp35",
    "lp70",
    "low-pass",
    "lowpass",
    "khz",
    "system",
    "checkpoint",
    "condition",
    "gold",
    "trap",
    "quality control",
    "degraded",
    "expected",
    "attention",
    "comparison",
    "baseline",
    "generation",
    "shifted",
    "other speaker",
    "other recording",
    "role",
    "item",
)
# Every key a listener's JSON may have; a new one must be added here, after asking whether it blinds.
JSON_KEYS = {
    "test",
    "kind",
    "title",
    "instructions",
    "scale",
    "min",
    "max",
    "step",
    "labels",
    "value",
    "text",
    "no_preference",
    "require_play_all",
    "phase",
    "position",
    "trials",
    "id",
    "training",
    "done",
    "reference",
    "url",
    "stimuli",
    "label",
    "ratings",
    "heard",
    "flags",
    "stimulus",
    "start",
    "end",
    "category",
    "note",
    "flag_categories",
    "completion",
    "code",
    "redirect",
    "calibration",
    "headphone_check",
    "screened_out",
    "message",
    "score",
    "passed",
    "extra",
    "fields",
}


def start_ids_at(starts: dict) -> None:
    with connection.cursor() as cursor:
        for model, start in starts.items():
            table = model._meta.db_table
            if connection.vendor == "sqlite":
                cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table])
                cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, start])
            elif connection.vendor == "postgresql":
                cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, start])
            else:
                pytest.skip(f"no way to move the id sequences of {connection.vendor}")


def noise(seed: int, seconds: float = 1.0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


@pytest.fixture
def world():
    """Two runs' checkpoints with an output for each of four items, every name distinctive."""
    start_ids_at(ID_STARTS)
    eval_set = EvalSet.objects.create(name=EVAL_SET)
    items = []
    for i in range(4):
        ref, _ = audio_asset_store(
            decoded=decoded_from_array(noise(i), RATE), original_name=f"ref-lantern-{i}.flac"
        )
        items.append(
            EvalItem.objects.create(
                eval_set=eval_set,
                key=f"itm-orchid-{i}-k7",
                reference=ref,
                speaker=f"spk-heron-{i % 2}",
                text=f"sentence tamarind {i}",
            )
        )
    checkpoints = []
    for r, name in enumerate(RUNS):
        run = Run.objects.create(name=name, kind="vocoder", model_family="hifigan", eval_set=eval_set)
        ckpt = Checkpoint.objects.create(run=run, step=STEP, uri=f"/ckpt/{name}/g_{STEP:08d}.pt")
        for i, item in enumerate(items):
            out, _ = audio_asset_store(
                decoded=decoded_from_array(noise(1000 + 100 * r + i), RATE),
                original_name=f"{name}-{item.key}.wav",
            )
            Generation.objects.create(checkpoint=ckpt, item=item, params_hash=PARAMS, asset=out)
        checkpoints.append(ckpt)
    return {"items": items, "checkpoints": checkpoints}


def build(world, kind: str, name: str, **kw) -> ListeningTest:
    test = services.listening_test_build(
        design=services.TestDesign(
            name=name,
            kind=kind,
            checkpoints=world["checkpoints"],
            seed=4242,
            votes_target=50,
            gold_items=1,
            trapping_items=1,
            completion_code=COMPLETION_CODE,
            completion_redirect=COMPLETION_REDIRECT,
            **kw,
        )
    )
    return services.listening_test_publish(test=test)


# ---------------------------------------------------------------------------------------------
# A browser that keeps everything it was sent


@dataclass
class Received:
    what: str  # method and URL
    status: int
    headers: str  # every header, Set-Cookie included
    body: bytes
    content_type: str


@dataclass
class Browser:
    client: Client
    received: list[Received] = field(default_factory=list)

    def keep(self, what: str, response) -> None:
        body = b"".join(response.streaming_content) if response.streaming else response.content
        response.close()
        headers = "\n".join(f"{k}: {v}" for k, v in response.items())
        headers += "\n" + response.cookies.output()
        self.received.append(
            Received(what, response.status_code, headers, body, response.get("Content-Type", ""))
        )
        response.body = body

    def get(self, url: str, **extra):
        response = self.client.get(url, **extra)
        self.keep(f"GET {url}", response)
        return response

    def post(self, url: str, body: dict, *, form: bool = False):
        csrf = self.client.cookies["csrftoken"].value
        if form:
            response = self.client.post(url, {**body, "csrfmiddlewaretoken": csrf})
        else:
            response = self.client.post(
                url,
                json.dumps(body),
                content_type="application/json",
                HTTP_X_CSRFTOKEN=csrf,
                HTTP_ACCEPT="application/json",
            )
        self.keep(f"POST {url}", response)
        return response

    def json(self, response) -> dict:
        return json.loads(response.body)


def join(test: ListeningTest, pid: str) -> tuple[Browser, str]:
    browser = Browser(Client(enforce_csrf_checks=True))
    assert (
        browser.get(f"/l/i/{test.invite_token}/?PROLIFIC_PID={pid}&STUDY_ID=st-1&SESSION_ID=se-1").status_code
        == 200
    )
    joined = browser.post(
        f"/l/i/{test.invite_token}/",
        {"PROLIFIC_PID": pid, "STUDY_ID": "st-1", "SESSION_ID": "se-1"},
        form=True,
    )
    assert joined.status_code == 302
    return browser, joined["Location"]


def walk_session(test: ListeningTest, pid: str) -> tuple[Browser, str]:
    """Everything a listener does, start to finish, including a few mistakes and a return visit."""
    browser, session = join(test, pid)
    page = browser.get(session)
    assert page.status_code == 200
    state = browser.json(browser.get(session + "state", HTTP_ACCEPT="application/json"))
    participant = Participant.objects.get(external_id=pid, test=test)
    if state["phase"] == "calibration":
        assert browser.get(state["calibration"]["url"]).status_code == 200
        assert browser.post(session + "calibration", {"plays": 2}).status_code == 200
        state = browser.json(browser.get(session + "state"))
    if state["phase"] == "headphone":
        for trial in state["headphone_check"]["trials"]:
            assert browser.get(trial["url"]).status_code == 200
        answers = [t["answer"] for t in headphone_trials(participant)]
        assert browser.json(browser.post(session + "headphone", {"answers": answers}))["passed"] is True
        state = browser.json(browser.get(session + "state"))
    flagged = False
    for trial in state["trials"]:
        if trial["reference"]:
            assert browser.get(trial["reference"]["url"]).status_code == 200
        for stim in trial["stimuli"]:
            assert browser.get(stim["url"]).status_code == 200
        events = [
            {"t": 5 * n, "type": "heard", "stimulus": s, "pos": 1.0}
            for n, s in enumerate([None] + [s["id"] for s in trial["stimuli"]])
        ]
        assert (
            browser.post(
                session + "telemetry", {"trial": trial["id"], "events": events, "device_sample_rate": 48000}
            ).status_code
            == 204
        )
        scale = state["test"]["scale"]
        for n, stim in enumerate(trial["stimuli"]):
            score = scale["min"] + n % (scale["max"] - scale["min"] + 1)
            assert (
                browser.post(
                    session + "rate",
                    {
                        "trial": trial["id"],
                        "stimulus": stim["id"],
                        "score": score,
                        "request_id": uuid.uuid4().hex,
                    },
                ).status_code
                == 200
            )
        if not flagged:
            assert (
                browser.post(
                    session + "flag",
                    {
                        "trial": trial["id"],
                        "stimulus": trial["stimuli"][-1]["id"],
                        "start": 0.1,
                        "end": 0.3,
                        "category": "buzz",
                        "note": "hum",
                        "request_id": uuid.uuid4().hex,
                    },
                ).status_code
                == 201
            )
            # Mistakes: their messages reach the listener too.
            assert (
                browser.post(
                    session + "rate",
                    {
                        "trial": trial["id"],
                        "stimulus": trial["stimuli"][0]["id"],
                        "score": 999,
                        "request_id": "bad",
                    },
                ).status_code
                == 400
            )
            assert (
                browser.post(
                    session + "rate",
                    {"trial": trial["id"], "stimulus": "nope", "score": 3, "request_id": "bad2"},
                ).status_code
                == 404
            )
            assert browser.get(session + "audio/" + "x" * 24).status_code == 404
            flagged = True
        assert browser.post(session + "complete", {"trial": trial["id"]}).status_code == 200
    last = state["trials"][-1]
    late = browser.post(
        session + "rate",
        {
            "trial": last["id"],
            "stimulus": last["stimuli"][0]["id"],
            "score": state["test"]["scale"]["min"],
            "request_id": "late",
        },
    )
    assert late.status_code == 409
    done = browser.json(browser.get(session + "state"))
    assert done["phase"] == "done" and done["completion"] == {
        "code": COMPLETION_CODE,
        "redirect": COMPLETION_REDIRECT,
    }
    # Coming back through the invite link with the same crowd id resumes the same session.
    again = browser.post(f"/l/i/{test.invite_token}/", {"PROLIFIC_PID": pid}, form=True)
    assert again["Location"] == session
    return browser, session


# ---------------------------------------------------------------------------------------------
# What is looked for


def static_files(html: str) -> dict[str, bytes]:
    """The static files a page references, and those their scripts and styles import, by URL."""
    prefix = static("")
    queue = [m for m in re.findall(r'(?:src|href)="([^"]+)"', html) if m.startswith(prefix)]
    found: dict[str, bytes] = {}
    while queue:
        url = queue.pop()
        if url in found:
            continue
        path = finders.find(url[len(prefix) :])
        assert path, f"{url} is referenced by the page but no static file answers it"
        with open(path, "rb") as fh:
            found[url] = fh.read()
        text = found[url].decode()
        base = url.rsplit("/", 1)[0]
        imports = re.findall(r'(?:from|import)\s*\(?\s*"(\./[^"]+)"', text)
        imports += re.findall(r'url\(["\']?(\./[^)"\']+)', text)
        queue += [f"{base}/{name[2:]}" for name in imports]
    return found


def identifiers(test: ListeningTest) -> list[str]:
    """What names a run, checkpoint, system, item or stored file: none of it may reach a listener."""
    names = [*RUNS, str(STEP), f"g_{STEP:08d}", PARAMS, EVAL_SET, test.name, settings.MEDIA_URL]
    names += [c.uri for c in Checkpoint.objects.all()]
    names += [label for label in Condition.objects.filter(role="system").values_list("label", flat=True)]
    for item in EvalItem.objects.all():
        names += [item.key, item.speaker, item.text]
    for asset in AudioAsset.objects.all():
        names += [asset.content_hash, asset.content_hash[:12], asset.file.name]
        # "sound.wav" is what every sound is called when served, so it names nothing.
        names += [asset.original_name] if asset.original_name not in ("", "sound.wav") else []
    for model in ID_STARTS:
        names += [str(pk) for pk in model.objects.values_list("pk", flat=True)]
    assert all(len(n) >= 6 for n in names)  # long enough that a chance match in audio bytes is impossible
    return names


def tokens_of(browsers: list[Browser]) -> set[str]:
    """Every random value a listener is given: tokens, signed cookies, CSRF tokens."""
    tokens = set(Participant.objects.values_list("token", flat=True))
    tokens |= set(Assignment.objects.values_list("token", flat=True))
    tokens |= set(StimulusHandle.objects.values_list("token", flat=True))
    tokens |= set(ArtifactFlag.objects.values_list("token", flat=True))
    tokens |= set(ListeningTest.objects.values_list("invite_token", flat=True))
    for participant in Participant.objects.all():
        tokens |= {t["token"] for t in headphone_trials(participant)}
    for browser in browsers:
        tokens |= {c.value for c in browser.client.cookies.values()}
        for seen in browser.received:
            tokens |= set(
                re.findall(r'name="csrfmiddlewaretoken" value="([^"]+)"', seen.body.decode(errors="replace"))
            )
            tokens |= set(re.findall(r"'nonce-([^']+)'", seen.headers))  # the Content-Security-Policy's
    return tokens


def dynamic_text(browsers: list[Browser], tokens: set[str]) -> str:
    """Pages, JSON and every header, lower case, with the random values blanked (one might spell "gold")."""
    text = "\n".join(
        f"{seen.what}\n{seen.headers}\n"
        + ("" if seen.content_type.startswith("audio/") else seen.body.decode())
        for browser in browsers
        for seen in browser.received
    )
    for token in sorted(tokens, key=len, reverse=True):
        text = text.replace(token, "<token>")
    return text.lower().replace('<input type="hidden"', "<input")  # the consent form's own fields


def wav_chunks(data: bytes) -> list[bytes]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    chunks, at = [], 12
    while at < len(data):
        chunk, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        chunks.append(chunk)
        at += 8 + size + (size & 1)
    return chunks


def wav_data(data: bytes) -> bytes:
    at = 12
    while data[at : at + 4] != b"data":
        size = struct.unpack("<I", data[at + 4 : at + 8])[0]
        at += 8 + size + (size & 1)
    return data[at + 8 :]


def json_keys(value, tokens: set[str]) -> set[str]:
    if isinstance(value, dict):
        own = {k for k in value if k not in tokens}  # "ratings" is keyed by the sounds' tokens
        return own.union(*(json_keys(v, tokens) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(json_keys(v, tokens) for v in value))
    return set()


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("kind", ["mushra", "smos"])
def test_nothing_a_listener_receives_names_a_system_or_tells_a_sounds_role(world, kind):
    extra = {"headphone_check": True, "require_play_all": True} if kind == "mushra" else {}
    test = build(world, kind, f"{kind}-blind-quokka-3x", **extra)
    walks = [walk_session(test, f"pid-{kind}-{n}") for n in range(2)]
    browsers = [browser for browser, _ in walks]
    participant = Participant.objects.filter(test=test).first()
    assert participant.status == "completed" and Rating.objects.filter(participant=participant).exists()
    controls = Assignment.objects.filter(
        participant=participant, trial__control__in=["gold", "trapping"]
    ).count()
    assert controls == 2  # the walk went through a gold and a trapping trial
    if kind == "mushra":
        assert {"hidden_reference", "anchor_lp35", "anchor_lp70"} <= set(
            Stimulus.objects.filter(trial__test=test).values_list("condition__role", flat=True)
        )
        assert participant.headphone_passed is True

    tokens = tokens_of(browsers)
    names = identifiers(test)
    received = [seen for b in browsers for seen in b.received]
    sounds = [seen for seen in received if seen.content_type.startswith("audio/")]
    pages = [seen for seen in received if not seen.content_type.startswith("audio/")]
    statics = static_files(next(s.body.decode() for s in pages if b"listener-app" in s.body))
    # Every file of the listener UI is reached from the page (listener.js imports the other modules),
    # so every one of them is searched below.
    ui_files = {path.name for path in (settings.BASE_DIR / "static" / "listening").iterdir()}
    assert {u.rsplit("/", 1)[1] for u in statics if "/listening/" in u} == ui_files
    assert {"listener.js", "app.js", "trial.js", "widgets.js", "listener.css"} <= ui_files

    # 1. No name of a run, checkpoint, system, item or stored file, nor any row id, anywhere: pages,
    #    JSON, headers (Location, Set-Cookie, Content-Disposition ...), the scripts, and the sound bytes.
    text = "\n".join(f"{s.what}\n{s.headers}\n{s.body.decode()}" for s in pages).lower()
    text += "\n".join(f"{s.what}\n{s.headers}" for s in sounds).lower()
    leaks = [n for n in names if n.lower() in text]
    leaks += [
        f"{n} in {url}" for url, data in statics.items() for n in names if n.lower().encode() in data.lower()
    ]
    leaks += [f"{n} in the bytes of {s.what}" for s in sounds for n in names if n.encode() in s.body]
    assert leaks == []

    # 2. No word that tells what a sound is, in anything made for this listener (the static scripts
    #    are the same for every listener and every sound, so they cannot tell one sound from another).
    words = dynamic_text(browsers, tokens)
    found = sorted({w for w in ROLE_WORDS if re.search(rf"(?<![a-z]){re.escape(w)}", words)})
    assert found == [], [re.findall(rf".{{0,60}}{re.escape(w)}.{{0,60}}", words)[:2] for w in found]

    # 3. The JSON has only the keys listed, every trial the same shape (a control trial looks like
    #    any other), and every sound the same three fields: a token, its URL, a letter in order.
    bodies = [json.loads(s.body) for s in pages if s.content_type == "application/json"]
    assert len(bodies) > 20 and json_keys(bodies, tokens) <= JSON_KEYS
    for browser, session in walks:
        state = browser.client.get(session + "state").json()
        ptoken = session.split("/")[3]
        shapes = {(tuple(sorted(t)), len(t["stimuli"]), t["reference"] is None) for t in state["trials"]}
        assert len(shapes) == 1
        for trial in state["trials"]:
            assert [s["label"] for s in trial["stimuli"]] == list(
                string.ascii_uppercase[: len(trial["stimuli"])]
            )
            assert all(
                s["url"] == reverse("listening:audio", args=[ptoken, s["id"]]) for s in trial["stimuli"]
            )
            assert trial["reference"] == {
                "url": reverse("listening:reference-audio", args=[ptoken, trial["id"]])
            }

    # 4. Sounds: WAV holding the format and the samples only (no PEAK chunk with the time the file was
    #    written, no LIST/INFO names), a neutral file name, private and uncached, no validator that
    #    would tie two URLs to one file; and the samples exactly the stored ones.
    per_listener = sum(len(t["stimuli"]) + 1 for t in state["trials"]) + (7 if kind == "mushra" else 0)
    assert len(sounds) == 2 * per_listener
    for s in sounds:
        assert s.status == 200 and s.content_type == "audio/wav"
        assert 'content-disposition: inline; filename="sound.wav"' in s.headers.lower()
        assert "cache-control: private, no-store" in s.headers.lower()
        assert "etag" not in s.headers.lower() and "last-modified" not in s.headers.lower()
        assert f"content-length: {len(s.body)}" in s.headers.lower()
        assert wav_chunks(s.body) in ([b"fmt ", b"fact", b"data"], [b"fmt ", b"data"]), s.what
    for s in sounds:
        token = s.what.rsplit("/", 1)[1]
        handle = StimulusHandle.objects.filter(token=token).select_related("stimulus__asset").first()
        if handle is not None:
            served, rate = sf.read(io.BytesIO(s.body), dtype="float32", always_2d=True)
            stored, stored_rate = audio_asset_samples(handle.stimulus.asset)
            assert rate == stored_rate and np.array_equal(served, stored)


def test_sound_urls_are_one_participants_own_unguessable_and_useless_to_anyone_else(world):
    test = build(world, "mushra", "mushra-urls-ocelot", headphone_check=True)
    a, a_session = join(test, "pid-a")
    b, b_session = join(test, "pid-b")
    pa, pb = (Participant.objects.get(external_id=p) for p in ("pid-a", "pid-b"))
    hear(pa), hear(pb)
    services.calibration_confirm(participant=pa, plays=1)
    services.calibration_confirm(participant=pb, plays=1)
    hp_a = a.json(a.get(a_session + "state"))["headphone_check"]["trials"]
    services.headphone_check_submit(participant=pa, answers=[t["answer"] for t in headphone_trials(pa)])
    services.headphone_check_submit(participant=pb, answers=[t["answer"] for t in headphone_trials(pb)])
    state_a, state_b = a.json(a.get(a_session + "state")), b.json(b.get(b_session + "state"))
    urls_a = [s["url"] for t in state_a["trials"] for s in t["stimuli"]]
    urls_a += [t["reference"]["url"] for t in state_a["trials"]]
    urls_a += [t["url"] for t in hp_a]

    # Per participant and random: no token is shared, none is short, none shares a prefix with another.
    def url_tokens(state):
        return [s["id"] for t in state["trials"] for s in t["stimuli"]] + [t["id"] for t in state["trials"]]

    tokens_a, tokens_b = url_tokens(state_a), url_tokens(state_b)
    everything = tokens_a + tokens_b + [pa.token, pb.token]
    assert len(set(everything)) == len(everything) and not set(tokens_a) & set(tokens_b)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{24,}", t) for t in everything)  # 144 random bits each
    assert max(len(_common_prefix(x, y)) for i, x in enumerate(everything) for y in everything[i + 1 :]) < 5
    assert len(set("".join(everything))) > 55  # the whole URL-safe alphabet is in use, not a counter
    assert not any(re.search(r"/\d+(/|$)", url) for url in urls_a)  # no row id in any path

    # Another browser, with its own valid session, gets nothing from the first one's URLs ...
    for url in urls_a + [a_session, a_session + "state"]:
        refused = b.client.get(url, HTTP_ACCEPT="application/json")
        assert refused.status_code == 404 and refused.json() == {
            "message": views.NOT_YOUR_SESSION,
            "extra": {},
        }
        assert Client().get(url).status_code == 404
    # ... nor by putting the first one's sound tokens into its own URLs.
    for url in urls_a:
        kind, token = url.split("/")[4:6]
        swapped = f"{b_session}{kind}/{token}"
        refused = b.client.get(swapped, HTTP_ACCEPT="application/json")
        assert refused.status_code == 404 and refused.json()["message"] == views.UNKNOWN_SOUND, swapped
    # Its own URLs still work: the 404s above are about whose the sound is.
    own = state_b["trials"][0]
    assert b.client.get(own["stimuli"][0]["url"]).status_code == 200
    assert b.client.get(own["reference"]["url"]).status_code == 200


def _common_prefix(x: str, y: str) -> str:
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return x[:n]


def test_the_stored_wav_does_carry_a_write_time_that_the_served_one_drops(world):
    """The reason for rewriting the header: libsndfile's PEAK chunk stamps every stored float WAV
    with the time it was written (anchors share the build's time, the hidden reference the reference's)."""
    test = build(world, "smos", "smos-peak-gecko")
    browser, session = join(test, "pid-peak")
    trial = browser.json(browser.get(session + "state"))["trials"][0]
    served = browser.get(trial["reference"]["url"]).body
    # The reference as stored for this trial (its loudness-aligned copy: the design aligns by default).
    with Assignment.objects.get(token=trial["id"]).trial.reference.file.open("rb") as fh:
        stored = fh.read()
    assert wav_chunks(stored) == [b"fmt ", b"fact", b"PEAK", b"data"]
    assert wav_chunks(served) == [b"fmt ", b"fact", b"data"]
    assert wav_data(served) == wav_data(stored) and len(served) == len(stored) - 24  # PEAK: 8 + 16 bytes

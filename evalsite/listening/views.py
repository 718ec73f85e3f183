"""Listener pages and their JSON endpoints.

A listener reaches a test through its invite link, consents, and is bound to their participant by
a signed cookie that holds one binding per test (so one browser can take several tests, and the
invite link brings it back to its own session); every later URL carries only opaque
per-participant tokens. Every request of a participant counts against its rate limit
(``EVALSITE_LISTENER_RATE``), joins against the client's (``EVALSITE_JOIN_RATE``), and a JSON body
may be at most ``EVALSITE_LISTENER_MAX_BODY_BYTES``.
"""

from __future__ import annotations

import io
import logging
import re
from functools import wraps

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods, require_safe
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from evalsite.core.exceptions import ApplicationError, ConflictError, error_body
from evalsite.core.ratelimit import Limited, client_network, limit_hit, wants_json, with_retry_after
from evalsite.listening.calibration import (
    CALIBRATION_S,
    calibration_samples,
    headphone_trial_samples,
    wav_bytes,
)
from evalsite.listening.models import ListeningTest, Participant
from evalsite.listening.preview import PreviewRefused, preview_request
from evalsite.listening.questionnaire import STAGE_TITLES, Questionnaire
from evalsite.listening.selectors import (
    headphone_trials,
    listener_progress,
    listener_state,
    participant_reference_asset,
    participant_stimulus_asset,
    rating_answer,
)
from evalsite.listening.services.answers import (
    UNKNOWN_PARTICIPANT,
    flag_submit,
    rating_submit,
    telemetry_append,
    trial_complete,
)
from evalsite.listening.services.heard import CALIBRATION_SOUND, reference_sound, sound_fetch_record
from evalsite.listening.services.preview import is_preview_token
from evalsite.listening.services.questionnaire import questionnaire_submit
from evalsite.listening.services.session import (
    CALIBRATE_FIRST,
    TEST_NOT_OPEN,
    CrowdIdInUse,
    calibration_confirm,
    headphone_check_submit,
    participant_join,
    participant_returning,
)

logger = logging.getLogger(__name__)

COOKIE = "evalsite_listener"
COOKIE_SALT = "evalsite.listening.participant"
COOKIE_MAX_AGE = 60 * 60 * 24 * 30
# The cookie holds "<test's invite token>.<participant token>" bindings joined by "~", most recent
# last: both tokens are URL-safe (the value needs no quoting) and the listener has both already (a
# test's row id would tell them how many tests exist). At most COOKIE_MAX_TESTS of them (about 50
# bytes each) keep it well below the 4 kB browsers allow; past that the oldest binding is dropped.
COOKIE_MAX_TESTS = 32
_BINDING_SEP = "~"
NOT_YOUR_SESSION = UNKNOWN_PARTICIPANT
LISTENER_LIMITED = "Too many requests from this listening session: at most {rate}. Try again in {wait}."
JOIN_LIMITED = (
    "Too many people have joined this test from your network in a short time: at most {rate}. "
    "Please try again in {wait}."
)
BODY_TOO_LARGE = "The request body is {size} bytes; a listener request may be at most {limit} bytes."
BODY_TOO_DEEP = "The request body is nested too deeply to be read as JSON."
UNKNOWN_SOUND = "Unknown sound."
QUESTIONS_MARKED = "Please check the marked question{s} below ({n})."
# What of a stored WAV reaches a listener: its format, and the samples (the data chunk). libsndfile
# writes a PEAK chunk into float WAVs holding the time the file was written, which would tell the
# hidden reference (written with the reference), the anchors (written together when the test was
# built) and each system (written by its generation job) apart; other chunks could carry names.
WAV_CHUNKS_SERVED = (b"fmt ", b"fact")
# One range of bytes (RFC 9110 14.1.2): "first-last", "first-" or "-suffix length". A request for
# several ranges is served whole, as the RFC allows.
SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class BodyTooLarge(ApplicationError):
    """The request body is over ``EVALSITE_LISTENER_MAX_BODY_BYTES``."""

    status_code = 413


def _error(exc: ApplicationError) -> JsonResponse:
    """The error in the API's shape (``core.exceptions.error_body``), with its status."""
    return JsonResponse(error_body(exc), status=exc.status_code)


def _too_many(limited: Limited) -> JsonResponse:
    message = LISTENER_LIMITED.format(rate=limited.rate, wait=limited.wait)
    return with_retry_after(JsonResponse(limited.body(message), status=429), limited)


def _bindings(request: HttpRequest) -> dict[str, str]:
    """Invite token -> participant token for every test this browser joined (its signed cookie),
    oldest first.

    A cookie written before bindings were per test holds one bare token; it is kept under the key ""
    (it still opens its session) until the invite page learns its test (``_bindings_by_test``).
    """
    value = request.get_signed_cookie(COOKIE, default=None, salt=COOKIE_SALT)
    bindings: dict[str, str] = {}
    for entry in (value or "").split(_BINDING_SEP):
        test_key, _, token = entry.rpartition(".")
        if token:
            bindings[test_key] = token
    return bindings


def _bindings_by_test(request: HttpRequest) -> dict[str, str]:
    """``_bindings``, with a bare token of an older cookie filed under its test (one lookup, once)."""
    bindings = _bindings(request)
    legacy = bindings.pop("", None)
    if legacy is not None:
        test_key = (
            Participant.objects.filter(token=legacy).values_list("test__invite_token", flat=True).first()
        )
        if test_key is not None:
            bindings = {test_key: legacy, **bindings}
    return bindings


def _bind(
    response: HttpResponse,
    request: HttpRequest,
    bindings: dict[str, str],
    *,
    test: ListeningTest,
    ptoken: str,
) -> HttpResponse:
    """Set the cookie to ``bindings`` with ``ptoken`` as the (newest) binding of ``test``."""
    bindings = {k: v for k, v in bindings.items() if k != test.invite_token}
    bindings[test.invite_token] = ptoken
    kept = list(bindings.items())[-COOKIE_MAX_TESTS:]
    response.set_signed_cookie(
        COOKIE,
        _BINDING_SEP.join(f"{test_key}.{token}" for test_key, token in kept),
        salt=COOKIE_SALT,
        max_age=COOKIE_MAX_AGE,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure(),
    )
    return response


def _same_browser(request: HttpRequest, ptoken: str) -> bool:
    """The request comes from the browser that joined as ``ptoken`` (its signed cookie; no query)."""
    return ptoken in _bindings(request).values()


def _not_your_session(request: HttpRequest) -> HttpResponse:
    if request.headers.get("Accept", "").startswith("application/json") or request.method != "GET":
        return JsonResponse({"message": NOT_YOUR_SESSION, "extra": {}}, status=404)
    return render(request, "listening/message.html", {"message": NOT_YOUR_SESSION}, status=404)


def _private(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, no-store"
    return response


def _preview(request: HttpRequest, ptoken: str, action) -> HttpResponse:
    """``action(participant)`` as a request of the researcher's preview ``ptoken`` (``listening.preview``):
    the same views and services as a listener's request, nothing kept. Only the researcher who opened
    the preview, in the browser session they opened it in, gets anything but "not your session"."""
    limited = limit_hit(request, "listener", ptoken)
    if limited is not None:
        return _too_many(limited)
    try:
        return _private(preview_request(request, ptoken, action))
    except PreviewRefused as refused:
        if not refused.expired:
            return _not_your_session(request)
        if wants_json(request) or request.method != "GET":
            return JsonResponse({"message": str(refused), "extra": {}}, status=410)
        return render(request, "listening/message.html", {"message": str(refused)}, status=410)


def _listener(view):
    """Resolve the participant from the URL token and require the browser that joined as them."""

    @wraps(view)
    def wrapper(request: HttpRequest, ptoken: str, *args, **kwargs):
        if is_preview_token(ptoken):
            return _preview(request, ptoken, lambda participant: view(request, participant, *args, **kwargs))
        if not _same_browser(request, ptoken):
            return _not_your_session(request)
        limited = limit_hit(request, "listener", ptoken)
        if limited is not None:
            return _too_many(limited)
        participant = Participant.objects.select_related("test").filter(token=ptoken).first()
        if participant is None:
            return _not_your_session(request)
        return _private(view(request, participant, *args, **kwargs))

    return wrapper


_PARSER = JSONParser()


def _json_body(request: HttpRequest) -> dict:
    """The JSON object a listener endpoint was sent, read by DRF's JSON parser as API bodies are (strict JSON)."""
    limit = settings.EVALSITE_LISTENER_MAX_BODY_BYTES
    try:
        size = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        size = 0  # Django reads nothing of a body whose length it cannot read
    if size > limit:
        # Refused before a byte of it is read.
        raise BodyTooLarge(BODY_TOO_LARGE.format(size=size, limit=limit), fields=("body",))
    try:
        body = _PARSER.parse(io.BytesIO(request.body or b"{}"), _PARSER.media_type)
    except ParseError as exc:
        raise ApplicationError(
            f"the request body is not valid JSON ({exc.detail})", fields=("body",)
        ) from None
    except RecursionError:
        # json raises this, not a ValueError, for arrays or objects nested past the interpreter's
        # recursion limit: a few kilobytes of "[" would otherwise be a 500.
        raise ApplicationError(BODY_TOO_DEEP, fields=("body",)) from None
    if not isinstance(body, dict):
        raise ApplicationError("the request body must be a JSON object", fields=("body",))
    return body


@require_http_methods(["GET", "POST"])
def invite(request: HttpRequest, invite_token: str) -> HttpResponse:
    """Consent page of a test; agreeing creates a participant. A browser that already joined the
    test goes straight back to its own session (no second consent, no new participant), finished or
    screened out too, where it sees its end page; another browser presenting a crowd id in use is
    refused."""
    test = get_object_or_404(ListeningTest, invite_token=invite_token)
    crowd = {
        k: request.GET.get(k, request.POST.get(k, "")) for k in ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")
    }
    bindings = _bindings_by_test(request)
    returning = participant_returning(
        test=test, resume_token=bindings.get(test.invite_token), external_id=crowd["PROLIFIC_PID"]
    )
    # An unfinished session of a closed test gets the closed message below; an end page always shows.
    if returning is not None and (
        returning.status != Participant.Status.ACTIVE or test.status == ListeningTest.Status.PUBLISHED
    ):
        to_session = redirect("listening:session", ptoken=returning.token)
        return _bind(to_session, request, bindings, test=test, ptoken=returning.token)
    if test.status != ListeningTest.Status.PUBLISHED:
        return render(request, "listening/message.html", {"message": TEST_NOT_OPEN}, status=410)
    if request.method == "GET":
        return render(request, "listening/consent.html", {"test": test, "crowd": crowd})
    limited = limit_hit(request, "join", client_network(request))
    if limited is not None:
        message = JOIN_LIMITED.format(rate=limited.rate, wait=limited.wait)
        page = (
            JsonResponse(limited.body(message), status=429)
            if wants_json(request)
            else render(request, "listening/message.html", {"message": message}, status=429)
        )
        return with_retry_after(page, limited)
    try:
        participant = participant_join(
            test=test,
            external_id=crowd["PROLIFIC_PID"],
            study_id=crowd["STUDY_ID"],
            session_id=crowd["SESSION_ID"],
            resume_token=bindings.get(test.invite_token),
        )
    except CrowdIdInUse as exc:
        # Not sent on to the screened-out address: this may be the worker themself, on another device.
        logger.warning(
            "test %s: a second browser presented the crowd id of an existing participant; refused", test.pk
        )
        return render(request, "listening/message.html", {"message": exc.message}, status=409)
    except ConflictError as exc:
        return render(
            request,
            "listening/message.html",
            {"message": exc.message, "redirect": test.screened_out_redirect},
            status=409,
        )
    to_session = redirect("listening:session", ptoken=participant.token)
    return _bind(to_session, request, bindings, test=test, ptoken=participant.token)


@require_safe
@ensure_csrf_cookie
@_listener
def session(request: HttpRequest, participant: Participant) -> HttpResponse:
    """The test page; once the listener has finished or was screened out, their end page instead."""
    progress = listener_progress(participant)
    if progress["phase"] in ("pre_questionnaire", "post_questionnaire"):
        return _questionnaire_page(request, participant, progress["phase"].partition("_")[0])
    preview = _preview_banner(request)
    if progress["phase"] in ("done", "screened_out"):
        return render(
            request,
            "listening/finished.html",
            {
                "title": participant.test.title,
                "completion": progress["completion"],
                "screened_out": progress["screened_out"],
                "preview": preview,
            },
        )
    return render(
        request,
        "listening/session.html",
        {"participant": participant, "title": participant.test.title, "preview": preview},
    )


def _questionnaire_page(
    request: HttpRequest,
    participant: Participant,
    stage: str,
    *,
    values: dict | None = None,
    error: ApplicationError | None = None,
) -> HttpResponse:
    """The questionnaire page of ``stage``: a plain form, with the answers given and the refusal, if any."""
    values = values or {}
    errors = error_body(error)["extra"].get("fields", {}) if error is not None else {}
    questions = [
        {
            "q": q,
            "value": values.get(q.id, ""),
            "error": (errors.get(f"answers.{q.id}") or [""])[0],
            "long": q.max_length > 200,
        }
        for q in Questionnaire.from_stored(participant.test.questionnaire).stage(stage)
    ]
    # Said above the form: an error about no one question (an unknown one, a closed test), or how many
    # questions below need attention (on a phone they may be a long scroll away).
    marked = sum(bool(item["error"]) for item in questions)
    general = None
    if error is not None:
        general = (
            error.message if not marked else QUESTIONS_MARKED.format(n=marked, s="s" if marked > 1 else "")
        )
    return render(
        request,
        "listening/questionnaire.html",
        {
            "title": participant.test.title,
            "heading": STAGE_TITLES[stage],
            "stage": stage,
            "questions": questions,
            "general": general,
            "participant": participant,
            "preview": _preview_banner(request),
        },
        status=200 if error is None else error.status_code,
    )


@require_http_methods(["POST"])
@_listener
def questionnaire(request: HttpRequest, participant: Participant, stage: str) -> HttpResponse:
    """Submit a questionnaire page: a JSON body ``{"answers": {...}}`` (the one error shape back), or the
    page's own form (on to the session when accepted, the page again with the answers kept when not)."""
    as_json = request.content_type == "application/json"
    try:
        if as_json:
            answers = _json_body(request).get("answers")
        else:
            answers = {k: v for k, v in request.POST.items() if k != "csrfmiddlewaretoken"}
        participant = questionnaire_submit(participant=participant, stage=stage, answers=answers)
    except ApplicationError as exc:
        if as_json or stage not in STAGE_TITLES:
            return _error(exc)
        return _questionnaire_page(request, participant, stage, values=answers, error=exc)
    if as_json:
        return JsonResponse({"phase": listener_progress(participant)["phase"]})
    return redirect("listening:session", ptoken=participant.token)


def _preview_banner(request: HttpRequest) -> dict | None:
    """What the pages of a researcher's preview say about it (None for a listener)."""
    preview = getattr(request, "listening_preview", None)
    if preview is None:
        return None
    return {"back": reverse("listening-admin:detail", args=[preview["test"].pk])}


@require_safe
@_listener
def state(request: HttpRequest, participant: Participant) -> JsonResponse:
    return JsonResponse(listener_state(participant))


def _post(action):
    @require_http_methods(["POST"])
    @_listener
    @wraps(action)
    def view(request: HttpRequest, participant: Participant) -> JsonResponse:
        try:
            return action(participant, _json_body(request))
        except ApplicationError as exc:
            return _error(exc)

    return view


@require_http_methods(["POST"])
def rate(request: HttpRequest, ptoken: str) -> HttpResponse:
    """Save one rating: the hot path of a test under load (benchmarks/listening_load.py), so the
    participant is not loaded first; the service finds it with the trial and the sound."""
    if is_preview_token(ptoken):
        return _preview(request, ptoken, lambda participant: _rate(request, participant.token))
    if not _same_browser(request, ptoken):
        return _not_your_session(request)
    limited = limit_hit(request, "listener", ptoken)
    if limited is not None:
        return _too_many(limited)
    return _rate(request, ptoken)


def _rate(request: HttpRequest, ptoken: str) -> HttpResponse:
    try:
        body = _json_body(request)
        rating = rating_submit(
            participant=ptoken,
            trial=body.get("trial"),
            stimulus=body.get("stimulus"),
            score=body.get("score"),
            request_id=body.get("request_id"),
        )
    except ApplicationError as exc:
        return _private(_error(exc))
    return _private(JsonResponse({"score": rating_answer(rating)}))


@_post
def flag(participant: Participant, body: dict) -> JsonResponse:
    created = flag_submit(
        participant=participant,
        trial=body.get("trial"),
        stimulus=body.get("stimulus"),
        start=body.get("start"),
        end=body.get("end"),
        category=body.get("category"),
        note=body.get("note", ""),
        request_id=body.get("request_id"),
    )
    return JsonResponse({"id": created.token}, status=201)


@_post
def complete(participant: Participant, body: dict) -> JsonResponse:
    participant = trial_complete(participant=participant, trial=body.get("trial"))
    progress = listener_progress(participant)
    return JsonResponse(
        {"phase": progress["phase"], "position": progress["position"], "completion": progress["completion"]}
    )


@_post
def calibration(participant: Participant, body: dict) -> JsonResponse:
    participant = calibration_confirm(participant=participant, plays=body.get("plays"))
    progress = listener_progress(participant)
    return JsonResponse({"phase": progress["phase"], "screened_out": progress["screened_out"]})


@_post
def headphone(participant: Participant, body: dict) -> JsonResponse:
    participant = headphone_check_submit(participant=participant, answers=body.get("answers"))
    progress = listener_progress(participant)
    return JsonResponse(
        {
            "passed": participant.headphone_passed,
            "phase": progress["phase"],
            "screened_out": progress["screened_out"],
        }
    )


@_post
def telemetry(participant: Participant, body: dict) -> JsonResponse:
    telemetry_append(
        participant=participant,
        trial=body.get("trial"),
        events=body.get("events"),
        device={"sample_rate": body.get("device_sample_rate")},
    )
    return HttpResponse(status=204)


class _ServedWav:
    """A stored WAV file read as a listener gets it: RIFF header, ``WAV_CHUNKS_SERVED``, then the samples."""

    def __init__(self, fh, name: str) -> None:
        self.fh = fh
        try:
            riff = fh.read(12)
            if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
                raise ValueError(f"stored audio {name} is not a RIFF/WAVE file")
            kept = []
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    raise ValueError(f"stored audio {name} has no data chunk")
                chunk, size = head[:4], int.from_bytes(head[4:], "little")
                if chunk == b"data":
                    break
                body = fh.read(size + (size & 1))  # chunks are padded to an even length
                if chunk in WAV_CHUNKS_SERVED:
                    kept.append(head + body)
        except Exception:
            fh.close()
            raise
        chunks = b"".join(kept)
        self.data_at = fh.tell()
        self.head = (
            b"RIFF"
            + (4 + len(chunks) + 8 + size).to_bytes(4, "little")
            + b"WAVE"
            + chunks
            + b"data"
            + size.to_bytes(4, "little")
        )
        self.left = size
        self.length = len(self.head) + size

    def limit(self, start: int, end: int) -> None:
        """Serve only bytes ``[start, end)`` of the file as served."""
        head = len(self.head)
        self.head = self.head[start:end]
        self.fh.seek(self.data_at + max(0, start - head))
        self.left = max(0, end - max(start, head))
        self.length = end - start

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        data = self.fh.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.fh.close()


def _byte_range(request: HttpRequest, length: int) -> tuple[int, int] | None:
    """The one byte range ``[start, end)`` asked for, None for the whole file (no Range header, or
    one this view does not serve ranges for); ``(length, length)`` when it cannot be satisfied."""
    match = SINGLE_RANGE.fullmatch(request.headers.get("Range", "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(0, length - int(last)), length
    else:
        start, end = int(first), length if last == "" else min(int(last) + 1, length)
        if end <= start:
            return None if last != "" and int(last) < start else (length, length)
    if start >= length:
        return (length, length)
    return start, end


def _ranged(response: HttpResponse, span: tuple[int, int] | None, length: int) -> HttpResponse:
    response["Accept-Ranges"] = "bytes"
    if span is not None:
        response.status_code = 206
        response["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{length}"
    return response


def _unsatisfiable(length: int) -> HttpResponse:
    response = HttpResponse(status=416)
    response["Content-Range"] = f"bytes */{length}"
    return response


def _audio(request: HttpRequest, participant: Participant, asset, sound: str) -> HttpResponse:
    """A stored sound (or the part of it asked for), recorded as evidence of listening where the test
    asks listeners to play every sound (``services.heard``)."""
    if asset is None:
        return JsonResponse({"message": UNKNOWN_SOUND, "extra": {}}, status=404)
    wav = _ServedWav(asset.file.open("rb"), asset.file.name)
    length = wav.length
    span = _byte_range(request, length)
    if span is not None and span[0] >= length:
        wav.close()
        return _unsatisfiable(length)
    if span is not None:
        wav.limit(*span)
    # HEAD is answered without a byte of the sound: it is no evidence.
    if participant.test.require_play_all and request.method == "GET":
        start, end = span or (0, length)
        sound_fetch_record(
            participant_id=participant.pk,
            sound=sound,
            start=start,
            end=end,
            size=length,
            duration_s=asset.duration_s,
        )
    response = FileResponse(wav, content_type="audio/wav")
    response["Content-Length"] = str(wav.length)
    # A neutral name: the stored file is named by content hash, which must not reach the listener.
    response["Content-Disposition"] = 'inline; filename="sound.wav"'
    return _ranged(response, span, length)


@require_safe
@_listener
def audio(request: HttpRequest, participant: Participant, token: str) -> HttpResponse:
    return _audio(request, participant, participant_stimulus_asset(participant, token), token)


@require_safe
@_listener
def reference_audio(request: HttpRequest, participant: Participant, token: str) -> HttpResponse:
    return _audio(
        request, participant, participant_reference_asset(participant, token), reference_sound(token)
    )


def _wav(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="audio/wav")
    response["Content-Disposition"] = 'inline; filename="sound.wav"'
    return response


@require_safe
@_listener
def calibration_audio(request: HttpRequest, participant: Participant) -> HttpResponse:
    """The calibration noise at the level of the test's material, made on request; what is stored is
    only that it was sent (the evidence ``calibration_confirm`` asks for)."""
    if not participant.test.headphone_check:
        return JsonResponse({"message": UNKNOWN_SOUND, "extra": {}}, status=404)
    data = wav_bytes(calibration_samples(participant.test.calibration_level_dbfs))
    span = _byte_range(request, len(data))
    if span is not None and span[0] >= len(data):
        return _unsatisfiable(len(data))
    start, end = span or (0, len(data))
    if request.method == "GET":
        sound_fetch_record(
            participant_id=participant.pk,
            sound=CALIBRATION_SOUND,
            start=start,
            end=end,
            size=len(data),
            duration_s=CALIBRATION_S,
        )
    return _ranged(_wav(data[start:end]), span, len(data))


@require_safe
@_listener
def headphone_audio(request: HttpRequest, participant: Participant, token: str) -> HttpResponse:
    """One headphone-check trial at the calibrated level, made on request (a few hundred kB; nothing
    is stored); only once the listener has calibrated."""
    trial = next((t for t in headphone_trials(participant) if t["token"] == token), None)
    if trial is None or not participant.test.headphone_check:
        return JsonResponse({"message": UNKNOWN_SOUND, "extra": {}}, status=404)
    if participant.calibrated_at is None and participant.headphone_passed is None:
        return _error(ConflictError(CALIBRATE_FIRST))
    return _wav(wav_bytes(headphone_trial_samples(trial["order"], participant.test.calibration_level_dbfs)))

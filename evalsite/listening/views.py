"""Listener pages and their JSON endpoints.

A listener reaches a test through its invite link, consents, and is bound to their participant by
a signed cookie; every later URL carries only opaque per-participant tokens.
"""

from __future__ import annotations

import json
from functools import wraps

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.listening import services
from evalsite.listening.models import ListeningTest, Participant
from evalsite.listening.selectors import (
    headphone_trials,
    listener_progress,
    listener_state,
    participant_reference_asset,
    participant_stimulus_asset,
    rating_answer,
)

COOKIE = "evalsite_listener"
COOKIE_SALT = "evalsite.listening.participant"
COOKIE_MAX_AGE = 60 * 60 * 24 * 30
NOT_YOUR_SESSION = services.UNKNOWN_PARTICIPANT


def _error(exc: ApplicationError) -> JsonResponse:
    status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictError) else 400
    return JsonResponse({"message": exc.message, "extra": exc.extra}, status=status)


def _same_browser(request: HttpRequest, ptoken: str) -> bool:
    """The request comes from the browser that joined as ``ptoken`` (its signed cookie; no query)."""
    return request.get_signed_cookie(COOKIE, default=None, salt=COOKIE_SALT) == ptoken


def _not_your_session(request: HttpRequest) -> HttpResponse:
    if request.headers.get("Accept", "").startswith("application/json") or request.method != "GET":
        return JsonResponse({"message": NOT_YOUR_SESSION, "extra": {}}, status=404)
    return render(request, "listening/message.html", {"message": NOT_YOUR_SESSION}, status=404)


def _private(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, no-store"
    return response


def _listener(view):
    """Resolve the participant from the URL token and require the browser that joined as them."""

    @wraps(view)
    def wrapper(request: HttpRequest, ptoken: str, *args, **kwargs):
        if not _same_browser(request, ptoken):
            return _not_your_session(request)
        participant = Participant.objects.select_related("test").filter(token=ptoken).first()
        if participant is None:
            return _not_your_session(request)
        return _private(view(request, participant, *args, **kwargs))

    return wrapper


def _json_body(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApplicationError(f"the request body is not valid JSON ({exc})", extra={"field": "body"}) from None
    if not isinstance(body, dict):
        raise ApplicationError("the request body must be a JSON object", extra={"field": "body"})
    return body


@require_http_methods(["GET", "POST"])
def invite(request: HttpRequest, invite_token: str) -> HttpResponse:
    """Consent page of a test; agreeing creates (or, for a returning crowd worker, resumes) a participant."""
    test = get_object_or_404(ListeningTest, invite_token=invite_token)
    crowd = {k: request.GET.get(k, request.POST.get(k, "")) for k in ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")}
    if test.status != ListeningTest.Status.PUBLISHED:
        return render(request, "listening/message.html", {"message": services.TEST_NOT_OPEN}, status=410)
    if request.method == "GET":
        return render(request, "listening/consent.html", {"test": test, "crowd": crowd})
    try:
        participant = services.participant_join(test=test, external_id=crowd["PROLIFIC_PID"],
                                                study_id=crowd["STUDY_ID"], session_id=crowd["SESSION_ID"])
    except ConflictError as exc:
        return render(request, "listening/message.html", {"message": exc.message,
                                                          "redirect": test.screened_out_redirect}, status=409)
    response = redirect("listening:session", ptoken=participant.token)
    response.set_signed_cookie(COOKIE, participant.token, salt=COOKIE_SALT, max_age=COOKIE_MAX_AGE,
                               httponly=True, samesite="Lax", secure=request.is_secure())
    return response


@ensure_csrf_cookie
@_listener
def session(request: HttpRequest, participant: Participant) -> HttpResponse:
    return render(request, "listening/session.html", {"participant": participant, "title": participant.test.title})


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
    if not _same_browser(request, ptoken):
        return _not_your_session(request)
    try:
        body = _json_body(request)
        rating = services.rating_submit(participant=ptoken, trial=body.get("trial"), stimulus=body.get("stimulus"),
                                        score=body.get("score"), request_id=body.get("request_id"))
    except ApplicationError as exc:
        return _private(_error(exc))
    return _private(JsonResponse({"score": rating_answer(rating)}))


@_post
def flag(participant: Participant, body: dict) -> JsonResponse:
    created = services.flag_submit(participant=participant, trial=body.get("trial"), stimulus=body.get("stimulus"),
                                   start=body.get("start"), end=body.get("end"), category=body.get("category"),
                                   note=body.get("note", ""), request_id=body.get("request_id"))
    return JsonResponse({"id": created.token}, status=201)


@_post
def complete(participant: Participant, body: dict) -> JsonResponse:
    participant = services.trial_complete(participant=participant, trial=body.get("trial"))
    progress = listener_progress(participant)
    return JsonResponse({"phase": progress["phase"], "position": progress["position"],
                         "completion": progress["completion"]})


@_post
def calibration(participant: Participant, body: dict) -> JsonResponse:
    participant = services.calibration_confirm(participant=participant, plays=body.get("plays"))
    progress = listener_progress(participant)
    return JsonResponse({"phase": progress["phase"], "screened_out": progress["screened_out"]})


@_post
def headphone(participant: Participant, body: dict) -> JsonResponse:
    participant = services.headphone_check_submit(participant=participant, answers=body.get("answers"))
    progress = listener_progress(participant)
    return JsonResponse({"passed": participant.headphone_passed, "phase": progress["phase"],
                         "screened_out": progress["screened_out"]})


@_post
def telemetry(participant: Participant, body: dict) -> JsonResponse:
    services.telemetry_append(participant=participant, trial=body.get("trial"), events=body.get("events"),
                              device={"sample_rate": body.get("device_sample_rate")})
    return HttpResponse(status=204)


def _audio(asset) -> HttpResponse:
    if asset is None:
        return JsonResponse({"message": "Unknown sound.", "extra": {}}, status=404)
    response = FileResponse(asset.file.open("rb"), content_type="audio/wav")
    # A neutral name: the stored file is named by content hash, which must not reach the listener.
    response["Content-Disposition"] = 'inline; filename="sound.wav"'
    return response


@_listener
def audio(request: HttpRequest, participant: Participant, token: str) -> HttpResponse:
    return _audio(participant_stimulus_asset(participant, token))


@_listener
def reference_audio(request: HttpRequest, participant: Participant, token: str) -> HttpResponse:
    return _audio(participant_reference_asset(participant, token))


def _wav(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="audio/wav")
    response["Content-Disposition"] = 'inline; filename="sound.wav"'
    return response


@_listener
def calibration_audio(request: HttpRequest, participant: Participant) -> HttpResponse:
    """The calibration noise at the level of the test's material (made on request, nothing stored)."""
    from evalsite.listening.calibration import calibration_samples, wav_bytes

    if not participant.test.headphone_check:
        return JsonResponse({"message": "Unknown sound.", "extra": {}}, status=404)
    return _wav(wav_bytes(calibration_samples(participant.test.calibration_level_dbfs)))


@_listener
def headphone_audio(request: HttpRequest, participant: Participant, token: str) -> HttpResponse:
    """One headphone-check trial at the calibrated level, made on request (a few hundred kB; nothing
    is stored); only once the listener has calibrated."""
    from evalsite.listening.calibration import headphone_trial_samples, wav_bytes

    trial = next((t for t in headphone_trials(participant) if t["token"] == token), None)
    if trial is None or not participant.test.headphone_check:
        return JsonResponse({"message": "Unknown sound.", "extra": {}}, status=404)
    if participant.calibrated_at is None and participant.headphone_passed is None:
        return _error(ConflictError(services.CALIBRATE_FIRST))
    return _wav(wav_bytes(headphone_trial_samples(trial["order"], participant.test.calibration_level_dbfs)))

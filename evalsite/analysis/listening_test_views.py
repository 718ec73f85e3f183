"""Researcher pages of one listening test's analysis: results page, exports and the printable report.

Login required: listeners never have a session (their pages live under /l/ and carry only opaque tokens), so a
listener's browser is sent to the login page like any stranger. A researcher sees only the tests whose runs
they may see (``listening.access``); any other is "not found".
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET

from evalsite.analysis import exports, figures_tests
from evalsite.analysis.availability import results_availability
from evalsite.analysis.compute import pairwise_for_correction
from evalsite.analysis.plain import listener_id
from evalsite.analysis.snapshots import listening_test_results
from evalsite.listening.access import listening_tests_visible
from evalsite.listening.models import ListeningTest, Participant, Stimulus
from evalsite.listening.selectors import participants_abandoned

CORRECTIONS = {"holm": "Holm (step-down)", "hochberg": "Hochberg (step-up)"}
"""The ``?correction=`` values of the results page and report; Holm is the default, BS.1534-3 names both."""
BAD_CORRECTION = "correction must be one of: holm, hochberg"


def _external_ids(test: ListeningTest) -> dict[str, str]:
    """Opaque listener id → crowd id (e.g. PROLIFIC_PID), so a researcher can act on an exclusion."""
    return {
        listener_id(test.pk, pk): external
        for pk, external in Participant.objects.filter(test=test)
        .exclude(external_id="")
        .values_list("id", "external_id")
    }


def _audio_urls(results: dict) -> dict[str, str]:
    """Stimulus id → URL of its audio, for the flag timelines' play buttons (researchers may hear the audio)."""
    ids = [t["stimulus"] for t in (results.get("flags") or {}).get("timelines") or []]
    # An imported test's stimuli have no audio (rated elsewhere).
    stimuli = Stimulus.objects.filter(pk__in=ids, asset__isnull=False).select_related("asset")
    return {str(s.pk): s.asset.file.url for s in stimuli}


def _correction(request: HttpRequest) -> str | None:
    """The requested multiple-comparison correction, ``holm`` when absent, None when not a known one."""
    value = request.GET.get("correction", "holm")
    return value if value in CORRECTIONS else None


def _with_correction(results: dict, correction: str) -> dict:
    """The results with their pairwise tests read under ``correction`` (the stored snapshot is not changed)."""
    return {
        **results,
        "pairwise": pairwise_for_correction(results.get("pairwise"), correction, results["alpha"]),
    }


def _server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={1000 * seconds:.1f}" for name, seconds in timings.items())


@login_required
@require_GET
def test_results_page(request: HttpRequest, pk: int) -> HttpResponse:
    """Scores, significance, mixed model, reliability, screening, flag timelines and human-vs-metric plots."""
    started = time.perf_counter()
    test = get_object_or_404(listening_tests_visible(request.user), pk=pk)
    correction = _correction(request)
    if correction is None:
        return HttpResponseBadRequest(BAD_CORRECTION)
    results = _with_correction(listening_test_results(test), correction)
    got_results = time.perf_counter()
    figures = figures_tests.page_figures(results)
    got_figures = time.perf_counter()
    external = _external_ids(test)
    audio = _audio_urls(results)
    timelines = [
        {**t, "figure": f"fig_timeline_{k}", "audio": audio.get(str(t["stimulus"]))}
        for k, t in enumerate((results.get("flags") or {}).get("timelines") or [])
    ]
    screening = [
        {**e, "external_id": external.get(e["listener"], "")} for e in results["screening"]["excluded"]
    ]
    metrics = [
        {
            **m,
            "figures": [
                f"fig_metric_{level}_{k}"
                for level in ("system", "item")
                if f"fig_metric_{level}_{k}" in figures
            ],
        }
        for k, m in enumerate((results.get("correlations") or {}).get("metrics") or [])
    ]
    body = render_to_string(
        "analysis/test_results.html",
        {
            "test": test,
            "r": results,
            "figures": figures,
            "timelines": timelines,
            "screening": screening,
            "metrics": metrics,
            "avail": results_availability(results),
            "correlation_levels": [
                (level, (results.get("correlations") or {}).get(level) or []) for level in ("system", "item")
            ],
            "correction": correction,
            "corrections": CORRECTIONS,
            "exports": [
                (t, [(f, reverse("analysis:test-export", args=[test.pk, t, f])) for f in exports.FORMATS])
                for t in exports.TABLES
            ],
            "api_url": reverse("api:listening-test-results", args=[test.pk]),
            # Read now, not with the cached results: it changes with the clock, not with answers.
            "abandoned": participants_abandoned(test),
            "abandoned_after_min": settings.EVALSITE_ABANDONED_AFTER_MIN,
        },
        request=request,
    )
    done = time.perf_counter()
    response = HttpResponse(body)
    response["Server-Timing"] = _server_timing(
        {
            **({"cache-hit": 0.0} if results["cache_hit"] else {k: v for k, v in results["timings"].items()}),
            "results": got_results - started,
            "figures": got_figures - got_results,
            "template": done - got_figures,
            "total": done - started,
        }
    )
    return response


@login_required
@require_GET
def test_export(request: HttpRequest, pk: int, table: str, fmt: str) -> HttpResponse:
    """ratings / flags / metrics / screening as CSV or Parquet."""
    if table not in exports.TABLES or fmt not in exports.FORMATS:
        raise Http404(f"no export {table}.{fmt}; tables: {', '.join(exports.TABLES)}; formats: csv, parquet")
    test = get_object_or_404(listening_tests_visible(request.user), pk=pk)
    response = HttpResponse(exports.export_bytes(test, table, fmt), content_type=exports.FORMATS[fmt])
    response["Content-Disposition"] = f'attachment; filename="listening-test-{test.pk}-{table}.{fmt}"'
    return response


@login_required
@require_GET
def test_report(request: HttpRequest, pk: int) -> HttpResponse:
    """A self-contained, printable HTML report with what ITU-R BS.1534-3 §10 and ITU-T P.808 ask for."""
    test = get_object_or_404(listening_tests_visible(request.user), pk=pk)
    correction = _correction(request)
    if correction is None:
        return HttpResponseBadRequest(BAD_CORRECTION)
    results = _with_correction(listening_test_results(test), correction)
    return HttpResponse(
        render_to_string(
            "analysis/test_report.html",
            {
                "test": test,
                "r": results,
                "correction": correction,
                "correction_name": CORRECTIONS[correction],
                "avail": results_availability(results),
                "svg": figures_tests.scores_svg(results, "kept"),
                "svg_all": figures_tests.scores_svg(results, "all"),
            },
            request=request,
        )
    )

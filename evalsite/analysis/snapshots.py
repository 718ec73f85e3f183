"""A listening test's results as every page, export, report, API call and alert reads them: computed once per
set of inputs and stored.

Results are keyed by the test and a fingerprint of its inputs (:func:`results_fingerprint`: count and latest
``updated_at`` of ratings, flags, participants and the conditions' metric results, plus the participants'
statuses). They are stored twice: as an :class:`~evalsite.analysis.models.AnalysisSnapshot` row, shared by every
web and worker process, and in Django's cache (without a ``CACHES`` setting that is each process's local memory,
so it only saves a process the snapshot's read). A page view, export, report or API call after no new answer reads
one of them and recomputes nothing; any new or changed rating or flag, a listener screened out, or a new metric
changes the fingerprint, so the next call recomputes and stores a new snapshot. The beat task
:func:`evalsite.analysis.tasks.analysis_refresh_task` does that for published tests in the background, so a
researcher usually finds the snapshot already there.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime

from django.core.cache import cache
from django.db.models import Count, Max, Q
from django.utils import timezone

from evalsite.analysis.compute import DEFAULT_N_BOOT, RESULTS_VERSION, compute_listening_test_results
from evalsite.analysis.models import AnalysisSnapshot
from evalsite.listening.models import ArtifactFlag, Condition, ListeningTest, Participant, Rating
from evalsite.scoring.models import MetricResult

CACHE_TIMEOUT_S = 7 * 24 * 3600


def results_fingerprint(test: ListeningTest) -> str:
    """A cheap hash of everything the results depend on (five aggregate queries, no row is read)."""
    # Finishing a trial writes no rating but turns its ratings into votes (``frames`` reads completed trials
    # only): the count and latest time of completed trials' ratings change then.
    ratings = Rating.objects.filter(participant__test=test).aggregate(
        n=Count("id"),
        last=Max("updated_at"),
        completed=Count("id", filter=Q(assignment__completed_at__isnull=False)),
        last_completed=Max("assignment__completed_at"),
    )
    flag_rows = ArtifactFlag.objects.filter(participant__test=test).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    people = Participant.objects.filter(test=test).aggregate(
        n=Count("id"),
        last=Max("updated_at"),
        screened=Count("id", filter=Q(status=Participant.Status.SCREENED_OUT)),
        completed=Count("id", filter=Q(status=Participant.Status.COMPLETED)),
        headphone_failed=Count("id", filter=Q(headphone_passed=False)),
    )
    checkpoints = Condition.objects.filter(test=test, checkpoint__isnull=False).values("checkpoint_id")
    metric_rows = MetricResult.objects.filter(checkpoint_id__in=checkpoints).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    test_row = (
        ListeningTest.objects.filter(pk=test.pk).values_list("created_at", "updated_at", "status").first()
    )
    parts = (
        RESULTS_VERSION,
        test.pk,
        test_row,
        sorted(ratings.items()),
        sorted(flag_rows.items()),
        sorted(people.items()),
        sorted(metric_rows.items()),
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def results_cache_key(test: ListeningTest, fingerprint: str, n_boot: int) -> str:
    return f"analysis:test-results:v{RESULTS_VERSION}:{test.pk}:{n_boot}:{fingerprint}"


def listening_test_results(test: ListeningTest, *, n_boot: int = DEFAULT_N_BOOT) -> dict:
    """The test's results (see the module docstring): from this process's cache, else from the stored snapshot
    for the current inputs, else computed now and stored for every other process.

    The returned dict has ``source`` (``"cache"``, ``"snapshot"`` or ``"computed"``), ``cache_hit`` (not
    computed by this call) and ``fingerprint``; everything else is described in
    :func:`compute_listening_test_results`.
    """
    started = time.perf_counter()
    fingerprint = results_fingerprint(test)
    fingerprint_s = time.perf_counter() - started
    key = results_cache_key(test, fingerprint, n_boot)
    found, source = cache.get(key), "cache"
    if found is None:
        found, source = analysis_snapshot_get(test=test, fingerprint=fingerprint, n_boot=n_boot), "snapshot"
        if found is not None:
            cache.set(key, found, CACHE_TIMEOUT_S)
    if found is not None:
        return {
            **found,
            "cache_hit": True,
            "source": source,
            "timings": {**found["timings"], "fingerprint": fingerprint_s},
        }
    results = _compute_and_store(test, fingerprint=fingerprint, n_boot=n_boot)
    results["timings"]["fingerprint"] = fingerprint_s
    cache.set(key, results, CACHE_TIMEOUT_S)
    return {**results, "cache_hit": False, "source": "computed"}


def analysis_snapshot_get(*, test: ListeningTest, fingerprint: str, n_boot: int) -> dict | None:
    """The stored results for exactly these inputs, or None."""
    return (
        AnalysisSnapshot.objects.filter(test=test, fingerprint=fingerprint, n_boot=n_boot)
        .values_list("data", flat=True)
        .first()
    )


def _compute_and_store(test: ListeningTest, *, fingerprint: str, n_boot: int) -> dict:
    """Compute the results and store their snapshot, stamped with the time the inputs were read."""
    read_at, started = timezone.now(), time.perf_counter()
    # The fingerprint read the test's row from the database; so do the results, not from a caller's older copy
    # (a status closed since it was loaded would otherwise be stored, as "published", under the new fingerprint).
    test = ListeningTest.objects.get(pk=test.pk)
    results = compute_listening_test_results(test, n_boot=n_boot)
    results["fingerprint"] = fingerprint
    analysis_snapshot_store(
        test=test,
        fingerprint=fingerprint,
        n_boot=n_boot,
        data=results,
        computed_at=read_at,
        duration_s=time.perf_counter() - started,
    )
    return results


def analysis_snapshot_store(
    *,
    test: ListeningTest,
    fingerprint: str,
    n_boot: int,
    data: dict,
    computed_at: datetime,
    duration_s: float,
) -> None:
    """Upsert the snapshot of (test, fingerprint, n_boot) and drop the test's snapshots of older inputs.

    One ``INSERT ... ON CONFLICT DO UPDATE``: two processes storing the same inputs at once both succeed (the
    results are the same but for their timings). Snapshots read before ``computed_at`` with another fingerprint
    are deleted; one stored by a slower, older computation after that stays until the next store.
    """
    row = AnalysisSnapshot(
        test=test,
        fingerprint=fingerprint,
        n_boot=n_boot,
        data=data,
        computed_at=computed_at,
        duration_s=max(0.0, duration_s),
    )
    # ``data`` is not validated here: the insert serialises it anyway (and fails on anything that is not JSON).
    row.full_clean(exclude=["data"], validate_unique=False, validate_constraints=False)
    AnalysisSnapshot.objects.bulk_create(
        [row],
        update_conflicts=True,
        unique_fields=["test", "fingerprint", "n_boot"],
        update_fields=["data", "computed_at", "duration_s", "updated_at"],
    )
    (
        AnalysisSnapshot.objects.filter(test=test, n_boot=n_boot, computed_at__lt=computed_at)
        .exclude(fingerprint=fingerprint)
        .delete()
    )


def analysis_snapshots_refresh(*, n_boot: int = DEFAULT_N_BOOT) -> list[int]:
    """Compute and store the results of every published test whose current inputs have no snapshot yet, so that
    a researcher's next view reads a snapshot instead of computing; returns the ids of the tests refreshed."""
    refreshed = []
    for test in ListeningTest.objects.filter(status=ListeningTest.Status.PUBLISHED).order_by("pk"):
        fingerprint = results_fingerprint(test)
        if AnalysisSnapshot.objects.filter(test=test, fingerprint=fingerprint, n_boot=n_boot).exists():
            continue
        results = _compute_and_store(test, fingerprint=fingerprint, n_boot=n_boot)
        cache.set(results_cache_key(test, fingerprint, n_boot), results, CACHE_TIMEOUT_S)
        refreshed.append(test.pk)
    return refreshed

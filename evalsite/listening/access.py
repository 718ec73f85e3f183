"""Which listening tests, and which stored sounds, a researcher (or a run token) may see and act on.

A test rates checkpoints of one or more runs; it is visible when every one of those runs is visible
(``evalsite.runs.access``), so a test never shows a researcher the audio or scores of a run they
cannot open. A native test rating no checkpoint at all is a superuser's; an imported test (rated on
another platform, its systems maybe linked to no checkpoint) is also its owner's, as long as every
checkpoint it does link to is visible. Invisible tests are "not found".
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from evalsite.audio.models import AudioAsset
from evalsite.listening.models import ListeningTest, Stimulus
from evalsite.runs.access import RunPrincipal, runs_visible
from evalsite.runs.models import EvalItem, Generation, Run


def listening_tests_visible(user, *, runs: QuerySet[Run] | None = None) -> QuerySet[ListeningTest]:
    """``runs``: the runs the caller may see, when that is not ``runs_visible(user)`` (an API run token)."""
    if runs is None:
        if getattr(user, "is_superuser", False):
            return ListeningTest.objects.all()
        runs = runs_visible(user)
    hidden = Run.objects.exclude(pk__in=runs.values("pk"))
    shown = Q(pk__in=ListeningTest.objects.filter(conditions__checkpoint__isnull=False).values("pk"))
    if getattr(user, "is_authenticated", False) and not isinstance(user, RunPrincipal):
        shown |= Q(owner=user) & ~Q(origin=ListeningTest.Origin.NATIVE)
    return (
        ListeningTest.objects.filter(shown)
        .exclude(pk__in=ListeningTest.objects.filter(conditions__checkpoint__run__in=hidden).values("pk"))
        .distinct()
    )


def asset_visible(caller, asset: AudioAsset) -> bool:
    """Eval-set references are shared by all researchers; an output, when its run is visible; a test's
    sound (anchors included), when the test is. A run token sees what its own run may."""
    if getattr(caller, "is_superuser", False):
        return True
    runs = runs_visible(caller)
    if isinstance(caller, RunPrincipal):
        references = EvalItem.objects.filter(reference=asset, eval_set__runs__in=runs)
    else:
        references = EvalItem.objects.filter(reference=asset)
    tests = listening_tests_visible(caller, runs=runs if isinstance(caller, RunPrincipal) else None)
    return (
        references.exists()
        or Generation.objects.filter(asset=asset, checkpoint__run__in=runs).exists()
        or Stimulus.objects.filter(asset=asset, trial__test__in=tests).exists()
    )

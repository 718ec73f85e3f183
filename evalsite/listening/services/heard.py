"""Evidence that a listener heard a sound, from what the server saw: the sound's bytes were all sent
to this participant (byte ranges merged, however many requests it took) and enough wall time has
passed since the first of them to have played it (``EVALSITE_LISTENING_MIN_PLAY_FRACTION`` of its
duration). Telemetry cannot create this evidence: a script can post any event, but not be sent
bytes it did not ask for, nor make time pass.

Load: a request for the whole file (what the listening page makes) costs one UPDATE that matches
nothing once the sound is complete plus one INSERT that is ignored on conflict; only a partial
Range request reads and merges under a row lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from evalsite.listening.models import SoundFetch

CALIBRATION_SOUND = "calibration"


def reference_sound(assignment_token: str) -> str:
    """The ``SoundFetch.sound`` key of a trial's open reference."""
    return f"ref:{assignment_token}"


def merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    """Half-open byte ranges ``[start, end)`` merged where they overlap or touch, sorted."""
    merged: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def sound_fetch_record(
    *, participant_id: int, sound: str, start: int, end: int, size: int, duration_s: float
) -> None:
    """Record that bytes ``[start, end)`` of a ``size``-byte sound were sent to this participant."""
    now = timezone.now()
    if start <= 0 and end >= size:
        whole = [[0, size]]
        updated = SoundFetch.objects.filter(
            participant_id=participant_id, sound=sound, complete=False
        ).update(ranges=whole, complete=True, size=size, updated_at=now)
        if not updated:
            SoundFetch.objects.bulk_create(
                [
                    SoundFetch(
                        participant_id=participant_id,
                        sound=sound,
                        size=size,
                        duration_s=duration_s,
                        ranges=whole,
                        complete=True,
                        first_fetched_at=now,
                    )
                ],
                ignore_conflicts=True,
            )
        return
    with transaction.atomic():
        fetch = (
            SoundFetch.objects.select_for_update().filter(participant_id=participant_id, sound=sound).first()
        )
        if fetch is None:
            try:
                with transaction.atomic():
                    SoundFetch.objects.create(
                        participant_id=participant_id,
                        sound=sound,
                        size=size,
                        duration_s=duration_s,
                        ranges=[[start, end]],
                        first_fetched_at=now,
                    )
                return
            except IntegrityError:
                # A parallel request of the same listener created it first: merge into that one.
                fetch = SoundFetch.objects.select_for_update().get(participant_id=participant_id, sound=sound)
        if fetch.complete:
            return
        fetch.ranges = merge_ranges([*fetch.ranges, [start, end]])
        fetch.complete = fetch.ranges == [[0, size]]
        fetch.save(update_fields=["ranges", "complete", "updated_at"])


def unheard_sounds(
    *, participant_id: int, sounds: Mapping[str, str], at: datetime | None = None
) -> list[str]:
    """The names (values of ``sounds``, a map of ``SoundFetch.sound`` keys to names) of the sounds
    without evidence of having been heard by ``at`` (now), in the order given."""
    at = at or timezone.now()
    fraction = settings.EVALSITE_LISTENING_MIN_PLAY_FRACTION
    fetched = {
        f.sound: f
        for f in SoundFetch.objects.filter(
            participant_id=participant_id, sound__in=list(sounds), complete=True
        )
    }
    return [
        name
        for key, name in sounds.items()
        if key not in fetched
        or at - fetched[key].first_fetched_at < timedelta(seconds=fraction * fetched[key].duration_s)
    ]

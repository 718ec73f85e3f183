"""Listening tests with few listeners (0, 1, 2) or degenerate answers, for the empty-state tests of the analysis
pages (unit tests on SQLite and the Chromium walk on PostgreSQL build them the same way)."""

from __future__ import annotations

import itertools
import uuid

from evalsite.listening import services
from evalsite.listening.models import StimulusHandle
from evalsite.listening.selectors import listener_state
from evalsite.scoring.models import MetricResult
from tests.factories import listening_world, make_listening_test

SCALES = {"mushra": (0, 100), "smos": (1, 5)}
_worlds = itertools.count()


def _score(kind: str, k: int, stimulus, item: str, equal: bool, bad: bool = False) -> float:
    """A plausible answer: the hidden reference high, anchors low, the systems apart and varying per item (a
    ``bad`` MUSHRA listener rates the hidden reference at 30, which BS.1534-3 post-screening excludes)."""
    low, high = SCALES[kind]
    if stimulus.expected:  # a gold question: its expected answer
        return stimulus.expected["min"]
    if equal:
        return (low + high) // 2
    j = int(item[3:])
    role = stimulus.condition.role
    if bad and role == "hidden_reference":
        return 30
    if kind == "mushra":
        base = {"hidden_reference": 96, "anchor_lp35": 15, "anchor_lp70": 45}.get(role)
        if base is None:
            base = 75 if stimulus.condition.label.startswith("hifigan") else 55
        return min(high, base + (3 * k + 2 * j) % 5)
    return (5 - (k + j) % 2) if stimulus.condition.label.startswith("hifigan") else 2 + (k + j) % 2


def answer_comparisons(participant, kind: str, k: int) -> None:
    """AB: the hifigan system is preferred; CMOS: each system is better than the reference, hifigan more so."""
    for trial in listener_state(participant)["trials"]:
        a, b = trial["stimuli"]
        first = (
            StimulusHandle.objects.select_related("stimulus__condition").get(token=a["id"]).stimulus.condition
        )
        if kind == "ab":
            score = a["id"] if first.label.startswith("hifigan") else b["id"]
        else:
            second = StimulusHandle.objects.select_related("stimulus__condition").get(token=b["id"])
            system = first if first.role == "system" else second.stimulus.condition
            better = (2 if system.label.startswith("hifigan") else 0) + k % 2
            score = -better if first.role == "system" else better
        services.rating_submit(
            participant=participant,
            trial=trial["id"],
            stimulus=b["id"],
            score=score,
            request_id=uuid.uuid4().hex,
        )
        services.trial_complete(participant=participant, trial=trial["id"])


def answer_all(
    participant, kind: str, k: int, *, equal: bool = False, flag: bool = True, bad: bool = False
) -> None:
    """Rate every trial of one listener and (``flag``) flag a click on the second system's first item."""
    if kind in ("ab", "cmos"):
        answer_comparisons(participant, kind, k)
        return
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            stimulus = (
                StimulusHandle.objects.select_related("stimulus__condition", "stimulus__trial__item")
                .get(token=stim["id"])
                .stimulus
            )
            item = stimulus.trial.item.key
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=_score(kind, k, stimulus, item, equal, bad),
                request_id=uuid.uuid4().hex,
            )
            if flag and item == "utt0" and stimulus.condition.label.startswith("evagan"):
                services.flag_submit(
                    participant=participant,
                    trial=trial["id"],
                    stimulus=stim["id"],
                    start=0.2,
                    end=0.4,
                    category="click",
                    request_id=uuid.uuid4().hex,
                )
        services.trial_complete(participant=participant, trial=trial["id"])


def thin_test(
    kind: str,
    listeners: int,
    *,
    n_items: int = 3,
    equal: bool = False,
    metrics: bool = True,
    flag: bool | frozenset[int] = True,
    bad: frozenset[int] = frozenset(),
    name: str | None = None,
):
    """A published ``kind`` test of two checkpoints with ``listeners`` listeners who answered everything and
    a stored metric (with per-item values) on both checkpoints; every listener (or those numbered in ``flag``)
    flags a click, the listeners numbered in ``bad`` rate the hidden reference low."""
    # Run names are unique: several thin tests in one database each get their own pair of runs.
    k = next(_worlds)
    world = listening_world(n_items=n_items, runs=(f"hifigan-run-{k}", f"evagan-run-{k}"))
    test = services.listening_test_publish(
        test=make_listening_test(
            name=name or f"{kind}-{listeners}-listeners{'-equal' if equal else ''}",
            kind=kind,
            checkpoints=world["checkpoints"],
            training_items=0,
            seed=3,
        )
    )
    for k in range(listeners):
        answer_all(
            services.participant_join(test=test),
            kind,
            k,
            equal=equal,
            flag=flag is True or (flag is not False and k in flag),
            bad=k in bad,
        )
    if metrics:
        for ckpt, value in zip(world["checkpoints"], (3.4, 2.1)):
            MetricResult.objects.create(
                checkpoint=ckpt,
                params_hash="p",
                name="pesq",
                status="done",
                value=value,
                higher_is_better=True,
                spec_key="k",
                per_item={f"utt{j}": value + 0.1 * j for j in range(n_items)},
            )
    return test, world

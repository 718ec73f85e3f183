"""Listening tests: what is asked (tests, conditions, trials, stimuli) and what listeners answered.

Everything a listener can see is addressed through per-participant opaque tokens
(``Assignment.token``, ``StimulusHandle.token``); no primary key, system label, checkpoint or
role ever reaches the listener.
"""

import secrets

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from evalsite.core.models import BaseModel

# Loudness targets a researcher may pick: broadcast (-23) to streaming (-14) practice and some margin.
LOUDNESS_TARGET_MIN_LUFS = -40.0
LOUDNESS_TARGET_MAX_LUFS = -10.0


def new_token() -> str:
    return secrets.token_urlsafe(18)


class ListeningTest(BaseModel):
    class Kind(models.TextChoices):
        MUSHRA = "mushra", "MUSHRA (ITU-R BS.1534-3)"
        SMOS = "smos", "SMOS (speaker similarity)"
        MOS = "mos", "MOS / ACR (ITU-T P.800)"
        CMOS = "cmos", "CMOS / CCR (ITU-T P.800 Annex E)"
        AB = "ab", "AB preference"

    class Status(models.TextChoices):
        DRAFT = "draft"
        PUBLISHED = "published"
        CLOSED = "closed"

    class Origin(models.TextChoices):
        """Where the answers came from: listeners here, or ratings imported from a test run elsewhere."""

        NATIVE = "native", "run here"
        LONG_CSV = "long_csv", "imported: long CSV"
        WEBMUSHRA = "webmushra", "imported: webMUSHRA CSV"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    title = models.CharField(max_length=200, default="Listening test", help_text="shown to listeners")
    instructions = models.TextField(blank=True, help_text="shown to listeners")
    seed = models.BigIntegerField(help_text="randomisation seed; participant seeds derive from it")
    votes_target = models.PositiveIntegerField(default=10, help_text="valid votes wanted per trial")
    min_listeners = models.PositiveIntegerField(
        default=20,
        validators=[MinValueValidator(1)],
        help_text="listeners wanted after post-screening (BS.1534-3: at least 20); the analysis warns below it",
    )
    trials_per_participant = models.PositiveIntegerField(
        null=True, blank=True, help_text="empty: all main trials"
    )
    invite_token = models.CharField(max_length=40, unique=True, default=new_token)
    completion_code = models.CharField(max_length=100, blank=True)
    completion_redirect = models.URLField(max_length=500, blank=True)
    screened_out_redirect = models.URLField(max_length=500, blank=True)
    build_warnings = models.JSONField(default=list, blank=True)
    design_warnings = models.JSONField(
        default=list,
        blank=True,
        help_text="design checks that failed, one per kind: {kind, message, items}; publishing needs a confirmation",
    )
    allow_no_preference = models.BooleanField(
        default=False, help_text="AB: listeners may answer 'no preference'"
    )
    require_play_all = models.BooleanField(
        default=False, help_text="listeners must play every sound (and the reference) before continuing"
    )
    headphone_check = models.BooleanField(
        default=False, help_text="antiphase headphone screening (Woods et al. 2017) before the first trial"
    )
    gold_items = models.PositiveSmallIntegerField(
        default=0, help_text="gold trials (obvious quality, known answer) built; each listener gets one"
    )
    trapping_items = models.PositiveSmallIntegerField(
        default=0, help_text="trapping trials (P.808 attention check) built; each listener gets one"
    )
    calibration_level_dbfs = models.FloatField(
        null=True,
        blank=True,
        help_text="RMS level (dBFS) of the test material; the calibration noise and the headphone-check tones play at it",
    )
    loudness_target_lufs = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(LOUDNESS_TARGET_MIN_LUFS), MaxValueValidator(LOUDNESS_TARGET_MAX_LUFS)],
        help_text="every stimulus is served at this BS.1770 loudness; empty: served as generated (not aligned)",
    )
    loudness_served_lufs = models.FloatField(
        null=True,
        blank=True,
        help_text="the loudness the stimuli were aligned to: the target, or lower where true peaks needed it",
    )
    questionnaire = models.JSONField(
        default=dict,
        blank=True,
        help_text="pre-test and post-test questions as asked (listening.questionnaire); empty: none",
    )
    published_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    origin = models.CharField(
        max_length=20,
        choices=Origin.choices,
        default=Origin.NATIVE,
        help_text="imported tests have no audio and never invite anyone; they are closed from the start",
    )
    import_summary = models.JSONField(
        default=dict, blank=True, help_text="imported tests: file name, sha256, format, rows, when"
    )

    @property
    def is_external(self) -> bool:
        return self.origin != self.Origin.NATIVE

    def __str__(self) -> str:
        return self.name


class Condition(BaseModel):
    """A condition of the test: a checkpoint, or the hidden reference / an anchor.

    CMOS has one ``COMPARISON`` condition that every system is rated against: the reference
    recording (no checkpoint) or a baseline checkpoint.
    """

    class Role(models.TextChoices):
        SYSTEM = "system"
        HIDDEN_REFERENCE = "hidden_reference"
        ANCHOR_LP35 = "anchor_lp35", "anchor: 3.5 kHz low-pass"
        ANCHOR_LP70 = "anchor_lp70", "anchor: 7 kHz low-pass"
        COMPARISON = "comparison", "CMOS comparison (reference or baseline)"
        GOLD = "gold", "quality control: gold"
        TRAPPING = "trapping", "quality control: trapping"

    test = models.ForeignKey(ListeningTest, on_delete=models.CASCADE, related_name="conditions")
    # "<run name>@<step>": a run name of up to 200 characters plus the step must fit.
    label = models.CharField(max_length=300, help_text="researcher-facing; never shown to listeners")
    role = models.CharField(max_length=30, choices=Role.choices)
    checkpoint = models.ForeignKey("runs.Checkpoint", on_delete=models.PROTECT, null=True, blank=True)
    external = models.BooleanField(
        default=False, help_text="a system of an imported test: may name no checkpoint of ours"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["test", "label"], name="condition_unique_label"),
            models.CheckConstraint(
                condition=~Q(role="system") | Q(checkpoint__isnull=False) | Q(external=True),
                name="condition_system_has_checkpoint",
            ),
        ]

    def __str__(self) -> str:
        return self.label


class Trial(BaseModel):
    """A trial as built. Quality-control trials (``control`` gold or trapping) have the shape of any
    other trial of the test; what they expect lives only on the server, in ``Stimulus.expected``."""

    class Control(models.TextChoices):
        NONE = "", "none"
        GOLD = "gold"
        TRAPPING = "trapping"

    test = models.ForeignKey(ListeningTest, on_delete=models.CASCADE, related_name="trials")
    item = models.ForeignKey("runs.EvalItem", on_delete=models.PROTECT)
    index = models.PositiveIntegerField()
    is_training = models.BooleanField(default=False)
    reference = models.ForeignKey(
        "audio.AudioAsset",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="open reference (MUSHRA, SMOS)",
    )
    control = models.CharField(max_length=10, choices=Control.choices, default=Control.NONE, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["test", "index"], name="trial_unique_index"),
            models.CheckConstraint(
                condition=Q(control="") | Q(is_training=False), name="trial_control_not_training"
            ),
        ]
        ordering = ["test", "index"]


class Stimulus(BaseModel):
    """One sound of a trial.

    In a quality-control trial, ``expected`` says which answers about this sound pass:
    ``{"min": lo, "max": hi, "of": what}`` where ``of`` is ``"score"`` (its own rating: MUSHRA,
    SMOS, MOS), ``"preference"`` (CMOS/AB: the trial's answer turned into this sound relative to
    the other one, whatever order they were heard in) or ``"answer"`` (CMOS/AB: the trial's answer
    exactly as given, B relative to A, as a spoken instruction asked). Sounds without it are free.
    """

    class Expected(models.TextChoices):
        SCORE = "score"
        PREFERENCE = "preference"
        ANSWER = "answer"

    trial = models.ForeignKey(Trial, on_delete=models.CASCADE, related_name="stimuli")
    condition = models.ForeignKey(Condition, on_delete=models.PROTECT, related_name="stimuli")
    asset = models.ForeignKey(
        "audio.AudioAsset",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="the audio served; empty only in an imported test (rated elsewhere)",
    )
    source_asset = models.ForeignKey(
        "audio.AudioAsset",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="the audio as generated, before loudness alignment; empty: served as generated",
    )
    loudness_lufs = models.FloatField(
        null=True, blank=True, help_text="BS.1770 loudness of the source audio, measured at build time"
    )
    gain_db = models.FloatField(
        null=True, blank=True, help_text="loudness alignment gain applied to the source"
    )
    expected = models.JSONField(
        null=True, blank=True, help_text="quality control: the passing answers (server only)"
    )
    instruction = models.CharField(
        max_length=300, blank=True, help_text="trapping: the request spoken in the sound (server only)"
    )

    class Meta:
        verbose_name_plural = "stimuli"
        constraints = [
            models.UniqueConstraint(fields=["trial", "condition"], name="stimulus_unique_condition")
        ]


class Participant(BaseModel):
    class Status(models.TextChoices):
        ACTIVE = "active"
        COMPLETED = "completed"
        SCREENED_OUT = "screened_out"

    test = models.ForeignKey(ListeningTest, on_delete=models.CASCADE, related_name="participants")
    token = models.CharField(max_length=40, unique=True, default=new_token)
    external_id = models.CharField(max_length=200, blank=True, help_text="e.g. PROLIFIC_PID")
    study_id = models.CharField(max_length=200, blank=True)
    session_id = models.CharField(max_length=200, blank=True)
    seed = models.BigIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    consented_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    device = models.JSONField(default=dict, blank=True)
    headphone_answers = models.JSONField(
        default=list, blank=True, help_text="headphone check: interval chosen per trial"
    )
    headphone_passed = models.BooleanField(
        null=True, blank=True, help_text="headphone check: None = not taken"
    )
    calibrated_at = models.DateTimeField(
        null=True, blank=True, help_text="level calibration confirmed (before the headphone check)"
    )
    calibration = models.JSONField(default=dict, blank=True, help_text="level calibration: plays, level_dbfs")
    questionnaire = models.JSONField(
        default=dict,
        blank=True,
        help_text='questionnaire answers per stage: {"pre": {"answers": {id: value}, "submitted_at": iso}, ...}',
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["test", "external_id"],
                condition=~Q(external_id=""),
                name="participant_unique_external_id",
            ),
        ]


class Assignment(BaseModel):
    """One trial as one participant sees it, in their order."""

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="assignments")
    trial = models.ForeignKey(Trial, on_delete=models.PROTECT, related_name="assignments")
    position = models.PositiveIntegerField()
    token = models.CharField(max_length=40, unique=True, default=new_token)
    completed_at = models.DateTimeField(null=True, blank=True)
    telemetry = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["participant", "trial"], name="assignment_unique_trial"),
            models.UniqueConstraint(fields=["participant", "position"], name="assignment_unique_position"),
        ]
        ordering = ["participant", "position"]


class StimulusHandle(BaseModel):
    """A stimulus as one participant sees it: an opaque token, a letter and a position."""

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="handles")
    stimulus = models.ForeignKey(Stimulus, on_delete=models.PROTECT, related_name="handles")
    position = models.PositiveSmallIntegerField()
    token = models.CharField(max_length=40, unique=True, default=new_token)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["assignment", "stimulus"], name="handle_unique_stimulus"),
        ]
        ordering = ["assignment", "position"]


class Rating(BaseModel):
    """One answer. MUSHRA/SMOS/MOS: the score of ``stimulus``.

    CMOS and AB trials have one rating, on the stimulus presented second (B, handle position 1),
    whose score is B relative to A: CMOS the raw answer −3..3, AB +1 (B preferred), −1 (A) or
    0 (no preference). ``selectors.cmos_score`` / ``selectors.ab_choice`` undo the order.
    """

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="ratings")
    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="ratings")
    stimulus = models.ForeignKey(Stimulus, on_delete=models.PROTECT, related_name="ratings")
    score = models.FloatField()
    request_id = models.CharField(max_length=64, help_text="the request that set the current score")
    history = models.JSONField(default=list, help_text="every request id seen, oldest first")
    is_training = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["participant", "stimulus"], name="rating_unique_per_stimulus"),
        ]


class ArtifactFlag(BaseModel):
    class Category(models.TextChoices):
        CLICK = "click", "Click / pop"
        BUZZ = "buzz", "Buzz / metallic"
        DISCONTINUITY = "discontinuity", "Discontinuity"
        NOISE = "noise", "Noise / hiss"
        MUFFLED = "muffled", "Muffled / high-frequency loss"
        OTHER = "other", "Other"

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="flags")
    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="flags")
    stimulus = models.ForeignKey(Stimulus, on_delete=models.PROTECT, related_name="flags")
    start_s = models.FloatField()
    end_s = models.FloatField()
    category = models.CharField(max_length=20, choices=Category.choices)
    note = models.CharField(max_length=1000, blank=True)
    request_id = models.CharField(max_length=64)
    token = models.CharField(max_length=40, unique=True, default=new_token)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["participant", "request_id"], name="flag_unique_request"),
            models.CheckConstraint(
                condition=Q(start_s__gte=0) & Q(end_s__gt=models.F("start_s")), name="flag_region_ordered"
            ),
        ]


class SoundFetch(BaseModel):
    """What the server sent one participant of one sound: the evidence that it was heard.

    One row per (participant, sound), written when the audio is served (byte ranges merged), so
    "heard" is decided from what the server saw rather than from telemetry a script could invent.
    ``sound`` is the URL token: a stimulus handle's token, ``ref:<assignment token>`` for a trial's
    open reference, or ``calibration``.
    """

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="sound_fetches")
    sound = models.CharField(max_length=50)
    size = models.PositiveIntegerField(help_text="bytes of the sound as served")
    duration_s = models.FloatField()
    ranges = models.JSONField(default=list, help_text="byte ranges served, merged: [[start, end), ...]")
    complete = models.BooleanField(default=False, help_text="every byte was served at least once")
    first_fetched_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "sound fetches"
        constraints = [
            models.UniqueConstraint(fields=["participant", "sound"], name="sound_fetch_unique_sound"),
        ]

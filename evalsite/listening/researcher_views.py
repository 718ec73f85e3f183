"""Researcher pages for listening tests: list, build, preview, publish/close, progress.

Login required; listeners never reach these pages (their URLs live under /l/ and carry no session). A
researcher sees and changes only the tests whose runs they may see (``listening.access``); others are 404.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from evalsite.core.exceptions import ApplicationError
from evalsite.listening import questionnaire as qn
from evalsite.listening.access import listening_tests_visible
from evalsite.listening.models import (
    LOUDNESS_TARGET_MAX_LUFS,
    LOUDNESS_TARGET_MIN_LUFS,
    ListeningTest,
    Stimulus,
)
from evalsite.listening.preview import preview_save
from evalsite.listening.selectors import (
    AB_ANSWER_VALUES,
    listening_test_progress,
    questionnaire_summary,
    scale_of,
)
from evalsite.listening.services.build import (
    listening_test_build,
    listening_test_close,
    listening_test_publish,
)
from evalsite.listening.services.design import (
    DEFAULT_LOUDNESS_TARGET_LUFS,
    INSTRUCTIONS_MAX_CHARS,
    ITEMS_NOT_IN_EVAL_SET,
    TestDesign,
)
from evalsite.listening.services.imports import (
    DEFAULT_CMOS_COMPARISON,
    FILE_TOO_BIG,
    IMPORT_BODY_SLACK,
    ImportRejected,
    checkpoint_mapping_parse,
    listening_test_import,
)
from evalsite.listening.services.preview import preview_begin
from evalsite.runs.access import checkpoints_visible
from evalsite.runs.models import Checkpoint, EvalItem

CHOOSE_ITEMS = "pick at least one item (or choose 'all items' or 'random items')."
RANDOM_ITEMS_MISSING = "say how many items to draw at random."


class BuildForm(forms.Form):
    name = forms.CharField(max_length=200)
    kind = forms.ChoiceField(choices=ListeningTest.Kind.choices)
    checkpoints = forms.ModelMultipleChoiceField(
        queryset=Checkpoint.objects.select_related("run").order_by("run__name", "step"),
        widget=forms.CheckboxSelectMultiple,
    )
    comparison = forms.ModelChoiceField(
        queryset=Checkpoint.objects.select_related("run").order_by("run__name", "step"),
        required=False,
        help_text="CMOS only: the baseline every checkpoint is compared with (empty: the reference recording)",
    )
    allow_no_preference = forms.BooleanField(required=False, help_text="AB only: offer 'no preference'")
    require_play_all = forms.BooleanField(
        required=False, initial=True, help_text="listeners must play every sound before continuing"
    )
    headphone_check = forms.BooleanField(
        required=False,
        initial=True,
        help_text="level calibration, then the antiphase headphone check, before the first trial; failing it "
        "screens the listener out",
    )
    gold_items = forms.IntegerField(
        min_value=0,
        max_value=50,
        initial=1,
        required=False,
        help_text="gold trials (obvious quality, known answer); one per listener",
    )
    trapping_items = forms.IntegerField(
        min_value=0,
        max_value=50,
        initial=1,
        required=False,
        help_text="trapping (spoken attention-check) trials; one per listener",
    )
    align_loudness = forms.BooleanField(
        required=False,
        initial=True,
        help_text="serve every sound at one BS.1770 loudness (untick for a loudness study: served as generated)",
    )
    loudness_target_lufs = forms.FloatField(
        min_value=LOUDNESS_TARGET_MIN_LUFS,
        max_value=LOUDNESS_TARGET_MAX_LUFS,
        initial=DEFAULT_LOUDNESS_TARGET_LUFS,
        required=False,
        label="Loudness target (LUFS)",
        help_text=f"{LOUDNESS_TARGET_MIN_LUFS:g} to {LOUDNESS_TARGET_MAX_LUFS:g}; lowered for the whole test "
        "where a sound's true peak would pass -1 dBTP",
    )
    # No default: a generic "Listening test" went out as the title of every test nobody retitled.
    title = forms.CharField(
        max_length=200,
        help_text="shown to listeners as the page title; say what they will do, not which systems are compared",
        widget=forms.TextInput(attrs={"placeholder": "e.g. Rate the quality of synthetic speech"}),
    )
    training_items = forms.IntegerField(min_value=0, initial=1)
    votes_target = forms.IntegerField(min_value=1, initial=10, help_text="valid votes wanted per trial")
    min_listeners = forms.IntegerField(
        min_value=1,
        max_value=10_000,
        initial=TestDesign.min_listeners,
        required=False,
        help_text="listeners wanted after screening (BS.1534-3: at least 20); the analysis warns below it",
    )
    trials_per_participant = forms.IntegerField(min_value=1, required=False, help_text="empty: every trial")
    completion_code = forms.CharField(max_length=100, required=False)
    completion_redirect = forms.URLField(required=False, assume_scheme="https")
    screened_out_redirect = forms.URLField(required=False, assume_scheme="https")

    # Instructions and item selection (one block of the page: ``ITEM_FIELDS``).
    instructions = forms.CharField(
        max_length=INSTRUCTIONS_MAX_CHARS,
        required=False,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 5, "cols": 60}),
        help_text=f"shown to listeners above every trial (empty: the standard wording of the test's kind); "
        f"at most {INSTRUCTIONS_MAX_CHARS} characters, a blank line starts a new paragraph",
    )
    item_selection = forms.ChoiceField(
        choices=[
            ("all", "all items of the eval set"),
            ("random", "a random number of them"),
            ("chosen", "the items chosen below"),
        ],
        initial="all",
        required=False,  # not sent (a script posting the older form): all items
        widget=forms.RadioSelect,
        label="Items",
    )
    random_items = forms.IntegerField(
        min_value=1,
        max_value=100_000,
        required=False,
        label="Random items",
        help_text="how many items to draw; drawn with the test's seed, so a rebuild with that seed draws "
        "the same ones",
    )
    items = forms.ModelMultipleChoiceField(
        queryset=EvalItem.objects.none(),
        required=False,
        label="Chosen items",
        help_text="the eval items of the visible checkpoints' eval sets (Ctrl/Cmd-click to pick several)",
        widget=forms.SelectMultiple(attrs={"size": 8}),
    )

    QUALITY_FIELDS = ("require_play_all", "headphone_check", "gold_items", "trapping_items")
    ITEM_FIELDS = ("instructions", "item_selection", "random_items", "items")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        # Only checkpoints of runs the researcher may see can be picked (and pass validation).
        visible = checkpoints_visible(user).select_related("run").order_by("run__name", "step")
        self.fields["checkpoints"].queryset = visible
        self.fields["comparison"].queryset = visible
        self.fields["checkpoints"].label_from_instance = lambda c: f"{c.run.name} @ {c.step} ({c.status})"
        self.fields["comparison"].label_from_instance = lambda c: f"{c.run.name} @ {c.step}"
        # Only items of eval sets the researcher's visible runs are evaluated on; that they are the
        # chosen checkpoints' own is checked in ``clean`` (and again by the build).
        self.fields["items"].queryset = (
            EvalItem.objects.filter(eval_set__runs__checkpoints__in=visible)
            .distinct()
            .select_related("eval_set")
            .order_by("eval_set__name", "key")
        )
        self.fields["items"].label_from_instance = lambda i: (
            f"{i.eval_set.name} / {i.key}" + (f": {i.text[:60]}" if i.text else "")
        )

    def groups(self) -> list[tuple[str, list]]:
        """The page's blocks of fields: what is rated, instructions and items, quality controls, then
        every other field (so a field added later is shown even before it is given a block)."""
        named = [
            ("Instructions and items", self.ITEM_FIELDS),
            ("Quality controls", self.QUALITY_FIELDS),
        ]
        taken = {name for _, names in named for name in names}
        first = [name for name in self.fields if name not in taken]
        return [("Test", [self[n] for n in first])] + [
            (legend, [self[n] for n in names]) for legend, names in named
        ]

    def clean(self):
        data = super().clean()
        selection = data.get("item_selection")
        if selection == "random" and data.get("random_items") is None and "random_items" not in self.errors:
            self.add_error("random_items", RANDOM_ITEMS_MISSING)
        if selection == "chosen":
            items, checkpoints = data.get("items"), data.get("checkpoints")
            if not items and "items" not in self.errors:
                self.add_error("items", CHOOSE_ITEMS)
            elif items and checkpoints:
                eval_sets = {c.run.eval_set_id for c in checkpoints}
                foreign = [i.key for i in items if i.eval_set_id not in eval_sets]
                if foreign:
                    names = sorted({c.run.eval_set.name if c.run.eval_set else "none" for c in checkpoints})
                    self.add_error(
                        "items",
                        ITEMS_NOT_IN_EVAL_SET.format(eval_set=", ".join(names), keys=", ".join(foreign[:10])),
                    )
        return data

    def item_choice(self) -> dict:
        """``TestDesign``'s ``items`` / ``random_items`` for the selection made."""
        data = self.cleaned_data
        if data["item_selection"] == "chosen":
            return {"items": sorted(data["items"], key=lambda i: i.key)}
        if data["item_selection"] == "random":
            return {"random_items": data["random_items"]}
        return {}


# --- questionnaires: their own form and fieldset, beside BuildForm ------------------------------------------

CUSTOM_HELP = (
    "one question per line. A free-text question is its text; a choice is the question, then its options, "
    "separated by | (e.g. 'Which device? | phone | laptop'). Start a line with * to make it required. "
    f"At most {qn.MAX_CUSTOM} lines."
)


class QuestionnaireForm(forms.Form):
    """The pre-test and post-test pages (``listening.questionnaire``): standard questions ticked from the menu,
    the researcher's own as lines of text. The post-test page asks for free comments unless unticked."""

    pre_questions = forms.MultipleChoiceField(
        choices=[(q.id, q.label) for q in qn.STANDARD.values()],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Before the test: standard questions",
        help_text="asked after consent, before calibration and the trials; all required but gender and comments",
    )
    pre_custom = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        label="Before the test: your own questions",
        help_text=CUSTOM_HELP,
    )
    post_questions = forms.MultipleChoiceField(
        choices=[(q.id, q.label) for q in qn.STANDARD.values()],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        initial=list(qn.DEFAULT_POST),
        label="After the test: standard questions",
        help_text="asked after the last trial, before the completion code",
    )
    post_custom = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        label="After the test: your own questions",
        help_text=CUSTOM_HELP,
    )

    @staticmethod
    def _custom(text: str, field: str) -> list[dict]:
        entries = []
        for n, line in enumerate((line.strip() for line in text.splitlines() if line.strip()), start=1):
            required = line.startswith("*")
            label, *options = [part.strip() for part in line.lstrip("*").split("|")]
            entry = {"id": f"custom_{n}", "custom": True, "label": label, "required": required}
            entry.update({"type": qn.CHOICE, "options": options} if options else {"type": qn.TEXT})
            try:
                qn.question_parse(entry, f"line {n}")
            except ApplicationError as exc:
                raise forms.ValidationError(exc.message) from None
            entries.append(entry)
        return entries

    def clean(self):
        data = super().clean()
        config = {}
        for stage in qn.STAGES:
            try:
                custom = self._custom(data.get(f"{stage}_custom") or "", f"{stage}_custom")
            except forms.ValidationError as exc:
                self.add_error(f"{stage}_custom", exc)
                continue
            questions = [{"id": q} for q in data.get(f"{stage}_questions") or []] + custom
            if questions:
                config[stage] = questions
        try:
            qn.questionnaire_parse(config)
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from None
        data["config"] = config or None
        return data


class ImportForm(forms.Form):
    """A test run on another platform: its ratings file and what the file does not say."""

    file = forms.FileField(
        help_text="long CSV (listener,item,system,score[,role][,trial]) or webMUSHRA's mushra.csv"
    )
    format = forms.ChoiceField(
        choices=[
            (ListeningTest.Origin.LONG_CSV, "long CSV"),
            (ListeningTest.Origin.WEBMUSHRA, "webMUSHRA mushra.csv"),
        ]
    )
    kind = forms.ChoiceField(choices=ListeningTest.Kind.choices)
    name = forms.CharField(max_length=200, help_text="a new test name")
    checkpoints = forms.CharField(
        required=False,
        max_length=20_000,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "system = run@step"}),
        help_text="optional: one 'system = run@step' per line, for checkpoints of runs you can see",
    )
    eval_set = forms.CharField(
        required=False, max_length=200, help_text="optional: link items to this eval set's items by key"
    )
    comparison = forms.CharField(
        max_length=300, initial=DEFAULT_CMOS_COMPARISON, help_text="CMOS only: the comparison system's name"
    )


def _loudness_target(data: dict) -> float | None:
    if not data["align_loudness"]:
        return None
    target = data["loudness_target_lufs"]
    return DEFAULT_LOUDNESS_TARGET_LUFS if target is None else target


@login_required
def test_list(request: HttpRequest) -> HttpResponse:
    tests = listening_tests_visible(request.user).order_by("-created_at")
    return render(request, "listening/researcher/list.html", {"tests": tests, "import_form": ImportForm()})


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


@login_required
def test_import(request: HttpRequest) -> HttpResponse:
    """Upload the ratings of a test run elsewhere; every problem in the file is listed, nothing half-imported."""
    problems, count, error = [], 0, ""
    limit = settings.EVALSITE_IMPORT_MAX_BYTES
    if request.method == "POST" and _declared_length(request) > limit + IMPORT_BODY_SLACK:
        # Refused before the body is read (a multipart file would otherwise be spooled to disk first).
        error = FILE_TOO_BIG.format(size=_declared_length(request), limit=limit)
        return render(
            request, "listening/researcher/import.html", {"form": ImportForm(), "error": error}, status=413
        )
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        mapping, mapping_problems = checkpoint_mapping_parse(data["checkpoints"])
        upload = data["file"]
        try:
            if mapping_problems:
                raise ImportRejected(file="the checkpoint mapping", problems=mapping_problems)
            test = listening_test_import(
                owner=request.user,
                name=data["name"],
                kind=data["kind"],
                fmt=data["format"],
                data=upload.read(settings.EVALSITE_IMPORT_MAX_BYTES + 1),
                size=upload.size,
                file_name=upload.name or "upload.csv",
                checkpoints=mapping,
                eval_set=data["eval_set"],
                comparison=data["comparison"] or DEFAULT_CMOS_COMPARISON,
            )
        except ImportRejected as exc:
            error, problems, count = exc.message, exc.extra["errors"], exc.extra["error_count"]
        else:
            messages.success(request, f"imported {test.import_summary['rows']} ratings")
            return redirect("listening-admin:detail", pk=test.pk)
    return render(
        request,
        "listening/researcher/import.html",
        {"form": form, "error": error, "problems": problems, "more": count - len(problems)},
        status=400 if form.errors or error else 200,
    )


@login_required
def test_build(request: HttpRequest) -> HttpResponse:
    form = BuildForm(request.POST or None, user=request.user)
    questions = QuestionnaireForm(request.POST or None, prefix="questionnaire")
    # Both checked, so a refusal in either is shown at once.
    valid = [form.is_valid(), questions.is_valid()] if request.method == "POST" else [False]
    if all(valid):
        data = form.cleaned_data
        try:
            design = TestDesign(
                name=data["name"],
                kind=data["kind"],
                checkpoints=list(data["checkpoints"]),
                training_items=data["training_items"],
                votes_target=data["votes_target"],
                min_listeners=data["min_listeners"] or TestDesign.min_listeners,
                trials_per_participant=data["trials_per_participant"],
                title=data["title"],
                instructions=data["instructions"],
                **form.item_choice(),
                completion_code=data["completion_code"],
                completion_redirect=data["completion_redirect"],
                screened_out_redirect=data["screened_out_redirect"],
                comparison=data["comparison"],
                allow_no_preference=data["allow_no_preference"],
                require_play_all=data["require_play_all"],
                headphone_check=data["headphone_check"],
                gold_items=data["gold_items"] or 0,
                trapping_items=data["trapping_items"] or 0,
                loudness_target_lufs=_loudness_target(data),
                questionnaire=questions.cleaned_data["config"],
            )
            test = listening_test_build(design=design, owner=request.user)
        except ApplicationError as exc:
            # Shown next to the field it is about where the form has that field, else above the form.
            named = [name for name in exc.extra.get("fields", {}) if name in form.fields]
            for name in named[:1] or [None]:
                form.add_error(name, exc.message)
        else:
            return redirect("listening-admin:detail", pk=test.pk)
    return render(request, "listening/researcher/build.html", {"form": form, "questions": questions})


@login_required
def test_detail(request: HttpRequest, pk: int) -> HttpResponse:
    test = get_object_or_404(listening_tests_visible(request.user), pk=pk)
    invite = request.build_absolute_uri(reverse("listening:invite", args=[test.invite_token]))
    # Free-text answers only when asked for (?answers=text): the summary itself is counts.
    with_text = request.GET.get("answers") == "text"
    return render(
        request,
        "listening/researcher/detail.html",
        {
            "test": test,
            "invite": invite,
            "progress": listening_test_progress(test),
            "questionnaire": questionnaire_summary(test, with_text=with_text),
            "with_text": with_text,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def test_listener_preview(request: HttpRequest, pk: int) -> HttpResponse:
    """ "Preview as a listener": the test's consent page, then (on agreeing) the real listener pages in
    a preview that keeps nothing (``services.preview``); for draft, published and closed tests."""
    test = get_object_or_404(listening_tests_visible(request.user), pk=pk)
    banner = {"back": reverse("listening-admin:detail", args=[test.pk])}
    if request.method == "GET":
        return render(request, "listening/consent.html", {"test": test, "crowd": {}, "preview": banner})
    try:
        token, snapshot = preview_begin(test=test)
    except ApplicationError as exc:
        messages.error(request, f"preview: {exc.message}")
        return redirect("listening-admin:detail", pk=test.pk)
    preview_save(request, token=token, test=test, snapshot=snapshot)
    return redirect("listening:session", ptoken=token)


@login_required
def test_preview(request: HttpRequest, pk: int, index: int) -> HttpResponse:
    """A trial as built, with each stimulus's condition shown (researchers only)."""
    test = get_object_or_404(listening_tests_visible(request.user), pk=pk)
    trial = get_object_or_404(test.trials.select_related("item", "reference"), index=index)
    stimuli = trial.stimuli.select_related("condition", "asset").order_by(
        "condition__role", "condition__label"
    )
    neighbours = {
        "previous": index - 1 if index > 0 else None,
        "next": index + 1 if test.trials.filter(index=index + 1).exists() else None,
    }
    rows = [
        {
            "label": s.condition.label,
            # The role is said only where the label does not already say it ("Hidden Reference").
            "role": None
            if s.condition.get_role_display().casefold() == s.condition.label.casefold()
            else s.condition.get_role_display(),
            "url": s.asset.file.url if s.asset_id else None,
            "expected": _expected_text(test, s.expected) if s.expected else "",
            "instruction": s.instruction,
        }
        for s in stimuli
    ]
    return render(
        request,
        "listening/researcher/preview.html",
        {"test": test, "trial": trial, "rows": rows, **neighbours},
    )


def _score_text(test: ListeningTest, value: float) -> str:
    """A score as the listener picks it: the scale's label with its value, or the AB answer."""
    if test.kind == ListeningTest.Kind.AB:
        answers = {v: k for k, v in AB_ANSWER_VALUES.items()}
        answer = answers.get(value)
        return {"A": "I prefer A", "B": "I prefer B"}.get(answer, "No preference") if answer else f"{value:g}"
    labels = {label["value"]: label["text"] for label in scale_of(test).get("labels", [])}
    return f"{value:g} ({labels[value]})" if value in labels else f"{value:g}"


def _expected_text(test: ListeningTest, expected: dict) -> str:
    """What a quality-control sound expects (``Stimulus.expected``), in the researcher's words."""
    low, high = expected["min"], expected["max"]
    answers = _score_text(test, low) if low == high else f"{low:g} to {high:g}"
    of = expected.get("of", Stimulus.Expected.SCORE)
    if of == Stimulus.Expected.PREFERENCE:
        return f"this sound rated {answers} relative to the other"
    if of == Stimulus.Expected.ANSWER:
        return f"the answer {answers}"
    return f"a rating of {answers}"


@login_required
@require_POST
def test_transition(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    test = get_object_or_404(listening_tests_visible(request.user), pk=pk)
    move = {"publish": listening_test_publish, "close": listening_test_close}.get(action)
    if move is None:
        messages.error(request, f"unknown action {action!r}")
    else:
        try:
            if action == "publish":
                # The "publish anyway" box beside the design warnings; any other value is no confirmation.
                move(test=test, confirm=request.POST.get("confirm") == "yes")
            else:
                move(test=test)
            messages.success(request, f"test {action}ed" if action == "publish" else "test closed")
        except ApplicationError as exc:
            messages.error(request, exc.message)
    return redirect("listening-admin:detail", pk=pk)

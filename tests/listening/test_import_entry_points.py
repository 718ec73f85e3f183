"""Importing a test run elsewhere through the researcher page and the API, and what an imported test's analysis,
report and export pages show (the same numbers as a native test with the same answers)."""

import io
import re

import pandas as pd
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse
from rest_framework.test import APIClient

from evalsite.analysis.snapshots import listening_test_results
from evalsite.api.services import researcher_token_issue
from evalsite.listening.models import ListeningTest, Rating
from evalsite.runs.services import run_create
from tests.factories import EvalSetFactory, listening_world
from tests.listening.test_import_external import as_long_csv, csv_bytes, mushra_rows, native_mushra

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def researcher(django_user_model):
    return django_user_model.objects.create_user("ada", password="pw-ada-12345")


@pytest.fixture
def browser(client, researcher):
    client.force_login(researcher)
    return client


def upload(data: bytes, name="ratings.csv"):
    return SimpleUploadedFile(name, data, content_type="text/csv")


def form(data: bytes, **fields):
    return {
        "file": upload(data),
        "format": "long_csv",
        "kind": "mushra",
        "name": "ext",
        "comparison": "reference",
        **fields,
    }


def problems_of(response) -> list[str]:
    return re.findall(r"<li><code>(.*?)</code></li>", response.content.decode())


# --- researcher page ----------------------------------------------------------------------------------------------


def test_the_test_list_offers_the_import_form(browser):
    page = browser.get(reverse("listening-admin:list")).content.decode()
    assert 'data-testid="import-form"' in page and 'enctype="multipart/form-data"' in page
    assert 'name="checkpoints"' in page and 'name="kind"' in page


def test_a_researcher_imports_a_file_and_lands_on_the_test(browser):
    response = browser.post(reverse("listening-admin:import"), form(csv_bytes(mushra_rows())))
    test = ListeningTest.objects.get(name="ext")
    assert response.status_code == 302 and response["Location"] == reverse(
        "listening-admin:detail", args=[test.pk]
    )
    page = browser.get(response["Location"]).content.decode()
    assert 'data-testid="import-summary"' in page and "ratings.csv" in page and "60 ratings" in page
    assert 'data-testid="invite-link"' not in page and ">Publish<" not in page
    listing = browser.get(reverse("listening-admin:list")).content.decode()
    assert "(imported: long CSV)" in listing
    # The trial preview (not linked for an imported test) says there is no audio rather than failing.
    preview = browser.get(reverse("listening-admin:preview", args=[test.pk, 0]))
    assert preview.status_code == 200 and preview.content.decode().count("no audio (rated elsewhere)") == 5


def test_a_bad_file_lists_every_problem_on_the_page_and_imports_nothing(browser):
    rows = mushra_rows(n_listeners=1)
    rows[0] = ("L0", "utt0", "good", 101, "system")
    rows[2] = ("L0", "utt0", "ref", "x", "hidden_reference")
    response = browser.post(reverse("listening-admin:import"), form(csv_bytes(rows)))
    assert response.status_code == 400
    assert problems_of(response) == [
        "line 2: column score: 101 is out of range; must be a number from 0 to 100",
        "line 4: column score: &#x27;x&#x27; is not a number; must be a number from 0 to 100",
    ]
    assert "2 problem(s) in ratings.csv; nothing was imported" in response.content.decode()
    assert not ListeningTest.objects.exists() and not Rating.objects.exists()


def test_mapping_a_system_to_a_checkpoint_of_an_invisible_run_is_refused(browser, django_user_model):
    world = listening_world(n_items=3)
    theirs = world["checkpoints"][0]
    theirs.run.owner = django_user_model.objects.create_user("bob", password="pw-bob-12345")
    theirs.run.save()
    response = browser.post(
        reverse("listening-admin:import"),
        form(csv_bytes(mushra_rows(n_listeners=1)), checkpoints=f"good = {theirs.run.name}@{theirs.step}"),
    )
    assert response.status_code == 400
    assert problems_of(response) == [
        f"checkpoints: system &#x27;good&#x27;: no checkpoint &#x27;{theirs.run.name}@{theirs.step}&#x27; that you can see"
    ]
    response = browser.post(
        reverse("listening-admin:import"),
        form(csv_bytes(mushra_rows(n_listeners=1)), checkpoints="good run@x@"),
    )
    assert problems_of(response) == [
        "checkpoints: line 1: &#x27;good run@x@&#x27; is not &#x27;system = run@step&#x27;"
    ]
    assert not ListeningTest.objects.exists()


@override_settings(EVALSITE_IMPORT_MAX_BYTES=1000)
def test_a_huge_upload_is_refused_before_it_is_read(browser):
    big = b"listener,item,system,score\n" + b"L0,u0,a,3\n" * 8000  # 80 kB: past the limit and the form slack
    response = browser.post(reverse("listening-admin:import"), form(big, kind="mos"))
    assert response.status_code == 413
    assert "is over the import limit of 1000 bytes" in response.content.decode()
    small_but_over = b"listener,item,system,score\n" + b"L0,u0,a,3\n" * 200
    response = browser.post(reverse("listening-admin:import"), form(small_but_over, kind="mos"))
    assert response.status_code == 400 and problems_of(response) == [
        "file: 2027 bytes is over the import limit of 1000 bytes (EVALSITE_IMPORT_MAX_BYTES)"
    ]


def test_someone_else_cannot_see_an_imported_test(browser, client, django_user_model):
    browser.post(reverse("listening-admin:import"), form(csv_bytes(mushra_rows())))
    test = ListeningTest.objects.get(name="ext")
    client.force_login(django_user_model.objects.create_user("eve", password="pw-eve-12345"))
    for url in (
        reverse("listening-admin:detail", args=[test.pk]),
        reverse("analysis:test-results", args=[test.pk]),
        reverse("analysis:test-report", args=[test.pk]),
        reverse("analysis:test-export", args=[test.pk, "ratings", "csv"]),
    ):
        assert client.get(url).status_code == 404, url
    assert f"/listening/{test.pk}/" not in client.get(reverse("listening-admin:list")).content.decode()


# --- analysis, report and exports of an imported test ----------------------------------------------------------


def score_cells(html: str) -> list[str]:
    """The numbers of the scores table (kept listeners), as rendered."""
    table = html[html.index('data-testid="scores"') :]
    table = table[: table.index("</table>")]
    return re.findall(r"<td[^>]*>([^<]*)</td>", table)


def test_analysis_report_and_export_pages_of_an_import_show_the_native_numbers(browser, researcher):
    native, world = native_mushra()
    for checkpoint in world["checkpoints"]:  # the native test is visible through its runs
        checkpoint.run.owner = researcher
        checkpoint.run.save()
    response = browser.post(reverse("listening-admin:import"), form(as_long_csv(native), name="twin"))
    assert response.status_code == 302
    imported = ListeningTest.objects.get(name="twin")
    pages = {}
    for test in (native, imported):
        results = browser.get(reverse("analysis:test-results", args=[test.pk]))
        report = browser.get(reverse("analysis:test-report", args=[test.pk]))
        export = browser.get(reverse("analysis:test-export", args=[test.pk, "ratings", "csv"]))
        assert results.status_code == report.status_code == export.status_code == 200
        pages[test.pk] = (
            results.content.decode(),
            report.content.decode(),
            b"".join(export.streaming_content) if export.streaming else export.content,
        )
    (n_page, n_report, n_csv), (i_page, i_report, i_csv) = pages[native.pk], pages[imported.pk]
    kept_native = listening_test_results(native)["scores"]["kept"]
    for row in kept_native:  # every kept mean of the native test is on both pages
        mean = f"{row['mean']:.1f}"
        assert mean in n_page and mean in i_page and mean in i_report and mean in n_report
    assert listening_test_results(imported)["scores"] == listening_test_results(native)["scores"]
    n_frame, i_frame = pd.read_csv(io.BytesIO(n_csv)), pd.read_csv(io.BytesIO(i_csv))
    n_frame = n_frame.loc[n_frame["trial_type"] == "main"]
    assert sorted(n_frame["score"]) == sorted(i_frame["score"])
    assert (
        n_frame["excluded"].sum() == i_frame["excluded"].sum() == 15
    )  # worker-0: 3 main items × 5 conditions


# --- API -------------------------------------------------------------------------------------------------------


def api(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {researcher_token_issue(user=user)}")
    return client


def test_the_api_imports_a_multipart_upload(researcher):
    response = api(researcher).post(
        "/api/v1/listening-tests/import/",
        {"file": upload(csv_bytes(mushra_rows())), "name": "api-ext", "kind": "mushra"},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "api-ext" and body["status"] == "closed" and body["invite_url"] == ""
    assert body["participants"] == 4 and body["trials"] == 3
    results = api(researcher).get(f"/api/v1/listening-tests/{body['id']}/results/")
    assert results.status_code == 200


def test_the_api_reports_every_bad_row_in_the_one_error_shape(researcher):
    rows = mushra_rows(n_listeners=1)
    rows[3] = ("L0", "utt0", "lp35", -1, "anchor_lp35")
    response = api(researcher).post(
        "/api/v1/listening-tests/import/",
        {"file": upload(csv_bytes(rows)), "name": "api-ext", "kind": "mushra"},
        format="multipart",
    )
    assert response.status_code == 400
    body = response.json()
    assert body["extra"]["fields"]["file"] == [
        "line 5: column score: -1 is out of range; must be a number from 0 to 100"
    ]
    assert body["extra"]["error_count"] == 1 and not ListeningTest.objects.exists()


@pytest.mark.parametrize(
    "fields,field,why",
    [
        ({"kind": "stereo"}, "kind", '"stereo" is not a valid choice.'),
        ({"format": "xlsx"}, "format", '"xlsx" is not a valid choice.'),
        ({"file": None}, "file", "No file was submitted."),
    ],
)
def test_the_api_refuses_bad_fields(researcher, fields, field, why):
    data = {
        "file": upload(csv_bytes(mushra_rows(n_listeners=1))),
        "name": "api-ext",
        "kind": "mushra",
        **fields,
    }
    response = api(researcher).post(
        "/api/v1/listening-tests/import/",
        {k: v for k, v in data.items() if v is not None},
        format="multipart",
    )
    assert response.status_code == 400 and response.json()["extra"]["fields"][field] == [why]


def test_the_api_refuses_a_binary_file_and_the_wrong_kind(researcher):
    client = api(researcher)
    response = client.post(
        "/api/v1/listening-tests/import/",
        {
            "file": upload(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "ratings.png"),
            "name": "x",
            "kind": "mushra",
        },
        format="multipart",
    )
    assert response.status_code == 400
    assert response.json()["extra"]["errors"] == [
        "file: not a text file (a NUL byte at offset 8); export the ratings as CSV"
    ]
    response = client.post(
        "/api/v1/listening-tests/import/",
        {"file": upload(csv_bytes(mushra_rows(n_listeners=1))), "name": "x", "kind": "cmos"},
        format="multipart",
    )
    errors = response.json()["extra"]["errors"]
    assert response.status_code == 400 and errors[0] == (
        "line 2: column score: 80 is out of range; must be a whole number from -3 to 3 (the system relative to the comparison)"
    )


@override_settings(EVALSITE_IMPORT_MAX_BYTES=1000)
def test_the_api_refuses_a_huge_body_with_413_before_reading_it(researcher):
    big = b"listener,item,system,score\n" + b"L0,u0,a,3\n" * 8000
    response = api(researcher).post(
        "/api/v1/listening-tests/import/",
        {"file": upload(big), "name": "x", "kind": "mos"},
        format="multipart",
    )
    assert response.status_code == 413 and not ListeningTest.objects.exists()


def test_a_run_token_cannot_import(researcher):
    run, token = run_create(
        name="voc", kind="vocoder", model_family="hifigan", eval_set=EvalSetFactory(), owner=researcher
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post(
        "/api/v1/listening-tests/import/",
        {"file": upload(csv_bytes(mushra_rows(n_listeners=1))), "name": "x", "kind": "mushra"},
        format="multipart",
    )
    assert response.status_code == 403 and not ListeningTest.objects.exists()


def test_an_imported_test_cannot_be_previewed_as_a_listener(browser):
    browser.post(reverse("listening-admin:import"), form(csv_bytes(mushra_rows())))
    test = ListeningTest.objects.get(name="ext")
    listeners = test.participants.count()
    response = browser.post(reverse("listening-admin:listener-preview", args=[test.pk]))
    assert response.status_code == 302 and response["Location"] == reverse(
        "listening-admin:detail", args=[test.pk]
    )
    page = browser.get(response["Location"]).content.decode()
    assert "preview:" in page  # the refusal is said on the test's page
    assert test.participants.count() == listeners and not browser.session.get("listening-previews")

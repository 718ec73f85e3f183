"""The API documentation page: Swagger UI over the served schema, from this installation's files only."""

import re

from django.contrib.staticfiles import finders
from django.test import Client


def test_the_docs_page_is_public_and_loads_only_this_sites_files():
    page = Client().get("/api/v1/docs/")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") for s in sources), sources
    for source in sources:
        if source.startswith("/static/"):
            assert finders.find(source.removeprefix("/static/")), f"{source} is not an installed static file"
    # Inline scripts would need the page's nonce: the start-up script is a file of its own.
    assert not re.search(r"<script>(?!</script>)", html)


def test_the_docs_script_points_swagger_ui_at_the_served_schema():
    script = Client().get("/api/v1/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert '"/api/v1/schema/"' in script.content.decode()


def test_the_docs_page_takes_no_writes():
    assert Client().post("/api/v1/docs/").status_code == 405

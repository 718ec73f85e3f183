"""Static files as deployed (issue 17, item 8): collectstatic with evalsite.core.staticfiles.StaticFilesStorage
writes hashed names whose ES-module imports name the hashed files too, gzip and brotli copies; WhiteNoise
serves them from the web process with a long immutable cache for hashed names and a short one otherwise.

Only static/listening/ and a stand-in for a vendored bundle are collected (the whole site takes tens of CPU
seconds to compress); the whole site, in Chromium, is tests/integration/test_static_files_browser.py."""

import json
import re
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

REPO = Path(__file__).resolve().parents[2]
STORAGE = {"BACKEND": "evalsite.core.staticfiles.StaticFilesStorage"}
ONLY_OUR_FOLDERS = ["django.contrib.staticfiles.finders.FileSystemFinder"]
LONG = "max-age=315360000, public, immutable"


@pytest.fixture
def collected(tmp_path, settings):
    source, root = tmp_path / "source", tmp_path / "root"
    shutil.copytree(REPO / "static" / "listening", source / "listening")
    # A vendored script that mentions imports in its (minified) text must come through untouched.
    (source / "vendor").mkdir()
    (source / "vendor" / "lib.js").write_text(
        'var s="import x from \\"./nowhere.js\\";";' + "var pad=1;" * 200
    )
    settings.STATICFILES_DIRS = [source]
    settings.STATICFILES_FINDERS = ONLY_OUR_FOLDERS
    settings.STATIC_ROOT = root
    settings.STORAGES = {**settings.STORAGES, "staticfiles": STORAGE}
    settings.DEBUG = False
    settings.WHITENOISE_USE_FINDERS = False
    settings.WHITENOISE_AUTOREFRESH = False
    call_command("collectstatic", interactive=False, verbosity=0)
    return root, json.loads((root / "staticfiles.json").read_text())["paths"]


def test_module_imports_name_the_hashed_files_and_every_hashed_file_exists(collected):
    root, paths = collected
    for name in (p.name for p in (REPO / "static" / "listening").glob("*.js")):
        hashed = root / paths[f"listening/{name}"]
        assert re.fullmatch(rf"{name[:-3]}\.[0-9a-f]{{12}}\.js", hashed.name), hashed.name
        imports = re.findall(r'from "\./([^"]+)"', hashed.read_text())
        for target in imports:
            # Every import points at a hashed name that collectstatic wrote: never the mutable plain one.
            assert re.fullmatch(r"[a-z]+\.[0-9a-f]{12}\.js", target), (name, target)
            assert (root / "listening" / target).is_file()
    app = (root / paths["listening/app.js"]).read_text()
    assert f'from "./{Path(paths["listening/dom.js"]).name}"' in app
    # The rewrite is for our modules only: the vendored file's text is byte for byte the same.
    assert (root / paths["vendor/lib.js"]).read_text() == (root / "vendor" / "lib.js").read_text()


def test_compressed_copies_are_written_and_decompress_to_the_file(collected):
    import gzip

    import brotli

    root, paths = collected
    hashed = root / paths["listening/trial.js"]
    assert gzip.decompress(Path(f"{hashed}.gz").read_bytes()) == hashed.read_bytes()
    assert brotli.decompress(Path(f"{hashed}.br").read_bytes()) == hashed.read_bytes()


def test_whitenoise_serves_hashed_names_for_good_and_plain_names_briefly(collected, db):
    root, paths = collected
    client = Client()  # a new handler: WhiteNoise reads the collected folder now
    hashed = client.get(f"/static/{paths['listening/api.js']}", HTTP_ACCEPT_ENCODING="gzip, deflate, br")
    assert hashed.status_code == 200
    assert hashed["Cache-Control"] == LONG
    assert hashed["Content-Encoding"] == "br" and hashed["Content-Type"].startswith("text/javascript")
    plain = client.get("/static/listening/api.js", HTTP_ACCEPT_ENCODING="gzip")
    assert plain["Content-Encoding"] == "gzip"
    assert plain["Cache-Control"] == "max-age=60, public"
    # A browser with the file revalidates for nothing, and no one reads outside the folder.
    again = client.get(f"/static/{paths['listening/api.js']}", HTTP_IF_NONE_MATCH=hashed["ETag"])
    assert again.status_code == 304
    for bad in ("/static/../manage.py", "/static/%2e%2e/%2e%2e/manage.py", "/static/listening/nope.js"):
        assert client.get(bad).status_code == 404, bad


@override_settings(
    STORAGES={"staticfiles": STORAGE, "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}
)
def test_a_page_names_the_hashed_file_and_without_collectstatic_says_what_is_missing(tmp_path, settings):
    from django.templatetags.static import static

    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path / "empty"
    with pytest.raises(ValueError, match="Missing staticfiles manifest entry for 'listening/listener.js'"):
        static("listening/listener.js")

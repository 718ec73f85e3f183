"""manage.py models_fetch: thin command over metrics.embedders.fetch, against a local HTTP server."""

import dataclasses
import hashlib
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from metrics.embedders import fetch
from tests.http_fileserver import closed_port_url, serve_files

# Small synthetic stand-ins for the real files; their digests are patched into the catalogue.
PAYLOAD = {
    "panns/Cnn14_16k_mAP=0.438.pth": b"cnn14-16k " * 3000,
    "vggish/vggish-10086976.pth": b"vggish " * 2000,
    "vggish/vggish_pca_params-970ea276.pth": b"pca " * 500,
}


@pytest.fixture
def catalogue(monkeypatch):
    """The real catalogue with the synthetic files' digests (md5 for Zenodo, sha256 otherwise)."""
    real = fetch.remote_files()

    def patched():
        out = dict(real)
        for relpath, data in PAYLOAD.items():
            r = real[relpath]
            if r.md5:
                out[relpath] = dataclasses.replace(r, md5=hashlib.md5(data).hexdigest(), size=None)
            else:
                out[relpath] = dataclasses.replace(
                    r, sha256=hashlib.sha256(data).hexdigest(), sha256_prefix=None, size=len(data)
                )
        return out

    monkeypatch.setattr(fetch, "remote_files", patched)
    return patched


def _run(*args, **kwargs):
    out, err = StringIO(), StringIO()
    call_command("models_fetch", *args, stdout=out, stderr=err, **kwargs)
    return out.getvalue(), err.getvalue()


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_fetch_stores_the_files_of_an_embedder_and_prints_each(tmp_path, catalogue):
    store = tmp_path / "store"
    served = {"/" + k: v for k, v in PAYLOAD.items()}
    with serve_files(served) as base:
        out, err = _run("vggish-16k-pca8bit", "--store", str(store), "--mirror", base)
    assert err == ""
    assert _files(store) == ["vggish/vggish-10086976.pth", "vggish/vggish_pca_params-970ea276.pth"]
    lines = out.splitlines()
    assert lines[0].startswith("stored") and "vggish-10086976.pth" in lines[0]
    assert hashlib.sha256(PAYLOAD["vggish/vggish-10086976.pth"]).hexdigest() in lines[0]
    assert "2 file(s) verified" in lines[-1]


def test_files_already_present_are_verified_and_skipped(tmp_path, catalogue, settings):
    settings.EVALSITE_MODEL_STORE = tmp_path
    (tmp_path / "panns").mkdir()
    (tmp_path / "panns" / "Cnn14_16k_mAP=0.438.pth").write_bytes(PAYLOAD["panns/Cnn14_16k_mAP=0.438.pth"])
    out, _ = _run("panns-cnn14-16k", "--mirror", closed_port_url())
    assert out.startswith("present") and "MD5 verified" in out


def test_a_truncated_download_fails_the_command_and_leaves_nothing(tmp_path, catalogue):
    store = tmp_path / "store"
    with serve_files(
        {"/panns/Cnn14_16k_mAP=0.438.pth": PAYLOAD["panns/Cnn14_16k_mAP=0.438.pth"][:1000]}
    ) as base:
        with pytest.raises(CommandError, match="1 of 1 file"):
            _run("panns-cnn14-16k", "--store", str(store), "--mirror", base)
    assert _files(store) == []


def test_a_wrong_checksum_fails_the_command_and_leaves_nothing(tmp_path, catalogue):
    store, err = tmp_path / "store", StringIO()
    same_size_other_bytes = b"x" * len(PAYLOAD["vggish/vggish-10086976.pth"])
    with serve_files({"/vggish/vggish-10086976.pth": same_size_other_bytes}) as base:
        with pytest.raises(CommandError):
            call_command(
                "models_fetch",
                "vggish-16k",
                "--store",
                str(store),
                "--mirror",
                base,
                stdout=StringIO(),
                stderr=err,
            )
    assert "failed" in err.getvalue() and "SHA-256" in err.getvalue()
    assert _files(store) == []


def test_offline_each_file_fails_fast_with_a_clear_message(tmp_path, catalogue):
    err = StringIO()
    with pytest.raises(CommandError, match="2 of 2"):
        call_command(
            "models_fetch",
            "vggish-16k-pca8bit",
            "--store",
            str(tmp_path),
            "--mirror",
            closed_port_url(),
            stdout=StringIO(),
            stderr=err,
        )
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ["vggish-10086976.pth", "vggish_pca_params-970ea276.pth"]):
        assert line.startswith("failed") and name in line and "offline" in line and "by hand" in line
    assert _files(tmp_path) == []


def test_unknown_names_are_refused_with_the_valid_ones(tmp_path):
    with pytest.raises(CommandError) as err:
        _run("vggish", "--store", str(tmp_path))
    msg = str(err.value)
    assert "vggish" in msg and "panns-cnn14-32k" in msg and "roberta-base-tokenizer" in msg


def test_a_name_or_all_is_required_but_not_both(tmp_path):
    with pytest.raises(CommandError, match="--all"):
        _run("--store", str(tmp_path))
    with pytest.raises(CommandError, match="--all"):
        _run("vggish-16k", "--all", "--store", str(tmp_path))


def test_list_names_every_target_with_the_kind_of_digest_it_verifies():
    out, _ = _run("--list")
    assert "panns-cnn14-32k: panns/Cnn14_mAP=0.431.pth [MD5]" in out
    assert "vggish-16k-pca8bit:" in out and "SHA-256 prefix 970ea276" in out
    assert "roberta-base-tokenizer: clap/roberta-base/vocab.json [SHA-256]" in out

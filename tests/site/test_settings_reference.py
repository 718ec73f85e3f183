"""The settings reference (docs/reference/settings.md) is generated from the code, so it cannot drift."""

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "docs" / "gen_settings.py"
# An EVALSITE_* name as the code spells it; not the prefix of an f-string such as EVALSITE_TASK_TIME_LIMIT_{kind}_S.
EVALSITE_NAME = re.compile(r"\bEVALSITE_[A-Z0-9_]+(?![{\w])")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_settings", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gen_settings = _generator()


def _settings_names() -> set[str]:
    # Settings built from several variables (EVALSITE_TASK_TIME_LIMITS) are named in the code but are not
    # environment variables themselves.
    names = set()
    for path in (REPO / "evalsite" / "settings").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_the_committed_settings_reference_is_what_the_generator_writes():
    committed = (REPO / "docs" / "reference" / "settings.md").read_text()
    assert committed == gen_settings.render_reference(), (
        "docs/reference/settings.md is out of date: run .venv/bin/python docs/gen_settings.py and commit it"
    )


def test_every_evalsite_variable_named_in_the_code_is_in_the_reference():
    reference = (REPO / "docs" / "reference" / "settings.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", reference, flags=re.MULTILINE))
    mentioned = {
        name
        for path in (REPO / "evalsite").rglob("*.py")
        if "migrations" not in path.parts
        for name in EVALSITE_NAME.findall(path.read_text())
    }
    missing = mentioned - documented - (_settings_names() - set(gen_settings.collect_reads()))
    assert not missing, f"named in evalsite/ but not in docs/reference/settings.md: {sorted(missing)}"
    assert "EVALSITE_MODEL_STORE" in documented and "EVALSITE_TASK_TIME_LIMIT_WATCH_S" in documented


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_variable_is_found_whichever_module_reads_it(tmp_path):
    root = _tree(
        tmp_path,
        {
            "evalsite/settings/env.py": (
                "import os\n"
                "# Why the limit is what it is.\n"
                "LIMIT = env_int('EVALSITE_LIMIT', 60 * 60)\n"
                "HOME = Path(os.environ.get('EVALSITE_HOME') or VAR_DIR / 'home').resolve()\n"
            ),
            "evalsite/runs/worker.py": "import os\nSIZE = int(os.environ.get('EVALSITE_SIZE', '2'))\n",
            "evalsite/settings/hosts.py": "from evalsite.settings import env\nHOSTS = env.env_list('EVALSITE_HOSTS', ['a', 'b'])\n",
        },
    )
    reads = gen_settings.collect_reads(root)
    assert {name: [(r.module, r.default) for r in found] for name, found in reads.items()} == {
        "EVALSITE_LIMIT": [("evalsite.settings.env", "3600")],
        "EVALSITE_HOME": [("evalsite.settings.env", "<var>/home")],
        "EVALSITE_SIZE": [("evalsite.runs.worker", "2")],
        "EVALSITE_HOSTS": [("evalsite.settings.hosts", "a, b")],
    }
    assert reads["EVALSITE_LIMIT"][0].comment == "Why the limit is what it is."


def test_a_variable_without_a_meaning_or_a_meaning_without_a_variable_stops_the_generator(tmp_path):
    root = _tree(tmp_path, {"evalsite/settings/base.py": "X = env_int('EVALSITE_NEW', 1)\n"})
    meanings = _tree(tmp_path, {"meanings.toml": '["Group"]\nEVALSITE_OLD = "gone"\n'}) / "meanings.toml"
    with pytest.raises(
        gen_settings.ReferenceMismatch, match="without a meaning.*EVALSITE_NEW.*read nowhere.*EVALSITE_OLD"
    ):
        gen_settings.render_reference(root, meanings)

"""The documentation names files and modules of this repository: each must still exist, so moving code
fails here until the page that points at it moves too."""

import re
from itertools import product
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"(evalsite|metrics|models|tests|client|benchmarks|examples|static|docs)/[\w./{},-]*")
DOTTED = re.compile(r"(evalsite|metrics|models)(\.\w+)+")
# Dotted names that are not modules: the entry-point group model plug-ins register under.
NOT_MODULES = {"evalsite.models"}


def _expand(path: str) -> list[str]:
    # evalsite/analysis/{stats,screening}.py names two files.
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(combination) for combination in product(*choices)]


def _spans() -> list[tuple[str, str]]:
    return [
        (page.relative_to(REPO).as_posix(), span)
        for page in sorted(DOCS.rglob("*.md"))
        for span in CODE_SPAN.findall(page.read_text())
    ]


def _defines(module_file: Path, name: str) -> bool:
    return (
        re.search(rf"^(def|class) {name}\b|^{name}\s*[:=]", module_file.read_text(), re.MULTILINE) is not None
    )


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:cut])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            rest = parts[cut:]
            return not rest or (len(rest) == 1 and _defines(module, rest[0]))
    return False


def test_every_repository_path_the_docs_name_exists():
    missing = [
        f"{page}: {path}"
        for page, span in _spans()
        if PATH.fullmatch(span)
        for path in _expand(span)
        if not (REPO / path).exists()
    ]
    assert not missing, "the docs name paths that do not exist:\n" + "\n".join(missing)


def test_every_module_the_docs_name_exists():
    missing = [
        f"{page}: {span}"
        for page, span in _spans()
        if DOTTED.fullmatch(span) and span not in NOT_MODULES and not _resolves(span)
    ]
    assert not missing, "the docs name modules or functions that do not exist:\n" + "\n".join(missing)

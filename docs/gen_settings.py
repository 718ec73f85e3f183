"""Write docs/reference/settings.md from the environment variables that evalsite reads.

The variables, where they are read and their defaults come from the code: every module under
``evalsite/`` is parsed (``ast``) for ``os.environ.get``, ``os.environ[...]``, ``os.getenv``,
``os.environ.setdefault`` and the settings helpers (``env_bool``, ``env_int``, ``env_float``,
``env_rate``: any ``env_*`` function given a variable's name), whichever module they sit in. What
each variable means comes from ``docs/reference/settings.toml``. A variable read without a meaning there, or a meaning for a
variable nothing reads, stops the generator: the page cannot drift from the code, and
tests/site/test_settings_reference.py fails when the committed page is not what this writes.

Usage: ``python docs/gen_settings.py`` (rewrites the page) or ``python docs/gen_settings.py --check``.
"""

from __future__ import annotations

import ast
import io
import operator
import re
import sys
import tokenize
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "evalsite"
MEANINGS = REPO / "docs" / "reference" / "settings.toml"
OUTPUT = REPO / "docs" / "reference" / "settings.md"
REGENERATE = ".venv/bin/python docs/gen_settings.py"

ENV_HELPER_PREFIX = "env_"
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
# The helpers' own defaults when a call leaves the argument out (evalsite/settings: env_bool).
HELPER_DEFAULTS = {"env_bool": False}
# Paths the settings build from these names are shown as placeholders a reader can map to a folder.
PLACEHOLDERS = {"VAR_DIR": "<var>", "BASE_DIR": "<repo>"}
ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Pow: operator.pow}


COMPUTED = "\0computed"


class ReferenceMismatch(Exception):
    """The code and docs/reference/settings.toml disagree about which variables exist."""


@dataclass(frozen=True)
class EnvRead:
    name: str
    module: str  # dotted, e.g. evalsite.settings.celery
    how: str  # os.environ.get, env_int, os.environ.setdefault, ...
    default: str | None  # None: no default (required, or unset means off)
    comment: str


def _is_environ(node: ast.AST) -> bool:
    """``os.environ``, or ``environ`` imported from os."""
    if isinstance(node, ast.Name):
        return node.id == "environ"
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _constant_number(node: ast.AST) -> int | float | None:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = _constant_number(node.left), _constant_number(node.right)
        if left is not None and right is not None:
            return ARITHMETIC[type(node.op)](left, right)
    return None


def _render(node: ast.AST) -> str:
    """A default as an operator would write it: ``<var>/media`` rather than ``VAR_DIR / "media"``."""
    number = _constant_number(node)
    if number is not None:
        return str(number)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return "on" if node.value else "off"
        return str(node.value)
    if isinstance(node, ast.Name):
        return PLACEHOLDERS.get(node.id, f"<{node.id}>")
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return f"{_render(node.left)}/{_render(node.right)}"
    if isinstance(node, ast.JoinedStr):
        return "".join(
            _render(part.value) if isinstance(part, ast.FormattedValue) else str(part.value)
            for part in node.values
        )
    if isinstance(node, ast.Tuple | ast.List):
        return ", ".join(_render(element) for element in node.elts)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id.startswith("_"):
            return COMPUTED  # a private helper (the persisted secret key): the meaning says what it does
        if isinstance(func, ast.Name) and func.id in {"str", "Path", "int", "float"} and len(node.args) == 1:
            return _render(node.args[0])
        if isinstance(func, ast.Attribute) and func.attr == "resolve":
            return _render(func.value)
    return ast.unparse(node)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _fallback(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> ast.AST | None:
    # `os.environ.get(NAME) or DEFAULT` (possibly wrapped: Path(...), float(...)): DEFAULT is what an
    # unset or empty variable gives, whatever default the .get itself names.
    child, parent = node, parents.get(node)
    while parent is not None and not isinstance(parent, ast.stmt):
        if isinstance(parent, ast.BoolOp) and isinstance(parent.op, ast.Or) and parent.values[0] is child:
            rest = parent.values[1:]
            return rest[0] if len(rest) == 1 else ast.BoolOp(op=ast.Or(), values=rest)
        child, parent = parent, parents.get(parent)
    return None


def _comments(source: str) -> dict[int, str]:
    """Comment text by line number (tokenize, so a '#' inside a string is not taken for one)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def _comment_block_above(line: int, lines: list[str], comments: dict[int, str]) -> str:
    block = []
    while line >= 1 and lines[line - 1].lstrip().startswith("#"):
        block.append(comments.get(line, ""))
        line -= 1
    return " ".join(reversed(block)).strip()


def _comment_near(
    node: ast.AST, parents: dict[ast.AST, ast.AST], lines: list[str], comments: dict[int, str]
) -> str:
    """The comment that explains a read: the nearest one above it within its own entry of a dict or list
    (a beat schedule, the task time limits), else the one above the whole statement, else one at the end
    of the read's own line."""
    statement = node
    chain = [node]
    while not isinstance(statement, ast.stmt):
        statement = parents[statement]
        chain.append(statement)
    item_start = statement.lineno
    in_container = False
    for child, parent in zip(chain, chain[1:]):
        if isinstance(parent, ast.Dict | ast.List | ast.Tuple | ast.Set):
            in_container = True
            key = None
            if isinstance(parent, ast.Dict) and child in parent.values:
                key = parent.keys[parent.values.index(child)]
            item_start = key.lineno if key is not None else child.lineno
    line = node.lineno - 1
    while line >= 1:
        if lines[line - 1].lstrip().startswith("#"):
            return _comment_block_above(line, lines, comments)
        if line < item_start:
            break
        line -= 1
    if in_container:
        above_statement = _comment_block_above(statement.lineno - 1, lines, comments)
        if above_statement:
            return above_statement
    return comments.get(node.lineno, "")


def _helper_name(func: ast.AST) -> str | None:
    # env_int(...) or env.env_int(...): the settings helpers may move to a module of their own, and a new
    # one (env_list, ...) is still a read of the variable its first argument names.
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return name if name is not None and name.startswith(ENV_HELPER_PREFIX) else None


def _read_of(call: ast.Call) -> tuple[str, str, ast.AST | None] | None:
    """(name, how, default node) when ``call`` reads or defaults an environment variable by a literal name."""
    func = call.func
    if not call.args or not isinstance(call.args[0], ast.Constant) or not isinstance(call.args[0].value, str):
        return None
    name = call.args[0].value
    default = call.args[1] if len(call.args) > 1 else None
    helper = _helper_name(func)
    if helper is not None and ENV_NAME.fullmatch(name):
        if default is None:
            default = next((k.value for k in call.keywords if k.arg == "default"), None)
        if default is None and helper in HELPER_DEFAULTS:
            default = ast.Constant(HELPER_DEFAULTS[helper])
        return name, helper, default
    if isinstance(func, ast.Attribute) and _is_environ(func.value) and func.attr in {"get", "setdefault"}:
        return name, f"os.environ.{func.attr}", default
    if isinstance(func, ast.Attribute) and func.attr == "getenv" and isinstance(func.value, ast.Name):
        if func.value.id == "os":
            return name, "os.getenv", default
    return None


def _environment_setting(node: ast.AST) -> list[tuple[str, ast.AST]]:
    """(variable, value) of a ``*_ENVIRONMENT = {"NAME": value, ...}`` setting, which the core app applies
    to the process environment at start-up (``os.environ.setdefault``)."""
    if not (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.endswith("_ENVIRONMENT")
        and isinstance(node.value, ast.Dict)
    ):
        return []
    return [
        (k.value, v)
        for k, v in zip(node.value.keys, node.value.values, strict=True)
        if isinstance(k, ast.Constant) and isinstance(k.value, str) and ENV_NAME.fullmatch(k.value)
    ]


def module_reads(path: Path, root: Path) -> list[EnvRead]:
    source = path.read_text()
    tree = ast.parse(source)
    parents = _parents(tree)
    lines = source.splitlines()
    comments = _comments(source)
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    reads = []
    for node in ast.walk(tree):
        if environment := _environment_setting(node):
            # A setting like EVALSITE_HUB_ENVIRONMENT: variables the core app sets when they are unset.
            for key, value in environment:
                comment = _comment_near(node, parents, lines, comments)
                reads.append(EnvRead(key, module, "set when unset", _render(value), comment))
            continue
        if isinstance(node, ast.Call):
            found = _read_of(node)
        elif (
            isinstance(node, ast.Subscript)
            and _is_environ(node.value)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
            and isinstance(node.ctx, ast.Load)
        ):
            found = (node.slice.value, "os.environ[...]", None)
        else:
            found = None
        if found is None:
            continue
        name, how, default = found
        if how != "os.environ.setdefault":
            default = _fallback(node, parents) or default
        rendered = (
            None
            if default is None or (isinstance(default, ast.Constant) and default.value is None)
            else _render(default)
        )
        comment = _comment_near(node, parents, lines, comments)
        reads.append(EnvRead(name, module, how, rendered, comment))
    return reads


def collect_reads(root: Path = REPO) -> dict[str, list[EnvRead]]:
    """Every environment variable read under evalsite/, in the order of their first read."""
    by_name: dict[str, list[EnvRead]] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for read in sorted(module_reads(path, root), key=lambda r: r.module):
            if read not in by_name.setdefault(read.name, []):
                by_name[read.name].append(read)
    return by_name


def load_meanings(path: Path = MEANINGS) -> dict[str, dict[str, str]]:
    """{group title: {variable: meaning}} in the file's order."""
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    if text == "":
        return "empty"
    if text == COMPUTED:
        return "computed (see meaning)"
    fence = "``" if "`" in text else "`"
    return _cell(f"{fence}{text}{fence}")


def _default(reads: list[EnvRead]) -> str:
    # The embedded default (evalsite.settings.base, else the first module that reads it) first, then
    # the modules whose default differs from it (production, test, integration).
    ordered = sorted(reads, key=lambda r: (r.module != "evalsite.settings.base", r.module))
    first = ordered[0]
    shown = ["unset" if first.default is None else _code(first.default)]
    for read in ordered[1:]:
        if read.default != first.default:
            value = "no default" if read.default is None else _code(read.default)
            shown.append(f"{value} in `{read.module}`")
    return "; ".join(dict.fromkeys(shown))


def render_reference(root: Path = REPO, meanings_path: Path = MEANINGS) -> str:
    reads = collect_reads(root)
    meanings = load_meanings(meanings_path)
    described = {name for group in meanings.values() for name in group}
    missing = sorted(set(reads) - described)
    unread = sorted(described - set(reads))
    if missing or unread:
        problems = []
        if missing:
            problems.append(
                f"read in the code but without a meaning in {meanings_path.name}: {', '.join(missing)}"
            )
        if unread:
            problems.append(
                f"described in {meanings_path.name} but read nowhere under {PACKAGE}/: {', '.join(unread)}"
            )
        raise ReferenceMismatch("; ".join(problems))

    out = [
        "# Settings reference",
        "",
        f"<!-- Generated by docs/gen_settings.py from the code and docs/reference/settings.toml. "
        f"Do not edit: change those, then run `{REGENERATE}`. -->",
        "",
        "Everything is read from the environment; the defaults are the embedded, single-machine setup",
        "(`<repo>` is the repository root, `<var>` is `EVALSITE_VAR_DIR`). This page is generated from",
        "the code that reads each variable, so it lists every one of them with the default the code",
        "applies; a unit test fails when it falls behind.",
        "",
    ]
    for group, variables in meanings.items():
        out += [f"## {group}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name, meaning in variables.items():
            out.append(f"| `{name}` | {_default(reads[name])} | {_cell(meaning.strip())} |")
        out.append("")
    out += [
        "## Where each variable is read",
        "",
        "The module that reads it, how, and the comment next to the read in the code (the why).",
        "",
    ]
    for variables in meanings.values():
        for name in variables:
            places = ", ".join(sorted({f"`{r.module}` (`{r.how}`)" for r in reads[name]}))
            notes = []
            for read in reads[name]:
                if read.comment and read.comment not in notes:
                    # Plain text in Markdown: "<username>" would otherwise be taken for an HTML tag.
                    notes.append(read.comment.replace("<", "&lt;").replace("*", "\\*"))
            line = f"- `{name}`: {places}."
            if notes:
                line += " " + " ".join(notes)
            out.append(line)
    out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    try:
        text = render_reference()
    except ReferenceMismatch as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            sys.stderr.write(f"{OUTPUT.relative_to(REPO)} is out of date: run {REGENERATE}\n")
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

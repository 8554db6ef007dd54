"""Maps that tell the truth: what docstrings and comments name exists where they say.

A docstring or comment of drawpipe/, bench/ or tools/ that names a home (a file such
as ``curate/takes.py`` or ``docs/DESIGN.md``, or a module's name such as
``files.HashCache``) must name one that is there: in this repository (never a file
outside it), and the name defined in that module. A home that moved is then a test
failure, not a trap for the next reader.
"""

import ast
import builtins
import functools
import importlib.util
import io
import re
import tokenize
from pathlib import Path

import pytest
from conftest import PROJECT_DIR

PACKAGE = PROJECT_DIR / "drawpipe"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(PROJECT_DIR / "bench").glob("*.py"),
                  *(PROJECT_DIR / "tools").glob("*.py")])

# Files of other projects the code cites (upstream sources, read when deriving tables).
UPSTREAM_FILES = {
    "amg.py", "build_sam.py", "predictor.py", "automatic_mask_generator.py",  # segment-anything
    "models_json.py", "controlnets_json.py",  # draw-things-community-models utils/
    "constants.py",  # open_clip
}
# Folders of other projects' trees the code cites by path (open_clip's and MobileSAM's sources).
UPSTREAM_FOLDERS = ("src/open_clip/", "mobile_sam/")
# Words that stand before a dot in prose without being a module: variables, "e.g.".
NOT_MODULES = {"e", "i", "sim", "sampler", "image_encoder", "profiles", "control", "args",
               "self", "exc", "os", "np", "torch", "reading", "row", "stop", "cutout", "label"}

FILE_SUFFIXES = {"py", "md", "json", "jsonl", "toml", "csv", "png", "jpg", "html", "js", "css",
                 "txt", "ckpt", "pth", "pt", "claim", "sh", "tmp", "whl", "swift", "proto", "fbs",
                 "safetensors", "yaml", "cfg", "lock", "bin", "crt", "npy", "h"}
_FILE = re.compile(r"(?<![\w./*{},-])((?:\.?[\w-]+/)*[\w-]+\.(?:py|md))(?![\w/])")
_DOTTED = re.compile(r"(?<![\w./-])([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)\.([A-Za-z_]\w*)"
                     r"(?![\w/-])")


def texts_of(path: Path) -> list[str]:
    """The docstrings and comments of a source file."""
    source = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                found.append(docstring)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append(token.string)
    return found


@functools.cache
def tracked_names() -> set[str]:
    """The name of every file and folder of the repository (the checkout)."""
    return {path.name for path in PROJECT_DIR.rglob("*")
            if ".venv" not in path.parts and ".git" not in path.parts}


def file_problems(path: Path, text: str, names: set[str]) -> list[str]:
    problems = []
    for reference in _FILE.findall(text):
        if "/" not in reference:
            if reference not in names and reference not in UPSTREAM_FILES:
                problems.append(f"{reference}: no such file in the repository")
            continue
        candidates = [PROJECT_DIR / reference, PACKAGE / reference, path.parent / reference]
        if reference.startswith("scripts/") and Path(reference).name in UPSTREAM_FILES:
            continue
        if reference.startswith(UPSTREAM_FOLDERS):
            continue
        if not any(candidate.resolve().is_relative_to(PROJECT_DIR) and candidate.exists()
                   for candidate in candidates):
            problems.append(f"{reference}: no such file in the repository")
    return problems


@functools.cache
def modules_by_name() -> dict[str, list[Path]]:
    """Last dotted part (and every dotted tail) of each drawpipe module -> its files."""
    found: dict[str, list[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PROJECT_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        for start in range(len(parts)):
            found.setdefault(".".join(parts[start:]), []).append(path)
    return found


def defines(module_file: Path, name: str) -> bool:
    """Whether the module at ``module_file`` defines or imports ``name`` at top level,
    defines a method ``name`` in one of its classes, or (a package) has a module ``name``."""
    if module_file.name == "__init__.py" and (
            (module_file.parent / f"{name}.py").exists() or (module_file.parent / name).is_dir()):
        return True
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == name
                    for item in node.body):
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name).split(".")[0] == name for alias in node.names):
                return True
    return False


def aliases_of(path: Path) -> dict[str, list[Path]]:
    """The drawpipe modules a file imports under another name ("from drawpipe.drawthings
    import api as drawthings"): its docstrings may call them by that name."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("drawpipe"):
            for alias in node.names:
                module = PROJECT_DIR / (f"{node.module}.{alias.name}".replace(".", "/") + ".py")
                if alias.asname and module.exists():
                    found[alias.asname] = [module]
    return found


@functools.cache
def variables_of(path: Path) -> frozenset[str]:
    """The names a file binds as variables (arguments, assignments, loop and ``with``
    targets): prose may say ``meter.open_window()`` of its own variable ``meter``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
    return frozenset(found)


def dotted_problems(text: str, modules: dict[str, list[Path]],
                    variables: frozenset[str] = frozenset()) -> list[str]:
    """What ``module.name`` references name that is not there: ``module`` a drawpipe
    module (by its last dotted parts, or an alias in ``modules``) without ``name``, or
    no module at all (not drawpipe's, not importable, not one of the file's
    ``variables``, not a word in NOT_MODULES)."""
    problems = []
    for module, name in _DOTTED.findall(text):
        if name in FILE_SUFFIXES:
            continue  # a file name ("generate.py", "cutouts.json"), not a module's
        first = module.split(".")[0]
        if module in modules:
            if not any(defines(file, name) for file in modules[module]) and first not in variables:
                problems.append(f"{module}.{name}: {module} has no {name}")
            continue
        if (first in variables or first in NOT_MODULES or first == "drawpipe" or hasattr(builtins, first)
                or re.fullmatch(r"v\d+", first)):  # "v1.x": a version
            continue
        if importlib.util.find_spec(first) is None:
            problems.append(f"{module}.{name}: no module {module} (a home that moved?)")
    return problems


# A line of a module docstring's listing of what the module holds: a function with its
# arguments ("    load_verdicts(root)   ..."), a table with its key ("    SETTINGS[name]")
# or a class ("    ReportCache   ..."); lowercase words alone are data (field names).
_LISTED = re.compile(r"^    ([A-Za-z_]\w*(?=[(\[])|[A-Z][a-z]\w*(?=  ))", re.M)


def listing_problems(path: Path) -> list[str]:
    """The names a module docstring lists as the module's own that it does not define."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False) or ""
    return [f"{path.name} lists {name}, which it does not define"
            for name in _LISTED.findall(docstring) if not defines(path, name)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: path.relative_to(PROJECT_DIR).as_posix())
def test_docstrings_and_comments_name_homes_that_exist(path):
    names = tracked_names()
    modules = {**modules_by_name(), **aliases_of(path)}
    problems = listing_problems(path) if path.is_relative_to(PACKAGE) else []
    for text in texts_of(path):
        problems += file_problems(path, text, names)
        problems += dotted_problems(text, modules, variables_of(path))
    assert problems == []


def test_the_checks_find_a_home_that_moved(tmp_path):
    modules = modules_by_name()
    assert dotted_problems("written by reviews.append_verdict", modules) == [
        "reviews.append_verdict: no module reviews (a home that moved?)"]
    assert dotted_problems("keeps (files.HashCache) and verdicts.load_verdicts", modules) == []
    assert dotted_problems("see files.NoSuchThing", modules) == [
        "files.NoSuchThing: files has no NoSuchThing"]
    # A variable of the file is not a module, even where a module has its name.
    assert dotted_problems("call meter.open_window(), then client.cancel()", modules,
                           frozenset({"meter", "client"})) == []
    assert dotted_problems("call meter.open_window()", modules) == [
        "meter.open_window: no module meter (a home that moved?)"]
    source = tmp_path / "x.py"
    assert file_problems(source, "see curate/curate/takes.py and DESIGN.md", {"README.md"}) == [
        "curate/curate/takes.py: no such file in the repository",
        "DESIGN.md: no such file in the repository"]
    assert file_problems(source, "see curate/takes.py and docs/DESIGN.md", set()) == []

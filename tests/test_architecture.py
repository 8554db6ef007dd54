"""The package's layout holds: imports flow one way, and a wheel carries what it needs.

Layers, lowest first, as drawpipe/__init__.py draws them (README: Architecture). A
module may import modules of lower layers and of its own package; packages of one
layer do not import each other, and nothing imports upward or in a cycle.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from conftest import PROJECT_DIR

PACKAGE = PROJECT_DIR / "drawpipe"


def layers_of_the_package() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(layer name, module prefixes), lowest first, from drawpipe/__init__.py's table:
    the package's own map of its layers is the one this test holds."""
    text = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if line.split() == ["layer", "modules"])
    layers = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, modules = re.split(r"\s{2,}", line.strip())
        layers.append((name, tuple(f"drawpipe.{module.strip()}" for module in modules.split(","))))
    return tuple(layers)


# (layer name, module prefixes). The entry points come last: they may import anything.
LAYERS = layers_of_the_package()


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that placed it): the longest prefix wins."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and to README")
    return best


def imports_of(path: Path) -> set[str]:
    """The drawpipe modules a file imports, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("drawpipe"):
                found.add(node.module)
                for alias in node.names:  # "from drawpipe.sam import models"
                    candidate = f"{node.module}.{alias.name}"
                    if (PROJECT_DIR / (candidate.replace(".", "/") + ".py")).exists():
                        found.add(candidate)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package imports absolutely")
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("drawpipe")}
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_layers_are_the_packages_own():
    assert [name for name, _ in LAYERS] == ["base", "services", "inventory", "curate", "stages",
                                            "report", "command line", "entry points"]
    assert LAYERS[0][1] == ("drawpipe.errors", "drawpipe.files", "drawpipe.png", "drawpipe.layout",
                            "drawpipe.settings", "drawpipe.pages", "drawpipe.bundled")
    assert LAYERS[-1][1] == ("drawpipe.__main__", "drawpipe.review", "drawpipe.export",
                             "drawpipe.report.__main__", "drawpipe.demo", "drawpipe.simulator",
                             "drawpipe.status")
    described = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    for _, prefixes in LAYERS:  # each has its line under "What each holds"
        for prefix in prefixes:
            name = prefix.removeprefix("drawpipe.")
            assert re.search(rf"^  (\S+, )*{re.escape(name)}\b", described.split("What each holds")[1],
                             re.M), name


def test_every_module_has_a_layer():
    for module in import_graph():
        if module != "drawpipe":
            layer_of(module)


def test_imports_flow_one_way():
    problems = []
    for module, imported in import_graph().items():
        if module == "drawpipe":
            continue
        level, prefix = layer_of(module)
        for target in imported:
            if target == "drawpipe":
                continue
            target_level, target_prefix = layer_of(target)
            if target_level > level:
                problems.append(f"{module} ({LAYERS[level][0]}) imports {target} "
                                f"({LAYERS[target_level][0]}): upward")
            elif target_level == level and target_prefix != prefix and level < len(LAYERS) - 1 \
                    and level != 0:
                problems.append(f"{module} imports {target}: two packages of the "
                                f"{LAYERS[level][0]} layer depend on each other")
    assert problems == []


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "visiting"
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == "visiting":
                cycle = trail[trail.index(target):] + [target] if target in trail else [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_a_wheel_installs_and_finds_its_templates_and_prompts(tmp_path):
    """Build the wheel, install it (without its dependencies, which come from this
    environment) into a fresh virtual environment, and plan a generate run from a
    folder that is not the checkout: the bundled template and prompt sets are found."""
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "drawpipe", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_DIR / name, source / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("drawpipe-*.whl")
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    python = environment / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--target", site, str(wheel)], capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stderr
    # The dependencies (requests, Pillow, ...) from this environment, behind the wheel's
    # own site folder: drawpipe itself must come from the wheel.
    (Path(site) / "dependencies.pth").write_text(
        next(p for p in sys.path if p.endswith("site-packages")) + "\n")
    share = tmp_path / "share"
    share.mkdir()
    # What the drawpipe-generate command runs, by the new environment's interpreter.
    result = subprocess.run([str(python), "-c", "import sys; from drawpipe.cli.launch import generate; "
                             "sys.exit(generate())", "--root", str(share),
                             "--add", "Peru:family:2", "--dry-run"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "PYTHONPATH": ""})

    assert result.returncode == 0, result.stderr
    assert "Peru/family: 2 to make, 0 already done" in result.stdout
    located = subprocess.run([str(python), "-c", "import drawpipe, drawpipe.bundled as b; "
                              "print(drawpipe.__file__); print(b.TXT2IMG_TEMPLATE.is_file(), "
                              "b.PROMPT_SETS.is_file(), b.DEFAULT_RECIPE.is_file())"],
                             capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert str(PROJECT_DIR) not in located.splitlines()[0]  # the wheel's copy, not the checkout
    assert located.splitlines()[1] == "True True True"
    assert list(share.iterdir()) == []

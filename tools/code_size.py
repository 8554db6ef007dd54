"""The longest functions and the largest modules of drawpipe/, to see where the code grows.

    python tools/code_size.py            the ten of each
    python tools/code_size.py --most 20

Functions are named ``<file>:Class.function``.
A function's length is its lines from ``def`` to its last statement (decorators and
the docstring included; a nested function counts inside its parent and on its own);
a module's size is its line count. Tests, tools and bench are not counted.
"""

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "drawpipe"


def functions(path: Path) -> list[tuple[int, str]]:
    """(lines, "Class.function") of every function in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found.append((child.end_lineno - first + 1, f"{prefix}{child.name}"))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--most", type=int, default=10, help="rows of each list (default 10)")
    args = parser.parse_args(argv)
    modules, all_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        modules.append((len(path.read_text(encoding="utf-8").splitlines()), name))
        all_functions += [(lines, f"{name}:{where}") for lines, where in functions(path)]
    print(f"longest functions of drawpipe/ ({len(all_functions)} in all):")
    for lines, where in sorted(all_functions, key=lambda item: (-item[0], item[1]))[:args.most]:
        print(f"  {lines:5d}  {where}")
    total = sum(lines for lines, _ in modules)
    print(f"largest modules of drawpipe/ ({len(modules)} modules, {total:,} lines in all):")
    for lines, name in sorted(modules, key=lambda item: (-item[0], item[1]))[:args.most]:
        print(f"  {lines:5d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

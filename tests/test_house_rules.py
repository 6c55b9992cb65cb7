"""Rules of the house that a test can keep: workflows stay a few named steps."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facetrip"
LIMIT = 80  #: lines, docstring and signature included


def test_no_function_in_the_package_is_over_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} "
                                f"{node.name} ({lines} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)
    assert len(list(PACKAGE.rglob("*.py"))) > 40  # the walk saw the package

"""The folders show the architecture (README "Layout"): a few modules at the top of aitp/, a folder
per concern, and the domain never importing the pipeline."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AITP = ROOT / "aitp"


def test_the_top_of_aitp_holds_only_the_shared_vocabulary():
    top = sorted(p.stem for p in AITP.glob("*.py") if p.stem != "__init__")
    packages = sorted(p.parent.name for p in AITP.glob("*/__init__.py"))
    assert len(top) <= 12, top
    assert len(packages) >= 6, packages
    assert not [name for name in top if name.startswith("vector")], top


def test_the_domain_never_imports_the_pipeline():
    offenders = []
    for path in AITP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.split(".")[0] == "actors"]
    assert offenders == []

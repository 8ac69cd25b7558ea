"""The layout the README describes is the code's: every module listed where a reader looks."""

import pathlib
import re

import actors

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _modules(folder: pathlib.Path) -> set[str]:
    return {path.stem for path in folder.glob("*.py") if not path.stem.startswith("__")} | \
        {path.name for path in folder.iterdir() if (path / "__init__.py").exists()}


def _layout() -> str:
    return README[README.index("## Layout"):]


def test_every_module_in_actors_is_in_its_all_and_in_the_readme():
    modules = _modules(ROOT / "actors")
    assert set(actors.__all__) == modules
    bullet = _layout()[_layout().index("- `actors/`"):]
    bullet = bullet[:bullet.index("\n- ")]
    named = set(re.findall(r"`(\w+)`", bullet))
    assert modules <= named, f"not in the README's Layout: {sorted(modules - named)}"


def test_every_module_of_each_aitp_folder_is_in_the_readme_table():
    layout = _layout()
    for folder in sorted(path for path in (ROOT / "aitp").iterdir() if (path / "__init__.py").exists()):
        if folder.name == "sandbox":       # described as a whole
            continue
        row = next(line for line in layout.splitlines() if line.startswith(f"| `aitp/{folder.name}/`"))
        named = set(re.findall(r"`(\w+)/?`", row))
        missing = _modules(folder) - named
        assert not missing, f"aitp/{folder.name}/ modules not in the README's Layout: {sorted(missing)}"


def test_the_top_of_aitp_is_in_the_readme_table():
    row = next(line for line in _layout().splitlines() if line.startswith("| `aitp/` (top)"))
    named = set(re.findall(r"`(\w+)`", row))
    top = {path.stem for path in (ROOT / "aitp").glob("*.py") if not path.stem.startswith("__")}
    assert top <= named, f"not in the README's Layout: {sorted(top - named)}"


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """An import cycle shows only when a module is imported first (a review found aitp.intake and
    aitp.coordination.lease_keeper each other's; the service started only because aitp.cli
    happened to import aitp.intake first)."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor
    modules = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for folder in ("aitp", "actors") for path in (ROOT / folder).rglob("*.py")
                     if "__main__" not in path.name)

    def imports(module: str) -> tuple[str, str]:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        return module, done.stderr.strip().splitlines()[-1] if done.returncode else ""

    with ThreadPoolExecutor(4) as pool:
        failed = {module: error for module, error in pool.map(imports, modules) if error}
    assert not failed, failed


def test_no_actor_module_is_over_250_lines_and_no_function_over_50():
    """Issue 27's shape: thin stages over plain objects (aitp/sandbox/ and benchmarks/ aside)."""
    import ast
    long_modules = {path.name: n for path in (ROOT / "actors").glob("*.py")
                    if (n := len(path.read_text().splitlines())) > 250}
    long_functions = []
    for folder in ("aitp", "actors"):
        for path in (ROOT / folder).rglob("*.py"):
            if "sandbox" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long_modules and not long_functions, (long_modules, long_functions)

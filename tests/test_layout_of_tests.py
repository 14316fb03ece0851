"""`tests/` mirrors the source tree: a test folder is named after the source folder it tests
(`tests/cli/` after `osp_cli/`), and a test file at the top tests a top-level module or the
project as a whole; so the tests of a piece of code are found beside its path."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT

# folders that hold test machinery, not tests of a source folder
INFRASTRUCTURE = {
    "stand_ins": "stand-in packages for hardware libraries (torch_npu)",
    "jobs/golden": "values recorded before a move, for the same-outputs test",
}
# top-level test files about the project rather than one module
PROJECT_LEVEL = {"test_ci.py", "test_docs.py", "test_layout_of_tests.py"}


def source_of(folder: str) -> str:
    """The source folder a test folder mirrors: `cli` -> `osp_cli`, `a/b` -> `osp_core/a/b`."""
    head, _, rest = folder.partition("/")
    return f"osp_cli/{rest}".rstrip("/") if head == "cli" else f"osp_core/{folder}"


def misplaced(root: Path) -> list[str]:
    """Test folders without a source folder, top-level test files without a top-level module,
    and folders of test files that are not packages (two `test_edit.py` need distinct packages)."""
    tests = root / "tests"
    problems = []
    for folder in sorted(p for p in tests.rglob("*") if p.is_dir() and "__pycache__" not in p.parts):
        name = folder.relative_to(tests).as_posix()
        if not any(f.is_file() for f in folder.rglob("*") if "__pycache__" not in f.parts):
            continue  # only bytecode a moved folder left behind in a working copy
        if any(name == infra or name.startswith(infra + "/") for infra in INFRASTRUCTURE):
            continue
        if not (root / source_of(name)).is_dir():
            problems.append(f"tests/{name}/ has no {source_of(name)}/")
        if any(folder.glob("test_*.py")) and not (folder / "__init__.py").is_file():
            problems.append(f"tests/{name}/ has no __init__.py")
    for test in sorted(tests.glob("test_*.py")):
        module = test.name.removeprefix("test_")
        if test.name not in PROJECT_LEVEL and not (root / "osp_core" / module).is_file():
            problems.append(f"tests/{test.name} tests no top-level module (osp_core/{module})")
    return problems


def test_every_test_folder_mirrors_a_source_folder():
    assert misplaced(ROOT) == []


def test_the_check_finds_a_folder_by_feature_and_a_stray_file(tmp_path):
    for folder in ("osp_core/pipelines", "osp_cli", "tests/pipelines", "tests/cli", "tests/edit", "tests/stand_ins/torch_npu"):
        (tmp_path / folder).mkdir(parents=True)
    for file in ("osp_core/metrics.py", "tests/test_metrics.py", "tests/test_eval_shapes.py", "tests/cli/test_main.py"):
        (tmp_path / file).write_text("")
    (tmp_path / "tests/cli/__init__.py").write_text("")
    (tmp_path / "tests/edit/__init__.py").write_text("")
    (tmp_path / "tests/moved/__pycache__").mkdir(parents=True)  # bytecode a moved folder left: not a test folder
    (tmp_path / "tests/moved/__pycache__/test_x.cpython-311.pyc").write_bytes(b"")
    (tmp_path / "tests/pipelines/test_edit.py").write_text("")
    assert misplaced(tmp_path) == [
        "tests/edit/ has no osp_core/edit/",
        "tests/pipelines/ has no __init__.py",
        "tests/test_eval_shapes.py tests no top-level module (osp_core/eval_shapes.py)",
    ]

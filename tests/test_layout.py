"""The layout's rules hold: product code never imports ``testing``; the dataset side needs no torch."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "neucodec_workflow"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_product_code_does_not_import_testing():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.startswith("neucodec_workflow.testing"))
        for p in PACKAGE.rglob("*.py")
        if "testing" not in p.relative_to(PACKAGE).parts
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_dataset_side_imports_no_torch_module():
    torch_free = [
        *PACKAGE.glob("dataset/*.py"),
        PACKAGE / "contract.py",
        PACKAGE / "records.py",
        PACKAGE / "upstream.py",
    ]
    for p in torch_free:
        top = {m.split(".")[0] for m in imported_modules(p)}
        assert not top & {"torch", "torchaudio", "neucodec", "transformers"}, p.name

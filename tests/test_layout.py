"""The layout's rules hold: the package ships no test rig or test seam; the dataset side needs no torch."""

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


def test_the_package_ships_no_test_rig_or_seam():
    """The rigs live in tests/support/ (imported as ``support``); product code imports none of them and reads no
    test-only setting: the tests reach into a run through wrappers installed from outside (support/hooks.py)."""
    tests_side = ("support", "conftest", "tests")
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.split(".")[0] in tests_side)
        + [word for word in ("NEUCODEC_TEST_", "sitecustomize") if word in p.read_text()]
        for p in PACKAGE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_dataset_side_imports_no_torch_module():
    torch_free = [
        *PACKAGE.glob("dataset/*.py"),
        *PACKAGE.glob("record/*.py"),
        *PACKAGE.glob("commands/*.py"),
        *(PACKAGE / "workflow" / name for name in ("plan.py", "recovery.py", "job_log.py", "dataset_jobs.py")),
        PACKAGE / "background.py",
        PACKAGE / "upstream.py",
    ]
    for p in torch_free:
        top = {m.split(".")[0] for m in imported_modules(p)}
        # transformers only for the tokenizer (mtts.py): it works without torch (next test)
        banned = {"torch", "torchaudio", "neucodec"} | ({"transformers"} if p.name != "mtts.py" else set())
        assert not top & banned, p.name


HIDE_TORCH = """
import importlib.abc, importlib.util, sys
HIDDEN = ("torch", "torchaudio", "torchvision")
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in HIDDEN else real(name, package)


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)


sys.meta_path.insert(0, Hide())
"""


def test_the_formats_tokenizer_loads_where_there_is_no_torch(tmp_path):
    """The dataset env (envs/dataset.yaml) has no torch: the Multilingual-TTS tokenizer loads through transformers all
    the same (torch hidden from this interpreter, as if not installed)."""
    import subprocess
    import sys

    code = (
        HIDE_TORCH
        + f"""
from neucodec_workflow.dataset.mtts import load_tokenizer
from neucodec_workflow.demo.tokenizer import build_test_tokenizer
tok = load_tokenizer(str(build_test_tokenizer(__import__("pathlib").Path({str(tmp_path)!r}))))
assert "torch" not in sys.modules
print(type(tok.tokenizer).__name__, tok.speech_base)
"""
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "Qwen2Tokenizer"

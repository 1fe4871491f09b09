"""envs/: each rule family's conda env (snakemake --sdm conda) holds what its code imports, at the requirements.txt pins.

Offline, no conda: the rules' code path is read from the AST (scripts, then every neucodec_workflow module and function
they reach, imports inside functions included), module names are mapped to distributions with the venv's metadata, and
the post-deploy scripts that install this package are run against a stub interpreter. `make check-envs` resolves the
pip lists against the package index.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from neucodec_workflow.workflow import resident

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "neucodec_workflow"
ENVS = {"encode": REPO / "envs" / "encode.yaml", "dataset": REPO / "envs" / "dataset.yaml"}
RULES = {
    "encode_shard": "encode",
    "audit_shard": "encode",
    "derive_shard": "dataset",
    "summarize": "dataset",
    "push_to_hub": "dataset",
    "verify": "dataset",
    "report_figures": "dataset",
    "codec_fit": "encode",
}
# Where the envs are built: markers of Requires-Dist are evaluated for this platform (that of requirements.txt).
TARGET = {"python_version": "3.11", "platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64"}
# Installed by conda with the `pip` package, not by the pip section.
CONDA_LEVEL = {"pip", "setuptools", "wheel"}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canon(name)] = version
    return pins


def env_spec(env: str) -> tuple[list[str], list[str]]:
    """(conda dependencies, pip entries) of an env file."""
    spec = yaml.safe_load(ENVS[env].read_text())
    conda, pip = [], []
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        else:
            conda.append(dep)
    return conda, pip


def pip_pins(env: str) -> dict[str, str]:
    pins = {}
    for entry in env_spec(env)[1]:
        name, sep, version = entry.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"{env}: pip entry {entry!r} is not name==version"
        pins[canon(name)] = version
    return pins


def rule_files() -> dict[str, dict[str, str]]:
    """rule -> {'conda': path, 'script': path}, read from rules/*.smk (paths relative to the repo)."""
    rules = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^(?=[ \t]*rule \w+:)", smk.read_text(), flags=re.M)[1:]:  # also inside an `if`
            name = re.match(r"\s*rule (\w+):", block)[1]
            found = {k: re.search(rf"^\s+{k}:\s*\n\s+\"([^\"]+)\"", block, re.M) for k in ("conda", "script")}
            rules[name] = {k: str((smk.parent / m[1]).resolve().relative_to(REPO)) for k, m in found.items() if m}
    return rules


# --- the rules' code path -------------------------------------------------------------------------------------------


class Module:
    """One neucodec_workflow module: what its top level imports and what each top-level function/class imports."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        self.is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        self.defs: dict[str, ast.AST] = {}
        self.top: list[ast.AST] = []  # module-level statements, less function bodies (class bodies run at import)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.defs[node.name] = node
                self.top += [*node.decorator_list, node.args]
            else:
                if isinstance(node, ast.ClassDef):
                    self.defs[node.name] = node
                self.top.append(node)


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_in(nodes: list[ast.AST]):
    """Import nodes in these subtrees, less `if TYPE_CHECKING:` bodies."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack += node.orelse
        else:
            stack += ast.iter_child_nodes(node)


class CodePath:
    """Third-party top-level modules reachable from some scripts, at the granularity of top-level functions."""

    def __init__(self) -> None:
        self.modules: dict[str, Module] = {}
        self.done: set[tuple[str, str | None]] = set()
        self.third_party: dict[str, set[str]] = {}  # top-level module -> where it is imported

    def module(self, name: str) -> Module:
        if name not in self.modules:
            path = module_path(name)
            assert path, f"{name} is imported but not in {SRC}"
            self.modules[name] = Module(name, path)
        return self.modules[name]

    def visit_script(self, path: Path) -> None:
        self.scan(list(imports_in([ast.parse(path.read_text(), str(path))])), package=None, where=path.name)

    def visit(self, name: str, symbol: str | None) -> None:
        """symbol None: the module's top level; a name: also that function's or class's body; '*': everything."""
        if (name, symbol) in self.done:
            return
        self.done.add((name, symbol))
        if "." in name:
            self.visit(name.rsplit(".", 1)[0], None)  # importing a.b runs a/__init__.py first
        mod = self.module(name)
        package = name if mod.is_package else name.rsplit(".", 1)[0]
        if name == resident.__name__:  # a script that hands its job to the resident process: it runs in this env
            for job in resident.JOBS.values():
                self.visit(*job.split(":"))
        if symbol is None:
            self.scan(list(imports_in(mod.top)), package, name)
        elif symbol == "*":
            self.visit(name, None)
            for other in mod.defs:
                self.visit(name, other)
        else:
            self.visit(name, None)
            node = mod.defs[symbol]
            self.scan(list(imports_in([node])), package, f"{name}.{symbol}")
            for ref in ast.walk(node):  # other top-level functions of the module that this one uses
                if isinstance(ref, ast.Name) and ref.id in mod.defs and ref.id != symbol:
                    self.visit(name, ref.id)

    def scan(self, nodes: list[ast.AST], package: str | None, where: str) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self.reach(alias.name, None, where)
            else:
                base = node.module or ""
                if node.level:
                    assert package, f"relative import in {where}"
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                self.reach(base, [a.name for a in node.names], where)

    def reach(self, name: str, names: list[str] | None, where: str) -> None:
        top = name.split(".")[0]
        if top != PACKAGE:
            if top not in sys.stdlib_module_names:
                self.third_party.setdefault(top, set()).add(where)
            return
        if names is None:  # `import a.b.c`: any of c's functions may be called
            self.visit(name, "*")
            return
        mod = self.module(name)
        self.visit(name, None)
        for n in names:
            if n == "*":
                self.visit(name, "*")
            elif module_path(f"{name}.{n}"):  # `from package import submodule`
                self.visit(f"{name}.{n}", "*")
            elif n in mod.defs:
                self.visit(name, n)
            # else: a name the module imports itself; its top level was visited


def code_path(env: str) -> CodePath:
    path = CodePath()
    for rule, files in rule_files().items():
        if RULES.get(rule) == env:
            path.visit_script(REPO / files["script"])
    return path


def distributions(env: str) -> dict[str, set[str]]:
    """Distribution (canonical name) -> the imports in the env's code path that need it."""
    mapping = md.packages_distributions()
    found: dict[str, set[str]] = {}
    for top, where in code_path(env).third_party.items():
        assert top in mapping, f"{env}: no installed distribution provides `{top}` (imported in {sorted(where)})"
        for dist in mapping[top]:
            found.setdefault(canon(dist), set()).update(f"{top} in {w}" for w in where)
    return found


def dependency_closure(pins: dict[str, str]) -> dict[str, str]:
    """Missing requirement -> who requires it, over the installed metadata of the pinned distributions."""
    missing: dict[str, str] = {}
    stack = [(name, frozenset()) for name in pins]
    seen = set()
    while stack:
        name, extras = stack.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            missing.setdefault(name, "not installed in this venv, cannot check its dependencies")
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({**TARGET, "extra": e}) for e in ("", *extras)):
                continue
            dep = canon(req.name)
            if dep in CONDA_LEVEL:
                continue
            if dep not in pins:
                missing.setdefault(dep, name)
            else:
                stack.append((dep, frozenset(req.extras)))
    return missing


# --- the tests ------------------------------------------------------------------------------------------------------


def test_every_scripted_rule_has_its_env():
    rules = rule_files()
    scripted = {rule: files for rule, files in rules.items() if "script" in files}
    assert set(scripted) == set(RULES), "a rule with script: was added or renamed: give it an env in RULES and envs/"
    for rule, env in RULES.items():
        assert scripted[rule].get("conda") == f"envs/{env}.yaml", rule


@pytest.mark.parametrize("env", ENVS)
def test_env_lists_every_distribution_its_code_imports(env):
    conda, pip = env_spec(env)
    listed = set(pip_pins(env)) | {canon(re.split(r"[=<>! ]", c)[0]) for c in conda}
    needed = distributions(env)
    assert needed, "the code path is empty: the AST walk is broken"
    missing = {dist: sorted(where) for dist, where in needed.items() if dist not in listed}
    assert not missing, f"envs/{env}.yaml lacks distributions its rules import: {missing}"


def test_code_paths_are_what_the_rules_run():
    """The walk sees the lazy imports inside functions, and only the functions each script calls."""
    encode, dataset = distributions("encode"), distributions("dataset")
    assert {"torch", "torchaudio", "neucodec", "transformers", "soundfile", "safetensors", "botocore"} <= set(encode)
    assert {"datasets", "pyarrow", "pandas", "huggingface-hub", "boto3", "botocore"} <= set(dataset)
    assert "torch" not in dataset and "datasets" not in encode


@pytest.mark.parametrize("env", ENVS)
def test_pip_pins_equal_requirements(env):
    pins, wanted = pip_pins(env), requirements()
    assert "neucodec-workflow" not in pins, "this package is installed by the post-deploy script"
    wrong = {name: (version, wanted.get(name)) for name, version in pins.items() if wanted.get(name) != version}
    assert not wrong, f"envs/{env}.yaml: (pin, requirements.txt) differ: {wrong}"
    assert len(env_spec(env)[1]) == len(pins), "a distribution is listed twice"


@pytest.mark.parametrize("env", ENVS)
def test_pip_list_is_closed_under_dependencies(env):
    """Nothing is left to pip's choice: every dependency (Linux x86_64, Python 3.11) is pinned in the env too."""
    missing = dependency_closure(pip_pins(env))
    assert not missing, f"envs/{env}.yaml: unpinned dependencies (dependency: required by): {missing}"


def test_dataset_env_has_no_torch():
    names = set(pip_pins("dataset")) | {canon(c) for c in env_spec("dataset")[0]}
    heavy = {n for n in names if n.startswith(("torch", "nvidia-", "cuda-", "triton", "pytorch"))}
    assert not heavy, f"envs/dataset.yaml must not install torch or its CUDA stack: {heavy}"


# --- the post-deploy scripts that install this package ---------------------------------------------------------------

STUB = """#!/bin/sh
printf '%s\\n' "$*" >> "$STUB_LOG"
if [ "$1" = "-c" ]; then exec {python} "$@"; fi
"""


def run_post_deploy(env: str, tmp_path: Path, cwd: Path, src: str | None, run_check: bool) -> tuple[int, str, str]:
    """Run envs/<env>.post-deploy.sh the way Snakemake does (a copy named <prefix>.post-deploy.sh, run by the
    shebang's interpreter from the working directory) against a stub env whose python logs its arguments."""
    prefix = tmp_path / "env"
    (prefix / "conda-meta").mkdir(parents=True, exist_ok=True)
    (prefix / "bin").mkdir(exist_ok=True)
    stub = prefix / "bin" / "python"
    stub.write_text(STUB.format(python=sys.executable if run_check else "true"))
    stub.chmod(0o755)
    script = tmp_path / "env.post-deploy.sh"
    shutil.copy(REPO / "envs" / f"{env}.post-deploy.sh", script)
    log = tmp_path / "python.log"
    log.write_text("")
    environ = {k: v for k, v in os.environ.items() if k not in ("NEUCODEC_WORKFLOW_SRC", "CONDA_PREFIX")}
    environ["STUB_LOG"] = str(log)
    if src is not None:
        environ["NEUCODEC_WORKFLOW_SRC"] = src
    interpreter = script.read_text().splitlines()[0].removeprefix("#!").split()
    proc = subprocess.run([*interpreter, str(script)], cwd=cwd, env=environ, capture_output=True, text=True)
    return proc.returncode, proc.stderr, log.read_text()


@pytest.mark.parametrize("env", ENVS)
def test_post_deploy_script_installs_this_package(env, tmp_path):
    script = REPO / "envs" / f"{env}.post-deploy.sh"
    assert script.is_file(), f"Snakemake runs envs/{env}.post-deploy.sh after creating envs/{env}.yaml's env"
    assert script.stat().st_mode & stat.S_IXUSR, "not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    # Snakemake's working directory is the clone (here a subdirectory of it): found by walking up
    rc, err, calls = run_post_deploy(env, tmp_path, REPO / "envs", None, run_check=env == "dataset")
    assert rc == 0, err
    assert f"-m pip install --quiet --no-deps --editable {REPO}\n" in calls
    assert "-m pip check\n" in calls and "\n-c " in calls
    check = calls.split("\n-c ", 1)[1]
    compile(check, "CHECK", "exec")
    for module in re.findall(rf"\b{PACKAGE}(?:\.\w+)+", check):
        assert module_path(module), f"the post-deploy check imports {module}, which does not exist"


def test_post_deploy_script_finds_the_source(tmp_path):
    outside = tmp_path / "work"
    outside.mkdir()
    rc, _, calls = run_post_deploy("dataset", tmp_path, outside, str(REPO), run_check=False)
    assert rc == 0 and f"--editable {REPO}\n" in calls
    rc, err, calls = run_post_deploy("dataset", tmp_path, outside, None, run_check=False)
    assert rc != 0 and "NEUCODEC_WORKFLOW_SRC" in err and "pip install" not in calls
    rc, err, _ = run_post_deploy("dataset", tmp_path, REPO, str(outside), run_check=False)
    assert rc != 0, "a NEUCODEC_WORKFLOW_SRC that is not this project is refused"


def test_post_deploy_scripts_differ_only_in_their_check():
    def body(env: str) -> str:
        text = (REPO / "envs" / f"{env}.post-deploy.sh").read_text()
        text = re.sub(r"envs/\w+\.yaml", "", text)
        return re.sub(r"# What the rules import.*?\n\n", "", text, flags=re.S)

    assert body("encode") == body("dataset")

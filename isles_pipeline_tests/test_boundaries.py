"""Package boundaries: what the wheel ships, what imports what, and what the fetch step loads.

The wheel is built by pip and setuptools from a copy of this checkout; the modules are imported in
fresh interpreters, so that nothing this test process already imported hides a problem.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from isles_devkit.processes import user_env
from isles_pipeline.catalogue import CASE_IDS, shard_path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "isles_pipeline"
# Not sources: build outputs, caches and environments a checkout may hold.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".hypothesis", ".isles", "var", "out", "dagster_home", "data")


def package_modules(root: Path = REPO_ROOT / PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def test_the_wheel_holds_the_package_and_nothing_else(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCES)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True, timeout=240,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {PACKAGE, f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    shipped = {name for name in names if name.endswith(".py")}
    expected = {path.relative_to(REPO_ROOT).as_posix() for path in package_modules().values()}
    assert shipped == expected
    assert not [name for name in names if "conftest" in name or "/test_" in name or name.startswith("test_")]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports, at the top or inside functions alike."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                imported.add(module)
                imported.update(f"{module}.{alias.name}" for alias in node.names)  # from a package import a module
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_lazy_import_cycle():
    modules = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py"), "p.c": Path("p/c.py")}
    graph = {"p": set(), "p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b", "p.c"]] and set(modules) == set(graph)


def test_no_module_of_the_package_imports_itself_round_a_cycle():
    modules = package_modules()
    graph = import_graph(modules)
    assert "isles_pipeline.segment.hub_models" in graph["isles_pipeline.segment.channels"]  # the graph sees imports
    assert cycles(graph) == []


def run_python(script: str, *args: str, env: dict[str, str] | None = None, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT,
                          env=env)


def test_every_module_imports_in_a_fresh_interpreter():
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps(failed))\n"
    )
    done = run_python(script, *package_modules())
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}


def test_the_fetch_step_never_imports_torch(hub, replica_dir, tmp_path):
    """``isles-pipeline fetch``, then ``case_inputs`` with an nnU-Net model on the Hub registered:
    the model's channels come from its dataset.json alone (the weights stay on the server), and
    neither torch nor anything that needs it is imported."""
    model = tmp_path / "model-repo"
    folder = model / "Dataset502_ct" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "Tmax", "1": "CBF"}, "labels": {"background": 0, "lesion": 1}}))
    (folder / "plans.json").write_text("{}")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"\0" * (1 << 20))
    hub.add_repo("model", "lab/ct-model", model)
    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - name: nnunet:ct\n    checkpoint: lab/ct-model:{folder.relative_to(model).as_posix()}\n")
    script = (
        "import json, sys\n"
        "import dagster as dg\n"
        "from isles_pipeline.cli import main\n"
        "from isles_pipeline.defs.cases import case_inputs\n"
        "from isles_pipeline_tests.chain import resources_for\n"
        "url, data, registry, first, second = sys.argv[1:]\n"
        "assert main(['fetch', first, '--out', data, '--endpoint', url]) == 0\n"
        "result = dg.materialize([case_inputs], partition_key=second, resources=resources_for(url, data, registry))\n"
        "assert result.success\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'nnunetv2'))),\n"
        "      json.dumps('isles_pipeline.segment.channels' in sys.modules))\n"
    )
    first, second = CASE_IDS[0], CASE_IDS[1]
    hub.reset_stats()
    done = run_python(script, hub.url, str(tmp_path / "data"), str(registry), first, second, env=user_env(HF_ENDPOINT=hub.url))
    assert done.returncode == 0, done.stderr[-3000:]
    heavy, channels_read = (json.loads(part) for part in done.stdout.strip().splitlines()[-1].split(" ", 1))
    assert heavy == [] and channels_read
    fetched = sorted({r.path.rsplit("/", 1)[-1] for r in hub.stats.log if r.route_kind == "resolve" and r.method == "GET"})
    assert fetched == sorted({"dataset.json", shard_path(first).rsplit("/", 1)[-1], shard_path(second).rsplit("/", 1)[-1]})
    case_files = {p.name.split(".")[0] for p in (tmp_path / "data" / "cases" / second).iterdir()}
    assert {"tmax", "cbf"} <= case_files  # the columns dataset.json names were fetched

"""The package's layering, as the README's design page writes it down, checked on every import.

Every module's imports are read with :mod:`ast` (imports inside functions and
under ``TYPE_CHECKING`` included) and each edge is checked against the rules:

* the kernel (``errors``, ``registry``, ``config``, ``data``, ``task``) imports
  only itself; ``space/`` only the kernel; ``optim/``, ``cost/`` and
  ``predictors/`` only the kernel and ``space`` (never each other); ``run/``
  the kernel, ``space``, ``optim`` and ``cost``;
* ``strategies/base.py`` sits on ``run``; a strategy family imports the layers
  below and ``strategies.base``, never another family, except that the
  hybrids (``dna``, ``fox``) may import the *package* of ``multi_trial`` and
  ``one_shot`` (what their ``__init__`` exports), never an inner module;
* the domains import only the kernel, ``space``, ``spd_ops`` and themselves;
  ``spd_ops`` imports nothing of ours;
* below the app, no module imports a domain library (MONAI, nibabel,
  scikit-learn, Ray) or an optional one at module top, and ``space`` no scipy;
* the import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL = {"errors", "registry", "config", "data", "task"}
APP = {"__init__", "__main__", "cli", "plugins", "search"}
FAMILIES = {"bilevel", "multi_trial", "one_shot", "dna", "fox"}
HYBRIDS = {"dna", "fox"}
MAY_IMPORT = {
    "kernel": {"kernel"},
    "space": {"kernel", "space"},
    "optim": {"kernel", "space", "optim"},
    "cost": {"kernel", "space", "cost"},
    "predictors": {"kernel", "space", "predictors"},
    "run": {"kernel", "space", "optim", "cost", "run"},
    "strategies": {"kernel", "space", "run", "strategies"},
    "domains": {"kernel", "space", "spd_ops", "domains"},
    "spd_ops": {"spd_ops"},
}
BELOW_FAMILIES = {"kernel", "space", "optim", "cost", "predictors", "run", "strategies"}
#: libraries that only a domain (or the app) imports at module top
DOMAIN_LIBRARIES = {"monai", "nibabel", "sklearn", "ray", "matplotlib", "pandas", "aeon",
                    "nilearn", "pyriemann", "tensorboard"}  # fmt: skip


def module_name(path: Path) -> str:
    """The dotted name a file installs as (``domains/`` installs as ``manifold_nas.domains``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "domains":
        parts = ["manifold_nas", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """``kernel``, ``space``, ..., ``family:<name>``, ``app``; None for anything not ours."""
    parts = module.split(".")
    if parts[0] == "spd_ops":
        return "spd_ops"
    if parts[0] != "manifold_nas":
        return None
    if len(parts) == 1 or parts[1] in APP:
        return "app"
    if parts[1] in KERNEL:
        return "kernel"
    if parts[1] == "strategies":
        if len(parts) > 2 and parts[2] in FAMILIES:
            return f"family:{parts[2]}"
        return "strategies"
    return parts[1]


def is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] == ["manifold_nas", "domains"]:
        parts = parts[1:]
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, bool, int]]:
    """``(imported module, at module top, line)`` for every import of ``source``."""
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks still count as the top
        if isinstance(node, ast.If | ast.Try):
            top |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target if is_module(target) else base, id(node) in top, node.lineno))
    return found


def violation(source: str, target: str, at_top: bool) -> str | None:
    """Why the edge ``source -> target`` is forbidden (None when the rules allow it)."""
    src, dst = layer_of(source), layer_of(target)
    library = target.split(".")[0]
    if dst is None:
        core = src not in (None, "app", "domains", "spd_ops")
        if core and at_top and library in DOMAIN_LIBRARIES:
            return f"imports the domain library {library} at module top"
        if src == "space" and at_top and library == "scipy":
            return "the search-space layer imports scipy at module top"
        if target == "domains" or target.startswith("domains."):
            return "imports `domains` by its folder name, not manifold_nas.domains"
        return None
    if src == "app":
        return None
    if src is not None and src.startswith("family:"):
        family = src.split(":")[1]
        if dst in BELOW_FAMILIES or dst == src:
            return None
        if family in HYBRIDS and target in (
            "manifold_nas.strategies.multi_trial",
            "manifold_nas.strategies.one_shot",
        ):
            return None
        return f"family {family} imports {target} ({dst})"
    if src in MAY_IMPORT and dst not in MAY_IMPORT[src]:
        return f"layer {src} imports {target} ({dst})"
    return None


def source_files() -> list[Path]:
    roots = [ROOT / "manifold_nas", ROOT / "domains", ROOT / "spd_ops"]
    return sorted(p for root in roots for p in root.rglob("*.py"))


def import_graph() -> dict[str, list[tuple[str, bool, int]]]:
    return {
        module_name(p): imports_of(p.read_text(), module_name(p), p.name == "__init__.py")
        for p in source_files()
    }


def violations(graph: dict[str, list[tuple[str, bool, int]]]) -> list[str]:
    found = []
    for module, edges in graph.items():
        for target, at_top, line in edges:
            why = violation(module, target, at_top)
            if why:
                found.append(f"{module}:{line}: {why}")
    return found


def cycles(graph: dict[str, list[tuple[str, bool, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges = {m: sorted({t for t, _, _ in e if t in graph and t != m}) for m, e in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_every_import_follows_the_layer_rules():
    assert violations(import_graph()) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_every_module_belongs_to_a_layer():
    assert {m: layer_of(m) for m in import_graph() if layer_of(m) is None} == {}


@pytest.mark.parametrize(
    ("module", "line", "reason"),
    [
        ("manifold_nas.space.cell", "from manifold_nas.run.context import Run", "layer space"),
        ("manifold_nas.cost.budget", "from manifold_nas.run.context import Run", "layer cost"),
        ("manifold_nas.optim.simplex", "import manifold_nas.cost.table", "layer optim"),
        ("manifold_nas.predictors.linear", "from manifold_nas.cost import table", "layer predictors"),
        ("manifold_nas.run.context", "from manifold_nas.strategies.base import Strategy", "layer run"),
        ("manifold_nas.config", "from manifold_nas.space.cell import ArchSpec", "layer kernel"),
        ("manifold_nas.strategies.one_shot.cream", "from manifold_nas.strategies.bilevel.architect import Architect", "family one_shot"),
        ("manifold_nas.strategies.fox.strategy", "from manifold_nas.strategies.one_shot.spos import SinglePathOneShot", "family fox"),
        ("manifold_nas.strategies.fox.strategy", "from manifold_nas.strategies.dna import strategy", "family fox"),
        ("manifold_nas.domains.spd.ops", "from manifold_nas.run.context import Run", "layer domains"),
        ("manifold_nas.domains.spd.ops", "from domains.spd import ops", "folder name"),
        ("spd_ops.mean", "from manifold_nas.errors import UserInputError", "layer spd_ops"),
        ("manifold_nas.space.cell", "from monai.networks.layers.factories import Pool", "monai"),
        ("manifold_nas.strategies.dna.teacher", "from monai.networks.nets import UNet", "monai"),
        ("manifold_nas.space.sampling", "from scipy import stats", "scipy"),
        ("manifold_nas.run.plotting", "if TYPE_CHECKING:\n    from manifold_nas.strategies.base import Strategy", "layer run"),
        ("manifold_nas.cost.budget", "def f():\n    from manifold_nas.run.context import Run", "layer cost"),
    ],
)  # fmt: skip
def test_a_forbidden_import_is_reported(module, line, reason):
    edges = imports_of(line, module, is_package=False)
    found = [violation(module, target, top) for target, top, _ in edges]
    assert any(why and reason in why for why in found), found


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("manifold_nas.strategies.fox.strategy", "from manifold_nas.strategies.one_shot import SinglePathOneShot"),
        ("manifold_nas.strategies.dna.strategy", "from manifold_nas.strategies.multi_trial import train_trial"),
        ("manifold_nas.strategies.one_shot.cream", "from manifold_nas.optim.geometry import retract"),
        ("manifold_nas.domains.volumetric.ops", "from monai.networks.layers.factories import Conv"),
        ("manifold_nas.strategies.multi_trial.loop", "def f():\n    import sklearn"),
        ("manifold_nas.cli", "from manifold_nas.strategies.fox.strategy import FoxSearch"),
    ],
)  # fmt: skip
def test_an_allowed_import_is_not_reported(module, line):
    edges = imports_of(line, module, is_package=False)
    assert [violation(module, target, top) for target, top, _ in edges] == [None] * len(edges)


def test_a_cycle_is_reported():
    graph = {
        "manifold_nas.a": [("manifold_nas.b", True, 1)],
        "manifold_nas.b": [("manifold_nas.c", False, 9)],
        "manifold_nas.c": [("manifold_nas.a", True, 3)],
        "manifold_nas.d": [("manifold_nas.a", True, 1)],
    }
    assert cycles(graph) == [["manifold_nas.a", "manifold_nas.b", "manifold_nas.c"]]


def test_the_wheel_lists_every_package_folder():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {module_name(p) for p in source_files() if p.name == "__init__.py"}
    assert set(config["packages"]) == folders
    assert config["package-dir"]["manifold_nas.domains"] == "domains"

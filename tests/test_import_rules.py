"""The house's arrows point down (see ../shared/DESIGN.md and README "Architecture").

cli -> trainer / launch / scaling -> engines / checkpoint / data -> models. The rules below are
read from the source (the AST of every module, imports inside functions included), so a lazy
import cannot hide an arrow that runs back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pretrain", "launch", "data_pipeline")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


MODULES = _all_modules()


def _resolve(name: str) -> str | None:
    """The project module `name` refers to (a package's attribute resolves to the package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    """Project modules that `module` imports anywhere in its body."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# (who, must not import, why)
RULES = [
    (
        "pretrain.models",
        "pretrain.engines",
        "model code is single-device; parallelism comes from outside",
    ),
    ("pretrain.models", "pretrain.checkpoint", "models know nothing of the checkpoint format"),
    ("pretrain.models", "pretrain.trainer", "models sit below the loop"),
    ("pretrain.models", "data_pipeline", "models take tensors, not loaders"),
    ("pretrain.engines", "pretrain.trainer", "engines sit below the loop"),
    (
        "pretrain.engines",
        "pretrain.checkpoint",
        "engines hand over state; the checkpoint package writes it",
    ),
    ("data_pipeline", "pretrain", "the data pipeline stands on its own"),
    ("data_pipeline", "launch", "the data pipeline stands on its own"),
    ("pretrain.scaling_laws", "pretrain.trainer", "scaling tools read run dirs and launch runs"),
    ("pretrain.mup", "pretrain.trainer", "muP tools use the step function, not the loop"),
    ("pretrain.checkpoint", "pretrain.trainer", "the checkpoint package sits below the loop"),
    ("pretrain.config", "launch.slurm", "config only assembles leaf sections"),
    ("pretrain.config", "pretrain.engines.base", "config only assembles leaf sections"),
    ("pretrain.config", "pretrain.trainer", "config only assembles leaf sections"),
    ("pretrain.trainer", "pretrain.cli", "the command line sits on top"),
    ("launch", "pretrain.cli", "the command line sits on top"),
    ("data_pipeline", "pretrain.cli", "the command line sits on top"),
    ("pretrain.checkpoint", "pretrain.cli", "the command line sits on top"),
]


@pytest.mark.parametrize(
    ("who", "forbidden", "why"), RULES, ids=[f"{w}-x-{f}" for w, f, _ in RULES]
)
def test_no_upward_arrow(who: str, forbidden: str, why: str) -> None:
    offenders = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if _under(m, who)
        for t in targets
        if _under(t, forbidden)
    )
    assert not offenders, f"{why}: " + "; ".join(offenders)


def test_no_import_circle() -> None:
    """Depth-first search over the module graph; a back edge is a circle."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []
    circles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            # A package importing its own submodules (re-exports) is not an arrow back up.
            if _under(t, m):
                continue
            if state.get(t) == 1:
                if not _under(m, t):  # a submodule importing its package's __init__
                    circles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not circles, "import circles: " + " | ".join(circles)


def test_rules_see_the_tree() -> None:
    """The graph is real: known arrows are found (a broken walker would pass every rule)."""
    assert "pretrain.models" in GRAPH["pretrain.trainer"] or any(
        _under(t, "pretrain.models") for t in GRAPH["pretrain.trainer"]
    )
    assert any(_under(t, "data_pipeline") for t in GRAPH["pretrain.trainer"])

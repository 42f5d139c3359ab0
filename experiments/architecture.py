"""Counts of the package's shape (the architecture issue's before/after figures), from its source.

    python experiments/architecture.py            # static counts
    python experiments/architecture.py --trace    # and the package crossings of one tiny stage=finetune run

Static counts, from the AST of every module under ``lsvcr/``:
- layering: imports (top-level or inside a function) from a lower layer into a higher one, with the
  layers of :data:`LAYERS` (a module may import its own layer and the ones below);
- imports of another module's private name (``from x import _y``);
- import cycles between modules (strongly connected components of the import graph);
- imports between stages: a stage's module (the ``stage._target_`` of a ``conf/stage/*.yaml``)
  importing another stage's module, or a module of its own (``pipelines/align_engine.py`` is
  ``stage=align``'s) importing another stage's; stages share code through non-stage modules;
- task-name branches: comparisons of a name containing ``task`` (or a ``TASKS`` constant) against
  string literals, e.g. ``if task == "rec"``, ``cfg.task.name in ("rec", "joint")``;
- files over 400 lines and the longest functions.

``--trace`` runs ``lsvcr stage=finetune model/sr=lsvcr`` on a tiny world in this process under
``sys.setprofile`` and counts the distinct caller -> callee function pairs between two packages of
``lsvcr`` (``data``, ``models``, ``pipelines``, ...; the caller is the nearest ``lsvcr`` frame, so a call
through torch's ``Module.__call__`` or Hydra's ``instantiate`` counts), and how many of them go back up
the layering (a lower layer calling a higher one, e.g. through a callback or a lazy import).
``tests/test_layering.py`` enforces the layering with the same code.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "lsvcr"

# The layers, lowest first: a module may import from its own layer and the ones below it.
LAYERS: dict[str, int] = {
    "errors": 0, "utils": 0, "distributed": 0, "version": 0,   # errors, helpers without a domain, the version
    "data": 1,
    "models": 2,
    "losses": 3,
    "metrics": 4,
    "tasks": 5,                                          # the task objects: they pick batches, losses, rankings
    "deploy": 5,                                         # the exported artifact and its recommendations
    "pipelines": 6, "assets": 6,                         # the stages; the asset tool
    "launch": 7, "main": 7, "rank": 7,                   # the command line and the launchers
    "": 7,                                               # the package root: the public facade (lsvcr.load_artifact)
}


@dataclass(frozen=True)
class Import:
    module: str        # the importing module, e.g. "lsvcr.data.loader"
    target: str        # the imported module, e.g. "lsvcr.data.history"
    names: tuple[str, ...]
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    """``<root>/data/loader.py`` -> ``lsvcr.data.loader`` (the package is named after ``root``)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package(module: str) -> str:
    """``lsvcr.data.loader`` -> ``data``; ``lsvcr.main`` -> ``main``; ``lsvcr`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(module: str) -> int:
    return LAYERS[package(module)]


def sources(root: Path = ROOT) -> dict[str, tuple[Path, ast.Module]]:
    """Every module under ``root`` by dotted name: its path and syntax tree."""
    return {module_name(p, root): (p, ast.parse(p.read_text(), str(p))) for p in sorted(root.rglob("*.py"))}


def imports(mods: dict[str, tuple[Path, ast.Module]]) -> list[Import]:
    """Every import of an ``lsvcr`` module, top-level or inside a function."""
    found = []
    for mod, (path, tree) in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")[: len(mod.split(".")) - node.level + is_pkg]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != mod.split(".")[0]:
                    continue
                names = tuple(a.name for a in node.names)
                # `from lsvcr import distributed` imports a module: record it as the target
                sub = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                for t in sub or [target]:
                    found.append(Import(mod, t, names, node.lineno))
            elif isinstance(node, ast.Import):
                found += [Import(mod, a.name, (), node.lineno) for a in node.names
                          if a.name.split(".")[0] == mod.split(".")[0]]
    return found


def stage_modules(conf: Path = REPO / "conf" / "stage") -> dict[str, str]:
    """Stage name -> the module of its ``stage._target_`` (read from the YAML text, no Hydra)."""
    out = {}
    for path in sorted(conf.glob("*.yaml")):
        for line in path.read_text().splitlines():
            key, _, value = line.strip().partition(":")
            if key == "_target_" and value.strip().startswith("lsvcr.pipelines."):
                out[path.stem] = value.strip().rsplit(".", 1)[0]
    return out


def stage_imports(found: list[Import], stages: dict[str, str]) -> list[Import]:
    """Imports from one stage's modules (its module, and ``<module>_*`` beside it) of another stage's."""
    def owner(module: str) -> str | None:
        return next((s for s, m in stages.items() if module == m or module.startswith(m + "_")), None)

    return [i for i in found if owner(i.target) and owner(i.module) and owner(i.target) != owner(i.module)]


def layering_violations(found: list[Import]) -> list[Import]:
    return [i for i in found if layer(i.target) > layer(i.module)]


def private_imports(found: list[Import]) -> list[tuple[Import, str]]:
    return [(i, n) for i in found for n in i.names if n.startswith("_") and not n.startswith("__")]


def import_cycles(found: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for i in found:
        if i.target != i.module and not i.module.startswith(i.target + "."):  # a package's own __init__ is not a cycle
            graph[i.module].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _names(node: ast.AST) -> str:
    """The dotted text of a name, attribute or subscript chain (``cfg.task.name``, ``batch["task"]``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_names(node.value)}.{node.attr}"
    if isinstance(node, ast.Subscript):
        key = node.slice.value if isinstance(node.slice, ast.Constant) else ""
        return f"{_names(node.value)}[{key}]"
    if isinstance(node, ast.Call):
        return _names(node.func) + "()"
    return ""


def _strings(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_strings(e) for e in node.elts)
    return isinstance(node, ast.Name) and node.id.endswith("TASKS")


def task_branches(mods: dict[str, tuple[Path, ast.Module]]) -> list[tuple[str, int, str]]:
    """``(module, line, source)`` of each comparison of a task name against literals."""
    found = []
    for mod, (path, tree) in mods.items():
        lines = path.read_text().splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any("task" in _names(s).lower() for s in sides) and any(_strings(s) for s in sides):
                    found.append((mod, node.lineno, lines[node.lineno - 1].strip()))
            elif isinstance(node, ast.Match) and "task" in _names(node.subject).lower():
                found.append((mod, node.lineno, lines[node.lineno - 1].strip()))
    return sorted(found)


def long_files(mods: dict[str, tuple[Path, ast.Module]], limit: int = 400) -> list[tuple[int, str]]:
    sized = [(len(p.read_text().splitlines()), str(p.relative_to(REPO) if p.is_relative_to(REPO) else p))
             for p, _ in mods.values()]
    return sorted([s for s in sized if s[0] > limit], reverse=True)


def longest_functions(mods: dict[str, tuple[Path, ast.Module]], n: int = 10) -> list[tuple[int, str]]:
    funcs = []
    for mod, (_, tree) in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{mod}.{node.name}"))
    return sorted(funcs, reverse=True)[:n]


def trace_finetune(out_dir: Path) -> tuple[Counter, set]:
    """Run a tiny ``stage=finetune`` here under ``sys.setprofile``; returns the distinct cross-package
    caller -> callee pairs counted by (caller package, callee package), and the pairs themselves."""
    edges: set[tuple[str, str, str, str]] = set()

    def profile(frame, event, arg):
        if event != "call" or frame.f_code.co_name == "<module>":  # an import: counted from the source
            return
        callee = frame.f_globals.get("__name__", "")
        if callee.split(".")[0] != "lsvcr":
            return
        back = frame.f_back  # the nearest lsvcr frame above: calls through torch's Module.__call__ or Hydra count
        while back is not None and back.f_globals.get("__name__", "").split(".")[0] != "lsvcr":
            back = back.f_back
        if back is not None and package(caller := back.f_globals["__name__"]) != package(callee):
            edges.add((caller, back.f_code.co_qualname, callee, frame.f_code.co_qualname))

    os.environ.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", LSVCR_OUTPUT_DIR=str(out_dir))
    argv = sys.argv
    sys.argv = ["lsvcr", "stage=finetune", "task=rec", "model/sr=lsvcr", "data.num_users=150", "data.num_videos=200",
                "finetune.epochs=1", "eval.protocols=[full]", f"hydra.run.dir={out_dir / 'run'}"]
    from lsvcr.main import main

    sys.setprofile(profile)
    try:
        main()
    except SystemExit as e:
        if e.code:
            raise
    finally:
        sys.setprofile(None)
        sys.argv = argv
    pairs = Counter((package(a), package(c)) for a, _, c, _ in edges)
    return pairs, edges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", action="store_true", help="also trace one tiny stage=finetune run")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every finding, not only counts")
    args = ap.parse_args()
    mods = sources()
    found = imports(mods)
    bad = layering_violations(found)
    priv = private_imports(found)
    cycles = import_cycles(found)
    branches = task_branches(mods)
    print(f"modules: {len(mods)}, lines: {sum(len(p.read_text().splitlines()) for p, _ in mods.values())}")
    print(f"imports against the layering: {len(bad)}")
    for i in bad if args.verbose else []:
        print(f"  {i.module}:{i.line} -> {i.target}")
    print(f"imports of private names: {len(priv)}")
    for i, n in priv if args.verbose else []:
        print(f"  {i.module}:{i.line} -> {i.target}.{n}")
    print(f"import cycles: {len(cycles)}")
    for c in cycles if args.verbose else []:
        print("  " + " <-> ".join(c))
    between = stage_imports(found, stage_modules())
    print(f"imports between stages: {len(between)}")
    for i in between if args.verbose else []:
        print(f"  {i.module}:{i.line} -> {i.target}")
    print(f"task-name branches: {len(branches)} in {len({m for m, _, _ in branches})} modules")
    for m, line, text in branches if args.verbose else []:
        print(f"  {m}:{line}: {text}")
    files = long_files(mods)
    print(f"files over 400 lines: {len(files)}" + "".join(f"\n  {n:4d} {p}" for n, p in files))
    print("longest functions:" + "".join(f"\n  {n:4d} {f}" for n, f in longest_functions(mods)))
    if args.trace:
        with tempfile.TemporaryDirectory() as tmp:
            pairs, edges = trace_finetune(Path(tmp))
        up = sum(n for (a, c), n in pairs.items() if LAYERS[c] > LAYERS[a])
        print(f"one tiny stage=finetune run: {len(edges)} distinct cross-package caller -> callee pairs, "
              f"{up} of them up the layering")
        for (a, c), n in sorted(pairs.items()):
            print(f"  {a or 'lsvcr'} -> {c or 'lsvcr'}: {n}" + ("  (up)" if LAYERS[c] > LAYERS[a] else ""))
        for e in sorted(edges) if args.verbose else []:
            print(f"    {e[0]}.{e[1]} -> {e[2]}.{e[3]}")


if __name__ == "__main__":
    main()

"""The package's layering, read from its imports: data -> models -> losses -> metrics -> tasks -> pipelines.

A module may import its own layer and the ones below it (``experiments/architecture.py``'s
``LAYERS``, which also places ``lsvcr.errors``, ``lsvcr.utils``, ``lsvcr.distributed`` under
everything and the command line above it); no module imports another's private names; no two
modules import each other, even through a lazy import inside a function; no stage imports another.
"""

from __future__ import annotations

import pytest

from conftest import load_experiment

# Imports against the layering still left (none): this list may only shrink.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


@pytest.fixture(scope="module")
def arch():
    return load_experiment("architecture")


@pytest.fixture(scope="module")
def found(arch):
    return arch.imports(arch.sources())


def test_every_package_has_a_layer(arch):
    packages = {arch.package(m) for m in arch.sources()}
    assert packages <= set(arch.LAYERS), f"place these in LAYERS: {sorted(packages - set(arch.LAYERS))}"


def test_no_import_goes_up_the_layering_beyond_the_known_ones(arch, found):
    bad = {(i.module, i.target) for i in arch.layering_violations(found)}
    assert bad - KNOWN_VIOLATIONS == set(), "new imports against the layering"
    assert KNOWN_VIOLATIONS - bad == set(), "fixed: remove them from KNOWN_VIOLATIONS"


def test_no_module_imports_a_private_name_of_another(arch, found):
    assert [f"{i.module}:{i.line} {i.target}.{n}" for i, n in arch.private_imports(found)] == []


def test_no_import_cycles(arch, found):
    assert arch.import_cycles(found) == []


def test_stages_never_import_each_other(arch, found):
    """A stage shares code through non-stage modules (pipelines.checkpoint, pipelines.tables, ...)."""
    stages = arch.stage_modules()
    assert set(stages) >= {"prepare", "embed", "finetune", "evaluate", "align", "pipeline"}
    assert [f"{i.module}:{i.line} -> {i.target}" for i in arch.stage_imports(found, stages)] == []
    # the check sees a stage's helper module importing another stage, and a lazy import too
    planted = [arch.Import("lsvcr.pipelines.align_engine", "lsvcr.pipelines.embed", ("x",), 1),
               arch.Import("lsvcr.pipelines.finetune", "lsvcr.pipelines.align_eval", ("y",), 2),
               arch.Import("lsvcr.pipelines.finetune", "lsvcr.pipelines.checkpoint", ("z",), 3)]
    assert [(i.module, i.target) for i in arch.stage_imports(planted, stages)] == [
        ("lsvcr.pipelines.align_engine", "lsvcr.pipelines.embed"), ("lsvcr.pipelines.finetune", "lsvcr.pipelines.align_eval")]


def test_the_checks_find_what_they_look_for(arch, tmp_path):
    """On a small package written here: an import up the layering (also a lazy one), a private
    name, a cycle through a function-level import, and the task-name branches."""
    pkg = tmp_path / "lsvcr"
    for sub in ("data", "models"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from lsvcr.data.b import _hidden\n\ndef f(task):\n"
                                       "    from lsvcr.models.m import g\n    return task == 'rec'\n")
    (pkg / "data" / "b.py").write_text("from . import a\n_hidden = 1\n")
    (pkg / "models" / "m.py").write_text("from ..data import a\n\ndef g(cfg):\n"
                                         "    return cfg.task.name in ('rec', 'joint')\n")
    mods = arch.sources(pkg)
    found = arch.imports(mods)
    assert [(i.module, i.target) for i in arch.layering_violations(found)] == [("lsvcr.data.a", "lsvcr.models.m")]
    assert [(i.module, n) for i, n in arch.private_imports(found)] == [("lsvcr.data.a", "_hidden")]
    assert arch.import_cycles(found) == [["lsvcr.data.a", "lsvcr.data.b", "lsvcr.models.m"]]
    assert [(m, line) for m, line, _ in arch.task_branches(mods)] == [("lsvcr.data.a", 5), ("lsvcr.models.m", 4)]

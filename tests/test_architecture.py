"""The import contracts as tests: mimkit's layers (``[tool.importlinter]`` in pyproject.toml, also run by
``lint-imports`` in ``make test``), no import cycle between modules, no module taking another's private
name, and the old data module paths still working with a DeprecationWarning. Lazy imports inside
functions count: grimp reads every import statement of a module, wherever it stands."""

from __future__ import annotations

import ast
import importlib
import sys
import tomllib
import warnings
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mimkit"


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("mimkit", include_external_packages=False, cache_dir=None)


def _contracts() -> dict:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in cfg["contracts"]}


def _layers(spec: list[str]) -> list:
    """import-linter's layer strings as grimp layers: ``a | b`` independent siblings, ``a : b`` siblings
    that may import each other."""
    out = []
    for entry in spec:
        if ":" in entry:
            out.append(grimp.Layer(*(p.strip() for p in entry.split(":")), independent=False))
        else:
            out.append(grimp.Layer(*(p.strip() for p in entry.split("|")), independent=True))
    return out


def _illegal(graph, contract_id: str) -> list[str]:
    c = _contracts()[contract_id]
    found = graph.find_illegal_dependencies_for_layers(layers=_layers(c["layers"]), containers=set(c["containers"]))
    return sorted(
        f"{d.importer} -> {d.imported}: "
        + "; ".join(" -> ".join(r.__dict__.get("middle", ()) or ()) or str(r) for r in d.routes)
        for d in found
    )


def import_cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself): each is
    an import cycle. Iterative Tarjan over the module-to-module imports of the package."""
    mods = sorted(m for m in graph.modules if m == "mimkit" or m.startswith("mimkit."))
    succ = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in set(mods)) for m in mods}
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in mods:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in succ[v]:
                        out.append(sorted(comp))
    return out


def test_layers_hold(graph):
    assert _illegal(graph, "layers") == []
    assert _illegal(graph, "data") == []


def test_every_module_stands_in_a_layer():
    layers = _contracts()["layers"]["layers"]
    named = {p.strip() for entry in layers for p in entry.replace(":", "|").split("|")}
    children = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")
    }
    assert children - named == set()


def test_no_import_cycle(graph):
    assert import_cycles(graph) == []


def test_a_new_cycle_or_upward_import_is_caught(graph):
    """What the checks would say about a change that imports upward (data -> train) or closes a loop."""
    graph.add_import(importer="mimkit.data.images", imported="mimkit.train.run")
    try:
        assert any("mimkit.data" in d and "mimkit.train" in d for d in _illegal(graph, "layers"))
        assert any("mimkit.data.images" in c for c in import_cycles(graph))  # train.run -> data.device -> data.images
    finally:
        graph.remove_import(importer="mimkit.data.images", imported="mimkit.train.run")
    graph.add_import(importer="mimkit.data.images", imported="mimkit.data.build")
    try:
        assert _illegal(graph, "data")
        assert any({"mimkit.data.build", "mimkit.data.images"} <= set(c) for c in import_cycles(graph))
    finally:
        graph.remove_import(importer="mimkit.data.images", imported="mimkit.data.build")
    assert import_cycles(graph) == [] and _illegal(graph, "layers") == []


def _private_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                source = "." * node.level + (node.module or "")
                if not (node.level or (node.module or "").startswith("mimkit")):
                    continue  # another package's names are its business
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {source} import {alias.name}")
    return bad


def test_no_module_takes_another_modules_private_name():
    assert _private_imports() == []


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("mimkit.shards", "mimkit.data.shards", "ShardImages"),
        ("mimkit.hf_dataset", "mimkit.data.hf_dataset", "HFImages"),
        ("mimkit.device_data", "mimkit.data.device", "DeviceAugment"),
    ],
)
def test_old_data_paths_warn_and_work(old, new, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")) as record:
        mod = importlib.import_module(old)
    assert record[0].filename.endswith("__init__.py")  # importlib.import_module here; a plain import: its line
    assert mod is importlib.import_module(new) and getattr(mod, name) is getattr(importlib.import_module(new), name)


# every public name of the former mimkit/data.py
OLD_DATA_NAMES = """DATASET_NAMES FMNIST_CLASSES FMNIST_DIRS FMNIST_FILES FMNIST_MEAN FMNIST_STD HOW_TO_GET_FMNIST
IMAGENET_MEAN IMAGENET_STD BatchAugment BatchedSamples PreCollated SafeImageFolder TensorImages build_dataset
build_val_dataset collate default_stats eval_transform held_out_rows limit_rows load_fashion_mnist load_image
locate_fashion_mnist pretrain_transform random_resized_crop_boxes seeded_uniforms source_dataset take_rows""".split()


def test_data_package_keeps_every_old_name_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import mimkit.checkpoint
        import mimkit.data
        import mimkit.files
        import mimkit.train.loader

    assert [n for n in OLD_DATA_NAMES if not hasattr(mimkit.data, n)] == []
    for name in (
        "UntrustedCheckpointError",
        "atomic_write",
        "read_safetensors",
        "read_torch_checkpoint",
        "trusted_checkpoints",
        "is_trusted",
        "WEIGHTS",
        "CONFIG",
    ):  # the readers, now in mimkit.files
        assert getattr(mimkit.checkpoint, name) is getattr(mimkit.files, name)
    assert mimkit.train.loader.mix_seed is mimkit.data.mix_seed  # now mimkit.data.seeds

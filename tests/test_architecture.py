"""The import contracts as tests: mimkit's layers (``[tool.importlinter]`` in pyproject.toml, also run by
``lint-imports`` in ``make test``), no import cycle between modules, no ignored import in any contract,
no module taking another's private name, a registry that imports no method or tokenizer module (they
register themselves when ``import mimkit`` imports their packages), and one definition of each schedule.
Lazy imports inside functions count: grimp reads every import statement of a module, wherever it stands."""

from __future__ import annotations

import ast
import subprocess
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


def test_every_module_stands_in_a_layer_and_every_layer_is_a_module():
    layers = _contracts()["layers"]["layers"]
    named = {p.strip() for entry in layers for p in entry.replace(":", "|").split("|")}
    children = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")
    }
    assert children - named == set()
    assert named - children == set()  # no layer left for a module that is gone (the removed data shims)


def test_no_contract_ignores_an_import():
    assert {c["id"]: c["ignore_imports"] for c in _contracts().values() if c.get("ignore_imports")} == {}


def test_train_imports_nothing_of_eval(graph):
    """The report after training is the command layer's (mimkit.commands.pretrain): the engine does not
    reach the evaluation, directly or through another module."""
    assert graph.find_shortest_chain("mimkit.train", "mimkit.eval", as_packages=True) is None


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


def test_the_removed_data_shims_are_gone():
    for old in ("shards", "hf_dataset", "device_data"):  # never released: mimkit.data.<module> is the path
        assert not (PACKAGE / f"{old}.py").exists()
    with pytest.raises(ModuleNotFoundError):
        __import__("mimkit.device_data")


# ---- the registry: methods and tokenizers register themselves -------------------------------------
PLUGINS = ("mimkit.methods", "mimkit.tokenizer")


def _name_imports(path: Path) -> list[str]:
    """What a module imports by name at run time (importlib.import_module, __import__, pkgutil) or names
    outside its docstrings: imports grimp cannot see."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__", "iter_modules", "walk_packages"):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if any(p in node.value for p in PLUGINS):
                found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_the_registry_imports_no_method_or_tokenizer_module(graph):
    upstream = graph.find_upstream_modules("mimkit.registry")  # everything it imports, directly or not
    assert sorted(m for m in upstream if m.startswith(PLUGINS)) == []
    assert _name_imports(PACKAGE / "registry.py") == []


def test_the_check_sees_a_registry_that_imports_methods(graph, tmp_path):
    """What the two checks above say about the old registry, which imported the plugins by name."""
    old = tmp_path / "registry.py"
    old.write_text('import importlib\n\ndef _load_all():\n    importlib.import_module("mimkit.methods")\n')
    assert [f.split(": ")[1] for f in _name_imports(old)] == [
        "importlib.import_module('mimkit.methods')",
        "'mimkit.methods'",
    ]
    graph.add_import(importer="mimkit.registry", imported="mimkit.tokenizer.recipes")
    try:
        assert "mimkit.tokenizer.recipes" in graph.find_upstream_modules("mimkit.registry")
    finally:
        graph.remove_import(importer="mimkit.registry", imported="mimkit.tokenizer.recipes")


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_the_registry_alone_registers_nothing():
    """Imported without the package's __init__ (which imports the plugins), the registry loads no
    method or tokenizer module on its own, however it is asked."""
    out = _run(
        "import sys, types\n"
        f"pkg = types.ModuleType('mimkit'); pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules['mimkit'] = pkg\n"
        "import mimkit.registry as r\n"
        "assert r.list_models() == [] and r.list_builders() == []\n"
        "try:\n    r.create('mae_vit_tiny_patch4_28')\nexcept KeyError as e:\n    print(e)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mimkit.methods', 'mimkit.tokenizer'))))\n"
    )
    assert out.splitlines() == [
        "\"unknown recipe 'mae_vit_tiny_patch4_28'. `mimkit.list_models()` or `mimkit models` lists them all.\"",
        "[]",
    ]


def test_import_mimkit_registers_every_method_module_and_the_tokenizers():
    """``import mimkit`` imports every file of mimkit/methods/ (a new method is a new file, nothing to
    list) and the tokenizer recipes, and no training framework."""
    out = _run(
        "import sys, mimkit\n"
        "print(sorted(m for m in sys.modules if m.startswith('mimkit.methods.')))\n"
        "print('dvae_tiny_28' in mimkit.list_models(), type(mimkit.create('mae_vit_tiny_patch4_28')).__name__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'gradio')))\n"
    )
    files = sorted(f"mimkit.methods.{p.stem}" for p in (PACKAGE / "methods").glob("*.py") if not p.stem.startswith("_"))
    assert out.splitlines() == [str(files), "True MAE", "[]"]


# ---- one definition of each schedule ---------------------------------------------------------------
def test_one_warmup_cosine_for_pretraining_finetuning_and_the_probe():
    import mimkit.eval.finetune
    import mimkit.eval.linear
    import mimkit.schedules
    import mimkit.train.module

    defs: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.endswith(("_cosine", "_schedule")):
                defs.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert defs["warmup_cosine"] == ["mimkit/schedules.py"]
    assert {name: where for name, where in defs.items() if len(where) > 1} == {}  # each schedule defined once
    one = mimkit.schedules.warmup_cosine
    assert mimkit.train.module.warmup_cosine is one
    assert mimkit.eval.linear.warmup_cosine is one and mimkit.eval.finetune.warmup_cosine is one


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

"""How close each tiny recipe trains to this CPU's limit, before and after the speed levers, beside
`transformers`, in one run (run it alone: 2 cores shared with anything else give noise, not figures).

    python benchmarks/cpu_roofline.py                                  # every tiny recipe, ~35 min
    python benchmarks/cpu_roofline.py --recipes mae_vit_tiny_patch4_28 --repeats 1

For each recipe it measures, each row in a fresh process, the code before the change (a
``git worktree`` of ``--baseline``) and the code of this tree alternating, so both see the same
machine:

* the sgemm ceiling at 2048^3 and at the recipe's own matmul shapes (recorded from one training step:
  forward and backward), and the ceiling of the recipe's matmul mix (FLOP-weighted);
* FLOPs per image of one training step (``torch.utils.flop_counter``, forward + backward);
* images/s and achieved GFLOP/s of (a) the model step alone (forward, backward, AdamW; no data, no
  Lightning), (b) the real ``mimkit pretrain`` loop (Lightning, data and augmentation, masking,
  logging), (c) feature extraction (``extract_features`` over the 10k test images), (d) fine-tuning
  (``mimkit.eval.finetune``'s loop), and (a) + (b) for the `transformers` class of the method where
  there is one (built from the same model with ``mimkit.interop.hf.to_hf``: same config, same
  weights), run in the same engine with the same settings;
* a breakdown of one training step of the real loop by op family (torch.profiler self time:
  matmul, attention, element-wise and norms, optimizer, data and augmentation, masking, everything
  else = the rest of the wall time).

This tree's rows run as ``make demo``'s long runs do (``trainer.compile=auto`` compiles a run of
>= 600 steps, so ``trainer.compile=true`` here); compile time is excluded by ``--warmup`` and
reported as ``first_steps_s``. Results go to ``--out`` (JSON) and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "0afbaf6"  # the last commit before the speed work (issue 20)
RECIPES = ["mae_vit_tiny_patch4_28", "simmim_vit_tiny_patch4_28", "simmim_swin_tiny_window4_32",
           "maskfeat_vit_tiny_patch4_28", "beit_vit_tiny_patch4_28", "data2vec2_vit_tiny_patch4_28",
           "ijepa_vit_tiny_patch4_28", "ibot_vit_tiny_patch4_28"]
PEER_METHODS = {"mae", "simmim", "simmim_swin", "beit"}  # methods with a transformers pretraining class
# BEiT's config reads a trained tokenizer from runs/; speed does not depend on its weights: a fresh one
RECIPE_OVERRIDES = {"beit_vit_tiny_patch4_28": ["model.tokenizer_path=null", "model.tokenizer_config={recipe: dvae_tiny_28}"]}
NEW_LOOP = ["trainer.compile=true"]  # as a >= 600-step run (make demo) gets with trainer.compile=auto
# transformers as its own examples train it (run_mae.py): eager, torchvision transforms image by image,
# torch's default (foreach) AdamW; run in mimkit's engine so that only these choices differ
AS_SHIPPED = ["trainer.compile=false", "optim.fused=false", "data.batch_augment=false"]


# ---------------------------------------------------------------------------------------------
# child side: one measurement in a fresh process, importing mimkit from spec["code"]
# ---------------------------------------------------------------------------------------------
def _recipe_cfg(spec):
    from mimkit.train import load_config

    cfg_file = Path(spec["code"]) / "configs" / f"{spec['recipe']}.yaml"
    over = [f"model.name={spec['recipe']}", f"run.dir={spec['tmp']}/run", "run.recon_images=0",
            "trainer.enable_progress_bar=false", f"trainer.max_steps={spec['warmup'] + spec['steps']}",
            "trainer.max_epochs=-1", "run.checkpoint_every_n_epochs=1000", "trainer.log_every_n_steps=100000",
            *RECIPE_OVERRIDES.get(spec["recipe"], []), *spec.get("overrides", [])]
    return load_config(cfg_file if cfg_file.exists() else None, over)


def _build(spec):
    from mimkit.registry import create
    from mimkit.train.config import model_kwargs

    recipe, kw = model_kwargs(_recipe_cfg(spec))
    return create(recipe, **kw)


def step_inputs(model, batch, generator=None) -> dict:
    """Random inputs of one training step: ``images``, and the ``views`` of a multi-view method (iBOT's 2
    global + local crops, as the data layer makes them); the baseline tree's models take images only."""
    import torch

    if hasattr(model, "example_inputs"):
        return model.example_inputs(batch, generator)
    size = model.img_size if isinstance(model.img_size, int) else model.img_size[0]
    return {"images": torch.randn(batch, model.in_chans, size, size, generator=generator)}


class Peer:
    """The transformers pretraining model of a mimkit model (same config and weights), taking the
    batch the way mimkit's engine gives it and drawing masks as mimkit's model would."""

    @staticmethod
    def wrap(model):
        import torch

        from mimkit.base import MIMOutput
        from mimkit.interop.hf import to_hf

        hf = to_hf(model)
        method = model.method

        class Adapter(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.hf, self.mim = hf, model
                self.in_chans, self.patch_size = model.in_chans, model.patch_size
                self.img_size, self.mimkit_config = model.img_size, model.mimkit_config  # the run saves it

            def forward(self, images):
                if method == "mae":
                    out = self.hf(pixel_values=images)
                    return MIMOutput(out.loss, out.logits, out.mask)
                m = self.mim.masks(images, None, None).mask.bool()
                if method in ("simmim", "simmim_swin"):
                    out = self.hf(pixel_values=images, bool_masked_pos=m)
                    return MIMOutput(out.loss, out.reconstruction, m.float())
                with torch.no_grad():  # BEiT: the same frozen tokenizer gives the labels
                    ids = self.mim.tokenize(images)
                out = self.hf(pixel_values=images, bool_masked_pos=m, labels=ids[m])
                return MIMOutput(out.loss, out.logits, m.float())

        return Adapter()


def child_loop(spec):
    """The real `mimkit pretrain` loop: images/s after the warm-up steps."""
    import mimkit.train.module as module_mod
    from mimkit.train import run_pretrain
    from mimkit.train.callbacks import Throughput

    if spec["impl"] == "transformers":
        built = module_mod.build_from_config

        def peer_builder(cfg):
            return Peer.wrap(built(cfg))

        module_mod.build_from_config = peer_builder
    tp = Throughput(every=10**9, warmup=spec["warmup"])
    t0 = time.perf_counter()

    import lightning as L

    class FirstSteps(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == spec["warmup"]:
                self.at = time.perf_counter()

    first = FirstSteps()
    run_pretrain(_recipe_cfg(spec), callbacks=[tp, first])
    return {"images_per_s": tp.images_per_s, "first_steps_s": round(getattr(first, "at", t0) - t0, 1)}


def child_step(spec):
    """Forward + backward + AdamW of the model alone on a fixed batch (no data, no Lightning)."""
    import torch

    model = _build(spec)
    model.train()
    new = spec["code"] == str(ROOT)
    from mimkit.train.allocator import tune_cpu_allocator

    tune_cpu_allocator()
    fwd = Peer.wrap(model) if spec["impl"] == "transformers" else model
    params = [p for p in fwd.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=new)
    parts = getattr(model, "compile_training", True)
    if new and parts:  # as mimkit pretrain: the whole step, or the parts the model names (iBOT's encoders)
        from mimkit.train.speed import compile_for_training, compile_methods

        if isinstance(parts, (tuple, list)):
            compile_methods(model, parts, "cpu")
        else:
            fwd = compile_for_training(fwd, "cpu")
    inputs = step_inputs(model, spec["batch"], torch.Generator().manual_seed(0))
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        t = time.perf_counter()
        fwd(**inputs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return {"images_per_s": spec["batch"] / statistics.median(times[spec["warmup"]:])}


def child_features(spec):
    """Feature extraction (mean-pooled) over the 10k Fashion-MNIST test images."""
    from mimkit.eval.data import eval_dataset
    from mimkit.eval.features import extract_features

    model = _build(spec).eval()
    ds, _ = eval_dataset("fashion_mnist", "test", model)
    extract_features(model, ds, "mean", 512, "cpu", 0, False)  # warm-up pass over the first batches
    t = time.perf_counter()
    feats, _ = extract_features(model, ds, "mean", 512, "cpu", 0, False)
    return {"images_per_s": len(feats) / (time.perf_counter() - t)}


def child_finetune(spec):
    """Fine-tuning steps (augmented Fashion-MNIST, batch 128, layer decay, AdamW) after a warm-up."""
    import lightning as L

    from mimkit.eval.data import eval_dataset
    from mimkit.eval.finetune import finetune

    model = _build(spec)
    batch, n_steps = 128, spec["warmup"] + spec["steps"]
    train, _ = eval_dataset("fashion_mnist", "train", model, train_aug=True, limit=batch * n_steps)
    test, _ = eval_dataset("fashion_mnist", "test", model, limit=256)

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == spec["warmup"]:
                self.t0 = time.perf_counter()
            elif trainer.global_step == n_steps:
                self.dt = time.perf_counter() - self.t0

    timer = Timer()
    new = {"compile": True} if spec["code"] == str(ROOT) else {}  # as a fine-tune of >= 600 steps runs
    finetune(model, train, test, 10, epochs=1, batch_size=batch, progress=False,
             trainer_kwargs={"callbacks": [timer]}, **new)
    return {"images_per_s": batch * spec["steps"] / timer.dt}


FAMILIES = ("matmul", "attention", "element-wise and norms", "optimizer", "data and augmentation", "masking",
            "everything else")


def family(name: str, ancestors: list[str]) -> str:
    n = name.lower()
    if any(a.startswith("mimkit/augment") for a in ancestors) or any(k in n for k in ("grid_sampler", "upsample", "affine_grid")):
        return "data and augmentation"
    if any(a.startswith("mimkit/masking") for a in ancestors) or any(k in n for k in ("sort", "randperm", "uniform_", "random_")):
        return "masking"
    if any(k in n for k in ("adam", "_foreach_", "optimizer")):
        return "optimizer"
    if any(k in n for k in ("attention", "softmax", "bmm", "baddbmm")):
        return "attention"
    if any(k in n for k in ("aten::mm", "aten::addmm", "aten::linear", "convolution", "aten::matmul", "mkldnn", "mkl_linear")):
        return "matmul"
    if n.startswith("aten::") or "cpp_fused" in n or "compiled" in n or "graph_" in n:
        return "element-wise and norms"
    return "everything else"


def child_profile(spec):
    """Self time of one real-loop step by op family (torch.profiler over ``--profile-steps`` steps)."""
    import lightning as L
    from torch.profiler import ProfilerActivity, profile

    from mimkit.train import run_pretrain

    k = spec["profile_steps"]

    class Prof(L.Callback):
        prof = None

        def on_train_batch_start(self, trainer, *a):  # before the batch's forward; data fetched already
            if trainer.global_step == spec["warmup"]:
                self.prof = profile(activities=[ProfilerActivity.CPU])
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, *a):
            if self.prof is not None and trainer.global_step == spec["warmup"] + k:
                self.wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                self.events, self.prof = self.prof.events(), None

    p = Prof()
    spec = dict(spec, steps=k + 1)
    run_pretrain(_recipe_cfg(spec), callbacks=[p])
    totals = dict.fromkeys(FAMILIES, 0.0)
    for e in p.events:
        anc, q = [], e.cpu_parent
        while q is not None:
            anc.append(q.name)
            q = q.cpu_parent
        totals[family(e.name, anc)] += e.self_cpu_time_total / 1e6
    # the profiler misses Python and framework time between ops, and the data fetch happens between
    # on_train_batch_end and the next on_train_batch_start: the wall clock's remainder
    accounted = sum(v for f, v in totals.items() if f != "everything else")
    totals["everything else"] = max(0.0, p.wall - accounted)
    wall = sum(totals.values())
    return {"share": {f: round(v / wall, 4) for f, v in totals.items()}, "step_s": p.wall / k}


def child_roof(spec):
    """FLOPs per image and the sgemm ceiling at the recipe's own matmul shapes."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    model = _build(spec)
    model.train()
    b = spec["batch"]
    inputs = step_inputs(model, b)
    shapes: dict[tuple, int] = {}
    mm = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in mm:
                a, w = (args[1], args[2]) if func is torch.ops.aten.addmm.default else (args[0], args[1])
                key = (a.shape[0], a.shape[1], w.shape[1])
                shapes[key] = shapes.get(key, 0) + 1
            return func(*args, **(kwargs or {}))

    with FlopCounterMode(display=False) as fc:
        model(**inputs).loss.backward()
    flops = fc.get_total_flops() / b
    model.zero_grad()
    with Shapes():
        model(**inputs).loss.backward()

    def sgemm(m, k, n, reps=None):
        a, w = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ w
        reps = reps or max(3, int(2e9 / (2 * m * k * n)))
        t = time.perf_counter()
        for _ in range(reps):
            a @ w
        return 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9

    per_shape = []
    for (m, k, n), count in sorted(shapes.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[0][2] * kv[1]):
        per_shape.append({"shape": [m, k, n], "calls": count, "gflops": round(sgemm(m, k, n), 1),
                          "flop": 2 * m * k * n * count})
    mm_flop = sum(s["flop"] for s in per_shape)
    mix = mm_flop / sum(s["flop"] / s["gflops"] for s in per_shape) if per_shape else None
    return {"flop_per_image": flops, "matmul_share_of_flop": mm_flop / (flops * b), "sgemm_2048": round(sgemm(2048, 2048, 2048, 6), 1),
            "sgemm_mix": round(mix, 1) if mix else None, "shapes": per_shape[:8]}


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    sys.path.insert(0, spec["code"])
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(spec.get("threads", 2))
    fn = {"loop": child_loop, "step": child_step, "features": child_features, "finetune": child_finetune,
          "profile": child_profile, "roof": child_roof}[spec["kind"]]
    with tempfile.TemporaryDirectory() as tmp:
        spec["tmp"] = tmp
        out = fn(spec)
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------------------------
def baseline_tree(ref: str) -> Path:
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"mimkit-baseline-{sha}"
    if not (path / "mimkit").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), sha], check=True,
                       capture_output=True)
    return path


def run_child(spec: dict) -> dict:
    """One row in a fresh process. With $MIMKIT_BENCH_LOCK (a file path) each row holds that lock
    (flock), so that other jobs which take it too run between rows, never beside one."""
    import contextlib
    import fcntl

    env = dict(os.environ, PYTHONWARNINGS="ignore", LIGHTNING_DISABLE_TIPS="1")
    lock = os.environ.get("MIMKIT_BENCH_LOCK")
    with open(lock, "a") if lock else contextlib.nullcontext() as fh:
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        return _run_child(spec, env)


def _run_child(spec: dict, env: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env,
                       cwd=spec["code"])
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode or line is None:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1][:300] if (r.stderr or r.stdout).strip() else f"rc {r.returncode}"}
    return json.loads(line[7:])


def method_of(recipe: str) -> str:
    from mimkit.registry import recipe_info

    return recipe_info(recipe)[0].method


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    p.add_argument("--eval-recipes", nargs="+", default=["mae_vit_tiny_patch4_28", "simmim_swin_tiny_window4_32"],
                   help="recipes whose encoder is also timed for feature extraction and fine-tuning")
    p.add_argument("--baseline", default=BASELINE, help="git ref of the code before the change")
    p.add_argument("--repeats", type=int, default=1, help="alternating repeats of every real-loop row (median)")
    p.add_argument("--headline-repeats", type=int, default=3,
                   help="repeats of the real-loop rows of MAE (the headline recipe)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=256, help="batch of the model-step rows and the roofline")
    p.add_argument("--shipped-peers", choices=("headline", "all"), default="headline",
                   help="which recipes also time transformers as its examples train it (eager, per-image "
                        "augmentation, foreach AdamW): the headline recipe (MAE) or all with a peer")
    p.add_argument("--only", nargs="+", metavar="KIND:ARM",
                   help="measure only these rows, e.g. loop:mimkit loop:transformers_as_shipped (kinds: roof, step, "
                        "loop, profile, features, finetune)")
    p.add_argument("--out", default="results/cpu_roofline.json")
    p.add_argument("--table", action="store_true", help="only print the tables of --out (measures nothing)")
    args = p.parse_args(argv)
    if args.table:
        print(tables(json.loads(Path(args.out).read_text())))
        return 0
    sys.path.insert(0, str(ROOT))
    old = str(baseline_tree(args.baseline))
    new = str(ROOT)
    base = {"steps": args.steps, "warmup": args.warmup, "batch": args.batch, "profile_steps": args.profile_steps}
    t_start = time.time()
    results = {"baseline": args.baseline, "recipes": {}}

    def measure(kind, recipe, arms, repeats=1):
        """arms: name -> (code, impl, overrides); alternate their order over the repeats."""
        if args.only:
            arms = {a: v for a, v in arms.items() if f"{kind}:{a}" in args.only}
        runs = {a: [] for a in arms}
        for rep in range(repeats):
            for a in (list(arms) if rep % 2 == 0 else list(arms)[::-1]):
                code, impl, over = arms[a]
                r = run_child(dict(base, kind=kind, recipe=recipe, code=code, impl=impl, overrides=over))
                runs[a].append(r)
                print(f"  {recipe} {kind} {a}: {r}", flush=True)
        out = {}
        for a, rs in runs.items():
            ok = [r["images_per_s"] for r in rs if r.get("images_per_s")]
            out[a] = {"images_per_s": round(statistics.median(ok), 1) if ok else None,
                      "runs": [round(x, 1) for x in ok], **{k: v for k, v in rs[-1].items() if k not in ("images_per_s",)}}
        return out

    for recipe in args.recipes:
        method = method_of(recipe)
        peer = method in PEER_METHODS
        rec = results["recipes"][recipe] = {"method": method}

        def wanted(kind):
            return not args.only or any(o.startswith(f"{kind}:") for o in args.only)

        roof = run_child(dict(base, kind="roof", recipe=recipe, code=new, impl="mimkit")) if wanted("roof") else {}
        rec["roof"] = roof
        print(f"{recipe}: {roof.get('flop_per_image', 0) / 1e6:.1f} MFLOP/image, sgemm mix {roof.get('sgemm_mix')} GFLOP/s",
              flush=True)
        step_arms = {"before": (old, "mimkit", []), "mimkit": (new, "mimkit", [])}
        loop_arms = {"before": (old, "mimkit", []),
                     "mimkit": (new, "mimkit", NEW_LOOP)}
        if peer:
            step_arms["transformers"] = (new, "transformers", [])
            loop_arms["transformers"] = (new, "transformers", NEW_LOOP)
            if args.shipped_peers == "all" or recipe == RECIPES[0]:
                loop_arms["transformers_as_shipped"] = (new, "transformers", AS_SHIPPED)
        rec["step"] = measure("step", recipe, step_arms)
        reps = max(args.repeats, args.headline_repeats) if recipe == RECIPES[0] else args.repeats
        rec["loop"] = measure("loop", recipe, loop_arms, reps)
        rec["profile"] = {arm: run_child(dict(base, kind="profile", recipe=recipe, code=code, impl="mimkit", overrides=o))
                          for arm, code, o in (("before", old, []), ("mimkit", new, NEW_LOOP))
                          if not args.only or f"profile:{arm}" in args.only}
        if recipe in args.eval_recipes and (wanted("features") or wanted("finetune")):
            arms = {"before": (old, "mimkit", []), "mimkit": (new, "mimkit", [])}
            rec["features"] = measure("features", recipe, arms)
            rec["finetune"] = measure("finetune", recipe, arms)
        results["wall_s"] = round(time.time() - t_start)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(tables(results))
    print(f"\nwall time {results['wall_s']} s; JSON in {args.out}")
    return 0


def _ips(d, arm):
    v = (d or {}).get(arm, {}).get("images_per_s")
    return v


def tables(results) -> str:
    lines = ["| recipe | MFLOP/img | sgemm 2048 / recipe mix GFLOP/s | limit img/s | step before / now / transformers img/s | "
             "loop before / now / transformers img/s | now vs before | now vs transformers | loop GFLOP/s | "
             "loop share of limit before / now |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for recipe, r in results["recipes"].items():
        roof = r.get("roof", {})
        fpi = roof.get("flop_per_image") or float("nan")
        mix = roof.get("sgemm_mix") or float("nan")

        def fmt(d):
            vals = [_ips(d, a) for a in ("before", "mimkit", "transformers")]
            return " / ".join("-" if v is None else f"{v:.0f}" for v in vals)

        lb, ln, lt, ls = (_ips(r.get("loop"), a) for a in ("before", "mimkit", "transformers", "transformers_as_shipped"))
        ratio = f"{ln / lb:.2f}x" if lb and ln else "-"
        vs_t = f"{ln / lt:.2f}x" if lt and ln else "-"
        if ls and ln:
            vs_t += f" ({ln / ls:.2f}x vs as shipped, {ls:.0f} img/s)"
        gf = f"{ln * fpi / 1e9:.0f}" if ln else "-"
        share = " / ".join(f"{100 * v * fpi / 1e9 / mix:.0f}%" if v else "-" for v in (lb, ln))  # of the sgemm mix
        lines.append(f"| {recipe} | {fpi / 1e6:.1f} | {roof.get('sgemm_2048', '-')} / {mix} | {mix * 1e9 / fpi:.0f} | "
                     f"{fmt(r.get('step'))} | {fmt(r.get('loop'))} | {ratio} | {vs_t} | {gf} | {share} |")
    lines += ["", "| recipe | features before / now img/s | speed-up | fine-tune before / now img/s | speed-up |",
              "| --- | --- | --- | --- | --- |"]
    for recipe, r in results["recipes"].items():
        if "features" not in r:
            continue
        fb, fn = _ips(r["features"], "before"), _ips(r["features"], "mimkit")
        tb, tn = _ips(r["finetune"], "before"), _ips(r["finetune"], "mimkit")
        lines.append(f"| {recipe} | {fb or 0:.0f} / {fn or 0:.0f} | {(fn or 0) / (fb or 1):.2f}x | {tb or 0:.0f} / {tn or 0:.0f} | "
                     f"{(tn or 0) / (tb or 1):.2f}x |")
    lines += ["", "| recipe | code | " + " | ".join(FAMILIES) + " | step s |", "| --- | --- |" + " --- |" * (len(FAMILIES) + 1)]
    for recipe, r in results["recipes"].items():
        for arm, prof in (r.get("profile") or {}).items():
            if "share" not in prof:
                continue
            lines.append(f"| {recipe} | {arm} | " + " | ".join(f"{100 * prof['share'][f]:.0f}%" for f in FAMILIES)
                         + f" | {prof['step_s']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
    else:
        sys.exit(main())

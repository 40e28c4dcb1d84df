"""``mimkit eval knn|linear --checkpoint CKPT``: judge a pretrained encoder with frozen features.

* ``knn``: 20-NN, cosine similarity on L2-normalised features, votes weighted by exp(sim / 0.07).
* ``linear``: BatchNorm1d(affine=False) + Linear on cached features (the MAE protocol, CPU path).

Features are the cls token or the mean of the patch tokens (``--pool cls|mean|both``). Results go to
a printed table and, with ``--out``, a JSON file.
"""
from __future__ import annotations

import time

from mimkit.commands import add_trust_flag, write_results


def _common(p) -> None:
    from mimkit.eval.data import CHECKPOINT_HELP, DATA_HELP, LABELS_PER_CLASS_HELP

    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--pool", choices=("cls", "mean", "both"), default=None,
                   help="feature: cls token, mean of patch tokens, or both (default: cls when the encoder has one, "
                        "else mean)")
    p.add_argument("--data", default="fashion_mnist", help=DATA_HELP)
    p.add_argument("--data-root", help="folder holding the Fashion-MNIST idx files (default: auto-detected)")
    p.add_argument("--out", help="write the results to this JSON file")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="use only the first N test images")
    p.add_argument("--labels-per-class", type=int, metavar="N", help=LABELS_PER_CLASS_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the labelled subset (and the probe's init)")
    p.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch size (default 512)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--mean", type=float, nargs="+", help="input normalisation mean (default: the dataset's)")
    p.add_argument("--std", type=float, nargs="+", help="input normalisation std")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_trust_flag(p)


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an encoder: k-NN or linear probe on frozen features",
                       description="Evaluate a pretrained encoder with frozen features.")
    esub = p.add_subparsers(dest="eval_command", metavar="PROTOCOL")
    k = esub.add_parser("knn", help="weighted k-NN (k=20, cosine, exp(sim/0.07) votes)")
    _common(k)
    k.add_argument("--k", type=int, default=20, help="neighbours (default 20)")
    k.add_argument("--temperature", type=float, default=0.07, help="vote temperature (default 0.07)")
    k.set_defaults(func=run, protocol="knn")
    lin = esub.add_parser("linear", help="linear probe: BatchNorm(affine=False) + Linear on cached features")
    _common(lin)
    lin.add_argument("--epochs", type=int, default=50, help="epochs over the cached features (default 50)")
    lin.add_argument("--probe-batch-size", type=int,
                     help="head batch size (default min(1024, max(32, N // 50)) for N training images)")
    lin.add_argument("--optimizer", choices=("sgd", "lars", "adamw"), default="sgd",
                     help="sgd (default, momentum 0.9), lars (MAE's), adamw")
    lin.add_argument("--blr", type=float, help="base lr; lr = blr * batch / 256 (default sgd 0.4, lars 1.6, adamw 1e-3)")
    lin.add_argument("--lr", type=float, help="absolute lr (overrides --blr)")
    lin.add_argument("--weight-decay", type=float, default=0.0)
    lin.set_defaults(func=run, protocol="linear")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args) -> int:
    import torch

    from mimkit.eval.data import check_same_classes, eval_dataset, labelled_subset, load_model_spec, print_table
    from mimkit.eval.features import extract_features, has_cls_token

    t0 = time.time()
    model = load_model_spec(args.checkpoint)
    pools = {"both": ("cls", "mean"), None: ("cls",) if has_cls_token(model) else ("mean",)}.get(
        args.pool, (args.pool,))
    kw = dict(mean=args.mean, std=args.std, root=args.data_root)
    train, tr_classes = eval_dataset(args.data, "train", model, limit=args.limit, **kw)
    train = labelled_subset(train, args.labels_per_class, args.seed)
    test, te_classes = eval_dataset(args.data, "test", model, limit=args.test_limit, **kw)
    check_same_classes(tr_classes, te_classes)
    progress = not args.no_progress
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ftr, ytr = extract_features(model, train, pools, args.batch_size, device, args.num_workers, progress, "train features")
    fte, yte = extract_features(model, test, pools, args.batch_size, device, args.num_workers, progress, "test features")
    t_feat = time.time() - t0
    results = {}
    for how in pools:
        if args.protocol == "knn":
            from mimkit.eval.knn import knn_accuracy

            acc = knn_accuracy(ftr[how], ytr, fte[how], yte, k=args.k, temperature=args.temperature,
                               num_classes=len(tr_classes))
            results[how] = {"acc": acc, "k": args.k, "temperature": args.temperature}
        else:
            from mimkit.eval.linear import fit_linear_probe

            _, info = fit_linear_probe(ftr[how], ytr, fte[how], yte, num_classes=len(tr_classes), epochs=args.epochs,
                                       batch_size=args.probe_batch_size, optimizer=args.optimizer, blr=args.blr,
                                       lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, progress=progress)
            results[how] = info
    summary = {
        "protocol": args.protocol, "checkpoint": args.checkpoint, "data": args.data,
        "train_images": len(train), "test_images": len(test), "feature_dim": int(ftr[pools[0]].shape[1]),
        "labels_per_class": args.labels_per_class, "seed": args.seed,
        "results": results, "feature_seconds": round(t_feat, 1), "total_seconds": round(time.time() - t0, 1),
    }
    name = {"knn": f"{args.k if args.protocol == 'knn' else ''}-NN", "linear": "linear probe"}[args.protocol]
    print()
    print_table([(name, how, f"{r['acc']:.4f}") for how, r in results.items()], ("protocol", "pool", "test accuracy"))
    write_results(args.out, summary)
    return 0

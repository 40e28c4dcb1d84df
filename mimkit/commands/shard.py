"""``mimkit shard --images DIR --out SHARDS_DIR [--shard-size 1GB | --per-shard N] [--resize S]``:
an image folder as WebDataset tar shards plus an index (``mimkit.data.shards``); ``--reindex`` writes the
index for shards made elsewhere."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("shard", help="write an image folder as WebDataset tar shards (for data.name=webdataset)",
                       description="Write the images of an image folder (class sub-folders become the `cls` field) "
                                   "as WebDataset tar shards OUT/<prefix>-000000.tar, ... and an index "
                                   "OUT/<prefix>.index.json (shard names, sample counts, offsets). Images are "
                                   "shuffled first; unreadable ones are skipped and counted. Train on them with "
                                   "data.name=webdataset data.urls=OUT.")
    p.add_argument("--images", help="image folder (root/<class>/<image>, or a flat folder of images)")
    p.add_argument("--out", help="output folder for the shards and the index")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-size", help="largest shard size, e.g. 1GB, 500MB, 256MiB (default 1GB)")
    size.add_argument("--per-shard", type=int, help="images per shard instead of a size")
    p.add_argument("--resize", type=int, help="shrink images so their shorter side is at most S pixels "
                                              "(re-encoded: JPEG quality 95, PNG for lossless sources)")
    p.add_argument("--prefix", default="train", help="shard file prefix (default train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle before writing (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the folder's order (class by class)")
    p.add_argument("--workers", type=int, default=0, help="processes that check/resize images (default 0: this one)")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="unreadable images: skip with a counted warning (default) or stop")
    p.add_argument("--overwrite", action="store_true", help="replace existing <prefix>-*.tar shards in --out")
    p.add_argument("--reindex", metavar="SHARDS",
                   help="instead: scan existing shards (a pattern, list or folder) and write their index")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from mimkit.data.shards import reindex, write_shards

    if args.reindex:
        target = reindex(args.reindex, name=args.prefix)
        print(f"mimkit shard: wrote the index {target}")
        return 0
    if not args.images or not args.out:
        raise ValueError("give --images DIR and --out SHARDS_DIR (or --reindex SHARDS)")
    t0 = time.time()
    index = write_shards(args.images, args.out, prefix=args.prefix, shard_size=args.shard_size,
                         per_shard=args.per_shard, resize=args.resize, seed=args.seed, shuffle=not args.no_shuffle,
                         workers=args.workers, on_error=args.on_error, overwrite=args.overwrite)
    n = len(index["shardlist"])
    size = sum(e["filesize"] for e in index["shardlist"])
    print(f"mimkit shard: wrote {index['total']} images ({index['skipped']} unreadable skipped) in {n} shard(s), "
          f"{size / 1e6:.1f} MB, to {args.out} in {time.time() - t0:.0f} s; index {args.out}/{args.prefix}.index.json. "
          f"Train with data.name=webdataset data.urls={args.out}")
    return 0

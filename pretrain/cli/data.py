"""`pretrain data ...`: build sharded datasets and inspect them."""

from __future__ import annotations

import argparse
import json
import sys

FORMAT_HELP = "shard format: wds (WebDataset tar) or mds (MosaicML streaming)"
RAW = argparse.RawDescriptionHelpFormatter  # the examples' lines kept as written

EXAMPLES = {
    "digits": """\
examples:
  pretrain data build digits --format wds --out data/digits-wds --shard-samples 200
  pretrain data build digits --format mds --out data/digits-mds --val-fraction 0.1
""",
    "images": """\
examples:
  pretrain data build images --src /data/imagenet/train --format wds --out data/in1k \\
      --val-fraction 0.01 --workers 16   # JPEG bytes kept as they are
  pretrain data build images --src data/raw/photos/list.txt --size 64 --format mds \\
      --out data/photos64   # a list file of 'IMAGE_PATH LABEL' lines; resized to 64x64
""",
    "latents": """\
examples:
  pretrain data build latents --src data/in1k --vae /models/sd-vae-ft-ema --format wds \\
      --out data/in1k-latents --size 256 --workers 8 --device cuda --batch-size 64
  pretrain data build latents --src data/in1k --format wds --out data/in1k-latents \\
      --vae /models/sd-vae-ft-ema/diffusion_pytorch_model.safetensors \\
      --vae-config /models/sd-vae-ft-ema --dtype float16   # a weights file and its config
""",
    "numpy": """\
examples:
  pretrain data build numpy --images data/raw/x_train.npy --labels data/raw/y_train.npy \\
      --format wds --out data/np
""",
    "text": """\
examples:
  pretrain data build text --src docs.jsonl --seq-len 1024 --format mds --out data/text-bytes
  pretrain data build text --src corpus.jsonl --tokenizer data/tok --workers 8 \\
      --seq-len 1024 --format mds --out data/text   # BPE from `pretrain data tokenizer train`
  pretrain data build text --src data/raw/part-0000.parquet data/raw/part-0001.parquet \\
      --field content --tokenizer data/tok --seq-len 2048 --format wds --out data/code
""",
    "synthetic-images": """\
examples:
  pretrain data build synthetic-images --num 50000 --size 224 --format wds \\
      --out data/synth224 --shard-samples 2000   # input-pipeline benchmarks
""",
    "synthetic-text": """\
examples:
  pretrain data build synthetic-text --num-docs 20000 --seq-len 512 --format mds \\
      --out data/synth-text
""",
    "tokenizer train": """\
examples:
  pretrain data tokenizer train --src corpus.jsonl --vocab-size 50257 --out data/tok
  pretrain data tokenizer train --src data/raw/part-0000.parquet data/raw/part-0001.parquet \\
      --field content --vocab-size 32768 --out data/tok32k
""",
    "inspect": """\
examples:
  pretrain data inspect data/digits-wds/train
  pretrain data inspect data/in1k/train --verify --samples 0   # check every shard's hash
  pretrain data inspect s3://bucket/in1k/train --samples 5 \\
      --option client_kwargs.endpoint_url=http://127.0.0.1:9000   # an S3-compatible store
""",
    "index": """\
examples:
  pretrain data index data/laion-tars   # tar shards written by another tool (e.g. img2dataset)
""",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("wds", "mds"), required=True, help=FORMAT_HELP)
    p.add_argument("--out", required=True, help="output directory; train/ and val/ are made in it")
    p.add_argument("--shard-samples", type=int, default=1000,
                   help="samples per shard (default 1000)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of samples (documents for text) held out in val/ (default 0.2)")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data", help="build and inspect sharded datasets",
        description="Write datasets as WebDataset or MDS shards with a manifest (samples, bytes, "
        "sha256 per shard), and inspect or index existing shard directories.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    build = sub.add_parser("build", help="write a dataset as shards",
                           description="Write a dataset into OUT/train and OUT/val shard "
                           "directories. Point data.train_url / data.val_url at them.")
    kinds = build.add_subparsers(dest="source", metavar="SOURCE")

    p = kinds.add_parser("digits", help="scikit-learn's bundled 8x8 digits (no download)",
                         epilog=EXAMPLES["digits"], formatter_class=RAW)
    _common(p)
    p = kinds.add_parser("images", help="an image folder with one subfolder per class",
                         description="JPEGs are stored as their own bytes (no re-encode) unless"
                         " --size resizes; one shard per task\nover --workers processes; a"
                         " rerun after a crash keeps the shards already finished.",
                         epilog=EXAMPLES["images"], formatter_class=RAW)
    _common(p)
    p.add_argument("--src", required=True, help="root folder SRC/<class>/<image files>, or a"
                   " list file of 'IMAGE_PATH LABEL' lines (paths relative to it)")
    p.add_argument("--size", type=int, default=0, help="resize to SIZE x SIZE (default: keep)")
    p.add_argument("--mode", default="RGB", help="PIL mode to convert to (default RGB)")
    p.add_argument("--workers", type=int, default=1, help="shard-writing processes (default 1)")
    p = kinds.add_parser(
        "latents", help="an image set (from `build images`) encoded by a VAE (latent diffusion)",
        description="Encode SRC/train and SRC/val through diffusers' AutoencoderKL into the"
        " posterior's mean and logvar\nper image (labels kept); training draws from them. Needs"
        " diffusers (pip install 'pretrain[vae]').\nOutput shard i holds input shard i: the same"
        " bytes for any --workers; a rerun after a crash keeps\nthe shards already finished.",
        epilog=EXAMPLES["latents"], formatter_class=RAW)
    p.add_argument("--src", required=True, help="OUT of `data build images` (train/, val/)")
    p.add_argument("--vae", required=True, help="AutoencoderKL save_pretrained folder, or a"
                   " .safetensors file in its layout (with --vae-config); nothing is downloaded")
    p.add_argument("--vae-config", default="", help="config.json (or its folder) for a"
                   " .safetensors --vae")
    p.add_argument("--format", choices=("wds", "mds"), required=True, help=FORMAT_HELP)
    p.add_argument("--out", required=True, help="output directory; train/ and val/ are made in it")
    p.add_argument("--size", type=int, default=256, help="image side encoded (DiT's center"
                   " crop; default 256: 32x32 latents with SD's VAE)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encode (default 32)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="stored dtype of mean/logvar (default float32)")
    p.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1;"
                   " the same count gives the same bytes)")
    p.add_argument("--device", default="cpu", help="torch device of the VAE (cpu, cuda...)")
    p = kinds.add_parser("numpy", help="uint8 image array and label array (.npy, no pickle)",
                         epilog=EXAMPLES["numpy"], formatter_class=RAW)
    _common(p)
    p.add_argument("--images", required=True, help=".npy uint8 [N,H,W] or [N,H,W,C]")
    p.add_argument("--labels", required=True, help=".npy integer [N]")
    p = kinds.add_parser("text", help="documents tokenized (bytes, or --tokenizer) and packed",
                         epilog=EXAMPLES["text"], formatter_class=RAW)
    _common(p)
    p.add_argument("--src", required=True, nargs="+",
                   help="JSONL (one document per line), parquet (a text column, needs pyarrow)"
                   " or plain text files (one document each); byte-level: one JSONL file")
    p.add_argument("--field", default="text", help="JSON field holding the text (default text)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence")
    p.add_argument("--tokenizer", default="",
                   help="tokenizer.json (or its directory) from `data tokenizer train` or any HF"
                   " tokenizers model; default: byte-level (vocab 257)")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes (default 1)")
    p.add_argument("--eos-token", default="", help="end-of-document token of --tokenizer"
                   " (default: found by common names such as <|endoftext|>, </s>)")
    p = kinds.add_parser("synthetic-images", help="random RGB images (tests, benchmarks)",
                         epilog=EXAMPLES["synthetic-images"], formatter_class=RAW)
    _common(p)
    p.add_argument("--num", type=int, default=10000)
    p.add_argument("--size", type=int, default=32)
    p = kinds.add_parser("synthetic-text", help="random word documents, packed (tests, benchmarks)",
                         epilog=EXAMPLES["synthetic-text"], formatter_class=RAW)
    _common(p)
    p.add_argument("--num-docs", type=int, default=2000)
    p.add_argument("--seq-len", type=int, default=256)

    tokenizer = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tok_sub = tokenizer.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    train = tok_sub.add_parser(
        "train", help="learn a byte-level BPE from the corpus itself (nothing downloaded)",
        description="Write OUT/tokenizer.json (HF tokenizers format) with the special tokens"
        "\n<|endoftext|> (id 0, end of document) and <|pad|> (id 1).",
        epilog=EXAMPLES["tokenizer train"], formatter_class=RAW)
    train.add_argument("--src", required=True, nargs="+",
                       help="JSONL / parquet / plain text files, as for `data build text`")
    train.add_argument("--field", default="text", help="JSON field / column holding the text")
    train.add_argument("--vocab-size", type=int, required=True,
                       help="ids in the vocabulary, special tokens included (e.g. 32768)")
    train.add_argument("--out", required=True, help="directory for tokenizer.json")

    inspect = sub.add_parser("inspect", help="summarise a shard directory (local or fsspec URL)",
                             description="Print the manifest summary and the first samples.",
                             epilog=EXAMPLES["inspect"], formatter_class=RAW)
    inspect.add_argument("url", help="dataset directory or URL (e.g. s3://bucket/ds/train)")
    inspect.add_argument("--format", choices=("wds", "mds"), default=None,
                         help="default: mds if index.json exists, else wds")
    inspect.add_argument("--samples", type=int, default=3, help="samples to decode and show")
    inspect.add_argument("--verify", action="store_true",
                         help="check every hash the manifest/index declares for every shard (exit"
                         " 1 if one fails, 2 if no shard had a hash that could be checked)")
    inspect.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="fsspec storage option, like data.storage_options (repeatable), e.g."
                         " client_kwargs.endpoint_url=http://127.0.0.1:9000")
    inspect.add_argument("--cache-dir", default="", help="cache for remote shards (default"
                         " ~/.cache/pretrain/shards)")

    index = sub.add_parser("index", help="write manifest.json for foreign WebDataset tar shards",
                           description="Count the samples of each *.tar in DIR and record bytes "
                           "and sha256,\nso readers need not scan the shards.",
                           epilog=EXAMPLES["index"], formatter_class=RAW)
    index.add_argument("dir", help="local directory of tar shards")

    data.set_defaults(func=lambda args: data.print_help() or 2)
    build.set_defaults(func=lambda args: build.print_help() or 2)
    for name, parser in kinds.choices.items():
        parser.set_defaults(func=_build, source=name)
    tokenizer.set_defaults(func=lambda args: tokenizer.print_help() or 2)
    train.set_defaults(func=_train_tokenizer)
    inspect.set_defaults(func=_inspect)
    index.set_defaults(func=_index)


def _build(args: argparse.Namespace) -> int:
    from data_pipeline import sources
    from data_pipeline.writers import write_splits

    if args.source == "latents":  # no --val-fraction: the splits are the image set's
        return _build_latents(args)
    vf = args.val_fraction
    if args.source == "digits":
        samples, meta = sources.digits(vf)
    elif args.source == "images":
        return _build_images(args)
    elif args.source == "numpy":
        samples, meta = sources.numpy_arrays(args.images, args.labels, vf)
    elif args.source == "text" and args.tokenizer:
        return _build_tokenized(args)
    elif args.source == "text":
        if len(args.src) != 1:
            raise SystemExit("byte-level text takes one JSONL --src file (or pass --tokenizer)")
        samples, meta = sources.jsonl_text(args.src[0], args.seq_len, vf, args.field)
    elif args.source == "synthetic-images":
        samples, meta = sources.synthetic_images(args.num, args.size, val_fraction=vf)
    else:
        samples, meta = sources.synthetic_text(args.num_docs, args.seq_len, val_fraction=vf)
    manifests = write_splits(samples, args.out, args.format, args.shard_samples, meta)
    for split, m in manifests.items():
        print(f"{args.out}/{split}: {m.num_samples} samples in {len(m.shards)} {args.format}"
              " shards")
    return 0


def _build_images(args: argparse.Namespace) -> int:
    from data_pipeline.image_build import build_image_folder

    manifests = build_image_folder(
        args.src,
        args.out,
        args.format,
        args.shard_samples,
        args.val_fraction,
        args.size,
        args.mode,
        args.workers,
    )
    for split, m in manifests.items():
        print(
            f"{args.out}/{split}: {m.num_samples} images in {len(m.shards)} {args.format}"
            f" shards ({m.meta['num_classes']} classes)"
        )
    return 0


def _build_latents(args: argparse.Namespace) -> int:
    from data_pipeline.latent_build import VaeSource, build_latents

    try:
        manifests = build_latents(
            args.src, args.out, args.format, VaeSource(args.vae, args.vae_config), args.size,
            args.batch_size, args.workers, args.dtype, args.device, args.threads)
    except ImportError as e:  # the optional diffusers: one line naming the extra, exit 2
        raise SystemExit(str(e)) from e
    for split, m in manifests.items():
        shape = "x".join(str(x) for x in m.meta["latent_shape"])
        print(f"{args.out}/{split}: {m.num_samples} latents {shape} in {len(m.shards)}"
              f" {args.format} shards ({m.meta['num_classes']} classes)")
    return 0


def _build_tokenized(args: argparse.Namespace) -> int:
    from data_pipeline.text_build import build_tokenized_text
    from data_pipeline.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer, args.eos_token)
    manifests = build_tokenized_text(
        args.src,
        args.out,
        args.format,
        tok,
        args.seq_len,
        args.workers,
        args.shard_samples,
        args.val_fraction,
        args.field,
    )
    for split, m in manifests.items():
        print(
            f"{args.out}/{split}: {m.num_samples} sequences in {len(m.shards)} {args.format}"
            f" shards (vocab {tok.vocab_size}, {m.meta['dtype']})"
        )
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from data_pipeline.tokenizer import read_documents, save_tokenizer, train_bpe

    tok = train_bpe(read_documents(args.src, args.field), args.vocab_size)
    path = save_tokenizer(tok, args.out)
    print(f"{path}: byte-level BPE, {tok.get_vocab_size()} ids (<|endoftext|> = 0, <|pad|> = 1)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from data_pipeline.config import DataConfig
    from data_pipeline.decode import decode_field
    from data_pipeline.errors import DataError
    from data_pipeline.source import ShardedSource
    from data_pipeline.storage import ShardStore

    options = dict(opt.split("=", 1) for opt in args.option)
    fmt = args.format
    if fmt is None:
        probe = ShardStore(args.url, options)
        fmt = "mds" if probe.read_small("index.json") is not None else "wds"
    cfg = DataConfig(
        format=fmt,
        verify_checksums="always" if args.verify else "download",
        storage_options=options,
        cache_dir=args.cache_dir,
    )
    src = ShardedSource(args.url, fmt, cfg, shuffle=False)  # a refused manifest: exit 2
    m = src.manifest
    total = sum(s.bytes for s in m.shards if s.bytes >= 0)
    print(f"{args.url}: {fmt}, {m.num_samples} samples, {len(m.shards)} shards, {total} bytes")
    if m.meta:
        print("meta:", json.dumps(m.meta, sort_keys=True))
    if m.columns:
        print("columns:", json.dumps(m.columns, sort_keys=True))
    failed = 0
    if args.verify:
        checked: set[str] = set()
        unchecked = 0
        for i, shard in enumerate(m.shards):
            try:
                src.reader(i)
            except DataError as e:
                failed += 1
                print(f"BAD {e}", file=sys.stderr)
                continue
            algos = src.store.checked_hashes(shard)
            checked.update(algos)
            unchecked += not algos
        not_checkable = sorted({a for s in m.shards for a in s.declared_hashes()} - checked)
        print(
            f"verified {len(m.shards) - failed - unchecked}/{len(m.shards)} shards"
            f" ({', '.join(sorted(checked)) or 'no hash'} checked"
            + (f"; not checked: {', '.join(not_checkable)}" if not_checkable else "")
            + ")"
        )
        if unchecked and not failed:
            print(f"{unchecked} shard(s) declare no hash this process can compute", file=sys.stderr)
        if failed == 0 and not checked:
            return 2
    for sid in range(min(args.samples, m.num_samples)):
        shard, key, raw = src.read(sid)
        shown = {}
        for name, (enc, data) in raw.items():
            try:
                value = decode_field(enc, data)
                shown[name] = (
                    f"image {value.mode} {value.size}"
                    if hasattr(value, "mode")
                    else f"array {value.dtype} {value.shape}"
                    if hasattr(value, "shape")
                    else repr(value)[:60]
                )
            except Exception as e:
                shown[name] = f"<{type(e).__name__}: {e}>"
        print(f"  {shard} {key}: {shown}")
    return 1 if failed else 0


def _index(args: argparse.Namespace) -> int:
    import os

    from data_pipeline.manifest import MANIFEST_NAME
    from data_pipeline.safe_names import inside
    from data_pipeline.source import scan_wds_manifest
    from data_pipeline.storage import ShardStore, sha256_file

    store = ShardStore(args.dir)
    manifest = scan_wds_manifest(store)
    for shard in manifest.shards:
        shard.sha256 = sha256_file(inside(store.root, shard.name, f"{args.dir} shard"))
    with open(os.path.join(args.dir, MANIFEST_NAME), "w") as f:
        f.write(manifest.to_json())
    print(f"{args.dir}: {manifest.num_samples} samples in {len(manifest.shards)} shards")
    return 0

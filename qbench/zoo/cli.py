"""``qbench zoo ...``: train, ship, verify and evaluate the toy world's models.

    qbench zoo train vae|clip|unet|flux [--minutes M] [--steps N] [--seed S] [--batch B] [--lr LR] [--pairs F] [--train-text-encoder] [--threads T]
    qbench zoo status        # training progress (work dir) and the shipped weights
    qbench zoo ship          # newest exports -> qbench/zoo/weights (fp16) + MANIFEST.json
    qbench zoo verify        # sha256 of the shipped files vs MANIFEST.json
    qbench zoo eval [--model toy-lcm] [--n 148] [--prompt-set toy|toy-pair] [--model-path DIR]
    qbench zoo quant-sweep [--model toy-flux] [--n 592] [--bits W8A8,W4A8,W4A4,W2A8] [--json F] [--markdown F]

Training is resumable: re-running a ``train`` command continues from its checkpoint in
``~/.cache/qbench/zoo-train/<kind>`` (``$QBENCH_CACHE/zoo-train`` if that is set;
``QBENCH_ZOO_WORK`` overrides both) until ``--minutes`` of total training time or ``--steps``
are reached. Order: vae, clip, then unet and flux (which use
the trained VAE and CLIP text tower).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULTS = {  # the settings the shipped weights were trained with (see MANIFEST.json)
    "vae": dict(minutes=6.5, steps=1600, batch=32, lr=1e-3),
    "clip": dict(minutes=18.0, steps=3000, batch=64, lr=1e-3),
    "unet": dict(minutes=40.0, steps=100_000, batch=32, lr=6e-4),
    "flux": dict(minutes=40.0, steps=100_000, batch=32, lr=6e-4),
}


def _parser() -> argparse.ArgumentParser:
    from qbench.cli import _Parser  # one-line errors, as every other qbench command

    p = _Parser(prog="qbench zoo", description="the toy world: train / ship / verify / evaluate")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train (or resume) one toy model")
    t.add_argument("kind", choices=sorted(DEFAULTS))
    t.add_argument("--minutes", type=float)
    t.add_argument("--steps", type=int)
    t.add_argument("--batch", type=int)
    t.add_argument("--lr", type=float, help="learning rate (a resumed run may lower it; the log records each phase)")
    t.add_argument("--pairs", type=float, default=0.0, help="unet/flux: fraction of two-object scenes in each batch (default 0)")
    t.add_argument("--train-text-encoder", action="store_true",
                   help="unet: also train the pipeline's copy of the CLIP text tower (kept on when resuming)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    sub.add_parser("status", help="training progress and shipped weights")
    sub.add_parser("ship", help="copy the newest exports into qbench/zoo/weights and write MANIFEST.json")
    sub.add_parser("verify", help="check the shipped weights against MANIFEST.json")
    e = sub.add_parser("eval", help="measure toy-acc, CLIP score, fd-toyclip, CLIP-IQA on held-out prompts")
    e.add_argument("--model", default="toy-lcm")
    e.add_argument("--n", type=int, default=148)
    e.add_argument("--model-path")
    e.add_argument("--clipiqa-ranking", action="store_true")
    e.add_argument("--prompt-set", default="toy", choices=("toy", "toy-pair"), help="single-object (toy) or two-object (toy-pair) held-out scenes")
    q = sub.add_parser("quant-sweep", help="naive quantization at each bit width vs FP: fidelity, fd-toyclip, toy-acc, JAQ (paired)")
    q.add_argument("--model", default="toy-flux")
    q.add_argument("--n", type=int, default=592, help="held-out prompts toy:N (default 592: each test scene about 9 times)")
    q.add_argument("--bits", default="W8A8,W4A8,W4A4,W2A8", help="comma-separated bit specs")
    q.add_argument("--model-path")
    q.add_argument("--json", help="also write the full result as JSON here")
    q.add_argument("--markdown", help="also write the table as Markdown here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "train":
        d = DEFAULTS[args.kind]
        kw = dict(minutes=args.minutes or d["minutes"], steps=args.steps or d["steps"], seed=args.seed,
                  threads=args.threads, lr=args.lr or d["lr"])
        b = args.batch or d["batch"]
        if args.kind == "vae":
            from qbench.zoo.train_vae import train

            out = train(batch=b, **kw)
        elif args.kind == "clip":
            from qbench.zoo.train_clip import train

            out = train(batch=b, **kw)
        else:
            from qbench.zoo.train_denoiser import train

            out = train(args.kind, batch_size=b, pairs=args.pairs, train_text_encoder=args.train_text_encoder, **kw)
        print(f"exported to {out}; run `qbench zoo ship` to copy it into the package")
        return 0
    if args.cmd == "status":
        from qbench.zoo import common
        from qbench.zoo.ship import training_record

        for kind in ("vae", "clip", "unet", "flux"):
            r = training_record(kind)
            print(f"{kind:5s} " + (f"step {r['steps']}, {r['wall_time_s']} s, resumes {r['resumes']}" if r["trained"] else "not trained"))
            bad = r.get("skipped_log_lines")
            if bad:
                log = os.path.join(common.work_dir(kind, create=False), "log.jsonl")
                print(f"qbench zoo: warning: skipped {len(bad)} line(s) of {log} that are not JSON (a write cut "
                      f"short?): line {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}", file=sys.stderr)
        mpath = os.path.join(common.WEIGHTS_DIR, "MANIFEST.json")
        if os.path.exists(mpath):
            m = json.load(open(mpath))
            print(f"shipped: {len(m['files'])} files, {m['total_bytes'] / 1e6:.1f} MB, written {m['written']}")
        else:
            print("shipped: nothing (no MANIFEST.json)")
        return 0
    if args.cmd == "ship":
        from qbench.zoo.ship import ship

        m = ship()
        print(f"shipped {len(m['files'])} files, {m['total_bytes'] / 1e6:.1f} MB")
        return 0
    if args.cmd == "verify":
        from qbench.zoo.ship import verify

        bad = verify()
        print("all files match MANIFEST.json" if not bad else "MISMATCH: " + ", ".join(bad))
        return 1 if bad else 0
    if args.cmd == "eval":
        from qbench.zoo.evaluate import clipiqa_ranking, evaluate

        res = evaluate(args.model, n=args.n, model_path=args.model_path, prompt_set=args.prompt_set)
        if args.clipiqa_ranking:
            res["clipiqa_clean_beats_degraded"] = clipiqa_ranking(args.n)
        print(json.dumps(res, indent=1))
        return 0
    if args.cmd == "quant-sweep":
        from qbench.zoo.quant_sweep import sweep, to_markdown

        bits = tuple(b.strip() for b in args.bits.split(",") if b.strip())
        res = sweep(args.model, n=args.n, bits=bits, model_path=args.model_path)
        md = to_markdown(res)
        for path, text in ((args.json, json.dumps(res, indent=1)), (args.markdown, md)):
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text + ("\n" if not text.endswith("\n") else ""))
        print(md)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

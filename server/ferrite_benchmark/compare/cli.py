"""Flags of `ferrite-benchmark compare`, and the command's entry."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import tempfile
from pathlib import Path

from ferrite_benchmark.compare.plan import PEER_NAMES, CompareConfig


def _floats(text: str) -> tuple[float, ...]:
    values = tuple(float(part) for part in text.split(",") if part.strip())
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must be positive: {text}")
    return values


def _peers(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in PEER_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peers {unknown}; choose from {','.join(PEER_NAMES)}")
    return names


def add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    compare = subparsers.add_parser(
        "compare", help="ferrite against its peers on the same machine and model, side by side")
    compare.add_argument("--num-prompts", type=int, default=64, help="ShareGPT prompts (default 64)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--sharegpt-output-len", type=int, default=None,
                         help="ask every request for this many new tokens instead of its "
                              "reference answer's length (smoke runs)")
    compare.add_argument("--rate-fractions", type=_floats, default=(0.5, 1.0),
                         help="finite rates as fractions of ferrite's request throughput at inf")
    compare.add_argument("--request-rates", type=_floats, default=None,
                         help="explicit finite rates in req/s (instead of --rate-fractions)")
    compare.add_argument("--latency-max-new-tokens", type=int, default=200)
    compare.add_argument("--peers", type=_peers, default=PEER_NAMES,
                         help=f"comma-separated, in order (default {','.join(PEER_NAMES)}); ferrite first")
    compare.add_argument("--dtype", default="bfloat16", help="ferrite's and transformers' dtype")
    compare.add_argument("--ctranslate2-compute-type", default="float32")
    compare.add_argument("--static-batch-size", type=int, default=16,
                         help="batch size of the in-process peers' static batching")
    compare.add_argument("--llama-cpp-python", default=None, metavar="PYTHON",
                         help="interpreter with llama-cpp-python[server] (default: this one)")
    compare.add_argument("--ferrite-url", default=None, help="use this running ferrite")
    compare.add_argument("--ferrite-arg", action="append", default=[],
                         help="extra ferrite-launcher flag (repeat; use --ferrite-arg=--flag)")
    compare.add_argument("--output", type=Path, default=Path("bench/results-compare-cpu.json"),
                         help="JSON of everything measured; the plot goes beside it (.png)")
    compare.add_argument("--results-md", type=Path, default=Path("bench/RESULTS.md"),
                         help="Markdown file whose marked section is regenerated")
    compare.add_argument("--no-results-md", action="store_true", help="leave RESULTS.md alone")
    compare.add_argument("--resume", action="store_true",
                         help="keep the finished targets saved in --output by an interrupted run")
    compare.add_argument("--render-only", type=Path, default=None, metavar="JSON",
                         help="re-render the section from a saved compare JSON, run nothing")
    compare.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()),
                         help="where the servers' logs go")


def _render_only(args: argparse.Namespace) -> int:
    from ferrite_benchmark.compare.results_file import replace_marked_section
    from ferrite_benchmark.compare.results_table import render_section

    document = json.loads(args.render_only.read_text())
    plot_path = args.render_only.with_suffix(".png")
    section = render_section(document, plot_path if plot_path.exists() else None, args.results_md)
    replace_marked_section(args.results_md, section)
    return 0


def compare_main(args: argparse.Namespace) -> int:
    if args.render_only is not None:
        return _render_only(args)
    from ferrite_benchmark.compare.run import run_compare

    # SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))

    argv = sys.argv[sys.argv.index("compare"):] if "compare" in sys.argv else ["compare"]
    config = CompareConfig(
        num_prompts=args.num_prompts, seed=args.seed, sharegpt_output_len=args.sharegpt_output_len,
        rate_fractions=args.rate_fractions,
        request_rates=args.request_rates, latency_max_new_tokens=args.latency_max_new_tokens,
        peers=args.peers, dtype=args.dtype, ctranslate2_compute_type=args.ctranslate2_compute_type,
        static_batch_size=args.static_batch_size, ferrite_url=args.ferrite_url,
        llama_cpp_python=args.llama_cpp_python,
        ferrite_args=tuple(args.ferrite_arg), output=args.output,
        results_md=None if args.no_results_md else args.results_md,
        command="ferrite-benchmark " + shlex.join(argv), log_dir=args.log_dir, resume=args.resume,
    )
    return run_compare(config)

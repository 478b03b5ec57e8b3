"""GPU attention-kernel checks and rooflines: correctness at real sizes, then speed.

Sections (each guarded, so one failure does not lose the others):
  correctness  every kernel vs an fp32 PyTorch reference, bf16 and fp16, GQA 1/4/8, head_dim
               64/128, block sizes 8/16/32, ragged contexts, chunks after cached prefixes
  roofline     device copy bandwidth (bytes read + written) and bf16 matmul TFLOP/s (8192^3)
  kv_write     KV write bandwidth
  decode       paged decode attention: bytes of K/V read / time (CUDA graph replay, the way the
               shard runs decode), vs copy bandwidth (goal >= 80%)
  prefill      varlen prefill TFLOP/s (causal FLOPs) vs matmul rate (goal >= 50%); torch SDPA
               (flash) on the same dense shapes as a peer
  sweep        (not default) launch shapes of both kernels, see gpu_kernel_sweep.py
Prints a table; writes JSON to --json-out (default $OUT/gpu_kernels.json when $OUT is set).
Exit status 1 when a check failed or a section raised.

    python3 bench/gpu_kernels.py                 # on the GPU machine (~1-2 minutes)
    python3 bench/gpu_kernels.py --cpu-smoke     # tiny sizes through Triton's interpreter
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

if "--cpu-smoke" in sys.argv:
    # Before triton is first imported: Triton decides interpreter-or-compile when it defines
    # a kernel, its own standard-library helpers (defined at import) included.
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402 - after the interpreter switch above
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from gpu_kernel_cases import (  # noqa: E402
    CPU_SMOKE_SIZES,
    GPU_SIZES,
    BenchSizes,
    Kernels,
    Lens,
    Row,
    bench_ms,
    causal_flops,
    decode_graph_ms,
    decode_lens,
    kv_bytes_read,
    load_kernels,
    make_batch,
    ratio_note,
)
from gpu_kernel_sweep import section_sweep  # noqa: E402

REL_TOLERANCE = {"bfloat16": 2e-2, "float16": 4e-3, "float32": 1e-4}  # max |err| / max |ref|
SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
Section = Callable[[Kernels, BenchSizes, dict[str, Any], list[Row]], None]


def section_correctness(
    kernels: Kernels, sizes: BenchSizes, results: dict[str, Any], rows: list[Row]
) -> None:
    for dtype_name in sizes.dtypes:
        _check_kv_write(kernels, sizes, dtype_name, rows)
        _check_attention(kernels, sizes, dtype_name, rows)


def _check_kv_write(kernels: Kernels, sizes: BenchSizes, dtype_name: str, rows: list[Row]) -> None:
    dtype = getattr(torch, dtype_name)
    tokens, heads, dim = sizes.kv_write_tokens, sizes.num_kv_heads, sizes.head_dim
    inputs = make_batch(kernels, sizes, dtype, ((tokens,), (tokens,)))
    key = torch.randn(tokens, heads, dim, device=sizes.device, dtype=dtype)
    value = torch.randn_like(key)
    slots = inputs.metadata.slot_mapping.clone()
    slots[::7] = -1  # padding rows must be skipped
    key_cache = torch.full_like(inputs.key_cache, float("nan"))
    value_cache = torch.full_like(inputs.value_cache, float("nan"))
    kernels.write_kv(key, value, key_cache, value_cache, slots)
    flat_k, flat_v = key_cache.view(-1, heads, dim), value_cache.view(-1, heads, dim)
    kept = slots >= 0
    exact = torch.equal(flat_k[slots[kept]], key[kept]) and torch.equal(
        flat_v[slots[kept]], value[kept]
    )
    untouched = int(flat_k.isnan().all(-1).all(-1).sum())
    ok = exact and untouched == flat_k.shape[0] - int(kept.sum())
    rows.append(
        Row(
            "correctness",
            f"kv_write {SHORT_DTYPE[dtype_name]}",
            "exact",
            float(ok),
            "ok" if ok else "FAIL",
        )
    )


def _attention_variants(sizes: BenchSizes) -> list[BenchSizes]:
    """GQA 1/4/8 x head_dim 64/128 at the default block size, then block sizes 8 and 32."""
    variants = [
        replace(sizes, num_heads=sizes.num_kv_heads * group, head_dim=head_dim)
        for group in (1, 4, 8)
        for head_dim in (64, 128)
    ]
    return variants + [replace(sizes, block_size=block_size) for block_size in (8, 32)]


def _check_attention(kernels: Kernels, sizes: BenchSizes, dtype_name: str, rows: list[Row]) -> None:
    dtype = getattr(torch, dtype_name)
    ragged = ((1,) * len(sizes.check_seq_lens), sizes.check_seq_lens)
    one_part = kernels.decode_tiles(partition_size_tokens=64 * -(-max(sizes.check_seq_lens) // 64))
    runs: tuple[tuple[str, Lens, Callable[[Any, torch.Tensor], Any]], ...] = (
        ("decode split", ragged, lambda inputs, out: kernels.decode(inputs, out)),
        ("decode 1-part", ragged, lambda inputs, out: kernels.decode(inputs, out, one_part)),
        ("varlen", sizes.check_chunk, lambda inputs, out: kernels.varlen(inputs, out)),
    )
    for variant in _attention_variants(sizes):
        for name, lens, kernel in runs:
            group = variant.num_heads // variant.num_kv_heads
            shape = f"g={group} d={variant.head_dim} bs={variant.block_size}"
            config = f"{name} {SHORT_DTYPE[dtype_name]} {shape}"
            try:
                error = _attention_error(kernels, variant, dtype, lens, kernel)
            except Exception as exc:  # noqa: BLE001 - one broken variant must not hide the rest
                traceback.print_exc()
                rows.append(Row("correctness", config, "ERROR", math.nan, f"FAIL {exc!r}"[:120]))
                continue
            verdict = "ok" if error <= REL_TOLERANCE[dtype_name] else "FAIL"
            rows.append(Row("correctness", config, "max_rel_err", error, verdict))


def _attention_error(
    kernels: Kernels,
    sizes: BenchSizes,
    dtype: torch.dtype,
    lens: Lens,
    kernel: Callable[[Any, torch.Tensor], Any],
) -> float:
    """max |out - ref| / max |ref| of one run into a NaN-poisoned output (inf if unwritten)."""
    inputs = make_batch(kernels, sizes, dtype, lens)
    out = torch.full_like(inputs.query, float("nan"))
    kernel(inputs, out)
    expected = kernels.reference.forward(
        inputs.query.float(),
        inputs.key_cache.float(),
        inputs.value_cache.float(),
        inputs.metadata,
        inputs.scale,
    )
    if out.isnan().any():
        return math.inf
    return float((out.float() - expected).abs().max() / expected.abs().max())


def section_roofline(
    kernels: Kernels, sizes: BenchSizes, results: dict[str, Any], rows: list[Row]
) -> None:
    src = torch.empty(sizes.copy_bytes // 2, dtype=torch.bfloat16, device=sizes.device)
    dst = torch.empty_like(src)
    copy_ms = bench_ms(lambda: dst.copy_(src), sizes.device)
    results["copy_gbs"] = 2 * sizes.copy_bytes / copy_ms / 1e6
    rows.append(
        Row(
            "roofline",
            f"D2D copy {sizes.copy_bytes >> 20} MiB",
            "GB/s (read+write)",
            results["copy_gbs"],
        )
    )
    del src, dst
    n, dtype = sizes.matmul_n, sizes.timing_dtype
    a = torch.randn(n, n, dtype=dtype, device=sizes.device)
    b = torch.randn(n, n, dtype=dtype, device=sizes.device)
    matmul_ms = bench_ms(lambda: a @ b, sizes.device)
    results["matmul_tflops"] = 2 * n**3 / matmul_ms / 1e9
    rows.append(Row("roofline", f"matmul {n}^3 {dtype}", "TFLOP/s", results["matmul_tflops"]))


def section_kv_write(
    kernels: Kernels, sizes: BenchSizes, results: dict[str, Any], rows: list[Row]
) -> None:
    dtype, tokens = sizes.timing_dtype, sizes.kv_write_tokens
    inputs = make_batch(kernels, sizes, dtype, ((tokens,), (tokens,)))
    key = torch.randn(tokens, sizes.num_kv_heads, sizes.head_dim, device=sizes.device, dtype=dtype)
    value = torch.randn_like(key)
    slots = inputs.metadata.slot_mapping

    def write() -> None:
        kernels.write_kv(key, value, inputs.key_cache, inputs.value_cache, slots)

    ms = bench_ms(write, sizes.device)
    gbs = 2 * 2 * key.numel() * key.element_size() / ms / 1e6  # K and V, read + written
    results["kv_write"] = {"tokens": tokens, "ms": ms, "gbs": gbs}
    rows.append(
        Row(
            "kv_write",
            f"{tokens} tokens",
            "GB/s",
            gbs,
            ratio_note(gbs, results.get("copy_gbs"), "of copy"),
        )
    )


def section_decode(
    kernels: Kernels, sizes: BenchSizes, results: dict[str, Any], rows: list[Row]
) -> None:
    results["decode"] = []
    for batch, context in sizes.decode_configs:
        inputs = make_batch(kernels, sizes, sizes.timing_dtype, decode_lens(batch, context))
        out = torch.empty_like(inputs.query)
        eager_ms = bench_ms(lambda: kernels.decode(inputs, out), sizes.device)
        del inputs, out
        cuda = sizes.device == "cuda"
        ms = decode_graph_ms(kernels, sizes, batch, context) if cuda else eager_ms
        gbs = kv_bytes_read(sizes, batch, context, sizes.timing_dtype) / ms / 1e6
        copy_gbs = results.get("copy_gbs")
        results["decode"].append(
            {
                "batch": batch,
                "context": context,
                "graph_ms": ms,
                "eager_ms": eager_ms,
                "gbs": gbs,
                "fraction_of_copy": gbs / copy_gbs if copy_gbs else None,
            }
        )
        ratio = ratio_note(gbs, copy_gbs, "of copy (goal 80%)")
        note = f"{ms * 1e3:.0f} us (eager {eager_ms * 1e3:.0f}), {ratio}"
        config = (
            f"b={batch} ctx={context} h={sizes.num_heads}/{sizes.num_kv_heads} d={sizes.head_dim}"
        )
        rows.append(Row("decode", config, "GB/s K+V", gbs, note))


def section_prefill(
    kernels: Kernels, sizes: BenchSizes, results: dict[str, Any], rows: list[Row]
) -> None:
    results["prefill"] = []
    for lens in sizes.prefill_configs:
        inputs = make_batch(kernels, sizes, sizes.timing_dtype, lens)
        out = torch.empty_like(inputs.query)
        ms = bench_ms(lambda: kernels.varlen(inputs, out), sizes.device)
        tflops = causal_flops(lens, sizes.num_heads, sizes.head_dim) / ms / 1e9
        dense = lens[0] == lens[1] and len(set(lens[0])) == 1
        peer = _sdpa_tflops(sizes, lens) if dense else None
        results["prefill"].append(
            {
                "num_seqs": len(lens[0]),
                "query_len": lens[0][0],
                "seq_len": lens[1][0],
                "ms": ms,
                "tflops": tflops,
                "sdpa_tflops": peer,
            }
        )
        ratio = ratio_note(tflops, results.get("matmul_tflops"), "of matmul (goal 50%)")
        note = f"{ms:.2f} ms, {ratio}"
        if peer:
            note += f"; torch SDPA {peer:.0f} TFLOP/s"
        rows.append(
            Row(
                "prefill",
                f"{len(lens[0])}x q={lens[0][0]} ctx={lens[1][0]}",
                "TFLOP/s",
                tflops,
                note,
            )
        )


def _sdpa_tflops(sizes: BenchSizes, lens: Lens) -> float | None:
    """torch SDPA (flash / cuDNN on GPU) on the same dense causal problem, as a peer."""
    batch, length, dtype = len(lens[0]), lens[0][0], sizes.timing_dtype
    q = torch.randn(
        batch, sizes.num_heads, length, sizes.head_dim, device=sizes.device, dtype=dtype
    )
    kv = torch.randn(
        batch, sizes.num_kv_heads, length, sizes.head_dim, device=sizes.device, dtype=dtype
    )
    try:
        ms = bench_ms(
            lambda: F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True),
            sizes.device,
        )
    except Exception:  # noqa: BLE001 - an older torch without enable_gqa: no peer number
        return None
    return causal_flops(lens, sizes.num_heads, sizes.head_dim) / ms / 1e9


SECTIONS: dict[str, Section] = {
    "correctness": section_correctness,
    "roofline": section_roofline,
    "kv_write": section_kv_write,
    "decode": section_decode,
    "prefill": section_prefill,
    "sweep": section_sweep,
}
DEFAULT_SECTIONS = ("correctness", "roofline", "kv_write", "decode", "prefill")


def _environment(sizes: BenchSizes) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "argv": sys.argv,
    }
    if sizes.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            sms=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
        )
    else:
        info.update(device="cpu (Triton interpreter)")
    return info


def _print_table(rows: list[Row]) -> None:
    print(f"{'section':<12} {'config':<34} {'metric':<18} {'value':>12}  note")
    for row in rows:
        print(f"{row.section:<12} {row.config:<34} {row.metric:<18} {row.value:>12.4g}  {row.note}")


def _write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str))


def _run_sections(
    names: list[str], kernels: Kernels, sizes: BenchSizes, json_out: Path | None
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "environment": _environment(sizes),
        "sizes": asdict(sizes),
        "errors": {},
    }
    rows: list[Row] = []
    for name in names:
        started = time.perf_counter()
        try:
            SECTIONS[name](kernels, sizes, results, rows)
        except Exception as error:  # noqa: BLE001 - report and keep going with the next section
            results["errors"][name] = traceback.format_exc()
            rows.append(Row(name, "ERROR", type(error).__name__, math.nan, f"FAIL {error}"[:120]))
            traceback.print_exc()
        results.setdefault("section_s", {})[name] = time.perf_counter() - started
        results["rows"] = [asdict(row) for row in rows]
        _write_json(json_out, results)  # after every section: a timeout keeps what ran
        print(f"[{name}: {results['section_s'][name]:.0f} s]", flush=True)
    print(json.dumps(results["environment"]))
    _print_table(rows)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes through Triton's interpreter"
    )
    parser.add_argument(
        "--sections", default=",".join(DEFAULT_SECTIONS), help=f"from {list(SECTIONS)}"
    )
    default_out = Path(os.environ["OUT"]) / "gpu_kernels.json" if os.environ.get("OUT") else None
    parser.add_argument("--json-out", type=Path, default=default_out)
    args = parser.parse_args()
    sizes = CPU_SMOKE_SIZES if args.cpu_smoke else GPU_SIZES
    results = _run_sections(args.sections.split(","), load_kernels(), sizes, args.json_out)
    if args.json_out:
        print(f"wrote {args.json_out}")
    failed = results["errors"] or any(row["note"].startswith("FAIL") for row in results["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

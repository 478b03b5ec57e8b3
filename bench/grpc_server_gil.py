"""What a Python gRPC server costs a GIL-bound worker thread beside it: the shard's situation,
where the engine thread runs a forward of many small torch operator calls (each needs the GIL
between kernels) while the server answers the step before.

    python bench/grpc_server_gil.py [--rounds 6] [--steps 100] [--ops-per-step 9000]

A "step" is `--ops-per-step` small torch additions on one thread (~15 ms here). Three servers
run at once in their own processes, each handing every request to one worker thread (as the
shard does) and answering when its step is done:
- `aio-unary`: grpc.aio, one unary call per step (the shard before 2026-12-07);
- `aio-stream`: grpc.aio, one bidirectional stream, a message per step;
- `sync-unary`: gRPC's synchronous server (a pool of call threads), one unary call per step.
A client process keeps two steps in flight (asynchronous scheduling) and reports the median
period between answers; `in-process` is the step alone. Rounds alternate over the four, so
the machine's other load hits all alike. Extra time per step over in-process = the server's
cost to the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import torch

SERVICE = "bench.Steps"
REQUEST_BYTES = b"r" * 300  # about a batch-1 Decode message
RESPONSE_BYTES = b"a" * 100
IN_FLIGHT = 2


def _same(payload: bytes) -> bytes:
    return payload


def run_step(ops: int) -> None:
    torch.set_num_threads(1)
    x = torch.ones(64, 64)
    y = x
    for _ in range(ops):
        y = torch.add(y, x)


def serve(kind: str, address: str, ops: int) -> None:
    worker = ThreadPoolExecutor(1, thread_name_prefix="engine")
    if kind == "sync":
        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            worker.submit(run_step, ops).result()
            return RESPONSE_BYTES

        server = grpc.server(ThreadPoolExecutor(8))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Step": grpc.unary_unary_rpc_method_handler(unary, _same, _same)}),))
        server.add_insecure_port(address)
        server.start()
        server.wait_for_termination()
        return

    async def unary_aio(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.get_running_loop().run_in_executor(worker, run_step, ops)
        return RESPONSE_BYTES

    async def stream_aio(requests, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        running: asyncio.Queue[asyncio.Future[None] | None] = asyncio.Queue()

        async def read() -> None:
            async for _ in requests:
                await running.put(loop.run_in_executor(worker, run_step, ops))
            await running.put(None)

        reader = asyncio.create_task(read())
        while (step := await running.get()) is not None:
            await step
            yield RESPONSE_BYTES
        await reader

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Step": grpc.unary_unary_rpc_method_handler(unary_aio, _same, _same),
            "Steps": grpc.stream_stream_rpc_method_handler(stream_aio, _same, _same)}),))
        server.add_insecure_port(address)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def unary_periods(address: str, steps: int) -> list[float]:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Step", request_serializer=_same,
                                   response_deserializer=_same)
        pending = [call.future(REQUEST_BYTES) for _ in range(IN_FLIGHT)]
        return _periods(steps, lambda: (pending.pop(0).result(),
                                        pending.append(call.future(REQUEST_BYTES))))


def stream_periods(address: str, steps: int) -> list[float]:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(f"/{SERVICE}/Steps", request_serializer=_same,
                                     response_deserializer=_same)
        outgoing: queue.Queue[bytes | None] = queue.Queue()
        answers = call(iter(outgoing.get, None))
        for _ in range(IN_FLIGHT):
            outgoing.put(REQUEST_BYTES)
        periods = _periods(steps, lambda: (next(answers), outgoing.put(REQUEST_BYTES)))
        outgoing.put(None)
        for _ in answers:  # drain the steps still in flight
            pass
        return periods


def _periods(steps: int, one_step) -> list[float]:  # type: ignore[no-untyped-def]
    periods = []
    last = time.perf_counter()
    for _ in range(steps):
        one_step()
        now = time.perf_counter()
        periods.append(now - last)
        last = now
    return periods[IN_FLIGHT:]  # the first answers include the pipeline filling


def in_process_periods(ops: int, steps: int) -> list[float]:
    periods = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step(ops)
        periods.append(time.perf_counter() - start)
    return periods


def _wait_ready(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)


def servers(ops: int, folder: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    for kind in ("aio", "sync"):  # the aio server answers both the unary and the stream
        address = f"unix://{folder}/{kind}.sock"
        process = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--address",
                                    address, "--ops-per-step", str(ops)])
        yield kind, address, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100, help="per target and round")
    parser.add_argument("--ops-per-step", type=int, default=9000)
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--address", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.address, args.ops_per_step)
        return
    with tempfile.TemporaryDirectory(prefix="grpc-gil-") as tmp:
        started = list(servers(args.ops_per_step, Path(tmp)))
        try:
            addresses = {kind: address for kind, address, _ in started}
            for address in addresses.values():
                _wait_ready(address)
            targets = {
                "in-process": lambda: in_process_periods(args.ops_per_step, args.steps),
                "aio-unary": lambda: unary_periods(addresses["aio"], args.steps),
                "aio-stream": lambda: stream_periods(addresses["aio"], args.steps),
                "sync-unary": lambda: unary_periods(addresses["sync"], args.steps),
            }
            medians: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, measure in targets.items():
                    medians[name].append(statistics.median(measure()) * 1e3)
        finally:
            for _, _, process in started:
                process.terminate()
                process.wait()
    print(f"{args.ops_per_step} torch ops per step, {IN_FLIGHT} steps in flight, "
          f"{args.rounds} rounds of {args.steps} steps; median period per round (ms)")
    for name, values in medians.items():
        print(f"{name:11s} best {min(values):6.2f}  ({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()

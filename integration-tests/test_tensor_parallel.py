"""Tensor parallelism through the real launcher (issue 10, "Must show", CPU / gloo): greedy
float32 tokens with N shards equal those of one shard, each rank holds ~1/N of the weights,
a head count N does not divide is refused at start, killing a rank mid-generation restarts the
whole group and the stream continues (or, with no restart budget, takes everything down within
the collective timeout), and two "nodes" (two launchers on loopback)
serve one model together."""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from text_generation import Client

from conftest import write_byte_level_tokenizer
from support.launcher import RunningFerrite, free_port, running_ferrite, stop
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

TINY_PROMPTS = ("Hello, ferrite!", "Tensor parallelism splits every layer")
SMOLLM_PROMPTS = ("The capital of France is", "def fibonacci(n):")
MAX_NEW_TOKENS = 12
SMALL_LIMITS = ("--max-input-tokens", "64", "--max-total-tokens", "128",
                "--max-batch-prefill-tokens", "64")
# Short, so a broken group turns into an exit quickly; generous for a 2-core machine.
COLLECTIVE_TIMEOUT_S = 30
EXIT_TIMEOUT_S = 120
_WEIGHTS_LINE = re.compile(
    r"\[shard-(\d+)\].*rank \d+ of (\d+) holds (\d+) weight bytes; "
    r"anonymous resident memory grew by (-?\d+) bytes"
)


def tp_flags(num_shard: int) -> list[str]:
    """Float32 (greedy must match exactly), a free rendezvous port, a short collective timeout,
    small limits (a small warmup step: these tests run on a couple of shared cores)."""
    return [
        "--num-shard", str(num_shard), "--dtype", "float32",
        "--master-port", str(free_port()), "--collective-timeout-s", str(COLLECTIVE_TIMEOUT_S),
        *SMALL_LIMITS,
    ]


def greedy_ids(server: RunningFerrite, prompts: tuple[str, ...]) -> list[list[int]]:
    client = Client(server.base_url, timeout=300)
    answers = [client.generate(prompt, max_new_tokens=MAX_NEW_TOKENS) for prompt in prompts]
    return [[token.id for token in answer.details.tokens] for answer in answers]


def served_ids(
    model_dir: Path | None, num_shard: int, prompts: tuple[str, ...]
) -> tuple[list[list[int]], str]:
    """Greedy tokens of every prompt with `num_shard` shards, and the launcher's log; no
    model_dir: the bundled default model."""
    model_flags = [] if model_dir is None else ["--model-id", str(model_dir)]
    with running_ferrite([*model_flags, *tp_flags(num_shard)]) as server:
        ids = greedy_ids(server, prompts)
        log = server.log()
    return ids, log


def weights_by_rank(log: str) -> dict[int, tuple[int, int]]:
    """rank -> (weight bytes, anonymous resident growth while loading), from the shard logs."""
    return {
        int(match[1]): (int(match[3]), int(match[4])) for match in _WEIGHTS_LINE.finditer(log)
    }


def is_gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    write_tiny_model(model_dir, TinyModelSpec(family="qwen2", seed=12))
    write_byte_level_tokenizer(model_dir)
    return model_dir


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_two_shards_generate_what_one_shard_generates(
    family: str, tiny_model_dir: Path, tiny_qwen2_dir: Path
) -> None:
    model_dir = tiny_model_dir if family == "llama" else tiny_qwen2_dir
    one, _ = served_ids(model_dir, 1, TINY_PROMPTS)
    two, log = served_ids(model_dir, 2, TINY_PROMPTS)
    assert two == one
    assert set(weights_by_rank(log)) == {0, 1}, log[-3000:]


def test_three_shards_serve_smollm2_with_a_third_of_the_weights_each() -> None:
    """The bundled SmolLM2-135M: 9 attention heads and 3 KV heads, split 3 ways."""
    one, one_log = served_ids(None, 1, SMOLLM_PROMPTS)
    three, three_log = served_ids(None, 3, SMOLLM_PROMPTS)
    assert three == one
    (whole_bytes, whole_growth), = weights_by_rank(one_log).values()
    ranks = weights_by_rank(three_log)
    assert sorted(ranks) == [0, 1, 2], three_log[-3000:]
    for rank, (weight_bytes, resident_growth) in ranks.items():
        # Parameters: a third, plus the replicated norms (a few KB).
        assert whole_bytes / 3 <= weight_bytes < whole_bytes / 3 * 1.01, rank
        # What the process really holds after loading: about a third too (never the whole
        # model: each rank read only its slices of the checkpoint).
        assert 0.25 * whole_growth < resident_growth < 0.45 * whole_growth, (rank, ranks)


def test_a_head_count_the_shards_do_not_divide_is_refused(tiny_model_dir: Path) -> None:
    """The tiny model has 4 attention heads: 3 shards cannot split them."""
    result = subprocess.run(
        ["ferrite-launcher", "--model-id", str(tiny_model_dir), "--num-shard", "3",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "--num-shard (3) must divide the model's attention heads (4)" in output, output


def test_killing_a_rank_restarts_the_group_and_the_stream_continues(tiny_model_dir: Path) -> None:
    flags = ["--model-id", str(tiny_model_dir), *tp_flags(2)]
    with running_ferrite(flags) as server:
        client = Client(server.base_url, timeout=EXIT_TIMEOUT_S)
        expected = client.generate("Count on", max_new_tokens=100).generated_text
        old_ranks = rank_processes(server)
        started = threading.Event()
        pieces: list[str] = []

        def stream() -> None:
            for response in client.generate_stream("Count on", max_new_tokens=100):
                started.set()
                if not response.token.special:
                    pieces.append(response.token.text)

        streamer = threading.Thread(target=stream)
        streamer.start()
        assert started.wait(EXIT_TIMEOUT_S), "no token arrived"
        old_ranks[1].send_signal(signal.SIGKILL)
        streamer.join(EXIT_TIMEOUT_S * 2)

        assert not streamer.is_alive(), "the stream did not finish after the restart"
        assert "".join(pieces) == expected, "the replayed stream continues where it stopped"
        assert server.process.poll() is None, "the launcher is still up"
        # Every rank of the group was restarted, not only the one that died.
        new_ranks = rank_processes(server)
        assert len(new_ranks) == 2
        assert not {p.pid for p in new_ranks} & {p.pid for p in old_ranks}
        assert all(is_gone(process) for process in old_ranks)


def rank_processes(server: RunningFerrite) -> list[psutil.Process]:
    """The live shard processes, by rank (the router's command line names the sockets too)."""
    ranks = []
    for rank in range(2):
        ranks.append(next(
            child for child in psutil.Process(server.process.pid).children(recursive=True)
            if _is_live_shard(child, rank)
        ))
    return ranks


def _is_live_shard(process: psutil.Process, rank: int) -> bool:
    try:
        command = process.cmdline()
    except psutil.Error:  # gone, or a zombie not reaped yet
        return False
    return "serve" in command and any(arg.endswith(f"/shard-{rank}") for arg in command)


def test_without_a_restart_budget_killing_a_rank_stops_everything(tiny_model_dir: Path) -> None:
    flags = ["--model-id", str(tiny_model_dir), *tp_flags(2), "--graceful-shutdown-timeout-s", "5",
             "--max-shard-restarts", "0"]
    with running_ferrite(flags) as server:
        children = psutil.Process(server.process.pid).children(recursive=True)
        # The shard of rank 1 (the router's command line names its socket too).
        rank1 = next(child for child in children if "serve" in child.cmdline()
                     and any(arg.endswith("/shard-1") for arg in child.cmdline()))
        generating = threading.Event()
        outcome: list[BaseException | None] = []

        def generate() -> None:
            client = Client(server.base_url, timeout=EXIT_TIMEOUT_S)
            try:
                for _ in client.generate_stream("Count on", max_new_tokens=100):
                    generating.set()
                outcome.append(None)
            except BaseException as error:  # noqa: BLE001 - the stream is expected to fail
                outcome.append(error)
            generating.set()

        streamer = threading.Thread(target=generate)
        streamer.start()
        assert generating.wait(EXIT_TIMEOUT_S), "no token arrived"
        rank1.send_signal(signal.SIGKILL)

        # A hang guard at the collective timeout: the launcher must not wait longer.
        exit_code = server.process.wait(timeout=COLLECTIVE_TIMEOUT_S)
        streamer.join(EXIT_TIMEOUT_S)

        log = server.log()
        assert exit_code != 0, log[-3000:]
        assert f"shard-1 (pid {rank1.pid}) was killed by signal 9" in log, log[-3000:]
        assert all(is_gone(child) for child in children), [c.pid for c in children if not is_gone(c)]
        assert outcome and outcome[0] is not None, "the stream should have failed"


@pytest.fixture
def second_node(tiny_model_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """Node 1 of 2 on this machine: a launcher with only shards (rank 1), TCP on loopback."""
    master_port = free_port()
    with tempfile.TemporaryDirectory(prefix="ferrite-node1-") as tmp:
        log_path = Path(tmp) / "node1.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                ["ferrite-launcher", "--model-id", str(tiny_model_dir), "--dtype", "float32",
                 "--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
                 "--master-port", str(master_port), "--shard-uds-path", f"{tmp}/shard",
                 "--port", str(free_port()), *SMALL_LIMITS],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
            try:
                yield process, log_path, master_port
            finally:
                stop(RunningFerrite("", process, log_path))


def test_two_nodes_on_one_machine_serve_one_model(
    tiny_model_dir: Path, second_node: tuple[subprocess.Popen[bytes], Path, int]
) -> None:
    node1, node1_log, master_port = second_node
    one, _ = served_ids(tiny_model_dir, 1, TINY_PROMPTS)
    node0_flags = ["--model-id", str(tiny_model_dir), "--dtype", "float32", "--nnodes", "2",
                   "--node-rank", "0", "--master-addr", "127.0.0.1",
                   "--master-port", str(master_port), *SMALL_LIMITS]
    with running_ferrite(node0_flags) as node0:
        assert greedy_ids(node0, TINY_PROMPTS) == one
        node0_children = psutil.Process(node0.process.pid).children(recursive=True)
        node1_children = psutil.Process(node1.pid).children(recursive=True)
        log = node0.log()
        # The router on node 0 reached rank 1 over TCP, learnt from rank 0's Info.
        assert re.search(r"rank endpoints: \('unix://[^']+', '127\.0\.0\.1:\d+'\)", log), log[-3000:]
        assert "node 1 of 2 is ready" in node1_log.read_text()
    assert node0.process.returncode == 0
    assert all(is_gone(child) for child in node0_children)
    # Node 0 left: node 1's shard notices (the group's heartbeat) and its launcher reports it
    # and exits on its own, leaving nothing behind.
    node1_exit = node1.wait(timeout=EXIT_TIMEOUT_S)
    node1_text = node1_log.read_text()
    assert node1_exit != 0, node1_text[-3000:]
    assert "shard-1 (pid" in node1_text and "exited with status 1" in node1_text, node1_text[-3000:]
    assert "lost contact with the tensor-parallel group" in node1_text, node1_text[-3000:]
    assert all(is_gone(child) for child in node1_children)

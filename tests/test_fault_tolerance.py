"""Training that survives faults, with real processes of scripts/train.py: killed (SIGKILL) at 20
random points and restarted with --resume-from auto, it ends bit-identical to an uninterrupted
run; SIGTERM writes a checkpoint and exits cleanly; a non-finite loss stops the run before any
later checkpoint; a checkpoint cut short or damaged is refused by name (docs/reliability.md)."""

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hope_hf.training.trainer import STATE_FILE, check_resumable, latest_checkpoint

from helpers import small_training_data

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30
RUN = ["--preset", "tiny", "--block-size", "32", "--batch-size", "2", "--eval-every", "0", "--warmup-steps", "2",
       "--learning-rate", "3e-3", "--calibrate-tokens", "0", "--max-steps", str(STEPS), "--save-every", "1",
       "--gradient-accumulation-steps", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_training_data(tmp_path_factory.mktemp("data"))


def command(data, output_dir, *extra):
    return [sys.executable, str(ROOT / "scripts" / "train.py"), *RUN, *data, "--output-dir", str(output_dir), *extra]


def start_training(cmd) -> tuple[subprocess.Popen, threading.Event, list]:
    """A training process, and an event set once its progress bar shows (the loop has begun)."""
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    training, lines = threading.Event(), []

    def read():
        for line in process.stderr:
            lines.append(line)
            if "train:" in line:
                training.set()
    threading.Thread(target=read, daemon=True).start()
    return process, training, lines


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    result = subprocess.run(command(data, folder), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def training_state(folder: Path, step: int) -> dict:
    """Everything a checkpoint restores: weights, optimizer, LR scheduler, CMS schedule, RNG states, position."""
    checkpoint = folder / "checkpoints" / f"step_{step}"
    state = {"model": load_file(checkpoint / "model.safetensors")}
    for name in ("optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl"):
        state[name] = torch.load(checkpoint / name, weights_only=False)
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    state["position"] = (saved["step"], saved["micro_step"], saved["history"])
    return state


def assert_identical(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif type(a).__module__ == "numpy" or hasattr(a, "__array__"):
        assert (a == b).all(), where
    else:
        assert a == b, where


def test_twenty_random_kills_then_resume_auto_end_bit_identical(data, uninterrupted, tmp_path):
    rng = random.Random(0)
    folder, kills, cut_short = tmp_path / "killed", 0, 0
    while kills < 20:
        process, training, _ = start_training(command(data, folder, "--resume-from", "auto"))
        if not training.wait(timeout=300):
            process.kill()
            pytest.fail("the training loop did not start within 300 s")
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in a step, a log write or a checkpoint write
        if process.poll() is not None:
            break  # finished before the kill
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        checkpoints = list((folder / "checkpoints").glob("step_*"))
        cut_short += sum(not (c / STATE_FILE).exists() for c in checkpoints)
    assert kills == 20, f"the run finished after {kills} kills; lengthen it"
    result = subprocess.run(command(data, folder, "--resume-from", "auto"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_identical(training_state(folder, STEPS), training_state(uninterrupted, STEPS))
    assert_identical(load_file(folder / "final" / "model.safetensors"), load_file(uninterrupted / "final" / "model.safetensors"))
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    whole = [json.loads(line) for line in (uninterrupted / "train_log.jsonl").read_text().splitlines()]
    assert log == whole  # no step lost or repeated
    print(f"{kills} kills, {cut_short} checkpoints seen cut short")


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(data, uninterrupted, tmp_path):
    folder = tmp_path / "term"
    process, training, lines = start_training(command(data, folder, "--save-every", "0"))
    assert training.wait(timeout=300)  # the progress bar shows once SIGTERM is caught
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0, "".join(lines)[-3000:]
    checkpoint = latest_checkpoint(folder)  # --save-every 0: the only checkpoint is SIGTERM's
    step = int(checkpoint.name.split("_")[1])
    assert 0 < step < STEPS and not (folder / "final").exists()
    resumed = subprocess.run(command(data, folder, "--save-every", "0", "--resume-from", "auto"), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume auto: from {checkpoint}" in resumed.stdout
    assert_identical(load_file(folder / "final" / "model.safetensors"), load_file(uninterrupted / "final" / "model.safetensors"))


def test_a_non_finite_loss_stops_the_run_before_any_later_checkpoint(data, tmp_path):
    """At lr 1e30 the first step makes the weights overflow: step 2's loss is not finite."""
    folder = tmp_path / "nan"
    result = subprocess.run(command(data, folder, "--learning-rate", "1e30", "--warmup-steps", "0"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    assert "FloatingPointError: the training loss was not finite at or before step 2" in result.stderr
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_1"]
    check_resumable(folder / "checkpoints" / "step_1")
    assert not (folder / "final").exists()


def test_a_checkpoint_cut_short_or_damaged_is_refused_by_name(uninterrupted, tmp_path):
    import shutil

    copy = tmp_path / "step_5"
    shutil.copytree(uninterrupted / "checkpoints" / "step_5", copy)
    check_resumable(copy)
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"checkpoint file '{weights}' is truncated or damaged: {len(data) // 2} bytes, {len(data)} written"):
        check_resumable(copy)
    weights.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ValueError, match=rf"checkpoint file '{weights}' is damaged: its SHA-256 differs"):
        check_resumable(copy)
    weights.write_bytes(data)
    check_resumable(copy)
    (copy / "optimizer.bin").unlink()
    with pytest.raises(ValueError, match="optimizer.bin' is missing"):
        check_resumable(copy)
    (copy / STATE_FILE).unlink()  # a save killed before its state file
    with pytest.raises(ValueError, match="cut short before its state file was written"):
        check_resumable(copy)
    assert latest_checkpoint(tmp_path / "nowhere") is None

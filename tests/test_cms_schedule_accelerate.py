"""CMSSchedule under Accelerate: gradient accumulation, and DDP across two real (gloo) processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from hope_hf import CMSSchedule

from helpers import tiny_model

LEVELS = [{"intermediate_size": 16, "update_period": 1}, {"intermediate_size": 8, "update_period": 2}]


def micro_batch(step, micro, rank=0):
    return torch.randint(2, 101, (2, 9), generator=torch.Generator().manual_seed(100 * step + 10 * micro + rank))


def test_gradient_accumulation_matches_one_big_step():
    """2 micro-batches per optimizer step with Accelerate == summing them by hand."""
    set_seed(0)
    reference = tiny_model(cms_levels=LEVELS).train()
    model = tiny_model(cms_levels=LEVELS).train()
    model.load_state_dict(reference.state_dict())
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule = CMSSchedule(accelerator.unwrap_model(model))
    for step in range(1, 5):
        for micro in range(2):
            with accelerator.accumulate(model):
                ids = micro_batch(step, micro)
                accelerator.backward(model(ids, labels=ids).loss)
                if accelerator.sync_gradients:
                    schedule.step(optimizer)
                optimizer.zero_grad()
    assert schedule.step_count == 4

    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    ref_schedule = CMSSchedule(reference)
    for step in range(1, 5):
        for micro in range(2):
            ids = micro_batch(step, micro)
            (reference(ids, labels=ids).loss / 2).backward()
        ref_schedule.step(ref_optimizer)
        ref_optimizer.zero_grad()
    for (n, p), q in zip(accelerator.unwrap_model(model).named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=n)


def ddp_worker():
    accelerator = Accelerator()  # torchrun + ACCELERATE_USE_CPU=1: a gloo process group
    assert accelerator.num_processes == 2, accelerator.num_processes
    set_seed(0)
    model = tiny_model(cms_levels=LEVELS).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule = CMSSchedule(accelerator.unwrap_model(model))
    slow = lambda: torch.cat([p.detach().flatten().clone() for n, p in model.named_parameters() if "levels.1." in n])
    before = slow()
    for step in range(1, 4):
        ids = micro_batch(step, 0, rank=accelerator.process_index)  # different data on each rank
        accelerator.backward(model(ids, labels=ids).loss)
        schedule.step(optimizer)
        optimizer.zero_grad()
        now = slow()
        assert torch.equal(now, before) == (step % 2 == 1), f"slow level at step {step}"
        before = now
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = accelerator.gather(flat[None])
    assert torch.equal(gathered[0], gathered[1]), "ranks diverged"


    if accelerator.is_main_process:
        print("ddp ok")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_keep_ranks_identical_and_pulses_on_schedule(tmp_path):
    tests = Path(__file__).parent
    script = tmp_path / "ddp_worker.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(tests)!r})\nfrom test_cms_schedule_accelerate import ddp_worker\nddp_worker()\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), str(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ddp ok" in result.stdout

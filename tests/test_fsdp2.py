"""FSDP2 through `accelerate launch` on two CPU processes (gloo), with hope_hf's Accelerate loop
(hope_hf.training.train) on tiny Hope and Llama-CMS models: the same losses and final weights
as one process with double accumulation, and save_state + resume ending where an uninterrupted
run ends.

accelerate 1.15 selects FSDP only for GPU-like process groups: on CPU it reports MULTI_CPU and
would wrap the model in DDP (docs/distributed.md). The worker therefore sets the distributed
type to FSDP itself, which is what accelerate does on GPUs; from there on everything is
accelerate's own FSDP2 code (fully_shard per decoder layer, sharded save_state/load_state).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "cpu" / "fsdp2.yaml"
KINDS = ["hope", "llama_cms"]
STEPS, SAVE_EVERY = 4, 2


def build_model(kind):
    from accelerate.utils import set_seed

    from hope_hf import LlamaCMSForCausalLM

    from helpers import tiny_model
    from test_llama_cms import tiny_llama

    set_seed(0)
    if kind == "hope":  # slow level period 3: the checkpoint at step 2 holds its gradients
        levels = [{"intermediate_size": 16, "update_period": 1}, {"intermediate_size": 8, "update_period": 3}]
        return tiny_model(mixer=["titans", "attention"], cms_levels=levels).train()
    levels = [{"name": "slow", "intermediate_size": 16, "update_period": 3}]
    return LlamaCMSForCausalLM.from_llama(tiny_llama(), cms_levels=levels, pretrained_update_period=1).train()


def blocks():
    return [{"input_ids": ids} for ids in torch.randint(2, 101, (16, 9), generator=torch.Generator().manual_seed(3))]


def run_training(kind, output_dir, accumulation, **overrides):
    from hope_hf.training import TrainingConfig, train

    config = TrainingConfig(output_dir=str(output_dir), max_steps=STEPS, batch_size=2, gradient_accumulation_steps=accumulation,
                            learning_rate=1e-2, warmup_steps=1, eval_every=0, eval_batches=1, save_every=SAVE_EVERY, **overrides)
    train(build_model(kind), blocks(), blocks()[:4], config)


def use_fsdp_on_cpu():
    """What accelerate does on GPUs: the FSDP distributed type with the plugin from the launch config
    (a fresh plugin for each model: accelerate records the model's wrap classes in it)."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = Accelerator().state
    if state.distributed_type != DistributedType.FSDP:
        assert state.num_processes == 2 and state.distributed_type == DistributedType.MULTI_CPU, state.distributed_type
        state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the ACCELERATE_* variables the launch config set
    assert state.fsdp_plugin.fsdp_version == 2


def worker(mode, output_dir):
    torch.set_num_threads(1)
    output_dir = Path(output_dir)
    for kind in KINDS:
        if mode == "one_process":
            run_training(kind, output_dir / kind / "one", accumulation=2)
            continue
        use_fsdp_on_cpu()
        run_training(kind, output_dir / kind / "fsdp", accumulation=1)
        use_fsdp_on_cpu()
        run_training(kind, output_dir / kind / "split", accumulation=1, stop_after_steps=SAVE_EVERY)
        use_fsdp_on_cpu()
        run_training(kind, output_dir / kind / "split", accumulation=1,
                     resume_from=str(output_dir / kind / "split" / "checkpoints" / f"step_{SAVE_EVERY}"))
    print(f"{mode} ok")


def launch(mode, output_dir, launcher):
    script = output_dir / "worker.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                      f"from test_fsdp2 import worker; worker({mode!r}, {str(output_dir)!r})\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{mode} ok" in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir):
    return torch.tensor([r["loss"] for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines()) if "loss" in r])


def weights(run_dir):
    return load_file(run_dir / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("fsdp2")
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
                  "--main_process_port", str(free_port())]
    launch("fsdp", output_dir, accelerate)
    launch("one_process", output_dir, [sys.executable])
    return output_dir


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp2_two_processes_match_one_process_with_double_accumulation(runs, kind):
    fsdp, one = runs / kind / "fsdp", runs / kind / "one"
    assert (fsdp / "checkpoints" / f"step_{SAVE_EVERY}" / "pytorch_model_fsdp_0").is_dir(), "a sharded (FSDP) checkpoint"
    assert len(losses(fsdp)) == STEPS
    # the same global batches, gradients summed in another order: losses measured equal
    torch.testing.assert_close(losses(fsdp), losses(one), atol=1e-5, rtol=0)
    # weights: measured <= 2.3e-7 except where Adam's first step of a level divides a gradient of
    # the size of eps (1e-8) by sqrt(v) + eps, which amplifies summation-order noise (one entry of
    # the slow level: 1.4e-5). A missing or extra step would move weights by about lr (1e-2).
    one_weights = weights(one)
    for name, tensor in weights(fsdp).items():
        torch.testing.assert_close(tensor, one_weights[name], atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp2_save_state_and_resume_end_where_the_uninterrupted_run_ends(runs, kind):
    fsdp, split = runs / kind / "fsdp", runs / kind / "split"
    schedule_state = torch.load(split / "checkpoints" / f"step_{SAVE_EVERY}" / "custom_checkpoint_0.pkl", weights_only=True)
    assert schedule_state["step_count"] == SAVE_EVERY and schedule_state["held"], "the slow level's held gradients are saved"
    assert torch.equal(losses(split), losses(fsdp))
    fsdp_weights = weights(fsdp)
    for name, tensor in weights(split).items():
        torch.testing.assert_close(tensor, fsdp_weights[name], atol=0, rtol=0, msg=name)

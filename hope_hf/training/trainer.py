"""An Accelerate training loop for causal LMs with CMS levels (Hope and Llama-CMS).

Mixed precision, gradient accumulation, clipping, warmup + cosine (transformers' get_scheduler),
AdamW, the CMSSchedule (Eq 71), periodic held-out perplexity, tqdm, a JSONL log, and
``save_state`` checkpoints that ``resume_from`` restores exactly: model, optimizer, LR scheduler,
CMS schedule, RNG states and the position in the data. A checkpoint's state file is written last
and lists every file's size and SHA-256, so a checkpoint cut short or damaged is refused by name;
``resume_from="auto"`` takes the latest complete one. SIGTERM writes a checkpoint and stops; a
non-finite loss stops the run before any later checkpoint (docs/reliability.md).
"""

import hashlib
import json
import math
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..optim.cms_levels import is_cms_module
from ..optim.cms_schedule import CMSSchedule
from ..ops import use_compiled_chunks
from ..optim.m3 import M3
from .loop import cms_optimizer_step

STATE_FILE = "trainer_state.json"
STATE_FORMAT = "hope_hf.trainer/2"  # /2: the state file lists every file's size and SHA-256
READABLE_FORMATS = ("hope_hf.trainer/1", STATE_FORMAT)


@dataclass
class TrainingConfig:
    output_dir: str
    max_steps: int = 100
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    lr_scheduler: str = "cosine"
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # "no", "bf16", "fp16"
    optimizer: str = "adamw"  # "adamw" or "m3" (hidden matrices M3, the rest AdamW at learning_rate)
    m3_lr: float = 1e-6  # M3's default (its eps and moving-average variance set the scale)
    cms_periods: list | dict | None = None  # CMSSchedule periods; None: the config's
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 0  # 0: only the final checkpoint
    log_every: int = 1
    seed: int = 0
    resume_from: str | None = None  # a checkpoints/step_N folder, or "auto": the latest complete one, if any
    stop_after_steps: int | None = None  # stop early (as if preempted), for resume tests
    compile_chunks: bool = False  # hope_hf.ops.use_compiled_chunks for this process; long runs only (docs/kernels.md)
    document_boundaries: bool = True  # each document in a block read alone (document_inputs); False: blocks as one text

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_batches", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.optimizer not in ("adamw", "m3"):
            raise ValueError(f"optimizer must be one of ('adamw', 'm3'), got {self.optimizer!r}")
        for name in ("learning_rate", "m3_lr", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be None or > 0, got {self.max_grad_norm!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be one of ('no', 'bf16', 'fp16'), got {self.mixed_precision!r}")


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # batches consumed (per process)
    history: list = field(default_factory=list)  # one dict per logged step / evaluation


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(path: Path) -> dict[str, dict]:
    """{relative name: {"bytes", "sha256"}} of every file of a checkpoint but its state file."""
    return {str(f.relative_to(path)): {"bytes": f.stat().st_size, "sha256": file_digest(f)}
            for f in sorted(path.rglob("*")) if f.is_file() and f.name != STATE_FILE}


def check_resumable(path: str | Path) -> Path:
    """A complete, undamaged checkpoint, or a ValueError naming what is wrong and which file."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.exists():
        raise ValueError(f"{str(path)!r} is not a hope_hf training checkpoint, or one cut short before its state "
                         f"file was written (no {STATE_FILE})")
    try:
        saved = json.loads(state_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(state_file)!r} is damaged: {error}") from error
    if saved.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{str(path)!r} holds a checkpoint of another format than {READABLE_FORMATS}")
    for name, expected in saved.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"checkpoint file {str(file)!r} is missing")
        if file.stat().st_size != expected["bytes"]:
            raise ValueError(f"checkpoint file {str(file)!r} is truncated or damaged: {file.stat().st_size} bytes, "
                             f"{expected['bytes']} written")
        if file_digest(file) != expected["sha256"]:
            raise ValueError(f"checkpoint file {str(file)!r} is damaged: its SHA-256 differs from the one written")
    return path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint of the highest step under output_dir/checkpoints (None if there is none)."""
    folders = sorted((Path(output_dir) / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]),
                     reverse=True)
    for folder in folders:
        try:
            return check_resumable(folder)
        except ValueError as error:
            print(f"skipping checkpoint {folder}: {error}")
    return None


class StopSignal:
    """Within the block, SIGTERM (a preemption notice) only sets ``requested``; the loop then
    writes a checkpoint and stops. Outside the main thread signals cannot be caught: a no-op."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def collate(blocks: list[dict]) -> torch.Tensor:
    return torch.stack([b["input_ids"] for b in blocks])


def document_inputs(input_ids: torch.Tensor, eos_token_id: int | None = None) -> dict:
    """A model's next-token inputs for blocks of documents packed with an EOS after each (pack_blocks).

    With ``eos_token_id``, every document in a block is read alone: position_ids restart after each
    EOS (Hope's titans layers start the next document from their initial memory, attention layers
    get transformers' block-diagonal mask, which it builds only without a cache: use_cache=False)
    and the first token of each document is no label (it would be predicted across the boundary).
    Without, the block is one text."""
    if eos_token_id is None:
        return {"input_ids": input_ids, "labels": input_ids}
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 1:] = input_ids[:, :-1] == eos_token_id
    index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    position_ids = index - torch.where(starts, index, 0).cummax(-1).values
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": input_ids.masked_fill(starts, -100),
            "use_cache": False}


def eos_token_id(tokenizer, model) -> int | None:
    """The EOS id that ends documents in packed blocks: the tokenizer's, else the model config's."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    return eos if isinstance(eos, int) else None


@torch.no_grad()
def evaluate(model, loader, accelerator, max_batches: int, eos: int | None = None) -> float:
    """Held-out perplexity: exp of the mean next-token loss over at most max_batches batches
    (documents read alone with ``eos``, see ``document_inputs``)."""
    model.eval()
    losses = []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        losses.append(accelerator.gather(model(**document_inputs(batch, eos)).loss.detach()[None]).mean())
    model.train()
    return math.exp(torch.stack(losses).mean().item())


def train(model, train_dataset, eval_dataset, config: TrainingConfig, tokenizer=None,
          other_eval_datasets: dict | None = None, loss_fn=None) -> TrainerState:
    """Train ``model`` and save it (with the tokenizer) to ``output_dir/final``.

    ``other_eval_datasets`` ({name: blocks}, e.g. old domains): evaluated whenever
    ``eval_dataset`` is, logged as ``{"eval_perplexity_other": {name: perplexity}}``.
    ``loss_fn(model, input_ids)``: the training loss of a batch (e.g. a distillation loss; it gets
    the prepared model); by default the model's next-token loss, each document of a block read
    alone when ``config.document_boundaries`` (``document_inputs``). Evaluations are always the
    next-token perplexity."""
    if config.resume_from == "auto":
        resume_dir = latest_checkpoint(config.output_dir)
        print(f"resume auto: {'from ' + str(resume_dir) if resume_dir else 'no complete checkpoint, starting at step 0'}")
    else:
        resume_dir = check_resumable(config.resume_from) if config.resume_from else None
    use_compiled_chunks(config.compile_chunks)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,  # one LR step per optimizer step, whatever the process count
    )
    set_seed(config.seed)
    accelerator.print(f"accelerate: num_processes={accelerator.num_processes}, device={accelerator.device}")
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    optimizer = build_optimizer(model, config)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                                 num_training_steps=config.max_steps)
    train_loader = DataLoader(train_dataset, batch_size=config.batch_size, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(config.seed))
    eval_loader = DataLoader(eval_dataset, batch_size=config.batch_size, collate_fn=collate)
    model, optimizer, train_loader, eval_loader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, lr_scheduler
    )
    other_loaders = {name: accelerator.prepare(DataLoader(blocks, batch_size=config.batch_size, collate_fn=collate))
                     for name, blocks in (other_eval_datasets or {}).items()}
    schedule = None
    if any(is_cms_module(m) for m in accelerator.unwrap_model(model).modules()):
        schedule = CMSSchedule(accelerator.unwrap_model(model), config.cms_periods)
        accelerator.register_for_checkpointing(schedule)

    eos = eos_token_id(tokenizer, accelerator.unwrap_model(model)) if config.document_boundaries else None
    state = TrainerState()
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        saved = json.loads((resume_dir / STATE_FILE).read_text())
        state = TrainerState(saved["step"], saved["micro_step"], saved["history"])
    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:  # the log holds exactly the steps of this run's history
        log_path.write_text("".join(json.dumps(record) + "\n" for record in state.history))

    def log(record: dict) -> None:
        state.history.append(record)
        if accelerator.is_main_process:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if "eval_perplexity" in record:  # losses show on the progress bar, evaluations as lines
                others = "".join(f", {k} {v:.2f}" for k, v in record.get("eval_perplexity_other", {}).items())
                tqdm.write(f"step {record['step']}: held-out perplexity {record['eval_perplexity']:.2f}{others}")

    def evaluation_record() -> dict:
        record = {"step": state.step, "eval_perplexity": evaluate(model, eval_loader, accelerator, config.eval_batches, eos)}
        if other_loaders:
            record["eval_perplexity_other"] = {name: evaluate(model, loader, accelerator, config.eval_batches, eos)
                                               for name, loader in other_loaders.items()}
        return record

    def save_checkpoint() -> Path:
        path = output_dir / "checkpoints" / f"step_{state.step}"
        if accelerator.is_fsdp2:
            materialize_adam_state(optimizer)
        if (path / STATE_FILE).exists() and accelerator.is_main_process:
            (path / STATE_FILE).unlink()  # a save over an earlier one is incomplete until its state file is back
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # the state file last, atomically: it marks the checkpoint complete
            payload = {"format": STATE_FORMAT, **asdict(state), "config": asdict(config), "files": checkpoint_files(path)}
            partial = path / (STATE_FILE + ".partial")
            partial.write_text(json.dumps(payload, indent=1))
            partial.replace(path / STATE_FILE)
        accelerator.wait_for_everyone()
        return path

    nonfinite = torch.zeros((), dtype=torch.bool, device=accelerator.device)  # any loss not finite since the last check

    def check_finite() -> None:
        """Stop before anything is logged as good or saved after a non-finite loss (one sync, at log and save points)."""
        if bool(accelerator.gather(nonfinite.int()[None]).any()):
            raise FloatingPointError(f"the training loss was not finite at or before step {state.step}: training "
                                     f"stopped, no checkpoint written after it (the last one is "
                                     f"{latest_checkpoint(output_dir) or 'none'})")

    def stop_requested(stop: StopSignal) -> bool:
        """Whether any process got SIGTERM (all processes stop at the same step)."""
        if accelerator.num_processes == 1:
            return stop.requested
        return bool(accelerator.gather(torch.tensor([int(stop.requested)], device=accelerator.device)).any())

    window = []
    epoch, skip = divmod(state.micro_step, len(train_loader))
    model.train()
    stopping = False
    with StopSignal() as stop:  # SIGTERM: finish the step, write a checkpoint, stop
        # the bar shows once SIGTERM is caught (tests wait for it)
        progress = tqdm(total=config.max_steps, initial=state.step, desc="train", disable=not accelerator.is_main_process)
        while state.step < config.max_steps:
            train_loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = model(**document_inputs(batch, eos)).loss if loss_fn is None else loss_fn(model, batch)
                    accelerator.backward(loss)
                    window.append(loss.detach())
                    nonfinite |= ~torch.isfinite(loss.detach())
                    if accelerator.sync_gradients:
                        optimizer_step(model, optimizer, schedule, accelerator, config.max_grad_norm)
                        lr_scheduler.step()
                    optimizer.zero_grad()
                state.micro_step += 1
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                progress.update(1)
                if state.step % config.log_every == 0 or state.step == config.max_steps:
                    check_finite()
                    mean_loss = accelerator.gather(torch.stack(window).mean()[None]).mean().item()
                    log({"step": state.step, "loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]})
                    progress.set_postfix(loss=f"{mean_loss:.3f}")
                window = []
                if config.eval_every and state.step % config.eval_every == 0:
                    log(evaluation_record())
                if config.save_every and state.step % config.save_every == 0:
                    check_finite()
                    save_checkpoint()
                stopping = stop_requested(stop)
                if stopping:  # SIGTERM: a checkpoint of this step, then stop as a stopped run does
                    if not (config.save_every and state.step % config.save_every == 0):
                        check_finite()
                        save_checkpoint()
                    accelerator.print(f"SIGTERM: checkpoint written at step {state.step}; resume with --resume-from auto")
                if state.step >= config.max_steps or state.step == config.stop_after_steps or stopping:
                    break
            if stopping or (state.step == config.stop_after_steps and state.step < config.max_steps):
                progress.close()
                return state
            epoch, skip = epoch + 1, 0
    progress.close()
    check_finite()

    if not (config.eval_every and state.step % config.eval_every == 0):
        log(evaluation_record())
    if not (config.save_every and state.step % config.save_every == 0):
        save_checkpoint()
    full_state_dict = accelerator.get_state_dict(model)  # every process: FSDP gathers the shards here
    if accelerator.is_main_process:
        final = output_dir / "final"
        accelerator.unwrap_model(model).save_pretrained(final, state_dict=full_state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(final)
        plot_losses(log_path, output_dir / "loss_curve.png")
    accelerator.wait_for_everyone()
    return state


def build_optimizer(model, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "m3":
        return M3.from_model(model, lr=config.m3_lr, weight_decay=config.weight_decay,
                             adamw_lr=config.learning_rate, adamw_weight_decay=config.weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)


def materialize_adam_state(optimizer) -> None:
    """Give every parameter without optimizer state the state Adam(W)'s first step creates.

    A CMS level that has not pulsed yet has had no optimizer step, so it has no state. FSDP2's
    sharded checkpoints load through torch.distributed.checkpoint, which first creates a state for
    every parameter and then requires the checkpoint to hold each ("Missing key in checkpoint
    state_dict: optimizer.state.<level>.step"). Step 0 and zero moments are exactly what Adam's
    lazy initialisation would create, so the training is unchanged.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    if not isinstance(inner, torch.optim.Adam):  # AdamW subclasses Adam
        return
    for group in inner.param_groups:
        for p in group["params"]:
            if inner.state[p] or not p.requires_grad:
                continue
            on_device = group["capturable"] or group["fused"]
            step = torch.zeros((), device=p.device) if on_device else torch.tensor(0.0)
            state = {"step": step, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
            inner.state[p] = state


def optimizer_step(model, optimizer, schedule, accelerator, max_grad_norm) -> None:
    """CMS levels hold or release their gradients (Eq 71), then clip, step."""
    cms_optimizer_step(model, [optimizer], schedule, max_grad_norm, clip_grad_norm=accelerator.clip_grad_norm_)


def plot_losses(log_path: str | Path, png_path: str | Path) -> None:
    """Training loss per step (and held-out perplexity) from a JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["loss"] for r in records if "loss" in r], label="training loss")
    evals = [r for r in records if "eval_perplexity" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [math.log(r["eval_perplexity"]) for r in evals], "o-", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)

"""Training: data pipeline, the Accelerate loop used by scripts/, and the single-process loop of the
experiments (``train_steps``). Modeling never imports this."""

from .data import build_datasets, load_documents, pack_blocks
from .hf_trainer import CMSScheduleCallback
from .loop import cms_optimizer_step, train_steps, warmup_cosine
from .tokenizer import train_bpe_tokenizer
from .trainer import TrainingConfig, TrainerState, evaluate, plot_losses, train

__all__ = [
    "build_datasets", "cms_optimizer_step", "CMSScheduleCallback", "evaluate", "load_documents", "pack_blocks",
    "plot_losses", "train", "train_bpe_tokenizer", "train_steps", "TrainerState", "TrainingConfig", "warmup_cosine",
]

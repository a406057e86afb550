"""Shared pieces of the small-scale language-model comparison (run_lm_comparison.py) and the
optimizer sweep (run_optimizer_sweep.py): corpora, tokenizer, models at matched parameter
counts, a fixed batch order, and one training run with periodic held-out loss.

Every model of a comparison sees the same token blocks in the same order (the order depends on
the data seed only, never on the model or its initialisation seed).
"""

import lzma
import math
import sys
import sysconfig
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf import M3, HopeConfig, HopeForCausalLM
from hope_hf.modeling.gated_deltanet_baseline import use_gated_deltanet
from hope_hf.optim.cms_schedule import CMSSchedule
from hope_hf.training import train_bpe_tokenizer

DATA_DIR = Path(__file__).resolve().parent / "data"
ENGLISH_PATH = DATA_DIR / "web_en.txt.xz"  # World English Bible, one chapter a line (public domain)

# The code corpus: top-level modules of the interpreter's standard library (names from CPython
# 3.11, sorted). A file missing from another Python version is skipped with a message.
STDLIB_FILES = """
__future__.py __hello__.py _aix_support.py _bootsubprocess.py _collections_abc.py _compat_pickle.py
_compression.py _markupbase.py _osx_support.py _py_abc.py _pydecimal.py _pyio.py _sitebuiltins.py _strptime.py
_threading_local.py _weakrefset.py abc.py aifc.py antigravity.py argparse.py ast.py asynchat.py asyncore.py
base64.py bdb.py bisect.py bz2.py cProfile.py calendar.py cgi.py cgitb.py chunk.py cmd.py code.py codecs.py
codeop.py colorsys.py compileall.py configparser.py contextlib.py contextvars.py copy.py copyreg.py crypt.py
csv.py dataclasses.py datetime.py decimal.py difflib.py dis.py doctest.py enum.py filecmp.py fileinput.py
fnmatch.py fractions.py ftplib.py functools.py genericpath.py getopt.py getpass.py gettext.py glob.py
graphlib.py gzip.py hashlib.py heapq.py hmac.py imaplib.py imghdr.py imp.py inspect.py io.py ipaddress.py
keyword.py linecache.py locale.py lzma.py mailbox.py mailcap.py mimetypes.py modulefinder.py netrc.py
nntplib.py ntpath.py nturl2path.py numbers.py opcode.py operator.py optparse.py os.py pathlib.py pdb.py
pickle.py pickletools.py pipes.py pkgutil.py platform.py plistlib.py poplib.py posixpath.py pprint.py
profile.py pstats.py pty.py py_compile.py pyclbr.py pydoc.py queue.py quopri.py random.py reprlib.py
rlcompleter.py runpy.py sched.py secrets.py selectors.py shelve.py shlex.py shutil.py signal.py site.py
smtpd.py smtplib.py sndhdr.py socket.py socketserver.py sre_compile.py sre_constants.py sre_parse.py ssl.py
stat.py statistics.py string.py stringprep.py struct.py subprocess.py sunau.py symtable.py sysconfig.py
tabnanny.py tarfile.py telnetlib.py tempfile.py textwrap.py this.py threading.py timeit.py token.py
tokenize.py trace.py traceback.py tracemalloc.py tty.py turtle.py types.py typing.py uu.py uuid.py
warnings.py wave.py weakref.py webbrowser.py xdrlib.py zipapp.py zipfile.py zipimport.py
""".split()

HELD_OUT_EVERY = 20  # English: every 20th chapter is held out (5%)
CODE_HELD_OUT_BUCKETS = 10  # code: a file is held out when crc32(name) % 10 == 0 (about 10%)

MODELS = ("llama", "gated_deltanet", "hope_titans", "hope_hybrid", "hope_attention")


# ---------------------------------------------------------------- data

def english_documents() -> tuple[list[str], list[str]]:
    """(training chapters, held-out chapters): every HELD_OUT_EVERY-th chapter is held out."""
    chapters = [line for line in lzma.decompress(ENGLISH_PATH.read_bytes()).decode("utf-8").splitlines() if line.strip()]
    train = [c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY != 0]
    held_out = [c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY == 0]
    return train, held_out


def is_held_out_file(name: str) -> bool:
    return zlib.crc32(name.encode()) % CODE_HELD_OUT_BUCKETS == 0


def python_documents(stdlib_dir: str | Path | None = None, files=STDLIB_FILES) -> tuple[list[str], list[str]]:
    """(training files, held-out files) of the standard library's source, one document a file,
    in the fixed order of ``files``; the split depends on the file name only."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    train, held_out = [], []
    for name in files:
        path = root / name
        if not path.is_file():
            print(f"python corpus: {path} is missing, skipped", file=sys.stderr)
            continue
        (held_out if is_held_out_file(name) else train).append(path.read_text(encoding="utf-8", errors="replace"))
    return train, held_out


def text_file_documents(path: str | Path) -> tuple[list[str], list[str]]:
    """A local .txt file, one document a line, split as the English corpus."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return ([d for i, d in enumerate(lines) if i % HELD_OUT_EVERY != 0],
            [d for i, d in enumerate(lines) if i % HELD_OUT_EVERY == 0])


def load_corpus(name: str) -> tuple[list[str], list[str]]:
    if name == "english":
        return english_documents()
    if name == "python":
        return python_documents()
    if Path(name).suffix == ".txt" and Path(name).is_file():
        return text_file_documents(name)
    raise ValueError(f"corpus must be 'english', 'python' or an existing .txt file, got {name!r}")


def pack(documents: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """Tokenise, put EOS after every document, concatenate, cut into (num_blocks, block_size)."""
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    flat = [token for doc in ids for token in doc + [tokenizer.eos_token_id]]
    usable = len(flat) // block_size * block_size
    if usable == 0:
        raise ValueError(f"the documents hold fewer than block_size={block_size} tokens")
    return torch.tensor(flat[:usable]).view(-1, block_size)


def prepare_data(corpus: str, vocab_size: int, block_size: int):
    """(tokenizer, training blocks, held-out blocks); the BPE is trained on the training split only."""
    train_docs, held_out_docs = load_corpus(corpus)
    tokenizer = train_bpe_tokenizer(train_docs, vocab_size)
    return tokenizer, pack(train_docs, tokenizer, block_size), pack(held_out_docs, tokenizer, block_size)


def batch_order(num_blocks: int, steps: int, batch_size: int, data_seed: int = 0) -> torch.Tensor:
    """(steps, batch_size) block indices: shuffled epochs, from the data seed alone."""
    generator = torch.Generator().manual_seed(data_seed)
    needed = steps * batch_size
    epochs = [torch.randperm(num_blocks, generator=generator) for _ in range(math.ceil(needed / num_blocks))]
    return torch.cat(epochs)[:needed].view(steps, batch_size)


# ---------------------------------------------------------------- models

@dataclass
class ModelShape:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 4096
    block_size: int = 256
    target_non_embedding: int = 800_000  # every model's MLP width is adjusted to this
    titans_chunk_size: int = 64
    # set explicitly (HopeConfig's default may change): 0.99 made titans recall on MQAR
    titans_decay_init_min: float = 0.99
    titans_decay_init_max: float = 0.999
    cms_periods: tuple = (1, 8)  # Hope's CMS levels: widths (m, m // 2), periods in optimizer steps
    hybrid_pattern: tuple = ("titans", "attention")  # repeated over the layers


def hope_config(shape: ModelShape, mixer, mlp_size: int, cms_periods) -> HopeConfig:
    widths = [mlp_size] + [max(1, mlp_size // 2)] * (len(cms_periods) - 1)
    return HopeConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, max_position_embeddings=max(shape.block_size, 64),
        titans_chunk_size=shape.titans_chunk_size, titans_decay_init_min=shape.titans_decay_init_min,
        titans_decay_init_max=shape.titans_decay_init_max, tie_word_embeddings=False,
        cms_levels=[{"intermediate_size": w, "update_period": p} for w, p in zip(widths, cms_periods)],
        mixer=mixer, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def build_model(name: str, shape: ModelShape, mlp_size: int):
    """A freshly initialised model ``name`` (one of MODELS) with MLP width ``mlp_size``."""
    if name == "llama":
        config = LlamaConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=mlp_size,
                             num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
                             max_position_embeddings=max(shape.block_size, 64), tie_word_embeddings=False,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config)
    if name == "gated_deltanet":  # Gated DeltaNet mixer + one plain SwiGLU MLP per block
        model = HopeForCausalLM(hope_config(shape, "titans", mlp_size, cms_periods=(1,)))
        use_gated_deltanet(model)
        return model
    mixers = {"hope_titans": "titans", "hope_attention": "attention",
              "hope_hybrid": [shape.hybrid_pattern[i % len(shape.hybrid_pattern)] for i in range(shape.num_layers)]}
    if name not in mixers:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return HopeForCausalLM(hope_config(shape, mixers[name], mlp_size, shape.cms_periods))


def embedding_parameters(model) -> int:
    tensors = {id(p): p for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    return sum(p.numel() for p in tensors.values())


def non_embedding_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters()) - embedding_parameters(model)


def count_on_meta(name: str, shape: ModelShape, mlp_size: int) -> int:
    with torch.device("meta"):
        return non_embedding_parameters(build_model(name, shape, mlp_size))


def matched_mlp_size(name: str, shape: ModelShape, multiple: int = 8) -> int:
    """The MLP width (a multiple of ``multiple``) whose non-embedding count is nearest the target.
    The count is affine in the width (up to the rounding of m // 2), so two counts locate it."""
    low, high = 8 * multiple, 64 * multiple
    n_low, n_high = count_on_meta(name, shape, low), count_on_meta(name, shape, high)
    exact = low + (shape.target_non_embedding - n_low) * (high - low) / (n_high - n_low)
    candidates = {max(multiple, multiple * round(exact / multiple) + d * multiple) for d in (-1, 0, 1)}
    return min(candidates, key=lambda m: abs(count_on_meta(name, shape, m) - shape.target_non_embedding))


def matched_models(names, shape: ModelShape, tolerance: float = 0.05) -> dict:
    """{name: {"mlp_size", "non_embedding", "embedding"}}; raises if one misses the target by > tolerance."""
    sizes = {}
    for name in names:
        mlp = matched_mlp_size(name, shape)
        with torch.device("meta"):
            model = build_model(name, shape, mlp)
        count = non_embedding_parameters(model)
        if abs(count / shape.target_non_embedding - 1) > tolerance:
            raise ValueError(f"{name}: no MLP width reaches {shape.target_non_embedding:,} non-embedding parameters "
                             f"within {tolerance:.0%} (best {count:,} at width {mlp}); the mixer alone may be too large")
        sizes[name] = {"mlp_size": mlp, "non_embedding": count, "embedding": embedding_parameters(model)}
    return sizes


# ---------------------------------------------------------------- optimizers

def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def hidden_matrices(model) -> tuple[list, list]:
    """(2-D hidden weights, everything else: embeddings, LM head, norms, biases, convolutions)."""
    skip = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    matrices, others = [], []
    for p in model.parameters():
        (matrices if p.dim() == 2 and id(p) not in skip else others).append(p)
    return matrices, others


@dataclass
class OptimizerSpec:
    name: str = "adamw"  # adamw | muon | m3
    lr: float = 3e-3  # AdamW's lr, or the matrix lr of muon / m3
    adamw_lr: float = 3e-3  # the AdamW part of muon / m3 (embeddings, head, 1-D, conv)
    weight_decay: float = 0.1
    m3_eps: float = 1e-2
    m3_momentum_decay: float = 1.0  # mu of both M3 momenta; 1.0 is Algorithm 1 (momenta sum every gradient)


def make_optimizers(model, spec: OptimizerSpec) -> list[torch.optim.Optimizer]:
    if spec.name == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=spec.weight_decay)]
    matrices, others = hidden_matrices(model)
    if spec.name == "muon":
        return [torch.optim.Muon(matrices, lr=spec.lr, weight_decay=spec.weight_decay),
                torch.optim.AdamW(others, lr=spec.adamw_lr, betas=(0.9, 0.95), weight_decay=spec.weight_decay)]
    if spec.name == "m3":
        levels = [{"period": 1, "beta": 0.9, "weight": 1.0, "decay": spec.m3_momentum_decay},  # Algorithm 1's defaults
                  {"period": 8, "beta": 0.9, "weight": 1.0, "decay": spec.m3_momentum_decay}]
        return [M3([{"params": matrices}, {"params": others, "algorithm": "adamw"}], lr=spec.lr, eps=spec.m3_eps,
                   levels=levels, weight_decay=spec.weight_decay, adamw_lr=spec.adamw_lr,
                   adamw_weight_decay=spec.weight_decay)]
    raise ValueError(f"optimizer must be adamw, muon or m3, got {spec.name!r}")


# ---------------------------------------------------------------- training

@dataclass
class RunSettings:
    steps: int = 600
    batch_size: int = 8
    gradient_accumulation: int = 1  # micro-batches per step (batch_size must divide evenly)
    eval_every: int = 50
    eval_blocks: int = 32  # held-out blocks scored at every evaluation (the same ones each time)
    final_eval_blocks: int = 256  # at the end
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    data_seed: int = 0
    device: str = "cpu"
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)


@torch.no_grad()
def held_out_loss(model, blocks: torch.Tensor, device: str, batch_size: int = 8) -> float:
    """Mean next-token loss over every predicted token of ``blocks``."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = model(ids, labels=ids).loss
        count = ids.numel() - len(ids)
        total += loss.item() * count
        tokens += count
    model.train()
    return total / tokens


def accumulate_gradients(model, batch: torch.Tensor, micro_batches: int, device: str) -> torch.Tensor:
    """Backward over ``micro_batches`` equal slices of the batch; returns the batch's mean loss."""
    if len(batch) % micro_batches:
        raise ValueError(f"gradient_accumulation ({micro_batches}) must divide the batch size ({len(batch)})")
    total = 0.0
    for ids in batch.to(device).chunk(micro_batches):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = model(ids, labels=ids).loss / micro_batches
        loss.backward()
        total = total + loss.detach()
    return total


def train_one(model, train_blocks: torch.Tensor, held_out: torch.Tensor, settings: RunSettings,
              description: str = "train", progress: bool = True) -> dict:
    """Train on ``batch_order`` of the training blocks; held-out loss every eval_every steps.
    Returns the curve [{"step", "tokens", "held_out_loss"}], the training loss per step,
    the final held-out loss over final_eval_blocks, and tokens/s of training (evaluations excluded)."""
    device = settings.device
    model.to(device).train()
    order = batch_order(len(train_blocks), settings.steps, settings.batch_size, settings.data_seed)
    optimizers = make_optimizers(model, settings.optimizer)
    warmup = max(1, int(settings.warmup_fraction * settings.steps))
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: warmup_cosine(s, settings.steps, warmup))
                  for o in optimizers]
    cms = CMSSchedule(model) if isinstance(model, HopeForCausalLM) else None
    eval_set = held_out[: settings.eval_blocks]
    tokens_per_step = settings.batch_size * train_blocks.shape[1]
    curve = [{"step": 0, "tokens": 0, "held_out_loss": held_out_loss(model, eval_set, device)}]
    train_loss, train_seconds = [], 0.0
    bar = tqdm(range(1, settings.steps + 1), desc=description, disable=not progress)
    for step in bar:
        start = time.perf_counter()
        loss = accumulate_gradients(model, train_blocks[order[step - 1]], settings.gradient_accumulation, device)
        if cms is not None:
            cms.release_gradients()
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        for optimizer, scheduler in zip(optimizers, schedulers):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if cms is not None:
            cms.after_optimizer_step()
        loss_value = loss.item()
        train_seconds += time.perf_counter() - start
        train_loss.append(loss_value)
        if not math.isfinite(loss_value):
            curve.append({"step": step, "tokens": step * tokens_per_step, "held_out_loss": float("nan")})
            break
        if step % settings.eval_every == 0 or step == settings.steps:
            curve.append({"step": step, "tokens": step * tokens_per_step,
                          "held_out_loss": held_out_loss(model, eval_set, device)})
            bar.set_postfix(loss=f"{loss_value:.3f}", held_out=f"{curve[-1]['held_out_loss']:.3f}")
    final = held_out_loss(model, held_out[: settings.final_eval_blocks], device) if math.isfinite(train_loss[-1]) else float("nan")
    return {"curve": curve, "train_loss": train_loss, "final_held_out_loss": final,
            "final_held_out_perplexity": math.exp(final) if math.isfinite(final) and final < 50 else float("inf"),
            "steps_run": len(train_loss), "train_seconds": train_seconds,
            "tokens_per_second": len(train_loss) * tokens_per_step / train_seconds}


def settings_dict(settings: RunSettings) -> dict:
    return asdict(settings)

"""The experiments' corpora, defined once, each split into train / validation / test documents.

* english: the World English Bible (public domain), one chapter a document (``evaluation/data``);
* spanish: the Reina-Valera 1909 Bible (public domain), one chapter a document (``evaluation/data``);
* code: the interpreter's own standard library, one module a document (names from CPython 3.11);
* any other ``.txt`` file: one document a line, split as english.

Validation is for every choice a runner makes (rates, steps, rules); test is only for what a
runner reports. A document's split depends on its position (text) or its name (code) alone, so
it is the same on every run and machine; only the code corpus depends on the Python version, whose
standard library lacks some of the named modules from 3.12 on (they are skipped, with a message). The training split is the one the earlier two-way
split (train / held-out) trained on: the held-out documents are now halved into validation and
test.
"""

import lzma
import math
import sys
import sysconfig
import zlib
from pathlib import Path

import torch

from hope_hf.training import train_bpe_tokenizer

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TEXTS = {"english": DATA_DIR / "web_en.txt.xz", "spanish": DATA_DIR / "rv1909_es.txt.xz"}
SPLITS = ("train", "validation", "test")
CORPORA = ("english", "spanish", "code")
HELD_OUT_EVERY = 20  # one document in 20 is held out, alternately validation and test
CODE_BUCKETS = 20  # crc32(name) % 20: 0 is validation, 10 is test, the rest train

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


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def split_of_position(index: int, every: int) -> str:
    """Document ``index`` of a text: every ``every``-th is held out, alternately validation and test."""
    if index % every:
        return "train"
    return "validation" if (index // every) % 2 == 0 else "test"


def split_of_name(name: str) -> str:
    bucket = zlib.crc32(name.encode()) % CODE_BUCKETS
    return {0: "validation", CODE_BUCKETS // 2: "test"}.get(bucket, "train")


def text_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def code_documents(split: str, stdlib_dir: str | Path | None = None, files=STDLIB_FILES) -> list[str]:
    """The ``split`` files of the standard library's source, in the fixed order of ``files``;
    a file missing from this Python is skipped with a message."""
    check_split(split)
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    documents = []
    for name in files:
        if split_of_name(name) != split:
            continue
        path = root / name
        if not path.is_file():
            print(f"code corpus: {path} is missing, skipped", file=sys.stderr)
            continue
        documents.append(path.read_text(encoding="utf-8", errors="replace"))
    return documents


def corpus_text(corpus: str) -> str:
    """The text of a text corpus, one document a line."""
    if corpus in TEXTS:
        return lzma.decompress(TEXTS[corpus].read_bytes()).decode("utf-8")
    if Path(corpus).suffix == ".txt" and Path(corpus).is_file():
        return Path(corpus).read_text(encoding="utf-8")
    raise ValueError(f"corpus must be one of {CORPORA} or an existing .txt file, got {corpus!r}")


def documents(corpus: str, split: str) -> list[str]:
    """The documents of one split of a corpus."""
    check_split(split)
    if corpus == "code":
        return code_documents(split)
    return [d for i, d in enumerate(text_lines(corpus_text(corpus))) if split_of_position(i, HELD_OUT_EVERY) == split]


def corpus_tag(corpus: str) -> str:
    """A corpus's name in file names (a .txt path: its stem)."""
    return Path(corpus).stem if corpus.endswith(".txt") else corpus


def pack(texts: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """Tokenise, put EOS after every document, concatenate, cut into (num_blocks, block_size)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    flat = [token for doc in ids for token in doc + [tokenizer.eos_token_id]]
    usable = len(flat) // block_size * block_size
    if usable == 0:
        raise ValueError(f"the documents hold fewer than block_size={block_size} tokens")
    return torch.tensor(flat[:usable]).view(-1, block_size)


def train_tokenizer(corpora: list[str], vocab_size: int):
    """A byte-level BPE trained on the training split of every corpus named, in order."""
    return train_bpe_tokenizer([d for corpus in corpora for d in documents(corpus, "train")], vocab_size)


def corpus_blocks(corpus: str, tokenizer, block_size: int) -> dict[str, torch.Tensor]:
    """{split: (num_blocks, block_size) tokens} of one corpus."""
    return {split: pack(documents(corpus, split), tokenizer, block_size) for split in SPLITS}


def prepare_corpus(corpus: str, vocab_size: int, block_size: int):
    """(tokenizer trained on the corpus's training split, {split: blocks})."""
    tokenizer = train_tokenizer([corpus], vocab_size)
    return tokenizer, corpus_blocks(corpus, tokenizer, block_size)


def batch_order(num_blocks: int, steps: int, batch_size: int, data_seed: int = 0) -> torch.Tensor:
    """(steps, batch_size) block indices: shuffled epochs, from the data seed alone."""
    generator = torch.Generator().manual_seed(data_seed)
    needed = steps * batch_size
    epochs = [torch.randperm(num_blocks, generator=generator) for _ in range(math.ceil(needed / num_blocks))]
    return torch.cat(epochs)[:needed].view(steps, batch_size)


__all__ = ["CORPORA", "SPLITS", "STDLIB_FILES", "batch_order", "corpus_blocks", "corpus_tag", "documents", "pack",
           "prepare_corpus", "split_of_name", "split_of_position", "train_tokenizer"]

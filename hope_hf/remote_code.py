"""Write a flat, self-contained copy of the model code beside a checkpoint.

transformers' remote code (``trust_remote_code=True``) loads the files named in the config's
``auto_map`` and follows only one-dot relative imports between files of one flat folder. The
package has subfolders (``from ..ops.self_referential import ...``), so each module the model
needs is copied under a flat name with its relative imports rewritten. A checkpoint saved this
way loads with stock transformers where hope_hf is not installed.
"""

import os
import re
import shutil
from importlib import import_module

# module of the package -> file name (without .py) in the checkpoint folder
HOPE_REMOTE_MODULES = {
    "hope_hf.configuration.configuration_hope": "configuration_hope",
    "hope_hf.modeling.modeling_hope": "modeling_hope",
    "hope_hf.ops.self_referential": "self_referential_ops",
    "hope_hf.ops.self_referential.common": "self_referential_common",
    "hope_hf.ops.self_referential.naive": "self_referential_naive",
    "hope_hf.ops.self_referential.chunk": "self_referential_chunk",
    "hope_hf.ops.self_referential.fla_bridge": "self_referential_fla_bridge",
    "hope_hf.ops.self_referential.fused_chunk": "self_referential_fused_chunk",
    "hope_hf.ops.deep_memory": "deep_memory_ops",
    "hope_hf.ops.deep_memory.common": "deep_memory_common",
    "hope_hf.ops.deep_memory.naive": "deep_memory_naive",
    "hope_hf.ops.deep_memory.chunk": "deep_memory_chunk",
    "hope_hf.remote_code": "hope_remote_code",
    "hope_hf.transformers_compat": "hope_transformers_compat",
    "hope_hf.configuration.configuration_llama_cms": "configuration_llama_cms",
    "hope_hf.modeling.llama_loading": "llama_loading",
    "hope_hf.modeling.modeling_llama_cms": "modeling_llama_cms",
}

_RELATIVE_IMPORT = re.compile(r"^(?P<indent>\s*)from (?P<dots>\.+)(?P<name>[\w.]*) import ", re.MULTILINE)


def _absolute_module(module_name: str, is_package: bool, dots: str, name: str) -> str:
    package = module_name if is_package else module_name.rsplit(".", 1)[0]
    base = package.rsplit(".", len(dots) - 1)[0] if len(dots) > 1 else package
    return f"{base}.{name}" if name else base


def flatten_module_source(module_name: str, modules: dict[str, str]) -> str:
    """Source of ``module_name`` with every relative import pointing at a flat sibling file."""
    module = import_module(module_name)
    is_package = os.path.basename(module.__file__) == "__init__.py"
    with open(module.__file__, encoding="utf-8") as f:
        source = f.read()

    def rewrite(match: re.Match) -> str:
        target = _absolute_module(module_name, is_package, match["dots"], match["name"])
        if target not in modules:
            raise ValueError(f"{module_name} imports {target}, which has no flat name in the remote-code file map")
        return f"{match['indent']}from .{modules[target]} import "

    return _RELATIVE_IMPORT.sub(rewrite, source)


def write_remote_code(save_directory: str, modules: dict[str, str] = HOPE_REMOTE_MODULES) -> list[str]:
    """Write the flattened modules into ``save_directory``; returns the files written.

    Run from a flat copy itself (a checkpoint loaded as remote code and saved again), the
    sibling files that transformers brought along are copied as they are."""
    written = []
    is_flat_copy = not __name__.startswith("hope_hf.")
    for module_name, flat_name in modules.items():
        path = os.path.join(save_directory, f"{flat_name}.py")
        if is_flat_copy:  # transformers copied only the files this model imports: copy those
            source_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{flat_name}.py")
            if not os.path.exists(source_path):
                continue
            if os.path.abspath(source_path) != os.path.abspath(path):
                shutil.copyfile(source_path, path)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(flatten_module_source(module_name, modules))
        written.append(path)
    return written


class RemoteCodeMixin:
    """For PreTrainedModel subclasses: ``save_pretrained`` also writes ``auto_map`` and the flat
    code, so stock transformers loads the folder with ``trust_remote_code=True``."""

    remote_auto_map: dict[str, str] = {}

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        self.config.auto_map = dict(self.remote_auto_map)
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            write_remote_code(save_directory)

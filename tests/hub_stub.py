"""Run a script exactly as `python script.py args` would, with only the Hub's network calls
replaced: HfApi.create_repo and HfApi.upload_folder record what they were given (and the files
the folder held at that moment) in a JSON file instead of contacting huggingface.co."""

import json
import os
import subprocess
import sys
from pathlib import Path

RUNNER = """
import json, runpy, sys
from pathlib import Path
from huggingface_hub import HfApi

record, script, *argv = sys.argv[1:]
calls = []

def save():
    Path(record).write_text(json.dumps(calls))

def create_repo(self, repo_id, **kwargs):
    calls.append({"call": "create_repo", "repo_id": repo_id, "private": kwargs.get("private")}); save()
    return f"https://huggingface.co/{repo_id}"

def upload_folder(self, *, folder_path, repo_id, **kwargs):
    files = sorted(p.name for p in Path(folder_path).iterdir())
    calls.append({"call": "upload_folder", "repo_id": repo_id, "folder_path": str(folder_path), "files": files}); save()
    return f"https://huggingface.co/{repo_id}/commit/0"

HfApi.create_repo, HfApi.upload_folder = create_repo, upload_folder
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""


def run_without_network(script, args, record: Path, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "0"}
    result = subprocess.run([sys.executable, "-c", RUNNER, str(record), str(script), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, env=env)
    calls = json.loads(record.read_text()) if record.exists() else []
    return result, calls

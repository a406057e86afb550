"""Model cards (huggingface_hub ModelCard / ModelCardData) in the folders the scripts write, and
--push-to-hub up to the network call."""

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from hope_hf.training.hub import model_card

from helpers import tiny_model
from hub_stub import run_without_network
from test_llama_cms import tiny_llama

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_model_card_metadata_round_trips_through_huggingface_hub(tmp_path):
    model = tiny_model(mixer=["titans", "attention"])
    card = model_card(model, "A tiny Hope.", training_data="three verses", base_model="org/base",
                      results={"held-out perplexity, English": 12.3456, "training loss (step 4)": 2.5},
                      license="apache-2.0", model_name="me/tiny-hope")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert (data.library_name, data.pipeline_tag, data.license, data.base_model) == (
        "transformers", "text-generation", "apache-2.0", "org/base")
    assert {"hope-hf", "hope", "titans", "attention", "continuum-memory-system"} <= set(data.tags)
    [perplexity] = data.eval_results  # losses stay in the text, perplexities also go to the model-index
    assert (perplexity.metric_type, perplexity.metric_value, perplexity.dataset_name) == (
        "perplexity", 12.3456, "held-out perplexity, English")
    assert "three verses" in loaded.text and "| training loss (step 4) | 2.5 |" in loaded.text


def test_retrofit_script_writes_a_card_and_pushes_its_folder(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "llama")
    from hope_hf.training import train_bpe_tokenizer

    train_bpe_tokenizer(["In the beginning God created the heaven and the earth."] * 4, 120).save_pretrained(tmp_path / "llama")
    out = tmp_path / "tiny-llama-cms"
    result, calls = run_without_network(
        ROOT / "scripts" / "retrofit_llama.py",
        [tmp_path / "llama", "--output-dir", out, "--level", "fast:16:1", "--base-model-id", "org/tiny-llama",
         "--push-to-hub", "--hub-model-id", "me/tiny-llama-cms", "--hub-private-repo"],
        tmp_path / "calls.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert calls == [
        {"call": "create_repo", "repo_id": "me/tiny-llama-cms", "private": True},
        {"call": "upload_folder", "repo_id": "me/tiny-llama-cms", "folder_path": str(out), "files": calls[1]["files"]},
    ]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "modeling_llama_cms.py"} <= set(calls[1]["files"])
    data = ModelCard.load(out / "README.md").data
    assert (data.base_model, data.pipeline_tag, data.library_name) == ("org/tiny-llama", "text-generation", "transformers")
    assert "llama_cms" in data.tags and data.license == "apache-2.0"


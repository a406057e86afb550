"""The speed benchmarks as modules (``python -m evaluation.benchmarks.<name>``), at tiny sizes:
each writes one results file with the fixed header, under outputs/ (and the PNG beside it), never
into evaluation/results/ unless --commit-results."""

import json

import pytest

from evaluation.lib import results as results_lib
from evaluation.lib.results import HEADER

TINY = {
    "bench_ops": ["--seq-len", "32", "--heads", "2", "--head-dim", "8", "--chunk-size", "16", "--repeats", "1",
                  "--threads", "1"],
    "bench_titans_scaling": ["--seq-lens", "32", "64", "--hidden-size", "32", "--heads", "2", "--chunk-size", "16",
                             "--repeats", "1", "--threads", "1"],
    "bench_deep_memory": ["--seq-lens", "24", "--batch-size", "2", "--hidden-size", "64", "--target-non-embedding",
                          "300000", "--repeats", "1", "--threads", "1"],
    "bench_titans_paths": ["--seq-len", "64", "--hidden-size", "32", "--heads", "2", "--chunk-size", "16",
                           "--prompt-len", "18", "--batch-seq-len", "27", "--repeats", "1", "--threads", "1"],
}


def committed_bytes(name):
    path = results_lib.COMMITTED / f"{name}.json"
    return path.read_bytes() if path.exists() else None


def check_header(path, module):
    payload = json.loads(path.read_text())
    assert list(payload)[: len(HEADER)] == list(HEADER)
    assert payload["command"].startswith(f"python -m evaluation.benchmarks.{module} ")
    assert path.with_suffix(".png").exists()
    return payload


@pytest.mark.parametrize("name", sorted(TINY))
def test_writes_outputs_not_the_committed_results(name, tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module(f"evaluation.benchmarks.{name}")
    monkeypatch.chdir(tmp_path)
    before = committed_bytes(name)
    module.main(TINY[name])
    payload = check_header(tmp_path / "outputs" / f"{name}.json", name)
    assert payload["settings"]["threads"] == 1 and payload["settings"]["repeats"] == 1
    assert committed_bytes(name) == before


def test_commit_results_writes_the_committed_path(tmp_path, monkeypatch):
    from evaluation.benchmarks import bench_ops

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(results_lib, "COMMITTED", tmp_path / "committed")
    bench_ops.main([*TINY["bench_ops"], "--commit-results"])
    check_header(tmp_path / "committed" / "bench_ops.json", "bench_ops")
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(SystemExit):
        bench_ops.main([*TINY["bench_ops"], "--commit-results", "--output", str(tmp_path / "x.json")])


def test_bench_m3_runs_every_optimizer_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from evaluation.benchmarks import bench_m3

    monkeypatch.chdir(tmp_path)
    before = committed_bytes("bench_m3")
    argv = ["--seeds", "1", "--digits-steps", "3", "--lm-steps", "2", "--threads", "1"]
    bench_m3.main(argv)
    path = tmp_path / "outputs" / "bench_m3.json"
    payload = check_header(path, "bench_m3")
    assert {(r["task"], r["optimizer"]) for r in payload["runs"]} == {
        (task, name) for task in ("digits", "hope_lm") for name in ("adamw", "muon", "m3")}
    for run in payload["runs"]:
        assert [p["step"] for p in run["curve"]] == list(range(1, len(run["curve"]) + 1))
        assert all(b["seconds"] >= a["seconds"] for a, b in zip(run["curve"], run["curve"][1:]))
    assert set(payload["summary"]["digits"]["m3"]) == {"test_loss", "test_accuracy", "seconds"}
    bench_m3.main([*argv, "--resume"])  # nothing missing: nothing runs again
    resumed = json.loads(path.read_text())
    assert resumed["runs"] == payload["runs"] and " ; " in resumed["command"]
    assert committed_bytes("bench_m3") == before


def test_bench_m3_runs_m3_at_its_defaults():
    from evaluation.benchmarks import bench_m3
    from evaluation.lib.training import make_optimizers
    from helpers import tiny_model
    from hope_hf import M3

    (bench,) = make_optimizers(tiny_model(), bench_m3.OPTIMIZERS["m3"])
    default = M3.from_model(tiny_model())
    for key in ("lr", "eps", "variance", "levels", "weight_decay"):
        assert bench.param_groups[0][key] == default.param_groups[0][key], key
    assert bench.param_groups[1]["lr"] == default.param_groups[1]["lr"]


def test_bench_reliability_measures_every_check_against_a_step(tmp_path, monkeypatch):
    from evaluation.benchmarks import bench_reliability

    monkeypatch.chdir(tmp_path)
    saved = bench_reliability.main(["--repeats", "1", "--batch-size", "1", "--length", "16"])
    assert saved == json.loads((tmp_path / "outputs" / "bench_reliability.json").read_text())
    assert [run["shape"] for run in saved["runs"]] == list(bench_reliability.SHAPES)
    for run in saved["runs"]:
        assert 0 < run["checks_s"] < run["step_s"] and 0 < run["nonfinite_flag_s"] < run["step_s"]
        assert run["checks_vs_step"] == run["checks_s"] / run["step_s"] and run["hash_checkpoint_s"] > 0


def test_bench_long_context_prefills_in_pieces_exactly_and_measures_every_model(tmp_path, monkeypatch):
    import torch

    from evaluation.benchmarks import bench_long_context as bench

    monkeypatch.chdir(tmp_path)
    payload = bench.main(["--lengths", "80", "32", "--llama-max-len", "32", "--prefill-chunk", "24", "--decode-steps", "2",
                          "--repeats", "1", "--hidden-size", "64", "--num-layers", "2", "--vocab-size", "97",
                          "--target-non-embedding", "150000"])
    check_header(tmp_path / "outputs" / "bench_long_context.json", "bench_long_context")
    rows = {(r["model"], r["length"]): r for r in payload["rows"]}
    assert set(rows) == {("hope_titans", 32), ("hope_hybrid", 32), ("llama", 32), ("hope_titans", 80), ("hope_hybrid", 80)}
    assert rows["hope_titans", 32]["cache_bytes"] == rows["hope_titans", 80]["cache_bytes"]  # O(1) in the prompt
    assert rows["hope_hybrid", 80]["cache_bytes"] > rows["hope_hybrid", 32]["cache_bytes"]  # its attention layer's KV
    assert all(r["prefill_s"] > 0 and r["decode_ms_median"] > 0 and r["peak_memory_bytes"] >= 0 for r in rows.values())

    # reading the prompt in pieces through the cache gives the logits of one forward over it
    shape = bench.ModelShape(hidden_size=64, num_layers=2, num_heads=1, vocab_size=97, block_size=80,
                             target_non_embedding=150000, titans_chunk_size=16)
    ids = torch.randint(3, 97, (1, 53))
    for name in bench.MODELS:
        model = bench.build_model(name, shape, 96).eval()
        cache, last = bench.prefill(model, ids, 20)
        with torch.no_grad():
            torch.testing.assert_close(last, model(ids).logits[:, -1], atol=1e-5, rtol=1e-5)
        if name == "hope_titans":  # two layers, each a conv state (2 inputs x 64 channels x 3) and 2 states (1 x 64 x 194)
            assert bench.cache_bytes(cache) == 4 * 2 * (2 * 64 * 3 + 2 * 64 * 194)


def test_bench_conversion_decode_measures_teacher_and_students(tmp_path, monkeypatch):
    """On a tiny Llama: one row per model and length; the all-titans student's cache does not grow
    with the prompt while the teacher's does, and a student keeping every other layer's attention
    holds half the teacher's KV plus its titans states."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from evaluation.benchmarks import bench_conversion_decode as bench

    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    monkeypatch.chdir(tmp_path)
    payload = bench.main(["--source", str(tmp_path / "llama"), "--students", "1/2", "", "--lengths", "16", "40",
                          "--prefill-chunk", "8", "--decode-steps", "2"])
    check_header(tmp_path / "outputs" / "bench_conversion_decode.json", "bench_conversion_decode")
    rows = {(r["model"], r["length"]): r for r in payload["rows"]}
    names = ["teacher", "student (attention 1/2)", "student (all titans)"]
    assert set(rows) == {(n, length) for n in names for length in (16, 40)}
    assert payload["attention_layers"] == {"teacher": [0, 1], "student (attention 1/2)": [0], "student (all titans)": []}
    assert rows["student (all titans)", 16]["cache_bytes"] == rows["student (all titans)", 40]["cache_bytes"]
    assert rows["teacher", 40]["cache_bytes"] > rows["teacher", 16]["cache_bytes"]
    kv_per_layer = (rows["teacher", 40]["cache_bytes"] - rows["teacher", 16]["cache_bytes"]) / 2
    growth = rows["student (attention 1/2)", 40]["cache_bytes"] - rows["student (attention 1/2)", 16]["cache_bytes"]
    assert growth == kv_per_layer
    assert all(r["decode_speedup_over_teacher"] > 0 for r in rows.values())


def test_bench_packing_batches_hold_the_same_documents_and_loss():
    """The packed and padded batches of bench_packing hold the same documents: a model's loss is
    the same on both (every document read alone), in fp64."""
    import torch

    from evaluation.benchmarks.bench_packing import packed_batch, padded_batch
    from helpers import tiny_model

    docs = [list(range(3, 3 + n)) for n in (9, 30, 4, 17, 25)]
    padded, packed = padded_batch(docs), packed_batch(docs, 32)
    assert padded["input_ids"].shape == (5, 30) and packed["input_ids"].shape == (4, 32)  # 9 | 30 | 4+17 | 25
    assert (padded["labels"] != -100).sum() == (packed["labels"] != -100).sum() + len(docs)  # no label at a start
    model = tiny_model(mixer=["titans", "attention"]).double()
    torch.testing.assert_close(model(**packed).loss, model(**padded).loss, atol=1e-6, rtol=0)


def test_gpu_check_plumbing_on_cpu(tmp_path, monkeypatch):
    """scripts/gpu_check.sh's module at tiny sizes on CPU (--smoke: the Triton interpreter for the
    kernels): one JSON with every part; without a GPU and without --smoke it refuses by name."""
    import torch

    from evaluation.benchmarks import gpu_check

    monkeypatch.chdir(tmp_path)
    payload = gpu_check.main(["--smoke", "--parts", "kernels", "training", "--repeats", "1"])
    assert payload["command"].startswith("python -m evaluation.benchmarks.gpu_check --smoke")
    assert (tmp_path / "outputs" / "gpu_check_smoke_kernels.json").exists()
    parts = payload["parts"]
    assert parts["kernels"]["ok"] and parts["kernels"]["results"][0]["methods"]
    training = parts["training"]
    assert training["ok"] and set(training["models"]) == {"hope_titans", "llama"}
    assert training["hope_over_llama_tokens_per_s"] > 0
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            gpu_check.main([])

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM

from hope_hf import HopeForCausalLM, HopeModel
from hope_hf.modeling import ContinuumMemorySystem
from hope_hf.transformers_compat import CACHE_ARG, output_cache

from helpers import CONFIGS, random_ids, tiny_config, tiny_model, train_on_repeated_motif


def test_auto_classes_resolve_to_hope():
    config = tiny_config()
    assert isinstance(AutoModelForCausalLM.from_config(config), HopeForCausalLM)
    assert isinstance(AutoModel.from_config(config), HopeModel)


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_is_transformers_shifted_cross_entropy(name):
    model = tiny_model(**CONFIGS[name])
    ids = random_ids(2, 11)
    out = model(ids, labels=ids)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 101), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("name", CONFIGS)
def test_incremental_decoding_matches_full_forward(name):
    """Prefill (crossing chunk boundaries: chunk 4, prompt 7), then one token at a time."""
    model = tiny_model(**CONFIGS[name])
    ids = random_ids(2, 19)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        prefill = model(ids[:, :7], use_cache=True)
        cache, steps = output_cache(prefill), [prefill.logits]
        for t in range(7, 19):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_multi_token_continuation_matches_full_forward(name):
    """A cache continued by multi-token pieces (chunked prefill) lands on the same logits."""
    model = tiny_model(**CONFIGS[name])
    ids = random_ids(2, 23)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache, pieces = None, []
        for start, end in [(0, 5), (5, 6), (6, 15), (15, 23)]:
            out = model(ids[:, start:end], cache=cache, use_cache=True)
            cache = output_cache(out)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=0)


def test_titans_cache_is_constant_in_sequence_length():
    model = tiny_model(mixer="titans")
    sizes = []
    for length in (5, 40):
        with torch.no_grad():
            cache = output_cache(model(random_ids(1, length), use_cache=True))
        sizes.append(sum(t.numel() for layer in cache.layers for t in [*layer.conv_states.values(), *layer.recurrent_states.values()]))
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_generate_same_with_and_without_cache(name):
    model = tiny_model(**CONFIGS[name])
    prompt = random_ids(2, 6)
    with_cache = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    without_cache = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert with_cache.shape == (2, 18)
    assert torch.equal(with_cache, without_cache)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_cache_with_titans_layers_cannot_be_cropped(name):
    """A titans layer keeps only its last state, so crop (which transformers' assisted decoding uses to
    roll back a draft) cannot restore it: the cache says so after prefill. transformers refuses assisted
    decoding for Hope anyway (5.23-5.24: a stateful model; 5.25: no cache before the first forward)."""
    model = tiny_model(**CONFIGS[name])
    with torch.no_grad():
        cache = output_cache(model(random_ids(1, 6), use_cache=True))
    assert cache.is_croppable == all(kind == "full_attention" for kind in model.config.layer_types)
    with pytest.raises((ValueError, RuntimeError), match="stateful|Assisted decoding requires a cache"):
        model.generate(random_ids(1, 6), max_new_tokens=4, do_sample=False, assistant_model=tiny_model(**CONFIGS[name]))


@pytest.mark.parametrize("name", ["titans", "hybrid_sliding", "attention"])
def test_chunked_prefill_generates_what_one_prefill_does(name):
    """transformers' prefill_chunk_size (the prompt read in pieces through the cache), on a
    left-padded batch whose pieces cross the titans chunk boundaries (chunk 4, pieces of 7)."""
    model = tiny_model(**CONFIGS[name])
    prompt = random_ids(2, 30)
    mask = torch.ones_like(prompt)
    mask[1, :5] = 0
    whole = model.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False)
    pieces = model.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False, prefill_chunk_size=7)
    assert torch.equal(pieces, whole)


@pytest.mark.parametrize("name", CONFIGS)
def test_packed_rows_give_the_logits_and_gradients_of_their_sequences_alone(name):
    """Sequences packed into rows with position_ids that restart (as DataCollatorWithFlattening
    gives): titans memory and conv start afresh at every sequence, attention sees a block-diagonal
    mask. Two rows of different splits, lengths that cross the chunk (4) anywhere; fp64."""
    model = tiny_model(**CONFIGS[name]).double()
    splits = [[5, 11, 7], [1, 13, 9]]
    docs = [[random_ids(1, n) for n in row] for row in splits]
    ids = torch.cat([torch.cat(row, 1) for row in docs])
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in splits])
    weights = torch.randn(2, 23, model.config.vocab_size, dtype=torch.float64)

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    packed = model(ids, position_ids=positions).logits  # eval mode: the cache is left out for packed rows
    packed_grads = gradients((packed * weights).sum())
    alone = torch.cat([torch.cat([model(d, use_cache=False).logits for d in row], 1) for row in docs])
    alone_grads = gradients((alone * weights).sum())
    torch.testing.assert_close(packed, alone, atol=1e-12, rtol=0)
    for n, g in alone_grads.items():
        torch.testing.assert_close(packed_grads[n], g, atol=1e-11, rtol=0, msg=n)
    with pytest.raises(ValueError, match="use_cache=False"):
        model(ids, position_ids=positions, use_cache=True)


@pytest.mark.parametrize("name", ["titans", "hybrid"])
def test_generate_continues_from_a_filled_cache(name):
    """New tokens only, with a mask over the cached and new tokens (the form transformers continues
    from for every cache: from 5.24 it does not cut the tokens already cached off the input when all
    layers are recurrent): the same scores as generating from the whole sequence."""
    model = tiny_model(**CONFIGS[name])
    document, question = random_ids(1, 21), random_ids(1, 3)
    with torch.no_grad():
        cache = output_cache(model(document, use_cache=True))
    kwargs = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True)
    mask = torch.ones(1, 24, dtype=torch.long)
    continued = model.generate(question, attention_mask=mask, **{CACHE_ARG: cache}, **kwargs)
    whole = model.generate(torch.cat([document, question], 1), **kwargs)
    torch.testing.assert_close(torch.stack(continued.scores), torch.stack(whole.scores), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_left_padded_batch_gives_each_rows_unpadded_result(name):
    model = tiny_model(**CONFIGS[name])
    long_row, short_row = random_ids(1, 10), random_ids(1, 3)
    batch = torch.cat([long_row, torch.cat([torch.zeros(1, 7, dtype=torch.long), short_row], 1)])
    mask = torch.ones_like(batch)
    mask[1, :7] = 0
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        torch.testing.assert_close(logits[0], model(long_row).logits[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(logits[1, 7:], model(short_row).logits[0], atol=1e-4, rtol=0)
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=9, do_sample=False)
    alone_long = model.generate(long_row, max_new_tokens=9, do_sample=False)
    alone_short = model.generate(short_row, max_new_tokens=9, do_sample=False)
    assert torch.equal(generated[0, 10:], alone_long[0, 10:])
    assert torch.equal(generated[1, 10:], alone_short[0, 3:])


@pytest.mark.parametrize("name", ["titans", "hybrid"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    model = tiny_model(**CONFIGS[name]).train()
    ids = random_ids(2, 13)

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = grads()
    assert model.model.layers[0]._gradient_checkpointing_func is not None
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for n in plain:
        torch.testing.assert_close(plain[n], checkpointed[n], atol=1e-6, rtol=1e-5, msg=n)


def test_tied_word_embeddings():
    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    untied = tiny_model(tie_word_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_cms_variants_compute_their_equations():
    x = torch.randn(2, 5, 16)
    levels = [{"intermediate_size": 24, "update_period": 1}, {"intermediate_size": 8, "update_period": 16}]
    seq = ContinuumMemorySystem(16, levels, "sequential", "silu", 1e-6)
    z1 = seq.levels[0](x)
    torch.testing.assert_close(seq(x), z1 + seq.levels[1](seq.norms[0](z1)))  # Eq 73
    ind = ContinuumMemorySystem(16, levels, "independent", "silu", 1e-6)
    with torch.no_grad():
        ind.level_weights.copy_(torch.tensor([0.3, -2.0]))
    torch.testing.assert_close(ind(x), 0.3 * ind.levels[0](x) - 2.0 * ind.levels[1](x))  # Eq 74
    nested = ContinuumMemorySystem(16, levels, "nested", "silu", 1e-6)
    nested.load_state_dict(seq.state_dict())
    torch.testing.assert_close(nested(x), seq(x))  # Eq 72 changes the learning rule, not the forward
    assert seq.update_periods == [1, 16]


@pytest.mark.parametrize("name", ["titans", "hybrid"])
def test_training_reduces_loss_and_outputs_stay_finite(name):
    model = tiny_model(**CONFIGS[name]).train()
    losses = train_on_repeated_motif(model, torch.optim.AdamW(model.parameters(), lr=3e-3), steps=30)
    assert losses[-1] < 0.7 * losses[0]
    with torch.no_grad():
        logits = model.eval()(random_ids(1, 1500)).logits
    assert torch.isfinite(logits).all()


def test_left_padded_training_batch_backpropagates_like_unpadded_rows():
    model = tiny_model(mixer="titans").train()
    long_row, short_row = random_ids(1, 9), random_ids(1, 5)
    batch = torch.cat([long_row, torch.cat([torch.zeros(1, 4, dtype=torch.long), short_row], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    logits = model(batch, attention_mask=mask).logits
    (logits[0].sum() + logits[1, 4:].sum()).backward()
    padded_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (model(long_row).logits.sum() + model(short_row).logits.sum()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(padded_grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", ["titans", "hybrid"])
def test_bf16_model_runs_with_fp32_memory_state(name):
    model = tiny_model(**CONFIGS[name]).to(torch.bfloat16)
    ids = random_ids(2, 13)
    with torch.no_grad():
        out = model(ids, use_cache=True)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    titans_layer = CONFIGS[name]["mixer"].index("titans") if isinstance(CONFIGS[name]["mixer"], list) else 0
    assert output_cache(out).get_recurrent_state(titans_layer).dtype == torch.float32
    assert model.generate(ids[:, :5], max_new_tokens=6, do_sample=False).shape == (2, 11)


@pytest.mark.parametrize("name", ["titans", "hybrid"])
def test_bf16_autocast_training_step_keeps_the_recurrence_in_fp32(name):
    """Mixed precision as accelerate applies it (autocast): the titans op runs outside autocast,
    so its hand-written backward sees fp32 throughout; gradients are finite and close to fp32's."""
    model = tiny_model(**CONFIGS[name]).train()
    ids = random_ids(2, 13)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            loss = model(ids, labels=ids).loss
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.isfinite(grads[1]).all()
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def each_row_alone(mixer, projected, conv_state, state, seen, mask):
    """The oracle for the ragged path: row b's real tokens alone, through the conv and the op at
    the row's chunk phase, from the row's own states."""
    B, T, _ = projected.shape
    o = projected.new_zeros(B, T, mixer.num_heads, mixer.head_dim)
    conv_states, states = [], []
    for b in range(B):
        idx = mask[b].nonzero().squeeze(-1)
        row_conv, row_state = conv_state[b : b + 1], state[b : b + 1]
        if idx.numel() > 0:
            mixed, row_conv = mixer._conv(projected[b : b + 1, idx], row_conv)
            o_b, row_state = mixer._run_memory(mixed, row_state, chunk_offset=int(seen[b]) % mixer.chunk_size)
            o[b, idx] = o_b[0]
        conv_states.append(row_conv)
        states.append(row_state)
    return o, torch.cat(conv_states), torch.cat(states)


@pytest.mark.parametrize("name", ["titans", "titans_static", "titans_value_input", "titans_deep"])
def test_ragged_batch_equals_each_row_alone_at_different_chunk_phases(name):
    """The titans mixer's one path for ragged batches (every row one sequence of the op's
    cu_seqlens, at its own chunk phase) against each row alone: rows at phases 0, 1, 3 and 2 of
    chunk 4 in the cache, left, right and both-sided padding, a hole, an empty row; outputs,
    conv and recurrent states and the gradients (fp64)."""
    model = tiny_model(**CONFIGS[name]).double()
    mixer = model.model.layers[0].mixer
    B, T, width = 5, 11, mixer.conv1d.in_channels
    projected = torch.randn(B, T, width, dtype=torch.float64, requires_grad=True)
    conv_state = torch.randn(B, width, mixer.conv1d.kernel_size[0] - 1, dtype=torch.float64)
    state = 0.1 * torch.randn(B, mixer.num_heads, 2, *mixer.initial_state.shape[1:], dtype=torch.float64)
    if not mixer.self_referential:
        state[:, :, 1] = mixer.initial_state.detach()
    seen = torch.tensor([8, 5, 7, 2, 6])  # phases 0, 1, 3, 2, 2
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :6] = 0  # left padding: 5 tokens
    mask[2, :2] = 0
    mask[2, 9:] = 0  # both sides: 7 tokens
    mask[3] = 0  # nothing new
    mask[4, 3:5] = 0  # a hole
    weights = None
    results = []
    for path in (mixer._ragged, lambda *a: each_row_alone(mixer, *a)):
        out = path(projected, conv_state, state, seen, mask, *([None] if path == mixer._ragged else []))
        weights = weights or [torch.randn_like(x) for x in out]
        grad = torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, out)), projected)[0]
        results.append((out, grad))
    (out_ragged, grad_ragged), (out_rows, grad_rows) = results
    for label, a, b in zip(("o", "conv_state", "state"), out_ragged, out_rows):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"{label}: {m}")
    torch.testing.assert_close(grad_ragged, grad_rows, atol=1e-10, rtol=0)


def test_left_padded_generation_continues_rows_at_different_phases():
    """Prefill a left-padded batch (rows end at different chunk phases), then a multi-token
    continuation through the cache: each row as if alone."""
    model = tiny_model(mixer="titans")
    rows = [random_ids(1, n) for n in (9, 6, 3)]
    more = random_ids(3, 5)
    batch = torch.cat([torch.cat([torch.zeros(1, 9 - r.shape[1], dtype=torch.long), r], 1) for r in rows])
    mask = (torch.arange(9)[None] >= torch.tensor([0, 3, 6])[:, None]).long()
    with torch.no_grad():
        cache = output_cache(model(batch, attention_mask=mask, use_cache=True))
        logits = model(more, attention_mask=torch.cat([mask, torch.ones(3, 5, dtype=torch.long)], 1), cache=cache,
                       use_cache=True).logits
        for b, row in enumerate(rows):
            alone = model(torch.cat([row, more[b : b + 1]], 1), use_cache=False).logits[0, -5:]
            torch.testing.assert_close(logits[b], alone, atol=1e-4, rtol=0)



def cache_tensors(cache) -> dict:
    """Every tensor a HopeCache holds, by name (keys/values, conv/recurrent states, tokens seen per row)."""
    tensors = {"row_tokens_seen": cache.row_tokens_seen}
    for i, layer in enumerate(cache.layers):
        for attr in ("keys", "values"):
            if getattr(layer, attr, None) is not None:
                tensors[f"{i}.{attr}"] = getattr(layer, attr)
        for attr in ("conv_states", "recurrent_states"):
            for k, t in getattr(layer, attr, {}).items():
                tensors[f"{i}.{attr}.{k}"] = t
    return tensors


def left_padded_batch(lengths=(9, 6, 3)):
    """A left-padded batch whose rows end at different chunk phases, and its mask."""
    width = max(lengths)
    batch = torch.cat([torch.cat([torch.zeros(1, width - n, dtype=torch.long), random_ids(1, n)], 1) for n in lengths])
    mask = (torch.arange(width)[None] >= torch.tensor([width - n for n in lengths])[:, None]).long()
    return batch, mask


def prefill(model, batch, mask):
    return output_cache(model(batch, attention_mask=mask, use_cache=True))


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_cache_batch_select_and_repeat_move_every_state(name):
    """batch_select_indices / batch_repeat_interleave act on every tensor of the cache (the titans
    layers' conv and recurrent states and the tokens seen per row too), and the cache they leave
    continues its rows as the whole batch's cache does."""
    model = tiny_model(**CONFIGS[name])
    batch, mask = left_padded_batch()
    more = random_ids(3, 5)
    full_mask = torch.cat([mask, torch.ones(3, 5, dtype=torch.long)], 1)
    whole = prefill(model, batch, mask)
    before = {k: t.clone() for k, t in cache_tensors(whole).items()}
    assert any("recurrent" in k or "keys" in k for k in before)
    expected = model(more, attention_mask=full_mask, cache=whole, use_cache=True).logits

    pick = torch.tensor([2, 0])
    selected = prefill(model, batch, mask)
    selected.batch_select_indices(pick)
    after = cache_tensors(selected)
    assert after.keys() == before.keys()
    for k, t in before.items():
        assert torch.equal(after[k], t[pick]), k
    logits = model(more[pick], attention_mask=full_mask[pick], cache=selected, use_cache=True).logits
    torch.testing.assert_close(logits, expected[pick], atol=1e-5, rtol=0)

    repeated = prefill(model, batch, mask)
    repeated.batch_repeat_interleave(2)
    after = cache_tensors(repeated)
    assert after.keys() == before.keys()
    for k, t in before.items():
        assert torch.equal(after[k], t.repeat_interleave(2, dim=0)), k
    logits = model(more.repeat_interleave(2, 0), attention_mask=full_mask.repeat_interleave(2, 0), cache=repeated,
                   use_cache=True).logits
    torch.testing.assert_close(logits, expected.repeat_interleave(2, 0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_cache_detach_cuts_the_history_of_every_state(name):
    model = tiny_model(**CONFIGS[name])
    batch, mask = left_padded_batch()
    cache = prefill(model, batch, mask)  # with autograd on: the states carry the graph
    grads = {k for k, t in cache_tensors(cache).items() if t.grad_fn is not None}
    assert any("recurrent" in k for k in grads) or any("keys" in k for k in grads)
    values = {k: t.clone() for k, t in cache_tensors(cache).items()}
    assert cache.detach() is cache
    for k, t in cache_tensors(cache).items():
        assert t.grad_fn is None and not t.requires_grad, k
        assert torch.equal(t, values[k]), k


@pytest.mark.parametrize("name", CONFIGS)
def test_beam_search_continues_from_a_selected_and_repeated_cache(name):
    """A batch's cache cut to one row (batch_select_indices) and repeated for the beams
    (batch_repeat_interleave; generate() does not expand a cache it is given): beam search on
    the new tokens only finds the beams of beam search on the row's whole sequence."""
    model = tiny_model(**CONFIGS[name])
    rows, question = random_ids(2, 21), random_ids(1, 3)
    with torch.no_grad():
        cache = output_cache(model(rows, use_cache=True))
    cache.batch_select_indices(torch.tensor([1]))
    cache.batch_repeat_interleave(3)
    kwargs = dict(max_new_tokens=5, do_sample=False, num_beams=3, num_return_sequences=3)
    continued = model.generate(question, attention_mask=torch.ones(1, 24, dtype=torch.long), **{CACHE_ARG: cache}, **kwargs)
    whole = model.generate(torch.cat([rows[1:], question], 1), **kwargs)
    assert torch.equal(continued[:, 3:], whole[:, 24:])


@pytest.mark.parametrize("name", ["titans", "attention", "hybrid"])
@torch.no_grad()
def test_cache_drop_padding_after_leaves_the_cache_of_the_unpadded_row(name):
    """A right-padded row, cut out of its batch's cache and with the padding positions dropped,
    continues as the cache of the row read alone (tokens seen, positions and every state)."""
    model = tiny_model(**CONFIGS[name])
    batch = random_ids(2, 9)
    mask = torch.ones_like(batch)
    mask[1, 5:] = 0
    more = random_ids(1, 4)
    cache = prefill(model, batch, mask)
    cache.batch_select_indices(torch.tensor([1]))
    cache.drop_padding_after(5)
    alone = prefill(model, batch[1:, :5], None)
    assert cache.get_seq_length() == alone.get_seq_length() == 5 and cache.positions_seen == 5
    for k, t in cache_tensors(alone).items():
        torch.testing.assert_close(cache_tensors(cache)[k], t, atol=1e-5, rtol=0, msg=k)
    continued = model(more, attention_mask=torch.ones(1, 9, dtype=torch.long), cache=cache, use_cache=True).logits
    torch.testing.assert_close(continued, model(more, cache=alone, use_cache=True).logits, atol=1e-5, rtol=0)


LAYERS = ["ops", "configuration", "modeling", "optim", "training"]  # each may import only those before it
FORBIDDEN = {package: set(LAYERS[i + 1 :]) | {"test_time", "evaluation"} for i, package in enumerate(LAYERS)}
FORBIDDEN["training"] = {"evaluation"}
FORBIDDEN["test_time"] = {"training", "evaluation"}  # test_time: modeling and optim


def test_subpackages_import_only_the_layers_below_them():
    """ops <- configuration <- modeling <- optim <- training; test_time imports modeling and optim,
    never training; modeling never imports test_time (every import, module level or not)."""
    import ast
    from pathlib import Path

    import hope_hf

    root = Path(hope_hf.__file__).parent
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        package = parts[0] if len(parts) > 1 else None
        if package is None:
            continue
        forbidden = FORBIDDEN.get(package, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the module's package
                    base = list(parts[:-1])[: len(parts) - node.level]
                    target = base + (node.module.split(".") if node.module else [])
                else:
                    target = node.module.split(".")[1:] if node.module.split(".")[0] == "hope_hf" else []
                names = [target] if target else []
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "hope_hf"]
            else:
                continue
            for target in names:
                assert not target or target[0] not in forbidden, f"{path.relative_to(root)} imports hope_hf.{'.'.join(target)}"

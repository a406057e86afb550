"""The two-layer main memory (titans_memory_depth=2): the chunk-parallel path held to the
token-by-token reference in fp64, outputs and every gradient; the reference's update held to
autograd's gradient of the memory's loss."""

import pytest
import torch
import torch.nn.functional as F

from hope_hf.ops.deep_memory import chunk_deep_self_referential_rule, deep_state_width, naive_deep_self_referential_rule
from hope_hf.ops.deep_memory.chunk import deep_memory_chunk
from hope_hf.ops.deep_memory.common import memory_gradients, mlp_memory, split_state

B, H, D = 2, 2, 8


def make_inputs(T, value_input=False, chunk_state=True):
    normal = lambda: F.normalize(torch.randn(B, T, H, D, dtype=torch.float64), dim=-1)  # noqa: E731
    state = 0.3 * torch.randn(B, H, D, deep_state_width(D), dtype=torch.float64)
    tensors = {"u": normal(), "q": normal(), "b_eta": torch.randn(H, dtype=torch.float64),
               "b_alpha": torch.randn(H, dtype=torch.float64) + 2, "initial_state": state}
    if chunk_state:
        tensors["initial_chunk_state"] = state + 0.1 * torch.randn_like(state)
    if value_input:
        tensors["v"] = normal()
    return {name: t.requires_grad_() for name, t in tensors.items()}


def outputs_and_gradients(kernel, tensors, **options):
    torch.manual_seed(99)
    out = kernel(**tensors, **options)
    loss = sum((x * torch.randn_like(x)).sum() for x in out)
    return out, torch.autograd.grad(loss, list(tensors.values()))


@pytest.mark.parametrize("T, chunk_size, chunk_offset", [(1, 4, 0), (7, 4, 3), (21, 5, 2), (33, 16, 0)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("value_input", [False, True])
def test_chunk_matches_reference_fp64(T, chunk_size, chunk_offset, padded, value_input):
    tensors = make_inputs(T, value_input)
    options = {"chunk_size": chunk_size, "chunk_offset": chunk_offset, "eta_max": 0.8}
    if padded:
        mask = torch.ones(B, T, dtype=torch.long)
        mask[0, T - T // 3 :] = 0
        mask[1, : T // 4] = 0
        options.update(attention_mask=mask, row_ends=torch.tensor([T - T // 3, T]))
    out_ref, grads_ref = outputs_and_gradients(naive_deep_self_referential_rule, tensors, **options)
    out_chunk, grads_chunk = outputs_and_gradients(chunk_deep_self_referential_rule, tensors, **options)
    for name, a, b in zip(("o", "state", "chunk_state"), out_chunk, out_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(tensors, grads_chunk, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("options", [{"detach_values": True}, {"normalize_values": False}])
def test_chunk_matches_reference_with_value_options(options):
    tensors = make_inputs(19)
    out_ref, grads_ref = outputs_and_gradients(naive_deep_self_referential_rule, tensors, chunk_size=6, **options)
    out_chunk, grads_chunk = outputs_and_gradients(chunk_deep_self_referential_rule, tensors, chunk_size=6, **options)
    for a, b in zip([*out_chunk, *grads_chunk], [*out_ref, *grads_ref]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_memory_gradients_are_the_gradient_of_the_memory_loss():
    """grad_W1 = k^T g and grad_W2 = a^T e against autograd on 1/2 |M_W(k) - target|^2, per token."""
    k, target = torch.randn(3, 1, D, dtype=torch.float64), torch.randn(3, 1, D, dtype=torch.float64)
    w1 = torch.randn(3, D, D, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, D, D, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * (mlp_memory(k, w1, w2) - target).pow(2).sum()
    grad_w1, grad_w2 = torch.autograd.grad(loss, (w1, w2))
    hidden, error, g = memory_gradients(k, target, w1, w2)
    torch.testing.assert_close(k.transpose(-1, -2) @ g, grad_w1, atol=1e-12, rtol=0)
    torch.testing.assert_close(hidden.transpose(-1, -2) @ error, grad_w2, atol=1e-12, rtol=0)


@pytest.mark.parametrize("split", [1, 5, 13])
def test_split_sequence_continues_exactly(split):
    """Run a sequence in two calls, the second from the first's states at chunk_offset = split mod C."""
    tensors = {n: t.detach() for n, t in make_inputs(24, chunk_state=False).items()}
    whole = chunk_deep_self_referential_rule(**tensors, chunk_size=8)
    u, q = tensors.pop("u"), tensors.pop("q")
    o1, state, chunk_state = chunk_deep_self_referential_rule(u[:, :split], q[:, :split], **tensors, chunk_size=8)
    tensors.pop("initial_state")
    o2, state2, chunk_state2 = chunk_deep_self_referential_rule(
        u[:, split:], q[:, split:], **tensors, initial_state=state, initial_chunk_state=chunk_state, chunk_size=8,
        chunk_offset=split % 8)
    torch.testing.assert_close(torch.cat([o1, o2], 1), whole[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(state2, whole[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(chunk_state2, whole[2], atol=1e-12, rtol=0)


def test_a_memory_that_starts_as_the_identity_learns():
    """W2 = 0 (M(x) = x at the start) with W1 != 0: the first token's gradient reaches W2, so the
    memory leaves the identity (W1 = W2 = 0 would be a fixed point)."""
    tensors = {n: t.detach() for n, t in make_inputs(2, chunk_state=False).items()}
    tensors["initial_state"][..., 3 * D + 2 :] = 0
    o, state, _ = naive_deep_self_referential_rule(**tensors, chunk_size=1)
    assert state[..., 3 * D + 2 :].abs().amax() > 1e-3


def test_each_token_writes_its_association_at_the_full_rate():
    """W2 = 0 (so W1 does not move), eta = alpha = 1, five tokens in a chunk of 64: reading each
    token's key right after its write returns its unit value exactly. W2 learns by a delta rule
    with unit keys; at eta / C it would return k + (v - k) / 64."""
    k, v = (F.normalize(torch.randn(B, H, 5, D, dtype=torch.float64), dim=-1) for _ in range(2))
    w1, w2 = torch.randn(B, H, D, D, dtype=torch.float64), torch.zeros(B, H, D, D, dtype=torch.float64)
    ones = torch.ones(B, H, 5, dtype=torch.float64)
    o, (w1_after, _) = deep_memory_chunk(k, k, v, ones, ones, (w1, w2), (w1, w2), chunk_size=64)
    torch.testing.assert_close(w1_after, w1, atol=1e-12, rtol=0)
    torch.testing.assert_close(o, v, atol=1e-10, rtol=0)


def test_long_input_stays_finite_and_bounded():
    """8,192 tokens, eta near its maximum and slow decays (alpha 0.99, 0.999): outputs and state
    finite, outputs bounded (seen over 70 seeds: at most 2.8), the MLP's weights bounded (seen: W1
    at most 0.41, W2 at most 1.8; the linear memories' columns, shared with the linear op, reached
    32), still reading."""
    T = 8192
    u, q = (F.normalize(torch.randn(1, T, H, D), dim=-1) for _ in range(2))
    state = torch.randn(1, H, D, deep_state_width(D)) / D**0.5
    with torch.no_grad():
        o, final, _ = chunk_deep_self_referential_rule(u, q, torch.randn(H) + 3.0, torch.tensor([4.6, 6.9]), state, 64)
    _, w1, w2 = split_state(final)
    assert torch.isfinite(o).all() and torch.isfinite(final).all()
    assert o.abs().max() < 10 and w1.abs().max() < 5 and w2.abs().max() < 5
    assert o[0, -100:].abs().mean() > 0.1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(initial_state=a["initial_state"][..., :-1]), "must have 34 columns"),
        (lambda a: a.update(self_referential=False), "needs self_referential=True"),
        (lambda a: a.update(chunk_size=0), "chunk_size must be an int >= 1"),
        (lambda a: a.update(q=a["q"][..., :-1]), "q must have the shape of u"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    args = {n: t.detach() for n, t in make_inputs(5, chunk_state=False).items()}
    args["chunk_size"] = 4
    change(args)
    for kernel in (naive_deep_self_referential_rule, chunk_deep_self_referential_rule):
        with pytest.raises((ValueError, TypeError), match=message):
            kernel(**args)

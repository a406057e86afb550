"""The chunked torch path and the fla bridge held to the token-by-token reference."""

import pytest
import torch
import torch.nn.functional as F
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

from hope_hf.ops import (
    chunk_self_referential_gated_delta_rule,
    fla_self_referential_gated_delta_rule,
    naive_self_referential_gated_delta_rule,
    self_referential_gated_delta_rule,
    state_width,
)
from hope_hf.ops.self_referential.common import memory_slices, memory_targets, project

B, H, D = 2, 2, 8


def make_inputs(T, dtype=torch.float64, with_state=True, state_scale=0.2):
    u = F.normalize(torch.randn(B, T, H, D, dtype=dtype), dim=-1)
    q = F.normalize(torch.randn(B, T, H, D, dtype=dtype), dim=-1)
    b_eta = torch.randn(H, dtype=dtype)
    b_alpha = torch.randn(H, dtype=dtype) + 2.0
    if with_state:
        state = state_scale * torch.randn(B, H, D, state_width(D), dtype=dtype)
    else:
        state = torch.zeros(B, H, D, state_width(D), dtype=dtype)
    return [x.requires_grad_() for x in (u, q, b_eta, b_alpha, state)]


def padding_mask(T):
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, T - T // 3 :] = 0  # right padding
    mask[1, : T // 4] = 0  # left padding
    return mask


def loss_of(outputs):
    """A scalar that touches every output with fresh random weights."""
    return sum((x * torch.randn_like(x)).sum() for x in outputs)


def assert_close_with_grads(fn_a, fn_b, inputs, atol):
    torch.manual_seed(1234)
    out_a = fn_a(*inputs)
    loss_a = loss_of(out_a)
    grads_a = torch.autograd.grad(loss_a, inputs)
    torch.manual_seed(1234)
    out_b = fn_b(*inputs)
    loss_b = loss_of(out_b)
    grads_b = torch.autograd.grad(loss_b, inputs)
    for name, a, b in zip(("o", "final_state", "chunk_state"), out_a, out_b):
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(("u", "q", "b_eta", "b_alpha", "initial_state"), grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("T", [1, 7, 64, 100, 257])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_matches_reference_fp64(T, chunk_size, padded, with_state):
    inputs = make_inputs(T, with_state=with_state)
    mask = padding_mask(T) if padded else None

    def run(kernel):
        return lambda u, q, be, ba, s: kernel(u, q, be, ba, s, chunk_size, 0.9, attention_mask=mask)

    assert_close_with_grads(
        run(naive_self_referential_gated_delta_rule), run(chunk_self_referential_gated_delta_rule), inputs, 1e-10
    )


@pytest.mark.parametrize("self_referential", [True, False])
@pytest.mark.parametrize("chunk_offset", [0, 5])
def test_chunk_matches_reference_with_chunk_state_and_offset(self_referential, chunk_offset):
    T, chunk_size = 45, 16
    u, q, be, ba, state = make_inputs(T)
    chunk_state = (0.2 * torch.randn_like(state)).requires_grad_()
    mask = padding_mask(T)

    def run(kernel):
        return lambda u, q, be, ba, s: kernel(
            u, q, be, ba, s, chunk_size, 1.0, chunk_state, chunk_offset, mask, self_referential, True
        )

    assert_close_with_grads(
        run(naive_self_referential_gated_delta_rule),
        run(chunk_self_referential_gated_delta_rule),
        [u, q, be, ba, state],
        1e-10,
    )


@pytest.mark.parametrize("split", [1, 9, 16, 30])
def test_split_sequence_continues_exactly(split):
    """Running [0, split) then [split, T) with the returned states equals one call."""
    T, chunk_size = 41, 16
    u, q, be, ba, state = (x.detach() for x in make_inputs(T))
    kernel = chunk_self_referential_gated_delta_rule
    o_full, s_full, c_full = kernel(u, q, be, ba, state, chunk_size)
    o1, s1, c1 = kernel(u[:, :split], q[:, :split], be, ba, state, chunk_size)
    o2, s2, c2 = kernel(u[:, split:], q[:, split:], be, ba, s1, chunk_size, 1.0, c1, split % chunk_size)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_full, atol=1e-12, rtol=0)
    torch.testing.assert_close(s2, s_full, atol=1e-12, rtol=0)
    torch.testing.assert_close(c2, c_full, atol=1e-12, rtol=0)


def test_chunk_size_at_least_length_equals_static_projections():
    """With one chunk covering the sequence, self-reference only ever uses the initial state."""
    T = 30
    u, q, be, ba, state = (x.detach() for x in make_inputs(T))
    o_sr, s_sr, _ = chunk_self_referential_gated_delta_rule(u, q, be, ba, state, 64)
    o_static, s_static, _ = chunk_self_referential_gated_delta_rule(u, q, be, ba, state, 8, self_referential=False)
    torch.testing.assert_close(o_sr, o_static, atol=1e-12, rtol=0)
    torch.testing.assert_close(s_sr, s_static, atol=1e-12, rtol=0)


def test_static_projections_match_fla_naive_gated_delta_rule():
    """self_referential=False is one gated delta rule: compare with fla's reference through the
    mapping g = log(alpha), beta = eta / alpha, v' = alpha * w."""
    T = 50
    u, q, be, ba, state = (x.detach().float() for x in make_inputs(T, with_state=True))
    mask = padding_mask(T)
    o, final, _ = chunk_self_referential_gated_delta_rule(
        u, q, be, ba, state, 16, 0.8, attention_mask=mask, self_referential=False
    )
    k, v, eta, alpha = project(u.transpose(1, 2), state, be, ba, 0.8, mask)
    w = memory_targets(k, v, state)
    to_fla = lambda x: x.transpose(1, 2)
    o_fla, final_fla = naive_recurrent_gated_delta_rule(
        q=q, k=to_fla(k), v=to_fla(alpha[..., None] * w), beta=to_fla(eta / alpha), g=to_fla(alpha.log()),
        scale=1.0, initial_state=state, output_final_state=True,
    )
    mem = memory_slices(D)["memory"]
    torch.testing.assert_close(o, q + o_fla[..., mem], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(final, final_fla, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("self_referential", [True, False])
@pytest.mark.parametrize("value_options", [{}, {"normalize_values": False}, {"v": "separate"}], ids=["default", "raw-v", "v-input"])
def test_fla_bridge_mapping_with_fla_reference_kernel(self_referential, value_options):
    """The CUDA path's per-chunk plumbing, run on CPU with fla's torch reference as the kernel."""
    T, chunk_size = 37, 8
    u, q, be, ba, state = (x.detach().float() for x in make_inputs(T))
    if "v" in value_options:
        value_options = {"v": F.normalize(torch.randn_like(u), dim=-1)}
    mask = padding_mask(T)
    expected = naive_self_referential_gated_delta_rule(
        u, q, be, ba, state, chunk_size, attention_mask=mask, self_referential=self_referential, **value_options
    )
    got = fla_self_referential_gated_delta_rule(
        u, q, be, ba, state, chunk_size, attention_mask=mask, self_referential=self_referential,
        gated_delta_rule_fn=naive_recurrent_gated_delta_rule, **value_options
    )
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_padding_leaves_state_untouched():
    T = 20
    u, q, be, ba, state = (x.detach() for x in make_inputs(T))
    mask = torch.zeros(B, T, dtype=torch.long)
    o, final, chunk = chunk_self_referential_gated_delta_rule(u, q, be, ba, state, 8, attention_mask=mask)
    torch.testing.assert_close(final, state, atol=0, rtol=0)
    torch.testing.assert_close(chunk, state, atol=0, rtol=0)


def test_bf16_inputs_keep_fp32_state():
    T = 33
    u, q, be, ba, state = (x.detach() for x in make_inputs(T, dtype=torch.float32))
    o, final = self_referential_gated_delta_rule(u.bfloat16(), q.bfloat16(), be, ba, initial_state=state,
                                                 chunk_size=16, output_final_state=True)
    assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
    final = final[:, :, 0]
    o_ref, final_ref, _ = naive_self_referential_gated_delta_rule(u.bfloat16(), q.bfloat16(), be, ba, state, 16)
    torch.testing.assert_close(o.float(), o_ref.float(), atol=2e-2, rtol=0)
    torch.testing.assert_close(final, final_ref, atol=1e-4, rtol=0)


def test_state_stays_bounded_over_long_inputs():
    """Self-generated targets feed the state back into its own update; normalised u, v and a
    bounded eta keep it finite (docs/design.md, "Stability")."""
    T = 2000
    u, q, be, ba, state = (x.detach() for x in make_inputs(T, dtype=torch.float32, state_scale=1.0))
    be = be + 3.0  # eta near eta_max
    for chunk_size in (1, 8, 64):
        o, final, _ = chunk_self_referential_gated_delta_rule(u[:1], q[:1], be, ba, state[:1], chunk_size)
        assert torch.isfinite(o).all() and torch.isfinite(final).all()
        assert final.abs().max() < 1e3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(u=a["u"][..., :-1]), "q must have the shape of u"),
        (lambda a: a.update(v=a["u"][:, :-1]), "v must have the shape of u"),
        (lambda a: a.update(v=a["u"].long()), "v must be a floating-point tensor"),
        (lambda a: a.update(initial_state=a["initial_state"][..., :-1]), "initial_state must have shape"),
        (lambda a: a.update(b_eta=a["b_eta"][:1]), "b_eta must have shape"),
        (lambda a: a.update(chunk_size=0), "chunk_size must be an int >= 1"),
        (lambda a: a.update(chunk_offset=16), "chunk_offset must be in"),
        (lambda a: a.update(attention_mask=torch.ones(B, 3)), "attention_mask must have shape"),
        (lambda a: a.update(u=a["u"].long(), q=a["q"].long()), "u must be a floating-point tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    u, q, be, ba, state = (x.detach() for x in make_inputs(10))
    args = dict(u=u, q=q, b_eta=be, b_alpha=ba, initial_state=state, chunk_size=16)
    change(args)
    with pytest.raises((ValueError, TypeError), match=message):
        chunk_self_referential_gated_delta_rule(**args)


def test_fla_bridge_takes_cu_seqlens_as_the_cuda_dispatch_does():
    """With cu_seqlens the CUDA dispatch runs the fla bridge on the sequences as padded rows; on CPU
    with fla's torch reference as the kernel it gives each sequence's reference result, continued
    at its own chunk phase from its own running and chunk-start states."""
    import functools

    from hope_hf.ops.self_referential import _varlen

    lengths, chunk_size, offsets = [7, 3, 12], 4, torch.tensor([1, 0, 3])
    T = sum(lengths)
    u, q, be, ba, _ = (x.detach().float() for x in make_inputs(T))
    u, q = u[:1], q[:1]
    state, chunk_state = (0.2 * torch.randn(len(lengths), H, D, state_width(D)) for _ in range(2))
    cu_seqlens = torch.tensor([0, 7, 10, 22])
    bridge = functools.partial(fla_self_referential_gated_delta_rule, gated_delta_rule_fn=naive_recurrent_gated_delta_rule)
    o, final, final_chunk = _varlen(bridge, u, q, be, ba, state, chunk_state, chunk_size, 1.0, offsets, cu_seqlens)
    for n, (a, b) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:])):
        o_n, final_n, chunk_n = naive_self_referential_gated_delta_rule(
            u[:, a:b], q[:, a:b], be, ba, state[n : n + 1], chunk_size, 1.0, chunk_state[n : n + 1], int(offsets[n]))
        torch.testing.assert_close(o[:, a:b], o_n, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(final[n : n + 1], final_n, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(final_chunk[n : n + 1], chunk_n, atol=2e-5, rtol=1e-4)

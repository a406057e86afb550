"""The chunk path's hand-written backward (ChunkScan) and the ``row_ends`` argument, held to
the token-by-token reference in fp64 and to torch.autograd.gradcheck."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from hope_hf.ops import (chunk_self_referential_gated_delta_rule, naive_self_referential_gated_delta_rule, state_width,
                         use_compiled_chunks)
from hope_hf.ops.self_referential.chunk import ChunkScan, delta_rule_chunk
from hope_hf.ops.self_referential.common import scan_chunks
from helpers import requires_cpp_compiler

B, H, D = 3, 2, 4


def make_inputs(T, dtype=torch.float64):
    u = F.normalize(torch.randn(B, T, H, D, dtype=dtype), dim=-1)
    q = F.normalize(torch.randn(B, T, H, D, dtype=dtype), dim=-1)
    b_eta, b_alpha = torch.randn(H, dtype=dtype), torch.randn(H, dtype=dtype) + 2.0
    state = 0.3 * torch.randn(B, H, D, state_width(D), dtype=dtype)
    chunk_state = 0.3 * torch.randn_like(state)
    return [x.requires_grad_() for x in (u, q, b_eta, b_alpha, state, chunk_state)]


def ragged_mask(T):
    """Row 0 full, row 1 left-padded, row 2 padded on both sides (as the titans mixer aligns rows)."""
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :2] = 0
    mask[2, T - 6 :] = 0
    return mask


@pytest.mark.parametrize("self_referential", [True, False])
@pytest.mark.parametrize("detach_values", [False, True])
@pytest.mark.parametrize("chunk_offset", [0, 3])
@pytest.mark.parametrize("with_row_ends", [False, True])
def test_outputs_and_all_gradients_match_reference_fp64(self_referential, detach_values, chunk_offset, with_row_ends):
    """T=21 with chunk 5 (not a multiple), padding, an offset, both initial states, row_ends that
    stop inside, at and before the last boundary; every output and every input's gradient."""
    T, chunk_size = 21, 5
    inputs = make_inputs(T)
    mask = ragged_mask(T)
    row_ends = None
    if with_row_ends:  # positions from row_ends on are padding
        mask[1, 19:] = 0
        row_ends = torch.tensor([T, 19, T - 6])

    def run(kernel):
        u, q, be, ba, s, c = inputs
        return kernel(u, q, be, ba, s, chunk_size, 0.8, c, chunk_offset, mask, self_referential, detach_values,
                      row_ends=row_ends)

    torch.manual_seed(0)
    weights = [torch.randn(B, T, H, D, dtype=torch.float64), *torch.randn(2, B, H, D, state_width(D), dtype=torch.float64)]
    results = []
    for kernel in (naive_self_referential_gated_delta_rule, chunk_self_referential_gated_delta_rule):
        out = run(kernel)
        loss = sum((w * x).sum() for w, x in zip(weights, out))
        results.append((out, torch.autograd.grad(loss, inputs, allow_unused=True)))
    (out_ref, grads_ref), (out_chunk, grads_chunk) = results
    for name, a, b in zip(("o", "state", "chunk_state"), out_chunk, out_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(("u", "q", "b_eta", "b_alpha", "state", "chunk_state"), grads_chunk, grads_ref):
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("value_input", [False, True])
@pytest.mark.parametrize("normalize_values", [True, False])
@pytest.mark.parametrize("detach_values", [False, True])
@pytest.mark.parametrize("with_row_ends", [False, True])
def test_value_input_and_unnormalised_values_match_reference_fp64(value_input, normalize_values, detach_values,
                                                                  with_row_ends):
    """The ``v`` and ``normalize_values`` options on the chunk path and on the autograd loop (the
    path under torch.func), against the reference: every output, every gradient (v's too), T=21
    with chunk 5, padding, an offset, both initial states."""
    T, chunk_size = 21, 5
    inputs = make_inputs(T)
    if value_input:
        inputs.append(F.normalize(torch.randn(B, T, H, D, dtype=torch.float64), dim=-1).requires_grad_())
    mask = ragged_mask(T)
    row_ends = None
    if with_row_ends:
        mask[1, 19:] = 0
        row_ends = torch.tensor([T, 19, T - 6])

    def run(kernel, **extra):
        u, q, be, ba, s, c, *v = inputs
        return kernel(u, q, be, ba, s, chunk_size, 0.8, c, 3, mask, True, detach_values, row_ends=row_ends,
                      v=v[0] if v else None, normalize_values=normalize_values, **extra)

    torch.manual_seed(0)
    weights = [torch.randn(B, T, H, D, dtype=torch.float64), *torch.randn(2, B, H, D, state_width(D), dtype=torch.float64)]
    results = []
    for kernel, extra in ((naive_self_referential_gated_delta_rule, {}), (chunk_self_referential_gated_delta_rule, {}),
                          (scan_chunks, {"segment_fn": delta_rule_chunk})):
        out = run(kernel, **extra)
        loss = sum((w * x).sum() for w, x in zip(weights, out))
        results.append((out, torch.autograd.grad(loss, inputs, allow_unused=True)))
    names = ("u", "q", "b_eta", "b_alpha", "state", "chunk_state", "v")
    for out, grads in results[1:]:
        for name, a, b in zip(("o", "state", "chunk_state"), out, results[0][0]):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"{name}: {m}")
        for name, a, b in zip(names, grads, results[0][1]):
            a, b = (torch.zeros_like(inputs[names.index(name)]) if x is None else x for x in (a, b))
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"grad {name}: {m}")
    if value_input and not detach_values:  # the value input matters, through the values only
        assert results[1][1][-1].abs().max() > 1e-3


def test_value_options_change_the_output():
    """Defaults reproduce the plain call; a value input or unnormalised values give another memory."""
    T, chunk_size = 12, 4
    u, q, be, ba, s, c = (x.detach() for x in make_inputs(T))
    plain = chunk_self_referential_gated_delta_rule(u, q, be, ba, s, chunk_size)
    same = chunk_self_referential_gated_delta_rule(u, q, be, ba, s, chunk_size, v=u, normalize_values=True)
    for a, b in zip(plain, same):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    for options in ({"v": F.normalize(torch.randn_like(u), dim=-1)}, {"normalize_values": False}):
        other = chunk_self_referential_gated_delta_rule(u, q, be, ba, s, chunk_size, **options)
        assert not torch.allclose(other[1], plain[1])


def test_row_ends_keep_the_chunk_start_state_in_trailing_padding():
    """A row with trailing padding across boundaries ends with the chunk-start state it has alone."""
    T, chunk_size = 13, 4
    u, q, be, ba, s, _ = (x.detach() for x in make_inputs(T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, 6:] = 0  # 6 real tokens: the row's own last chunk starts at 4
    _, s_alone, c_alone = chunk_self_referential_gated_delta_rule(u[:, :6], q[:, :6], be, ba, s, chunk_size)
    _, s_pad, c_pad = chunk_self_referential_gated_delta_rule(
        u, q, be, ba, s, chunk_size, attention_mask=mask, row_ends=torch.full((B,), 6)
    )
    torch.testing.assert_close(s_pad, s_alone, atol=1e-12, rtol=0)
    torch.testing.assert_close(c_pad, c_alone, atol=1e-12, rtol=0)
    _, _, c_plain = chunk_self_referential_gated_delta_rule(u, q, be, ba, s, chunk_size, attention_mask=mask)
    assert not torch.allclose(c_plain, c_alone)  # without row_ends the boundary at 8 moves it


def test_gradcheck_tiny():
    T, chunk_size = 7, 3
    u, q, be, ba, s, c = (x.detach() for x in make_inputs(T))
    u, q = u[:1, :, :1].contiguous(), q[:1, :, :1].contiguous()  # (1, T, 1, D)
    s, c, be, ba = s[:1, :1].contiguous(), c[:1, :1].contiguous(), be[:1], ba[:1]
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    row_ends = torch.tensor([6])
    args = [x.requires_grad_() for x in (u, q, be, ba, s, c)]

    def fn(u, q, be, ba, s, c):
        return ChunkScan.apply(u.transpose(1, 2), q.transpose(1, 2), be, ba, s, c, mask, row_ends, chunk_size, 0.9, 1,
                               True, False, None, True)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, fast_mode=True)


def test_vmap_over_rows_matches_the_batched_call():
    """Under torch.func.vmap (e.g. per-row fast weights) the op falls back to the autograd loop."""
    T, chunk_size = 9, 4
    u, q, be, ba, s, c = (x.detach() for x in make_inputs(T))
    o, state, chunk = chunk_self_referential_gated_delta_rule(u, q, be, ba, s, chunk_size, 0.8, c)

    def one_row(u, q, s, c):
        out = chunk_self_referential_gated_delta_rule(u[None], q[None], be, ba, s[None], chunk_size, 0.8, c[None])
        return tuple(x[0] for x in out)

    for a, b in zip(torch.func.vmap(one_row)(u, q, s, c), (o, state, chunk)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def _outputs_and_gradients(T, chunk_size, mask):
    torch.manual_seed(1)
    inputs = make_inputs(T)
    u, q, be, ba, s, c = inputs
    out = chunk_self_referential_gated_delta_rule(u, q, be, ba, s, chunk_size, 0.8, c, 0, mask)
    loss = sum((torch.randn_like(x) * x).sum() for x in out)
    return [x.detach() for x in out], torch.autograd.grad(loss, inputs)


@pytest.fixture
def compiled_chunks():
    yield use_compiled_chunks
    use_compiled_chunks(False)


@requires_cpp_compiler
def test_compiled_chunks_match_eager_fp64(compiled_chunks):
    """torch.compile (inductor) on the per-chunk functions: the same outputs and gradients, with a
    last chunk of another length and padding."""
    T, chunk_size, mask = 21, 8, ragged_mask(21)
    eager = _outputs_and_gradients(T, chunk_size, mask)
    compiled_chunks(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would hide the compiled path
        compiled = _outputs_and_gradients(T, chunk_size, mask)
    for a, b in zip([*eager[0], *eager[1]], [*compiled[0], *compiled[1]]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_compiled_chunks_fall_back_to_eager_when_compiling_fails(compiled_chunks):
    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    T, chunk_size, mask = 13, 5, ragged_mask(13)
    eager = _outputs_and_gradients(T, chunk_size, mask)
    compiled_chunks(True, backend=failing_backend)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        fallback = _outputs_and_gradients(T, chunk_size, mask)
    for a, b in zip([*eager[0], *eager[1]], [*fallback[0], *fallback[1]]):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("self_referential", [True, False])
@pytest.mark.parametrize("value_input", [False, True])
@pytest.mark.parametrize("continued", [False, True])
def test_cu_seqlens_equals_every_sequence_alone_fp64(self_referential, value_input, continued):
    """Sequences packed into one row (fla's cu_seqlens) through the public op: outputs, per-sequence
    final states and every gradient equal the reference run on each sequence alone; lengths 5, 13,
    1, 9 with chunk 4. ``continued``: each sequence resumes a returned state (running and
    chunk-start states differ) at its own chunk phase (3, 0, 1, 2)."""
    from hope_hf.ops import self_referential_gated_delta_rule

    lengths, chunk_size = [5, 13, 1, 9], 4
    T, N = sum(lengths), len(lengths)
    u = F.normalize(torch.randn(1, T, H, D, dtype=torch.float64), dim=-1).requires_grad_()
    q = F.normalize(torch.randn(1, T, H, D, dtype=torch.float64), dim=-1).requires_grad_()
    v = F.normalize(torch.randn(1, T, H, D, dtype=torch.float64), dim=-1).requires_grad_() if value_input else None
    b_eta, b_alpha = torch.randn(H, dtype=torch.float64, requires_grad=True), (torch.randn(H, dtype=torch.float64) + 2).requires_grad_()
    shape = (N, H, 2, D, state_width(D)) if continued else (N, H, D, state_width(D))
    state = (0.3 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()
    offsets = torch.tensor([3, 0, 1, 2]) if continued else 0
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    inputs = [x for x in (u, q, v, b_eta, b_alpha, state) if x is not None]

    o, final = self_referential_gated_delta_rule(
        u, q, b_eta, b_alpha, initial_state=state, chunk_size=chunk_size, eta_max=0.8, v=v,
        self_referential=self_referential, chunk_offset=offsets, cu_seqlens=cu_seqlens, output_final_state=True)
    running, chunk_start = state.unbind(2) if continued else (state, state)
    alone = [naive_self_referential_gated_delta_rule(
        u[:, a:b], q[:, a:b], b_eta, b_alpha, running[n : n + 1], chunk_size, 0.8, chunk_start[n : n + 1],
        int(offsets[n]) if continued else 0, None, self_referential, v=None if v is None else v[:, a:b])
        for n, (a, b) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:]))]
    packed = (o, *final.unbind(2))
    expected = (torch.cat([o for o, _, _ in alone], 1), torch.cat([s for _, s, _ in alone]), torch.cat([c for _, _, c in alone]))
    weights = [torch.randn_like(x) for x in expected]
    grads = [torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, out)), inputs) for out in (packed, expected)]
    for name, a, b in zip(("o", "state", "chunk_state"), packed, expected):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m: f"{name}: {m}")
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_cu_seqlens_bad_inputs_raise_clear_errors():
    from hope_hf.ops import self_referential_gated_delta_rule

    T, N = 12, 3
    u, q = (F.normalize(torch.randn(1, T, H, D), dim=-1) for _ in range(2))
    b_eta, b_alpha = torch.randn(H), torch.randn(H)
    state, cu_seqlens = torch.zeros(N, H, D, state_width(D)), torch.tensor([0, 5, 7, T])
    op = lambda **kw: self_referential_gated_delta_rule(u, q, b_eta, b_alpha, **{  # noqa: E731
        "initial_state": state, "chunk_size": 4, "cu_seqlens": cu_seqlens, **kw})
    with pytest.raises(ValueError, match="cu_seqlens must increase"):
        op(cu_seqlens=torch.tensor([0, 5, 5, T]))
    with pytest.raises(ValueError, match="one state per sequence"):
        op(initial_state=state[:2])
    with pytest.raises(ValueError, match=r"chunk_offset must be in \[0, chunk_size=4\)"):
        op(chunk_offset=torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="no attention_mask"):
        op(attention_mask=torch.ones(1, T))
    with pytest.raises(ValueError, match=r"\(N, H, 2, d, 3d\+2\)"):
        op(initial_state=torch.zeros(N, H, 3, D, state_width(D)))
    with pytest.raises(ValueError, match="batch 1"):
        self_referential_gated_delta_rule(u.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1), b_eta, b_alpha,
                                          initial_state=state, chunk_size=4, cu_seqlens=cu_seqlens)
    with pytest.raises(ValueError, match="needs cu_seqlens"):
        self_referential_gated_delta_rule(u, q, b_eta, b_alpha, chunk_size=4, chunk_offset=torch.tensor([1]))

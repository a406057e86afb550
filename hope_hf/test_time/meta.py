"""First-order meta-learning of the CMS levels that learn at test time.

The inner loop is ``InContextLearner.read``: read a window segment by segment, the levels taking
their steps. The outer loss is the mean next-token loss of every segment after the first, each
read with the fast weights the earlier segments produced. Its first-order gradient with respect
to the levels' initial state (the model's parameters) is what the learner returns with
``meta_gradients=True``; one outer step applies it, so the initial state becomes one that
reading improves (first-order MAML).
"""

import torch

from .in_context import InContextLearner


def learning_parameters(learner: InContextLearner) -> dict[str, torch.nn.Parameter]:
    """The parameters of the levels that step while reading (period not None): what meta-learning trains."""
    return {name: p for level in learner.levels if level.period is not None for name, p in level.params}


def meta_learning_step(learner: InContextLearner, windows: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict:
    """One outer step on ``windows`` (B, T), T spanning at least two segments. Returns the outer
    loss (mean over rows of the mean loss of segments 2..n) and the first segment's loss."""
    if not learner.meta_gradients:
        raise ValueError("meta_learning_step needs InContextLearner(..., meta_gradients=True)")
    if windows.shape[1] < learner.segment_size + 2:  # the second segment needs a next-token pair of its own
        raise ValueError(f"windows must span at least two segments of {learner.segment_size} tokens "
                         f"({learner.segment_size + 2} or more), got {windows.shape[1]}")
    states = learner.read(windows)
    outer_segments = [len(s.segment_losses) - 1 for s in states]
    for name, p in learning_parameters(learner).items():
        p.grad = torch.stack([s.meta_gradients[name] / n for s, n in zip(states, outer_segments)]).mean(0).to(p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    outer = [sum(s.segment_losses[1:]) / n for s, n in zip(states, outer_segments)]
    return {"outer_loss": sum(outer) / len(outer),
            "first_segment_loss": sum(s.segment_losses[0] for s in states) / len(states)}

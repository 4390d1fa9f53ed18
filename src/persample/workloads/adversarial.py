"""The adversarial family: models that break, on purpose, an assumption some method relies on.

Each workload names the assumptions it breaks (`breaks`, ids of `persample.assumptions`); the
conformance suite's table (`persample/conformance/expected_outcomes.toml`) says what every method
must do with it: be right, or refuse for that reason. They are what practitioners write: layers
called time-major, weights tied by a functional call, reparametrised weights, recurrent layers,
custom autograd Functions, a forward that differentiates, a no_grad sub-path, checkpointing,
buffers updated in forward, batch-normalised losses, keyword inputs, sparse embeddings, odd batches.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import assumptions as A
from .. import losses
from .registry import Workload, register_workload

FEATURES, CLASSES, STEPS, VOCAB = 5, 3, 4, 12


def _features(steps: int | None = None):
    def make_batch(size: str, batch: int, generator: torch.Generator):
        shape = (batch, FEATURES) if steps is None else (batch, steps, FEATURES)
        return torch.randn(*shape, generator=generator), torch.randint(CLASSES, (batch,), generator=generator)

    return make_batch


def _tokens(steps: int = STEPS, next_token: bool = False):
    def make_batch(size: str, batch: int, generator: torch.Generator):
        tokens = torch.randint(1, VOCAB, (batch, steps + int(next_token)), generator=generator)
        if next_token:
            return tokens[:, :-1], tokens[:, 1:]
        return tokens, torch.randint(CLASSES, (batch,), generator=generator)

    return make_batch


BUFFER_UPDATE = "buffer_update"  # tag: the forward updates buffers (the invariants check they are restored)


def adversarial(name: str, description: str, make_model, make_batch, *, breaks=(), loss_fn=losses.cross_entropy,
                batch_size: int | None = None, tags=()) -> Workload:
    """Register an adversarial workload (tagged 'adversarial', one size) that breaks the assumptions `breaks`
    on purpose; returns the `Workload`.
    """
    return register_workload(Workload(
        name=name, description=description, make_model=lambda size: make_model(), make_batch=make_batch,
        loss_fn=loss_fn, tags=frozenset({"adversarial", *tags}), breaks=frozenset(breaks), batch_size=batch_size,
    ))


class TimeMajorLinear(nn.Module):
    """A Linear layer called on (T, B, F): the batch is on dim 1 of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(FEATURES, FEATURES), nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.lin(x.transpose(0, 1))).transpose(0, 1)
        return self.head(h.mean(1))


adversarial("time_major_linear", "Linear applied time-major, T == B = 4 (rows of its input are time steps)",
            TimeMajorLinear, _features(STEPS), breaks=[A.BATCH_FIRST.id], batch_size=STEPS)
adversarial("time_major_linear_long", "Linear applied time-major, T = 6 != B = 4",
            TimeMajorLinear, _features(6), breaks=[A.BATCH_FIRST.id], batch_size=4)


class TimeMajorEmbedding(nn.Module):
    """An embedding called on (T, B) indices (time first), then averaged over time and classified: the batch is
    not on dim 0 inside the layer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, FEATURES), nn.Linear(FEATURES, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens.transpose(0, 1)).transpose(0, 1)  # (T, B) indices
        return self.head(torch.tanh(h).mean(1))


adversarial("time_major_embedding", "Embedding looked up with (T, B) indices, T == B = 4",
            TimeMajorEmbedding, _tokens(), breaks=[A.BATCH_FIRST.id], batch_size=STEPS)


class SharedPositions(nn.Module):
    """Position embeddings looked up with arange(T): one input shared by every sample (T == B)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.positions = nn.Embedding(VOCAB, FEATURES), nn.Embedding(STEPS, FEATURES)
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.positions(torch.arange(tokens.shape[1], device=tokens.device))
        return self.head(torch.tanh(h).mean(1))


adversarial("shared_positions", "position Embedding called with arange(T), shared by all samples, T == B = 4",
            SharedPositions, _tokens(), breaks=[A.BATCH_FIRST.id], batch_size=STEPS)


class FunctionallyTiedHead(nn.Module):
    """A language-model head tied to the embedding by F.linear(h, embed.weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mid = nn.Embedding(VOCAB, FEATURES), nn.Linear(FEATURES, FEATURES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.mid(self.embed(tokens))), self.embed.weight)


adversarial("tied_functional_head", "language-model head tied to the embedding through F.linear(h, embed.weight)",
            FunctionallyTiedHead, _tokens(next_token=True), breaks=[A.OWN_LAYER.id], loss_fn=losses.token_cross_entropy)


def _reparametrised(wrap) -> nn.Module:
    return nn.Sequential(wrap(nn.Linear(FEATURES, 6)), nn.Tanh(), nn.Linear(6, CLASSES))


adversarial("weight_norm_hook", "torch.nn.utils.weight_norm (pre-hook API): weight recomputed from weight_g, weight_v",
            lambda: _reparametrised(nn.utils.weight_norm), _features(), breaks=[A.OWN_LAYER.id])
adversarial("spectral_norm_hook", "torch.nn.utils.spectral_norm (pre-hook API), training mode: u, v buffers updated in forward",
            lambda: _reparametrised(nn.utils.spectral_norm), _features(), breaks=[A.OWN_LAYER.id],
            tags=[BUFFER_UPDATE])
adversarial("weight_norm_parametrized", "torch.nn.utils.parametrizations.weight_norm on a Linear",
            lambda: _reparametrised(nn.utils.parametrizations.weight_norm), _features(), breaks=[A.OWN_LAYER.id])


class RecurrentClassifier(nn.Module):
    """An nn.RNN, GRU or LSTM (`kind`, batch_first) whose last state is classified."""

    def __init__(self, kind: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn, self.head = kind(FEATURES, 6, batch_first=True), nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(x)
        return self.head(states[:, -1])


# torch.func has no batching rule for GRU/RNN on the CPU (vmap refuses); the rule-based methods have
# their unrolled rule (persample.rules.recurrent), and their checks read h_n's batch on dim 1.
adversarial("gru_classifier", "nn.GRU (batch_first) then a classifier", lambda: RecurrentClassifier(nn.GRU),
            _features(STEPS), breaks=[A.BATCHING_RULES.id])
adversarial("rnn_classifier", "nn.RNN (tanh, batch_first) then a classifier", lambda: RecurrentClassifier(nn.RNN),
            _features(STEPS), breaks=[A.BATCHING_RULES.id])


class StraightThroughClamp(torch.autograd.Function):
    """Clamp forward, identity backward (a straight-through estimator)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-0.5, 0.5)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class ClassicStraightThrough(torch.autograd.Function):
    """The same, written in the classic style (ctx in forward, no setup_context)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-0.5, 0.5)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class WithFunction(nn.Module):
    """Linear, a custom autograd `function`, Linear: a forward through a hand-written backward."""

    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.function = function
        self.a, self.b = nn.Linear(FEATURES, 6), nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.function.apply(self.a(x)))


adversarial("straight_through", "a custom autograd Function (clamp, identity backward) between two Linears",
            lambda: WithFunction(StraightThroughClamp), _features(), breaks=[A.AUTOGRAD_FUNCTIONS.id])
adversarial("straight_through_classic", "the same Function in the classic style (no setup_context)",
            lambda: WithFunction(ClassicStraightThrough), _features(), breaks=[A.AUTOGRAD_FUNCTIONS.id])


class EnergyGradient(nn.Module):
    """Outputs -dE/dx of an energy network E (a forward that differentiates, create_graph=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(FEATURES, 6), nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_()
        energy = self.b(torch.tanh(self.a(x))).sum()
        (force,) = torch.autograd.grad(energy, x, create_graph=True)
        return -force


adversarial("energy_gradient", "an energy model whose output is -dE/dx (torch.autograd.grad in forward)",
            EnergyGradient, lambda size, batch, g: (torch.randn(batch, FEATURES, generator=g), torch.randn(batch, FEATURES, generator=g)),
            breaks=[A.PLAIN_FORWARD.id], loss_fn=losses.mse)


class NoGradTarget(nn.Module):
    """Predicts the next input's features: the target comes from the same network under no_grad."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 6), nn.Tanh(), nn.Linear(6, FEATURES))
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.net(x * 0.5)
        return self.head(self.net(x) - target)


adversarial("no_grad_target", "a sub-path under torch.no_grad() through the same layers", NoGradTarget, _features(),
            breaks=[A.GRAD_MODE.id])


class Checkpointed(nn.Module):
    """A checkpointed block between two layers (so its input requires grad, as in real models)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.pre = nn.Linear(FEATURES, 6)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(self.block, torch.tanh(self.pre(x)), use_reentrant=self.reentrant)
        return self.head(torch.tanh(h))


adversarial("checkpoint_reentrant", "torch.utils.checkpoint(block, use_reentrant=True)", lambda: Checkpointed(True),
            _features(), breaks=[A.AUTOGRAD_FUNCTIONS.id, A.OWN_LAYER.id])
adversarial("checkpoint_nonreentrant", "torch.utils.checkpoint(block, use_reentrant=False)", lambda: Checkpointed(False),
            _features(), breaks=[A.BATCHING_RULES.id])


class CountingModel(nn.Module):
    """Counts its calls in a buffer (a forward that updates state)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.a, self.b = nn.Linear(FEATURES, 6), nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.b(torch.tanh(self.a(x)))


adversarial("counter_buffer", "a buffer incremented in forward", CountingModel, _features(), tags=[BUFFER_UPDATE])


class RunningStatistics(nn.Module):
    """InstanceNorm1d with track_running_stats=True in training mode: running statistics updated
    in forward, instance statistics used (so samples stay independent)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm1d(FEATURES, affine=True, track_running_stats=True)
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x.transpose(1, 2))[..., -1])  # (a mean over time would be ~0)


adversarial("instance_norm_running_stats", "InstanceNorm1d(track_running_stats=True) in training mode",
            RunningStatistics, _features(6), tags=[BUFFER_UPDATE])


def batch_statistics_in_eval() -> nn.Module:
    """An MLP with BatchNorm1d(track_running_stats=False) in eval mode: it still normalises with the batch's
    statistics, coupling the samples.
    """
    model = nn.Sequential(nn.Linear(FEATURES, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.Tanh(), nn.Linear(6, CLASSES))
    return model.eval()


adversarial("batchnorm_batch_statistics", "BatchNorm1d(track_running_stats=False) in eval mode: batch statistics",
            batch_statistics_in_eval, _features(), breaks=[A.SAMPLES_INDEPENDENT.id])


class BatchMean(nn.Module):
    """Adds half the batch mean to every sample: samples coupled without any BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(FEATURES, 6), nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x + 0.5 * x.mean(0, keepdim=True))))


adversarial("batch_mean_coupling", "x + 0.5 * x.mean(0): samples coupled by hand", BatchMean, _features(),
            breaks=[A.BATCH_FIRST.id])


class BatchSizeScaled(nn.Module):
    """Scales the hidden layer by √(batch size): each row is computed from its own sample, but not as
    that sample alone would compute it (alone, the scale is 1); no forward value of one sample
    depends on another's."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(FEATURES, 6), nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)) * math.sqrt(x.shape[0]))


adversarial("batch_size_scaled", "hidden layer scaled by sqrt(x.shape[0]): the forward depends on the batch size",
            BatchSizeScaled, _features(), breaks=[A.BATCH_FIRST.id])


class GradientOnlyCoupling(nn.Module):
    """Couples the last two samples in the gradient only: `h + (s - s.detach())` with s their sum leaves
    every forward value unchanged, while each of their losses reaches both rows of the first layer.
    At B = 8 the coupled rows lie past the first four samples that checks look at one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(FEATURES, 6), nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        s = h[-2:].sum(0, keepdim=True)
        return self.b(torch.cat([h[:-2], h[-2:] + (s - s.detach())]))


adversarial("gradient_only_coupling", "the last two samples coupled in the gradient only (h + (s - s.detach())), B = 8",
            GradientOnlyCoupling, _features(), breaks=[A.BATCH_FIRST.id], batch_size=8)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 6), nn.Tanh(), nn.Linear(6, CLASSES))


def batch_scaled_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample divided by the batch size, shape (B,): a per-sample loss that depends on B."""
    return F.cross_entropy(outputs, targets, reduction="none") / outputs.shape[0]


adversarial("batch_scaled_loss", "a loss divided by the batch size", _mlp, _features(), loss_fn=batch_scaled_loss,
            breaks=[A.LOSS_PER_SAMPLE.id])


def token_normalised_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample sums of token cross-entropies divided by the valid (non-zero) tokens of the whole batch,
    shape (B,): couples the samples.
    """
    valid = (targets != 0).to(outputs.dtype)
    token = F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    return (token * valid).sum(1) / valid.sum()  # normalised by the valid tokens of the whole batch


def _padded_tokens(size: str, batch: int, generator: torch.Generator):
    tokens = torch.randint(1, VOCAB, (batch, STEPS + 1), generator=generator)
    tokens[::2, -2:] = 0  # padding at the end of every other sequence
    return tokens[:, :-1], tokens[:, 1:]


class TinyLM(nn.Module):
    """A token language model: Embedding(padding_idx=0), tanh, Linear to the vocabulary; outputs (B, T, vocab)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = nn.Embedding(VOCAB, FEATURES, padding_idx=0), nn.Linear(FEATURES, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(tokens)))


adversarial("token_normalised_loss", "next-token loss normalised by the valid tokens of the whole batch", TinyLM,
            _padded_tokens, loss_fn=token_normalised_loss, breaks=[A.LOSS_PER_SAMPLE.id])


class TwoInputs(nn.Module):
    """A model of two inputs (features and tokens) and an optional `scale` keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.x, self.t = nn.Linear(FEATURES, 6), nn.Embedding(VOCAB, 6)
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.head(torch.tanh(self.x(x) * scale + self.t(t)))


def _keyword_batch(size: str, batch: int, generator: torch.Generator):
    inputs = {"x": torch.randn(batch, FEATURES, generator=generator), "t": torch.randint(VOCAB, (batch,), generator=generator),
              "scale": 0.5}
    return inputs, torch.randint(CLASSES, (batch,), generator=generator)


adversarial("keyword_inputs", "forward(x, t, scale) fed a mapping {'x', 't', 'scale'} (model(**inputs))",
            TwoInputs, _keyword_batch)


def sparse_embedding() -> nn.Module:
    """Embedding(sparse=True), Flatten, Linear: sparse gradients for the embedding."""
    return nn.Sequential(nn.Embedding(VOCAB, FEATURES, sparse=True), nn.Flatten(), nn.Linear(FEATURES * STEPS, CLASSES))


adversarial("sparse_embedding", "Embedding(sparse=True): autograd returns sparse gradients", sparse_embedding, _tokens())
adversarial("batch_of_one", "an MLP on a batch of one sample", _mlp, _features(), batch_size=1)
adversarial("empty_batch", "an MLP on a batch of no samples", _mlp, _features(), batch_size=0)


class SharedNorm(nn.Module):
    """One LayerNorm module applied three times (a reused layer: its gradients add up)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.a, self.b = nn.LayerNorm(FEATURES), nn.Linear(FEATURES, FEATURES), nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        h = self.norm(torch.tanh(self.a(h)) + h)
        return self.b(self.norm(h * 2))


adversarial("layernorm_thrice", "one LayerNorm applied three times", SharedNorm, _features())


def scaled_by_hook() -> nn.Module:
    """An MLP whose first layer's output a forward hook doubles: the layer's output is replaced after the layer
    ran.
    """
    model = _mlp()
    model[0].register_forward_hook(lambda module, args, output: output * 2)
    return model


adversarial("output_hook", "a forward hook that doubles a Linear layer's output", scaled_by_hook, _features(),
            breaks=[A.TRANSLATABLE.id])

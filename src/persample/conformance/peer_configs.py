"""The layer configurations Opacus's and BackPACK's own test suites exercise, rebuilt as our list.

Each `PeerConfig` is one layer configuration read from a peer's tests (the test file is named in
`read_from`; the peers' commits in `OPACUS_COMMIT`, `BACKPACK_COMMIT`), written here from the
parameters those tests use, not from their code:

- Opacus, `opacus/tests/grad_samples/*_test.py`: hypothesis strategies over batch size, channels,
  kernel size, stride, padding (with "same" and "valid"), dilation, groups, bias, `batch_first`,
  layers, bidirectionality, packed sequences. The ranges are sampled by hand, deterministically:
  every choice of a `sampled_from` or boolean strategy appears in at least one configuration of its
  family, integer ranges are hit at their ends where the other parameters allow, and corners (an
  empty batch, one sample, an even kernel with padding="same", groups = channels) are included.
  The harness there runs the layer alone under an L1 loss against zeros; here the head is
  `REGRESS`: the layer's output (a tuple's first element) against a seeded N(0, 1) target of its
  shape, by per-sample mean squared error (no kink at zero), so the peer's layer is the only
  module with parameters. Opacus's DP layers (DPRNN/DPGRU/DPLSTM, DPMultiheadAttention,
  SequenceBias) are tested there as stand-ins for torch's: here the torch layers themselves
  (nn.RNN/GRU/LSTM, nn.MultiheadAttention) and `AppendBias`, our own SequenceBias.
- BackPACK, `test/extensions/firstorder/firstorder_settings.py` (the problems of its BatchGrad
  tests: the peer's Sequential and loss, as `PEER_HEAD`, or its convolution-ReLU-Flatten-frozen
  Linear CNN under cross-entropy, as `CLASSIFY`) and `test/core/derivatives/*_settings.py` (single
  layers without a loss: `REGRESS`). Inputs uniform in [0, 1) as BackPACK draws them. Its resnet18
  problem is left out (torchvision).

Every input is batch first, as `per_sample_grads` takes it: where the peer feeds a layer
time-major (`batch_first=False`, Opacus's MultiheadAttention), the model transposes the batch-first
input before the layer and its output back (`time_major` in the id), so the layer itself still
runs time-major. Where the peer passes what is no batch-first tensor (EmbeddingBag's flat indices
with offsets, RNNs' PackedSequence), the model takes padded indices (or a padded sequence) with
per-sample lengths and builds the peer's form inside its forward.

Factories are seeded (from the id): two builds give the same parameters, inputs and targets.
Shapes are the peers' own, kept small.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..batch import Inputs
from ..contract import LossFn
from ..losses import cross_entropy, mse

OPACUS = "opacus"
BACKPACK = "backpack"
OPACUS_COMMIT = "4d0ebc84613d214fbfd37fbfd1390e3747a625ce"
"""The pytorch/opacus commit whose tests were read."""
BACKPACK_COMMIT = "366bcd603cb48e561155919537565e03f4574825"
"""The f-dangel/backpack commit whose tests were read."""

REGRESS = ("regress: the layer alone; its output (a tuple's first element) against a seeded N(0, 1) "
           "target of the same shape, per-sample mean squared error")
CLASSIFY = ("classify: the layer, ReLU, Flatten, a frozen Linear(features, 5) (requires_grad=False), "
            "per-sample cross-entropy")
PEER_HEAD = "as the peer: its Sequential and its loss, per sample (a mean over positions for a spatial target)"

FAMILIES = (
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "embedding", "embedding_bag", "layer_norm", "rms_norm", "group_norm", "instance_norm",
    "batch_norm_eval", "sequence_bias", "rnn", "gru", "lstm", "multihead_attention",
)
"""The layer families the list covers."""


@dataclass(frozen=True)
class PeerConfig:
    """One peer's layer configuration, as a model, a batch and a per-sample loss.

    `id`: "<source>/<family>/<parameters>"; `source`: "opacus" or "backpack"; `read_from`: the
    peer's test file the configuration was read from; `family`: one of `FAMILIES`; `model`,
    `inputs`, `targets`: zero-argument seeded factories (a fresh model each call; inputs batch
    first, in the form `per_sample_grads` takes); `loss_fn`: per-sample loss, shape (B,); `head`:
    what wraps the layer and makes the loss (`REGRESS`, `CLASSIFY` or `PEER_HEAD`).
    """

    id: str
    source: str
    read_from: str
    family: str
    model: Callable[[], nn.Module]
    inputs: Callable[[], Inputs]
    targets: Callable[[], torch.Tensor]
    loss_fn: LossFn
    head: str

    def build(self) -> tuple[nn.Module, Inputs, torch.Tensor]:
        """A fresh (model, inputs, targets)."""
        return self.model(), self.inputs(), self.targets()


# ---- Losses, wrappers and our own layers ----------------------------------------------------------

def spatial_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits (B, C, *positions) against classes (B, *positions), the mean over
    each sample's positions: shape (B,)."""
    return F.cross_entropy(outputs, targets, reduction="none").flatten(1).mean(1)


class Probe(nn.Module):
    """The layer under test, called on the batch: a tuple output gives its first element; with
    `time_major`, each input of two or more dims is transposed (batch, time) -> (time, batch) before
    the layer and the output back after it; `readout` (if any) follows."""

    def __init__(self, layer: nn.Module, time_major: bool = False, readout: nn.Module | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.time_major = time_major
        self.readout = readout

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.time_major:
            inputs = tuple(x.transpose(0, 1) if x.dim() >= 2 else x for x in inputs)
        out = self.layer(*inputs)
        if isinstance(out, tuple):
            out = out[0]
        if self.time_major:
            out = out.transpose(0, 1)
        return out if self.readout is None else self.readout(out)


class AppendBias(nn.Module):
    """A learned vector appended to each sequence as one more step: (N, T, D) -> (N, T+1, D), or
    (T, N, D) -> (T+1, N, D) when not `batch_first` (what Opacus's SequenceBias computes)."""

    def __init__(self, dim: int, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.bias = nn.Parameter(torch.empty(dim).normal_())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            return torch.cat([x, self.bias.expand(x.shape[0], 1, -1)], dim=1)
        return torch.cat([x, self.bias.expand(1, x.shape[1], -1)], dim=0)


class PackedRecurrent(nn.Module):
    """A recurrent layer run on a PackedSequence built from a padded batch-first sequence and each
    sample's length, its output padded back to the full length, batch first."""

    def __init__(self, rnn: nn.RNNBase, enforce_sorted: bool) -> None:
        super().__init__()
        self.rnn = rnn
        self.enforce_sorted = enforce_sorted

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        if not self.rnn.batch_first:
            x = x.transpose(0, 1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=self.rnn.batch_first,
                                      enforce_sorted=self.enforce_sorted)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=self.rnn.batch_first, total_length=steps)
        return out if self.rnn.batch_first else out.transpose(0, 1)


class Bags(nn.Module):
    """An EmbeddingBag called as Opacus calls it, with flat indices and offsets, built from padded
    indices (N, L) and each bag's size (N,)."""

    def __init__(self, bag: nn.EmbeddingBag) -> None:
        super().__init__()
        self.bag = bag

    def forward(self, indices: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        kept = torch.arange(indices.shape[1], device=indices.device) < sizes.unsqueeze(1)
        offsets = torch.cumsum(sizes, 0) - sizes
        return self.bag(indices[kept], offsets)


class Attention(nn.Module):
    """nn.MultiheadAttention on separate query, key and value, each given batch first and fed to the
    layer time-major (as Opacus's test feeds DPMultiheadAttention); the attention output, batch first."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out, _ = self.attention(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1))
        return out.transpose(0, 1)


def eval_batch_norm(norm: nn.modules.batchnorm._BatchNorm) -> nn.modules.batchnorm._BatchNorm:
    """`norm` in eval mode with random running statistics and affine parameters (as BackPACK
    initialises its eval-mode BatchNorm), the variance kept away from zero."""
    with torch.no_grad():
        norm.running_mean.uniform_(0.0, 1.0)
        norm.running_var.uniform_(0.25, 1.0)
        norm.weight.uniform_(0.0, 1.0)
        norm.bias.uniform_(0.0, 1.0)
    return norm.eval()


def evaluation_mode(model: nn.Module) -> nn.Module:
    """`model` in eval mode, each BatchNorm in it initialised by `eval_batch_norm`."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            eval_batch_norm(module)
    return model.eval()


def frozen(layer: nn.Module) -> nn.Module:
    """`layer` with requires_grad=False on its parameters."""
    return layer.requires_grad_(False)


# ---- Seeded factories ----------------------------------------------------------------------------

def seed_of(config_id: str) -> int:
    """The seed of a configuration's factories, from its id."""
    return zlib.crc32(config_id.encode())


def _seeded_model(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_generator(seed))


def _uniform(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=_generator(seed))


def _indices(shape: Sequence[int], high: int, seed: int) -> torch.Tensor:
    return torch.randint(high, tuple(shape), generator=_generator(seed))


_OUTPUT_SHAPES: dict[int, torch.Size] = {}


def _regression_targets(model: Callable[[], nn.Module], inputs: Callable[[], Inputs], seed: int) -> torch.Tensor:
    if seed not in _OUTPUT_SHAPES:  # one forward per configuration finds the output's shape
        args = inputs()
        with torch.no_grad():
            _OUTPUT_SHAPES[seed] = model()(*(args if isinstance(args, tuple) else (args,))).shape
    return torch.randn(_OUTPUT_SHAPES[seed], generator=_generator(seed + 1))


def _classes(shape: Sequence[int], count: int, seed: int) -> torch.Tensor:
    return torch.randint(count, tuple(shape), generator=_generator(seed + 1))


CONFIGS: list[PeerConfig] = []
"""Every configuration, Opacus's first, then BackPACK's."""


def _add(config_id: str, read_from: str, build: Callable[[], nn.Module], inputs: Callable[[int], Inputs], *,
         targets: Callable[[Callable[[], nn.Module], Callable[[], Inputs], int], torch.Tensor] | None = None,
         loss_fn: LossFn = mse, head: str = REGRESS) -> None:
    """Register a configuration: `build` makes the module (seeded here), `inputs(seed)` the batch;
    `targets(model, inputs, seed)` defaults to regression targets of the output's shape."""
    source, family = config_id.split("/")[:2]
    assert family in FAMILIES and source in (OPACUS, BACKPACK), config_id
    seed = seed_of(config_id)
    model = partial(_seeded_model, build, seed)
    batch = partial(inputs, seed)
    make_targets = targets or _regression_targets
    CONFIGS.append(PeerConfig(config_id, source, read_from, family, model, batch,
                              partial(make_targets, model, batch, seed), loss_fn, head))


def _shape_of(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


# ---- Opacus: tests/grad_samples -------------------------------------------------------------------

_OPACUS_TESTS = "opacus/tests/grad_samples/"


def _opacus_linear() -> None:
    # N 0..4, Z 1..4, H 1..3, W 10..17, input dims 2..4, bias, batch_first (2-d inputs batch first only);
    # Linear(W, W + 2).
    for shape, bias, time_major in [
        ((4, 10), True, False), ((1, 17), False, False), ((0, 13), True, False),
        ((3, 4, 12), True, False), ((2, 1, 16), False, True), ((1, 2, 10), True, True),
        ((4, 2, 3, 11), True, False), ((3, 3, 2, 14), True, True),
    ]:
        width = shape[-1]
        name = f"in{'x'.join(map(str, shape))}-bias{int(bias)}" + ("-time_major" if time_major else "")
        _add(f"opacus/linear/{name}", _OPACUS_TESTS + "linear_test.py",
             partial(lambda w, b, t: Probe(nn.Linear(w, w + 2, bias=b), time_major=t), width, bias, time_major),
             partial(lambda s, seed: _normal(s, seed), shape))


def _opacus_conv(dims: int) -> None:
    layer = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    file = _OPACUS_TESTS + f"conv{dims}d_test.py"
    # (N, C, spatial, out_channels (2C or max(1, C // 2)), kernel, stride, padding, dilation, groups)
    table = {
        # N 0..4, C {1, 3, 32}, W 6..10, k 2..3, s 1..2, padding {0, 1, 2, same, valid}, d 1..2, groups 1..12
        1: [
            (4, 3, (8,), 6, 3, 1, 0, 1, 1), (2, 32, (10,), 16, 2, 2, 1, 2, 8), (3, 1, (6,), 2, 3, 1, "same", 2, 1),
            (1, 3, (9,), 1, 2, 1, "valid", 1, 1), (4, 32, (7,), 64, 3, 1, 2, 1, 4), (3, 3, (10,), 6, 2, 2, 2, 2, 3),
            (2, 32, (6,), 16, 2, 1, "same", 1, 2), (0, 3, (7,), 6, 3, 1, 0, 1, 1),
            (3, 32, (9,), 64, 3, 1, 1, 2, 1),
        ],
        # N 0..4, C {1, 3, 32}, H, W 11..17, k 2..4, s 1..2, padding {0, 2, same, valid}, d 1..3, groups 1..16
        2: [
            (4, 3, (11, 11), 6, 3, 1, 0, 1, 1), (2, 32, (12, 15), 16, 2, 2, 2, 3, 16), (3, 1, (13, 11), 2, 4, 1, "same", 2, 1),
            (1, 3, (17, 17), 1, 2, 1, "valid", 1, 1), (3, 32, (11, 13), 64, 3, 1, 2, 1, 8), (4, 3, (14, 12), 6, 4, 2, 0, 3, 3),
            (2, 32, (11, 11), 16, 2, 1, "same", 3, 4), (0, 3, (11, 12), 6, 2, 1, 0, 1, 1),
            (3, 3, (15, 16), 1, 4, 1, "same", 1, 1),
        ],
        # N 0..4, C {1, 3, 32}, D 3..6, H, W 6..10, k {2, 3, (1, 2, 3)}, s {1, 2, (1, 2, 3)},
        # padding {0, 2, (1, 2, 3), same, valid}, d {1, (1, 2, 2)}, groups 1..16
        3: [
            (4, 3, (3, 6, 6), 6, 2, 1, 0, 1, 1), (2, 32, (4, 8, 7), 16, 3, 2, 2, 1, 16),
            (3, 1, (5, 6, 9), 2, (1, 2, 3), (1, 2, 3), (1, 2, 3), (1, 2, 2), 1), (1, 3, (6, 10, 10), 1, 3, 1, "same", 1, 1),
            (3, 32, (3, 7, 8), 64, 2, 1, "valid", (1, 2, 2), 8), (2, 3, (4, 6, 7), 6, (1, 2, 3), 1, "same", (1, 2, 2), 3),
            (4, 1, (3, 9, 6), 1, 2, (1, 2, 3), 2, 1, 1), (0, 3, (3, 6, 6), 6, 3, 2, 0, 1, 1),
        ],
    }[dims]
    for n, c, spatial, out, kernel, stride, padding, dilation, groups in table:
        name = (f"n{n}-c{c}-o{out}-k{_shape_of(kernel)}-s{_shape_of(stride)}-p{_shape_of(padding)}"
                f"-d{_shape_of(dilation)}-g{groups}")
        build = partial(lambda *a, **k: Probe(layer(*a, **k)), c, out, kernel, stride=stride, padding=padding,
                        dilation=dilation, groups=groups)
        _add(f"opacus/conv{dims}d/{name}", file, build, partial(lambda s, seed: _normal(s, seed), (n, c, *spatial)))
    if dims == 2:  # test_asymetric_dilation_and_kernel_size: a (3, 1) kernel, dilation (3, 1), no bias, one sample
        _add("opacus/conv2d/asymmetric-k3x1-d3x1-nobias", file,
             lambda: Probe(nn.Conv2d(1, 1, (3, 1), dilation=(3, 1), bias=False)),
             lambda seed: _normal((1, 1, 8, 1), seed))


def _opacus_embedding() -> None:
    # N 0..4, T 1..5, Q 1..4, R 1..2, V 2..32, D 10..17, input dims 2..4, batch_first (indices time-major).
    for shape, vocab, width, time_major in [
        ((4, 5), 32, 10, False), ((2, 3, 2, 2), 2, 17, False),
        ((3, 4), 16, 11, True), ((1, 5, 3), 20, 14, True), ((0, 3), 5, 10, False),
    ]:
        name = f"in{'x'.join(map(str, shape))}-v{vocab}-d{width}" + ("-time_major" if time_major else "")
        _add(f"opacus/embedding/{name}", _OPACUS_TESTS + "embedding_test.py",
             partial(lambda v, d, t: Probe(nn.Embedding(v, d), time_major=t), vocab, width, time_major),
             partial(lambda s, v, seed: _indices(s, v, seed), shape, vocab))


def _bags(n: int, most: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded bags of distinct indices (N, most) and their sizes in 1..most."""
    gen = _generator(seed)
    sizes = torch.randint(1, most + 1, (n,), generator=gen)
    indices = torch.stack([torch.randperm(vocab, generator=gen)[:most] for _ in range(n)])
    return indices, sizes


def _opacus_embedding_bag() -> None:
    # N 4..8, bag sizes 1..sz with sz 3..7 (distinct indices per bag), V 10..32, D 10..17, mode sum / mean.
    for n, most, vocab, width, mode in [
        (4, 3, 10, 10, "sum"), (8, 7, 32, 17, "mean"), (6, 5, 20, 12, "sum"), (5, 4, 16, 15, "mean"),
        (7, 6, 12, 11, "mean"),
    ]:
        _add(f"opacus/embedding_bag/n{n}-sz{most}-v{vocab}-d{width}-{mode}", _OPACUS_TESTS + "embedding_bag_test.py",
             partial(lambda v, d, m: Bags(nn.EmbeddingBag(v, d, mode=m)), vocab, width, mode),
             partial(_bags, n, most, vocab))


def _opacus_norms() -> None:
    # GroupNorm: N 0..4, C 1..8, H 5..10, W 4..8, groups {1, 4, C} (C divisible), affine.
    for n, c, h, w, groups in [(4, 8, 5, 4, 1), (3, 8, 10, 8, 4), (2, 4, 6, 5, 4), (4, 6, 9, 7, 6),
                               (0, 4, 5, 4, 4)]:
        _add(f"opacus/group_norm/n{n}-c{c}-h{h}-w{w}-g{groups}", _OPACUS_TESTS + "group_norm_test.py",
             partial(lambda g, ch: Probe(nn.GroupNorm(g, ch)), groups, c),
             partial(lambda s, seed: _normal(s, seed), (n, c, h, w)))
    # InstanceNorm{1,2,3}d: N 1..4, C 1..3, W 5..10, H 4..8, Z 1..4; affine, no running statistics.
    for dims, shape in [(1, (4, 3, 5)), (1, (1, 1, 10)), (2, (3, 2, 4, 10)), (2, (4, 3, 8, 5)),
                        (3, (2, 3, 1, 4, 5)), (3, (4, 1, 4, 6, 7))]:
        layer = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
        _add(f"opacus/instance_norm/{dims}d-in{'x'.join(map(str, shape))}", _OPACUS_TESTS + f"instance_norm{dims}d_test.py",
             partial(lambda l, ch: Probe(l(ch, affine=True, track_running_stats=False)), layer, shape[1]),
             partial(lambda s, seed: _normal(s, seed), shape))
    # LayerNorm / RMSNorm: N 1..4, Z 1..4, H 1..3, W 5..10, input dims 2..4 normalised over the last 1..3 (< input dims).
    layer_norm = [((4, 5), 1), ((3, 4, 7), 1), ((2, 3, 10), 2), ((1, 2, 3, 6), 1), ((4, 4, 2, 8), 2), ((3, 1, 3, 9), 3)]
    rms_norm = [((3, 8), 1), ((4, 2, 6), 2), ((2, 4, 1, 9), 1), ((1, 3, 2, 5), 3), ((4, 1, 10), 1)]
    for family, layer, cases in [("layer_norm", nn.LayerNorm, layer_norm), ("rms_norm", nn.RMSNorm, rms_norm)]:
        for shape, normalised in cases:
            _add(f"opacus/{family}/in{'x'.join(map(str, shape))}-norm{normalised}", _OPACUS_TESTS + f"{family}_test.py",
                 partial(lambda l, s: Probe(l(s, elementwise_affine=True)), layer, shape[-normalised:]),
                 partial(lambda s, seed: _normal(s, seed), shape))


def _opacus_sequence_bias() -> None:
    # N 0..4, T 10..20, D 4..8, batch_first.
    for n, steps, width, batch_first in [(4, 10, 4, True), (3, 20, 8, False), (0, 12, 5, False)]:
        _add(f"opacus/sequence_bias/n{n}-t{steps}-d{width}" + ("" if batch_first else "-time_major"),
             _OPACUS_TESTS + "sequence_bias_test.py",
             partial(lambda d, bf: Probe(AppendBias(d, bf), time_major=not bf), width, batch_first),
             partial(lambda s, seed: _normal(s, seed), (n, steps, width)))


def _padded_sequences(n: int, steps: int, width: int, ordered: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch-first sequence (N, T, D), zero past each length, and the lengths in 1..T (the
    longest first when `ordered`; the first sample spans all T steps)."""
    gen = _generator(seed)
    lengths = torch.randint(1, steps + 1, (n,), generator=gen)
    lengths[0] = steps
    if ordered:
        lengths = lengths.sort(descending=True).values
    x = torch.randn(n, steps, width, generator=gen)
    return x * (torch.arange(steps) < lengths.unsqueeze(1)).unsqueeze(-1), lengths


def _opacus_recurrent() -> None:
    # DPRNN / DPGRU / DPLSTM: N 1..3, T 1..3, D 4..5, H 8..10, layers {1, 2}, bias, batch_first,
    # bidirectional, packed sequences (sorted or not).
    cases = {
        "rnn": [(3, 3, 4, 8, 1, True, True, False, None), (2, 2, 5, 10, 2, True, False, True, None),
                (1, 1, 4, 9, 1, False, True, True, None), (3, 3, 5, 8, 2, True, True, False, "sorted"),
                (3, 2, 4, 10, 1, False, False, False, "unsorted")],
        "gru": [(2, 3, 5, 9, 1, True, False, False, None), (3, 2, 4, 8, 2, False, True, True, None),
                (1, 3, 5, 10, 2, True, True, False, None), (3, 3, 4, 9, 1, True, False, True, "unsorted")],
        "lstm": [(3, 2, 4, 10, 1, True, True, False, None), (2, 3, 5, 8, 2, True, False, True, None),
                 (3, 3, 5, 9, 2, True, True, True, "sorted"), (2, 3, 4, 10, 1, True, False, False, "unsorted")],
    }
    for family, rows in cases.items():
        layer = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[family]
        for n, steps, width, hidden, layers, bias, batch_first, bidirectional, packed in rows:
            name = (f"n{n}-t{steps}-d{width}-h{hidden}-l{layers}-bias{int(bias)}"
                    + ("-bidirectional" if bidirectional else "") + ("" if batch_first else "-time_major")
                    + (f"-packed_{packed}" if packed else ""))
            rnn = partial(layer, width, hidden, num_layers=layers, bias=bias, batch_first=batch_first,
                          bidirectional=bidirectional)
            if packed:
                build = partial(lambda r, s: PackedRecurrent(r(), enforce_sorted=s), rnn, packed == "sorted")
                inputs = partial(_padded_sequences, n, steps, width, packed == "sorted")
            else:
                build = partial(lambda r, bf: Probe(r(), time_major=not bf), rnn, batch_first)
                inputs = partial(lambda s, seed: _normal(s, seed), (n, steps, width))
            _add(f"opacus/{family}/{name}", _OPACUS_TESTS + "dp_rnn_test.py", build, inputs)


def _opacus_attention() -> None:
    # DPMultiheadAttention: N 1..4, T 16..20, D = 4, heads {1, 2}, bias, add_bias_kv, add_zero_attn,
    # kdim = vdim = D or None; time-major query, key, value.
    for n, steps, heads, bias, bias_kv, zero_attn, kv_dim in [
        (4, 16, 1, True, False, False, False), (2, 20, 2, True, False, False, True),
        (3, 17, 2, False, False, False, False), (1, 18, 1, True, True, False, False),
        (4, 19, 2, True, False, True, False), (2, 16, 2, True, True, True, True),
        (3, 20, 1, False, True, True, False),
    ]:
        name = (f"n{n}-t{steps}-heads{heads}-bias{int(bias)}" + ("-bias_kv" if bias_kv else "")
                + ("-zero_attn" if zero_attn else "") + ("-kvdim" if kv_dim else ""))
        build = partial(lambda *a, **k: Attention(nn.MultiheadAttention(*a, **k)), 4, heads, bias=bias,
                        add_bias_kv=bias_kv, add_zero_attn=zero_attn, kdim=4 if kv_dim else None,
                        vdim=4 if kv_dim else None)
        inputs = partial(lambda s, seed: tuple(_normal(s, seed + i) for i in range(3)), (n, steps, 4))
        _add(f"opacus/multihead_attention/{name}", _OPACUS_TESTS + "dp_multihead_attention_test.py", build, inputs)


# ---- BackPACK: test/extensions/firstorder (BatchGrad) and test/core/derivatives ---------------------

_FIRSTORDER = "test/extensions/firstorder/firstorder_settings.py"
_DERIVATIVES = "test/core/derivatives/"


def _cnn(layer: Callable[[], nn.Module], shape: Sequence[int]) -> nn.Module:
    """`layer`, ReLU, Flatten and a frozen Linear(features, 5) (BackPACK's simple CNN problem)."""
    conv = layer()
    with torch.no_grad():
        features = conv(torch.zeros(1, *shape[1:])).numel()
    return Probe(conv, readout=nn.Sequential(nn.ReLU(), nn.Flatten(), frozen(nn.Linear(features, 5))))


def _peer(config_id: str, read_from: str, build: Callable[[], nn.Module], inputs: Callable[[int], Inputs],
          classes: tuple[Sequence[int], int] | None = None, loss_fn: LossFn | None = None) -> None:
    """A BackPACK problem as it stands: `classes` (target shape, count) for cross-entropy (per
    position when the target has more dims than the batch), else regression (mse)."""
    if classes is None:
        _add(config_id, read_from, build, inputs, loss_fn=mse, head=PEER_HEAD)
        return
    shape, count = classes
    _add(config_id, read_from, build, inputs, targets=lambda model, batch, seed: _classes(shape, count, seed),
         loss_fn=loss_fn or (cross_entropy if len(shape) == 1 else spatial_cross_entropy), head=PEER_HEAD)


def _backpack_linear() -> None:
    uniform = partial(lambda s, seed: _uniform(s, seed))
    for name, shape, build, classes in [
        ("linear10-5-ce", (3, 10), lambda: nn.Sequential(nn.Linear(10, 5)), ((3,), 5)),
        ("linear10-7-linear7-5-ce", (3, 10), lambda: nn.Sequential(nn.Linear(10, 7), nn.Linear(7, 5)), ((3,), 5)),
        ("linear-relu-linear-ce", (3, 10), lambda: nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 5)), ((3,), 5)),
        ("linear-sigmoid-linear-mse", (3, 10), lambda: nn.Sequential(nn.Linear(10, 7), nn.Sigmoid(), nn.Linear(7, 5)), None),
        ("one-additional-mse", (3, 4, 5), lambda: nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2)), None),
        ("two-additional-mse", (3, 4, 2, 5), lambda: nn.Sequential(nn.Linear(5, 3), nn.Sigmoid(), nn.Linear(3, 2)), None),
        ("three-additional-mse", (3, 4, 2, 3, 5), lambda: nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2)), None),
        ("one-additional-ce", (3, 4, 5), lambda: nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2), nn.Flatten()), ((3,), 8)),
        ("two-additional-ce", (3, 4, 2, 5),
         lambda: nn.Sequential(nn.Linear(5, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.Flatten()), ((3,), 16)),
        ("three-additional-ce", (3, 4, 2, 3, 5),
         lambda: nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2), nn.Flatten()), ((3,), 48)),
    ]:
        _peer(f"backpack/linear/{name}", _FIRSTORDER, build, partial(uniform, shape), classes)
    # derivatives: single Linear layers, one with an ill-scaled input (a large entry beside small ones)
    for name, shape, build in [
        ("derivatives-7-3-nobias", (12, 7), lambda: Probe(nn.Linear(7, 3, bias=False))),
    ]:
        _add(f"backpack/linear/{name}", _DERIVATIVES + "linear_settings.py", build, partial(uniform, shape))
    _add("backpack/linear/derivatives-ill-scaled-input", _DERIVATIVES + "linear_settings.py", lambda: Probe(nn.Linear(3, 2)),
         lambda seed: _uniform((3, 3), seed) * torch.tensor([1.0, 40.0, 1.0]) - 0.5)


# (input shape, positional arguments) of BackPACK's simple-CNN BatchGrad problems: for convolutions
# (in, out, kernel, stride, padding, dilation, groups, bias); for transposed ones
# (in, out, kernel, stride, padding, output_padding, groups, bias, dilation).
_FIRSTORDER_CONVS = {
    "conv1d": [((3, 3, 7), (3, 2, 2)), ((3, 2, 7), (2, 3, 2, 2, 0, 2)), ((3, 3, 7), (3, 2, 2, 2, 1)),
               ((3, 3, 8), (3, 6, 2, 4, 2, 3)), ((3, 3, 7), (3, 2, 2, 4, 2, 1, 1, False))],
    "conv2d": [((3, 3, 7, 7), (3, 2, 2)), ((3, 2, 7, 7), (2, 3, 2, 2, 0, 2)), ((3, 3, 7, 7), (3, 2, 2, 2, 1)),
               ((3, 3, 8, 8), (3, 6, 2, 4, 2, 3)), ((3, 3, 7, 7), (3, 2, 2, 4, 2, 1, 1, False))],
    "conv3d": [((3, 3, 2, 7, 7), (3, 2, 2)), ((3, 2, 3, 7, 7), (2, 3, 2, 2, 0, 2)), ((3, 3, 2, 7, 7), (3, 2, 2, 3, 2)),
               ((3, 3, 4, 8, 8), (3, 6, 2, 4, 2, 3)), ((3, 3, 2, 7, 7), (3, 2, 2, 4, 2, 1, 1, False))],
    "conv_transpose1d": [((3, 3, 7), (3, 2, 2)), ((3, 2, 7), (2, 3, 2, 2, 0, 0, 1, True, 2)),
                         ((3, 3, 7), (3, 2, 2, 2, 1)), ((3, 3, 8), (3, 6, 2, 4, 2, 0, 1, True, 3)),
                         ((3, 3, 7), (3, 2, 2, 4, 2, 0, 1, False))],
    "conv_transpose2d": [((3, 3, 7, 7), (3, 2, 2)), ((3, 2, 9, 9), (2, 4, 2, 1, 0, 0, 1, True, 2)),
                         ((3, 3, 7, 7), (3, 2, 2, 2, 1)), ((3, 3, 7, 7), (3, 2, 2, 4, 2, 0, 1, False))],
    "conv_transpose3d": [((3, 3, 2, 7, 7), (3, 2, 2)), ((3, 2, 3, 5, 5), (2, 3, 2, 2, 2, 0, 1, True, 2)),
                         ((3, 3, 2, 7, 7), (3, 2, 2, 4, 2, 0, 1, False))],
}

_LAYERS = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d, "conv_transpose1d": nn.ConvTranspose1d,
           "conv_transpose2d": nn.ConvTranspose2d, "conv_transpose3d": nn.ConvTranspose3d}

# single layers of test/core/derivatives/convolution_settings.py:
# (family, input shape, (in_channels, out_channels, kernel_size), other keyword arguments)
_DERIVATIVE_CONVS = [
    ("conv1d", (3, 3, 7), (3, 9, 2), {"padding": 1, "bias": False, "groups": 3}),
    ("conv2d", (3, 2, 7, 7), (2, 3, 2), {"bias": False, "padding": 1, "stride": 2, "dilation": 2}),
    ("conv_transpose1d", (3, 2, 20), (2, 3, 2), {"stride": 3, "dilation": 5}),
    ("conv_transpose2d", (3, 2, 7, 7), (2, 3, 2), {"bias": False, "padding": 1, "stride": 2, "dilation": 2}),
    ("conv_transpose2d", (3, 6, 7, 7), (6, 9, 2), {"dilation": 2, "groups": 3}),
    ("conv_transpose3d", (1, 3, 3, 4, 4), (3, 6, 2), {"padding": 2, "stride": 4}),
]


def _backpack_convs() -> None:
    uniform = partial(lambda s, seed: _uniform(s, seed))
    for family, rows in _FIRSTORDER_CONVS.items():
        layer = _LAYERS[family]
        for shape, args in rows:
            name = f"simple-cnn-in{'x'.join(map(str, shape))}-args{'-'.join(str(a) for a in args)}"
            _add(f"backpack/{family}/{name}", _FIRSTORDER, partial(_cnn, partial(layer, *args), shape),
                 partial(uniform, shape), targets=lambda model, batch, seed: _classes((3,), 5, seed),
                 loss_fn=cross_entropy, head=CLASSIFY)
    keys = {"stride": "s", "padding": "p", "dilation": "d", "groups": "g", "bias": "bias"}
    for family, shape, (channels, out, kernel), options in _DERIVATIVE_CONVS:
        name = f"derivatives-i{channels}-o{out}-k{kernel}-" + "-".join(
            f"{keys[k]}{int(v) if isinstance(v, bool) else v}" for k, v in options.items())
        _add(f"backpack/{family}/{name}", _DERIVATIVES + "convolution_settings.py",
             partial(lambda l, a, kw: Probe(l(*a, **kw)), _LAYERS[family], (channels, out, kernel), options),
             partial(uniform, shape))


def _backpack_batch_norm() -> None:
    uniform = partial(lambda s, seed: _uniform(s, seed))
    for name, shape, build, classes in [
        ("bn1d-in2x3x4", (2, 3, 4), lambda: evaluation_mode(nn.BatchNorm1d(3)), ((2, 4), 3)),
        ("bn2d-in3x2x4x3", (3, 2, 4, 3), lambda: evaluation_mode(nn.BatchNorm2d(2)), ((3, 4, 3), 2)),
        ("bn3d-in3x3x4x1x2", (3, 3, 4, 1, 2), lambda: evaluation_mode(nn.BatchNorm3d(3)), ((3, 4, 1, 2), 3)),
        ("bn3d-linear-bn3d-relu-bn3d", (3, 3, 4, 1, 2), lambda: evaluation_mode(nn.Sequential(
            nn.BatchNorm3d(3), nn.Linear(2, 3), nn.BatchNorm3d(3), nn.ReLU(), nn.BatchNorm3d(3))), ((3, 4, 1, 3), 3)),
    ]:
        _peer(f"backpack/batch_norm_eval/{name}", _FIRSTORDER, build, partial(uniform, shape), classes)
    for name, shape, layer in [("derivatives-bn1d-in5x7", (5, 7), nn.BatchNorm1d),
                               ("derivatives-bn3d-in5x7x3x4x2", (5, 7, 3, 4, 2), nn.BatchNorm3d)]:
        _add(f"backpack/batch_norm_eval/{name}", _DERIVATIVES + "batch_norm_settings.py",
             partial(lambda l: Probe(eval_batch_norm(l(7))), layer), partial(uniform, shape))


class _Permuted(nn.Module):
    """A recurrent layer's output (B, T, H) as (B, H, T): positions last, for a per-position loss."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0].permute(0, 2, 1)


def _backpack_recurrent_and_embedding() -> None:
    uniform = partial(lambda s, seed: _uniform(s, seed))
    _peer("backpack/rnn/rnn6-3-permute-ce", _FIRSTORDER, lambda: _Permuted(nn.RNN(6, 3, batch_first=True)),
          partial(uniform, (8, 5, 6)), ((8, 5), 3))
    _peer("backpack/rnn/rnn6-3-permute-flatten-mse", _FIRSTORDER,
          lambda: nn.Sequential(_Permuted(nn.RNN(6, 3, batch_first=True)), nn.Flatten()), partial(uniform, (8, 5, 6)))
    _peer("backpack/lstm/lstm3-4-flatten-ce", _FIRSTORDER,
          lambda: nn.Sequential(Probe(nn.LSTM(3, 4, batch_first=True)), nn.Flatten()),
          partial(uniform, (4, 5, 3)), ((4,), 20))
    _add("backpack/rnn/derivatives-rnn4-3", _DERIVATIVES + "rnn_settings.py",
         lambda: Probe(nn.RNN(4, 3, batch_first=True)), partial(uniform, (3, 5, 4)))
    _add("backpack/lstm/derivatives-lstm4-3", _DERIVATIVES + "lstm_settings.py",
         lambda: Probe(nn.LSTM(4, 3, batch_first=True)), partial(uniform, (3, 5, 4)))
    _peer("backpack/embedding/embedding5-3-linear3-4-ce", _FIRSTORDER,
          lambda: nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 4)), lambda seed: _indices((6,), 5, seed), ((6,), 4))
    _peer("backpack/embedding/embedding3-5-flatten-ce", _FIRSTORDER,
          lambda: nn.Sequential(nn.Embedding(3, 5), nn.Flatten()), lambda seed: _indices((4, 2, 2), 3, seed), ((4,), 10))
    _add("backpack/embedding/derivatives-embedding3-5-in4", _DERIVATIVES + "embedding_settings.py",
         lambda: Probe(nn.Embedding(3, 5)), lambda seed: _indices((4,), 3, seed))
    _add("backpack/embedding/derivatives-embedding5-7-in8x3x3", _DERIVATIVES + "embedding_settings.py",
         lambda: Probe(nn.Embedding(5, 7)), lambda seed: _indices((8, 3, 3), 5, seed))


for _register in (_opacus_linear, partial(_opacus_conv, 1), partial(_opacus_conv, 2), partial(_opacus_conv, 3),
                  _opacus_embedding, _opacus_embedding_bag, _opacus_norms, _opacus_sequence_bias, _opacus_recurrent,
                  _opacus_attention, _backpack_linear, _backpack_convs, _backpack_batch_norm,
                  _backpack_recurrent_and_embedding):
    _register()


def by_id(config_id: str) -> PeerConfig:
    """The configuration called `config_id`; KeyError for another."""
    for config in CONFIGS:
        if config.id == config_id:
            return config
    raise KeyError(config_id)


__all__ = ["BACKPACK", "CLASSIFY", "CONFIGS", "FAMILIES", "OPACUS", "PEER_HEAD", "REGRESS", "PeerConfig", "by_id",
           "seed_of", "spatial_cross_entropy"]

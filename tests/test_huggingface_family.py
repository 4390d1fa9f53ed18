"""The Hugging Face family of the zoo (`persample.workloads.huggingface`): eight transformers models,
built from configurations with random weights, called with keyword inputs, right-padded batches.

What is checked: each workload builds at size small for B=1 and 3, its batch follows the dtype cast
and pads as documented, its loss is one finite number per sample that padding does not leak into;
a batch of none is refused by transformers itself (documented below); the family registers only
with transformers (and peft) installed, without importing them; the loop method agrees with a
hand-written float64 autograd loop; and `test_methods_on_the_family` holds every other method to
the float64 reference: right, or a clear refusal (`Unsupported`), never a wrong answer or a raw
error, with the issue's targets for how many each must get right.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("peft")

import persample  # noqa: E402
from persample import Unsupported  # noqa: E402
from persample import losses  # noqa: E402
from persample.batch import CallArgs  # noqa: E402
from persample.conformance.conditioning import well_conditioned_seed  # noqa: E402
from persample.contract import trainable_parameters  # noqa: E402
from persample.reference import compare, reference_grads, tolerance_for  # noqa: E402
from persample.workloads import BENCH, QUICK, get_workload  # noqa: E402
from persample.workloads.huggingface import ATTENTION, HF_TAG, LogitsOf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("hf_gpt2", "hf_bert", "hf_distilbert", "hf_roberta", "hf_t5", "hf_vit", "hf_llama", "hf_gpt2_lora")
LANGUAGE_MODELS = {"hf_gpt2", "hf_t5", "hf_llama", "hf_gpt2_lora"}  # logits (B, T, vocab), labels (B, T)
VOCAB, CLASSES, SEQ, IMAGE = 99, 3, 6, 16  # the small size
TABLE_BATCH = 4


@pytest.fixture(scope="module")
def built():
    """`built(name, batch, dtype=float64, seed=0)`: the workload at size small, each built once per
    module (no test changes a model); the float64 reference of the table's problems is kept too."""
    cache = {}

    def build(name: str, batch: int, dtype: torch.dtype = torch.float64, seed: int = 0):
        key = (name, batch, dtype, seed)
        if key not in cache:
            cache[key] = get_workload(name).build("small", batch, seed=seed, dtype=dtype)
        return cache[key]

    build.references = {}
    yield build
    cache.clear()
    build.references.clear()


def sample(problem, i: int):
    """Sample i alone: its inputs (a batch of one, the padding kept) and targets."""
    return CallArgs.of(problem.inputs).select(i).to_user(), problem.targets[i:i + 1]


def hand_written_loop(problem) -> dict[str, torch.Tensor]:
    """One autograd backward per sample: {name: (B, *param.shape)} of the trainable parameters."""
    params = trainable_parameters(problem.model)
    grads = {name: [] for name in params}
    for i in range(problem.batch_size):
        inputs, targets = sample(problem, i)
        loss = problem.loss_fn(problem.model(**inputs), targets).sum()
        for name, grad in zip(params, torch.autograd.grad(loss, list(params.values()))):
            grads[name].append(grad)
    return {name: torch.stack(g) for name, g in grads.items()}


# ---- the family as built -----------------------------------------------------------------------


def test_the_family_is_registered_with_its_tags():
    for name in NAMES:
        workload = get_workload(name)
        area = "vision" if name == "hf_vit" else "sequence"
        assert {HF_TAG, area, BENCH} <= workload.tags, (name, workload.tags)
        # not quick: the quick grid times size "full" on a CPU, seconds per loop step (bench/grid.py)
        assert QUICK not in workload.tags and workload.cpu_size == "small", name
        assert ATTENTION in workload.description, name


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_each_workload_builds_and_its_loss_is_per_sample(built, name, batch):
    problem = built(name, batch)
    assert isinstance(problem.model, LogitsOf)
    logits = problem.model(**problem.inputs)
    expected = (batch, SEQ, VOCAB) if name in LANGUAGE_MODELS else (batch, CLASSES)
    assert tuple(logits.shape) == expected and logits.dtype == torch.float64
    loss = problem.loss_fn(logits, problem.targets)
    assert loss.shape == (batch,) and torch.isfinite(loss).all()
    for i in range(batch):  # padding does not leak: a sample alone has its loss in the batch
        inputs, targets = sample(problem, i)
        torch.testing.assert_close(problem.loss_fn(problem.model(**inputs), targets), loss[i:i + 1],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_the_batch_follows_the_dtype_cast_and_pads_on_the_right(built, name):
    for dtype in (torch.float32, torch.float64):
        problem = built(name, 3, dtype)
        for key, value in problem.inputs.items():
            assert value.dtype == (dtype if key == "pixel_values" else torch.int64), (key, value.dtype)
        assert next(problem.model.parameters()).dtype == dtype
    problem = built(name, 3)
    if name == "hf_vit":
        assert problem.inputs["pixel_values"].shape == (3, 3, IMAGE, IMAGE)
        return
    masks = [problem.inputs["attention_mask"]] + ([problem.inputs["decoder_attention_mask"]] if name == "hf_t5" else [])
    for mask in masks:
        assert mask.shape == (3, SEQ)
        assert mask[0].all() and not mask[1].all(), "sample 0 full length, sample 1 padded"
        assert (mask.cummin(1).values == mask).all(), "right padding: no token after a pad"
    if name in LANGUAGE_MODELS:
        assert ((problem.targets == -100) == (masks[-1] == 0)).all(), "labels are -100 exactly on padding"
    assert built(name, 1).inputs["attention_mask"].all(), "a batch of one is full length"


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_of_none_is_refused_by_transformers_itself(built, name):
    """Documented: the batch builds (B=0 tensors), but transformers' attention reshapes with
    `view(0, T, -1, head_dim)`, which torch refuses for 0 elements; the family is not run at B=0."""
    problem = built(name, 0)
    assert problem.batch_size == 0 and all(v.shape[0] == 0 for v in problem.inputs.values())
    with pytest.raises(RuntimeError, match="cannot reshape tensor of 0 elements"):
        problem.model(**problem.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_no_dropout_default_attention_and_only_the_adapter_trainable(built, name):
    model = built(name, 1).model
    config = model.model.config
    assert config._attn_implementation == ATTENTION
    drops = {key: value for key, value in config.to_dict().items() if "drop" in key}
    assert drops and all(value == 0.0 for value in drops.values()), drops
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))
    trainable = trainable_parameters(model)
    if name == "hf_gpt2_lora":
        assert trainable and all(".lora_A." in key or ".lora_B." in key for key in trainable), list(trainable)
        assert all(p.abs().sum() > 0 for p in trainable.values()), "A and B drawn at random, not B = 0"
    else:
        assert len(trainable) == len(list(model.parameters()))


def test_the_seed_decides_the_weights():
    first, again = (get_workload("hf_llama").build("small", 2, seed=5).model for _ in range(2))
    other = get_workload("hf_llama").build("small", 2, seed=6).model
    for a, b, c in zip(first.parameters(), again.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))


def test_the_full_size_builds_on_the_meta_device():
    """The benchmarks' skip rules size the full models on the meta device (`bench/skips.meta_model`)."""
    with torch.device("meta"):
        model = get_workload("hf_gpt2").make_model("full")
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT-2 small, head tied


def run_python(code: str) -> str:
    """Run `code` in a fresh interpreter at the repository root; returns its stdout."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_zoo_does_not_import_transformers():
    out = run_python("""
        import sys
        import persample.workloads as w
        names = [x.name for x in w.all_workloads() if x.name.startswith("hf_")]
        print(len(names), "transformers" in sys.modules, "peft" in sys.modules)
    """)
    assert out == "8 False False"


@pytest.mark.parametrize("blocked, expected", [("transformers", 0), ("peft", 7)])
def test_without_the_packages_the_family_is_not_registered(blocked, expected):
    out = run_python(f"""
        import sys
        sys.modules[{blocked!r}] = None  # as if not installed: find_spec gives None
        import persample.workloads as w
        print(len([x for x in w.all_workloads() if "{HF_TAG}" in x.tags]))
    """)
    assert out == str(expected)


# ---- the losses --------------------------------------------------------------------------------


def test_shifted_token_loss_is_the_mean_over_labelled_next_tokens():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 5, 7, dtype=torch.float64), torch.randint(7, (3, 5))
    labels[1, 3:] = -100
    labels[2, 1:] = -100  # only the first token: no next token is labelled
    loss = losses.shifted_token_cross_entropy(logits, labels)
    expected = [nn.functional.cross_entropy(logits[i, :-1], labels[i, 1:], ignore_index=-100) for i in range(2)]
    torch.testing.assert_close(loss[:2], torch.stack(expected))
    assert loss[2] == 0 and torch.isfinite(loss).all()
    logits.requires_grad_(True)
    losses.shifted_token_cross_entropy(logits, labels).sum().backward()
    assert torch.isfinite(logits.grad).all() and not logits.grad[2].any()


def test_seq2seq_loss_is_unshifted_and_a_sample_without_labels_gives_zero():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 7, dtype=torch.float64), torch.randint(7, (2, 4))
    labels[1] = -100
    loss = losses.seq2seq_token_cross_entropy(logits, labels)
    torch.testing.assert_close(loss[0], nn.functional.cross_entropy(logits[0], labels[0]))
    assert loss[1] == 0


# ---- per-sample gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_loop_agrees_with_a_hand_written_float64_loop(built, name):
    problem = built(name, 3)
    grads = persample.per_sample_grads(problem.model, problem.inputs, problem.targets,
                                       loss_fn=problem.loss_fn, method="loop")
    expected = hand_written_loop(problem)
    assert grads.keys() == expected.keys()
    comparison = compare(grads, expected)
    tolerance = tolerance_for(torch.float64)
    assert comparison.within(tolerance), comparison.describe(tolerance)


def table_problem(built, name: str):
    """The float32 workload at B=4 on the conformance suite's seed (ReLU inputs off the kink)."""
    return built(name, TABLE_BATCH, torch.float32, well_conditioned_seed(get_workload(name), TABLE_BATCH))


def table_reference(built, name: str) -> dict[str, torch.Tensor]:
    """The float64 loop on `table_problem(name)`'s values, computed once."""
    if name not in built.references:
        problem = table_problem(built, name)
        built.references[name] = reference_grads(problem.model, problem.inputs, problem.targets, problem.loss_fn)
    return built.references[name]


def outcome(built, method: str, name: str) -> tuple[str, str]:
    """("right" | "refused" | "wrong" | "error", the first line of the message) for `method` on the
    float32 workload at B=4, against the float64 reference within float32's tolerance."""
    problem = table_problem(built, name)
    try:
        grads = persample.per_sample_grads(problem.model, problem.inputs, problem.targets,
                                           loss_fn=problem.loss_fn, method=method)
    except Unsupported as refusal:
        return "refused", str(refusal).splitlines()[0]
    except Exception as error:  # noqa: BLE001 - a raw error is an outcome of the table
        where = traceback.extract_tb(error.__traceback__)[-1]
        first = str(error).splitlines()[0] if str(error) else ""
        return "error", f"{type(error).__name__}: {first} [{Path(where.filename).name}:{where.lineno}]"
    comparison = compare(grads, table_reference(built, name))
    tolerance = tolerance_for(torch.float32)
    return ("right", "") if comparison.within(tolerance) else ("wrong", comparison.describe(tolerance))


NEEDED_RIGHT = {"hooks": 7, "expand": 7, "kernel": 7, "vmap": 4, "jax": 6, "auto": 8}
"""How many of the 8 architectures each method must be right on (the rest: clear refusals)."""


@pytest.mark.parametrize("method", list(NEEDED_RIGHT))
def test_methods_on_the_family(built, method):
    """`method` on each workload: right, or a clear refusal; never wrong, never a raw error, and right
    on at least `NEEDED_RIGHT[method]` of the 8 (one test per method, so the workers share them)."""
    table = {name: outcome(built, method, name) for name in NAMES}
    lines = [f"{method:7s} {name:14s} {kind:8s} {message}" for name, (kind, message) in table.items()]
    print("\n".join(lines))
    right = sum(kind == "right" for kind, _ in table.values())
    bad = [line for line, (kind, _) in zip(lines, table.values()) if kind in ("wrong", "error")]
    missed = [f"{method}: right on {right} of {len(NAMES)}, needs {NEEDED_RIGHT[method]}"] if right < NEEDED_RIGHT[method] else []
    assert not bad and not missed, "\n".join(
        ["wrong answers or raw errors:", *bad, "targets missed:", *missed,
         "the whole row (method, workload, outcome, first line):", *lines])

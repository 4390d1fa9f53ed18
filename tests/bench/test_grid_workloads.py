"""Which workloads each benchmark grid times, and at which size: pinned to the grids as they were
when the lists were written by hand, now that the workloads' tags decide (`bench`, `quick`) and each
workload's `cpu_size` says which size the CPU grid times."""
from persample.bench.grid import GRIDS, get_grid
from persample.workloads.registry import HUGGING_FACE, all_workloads

ZOO = {"mlp", "mnist_cnn", "cifar_cnn", "text_classifier", "transformer_block", "lstm_classifier", "linear_large"}
# The full-size sequence and CIFAR models take seconds per step on a CPU at B=256: size "small" there.
CPU_ZOO = {"mlp", "mnist_cnn", "cifar_cnn:small", "text_classifier:small", "transformer_block:small",
           "lstm_classifier:small", "linear_large"}
# The Hugging Face family (registered with the `hf` extra): full size on GPUs, small on the CPU.
HF = {w.name for w in all_workloads() if HUGGING_FACE in w.tags}


def test_the_gpu_grid_times_the_benchmark_zoo_at_full_size():
    assert set(get_grid("gpu").workloads) == ZOO | HF
    assert len(get_grid("gpu").workloads) == len(ZOO | HF)


def test_the_cpu_grid_times_the_same_zoo_with_the_heavy_models_at_size_small():
    expected = CPU_ZOO | {f"{name}:small" for name in HF}
    assert set(get_grid("cpu").workloads) == expected
    assert len(get_grid("cpu").workloads) == len(expected)
    assert {case.workload_ref for case in get_grid("cpu").cases()} == expected


def test_the_quick_grid_times_two_small_models():
    assert get_grid("quick").workloads == ("mlp", "mnist_cnn")


def test_the_union_grid_holds_every_grids_workloads_once():
    union = get_grid("all").workloads
    assert len(union) == len(set(union))
    assert set(union) == {ref for name, grid in GRIDS.items() if name != "all" for ref in grid.workloads}

"""Which workloads each benchmark grid times, and at which size: pinned to the grids as they were
when the lists were written by hand, now that the workloads' tags decide (`bench`, `quick`) and each
workload's `cpu_size` says which size the CPU grid times."""
from persample.bench.grid import GRIDS, get_grid

ZOO = {"mlp", "mnist_cnn", "cifar_cnn", "text_classifier", "transformer_block", "lstm_classifier", "linear_large"}
# The full-size sequence and CIFAR models take seconds per step on a CPU at B=256: size "small" there.
CPU_ZOO = {"mlp", "mnist_cnn", "cifar_cnn:small", "text_classifier:small", "transformer_block:small",
           "lstm_classifier:small", "linear_large"}


def test_the_gpu_grid_times_the_benchmark_zoo_at_full_size():
    assert set(get_grid("gpu").workloads) == ZOO
    assert len(get_grid("gpu").workloads) == len(ZOO)


def test_the_cpu_grid_times_the_same_zoo_with_the_heavy_models_at_size_small():
    assert set(get_grid("cpu").workloads) == CPU_ZOO
    assert len(get_grid("cpu").workloads) == len(CPU_ZOO)
    assert {case.workload_ref for case in get_grid("cpu").cases()} == CPU_ZOO


def test_the_quick_grid_times_two_small_models():
    assert get_grid("quick").workloads == ("mlp", "mnist_cnn")


def test_the_union_grid_holds_every_grids_workloads_once():
    union = get_grid("all").workloads
    assert len(union) == len(set(union))
    assert set(union) == {ref for name, grid in GRIDS.items() if name != "all" for ref in grid.workloads}

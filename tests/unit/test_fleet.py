"""How many inference processes a worker runs, and what each child's settings are."""

from __future__ import annotations

from pathlib import Path

from stream_app.scoring.fleet import child_settings, default_processes, physical_cores
from stream_app.settings import Settings

CPUINFO_4_CORES_8_THREADS = "\n".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 4}\n" for i in range(8))


def test_physical_cores_counts_cores_not_hyperthreads(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO_4_CORES_8_THREADS)
    assert physical_cores(info) == 4


def test_physical_cores_falls_back_to_logical_cpus_without_cpuinfo(tmp_path: Path):
    assert physical_cores(tmp_path / "missing") >= 1


def test_processes_default_to_cores_capped_by_partitions():
    assert default_processes(partitions=4, cores=16) == 4
    assert default_processes(partitions=32, cores=16) == 16
    assert default_processes(partitions=0, cores=2) == 1


def test_children_get_a_free_port_one_torch_thread_and_no_grandchildren():
    child = child_settings(Settings(metrics_port=9108))
    assert (child.metrics_port, child.torch_threads, child.worker_processes) == (0, 1, 1)

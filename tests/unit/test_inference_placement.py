"""Where inference runs: CPU vector models on the event loop, image models on the inference thread.

From a second thread, each of an RVAE batch's small torch ops waited for the GIL the busy event loop held, and
the worker drained 3.7k-34k events/s from run to run; inline it is steady (docs/benchmarks.md#pipeline).
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import torch

from models import PatchMemoryScorer, RVAEScorer
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.model_manager import LoadedModel


def test_cpu_vector_models_run_inline_and_image_models_do_not():
    assert LoadedModel("sensors", "0001", RVAEScorer(n_features=4, device="cpu")).runs_inline
    assert not LoadedModel("camera", "0001", PatchMemoryScorer(device="cpu")).runs_inline


def test_the_inference_thread_has_its_own_torch_threads():
    before = torch.get_num_threads()
    with InferenceExecutor(threads=3) as executor:
        assert executor.pool.submit(torch.get_num_threads).result() == 3
    assert torch.get_num_threads() == before  # the calling thread's own count is untouched


def test_pipeline_scores_a_cpu_vector_model_on_the_loop_thread():
    from stream_app.scoring.pipeline import InspectionPipeline

    scorer = RVAEScorer(n_features=4, device="cpu")
    scorer.fit(np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32), epochs=1)
    loaded = LoadedModel("sensors", "0001", scorer)
    threads: list[str] = []

    def score(data: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return scorer.score(data)

    async def run() -> None:
        with InferenceExecutor() as executor:
            pipeline = InspectionPipeline.__new__(InspectionPipeline)  # only _infer is exercised
            pipeline.executor = executor
            await pipeline._infer(loaded, score, np.zeros((8, 4), np.float32))
            image = LoadedModel("camera", "0001", PatchMemoryScorer(device="cpu"))
            await pipeline._infer(image, score, np.zeros((8, 4), np.float32))

    asyncio.run(run())
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("inference")

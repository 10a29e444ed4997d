"""Computing in a worker: the heap settled once the model is loaded."""

from __future__ import annotations

from mlipx_serve.worker.compute import settle_heap


def test_a_worker_exempts_its_loaded_model_from_garbage_collection():
    import gc

    kept = [[n] for n in range(1000)]  # stands for a loaded model
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()


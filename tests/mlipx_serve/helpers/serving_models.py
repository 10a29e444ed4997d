"""A models file whose models say how they are served (``serving=``), for the tests of
per-model serving settings. Its calculators are ``batch_models``', which workers import
from this folder (the tests put it on their PYTHONPATH)."""

from mlipx_serve import GenericASECalculator


def counting(**serving):
    """EMT that offers ``calculate_batch`` and tags each result with the batch it came in."""
    return GenericASECalculator(module="batch_models", class_name="CountingBatchEMT",
                                serving=serving or None)


ALL_MODELS = {
    "batched": counting(batch_size=16, batch_wait=0.2),
    "plain": counting(),
    "limited": GenericASECalculator(module="batch_models", class_name="GpuEMT",  # slow
                                    serving={"max_workers": 2, "worker_timeout": 60}),
    "on-gpu-1": GenericASECalculator(module="batch_models", class_name="GpuEMT",
                                     serving={"gpus": [1], "max_workers": 2}),
}

"""Budget mode's sensitivity table on the sweep's Ray workers.

:func:`ray_map` is a :data:`edgecompress.lowrank.budget.SENSITIVITY_MAP` executor: each layer's
distortion measurements become one Ray task (the function and its captured model and inputs are
put in the object store once). :func:`sensitivity_on_workers` enables it around one build; the
sweep does so for entries run on a cluster (``--address``) or with ``--sensitivity-on-workers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from edgecompress.sweep.runner import import_ray


def _call(fn: Callable[[Any], Any], item: Any, cpus: int) -> Any:
    import torch

    torch.set_num_threads(cpus)
    return fn(item)


def ray_map(fn: Callable[[Any], Any], items: Sequence[Any], cpus: int = 1) -> list[Any]:
    """``[fn(item) for item in items]``, each call a Ray task of ``cpus`` CPUs, results in order.
    Needs a connected Ray (inside a sweep task it is)."""
    ray = import_ray()
    if not items:
        return []
    shared = ray.put(fn)
    remote = ray.remote(num_cpus=cpus, max_retries=1)(_call)
    return list(ray.get([remote.remote(shared, item, cpus) for item in items]))


@contextmanager
def sensitivity_on_workers(cpus: int = 1) -> Iterator[None]:
    """Budget-mode builds inside this block measure their sensitivity tables with :func:`ray_map`."""
    from edgecompress.lowrank.budget import sensitivity_executor

    with sensitivity_executor(lambda fn, items: ray_map(fn, items, cpus)):
        yield

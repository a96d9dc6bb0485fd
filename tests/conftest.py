"""Shared fixtures: tiny seeded models (ours and Hugging Face's) and workloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cblab_teach import ModelConfig, TinyLM
from cblab_teach.workloads import make_workload

os.environ["CBLAB_TEACH_PROGRESS"] = "off"  # checks run by tests never write the learner's progress file


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: torch's thread pool only adds waiting on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model64() -> TinyLM:
    """float64, so greedy token identity never hinges on a float32 near-tie."""
    return TinyLM(
        ModelConfig(
            vocab_size=97, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, dtype=torch.float64
        ),
        seed=1,
    )


@pytest.fixture(scope="session")
def workload():
    return make_workload(7, (1, 19), (1, 9), vocab_size=97, seed=3)


@pytest.fixture(scope="session")
def smollm2():
    """The real model, loaded once per test run (make test installs it and converts it before the tests)."""
    from cblab_teach.real import load_smollm2

    return load_smollm2()


def pytest_collection_modifyitems(config, items):
    """Under ``make mutants`` only: run a mutant's tests fastest first (mutmut's recorded durations), so the
    ``-x`` run stops at the first cheap test that catches it instead of after the slow ones."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    stats = Path("mutmut-stats.json")  # mutmut runs the tests from inside mutants/
    if "__mutmut_" not in mutant or not stats.exists():
        return
    seconds = json.loads(stats.read_text())["duration_by_test"]
    items.sort(key=lambda item: seconds.get(item.nodeid, float("inf")))

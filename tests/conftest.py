import pytest
import torch

import fusedops  # noqa: F401  (loads the library: torch.ops.fusedops)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where there is none)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cpp_client(tmp_path_factory):
    """examples/cpp built once per test session (test_deploy and test_export both run it), in a temporary folder."""
    from deploy_helpers import build_cpp_client
    return build_cpp_client(tmp_path_factory.mktemp("cpp-client"))

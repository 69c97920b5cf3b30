import os

import pytest


def _cuda_arch():
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"sm_{major}{minor}a"
    except Exception:
        pass
    return None


def pytest_collection_modifyitems(config, items):
    if _cuda_arch() is not None:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run these on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_kernel_cache(tmp_path_factory):
    """Tests compile into their own cache so they neither reuse nor pollute the user's."""
    if "AVO_CACHE_DIR" not in os.environ:
        os.environ["AVO_CACHE_DIR"] = str(tmp_path_factory.mktemp("kernel_cache"))
    yield

"""conftest.py — pytest markers shared by every suite.

`@pytest.mark.cuda` tests run only when pipec.cuda.is_available(); `@pytest.mark.multigpu`
tests only when two or more CUDA devices are visible; `@pytest.mark.nccl_ranks` tests (NCCL
jobs of several processes) when one is and the build has NCCL, the ranks sharing GPUs if
there are fewer than ranks (gpu_share.py). A build without the CUDA part (no `pipec.cuda`,
or one whose queries fail) counts as having no device, so those tests skip cleanly while
everything else runs.
"""
import pytest


def _cuda_device_count():
    try:
        import pipec
        cuda = getattr(pipec, "cuda", None)
        if cuda is None or not cuda.is_available():
            return 0
        count = getattr(cuda, "device_count", None)
        return int(count()) if count is not None else 1
    except Exception:  # a broken or missing CUDA part reads as "no device"
        return 0


def _has_nccl():
    import pipec.distributed as dist
    return dist.is_nccl_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (pipec.cuda.is_available())")
    config.addinivalue_line("markers", "multigpu: needs two or more CUDA devices")
    config.addinivalue_line("markers", "nccl_ranks: an NCCL job of several processes; runs "
                            "on one CUDA device or more (ranks share GPUs: gpu_share.py)")


def pytest_collection_modifyitems(config, items):
    def marked(it, name):
        return it.get_closest_marker(name) is not None

    wants_cuda = any(marked(it, m) for it in items for m in ("cuda", "multigpu", "nccl_ranks"))
    n = _cuda_device_count() if wants_cuda else 0
    skip_cuda = pytest.mark.skip(reason="no CUDA device (pipec.cuda.is_available() is False)")
    skip_multi = pytest.mark.skip(reason=f"needs 2 CUDA devices, {n} visible")
    skip_nccl = pytest.mark.skip(reason="pipec was built without NCCL")
    for it in items:
        if marked(it, "multigpu") and n < 2:
            it.add_marker(skip_multi)
        elif (marked(it, "cuda") or marked(it, "nccl_ranks")) and n < 1:
            it.add_marker(skip_cuda)
        elif marked(it, "nccl_ranks") and not _has_nccl():
            it.add_marker(skip_nccl)

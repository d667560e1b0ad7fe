import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# no per-example deadline: a loaded CI machine makes wall-clock limits fail at random (never a timed test)
settings.register_profile("vlcurate", deadline=None)
settings.load_profile("vlcurate")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (the runner joins an initialised Ray), started the way the
    CLI starts one: on 127.0.0.1, with long waits and a retry for a loaded machine."""
    import ray

    from pipeline.ray_env import start_ray

    start_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Cluster tests run last: they start Ray heads of their own (and stop only those)."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)

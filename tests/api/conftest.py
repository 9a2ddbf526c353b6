import pytest

from tests.conftest import MODEL_CACHE
from tests.server import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_path):
    """One real server per test module: embedded defaults plus a tiny model named `tiny`."""
    data_dir = tmp_path_factory.mktemp("server") / "data"
    env = {
        "TUNEGATE_MODEL_CACHE_DIR": str(MODEL_CACHE),
        "TUNEGATE_BASE_MODELS": '{"tiny": "%s"}' % tiny_model_path,
    }
    with RunningServer(data_dir, env) as srv:
        srv.key_a = srv.create_key("org-a")
        srv.key_b = srv.create_key("org-b")
        srv.admin_key = (data_dir / "admin_key").read_text().strip()
        yield srv

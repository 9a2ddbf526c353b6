import pytest

from tests.conftest import tiny_server_env
from tests.server import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_path, db_backend):
    """One real server per test module and metadata store (SQLite, PostgreSQL): the embedded defaults
    plus a tiny model named `tiny`."""
    data_dir = tmp_path_factory.mktemp("server") / "data"
    with RunningServer(data_dir, tiny_server_env(tiny_model_path, **db_backend())) as srv:
        srv.key_a = srv.create_key("org-a")
        srv.key_b = srv.create_key("org-b")
        srv.admin_key = (data_dir / "admin_key").read_text().strip()
        yield srv

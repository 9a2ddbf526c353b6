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


@pytest.fixture(scope="session")
def hardened_server(tmp_path_factory, tiny_model_path):
    """One server for the hardening tests (tests/api/test_hardening_{http,api}.py): short slow-client
    timeouts and one upload per key, so slow sockets are cut off within the test's budget."""
    data_dir = tmp_path_factory.mktemp("hardening") / "data"
    env = tiny_server_env(
        tiny_model_path,
        TUNEGATE_START_WORKERS="false",
        TUNEGATE_HEADER_TIMEOUT_SECONDS="1",
        TUNEGATE_BODY_IDLE_TIMEOUT_SECONDS="1",
        TUNEGATE_MAX_UPLOADS_PER_KEY="1",
    )
    with RunningServer(data_dir, env) as srv:
        srv.operator = (data_dir / "admin_key").read_text().strip()
        yield srv

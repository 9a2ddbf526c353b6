import pytest

from tests.conftest import MODEL_CACHE
from tests.server import RunningServer, wait_for_job


@pytest.fixture(scope="package")
def real_server(tmp_path_factory):
    """A real server on the embedded defaults with the real SmolLM2-135M-Instruct, shared by the e2e tests."""
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    with RunningServer(data_dir, {"TUNEGATE_MODEL_CACHE_DIR": str(MODEL_CACHE)}) as srv:
        srv.admin_key = (data_dir / "admin_key").read_text().strip()
        srv.key_a = srv.create_key("e2e-a")
        srv.key_b = srv.create_key("e2e-b")
        yield srv


@pytest.fixture(scope="package")
def demo_job(real_server):
    """The sample job trained once on the real model through the official SDK; shared by e2e tests."""
    from tunegate import samples

    client = real_server.client(real_server.key_a)
    with open(samples.path("demo_train"), "rb") as f:
        train = client.files.create(file=("train.jsonl", f), purpose="fine-tune")
    with open(samples.path("demo_valid"), "rb") as f:
        valid = client.files.create(file=("valid.jsonl", f), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2-135m-instruct",
        training_file=train.id,
        validation_file=valid.id,
        suffix="fmt",
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": samples.DEMO_HYPERPARAMETERS}},
    )
    return wait_for_job(client, job.id, 2700, poll=2)  # generous: a loaded 2-core machine trains ~5x slower

"""Scale-out through the API: a job asks for data-parallel workers with the `tunegate.n_workers`
extension and trains on 2 torch.distributed ranks to the end (tiny model, real workers)."""

from __future__ import annotations

import io

import pytest

from tests.api.test_job_faults import _client, _data, _server
from tests.server import wait_for_job


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_job_with_two_data_parallel_workers(tmp_path, tiny_model_path, db_backend):
    with _server(tmp_path, tiny_model_path, db_backend) as srv:  # 1 thread per worker, so 1 per rank
        client = _client(srv)
        f = client.files.create(file=("t.jsonl", io.BytesIO(_data(24))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=f.id,
            seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
            extra_body={"tunegate": {"n_workers": 2}},
        )
        done = wait_for_job(client, job.id, timeout=600)
        assert done.status == "succeeded", done.error
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert any(e.data and e.data.get("world_size") == 2 for e in events if e.type == "message")
        steps = sorted(e.data["step"] for e in events if e.type == "metrics")
        assert steps == list(range(1, steps[-1] + 1)) and steps[-1] >= 6  # every step once, reported by rank 0
        bad = client.with_options(max_retries=0).fine_tuning.jobs
        import openai

        with pytest.raises(openai.BadRequestError) as e:
            bad.create(model="tiny", training_file=f.id, extra_body={"tunegate": {"n_workers": 0}})
        assert e.value.body["param"].endswith("n_workers")

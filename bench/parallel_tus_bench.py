"""Parallel tus uploads (tus concatenation) vs one tus stream vs boto3 multipart (issue 19).

    .venv/bin/python bench/parallel_tus_bench.py [--size-mib 500] [--rounds 2] [--json PATH]

Starts its own NATS, PostgreSQL and SeaweedFS (temporary folder, free ports) and a real gateway
process. The file is a real video of 90-100% of --size-mib: lossless H.264 of noise made by
ffmpeg (as incompressible as camera footage). In each round, in turns, the same file:
  - tus-js-client, `parallelUploads: 4`, to the workspace's creation endpoint with a user token:
    four partial uploads at once, then the final upload, which storage joins (UploadPartCopy);
    timed from the upload's start to tus-js-client's onSuccess (the final upload created and
    joined);
  - tus-js-client, one stream (no parallelUploads), same endpoint, same chunk size;
  - boto3 `upload_file` straight to the same S3, multipart with 4 parts in flight (TransferConfig
    max_concurrency=4, 8 MiB parts, boto3's default part size).
Prints the median MiB/s of each and the ratios; target: parallel tus >= 0.9x boto3. Neither tus
figure includes the verification that follows the automatic commit, nor does boto3's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
from bench_stack import JWT_SECRET, bench_stack
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from tus_bench import Gateway

from rawdrive_devkit.testing import node_for, noise_video
from upload_gateway.auth import mint_dev_token

MIB = 1024 * 1024
WORKSPACE = "bench"
TUS_JS = Path(__file__).resolve().parents[1] / "services" / "upload-gateway" / "tests" / "tus" / "js"
CHUNK = 5 * MIB  # the seed front end's tus-js-client chunkSize
TARGET = 0.9


def tus_js(gateway: Gateway, token: str, video: Path, parallel: int) -> float:
    """Seconds tus-js-client took, as it measures them (start to onSuccess)."""
    endpoint = f"{gateway.url}/v1/workspaces/{WORKSPACE}/tus"
    result = subprocess.run(
        [node_for(TUS_JS), str(TUS_JS / "parallel.mjs"), endpoint, str(video),
         json.dumps({"Authorization": f"Bearer {token}"}), json.dumps({"filename": "clip.mp4", "filetype": "video/mp4"}),
         str(parallel), str(CHUNK)],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"tus-js-client failed: {result.stderr}")
    return float(json.loads(result.stdout)["seconds"])


def boto3_upload(s3, video: Path, key: str) -> float:
    conn = s3.connection
    client = boto3.client(
        "s3", endpoint_url=conn.endpoint, region_name=conn.region, aws_access_key_id=conn.access_key_id,
        aws_secret_access_key=conn.secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, max_pool_connections=16,
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )
    transfer = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4,
                              use_threads=True)  # fmt: skip
    started = time.perf_counter()
    client.upload_file(str(video), conn.bucket, key, Config=transfer)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here (for run_all.py)")
    args = parser.parse_args()
    with bench_stack("parallel-tus-bench-") as stack, tempfile.TemporaryDirectory(prefix="parallel-tus-") as tmp:
        video = Path(tmp) / "clip.mp4"
        noise_video(video, args.size_mib * MIB)  # at most the size: videos may be 500 MiB
        size = video.stat().st_size
        print(f"file: {size} bytes ({size / MIB:.1f} MiB), {os.cpu_count()} CPUs, load {os.getloadavg()}")
        # Enough quota for the partials, the final upload and each round's earlier finals.
        env = {**stack.env, "RAWDRIVE_MAX_BYTES_IN_FLIGHT_PER_WORKSPACE": str(64 * 1024 * MIB)}
        gateway = Gateway(env, Path(tmp) / "gateway.log")
        token = mint_dev_token(JWT_SECRET, sub="bench-user", workspaces={WORKSPACE: "member"}, ttl_s=7200)
        seconds: dict[str, list[float]] = {"parallel": [], "single": [], "boto3": []}
        try:
            for round_ in range(args.rounds):
                order = ["parallel", "single", "boto3"]
                order = order[round_ % 3 :] + order[: round_ % 3]  # each goes first in turn
                for name in order:
                    if name == "boto3":
                        taken = boto3_upload(stack.s3, video, f"baseline/{round_}")
                    else:
                        taken = tus_js(gateway, token, video, 4 if name == "parallel" else 1)
                    seconds[name].append(taken)
                    print(f"round {round_ + 1} {name:8s} {taken:7.2f} s  {size / MIB / taken:7.1f} MiB/s", flush=True)
        finally:
            gateway.stop()
    rate = {name: size / MIB / statistics.median(values) for name, values in seconds.items()}
    ratio = rate["parallel"] / rate["boto3"]
    print(f"\nmedian MiB/s: tus parallelUploads 4 {rate['parallel']:.1f}, tus one stream {rate['single']:.1f}, "
          f"boto3 multipart 4 in flight {rate['boto3']:.1f}")
    print(f"parallel tus / boto3 = {ratio:.2f}x (target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}); "
          f"parallel / one stream = {rate['parallel'] / rate['single']:.2f}x")
    if args.json:
        figures = [
            {"figure": f"{args.size_mib} MiB video, tus-js-client parallelUploads 4 (vs boto3 multipart, 4 in flight)",
             "unit": "MiB/s", "ours": round(rate["parallel"], 1), "baseline": round(rate["boto3"], 1),
             "ratio": round(ratio, 3), "target": f">= {TARGET}x", "met": ratio >= TARGET},
            {"figure": f"{args.size_mib} MiB video, tus-js-client parallelUploads 4 (vs one tus stream)",
             "unit": "MiB/s", "ours": round(rate["parallel"], 1), "baseline": round(rate["single"], 1),
             "ratio": round(rate["parallel"] / rate["single"], 3), "target": None, "met": None},
        ]
        args.json.write_text(json.dumps({"bench": "parallel_tus_bench", "figures": figures}, indent=2))


if __name__ == "__main__":
    main()

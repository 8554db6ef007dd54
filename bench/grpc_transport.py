#!/usr/bin/env python3
"""Client CPU per image over Draw Things' gRPC API against HTTP, at 1024 and 2048 px, in one run.

The HTTP simulator and the gRPC simulator (with response compression, gRPCServerCLI's
default, and without: its --no-response-compression) each run in a process of their
own at zero latency, so their drawing is never counted. The clients run here, one after
the other, each making the same txt2img request (the default template; at 2048 px with
the upscaler at 2x) ``--images`` times after one warm-up call. CPU is this process's
user + system time (``time.process_time``: grpcio's own threads included) per image,
from the request to checked PNG bytes in hand:

    HTTP: POST, read the JSON, base64-decode, check the PNG (no re-encode: the app's bytes)
    gRPC: the call, the stream, the tensor (fpzip or raw) -> RGB -> PNG (zlib level 1)

The ratio is gRPC's CPU over HTTP's: what the second transport costs the client. Both
answer with the same pixels (tests/test_grpc.py); the PNG bytes differ (each side's
encoder).

    .venv/bin/python bench/grpc_transport.py                # ~1-2 minutes
    .venv/bin/python bench/grpc_transport.py --images 10

(Not named after the grpc package: a script's folder comes first on sys.path, and
that name would shadow the package.)
"""

import argparse
import json
import time

from harness import PROJECT_DIR, print_table, start_simulator, stop_process

from drawpipe.drawthings.client import ClientSettings, SdapiClient
from drawpipe.drawthings.grpc_client import GrpcClient, GrpcSettings
from drawpipe.drawthings.grpc_simulator import start_process as start_grpc_simulator


def template(size_px: int) -> dict:
    payload = {key: value for key, value in
               json.loads((PROJECT_DIR / "payloads" / "txt2img.json").read_text()).items()
               if not key.startswith("_")}
    payload.update(prompt=payload["prompt"].replace("{prompt}", "a family"), seed=7)
    if size_px == 2048:
        payload.update(upscaler="4x_ultrasharp_f16.ckpt", upscaler_scale=2)
    return payload


def per_image(client, payload: dict, size_px: int, images: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, PNG bytes) per image, after one warm-up call."""
    expected = (size_px, size_px)
    client.generate("txt2img", payload, expected)
    cpu, wall = time.process_time(), time.monotonic()
    for index in range(images):
        answer = client.generate("txt2img", {**payload, "seed": 100 + index}, expected)
    return ((time.process_time() - cpu) / images, (time.monotonic() - wall) / images,
            len(answer.png))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5, help="per size and client (default 5)")
    arguments = parser.parse_args()
    servers = []
    try:
        http_process, http_url = start_simulator()
        servers.append(http_process)
        compressed_process, compressed_url, _ = start_grpc_simulator()
        servers.append(compressed_process)
        raw_process, raw_url, _ = start_grpc_simulator("--no-response-compression")
        servers.append(raw_process)
        clients = [("HTTP", SdapiClient(http_url, ClientSettings(retries=0))),
                   ("gRPC fpzip", GrpcClient(compressed_url, GrpcSettings(retries=0))),
                   ("gRPC raw", GrpcClient(raw_url, GrpcSettings(retries=0)))]
        rows = []
        for size_px in (1024, 2048):
            baseline = None
            for name, client in clients:
                cpu, wall, png_bytes = per_image(client, template(size_px), size_px,
                                                 arguments.images)
                baseline = baseline or cpu
                rows.append([f"{size_px} px", name, f"{cpu * 1000:.0f}", f"{wall * 1000:.0f}",
                             f"{png_bytes / 1e6:.1f}", f"{cpu / baseline:.1f}x"])
        for _, client in clients:
            client.close()
    finally:
        for process in servers:
            stop_process(process)
    print(f"client CPU per image, {arguments.images} images per row after a warm-up "
          "(simulators in their own processes, zero latency)")
    print_table(["size", "transport", "CPU ms", "wall ms", "PNG MB", "CPU vs HTTP"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

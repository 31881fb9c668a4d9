"""The served model under load: many requests, several at a time, some of them malformed.

Serves a model artifact (default: the newest ``outputs/runs/train/*/model``) with ``mlflow models
serve`` on 127.0.0.1 (one worker), as ``cvexp.register`` logs it, and sends ``--requests`` requests,
``--concurrency`` at a time; every tenth one is malformed, in turn: bad base64, not an image, no
rows, a wrong column, not JSON, an image whose header claims 20000x20000 pixels, a bad parameter
value, a body above the served model's ``max_request_bytes``. Each good request carries one image
and must get the detections of in-process prediction; each bad one a 4xx JSON error that does not
contain the payload. Records the status counts, latency percentiles of the good requests, and the
server's memory (RSS of its processes) after request 200 and after the last.

    python benchmarks/serving_load.py [--model PATH] [--requests 1000] [--concurrency 8] [--no-write]

``--write`` (default) puts the table into docs/benchmarks.md (section ``serving-load``).
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MALFORMED_KINDS = ("bad base64", "not an image", "no rows", "wrong column", "not JSON", "20000x20000 header", "bad parameter",
                   "body too large")  # fmt: skip
SCORE_THRESHOLD = 0.0  # every detection: the comparison with in-process prediction is as strict as it gets


def bomb_png() -> bytes:
    """A PNG whose header claims 20000 x 20000 pixels (and holds almost none)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def malformed_request(kind: str, good_image: str, max_request_bytes: int) -> tuple[bytes, str]:
    """The body of a malformed request of ``kind``, and a piece of it that an error must not echo."""
    def frame(rows: list, columns: tuple = ("image",), params: dict | None = None) -> bytes:
        return json.dumps({"dataframe_split": {"columns": list(columns), "data": rows}, **({"params": params} if params else {})}).encode()

    not_image = base64.b64encode(b"these bytes are no picture at all" * 4).decode()
    bomb = base64.b64encode(bomb_png()).decode()
    bodies = {
        "bad base64": (frame([["%%%" + good_image[:200]]]), good_image[:60]),
        "not an image": (frame([[not_image]]), not_image[:60]),
        "no rows": (frame([]), '"data": []'),
        "wrong column": (frame([[good_image]], columns=("picture",)), good_image[:60]),
        "not JSON": (b'{"dataframe_split": {"columns": ["image"], "data": [["' + good_image[:300].encode() + b'"', good_image[:60]),
        "20000x20000 header": (frame([[bomb]]), bomb[:60]),
        "bad parameter": (frame([[good_image]], params={"score_threshold": "not-a-number"}), good_image[:60]),
        "body too large": (frame([[good_image] for _ in range(max_request_bytes // len(good_image) + 2)]), good_image[:60]),
    }
    return bodies[kind]


@dataclass
class LoadResult:
    """What a load run saw."""

    statuses: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)
    good_latencies_ms: list[float] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)  # good answers that differ from in-process prediction
    echoes: list[str] = field(default_factory=list)  # error answers that contain the payload
    not_json_errors: list[str] = field(default_factory=list)
    rss_after_200: int = 0
    rss_at_end: int = 0
    alive_after: bool = False
    wall_s: float = 0.0  # from the first request sent to the last answer

    @property
    def requests_per_s(self) -> float:
        return sum(self.statuses.values()) / self.wall_s if self.wall_s else 0.0


def process_tree_rss(pid: int) -> int:
    """Resident memory of a process and all its children, in bytes."""
    import psutil

    parent = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)] if p.is_running())


def same_records(served: list[dict], expected: list[dict], box_tolerance: float = 1e-3) -> bool:
    """Same detections (class, score to 1e-4, box to ``box_tolerance``), order free among equal scores."""
    if len(served) != len(expected):
        return False
    remaining = list(expected)
    for record in served:
        match = next((r for r in remaining if r["category_id"] == record["category_id"] and abs(r["score"] - record["score"]) < 1e-4
                      and np.allclose(r["bbox"], record["bbox"], atol=box_tolerance)), None)  # fmt: skip
        if match is None:
            return False
        remaining.remove(match)
    return True


def run_load(url: str, server_pid: int, images: list[str], expected: list[list[dict]], requests_total: int = 1000,
             concurrency: int = 8, max_request_bytes: int = 2_000_000) -> LoadResult:  # fmt: skip
    """Sends the requests (see the module doc) and checks every answer."""
    import requests

    result = LoadResult()
    lock = threading.Lock()
    done = 0
    local = threading.local()

    def send(number: int) -> None:
        nonlocal done
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        malformed = number % 10 == 9
        kind = MALFORMED_KINDS[(number // 10) % len(MALFORMED_KINDS)] if malformed else "good"
        image = number % len(images)
        if malformed:
            body, secret = malformed_request(kind, images[image], max_request_bytes)
        else:
            body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[images[image]]]}, "params": {"score_threshold": SCORE_THRESHOLD}}).encode()
        started = time.perf_counter()
        response = session.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=120)
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            result.statuses[response.status_code] += 1
            result.by_kind.setdefault(kind, Counter())[response.status_code] += 1
            if malformed:
                try:
                    json.loads(response.text)
                except json.JSONDecodeError:
                    result.not_json_errors.append(f"{kind}: {response.text[:200]}")
                if secret in response.text:
                    result.echoes.append(f"{kind}: {response.text[:200]}")
            elif response.status_code == 200:
                result.good_latencies_ms.append(elapsed)
                if not same_records(response.json()["predictions"][0], expected[image]):
                    result.mismatches.append(f"request {number} (image {image})")
            done += 1
            if done == 200:
                result.rss_after_200 = process_tree_rss(server_pid)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(requests_total)))
    result.wall_s = time.perf_counter() - started
    result.rss_at_end = process_tree_rss(server_pid)
    result.alive_after = requests.get(f"{url}/ping", timeout=10).status_code == 200
    return result


def serve_and_load(artifact: Path, image_paths: list[Path], requests_total: int = 1000, concurrency: int = 8,
                   max_request_bytes: int = 2_000_000, log_path: Path | None = None) -> LoadResult:  # fmt: skip
    """Saves the pyfunc model of ``artifact`` (as ``cvexp.register`` logs it), serves it, and runs :func:`run_load`."""
    import mlflow.pyfunc

    from cvexp.data.images import load_rgb_image
    from cvexp.deployment.pyfunc import encode_image_file, pyfunc_model_arguments
    from cvexp.deployment.serving import mlflow_model_server
    from cvexp.inference.predictor import Predictor

    predictor = Predictor.load(artifact, device="cpu")
    names = {c.id: c.name for c in predictor.label_map.categories}

    expected = [predictor.task.response(d, names, {"score_threshold": SCORE_THRESHOLD}) for d in predictor.predict_images([load_rgb_image(p) for p in image_paths])]
    images = [encode_image_file(p) for p in image_paths]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "pyfunc"
        mlflow.pyfunc.save_model(str(model_dir), **pyfunc_model_arguments(predictor, artifact, image_paths[0], 0.5,
                                                                          max_request_bytes=max_request_bytes))  # fmt: skip
        with mlflow_model_server(str(model_dir), log_path=log_path) as server:
            return run_load(server.url, server.pid, images, expected, requests_total, concurrency, max_request_bytes)


def table(result: LoadResult, requests_total: int, concurrency: int) -> str:
    latencies = np.asarray(result.good_latencies_ms)
    lines = [f"{requests_total} requests, {concurrency} at a time, against `mlflow models serve` (one worker) on 127.0.0.1; every tenth "
             "malformed (8 kinds in turn), the others one image each, answers compared with in-process prediction.", "",
             "| | count |", "|---|---:|"]  # fmt: skip
    lines += [f"| HTTP {status} | {count} |" for status, count in sorted(result.statuses.items())]
    lines += [f"| good answers equal to in-process prediction | {len(result.good_latencies_ms) - len(result.mismatches)} of {len(result.good_latencies_ms)} |",
              f"| error answers echoing the payload | {len(result.echoes)} |",
              f"| good requests: p50 / p99 latency | {np.percentile(latencies, 50):.1f} / {np.percentile(latencies, 99):.1f} ms |",
              f"| throughput, all requests | {result.requests_per_s:.1f} requests/s |",
              f"| server RSS after request 200 / after the last | {result.rss_after_200 / 2**20:.0f} / {result.rss_at_end / 2**20:.0f} MiB "
              f"({result.rss_at_end / max(result.rss_after_200, 1):.3f}x) |",
              f"| server answers /ping afterwards | {'yes' if result.alive_after else 'no'} |", "",
              "| malformed kind | answers |", "|---|---|"]  # fmt: skip
    lines += [f"| {kind} | {', '.join(f'{count}x HTTP {status}' for status, count in sorted(counts.items()))} |"
              for kind, counts in result.by_kind.items() if kind != "good"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a model artifact (default: the newest outputs/runs/train/*/model)")
    parser.add_argument("--images", type=Path, default=REPO / "outputs" / "datasets" / "shapes" / "test")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from benchmarks.report import publish
    from benchmarks.serving_latency import newest_artifact

    artifact = args.model or newest_artifact()
    result = serve_and_load(artifact, sorted(args.images.glob("*.png"))[:8], args.requests, args.concurrency)
    body = table(result, args.requests, args.concurrency)
    publish(body, "serving-load", write=not args.no_write)


if __name__ == "__main__":
    main()


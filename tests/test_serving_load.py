"""The served model under load: 1 000 requests, 8 at a time, 10 % malformed in 8 ways (benchmarks/serving_load.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.serving_load import MALFORMED_KINDS, serve_and_load
from cvexp.training import run_training
from tests.conftest import compose_train_config


@pytest.mark.long
def test_the_served_model_answers_1000_requests_and_refuses_every_malformed_one(tmp_path: Path, shared_data_dir: Path) -> None:
    # 60 steps: a model whose detections differ from image to image, so a mixed-up answer shows.
    cfg = compose_train_config(tmp_path, shared_data_dir, ["debug=smoke", "trainer.max_epochs=1", "trainer.limit_train_batches=60",
                                                           "test_after_fit=false", "report=none", "logger=none"])  # fmt: skip
    artifact = run_training(cfg).artifact_dir
    images = sorted((shared_data_dir / "shapes" / "test").glob("*.png"))[:8]
    result = serve_and_load(artifact, images, requests_total=1000, concurrency=8, log_path=tmp_path / "server.log")

    assert result.by_kind.pop("good") == {200: 900}
    assert set(result.by_kind) == set(MALFORMED_KINDS)
    for kind, statuses in result.by_kind.items():
        expected = 413 if kind == "body too large" else 400
        assert statuses == {expected: sum(statuses.values())}, (kind, statuses)
    assert not any(500 <= status for status in result.statuses)
    assert not result.mismatches and not result.echoes and not result.not_json_errors
    assert result.alive_after
    assert result.rss_at_end <= 1.1 * result.rss_after_200, (result.rss_after_200, result.rss_at_end)

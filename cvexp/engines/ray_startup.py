"""Ray Train start-up that never stalls silently: what it waits for, said once per interval, and how long it took.

On a loaded 2-core machine a ``trainer=ray`` run spent minutes between starting the local cluster and
its first training step (the figures are in docs/distributed.md): Ray starts a dozen Python processes
(controller, workers, its autoscaling coordinator, dashboard modules) that each import their stack
while competing for the cores. Meanwhile nothing was printed but two ``GetTimeoutError`` tracebacks:
Ray Train's controller asks its autoscaling coordinator (a detached actor it creates on first use)
for resources with a 5-second timeout, which a starved machine misses.

- :func:`start_autoscaling_coordinator` creates that actor from the driver before the run and waits
  for it as long as it takes, saying so; the controller's request then reaches a running actor;
- :class:`StartupWatch` logs, every ``interval`` seconds until the first training step, what the run
  asked for, what the cluster has and is free, and the state of the run's placement group;
- the first training step writes a marker (:data:`FIRST_STEP_MARKER`) that ends the watch and gives
  the time from the cluster's start to the first step, which the run logs.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# In the Ray Train run's folder: the Unix time of the first training step (written by rank 0).
FIRST_STEP_MARKER = ".cvexp-first-step"


def start_autoscaling_coordinator(timeout_s: float = 600.0) -> None:
    """Starts Ray Train's autoscaling coordinator actor now and waits until it answers.

    Ray Train's controller creates it on first use and gives up on it after 5 s, printing a
    traceback; started here, the controller finds it running. The actor and its factory live in
    Ray's internal modules (Ray 2.50-2.60): with another Ray, nothing is started.
    """
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import get_or_create_autoscaling_coordinator
    except ImportError:  # pragma: no cover - depends on the installed Ray
        return
    started = time.monotonic()
    coordinator = get_or_create_autoscaling_coordinator()
    pending = coordinator.__ray_ready__.remote()
    while True:
        ready, _ = ray.wait([pending], timeout=20)
        if ready:
            break
        if time.monotonic() - started > timeout_s:
            log.warning("Ray's autoscaling coordinator did not start within %.0f s; Ray Train may print a resource-request warning.", timeout_s)
            return
        log.info("Ray: starting the autoscaling coordinator (%.0f s so far; the machine's CPUs are busy)", time.monotonic() - started)
    if time.monotonic() - started > 5:
        log.info("Ray: the autoscaling coordinator started in %.0f s", time.monotonic() - started)


class StartupWatch:
    """Logs, every ``interval`` seconds until the first training step, what a Ray Train run is waiting for.

    Args:
        marker: the file the first training step writes (``None``: the run's storage is not local,
            and the watch ends with the run).
        requested: what the run asked for, e.g. ``2 workers x {'CPU': 1}``.
        cluster_started: ``time.time()`` when the cluster started (or when this run joined it).
        interval: seconds between messages.
    """

    def __init__(self, marker: Path | None, requested: str, cluster_started: float, interval: float = 20.0) -> None:
        self.marker = marker
        self.requested = requested
        self.cluster_started = cluster_started
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cvexp-ray-startup-watch", daemon=True)

    def __enter__(self) -> StartupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def first_step_seconds(self) -> float | None:
        """Seconds from the cluster's start to the first training step, once it happened."""
        if self.marker is None or not self.marker.is_file():
            return None
        try:
            return float(self.marker.read_text()) - self.cluster_started
        except ValueError:
            return None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if self.first_step_seconds() is not None:
                return
            log.info("Ray Train: %.0f s since the cluster started, no training step yet: %s", time.time() - self.cluster_started,
                     self.describe())  # fmt: skip

    def describe(self) -> str:
        """What the run asked for, what the cluster has, and where its placement groups stand."""
        import ray
        from ray.util.placement_group import placement_group_table

        try:
            total, free = ray.cluster_resources(), ray.available_resources()
            states = [group.get("state") for group in placement_group_table().values()]
        except Exception as error:  # noqa: BLE001 - a status line must never end the run
            return f"asked for {self.requested}; the cluster's state cannot be read now ({type(error).__name__})"
        cpus = f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free"
        gpus = f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs free" if total.get("GPU") else ""
        if "PENDING" in states or "RESCHEDULING" in states:
            phase = "its workers' resources are not free yet (placement group pending)"
        elif "CREATED" in states:
            phase = "resources reserved; the workers are starting (loading Python, torch and the model)"
        else:
            phase = "the controller is starting"
        return f"asked for {self.requested}; the cluster has {cpus}{gpus}; {phase}"

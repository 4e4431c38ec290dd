"""What a probe's results mean over time: Kubernetes' success and failure thresholds (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProbeState:
    """Consecutive results against the thresholds, as the kubelet counts them.

    `passing` starts False (a readiness probe's container is not ready until it succeeded `success_threshold`
    times in a row) and turns False after `failure_threshold` failures in a row.
    """

    success_threshold: int = 1
    failure_threshold: int = 3
    passing: bool = False
    successes: int = 0
    failures: int = 0
    checks: int = 0

    def record(self, ok: bool) -> bool:
        """Count one result; True when `passing` changed."""
        self.checks += 1
        before = self.passing
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.success_threshold:
                self.passing = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= self.failure_threshold:
                self.passing = False
        return before != self.passing

    @property
    def failed(self) -> bool:
        """failure_threshold failures in a row: a liveness or startup probe's container is restarted."""
        return self.failures >= self.failure_threshold

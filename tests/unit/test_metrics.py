"""Metrics counted from the engine's typed events: values after known actions, every label
value present (at 0) from the start."""

from __future__ import annotations

import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dormant.errors import PermanentError
from dormant.metrics import Metrics
from dormant.reconciler import Reconciler
from tests.unit.conftest import Rig


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


async def test_every_operation_label_exists_at_zero_before_anything_happens(rig: Rig) -> None:
    metrics = Metrics(rig.engine, Reconciler(rig.engine))
    for kind in ("create", "start", "stop", "remove"):
        for outcome in ("done", "failed", "superseded", "interrupted"):
            assert (
                value(metrics, "dormant_operations_finished_total", kind=kind, outcome=outcome) == 0
            )
        assert value(metrics, "dormant_operations_duration_seconds_count", kind=kind) == 0
    assert value(metrics, "dormant_sessions_created_total") == 0
    assert value(metrics, "dormant_wakes_duration_seconds_count") == 0
    assert value(metrics, "dormant_sessions_queued_count") == 0


async def test_creates_sleeps_wakes_and_deletes_are_counted(rig: Rig) -> None:
    metrics = Metrics(rig.engine, Reconciler(rig.engine))
    ids = [(await rig.engine.create_session(tenant="t", user_id=f"u{i}")).id for i in range(3)]
    await rig.settle()
    assert value(metrics, "dormant_sessions_created_total") == 3
    assert value(metrics, "dormant_operations_finished_total", kind="create", outcome="done") == 3
    await rig.engine.sleep(ids[0])
    await rig.settle()
    rig.clock.advance(60)
    await rig.engine.wake(ids[0])
    rig.clock.advance(2)  # the fake clock stands still unless told: the wake takes 2 s
    await rig.settle()
    await rig.engine.delete(ids[1])
    await rig.settle()
    assert value(metrics, "dormant_operations_finished_total", kind="stop", outcome="done") == 1
    assert value(metrics, "dormant_operations_finished_total", kind="start", outcome="done") == 1
    assert value(metrics, "dormant_operations_finished_total", kind="remove", outcome="done") == 1
    assert value(metrics, "dormant_wakes_duration_seconds_count") == 1
    assert value(metrics, "dormant_wakes_duration_seconds_sum") == 0  # transitions, same instant
    assert value(metrics, "dormant_operations_duration_seconds_count", kind="start") == 1
    assert value(metrics, "dormant_operations_duration_seconds_sum", kind="start") == 2
    assert (
        value(metrics, "dormant_transitions_applied_total", to_state="sleeping", code="manual") == 1
    )


async def test_a_failed_create_is_counted_and_logged_as_a_warning(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics(rig.engine, Reconciler(rig.engine))
    rig.runtime.fail("create", PermanentError("image not found"))
    caplog.set_level(logging.INFO, logger="dormant.engine")
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    assert value(metrics, "dormant_operations_finished_total", kind="create", outcome="failed") == 1
    assert value(metrics, "dormant_operations_finished_total", kind="create", outcome="done") == 0
    failed = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and re.search(rf"{record.id}.*-> failed", r.getMessage())
    ]
    assert len(failed) == 1, [r.getMessage() for r in caplog.records]


async def test_a_vanished_container_is_logged_as_a_warning(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    caplog.set_level(logging.INFO)
    rig.runtime.containers.clear()  # the container died behind dormant's back
    await Reconciler(rig.engine).run()
    await rig.engine.drain()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"session={record.id} running -> sleeping code=container_exited" in m for m in warnings
    ), warnings
    assert f"reconcile mark-vanished {record.id}: container is missing" in warnings

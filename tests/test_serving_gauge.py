"""The custom-metric gauge releases its metric, then its family, when closed (not at stub teardown)."""

import gc
import logging
import weakref
from typing import ClassVar

from stepaudio.serving_utils import Gauge


class _FakeFamily:
    GAUGE = "gauge"
    released: ClassVar[list[str]] = []

    def __init__(self, name, description, kind):
        self.name, self.kind = name, kind

    def Metric(self, labels):  # pb_utils' spelling
        return _FakeMetric(self, labels)

    def __del__(self):
        _FakeFamily.released.append("family")


class _FakeMetric:
    def __init__(self, family, labels):
        self.family, self.labels, self.value = family, labels, None

    def set(self, value):
        self.value = value

    def __del__(self):
        _FakeFamily.released.append("metric")


class _FakePbUtils:
    MetricFamily = _FakeFamily


def test_close_releases_metric_then_family():
    _FakeFamily.released = []
    gauge = Gauge(_FakePbUtils, "open_streams", "Open streams", {"model": "m"})
    assert gauge.available
    metric = weakref.ref(gauge._metric)
    gauge.set(3)
    assert metric().value == 3 and metric().labels == {"model": "m"}
    gauge.close()
    gc.collect()
    assert metric() is None
    assert _FakeFamily.released == ["metric", "family"]
    gauge.set(4)  # after close: ignored, no error


def test_unavailable_metrics_make_a_quiet_no_op(caplog):
    class Broken:
        class MetricFamily:
            GAUGE = "gauge"

            def __init__(self, **kw):
                raise RuntimeError("metrics disabled")

    with caplog.at_level(logging.WARNING):
        gauge = Gauge(Broken, "open_streams", "Open streams", {}, logging.getLogger("t"))
    assert not gauge.available
    assert "open_streams unavailable: metrics disabled" in caplog.text
    gauge.set(1)
    gauge.close()

"""RunComparison: the selected runs' curves overlaid, and what differs between their settings.

The Runs page shows this under its table. One run: its curves alone and the facts of its
``run.json`` (versions, device, precision, seed, dataset fingerprint, command). Two or more:
every run's curves in one colour each (validation solid, training dashed) and, per run, every
RunConfig field that differs from the first selected run. Everything comes from the runs' small
files (``metrics.jsonl``, ``config.toml``, ``run.json``): no torch, nothing slow.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.engine.errors import StudioError
from studio.engine.history import RunSummary, config_diff, run_config
from studio.engine.record import read_record
from studio.engine.runs import RunPaths, epoch_records
from studio.format import format_duration
from studio.ui.text import sentence
from studio.ui.widgets.curves_panel import GROUP_COLORS, LearningRateAxis, TickGrid

TEXT_COLOR = (60, 60, 60)
AXIS_COLOR = (150, 150, 150)
GROUP_STYLES = (Qt.PenStyle.SolidLine, Qt.PenStyle.DotLine, Qt.PenStyle.DashDotLine,
                Qt.PenStyle.DashDotDotLine)  # a run's parameter groups, in its colour
MAX_SYMBOLS = 30  # epochs: above this the points would only clutter the lines
PLOTS = ("loss", "accuracy", "lr")


def run_color(index: int) -> tuple[int, int, int]:
    return GROUP_COLORS[index % len(GROUP_COLORS)]


def _pen(color: tuple[int, ...], width: float,
         style: Qt.PenStyle = Qt.PenStyle.SolidLine) -> Any:
    pen = pg.mkPen(color, width=width, style=style)
    pen.setCosmetic(True)
    return pen


def _value(value: Any) -> str:
    """A config value as a person reads it (TOML-like: true, [a, b], "")."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


class RunComparison(QWidget):
    """Curves and settings of the runs selected on the Runs page."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.curves: dict[str, list[tuple[Path, pg.PlotDataItem]]] = {k: [] for k in PLOTS}
        self._names: list[str] = []
        self._cache: dict[Path, tuple[tuple[int, int], dict[int, dict[str, Any]]]] = {}

        self.legend_label = QLabel()
        self.legend_label.setObjectName("runsLegend")
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        self.legend_label.setWordWrap(True)
        self.legend_label.setToolTip("One colour per run; validation solid, training dashed.")

        self.widgets: dict[str, pg.PlotWidget] = {}
        self.plots: dict[str, pg.PlotItem] = {}
        plots_row = QHBoxLayout()
        plots_row.setSpacing(4)
        titles = {"loss": "Loss", "accuracy": "Accuracy (%)", "lr": "Learning rate"}
        for key in PLOTS:
            axes = {"left": LearningRateAxis("left")} if key == "lr" else None
            widget = pg.PlotWidget(self, background="w", axisItems=axes)
            widget.setMinimumSize(160, 150)
            plot = widget.getPlotItem()
            plot.setTitle(titles[key], color="#3c3c3c", size="9pt")
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setPen(pg.mkPen(AXIS_COLOR))
                axis.setTextPen(pg.mkPen(TEXT_COLOR))
                axis.enableAutoSIPrefix(False)
            plot.setLabel("bottom", "epoch", color="#3c3c3c")
            plot.addItem(TickGrid(plot), ignoreBounds=True)
            plot.getViewBox().setMouseMode(pg.ViewBox.RectMode)  # drag to zoom, right-click back
            plot.hideButtons()
            if key == "lr":
                plot.setLogMode(x=False, y=True)
            self.widgets[key], self.plots[key] = widget, plot
            plots_row.addWidget(widget, 1)

        curves_box = QWidget()
        curves_layout = QVBoxLayout(curves_box)
        curves_layout.setContentsMargins(0, 0, 0, 0)
        curves_layout.setSpacing(2)
        curves_layout.addWidget(self.legend_label)
        curves_layout.addLayout(plots_row, 1)

        self.details = QTreeWidget()
        self.details.setObjectName("runDetails")
        self.details.setColumnCount(2)
        self.details.setHeaderLabels(["Setting", "Value"])
        self.details.setAlternatingRowColors(True)
        self.details.setUniformRowHeights(True)
        self.details.setToolTip("One run: what its run.json records. Several: every setting "
                                "that differs from the first selected run, old → new.")

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(curves_box)
        splitter.addWidget(self.details)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([700, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)
        self.show_runs([])

    # -- public ---------------------------------------------------------------------------

    def legend_names(self) -> list[str]:
        """The run names the legend shows, in selection order."""
        return list(self._names)

    def show_runs(self, runs: Sequence[RunSummary]) -> None:
        """Draw ``runs`` (the first is the one the others are compared with)."""
        self._draw_curves(runs)
        self.details.clear()
        if not runs:
            self.details.setHeaderLabels(["Setting", "Value"])
            self._note("Select a run; Ctrl+click others to compare them.")
        elif len(runs) == 1:
            self.details.setHeaderLabels(["Fact", "Value"])
            self._show_facts(runs[0])
        else:
            self.details.setHeaderLabels(["Setting", "Old → new"])
            self._show_diffs(runs[0], runs[1:])
        self.details.expandAll()
        self.details.resizeColumnToContents(0)
        self.details.setColumnWidth(0, min(self.details.columnWidth(0) + 12, 260))

    # -- curves ---------------------------------------------------------------------------

    def _epochs(self, path: Path) -> dict[int, dict[str, Any]]:
        """A run's epoch lines, read again only when metrics.jsonl changed."""
        try:
            stat = os.stat(RunPaths(path).metrics)
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            return {}
        cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            cached = (key, epoch_records(path))
            self._cache[path] = cached
        return cached[1]

    def _draw_curves(self, runs: Sequence[RunSummary]) -> None:
        for key, plot in self.plots.items():
            for _, curve in self.curves[key]:
                plot.removeItem(curve)
            self.curves[key] = []
        self._names = [run.name for run in runs]
        swatches = []
        for index, run in enumerate(runs):
            color = run_color(index)
            records = self._epochs(run.path)
            epochs = sorted(records)
            symbols = len(epochs) <= MAX_SYMBOLS
            x = [float(e) for e in epochs]

            def series(name: str, scale: float = 1.0, rows: list[int] = epochs,
                       lines: dict[int, dict[str, Any]] = records) -> list[float]:
                values = []
                for epoch in rows:
                    value = lines[epoch].get(name)
                    values.append(float(value) * scale if isinstance(value, int | float)
                                  and math.isfinite(value) else math.nan)
                return values

            for key, name, scale, dashed in (("loss", "val_loss", 1.0, False),
                                             ("loss", "train_loss", 1.0, True),
                                             ("accuracy", "val_acc", 100.0, False),
                                             ("accuracy", "train_acc", 100.0, True)):
                style = Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine
                extra: dict[str, Any] = {}
                if symbols and not dashed:
                    extra = {"symbol": "o", "symbolSize": 5, "symbolPen": None,
                             "symbolBrush": pg.mkBrush(color)}
                self._add(key, run.path, x, series(name, scale),
                          pen=_pen(color, 1.4 if dashed else 2.0, style), **extra)
            groups = list(dict.fromkeys(g for e in epochs for g in records[e].get("lr") or {}))
            for number, group in enumerate(groups):
                values = [records[e].get("lr", {}).get(group) for e in epochs]
                ys = [float(v) if isinstance(v, int | float) and v > 0 else math.nan
                      for v in values]
                self._add("lr", run.path, x, ys,
                          pen=_pen(color, 2.0, GROUP_STYLES[number % len(GROUP_STYLES)]))
            hex_color = "#{:02x}{:02x}{:02x}".format(*color)
            swatches.append(f"<span style='color:{hex_color}; font-size:14pt'>■</span>&nbsp;"
                            f"{run.name}")
        if runs:
            self.legend_label.setText(
                "&nbsp;&nbsp;&nbsp;".join(swatches) + "<span style='color:#6b6b6b'>"
                "&nbsp;&nbsp;&nbsp;— validation&nbsp;&nbsp;- - training</span>")
        else:
            self.legend_label.setText("<span style='color:#6b6b6b'>No run selected.</span>")
        for plot in self.plots.values():
            plot.enableAutoRange()

    def _add(self, key: str, path: Path, x: list[float], y: list[float], **style: Any) -> None:
        curve = self.plots[key].plot(x, y, connect="finite", antialias=True, **style)
        self.curves[key].append((path, curve))

    # -- details --------------------------------------------------------------------------

    def _note(self, text: str, parent: QTreeWidgetItem | None = None) -> None:
        """A line across both columns (spanning needs the item in the tree first)."""
        item = QTreeWidgetItem([text])
        item.setToolTip(0, text)
        if parent is None:
            self.details.addTopLevelItem(item)
        else:
            parent.addChild(item)
        item.setFirstColumnSpanned(True)

    def _heading(self, title: str) -> QTreeWidgetItem:
        top = QTreeWidgetItem([title])
        font = top.font(0)
        font.setBold(True)
        top.setFont(0, font)
        self.details.addTopLevelItem(top)
        return top

    def _section(self, title: str, rows: Sequence[tuple[str, str]]) -> None:
        top = self._heading(title)
        top.setFirstColumnSpanned(True)
        for name, value in rows:
            child = QTreeWidgetItem([name, value])
            child.setToolTip(1, value)
            top.addChild(child)

    def _show_facts(self, run: RunSummary) -> None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started)) \
            if run.started else "—"
        status = f"{run.status}: {run.message}" if run.message else run.status
        self._section("Run", [("folder", str(run.path)), ("status", status),
                              ("started", started), ("training time",
                                                     format_duration(run.seconds))])
        record = read_record(run.path)
        if record is None:
            self._note("This run has no run.json (it predates the record), so its versions "
                       "and dataset fingerprint are unknown.")
            return
        self._section("Versions", [(key, _value(record.get(key))) for key in
                                   ("studio", "python", "torch", "torchvision", "cuda",
                                    "cudnn", "platform")])
        device = record.get("device", "")
        if record.get("device_name"):
            device = f"{device} ({record['device_name']})"
        sessions = record.get("sessions") or []
        self._section("Device", [("device", device),
                                 ("precision", _value(record.get("precision"))),
                                 ("processes", _value(record.get("processes"))),
                                 ("sessions", f"{len(sessions)}" + (
                                     " (resumed)" if len(sessions) > 1 else ""))])
        dataset = record.get("dataset") or {}
        fingerprint = dataset.get("fingerprint") or {}
        splits = ", ".join(f"{k} {v}" for k, v in (dataset.get("splits") or {}).items())
        command = record.get("command")
        command_text = " ".join(command) if isinstance(command, list) else _value(command)
        rows = [("seed", _value(record.get("seed"))),
                ("deterministic", _value(record.get("deterministic"))),
                ("dataset", _value(dataset.get("root"))),
                ("images", splits or "—"),
                ("classes", str(len(dataset.get("classes") or []))),
                ("fingerprint", f"{str(fingerprint.get('hash', '—'))[:16]}… "
                                f"({fingerprint.get('files', '?')} files)"),
                ("command", command_text)]
        if record.get("rerun_of"):
            rows.append(("re-run of", str(record["rerun_of"])))
        self._section("Reproducibility", rows)

    def _show_diffs(self, first: RunSummary, others: Sequence[RunSummary]) -> None:
        try:
            base = run_config(first.path)
        except StudioError as error:
            self._note(sentence(str(error)))
            return
        for run in others:
            top = self._heading(f"{run.name} vs {first.name}")
            top.setFirstColumnSpanned(True)  # run names are long: the heading takes the row
            try:
                changes = config_diff(base, run_config(run.path))
            except StudioError as error:
                self._note(sentence(str(error)), top)
                continue
            if not changes:
                self._note("no differences", top)
                continue
            count = "1 setting differs" if len(changes) == 1 \
                else f"{len(changes)} settings differ"
            top.setText(0, f"{top.text(0)}: {count}")
            top.setToolTip(0, top.text(0))
            for change in changes:
                text = f"{_value(change.old)} → {_value(change.new)}"
                child = QTreeWidgetItem([change.field, text])
                child.setToolTip(0, change.field)
                child.setToolTip(1, text)
                top.addChild(child)

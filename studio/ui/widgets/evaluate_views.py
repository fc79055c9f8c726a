"""The Evaluate page's own widgets: the confusion heatmap's cells and rotated header, a
vertical axis label, the single-image prediction view, and small layout and summary helpers.
EvaluatePanel (evaluate_panel.py) puts them together."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
)
from PySide6.QtGui import (
    QColor,
    QFont,
    QPainter,
    QPaintEvent,
    QPalette,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionHeader,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from studio.engine.evaluate import (
    Evaluation,
    ImagePrediction,
)
from studio.ui.thumbnails import Thumbnail, thumbnail_pixmap

ERROR_STYLE = "color: #b00020;"
PREVIEW_SIZE = 224
TOP_K = 5
SELECTED_PEN = QColor(230, 81, 0)  # an orange frame: visible on every shade of blue


class HeatmapDelegate(QStyledItemDelegate):
    """Paints a confusion cell: its colour edge to edge, its number centred (bold on the
    diagonal), and an orange frame when selected, so the selection never hides the colour."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        rect: QRect = option.rect  # type: ignore[attr-defined]
        state = option.state  # type: ignore[attr-defined]
        painter.save()
        background = index.data(Qt.ItemDataRole.BackgroundRole)
        if isinstance(background, QColor):
            painter.fillRect(rect, background)
        font = QFont(option.font)  # type: ignore[attr-defined]
        font.setBold(index.row() == index.column())
        painter.setFont(font)
        foreground = index.data(Qt.ItemDataRole.ForegroundRole)
        painter.setPen(foreground if isinstance(foreground, QColor) else QColor(33, 33, 33))
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignCenter),
                         str(index.data(Qt.ItemDataRole.DisplayRole) or ""))
        if state & QStyle.StateFlag.State_Selected:
            pen = QPen(SELECTED_PEN, 3)
            pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
            painter.setPen(pen)
            painter.drawRect(rect.adjusted(1, 1, -2, -2))
        elif state & QStyle.StateFlag.State_HasFocus:
            painter.setPen(QPen(SELECTED_PEN, 1, Qt.PenStyle.DotLine))
            painter.drawRect(rect.adjusted(1, 1, -2, -2))
        painter.restore()


class RotatedHeader(QHeaderView):
    """Column titles written bottom to top when they are wider than their column, so long
    class names keep the cells narrow; short ones ("cat", "7") stay upright."""

    MAX_HEIGHT = 120  # longer names are elided (the tooltip has them whole)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Horizontal, parent)
        self.setSectionsClickable(True)
        self.setHighlightSections(True)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        hint = super().sizeHint()
        model = self.model()
        metrics = self.fontMetrics()
        widest = max((metrics.horizontalAdvance(str(model.headerData(
            c, Qt.Orientation.Horizontal) or "")) for c in range(model.columnCount())),
            default=0) if model is not None else 0
        if not self._rotated(widest, self.defaultSectionSize()):
            return hint
        return QSize(hint.width(), min(self.MAX_HEIGHT, max(hint.height(), widest + 14)))

    @staticmethod
    def _rotated(text_width: int, section_width: int) -> bool:
        return text_width + 8 > section_width

    def paintSection(self, painter: QPainter, rect: QRect,  # noqa: N802 - Qt override
                     logical_index: int) -> None:
        if not rect.isValid():
            return
        model = self.model()
        text = str(model.headerData(logical_index, Qt.Orientation.Horizontal) or "") \
            if model is not None else ""
        painter.save()
        # the section's frame and background as the style draws them, without its text
        option = QStyleOptionHeader()
        self.initStyleOption(option)
        option.rect = rect
        option.section = logical_index
        option.text = ""
        current = self.selectionModel()
        bold = current is not None and current.currentIndex().column() == logical_index
        self.style().drawControl(QStyle.ControlElement.CE_Header, option, painter, self)
        painter.restore()
        painter.save()
        font = QFont(self.font())
        font.setBold(bold)
        painter.setFont(font)
        painter.setPen(self.palette().color(QPalette.ColorRole.ButtonText))
        if not self._rotated(painter.fontMetrics().horizontalAdvance(text), rect.width()):
            painter.drawText(rect.adjusted(0, 0, 0, -4), int(
                Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom), text)
            painter.restore()
            return
        painter.translate(rect.left(), rect.bottom())
        painter.rotate(-90)
        area = QRect(6, 0, rect.height() - 10, rect.width())
        elided = painter.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight,
                                                  area.width())
        painter.drawText(area, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                         elided)
        painter.restore()


class VerticalLabel(QLabel):
    """A label written bottom to top: the "true class" title beside the matrix rows."""

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        painter.translate(0, self.height())
        painter.rotate(-90)
        painter.drawText(QRect(0, 0, self.height(), self.width()),
                         int(Qt.AlignmentFlag.AlignCenter), self.text())
        painter.end()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        hint = super().sizeHint()
        return QSize(hint.height(), hint.width())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        hint = super().minimumSizeHint()
        return QSize(hint.height(), hint.width())


class PredictionView(QWidget):
    """One image and its top classes, each with a probability bar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._plain: QPixmap | None = None
        self.image_label = QLabel()
        self.image_label.setFixedSize(PREVIEW_SIZE + 4, PREVIEW_SIZE + 4)
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_label.setFrameShape(QFrame.Shape.StyledPanel)
        self.image_label.setToolTip("The image as it was read (before resizing for the model)")
        self.name_label = QLabel()
        self.name_label.setWordWrap(True)
        self.name_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint_label = QLabel("Drop an image file on this page, or click “Predict an "
                                 "image…”, to see what the run's model makes of it.")
        self.hint_label.setWordWrap(True)
        self.hint_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.class_labels: list[QLabel] = []
        self.bars: list[QProgressBar] = []
        grid = QGridLayout()
        grid.setColumnStretch(1, 1)
        for row in range(TOP_K):
            label = QLabel()
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            bar.setToolTip("The model's probability for this class")
            grid.addWidget(label, row, 0)
            grid.addWidget(bar, row, 1)
            self.class_labels.append(label)
            self.bars.append(bar)
        right = QVBoxLayout()
        right.addWidget(self.name_label)
        right.addLayout(grid)
        right.addStretch(1)
        body = QHBoxLayout()
        body.addWidget(self.image_label, 0, Qt.AlignmentFlag.AlignTop)
        body.addLayout(right, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.hint_label)
        layout.addLayout(body, 1)
        self.clear()

    def clear(self, message: str = "") -> None:
        self._plain = None
        self.image_label.clear()
        self.image_label.setVisible(False)
        self.name_label.setText(message)
        self.name_label.setStyleSheet(ERROR_STYLE if message else "")
        self.name_label.setVisible(bool(message))
        self.hint_label.setVisible(True)
        for label, bar in zip(self.class_labels, self.bars, strict=True):
            label.setVisible(False)
            bar.setVisible(False)

    def show_prediction(self, prediction: ImagePrediction, thumb: Thumbnail | None) -> None:
        self.hint_label.setVisible(False)
        self.image_label.setVisible(True)
        self._plain = thumbnail_pixmap(thumb) if thumb is not None else None
        self.show_overlay(None)
        self.name_label.setStyleSheet("")
        self.name_label.setText(f"<b>{Path(prediction.path).name}</b><br>{prediction.path}")
        self.name_label.setVisible(True)
        for row, (label, bar) in enumerate(zip(self.class_labels, self.bars, strict=True)):
            shown = row < len(prediction.top)
            label.setVisible(shown)
            bar.setVisible(shown)
            if not shown:
                continue
            name, probability = prediction.top[row]
            label.setText(name)
            font = label.font()
            font.setBold(row == 0)
            label.setFont(font)
            bar.setValue(round(1000 * probability))
            bar.setFormat(f"{100 * probability:.1f} %")

    def show_overlay(self, pixmap: QPixmap | None) -> None:
        """The class-activation map over what the model saw, or (None) the plain image."""
        if pixmap is not None:
            self.image_label.setPixmap(pixmap)
            self.image_label.setToolTip("Where the image raised the class's score (Grad-CAM), "
                                        "over the resized, centre-cropped picture the model saw")
        elif self._plain is not None:
            self.image_label.setPixmap(self._plain)
            self.image_label.setToolTip("The image as it was read (before resizing for the "
                                        "model)")
        elif self.image_label.isVisible():
            self.image_label.setText("(no preview)")

    def shown_classes(self) -> list[str]:
        """The class names listed, most likely first (what a person reads)."""
        return [label.text() for label in self.class_labels if not label.isHidden()]


def bold_label(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setBold(True)
    label.setFont(font)
    label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
    return label


def line() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.HLine)
    line.setFrameShadow(QFrame.Shadow.Sunken)
    return line


def summary_html(evaluation: Evaluation) -> str:
    parts = [f"<b>Accuracy {evaluation.accuracy:.1%}</b>"]
    if evaluation.top5_accuracy is not None:
        parts.append(f"top-5 accuracy {evaluation.top5_accuracy:.1%}")
    parts.append(f"macro F1 {evaluation.macro.f1:.3f}")
    parts.append(f"{evaluation.images} images")
    epoch = f", epoch {evaluation.epoch}" if evaluation.epoch else ""
    source = (f"the {evaluation.split} split of {_escape(evaluation.source)} · "
              f"{evaluation.checkpoint} checkpoint{epoch} of "
              f"{_escape(Path(evaluation.run_dir).name)}")
    confused = evaluation.most_confused(3)
    lines = [" · ".join(parts), source]
    if confused:
        pairs = ", ".join(f"{_escape(t)} → {_escape(p)} ({n})" for t, p, n in confused)
        lines.append(f"Most confused (true → predicted): {pairs}")
    else:
        lines.append("No class is confused with another.")
    return "<br>".join(lines)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


"""The desktop app: PySide6 + pyqtgraph faces on the engine. Depends on the engine, never back."""

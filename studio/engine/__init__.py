"""The engine: torch and torchvision only. Nothing here imports Qt."""

"""Finetune Studio: fine-tune torchvision image classifiers, in a desktop app or headless."""

__version__ = "0.1.0"

"""Model zoo (PyTorch; no torchvision)."""

"""The search: controllers over joint (keep-ratio, precision) actions, episodes, final models."""

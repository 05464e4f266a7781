"""Image-quality evaluation: pixel, noise-texture and task-based metrics, and reports."""

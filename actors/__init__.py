"""Ray actors of the image job service: the JobTracker and the per-node image workers."""

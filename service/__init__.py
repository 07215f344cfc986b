"""The REST API of the image job service, served by Ray Serve."""

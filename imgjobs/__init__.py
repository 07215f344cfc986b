"""`imgjobs`: the command-line client of the image job service."""

"""Ray-free building blocks of the image job service: settings, parsing, measuring, storage."""

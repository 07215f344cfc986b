"""`python -m launcher`, what `make run` and the Dockerfile start."""

from launcher import main

main()

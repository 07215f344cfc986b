"""What tests/, bench/ and scripts/ share: the service run as processes, clients, image server."""

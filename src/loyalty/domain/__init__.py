"""The pure core: no I/O, no frameworks, no clock. Everything here is a function of its inputs."""

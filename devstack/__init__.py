"""Local development stack: the demo upstreams and the process runner of ``make run``."""

"""End-to-end tests: the farside command and the quickstart, run as subprocesses."""

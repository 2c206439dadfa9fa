"""The training engine: runs one job in a child process of the worker.

It reads a `JobSpec`, trains, and reports `events` as JSON lines on stdout; it reads `pause` and
`cancel` from stdin. Nothing here imports the service (api, store, services, worker), so the
engine runs alone on any machine that has the job's files.
"""

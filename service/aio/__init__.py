"""asyncio pieces the runner, the agent and upstream share: read flow control, socket options,
guarded tasks, timers and the reused read buffer. Imports nothing of the project."""

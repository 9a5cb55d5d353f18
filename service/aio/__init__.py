"""asyncio pieces the runner and the agent share: read flow control, socket options,
guarded tasks and the reused read buffer. Imports nothing of the project."""

"""The device's operations: the agent (`edge run`), its health snapshot, housekeeping, the doctor's
checks, host facts, and the demo and benchmark commands."""

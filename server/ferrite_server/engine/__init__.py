"""The shard's execution engine: batch state, forward inputs, model runner, sampling, memory.

`engine.Engine` is the public face the gRPC service drives; nothing here imports proto code.
"""

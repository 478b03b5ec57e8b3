"""The tools a user would pick instead of ferrite, each driven by the same workloads.

Server peers (ferrite itself, llama-cpp-python's OpenAI server) are started as processes and
measured through the HTTP client; in-process peers (transformers `generate`, ctranslate2) run a
batch-1 loop for the latency workload and a static batch for the serving workload, timing every
decode step so their records carry the same per-token timestamps.
"""

"""Client backends: how one benchmark request is sent to a server and its stream timed.

`make_backend(config)` picks the API: TGI's `/generate_stream`, OpenAI `/v1/completions` or
`/v1/chat/completions`, all streaming and all greedy, so every output chunk gets a timestamp.
"""

from ferrite_benchmark.backends.base import API_NAMES, BackendConfig, HttpBackend, make_backend

__all__ = ["API_NAMES", "BackendConfig", "HttpBackend", "make_backend"]

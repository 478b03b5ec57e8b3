"""`ferrite-benchmark`: serving and latency benchmarks that drive ferrite and its peers alike.

    ferrite-benchmark serve   --url URL --dataset sharegpt --num-prompts 64 --request-rate inf ...
    ferrite-benchmark latency --url URL
    ferrite-benchmark compare          # ferrite and the peers, one after another, same machine

Layout, one concept per module: workload sources (`sharegpt`, `random_dataset`,
`latency_prompts`), the arrival schedule (`arrivals`), client backends (`backends/`), what one
request recorded (`records`), the arithmetic (`metrics`), the run loop (`runner`), output
(`report`, `plot`), peers (`peers/`) and the side-by-side comparison (`compare/`).
"""

"""Quantized linear layers: one quantization-method interface (method.py), one module per scheme
(unquantized, bitsandbytes, fp8, gptq, awq), and the flag / checkpoint reconciliation
(config.py). Linear layers hold a method; models never branch on quantization."""

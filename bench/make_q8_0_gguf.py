"""Write the bundled SmolLM2-135M-Instruct GGUF (Q4_1) again with its Q4_1 matrices as Q8_0.

    python bench/make_q8_0_gguf.py /tmp/SmolLM2-135M-Instruct.Q8_0.gguf

Every metadata field and tensor name is copied; each Q4_1 tensor is dequantized and quantized
to Q8_0 by gguf-py (the values stay those of the Q4_1 file, 8-bit encoded), the rest is copied
as stored. It is what llama.cpp's Q8_0 speed is measured on and what ferrite serves as int8 by
default (bench/cpu_decode.py): speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from ferrite_server.model_prep.default_model import find_bundled_gguf  # noqa: E402


def main() -> None:
    import gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    reader = gguf.GGUFReader(find_bundled_gguf())
    architecture = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(args.output), architecture)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by the writer itself
        if name == "general.file_type":
            writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
            continue
        sub_type = field.types[1] if len(field.types) > 1 else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))  # numpy order [rows, columns]
        if tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
            quantized = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(tensor.name, quantized, raw_shape=quantized.shape,
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape,
                              raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(args.output)


if __name__ == "__main__":
    main()

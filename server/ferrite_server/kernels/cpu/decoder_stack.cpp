// The CPU decode step of a Llama-family decoder stack in one native call.
//
// Why: a batch-1 CPU decode step of a small model made ~1,800 aten calls from Python, ~2 us
// each, about as much time as its weight products (bench/RESULTS.md). Here a step is one call:
// per layer four weight products (matrix-vector loops for a few rows, weight_gemv.h and
// int8_vnni_gemv.h; aten's kernels, as the Python layers call them, for more), vector loops for
// what is elementwise (RMSNorm, RoPE, residual adds, SiLU * up; elementwise.h), the paged-cache
// write, and one-query attention over the paged cache (paged_attention.h).
//
// Numerics follow the Python layers' bfloat16 expressions, rounding to bf16 where they do
// (elementwise.h). Products differ in their float sum order, and int8 products on VNNI CPUs also
// quantize their activations to 8 bits (int8_vnni_gemv.h).
//
// Layouts (as layers/attention/backend.py):
//   hidden [T, H] bf16, one decode token per row, row i belongs to sequence i;
//   cos, sin [T, D] bf16; slot_mapping [T] int64; block_tables [T, max_blocks] int32;
//   seq_lens [T] int32 (each context, this step's token included);
//   key / value cache per layer [num_blocks, block_size, num_kv_heads, D] bf16.

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/extension.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "elementwise.h"
#include "int4_vnni_gemv.h"
#include "int8_vnni_gemv.h"
#include "paged_attention.h"
#include "weight_gemv.h"

namespace {

using bf16 = c10::BFloat16;

// Up to this many rows a dense or int8 product runs the matrix-vector loops of weight_gemv.h;
// more rows reuse each weight load across rows, which aten's matrix kernels do.
constexpr int64_t kGemvMaxRows = 4;

// One weight product, y = x W^T (+ b), on the kernel its weight was packed for.
struct Linear {
  // kInt4: aten's int4 kernel for every row count; kInt4Blocked64: weights whose aten layout
  // the caller checked to be weight_gemv.h's, read by its loops for a few rows.
  enum Kind : int64_t { kDense = 0, kInt8 = 1, kInt4 = 2, kInt4Blocked64 = 3 };

  Linear(int64_t kind, at::Tensor weight, c10::optional<at::Tensor> scales, int64_t group_size,
         c10::optional<at::Tensor> bias)
      : kind(kind), weight(std::move(weight)), scales(std::move(scales)),
        group_size(group_size), bias(std::move(bias)) {
    TORCH_CHECK(kind == kDense || (kind >= kInt8 && kind <= kInt4Blocked64 && this->scales.has_value()),
                "native decode: linear kind ", kind, " needs its scales");
    TORCH_CHECK(this->weight.is_contiguous() && this->weight.device().is_cpu(),
                "native decode: weights must be contiguous CPU tensors");
    TORCH_CHECK(kind != kDense || this->weight.scalar_type() == at::kBFloat16,
                "native decode: dense weights must be bf16");
    TORCH_CHECK(kind != kInt8 || (this->weight.scalar_type() == at::kChar &&
                                  this->scales->scalar_type() == at::kBFloat16),
                "native decode: int8 weights take int8 codes and bf16 scales");
    // The integer products move an activation's sign onto the code, exact only without -128.
    TORCH_CHECK(kind != kInt8 || this->weight.numel() == 0 || this->weight.min().item<int8_t>() >= -127,
                "native decode: int8 codes must lie in [-127, 127]");
  }

  int64_t out_features() const {
    return kind == kInt4 || kind == kInt4Blocked64 ? scales->size(1) : weight.size(0);
  }

  at::Tensor operator()(const at::Tensor& x) const {  // bf16 [M, K] -> bf16 [M, N]
    at::Tensor y = at::empty({x.size(0), out_features()}, x.options());
    into(x, y);
    return y;
  }

  // y = x W^T (+ b) into `y` (contiguous bf16 [M, N]): the decode step reuses its buffers
  // across layers instead of allocating a tensor per product.
  void into(const at::Tensor& x, at::Tensor& y) const {
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.dim() == 2,
                "native decode: a product's input must be contiguous bf16 [M, K]");
    TORCH_CHECK(y.is_contiguous() && y.size(0) == x.size(0) && y.size(1) == out_features(),
                "native decode: a product's output must be contiguous [M, N]");
    if (kind == kInt4 || kind == kInt4Blocked64)
      int4_product(x, y);
    else if (x.size(0) <= kGemvMaxRows)
      gemv(x, y);
    else if (kind == kDense)
      at::mm_out(y, x, weight.t());
    else
      y.copy_(at::_weight_int8pack_mm(x, weight, *scales));
    if (bias.has_value()) y.add_(*bias);
  }

  void int4_product(const at::Tensor& x, at::Tensor& y) const {
#if defined(__AVX512F__)
    const int64_t rows = x.size(0), k = x.size(1), n = scales->size(1);
    if (kind == kInt4Blocked64 && rows <= kGemvMaxRows && n % ferrite_gemv::kInt4BlockRows == 0) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
      if (group_size % ferrite_gemv::kActivationBlock == 0) {
        ferrite_gemv::int4_gemv_vnni(x.data_ptr<bf16>(), rows, k, weight.data_ptr<uint8_t>(),
                                     scales->data_ptr<bf16>(), n, group_size, y.data_ptr<bf16>());
        return;
      }
#endif
      ferrite_gemv::int4_gemv(x.data_ptr<bf16>(), rows, k, weight.data_ptr<uint8_t>(),
                              scales->data_ptr<bf16>(), n, group_size, y.data_ptr<bf16>());
      return;
    }
#endif
    y.copy_(at::_weight_int4pack_mm_for_cpu(x, weight, group_size, *scales));
  }

  void gemv(const at::Tensor& x, at::Tensor& y) const {
    TORCH_CHECK(x.size(1) == weight.size(1), "native decode: a product's input has ", x.size(1),
                " features, its weight ", weight.size(1));
    const int64_t rows = x.size(0), k = x.size(1), n = weight.size(0);
    if (kind == kDense)
      ferrite_gemv::gemv(x.data_ptr<bf16>(), rows, k, weight.data_ptr<bf16>(), nullptr, n,
                         y.data_ptr<bf16>());
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    else if (k % ferrite_gemv::kVnniBlock == 0)
      ferrite_gemv::int8_gemv_vnni(x.data_ptr<bf16>(), rows, k, weight.data_ptr<int8_t>(),
                                   scales->data_ptr<bf16>(), n, y.data_ptr<bf16>());
#endif
    else
      ferrite_gemv::gemv(x.data_ptr<bf16>(), rows, k, weight.data_ptr<int8_t>(),
                         scales->data_ptr<bf16>(), n, y.data_ptr<bf16>());
  }

  int64_t kind;
  at::Tensor weight;  // dense: bf16 [N, K]; int8: codes [N, K]; int4: aten's packed codes
  c10::optional<at::Tensor> scales;  // int8: bf16 [N]; int4: bf16 scales_and_zeros [K/G, N, 2]
  int64_t group_size;  // int4 only
  c10::optional<at::Tensor> bias;  // bf16 [N]
};

struct LayerWeights {
  LayerWeights(at::Tensor input_norm, at::Tensor post_attention_norm, Linear qkv, Linear o,
               Linear gate_up, Linear down)
      : input_norm(std::move(input_norm)), post_attention_norm(std::move(post_attention_norm)),
        qkv(std::move(qkv)), o(std::move(o)), gate_up(std::move(gate_up)), down(std::move(down)) {}

  at::Tensor input_norm;  // bf16 [H]
  at::Tensor post_attention_norm;  // bf16 [H]
  Linear qkv, o, gate_up, down;
};

using ferrite_attention::AttentionShape;

// out <- RMSNorm of every row of x [T, H].
void rms_norm(const at::Tensor& x, const at::Tensor& weight, float eps, at::Tensor& out) {
  const int64_t rows = x.size(0), hidden = x.size(1);
  for (int64_t r = 0; r < rows; ++r)
    ferrite_elementwise::rms_norm_row(x.data_ptr<bf16>() + r * hidden, weight.data_ptr<bf16>(),
                                      out.data_ptr<bf16>() + r * hidden, hidden, eps);
}

// residual <- bf16(x + residual) (the next residual); out <- the norm of it.
void add_and_norm(const at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, float eps,
                  at::Tensor& out) {
  ferrite_elementwise::add_into(x.data_ptr<bf16>(), residual.data_ptr<bf16>(), x.numel());
  rms_norm(residual, weight, eps, out);
}

struct StepInputs {
  const at::Tensor& cos;
  const at::Tensor& sin;
  const at::Tensor& slot_mapping;
  const at::Tensor& block_tables;
  const at::Tensor& seq_lens;
};

// Rotates q and k of `qkv` [T, (heads + 2 kv_heads) D] in place, writes k and v into the
// cache, and the attended heads into `out` [T, heads * D].
void self_attention(at::Tensor& qkv, at::Tensor& key_cache, at::Tensor& value_cache,
                    const StepInputs& step, const AttentionShape& shape, at::Tensor& out) {
  const int64_t rows = qkv.size(0), d = shape.head_dim;
  const int64_t q_size = shape.num_heads * d, kv_size = shape.num_kv_heads * d;
  const int64_t row_stride = qkv.size(1);
  bf16* qkv_data = qkv.data_ptr<bf16>();
  bf16* keys = key_cache.data_ptr<bf16>();
  bf16* values = value_cache.data_ptr<bf16>();
  const int64_t* slots = step.slot_mapping.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    bf16* row = qkv_data + r * row_stride;
    const bf16* cos = step.cos.data_ptr<bf16>() + r * d;
    const bf16* sin = step.sin.data_ptr<bf16>() + r * d;
    for (int64_t h = 0; h < shape.num_heads + shape.num_kv_heads; ++h)  // q and k heads
      ferrite_elementwise::rotate_head(row + h * d, d, cos, sin);
    std::memcpy(keys + slots[r] * kv_size, row + q_size, kv_size * sizeof(bf16));
    std::memcpy(values + slots[r] * kv_size, row + q_size + kv_size, kv_size * sizeof(bf16));
  }
  ferrite_attention::attend_decodes(qkv_data, row_stride, rows, keys, values, key_cache.size(1),
                                    step.block_tables.data_ptr<int32_t>(),
                                    step.block_tables.size(1), step.seq_lens.data_ptr<int32_t>(),
                                    shape, out.data_ptr<bf16>());
}

// out [T, I] <- silu(gate) * up over the fused [gate | up] rows [T, 2I].
void silu_and_mul(const at::Tensor& gate_up, at::Tensor& out) {
  const int64_t rows = gate_up.size(0), inner = gate_up.size(1) / 2;
  const bf16* in = gate_up.data_ptr<bf16>();
  bf16* result = out.data_ptr<bf16>();
  for (int64_t r = 0; r < rows; ++r) {
    const bf16* gate = in + r * 2 * inner;
    ferrite_elementwise::silu_and_mul_row(gate, gate + inner, result + r * inner, inner);
  }
}

// `buffer` as a [rows, columns] bf16 tensor: kept when it has that shape already (the same
// product of every layer does), allocated otherwise.
at::Tensor& shaped(at::Tensor& buffer, int64_t rows, int64_t columns, const at::Tensor& like) {
  if (!buffer.defined() || buffer.size(0) != rows || buffer.size(1) != columns)
    buffer = at::empty({rows, columns}, like.options());
  return buffer;
}

// A step's intermediate rows, allocated by its first layer and reused by the others.
struct StepBuffers {
  at::Tensor normed, qkv, attended, attention_out, gate_up, activated, mlp_out;
};

void check_bf16_contiguous(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.device().is_cpu(),
              "native decode: ", what, " must be a contiguous bfloat16 CPU tensor");
}

class DecoderStack {
 public:
  DecoderStack(std::vector<LayerWeights> layers, int64_t num_heads, int64_t num_kv_heads,
               int64_t head_dim, double rms_norm_eps, double attention_scale)
      : layers_(std::move(layers)),
        shape_{num_heads, num_kv_heads, head_dim, static_cast<float>(attention_scale)},
        eps_(static_cast<float>(rms_norm_eps)) {
    TORCH_CHECK(num_heads % num_kv_heads == 0, "native decode: heads not a multiple of kv heads");
    TORCH_CHECK(head_dim % 2 == 0, "native decode: odd head_dim");
  }

  // Runs every layer for one step of decode tokens; returns the hidden states before the
  // final norm.
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                     std::vector<at::Tensor> key_caches, std::vector<at::Tensor> value_caches,
                     const at::Tensor& slot_mapping, const at::Tensor& block_tables,
                     const at::Tensor& seq_lens) {
    check_inputs(hidden, cos, sin, key_caches, value_caches, slot_mapping, block_tables, seq_lens);
    const StepInputs step{cos, sin, slot_mapping, block_tables, seq_lens};
    const int64_t rows = hidden.size(0), width = hidden.size(1);
    at::Tensor residual = hidden.clone();
    StepBuffers buffers;
    for (size_t l = 0; l < layers_.size(); ++l) {
      const LayerWeights& layer = layers_[l];
      at::Tensor& normed = shaped(buffers.normed, rows, width, hidden);
      rms_norm(residual, layer.input_norm, eps_, normed);
      at::Tensor& qkv = shaped(buffers.qkv, rows, layer.qkv.out_features(), hidden);
      layer.qkv.into(normed, qkv);
      at::Tensor& attended = shaped(buffers.attended, rows, shape_.num_heads * shape_.head_dim, hidden);
      self_attention(qkv, key_caches[l], value_caches[l], step, shape_, attended);
      at::Tensor& attention_out = shaped(buffers.attention_out, rows, width, hidden);
      layer.o.into(attended, attention_out);
      add_and_norm(attention_out, residual, layer.post_attention_norm, eps_, normed);
      const int64_t inner = layer.gate_up.out_features() / 2;
      at::Tensor& gate_up = shaped(buffers.gate_up, rows, 2 * inner, hidden);
      layer.gate_up.into(normed, gate_up);
      at::Tensor& activated = shaped(buffers.activated, rows, inner, hidden);
      silu_and_mul(gate_up, activated);
      at::Tensor& mlp_out = shaped(buffers.mlp_out, rows, width, hidden);
      layer.down.into(activated, mlp_out);
      // bf16 + bf16, rounded once: the Python `hidden + mlp(...)`
      ferrite_elementwise::add_into(mlp_out.data_ptr<bf16>(), residual.data_ptr<bf16>(),
                                    residual.numel());
    }
    return residual;
  }

 private:
  void check_inputs(const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                    const std::vector<at::Tensor>& key_caches,
                    const std::vector<at::Tensor>& value_caches, const at::Tensor& slot_mapping,
                    const at::Tensor& block_tables, const at::Tensor& seq_lens) const {
    const int64_t rows = hidden.size(0), d = shape_.head_dim;
    check_bf16_contiguous(hidden, "hidden");
    check_bf16_contiguous(cos, "cos");
    check_bf16_contiguous(sin, "sin");
    TORCH_CHECK(cos.size(0) == rows && cos.size(1) == d && sin.sizes() == cos.sizes(),
                "native decode: cos / sin must be [T, head_dim]");
    TORCH_CHECK(key_caches.size() == layers_.size() && value_caches.size() == layers_.size(),
                "native decode: one key and one value cache per layer");
    for (size_t l = 0; l < layers_.size(); ++l) {
      check_bf16_contiguous(key_caches[l], "key cache");
      check_bf16_contiguous(value_caches[l], "value cache");
      TORCH_CHECK(key_caches[l].dim() == 4 && key_caches[l].size(2) == shape_.num_kv_heads &&
                      key_caches[l].size(3) == d && value_caches[l].sizes() == key_caches[l].sizes(),
                  "native decode: cache must be [blocks, block_size, kv_heads, head_dim]");
    }
    TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous() &&
                    slot_mapping.numel() == rows,
                "native decode: slot_mapping must be int64 [T]");
    TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.is_contiguous() &&
                    block_tables.dim() == 2 && block_tables.size(0) == rows,
                "native decode: block_tables must be int32 [T, max_blocks]");
    TORCH_CHECK(seq_lens.scalar_type() == at::kInt && seq_lens.is_contiguous() &&
                    seq_lens.numel() == rows,
                "native decode: seq_lens must be int32 [T]");
    const int32_t* lens = seq_lens.data_ptr<int32_t>();
    const int64_t block_size = key_caches.empty() ? 1 : key_caches[0].size(1);
    for (int64_t r = 0; r < rows; ++r)
      TORCH_CHECK(lens[r] >= 1 && lens[r] <= block_tables.size(1) * block_size,
                  "native decode: a context longer than its block table");
  }

  std::vector<LayerWeights> layers_;
  AttentionShape shape_;
  float eps_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ferrite's native CPU decode step (kernels/cpu/decoder_stack.cpp)";
  py::class_<Linear>(m, "Linear")
      .def(py::init<int64_t, at::Tensor, c10::optional<at::Tensor>, int64_t,
                    c10::optional<at::Tensor>>(),
           py::arg("kind"), py::arg("weight"), py::arg("scales"), py::arg("group_size"),
           py::arg("bias"))
      .def("__call__", &Linear::operator());
  py::class_<LayerWeights>(m, "LayerWeights")
      .def(py::init<at::Tensor, at::Tensor, Linear, Linear, Linear, Linear>(),
           py::arg("input_norm"), py::arg("post_attention_norm"), py::arg("qkv"), py::arg("o"),
           py::arg("gate_up"), py::arg("down"));
  py::class_<DecoderStack>(m, "DecoderStack")
      .def(py::init<std::vector<LayerWeights>, int64_t, int64_t, int64_t, double, double>(),
           py::arg("layers"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
           py::arg("rms_norm_eps"), py::arg("attention_scale"))
      .def("forward", &DecoderStack::forward, py::call_guard<py::gil_scoped_release>());
  m.attr("DENSE") = static_cast<int64_t>(Linear::kDense);
  m.attr("INT8") = static_cast<int64_t>(Linear::kInt8);
  m.attr("INT4") = static_cast<int64_t>(Linear::kInt4);
  m.attr("INT4_BLOCKED64") = static_cast<int64_t>(Linear::kInt4Blocked64);
}

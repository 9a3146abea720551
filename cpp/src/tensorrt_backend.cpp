// TensorRT (targets trt-*), as pixart_export/backends/tensorrt/runner.py runs a compiled folder: one
// deserialized engine per plan file (the manifest's `engines`), all on one CUDA stream; device buffers
// allocated once per (engine, batch) from the context's shapes and reused; the denoiser's enqueue
// captured in a CUDA graph on first use per batch (after one warm-up run) and replayed. Host tensors
// are converted to the dtype each engine input declares (float16, int32) and outputs back to float32.
//
// Compiled only where NvInfer.h and the CUDA toolkit are found (CMake PIXART_WITH_TENSORRT). NOT BUILT
// OR RUN in this repository's checks (no host with TensorRT was available): it was only syntax-checked
// against hand-written declarations of the TensorRT 10 calls it makes, with the CUDA 13 headers, and its
// float16 conversions compared with numpy's astype(float16) on 1.5M values (equal).
#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "backend.hpp"

namespace pixart {
namespace {

void cuda_ok(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw Error(Error::kInternal, std::string(what) + ": CUDA error " + cudaGetErrorString(err));
}

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::fprintf(stderr, "TensorRT: %s\n", msg);
    }
};

std::string trt_version() {
    return std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
           std::to_string(NV_TENSORRT_PATCH) + "." + std::to_string(NV_TENSORRT_BUILD);
}

std::size_t dtype_size(const std::string& dtype) {
    if (dtype == "float32" || dtype == "int32") return 4;
    if (dtype == "float16") return 2;
    if (dtype == "int64") return 8;
    throw Error(Error::kUser, "dtype " + dtype + " is not one the C++ TensorRT runner converts; rebuild the engine");
}

std::uint16_t to_half(float f) {  // round to nearest even, as numpy's astype(float16)
    std::uint32_t x;
    std::memcpy(&x, &f, 4);
    const std::uint32_t sign = (x >> 16) & 0x8000u;
    const std::uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
    if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow to inf
    if (abs < 0x38800000u) {                                                   // subnormal or zero
        if (abs < 0x33000000u) return static_cast<std::uint16_t>(sign);
        const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;  // value = mant * 2^(e - 150)
        const int shift = 126 - static_cast<int>(abs >> 23);       // in units of 2^-24: mant >> shift
        std::uint32_t half = mant >> shift;
        const std::uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) ++half;
        return static_cast<std::uint16_t>(sign | half);
    }
    std::uint32_t half = ((abs - 0x38000000u) >> 13);
    const std::uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
    return static_cast<std::uint16_t>(sign | half);
}

float from_half(std::uint16_t h) {
    const std::uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    std::uint32_t x;
    if (exp == 0) {
        if (mant == 0) {
            x = sign;
        } else {  // subnormal: normalise
            int e = -1;
            std::uint32_t m = mant;
            do {
                ++e;
                m <<= 1;
            } while (!(m & 0x400u));
            x = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((m & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        x = sign | 0x7f800000u | (mant << 13);
    } else {
        x = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

std::vector<unsigned char> to_device_layout(const Tensor& t, const std::string& dtype) {
    const std::size_t n = t.type == Tensor::Type::F32 ? t.f.size() : t.i.size();
    std::vector<unsigned char> out(n * dtype_size(dtype));
    for (std::size_t k = 0; k < n; ++k) {
        const double v = t.type == Tensor::Type::F32 ? t.f[k] : static_cast<double>(t.i[k]);
        if (dtype == "float32") {
            const float x = static_cast<float>(v);
            std::memcpy(&out[k * 4], &x, 4);
        } else if (dtype == "float16") {
            const std::uint16_t x = to_half(static_cast<float>(v));
            std::memcpy(&out[k * 2], &x, 2);
        } else if (dtype == "int32") {
            const std::int32_t x = static_cast<std::int32_t>(t.type == Tensor::Type::F32 ? v : t.i[k]);
            std::memcpy(&out[k * 4], &x, 4);
        } else {
            const std::int64_t x = t.type == Tensor::Type::F32 ? static_cast<std::int64_t>(v) : t.i[k];
            std::memcpy(&out[k * 8], &x, 8);
        }
    }
    return out;
}

struct TrtEngine {
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    std::map<std::string, std::pair<void*, std::size_t>> buffers;
    std::int64_t batch = -1;
    bool cuda_graph = false;
    std::map<std::int64_t, cudaGraphExec_t> graphs;

    ~TrtEngine() {
        for (auto& [b, g] : graphs) cudaGraphExecDestroy(g);
        for (auto& [name, buf] : buffers) cudaFree(buf.first);
    }
};

class TrtRunner : public GraphRunner {
  public:
    TrtRunner(std::string folder, bool cuda_graph) : folder_(std::move(folder)), cuda_graph_(cuda_graph) {
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        cuda_ok(cudaStreamCreate(&stream_), "cudaStreamCreate");
    }
    ~TrtRunner() override {
        engines_.clear();
        cudaStreamDestroy(stream_);
    }

    std::vector<Tensor> run(const GraphRecord& record, const Feeds& feeds) override {
        TrtEngine& e = engine(record);
        bind(e, record, feeds);
        std::vector<std::vector<unsigned char>> staged;
        for (std::size_t k = 0; k < record.inputs.size(); ++k) {
            staged.push_back(to_device_layout(*feeds[k].second, record.inputs[k].dtype));
            auto& [ptr, size] = e.buffers.at(record.inputs[k].name);
            cuda_ok(cudaMemcpyAsync(ptr, staged.back().data(), size, cudaMemcpyHostToDevice, stream_), "copy in");
        }
        if (e.cuda_graph) {
            if (!e.graphs.count(e.batch)) {
                if (!e.context->enqueueV3(stream_)) throw Error(Error::kInternal, "TensorRT failed to run " + record.file);
                cuda_ok(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal), "begin capture");
                e.context->enqueueV3(stream_);
                cudaGraph_t graph;
                cuda_ok(cudaStreamEndCapture(stream_, &graph), "end capture");
                cudaGraphExec_t exec;
                cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate graph");
                cudaGraphDestroy(graph);
                e.graphs[e.batch] = exec;
            }
            cuda_ok(cudaGraphLaunch(e.graphs[e.batch], stream_), "graph launch");
        } else if (!e.context->enqueueV3(stream_)) {
            throw Error(Error::kInternal, "TensorRT failed to run " + record.file);
        }
        std::vector<std::vector<unsigned char>> host;
        std::vector<std::vector<std::int64_t>> shapes;
        for (const auto& out : record.outputs) {
            const nvinfer1::Dims d = e.context->getTensorShape(out.name.c_str());
            shapes.emplace_back(d.d, d.d + d.nbDims);
            auto& [ptr, size] = e.buffers.at(out.name);
            host.emplace_back(size);
            cuda_ok(cudaMemcpyAsync(host.back().data(), ptr, size, cudaMemcpyDeviceToHost, stream_), "copy out");
        }
        cuda_ok(cudaStreamSynchronize(stream_), "synchronize");
        std::vector<Tensor> result;
        for (std::size_t k = 0; k < record.outputs.size(); ++k) {
            const std::string& dtype = record.outputs[k].dtype;
            const std::size_t n = host[k].size() / dtype_size(dtype);
            std::vector<float> values(n);
            for (std::size_t j = 0; j < n; ++j) {
                if (dtype == "float16") {
                    std::uint16_t h;
                    std::memcpy(&h, &host[k][j * 2], 2);
                    values[j] = from_half(h);
                } else if (dtype == "float32") {
                    std::memcpy(&values[j], &host[k][j * 4], 4);
                } else {
                    throw Error(Error::kUser, record.file + ": output dtype " + dtype + " is not float; rebuild the engine");
                }
            }
            result.push_back(Tensor::f32(shapes[k], std::move(values)));
        }
        return result;
    }

  private:
    TrtEngine& engine(const GraphRecord& record) {
        auto it = engines_.find(record.file);
        if (it != engines_.end()) return *it->second;
        const std::string path = folder_ + "/" + record.file;
        std::ifstream in(path, std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        const std::string plan = ss.str();
        auto e = std::make_unique<TrtEngine>();
        e->engine.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
        if (!e->engine)
            throw Error(Error::kUser, path + ": TensorRT could not deserialize it (another TensorRT version or GPU?); "
                                             "recompile the bundle on this host");
        e->context.reset(e->engine->createExecutionContext());
        e->cuda_graph = cuda_graph_ && record.graph.rfind("denoiser", 0) == 0;
        return *engines_.emplace(record.file, std::move(e)).first->second;
    }

    void bind(TrtEngine& e, const GraphRecord& record, const Feeds& feeds) {
        const std::int64_t batch = feeds.at(0).second->shape.at(0);  // every graph's first input leads with B
        if (batch == e.batch) return;
        for (auto& [name, buf] : e.buffers) cudaFree(buf.first);
        e.buffers.clear();
        for (std::size_t k = 0; k < record.inputs.size(); ++k) {
            nvinfer1::Dims d{};
            const auto& shape = feeds[k].second->shape;
            d.nbDims = static_cast<int>(shape.size());
            for (std::size_t j = 0; j < shape.size(); ++j) d.d[j] = shape[j];
            e.context->setInputShape(record.inputs[k].name.c_str(), d);
        }
        std::vector<TensorRecord> all = record.inputs;
        all.insert(all.end(), record.outputs.begin(), record.outputs.end());
        for (const auto& t : all) {
            const nvinfer1::Dims d = e.context->getTensorShape(t.name.c_str());
            std::size_t count = 1;
            for (int j = 0; j < d.nbDims; ++j) count *= static_cast<std::size_t>(d.d[j]);
            const std::size_t size = count * dtype_size(t.dtype);
            void* ptr = nullptr;
            cuda_ok(cudaMalloc(&ptr, size ? size : 1), "cudaMalloc");
            e.buffers[t.name] = {ptr, size};
            e.context->setTensorAddress(t.name.c_str(), ptr);
        }
        e.batch = batch;
    }

    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::string folder_;
    bool cuda_graph_;
    cudaStream_t stream_ = nullptr;
    std::map<std::string, std::unique_ptr<TrtEngine>> engines_;
};

}  // namespace

Backend tensorrt_backend() {
    Backend b;
    b.name = "tensorrt";
    b.check_host = [](const std::string& folder, const Manifest& m) {
        if (m.device_kind != "gpu" || !m.device_sm)
            throw Error(Error::kUser, folder + ": manifest 'device' does not describe a GPU (arch, sm): not a TensorRT "
                                               "bundle made by `pixart-export build --target trt-*`; rebuild it");
        if (m.status != "compiled" || m.engines.empty())
            throw Error(Error::kUser, folder + ": a TensorRT bundle without engines; run `pixart-export compile " + folder +
                                          "` on a " + m.device_arch + " host first");
        const std::string installed = trt_version();
        if (!m.backend_version || *m.backend_version != installed)
            throw Error(Error::kUser, "engines were built with TensorRT " + m.backend_version.value_or("None") +
                                          ", this runtime has " + installed +
                                          ": engines are version-specific; run `pixart-export compile " + folder + "`");
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess || prop.major * 10 + prop.minor != *m.device_sm)
            throw Error(Error::kUser, "engines are for sm_" + std::to_string(*m.device_sm) +
                                          "; this host's GPU differs or is missing: compile the bundle on this host");
    };
    b.runner = [](const std::string& folder, const Manifest&, const LoadOptions& options) -> std::unique_ptr<GraphRunner> {
        return std::make_unique<TrtRunner>(folder, options.cuda_graph);
    };
    return b;
}

}  // namespace pixart

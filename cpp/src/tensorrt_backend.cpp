// TensorRT (targets trt-*), as pixart_export/backends/tensorrt/runner.py runs a compiled folder: one
// deserialized engine per plan file (the manifest's `engines`), loaded on first use, all on one CUDA
// stream. Each engine's device buffers are allocated once, for its optimisation profile's maximum shapes,
// and bound once; a call sets its shapes (return values checked) and copies only its batch's bytes, so a
// CUDA graph captured at any batch stays valid (issue #23). The denoiser's enqueue is captured on first use
// per batch (after one warm-up run) and replayed; an enqueue that fails inside the capture ends it and the
// engine runs eagerly. The folder's K-step plan is read from its manifest as Python reads it (loop.py
// uses_loop): a `denoiser_lcm{K}` record with runtime.k_step_loop runs as the transformer and lcm_update
// engines K times in one CUDA graph (KLoop, StepLoop's twin), else the unrolled engine. `release` destroys
// engines (context first) for LoadOptions::low_memory. Host tensors are converted to the dtype each engine
// input declares (float16, int32) and outputs back to float32.
//
// Compiled only where NvInfer.h and the CUDA toolkit are found (CMake PIXART_WITH_TENSORRT). Not run on a
// GPU yet: tests/test_cpp_tensorrt.py compiles it against cpp/tests/fake_tensorrt/ (a fake of the TensorRT
// and CUDA calls below, device memory that aborts on use after free) and checks it against Python's loop;
// earlier it was syntax-checked against TensorRT 10 declarations with the CUDA 13 headers, and its float16
// conversions compared with numpy's astype(float16) on 1.5M values (equal).
#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>

#include "backend.hpp"
#include "json.hpp"

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

std::int64_t count(const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

std::vector<std::int64_t> dims_vector(const nvinfer1::Dims& d) { return {d.d, d.d + d.nbDims}; }

nvinfer1::Dims to_dims(const std::vector<std::int64_t>& shape) {
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int>(shape.size());
    for (std::size_t j = 0; j < shape.size(); ++j) d.d[j] = shape[j];
    return d;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
    std::string s = "(";
    for (std::size_t j = 0; j < shape.size(); ++j) s += (j ? ", " : "") + std::to_string(shape[j]);
    return s + ")";
}

// One deserialized engine, its context, and device buffers for its optimisation profile's maximum shapes:
// allocated and bound once, never moved while the engine lives, so a CUDA graph captured at any batch
// stays valid (issue #23: buffers reallocated per batch left graphs of an earlier batch on freed memory).
struct TrtEngine {
    std::string graph, file;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    std::map<std::string, std::pair<void*, std::size_t>> buffers;  // name -> (pointer, bytes at the maximum)
    std::map<std::string, std::vector<std::int64_t>> max_shapes;
    bool cuda_graph = false;
    std::map<std::vector<std::int64_t>, cudaGraphExec_t> graphs;  // the call's input shapes -> graph

    ~TrtEngine() {  // graphs, then the buffers they point into, then the context, then the engine
        for (auto& [key, g] : graphs) cudaGraphExecDestroy(g);
        for (auto& [name, buf] : buffers) cudaFree(buf.first);
        context.reset();
        engine.reset();
    }

    void set_shape(const std::string& name, const std::vector<std::int64_t>& shape) {
        if (!context->setInputShape(name.c_str(), to_dims(shape))) {
            auto hi = max_shapes.find(name);
            throw Error(Error::kUser, file + ": TensorRT refused shape " + shape_text(shape) + " for input " + name +
                                          (hi != max_shapes.end() ? " (profile maximum " + shape_text(hi->second) + ")"
                                                                  : std::string()) +
                                          "; split the batch, or build a bundle for a target with a larger batch");
        }
    }

    void allocate(const GraphRecord& record) {
        for (const auto& inp : record.inputs) {
            const nvinfer1::Dims hi = engine->getProfileShape(inp.name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
            max_shapes[inp.name] = dims_vector(hi);
            set_shape(inp.name, max_shapes[inp.name]);
        }
        std::vector<TensorRecord> all = record.inputs;
        all.insert(all.end(), record.outputs.begin(), record.outputs.end());
        for (const auto& t : all) {
            const std::size_t size =
                static_cast<std::size_t>(count(dims_vector(context->getTensorShape(t.name.c_str())))) * dtype_size(t.dtype);
            void* ptr = nullptr;
            cuda_ok(cudaMalloc(&ptr, size ? size : 1), "cudaMalloc");
            buffers[t.name] = {ptr, size};
            if (!context->setTensorAddress(t.name.c_str(), ptr))
                throw Error(Error::kInternal, file + ": TensorRT refused the buffer address of " + t.name);
        }
    }

    void check_shape(const std::string& name, const std::vector<std::int64_t>& shape) const {
        const auto& hi = max_shapes.at(name);
        bool ok = hi.size() == shape.size();
        for (std::size_t j = 0; ok && j < shape.size(); ++j) ok = shape[j] <= hi[j];
        if (!ok)
            throw Error(Error::kUser, file + ": input " + name + " has shape " + shape_text(shape) +
                                          ", above the engine's optimisation profile (max " + shape_text(hi) +
                                          "); split the batch, or build a bundle for a target with a larger batch");
    }
};

// Runs `enqueue` into a new CUDA graph on `stream`. Every enqueue inside the capture is checked: on a
// failure the capture is ended and its graph discarded, and nullptr comes back (the caller runs eagerly,
// as trtexec falls back), never a half-captured graph.
template <typename F>
cudaGraphExec_t capture(cudaStream_t stream, F&& enqueue) {
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "begin capture");
    bool ok = true;
    try {
        ok = enqueue();
    } catch (...) {
        ok = false;
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    if (!ok || ended != cudaSuccess) {
        if (graph) cudaGraphDestroy(graph);
        return nullptr;
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    cuda_ok(made, "instantiate graph");
    return exec;
}

// The K-step plan (pixart_export/backends/tensorrt/loop.py, StepLoop): the one-step transformer engine
// and the lcm_update engine K times in one CUDA graph per batch. The loop's own buffers are allocated once
// for the profile's maximum batch; the update's step_noise is zeroed once (with K = 1 nothing else writes
// it, and c = 0 times uninitialised memory is NaN), and so are the transformer's control_residuals, which
// stay zero on the device instead of being uploaded per call.
struct KLoop {
    std::string graph;  // the denoiser graph it runs
    TrtEngine* step = nullptr;
    TrtEngine* update = nullptr;
    const GraphRecord* step_record = nullptr;
    const GraphRecord* update_record = nullptr;
    std::vector<float> timesteps, coef;  // K, K x 3
    std::int64_t max_batch = 0;
    void* t_buf = nullptr;  // [K, max batch] timesteps
    void* c_buf = nullptr;  // [K, 3]
    void* n_buf = nullptr;  // [K - 1, B, C, h, w] step noise of the call
    bool use_graphs = true;
    std::map<std::int64_t, cudaGraphExec_t> graphs;

    ~KLoop() {
        for (auto& [b, g] : graphs) cudaGraphExecDestroy(g);
        for (void* p : {t_buf, c_buf, n_buf})
            if (p) cudaFree(p);
    }
};

const char* const kResidentZeros[] = {"control_residuals"};

bool resident_zero(const std::string& name) {
    for (const char* r : kResidentZeros)
        if (name == r) return true;
    return false;
}

// loop.py lcm_coefficients: (a_k, b_k, c_k) of x_next = a_k x + b_k eps + c_k noise_k, in double, as float
std::vector<float> lcm_coefficients(const std::vector<std::int64_t>& timesteps, const std::vector<double>& acp_at) {
    const double sigma_data = 0.5, timestep_scaling = 10.0;
    std::vector<float> out;
    for (std::size_t k = 0; k < timesteps.size(); ++k) {
        const double scaled = static_cast<double>(timesteps[k]) * timestep_scaling;
        const double c_skip = sigma_data * sigma_data / (scaled * scaled + sigma_data * sigma_data);
        const double c_out = scaled / std::pow(scaled * scaled + sigma_data * sigma_data, 0.5);
        const double a = acp_at[k];
        const double a_next = k + 1 < timesteps.size() ? acp_at[k + 1] : 1.0;
        out.push_back(static_cast<float>(std::sqrt(a_next) * (c_skip + c_out / std::sqrt(a))));
        out.push_back(static_cast<float>(-std::sqrt(a_next) * c_out * std::sqrt(1.0 - a) / std::sqrt(a)));
        out.push_back(static_cast<float>(std::sqrt(1.0 - a_next)));
    }
    return out;
}

// What the folder's manifest says about its K-step plan, beyond the validated Manifest: the plan, the LCM
// timesteps and alpha-bar at them, and per engine record its runtime.k_step_loop (compile.loop_records).
struct PlanInfo {
    std::string plan;  // "loop", "unrolled", or "" for bundles made before plans
    std::vector<std::int64_t> timesteps;
    std::vector<double> alphas_cumprod;
    std::map<std::size_t, std::pair<std::string, std::string>> k_step_loop;  // engine index -> (transformer, lcm_update)
};

PlanInfo read_plan(const std::string& folder, const Manifest& m) {
    std::ifstream in(folder + "/manifest.json", std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const json::Value data = json::parse(text);
    PlanInfo info;
    const std::string where = folder + "/manifest.json: ";
    if (const json::Value* build = data.find("build"); build && build->is_object())
        if (const json::Value* plan = build->find("k_step_plan"); plan && plan->is_object())
            if (const json::Value* name = plan->find("plan"); name && name->is_string()) info.plan = name->s;
    const json::Value& lcm = data.at("lcm");
    for (const auto& t : lcm.at("timesteps").items) info.timesteps.push_back(t.i);
    for (const auto& a : lcm.at("alphas_cumprod").items) info.alphas_cumprod.push_back(a.number());
    if (info.alphas_cumprod.size() != info.timesteps.size())
        throw Error(Error::kUser, where + "lcm.alphas_cumprod does not hold one value per timestep; rebuild the engine");
    const json::Value* engines = data.find("engines");
    for (std::size_t i = 0; engines && engines->is_array() && i < engines->items.size(); ++i) {
        const json::Value* rt = engines->items[i].find("runtime");
        const json::Value* loop = rt && rt->is_object() ? rt->find("k_step_loop") : nullptr;
        if (!loop) continue;
        const json::Value* step = loop->is_object() ? loop->find("transformer") : nullptr;
        const json::Value* update = loop->is_object() ? loop->find("lcm_update") : nullptr;
        if (!step || !update || !step->is_string() || !update->is_string() || i >= m.engines.size())
            throw Error(Error::kUser, where + "engines[" + std::to_string(i) +
                                          "].runtime.k_step_loop must name its transformer and lcm_update engines; "
                                          "recompile the bundle");
        info.k_step_loop[i] = {step->s, update->s};
    }
    return info;
}

class TrtRunner : public GraphRunner {
  public:
    TrtRunner(std::string folder, const Manifest& m, bool cuda_graph)
        : folder_(std::move(folder)), manifest_(m), cuda_graph_(cuda_graph), plan_(read_plan(folder_, manifest_)) {
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        cuda_ok(cudaStreamCreate(&stream_), "cudaStreamCreate");
    }
    ~TrtRunner() override {
        loops_.clear();
        engines_.clear();
        cudaStreamDestroy(stream_);
    }

    std::vector<Tensor> run(const GraphRecord& record, const Feeds& feeds) override {
        if (KLoop* k = loop_for(record)) return {run_loop(*k, feeds)};
        TrtEngine& e = engine(record);
        std::vector<std::int64_t> key;
        for (std::size_t k = 0; k < record.inputs.size(); ++k) {
            const auto& shape = feeds[k].second->shape;
            e.check_shape(record.inputs[k].name, shape);
            key.insert(key.end(), shape.begin(), shape.end());
            key.push_back(-1);
        }
        for (std::size_t k = 0; k < record.inputs.size(); ++k) e.set_shape(record.inputs[k].name, feeds[k].second->shape);
        std::vector<std::vector<unsigned char>> staged;  // kept until the copies are done (synchronize below)
        for (std::size_t k = 0; k < record.inputs.size(); ++k) {
            staged.push_back(to_device_layout(*feeds[k].second, record.inputs[k].dtype));
            upload(e.buffers.at(record.inputs[k].name), staged.back());
        }
        if (e.cuda_graph && !e.graphs.count(key)) {
            enqueue(e);  // warm-up: TensorRT's lazy set-up must not be captured
            cudaGraphExec_t g = capture(stream_, [&] { return e.context->enqueueV3(stream_); });
            if (g)
                e.graphs[key] = g;
            else
                e.cuda_graph = false;  // an enqueue failed inside the capture: run this engine eagerly
        }
        if (e.cuda_graph)
            cuda_ok(cudaGraphLaunch(e.graphs.at(key), stream_), "graph launch");
        else
            enqueue(e);
        std::vector<std::vector<unsigned char>> host;
        std::vector<std::vector<std::int64_t>> shapes;
        for (const auto& out : record.outputs) {
            shapes.push_back(dims_vector(e.context->getTensorShape(out.name.c_str())));
            host.emplace_back(static_cast<std::size_t>(count(shapes.back())) * dtype_size(out.dtype));
            cuda_ok(cudaMemcpyAsync(host.back().data(), e.buffers.at(out.name).first, host.back().size(),
                                    cudaMemcpyDeviceToHost, stream_),
                    "copy out");
        }
        cuda_ok(cudaStreamSynchronize(stream_), "synchronize");
        std::vector<Tensor> result;
        for (std::size_t k = 0; k < record.outputs.size(); ++k) result.push_back(to_float(record, k, host[k], shapes[k]));
        return result;
    }

    // GraphRunner::release / loaded (LoadOptions::low_memory): each engine released is destroyed here, its
    // context first, before the next graph's engine is deserialized
    void release(const std::vector<std::string>& graphs) {
        std::set<std::string> names(graphs.begin(), graphs.end());
        for (auto it = loops_.begin(); it != loops_.end();) {  // a loop goes with its denoiser or its engines
            KLoop& k = *it->second;
            if (names.count(k.graph)) {
                names.insert(k.step->graph);
                names.insert(k.update->graph);
            }
            if (names.count(k.graph) || names.count(k.step->graph) || names.count(k.update->graph))
                it = loops_.erase(it);
            else
                ++it;
        }
        for (auto it = engines_.begin(); it != engines_.end();)  // each destroyed before the next loads
            it = names.count(it->second->graph) ? engines_.erase(it) : std::next(it);
    }

    std::vector<std::string> loaded() const {
        std::set<std::string> names;
        for (const auto& [file, e] : engines_) names.insert(e->graph);
        for (const auto& [file, k] : loops_) names.insert(k->graph);
        return {names.begin(), names.end()};
    }

    std::int64_t bytes_in() const { return bytes_in_; }  // host -> device bytes since the last run_loop began

  private:
    void upload(const std::pair<void*, std::size_t>& buffer, const std::vector<unsigned char>& bytes) {
        if (bytes.size() > buffer.second) throw Error(Error::kInternal, "an input larger than its buffer");
        cuda_ok(cudaMemcpyAsync(buffer.first, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, stream_), "copy in");
        bytes_in_ += static_cast<std::int64_t>(bytes.size());
    }

    void enqueue(TrtEngine& e) {
        if (!e.context->enqueueV3(stream_)) throw Error(Error::kInternal, "TensorRT failed to run " + e.file);
    }

    Tensor to_float(const GraphRecord& record, std::size_t k, const std::vector<unsigned char>& bytes,
                    const std::vector<std::int64_t>& shape) {
        const std::string& dtype = record.outputs[k].dtype;
        const std::size_t n = bytes.size() / dtype_size(dtype);
        std::vector<float> values(n);
        for (std::size_t j = 0; j < n; ++j) {
            if (dtype == "float16") {
                std::uint16_t h;
                std::memcpy(&h, &bytes[j * 2], 2);
                values[j] = from_half(h);
            } else if (dtype == "float32") {
                std::memcpy(&values[j], &bytes[j * 4], 4);
            } else {
                throw Error(Error::kUser, record.file + ": output dtype " + dtype + " is not float; rebuild the engine");
            }
        }
        return Tensor::f32(shape, std::move(values));
    }

    // the plan read once into one buffer: through the checked files held open at load (Manifest::held,
    // re-hashed as read: what runs is what was checked), else from the path (its size from the file)
    std::string plan_bytes(const std::string& file) const {
        if (manifest_.held) return manifest_.held->read(file);
        const std::string path = folder_ + "/" + file;
        std::ifstream in(path, std::ios::binary | std::ios::ate);
        if (!in) throw Error(Error::kUser, path + ": cannot be read; recompile the bundle");
        std::string plan(static_cast<std::size_t>(in.tellg()), '\0');
        in.seekg(0);
        if (!in.read(plan.data(), static_cast<std::streamsize>(plan.size())))
            throw Error(Error::kUser, path + ": cannot be read; recompile the bundle");
        return plan;
    }

    TrtEngine& engine(const GraphRecord& record) {
        auto it = engines_.find(record.file);
        if (it != engines_.end()) return *it->second;
        const std::string path = folder_ + "/" + record.file;
        std::string plan = plan_bytes(record.file);
        auto e = std::make_unique<TrtEngine>();
        e->graph = record.graph;
        e->file = record.file;
        e->engine.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
        plan.clear();
        plan.shrink_to_fit();
        if (!e->engine)
            throw Error(Error::kUser, path + ": TensorRT could not deserialize it (another TensorRT version or GPU?); "
                                             "recompile the bundle on this host");
        e->context.reset(e->engine->createExecutionContext());
        if (!e->context) throw Error(Error::kInternal, path + ": TensorRT could not create an execution context");
        e->cuda_graph = cuda_graph_ && record.graph.rfind("denoiser", 0) == 0;
        e->allocate(record);
        return *engines_.emplace(record.file, std::move(e)).first->second;
    }

    const GraphRecord* engine_record(const std::string& file) const {
        for (const auto& r : manifest_.engines)
            if (r.file == file && r.graph != "denoiser_lcm" + std::to_string(manifest_.steps)) return &r;
        return nullptr;
    }

    // loop.py uses_loop / loop_engines: the record's own runtime.k_step_loop; else, in a folder compiled
    // before plans were recorded per record, the plan "loop" with an lcm_update engine
    KLoop* loop_for(const GraphRecord& record) {
        if (record.graph != "denoiser_lcm" + std::to_string(manifest_.steps)) return nullptr;
        auto found = loops_.find(record.file);
        if (found != loops_.end()) return found->second.get();
        std::size_t index = manifest_.engines.size();
        for (std::size_t i = 0; i < manifest_.engines.size(); ++i)
            if (&manifest_.engines[i] == &record || (manifest_.engines[i].file == record.file &&
                                                     manifest_.engines[i].graph == record.graph &&
                                                     manifest_.engines[i].precision == record.precision))
                index = i;
        const GraphRecord* step = nullptr;
        const GraphRecord* update = nullptr;
        auto own = plan_.k_step_loop.find(index);
        if (own != plan_.k_step_loop.end()) {
            step = engine_record(own->second.first);
            update = engine_record(own->second.second);
            if (!step || !update)
                throw Error(Error::kUser, folder_ + ": " + record.file + ": its k_step_loop names engines the manifest "
                                                                        "does not list; recompile the bundle");
        } else if (!plan_.k_step_loop.empty() || plan_.plan != "loop") {
            return nullptr;  // the unrolled engine
        } else {
            const int h = record.height.value_or(0), w = record.width.value_or(0);
            bool has_update = false;
            for (const auto& r : manifest_.engines) has_update = has_update || r.graph == "lcm_update";
            if (!has_update) return nullptr;
            step = &manifest_.record("transformer", h, w);
            update = &manifest_.record("lcm_update", h, w);
        }
        auto k = std::make_unique<KLoop>();
        k->graph = record.graph;
        k->step_record = step;
        k->update_record = update;
        for (auto t : plan_.timesteps) k->timesteps.push_back(static_cast<float>(t));
        k->coef = lcm_coefficients(plan_.timesteps, plan_.alphas_cumprod);
        return loops_.emplace(record.file, std::move(k)).first->second.get();
    }

    void setup(KLoop& k) {
        k.step = &engine(*k.step_record);
        k.update = &engine(*k.update_record);
        const auto& lat = k.step->max_shapes.at("latents");
        const std::size_t K = k.timesteps.size();
        k.max_batch = lat.at(0);
        const std::size_t image_bytes = static_cast<std::size_t>(count(lat) / k.max_batch) * 4;
        const std::size_t t_bytes = K * static_cast<std::size_t>(k.max_batch) * 4;
        const std::size_t n_bytes = std::max<std::size_t>(K - 1, 1) * static_cast<std::size_t>(k.max_batch) * image_bytes;
        cuda_ok(cudaMalloc(&k.t_buf, t_bytes), "cudaMalloc");
        cuda_ok(cudaMalloc(&k.c_buf, k.coef.size() * 4), "cudaMalloc");
        cuda_ok(cudaMalloc(&k.n_buf, n_bytes), "cudaMalloc");
        std::vector<float> table;  // row k: the timestep for every image of the largest batch
        for (float t : k.timesteps) table.insert(table.end(), static_cast<std::size_t>(k.max_batch), t);
        cuda_ok(cudaMemcpyAsync(k.t_buf, table.data(), t_bytes, cudaMemcpyHostToDevice, stream_), "copy in");
        cuda_ok(cudaMemcpyAsync(k.c_buf, k.coef.data(), k.coef.size() * 4, cudaMemcpyHostToDevice, stream_), "copy in");
        const auto& noise = k.update->buffers.at("step_noise");
        cuda_ok(cudaMemsetAsync(noise.first, 0, noise.second, stream_), "memset");
        for (const auto& [name, buf] : k.step->buffers)
            if (resident_zero(name)) cuda_ok(cudaMemsetAsync(buf.first, 0, buf.second, stream_), "memset");
        cuda_ok(cudaStreamSynchronize(stream_), "synchronize");
    }

    void copy(void* dst, const void* src, std::size_t n) {
        cuda_ok(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream_), "device copy");
    }

    // the 2K enqueues and their device copies (what is captured); false when an enqueue fails
    bool steps(KLoop& k, std::int64_t batch, std::size_t latent_bytes) {
        auto& s = k.step->buffers;
        auto& u = k.update->buffers;
        const std::size_t K = k.timesteps.size(), row = static_cast<std::size_t>(k.max_batch) * 4;
        auto at = [](void* p, std::size_t off) { return static_cast<void*>(static_cast<unsigned char*>(p) + off); };
        for (std::size_t j = 0; j < K; ++j) {
            copy(s.at("timestep").first, at(k.t_buf, j * row), static_cast<std::size_t>(batch) * 4);
            if (!k.step->context->enqueueV3(stream_)) return false;
            copy(u.at("latents").first, s.at("latents").first, latent_bytes);
            copy(u.at("noise_pred").first, s.at("noise_pred").first, latent_bytes);
            if (j + 1 < K) copy(u.at("step_noise").first, at(k.n_buf, j * latent_bytes), latent_bytes);
            copy(u.at("coef").first, at(k.c_buf, j * 12), 12);
            if (!k.update->context->enqueueV3(stream_)) return false;
            copy(s.at("latents").first, u.at("latents_next").first, latent_bytes);
        }
        return true;
    }

    Tensor run_loop(KLoop& k, const Feeds& feeds) {
        if (!k.t_buf) setup(k);
        bytes_in_ = 0;
        const Tensor* latents = nullptr;
        const Tensor* step_noise = nullptr;
        for (const auto& [name, t] : feeds) {
            if (name == "latents") latents = t;
            if (name == "step_noise") step_noise = t;
        }
        if (!latents || !step_noise) throw Error(Error::kInternal, "the K-step loop needs latents and step_noise");
        const std::int64_t batch = latents->shape.at(0);
        const std::size_t latent_bytes = static_cast<std::size_t>(count(latents->shape)) * 4;
        std::vector<std::pair<const TensorRecord*, const Tensor*>> fed;
        for (const auto& inp : k.step_record->inputs) {
            std::vector<std::int64_t> shape;
            if (inp.name == "timestep") {
                shape = {batch};
            } else if (resident_zero(inp.name)) {
                for (auto d : inp.shape) shape.push_back(d < 0 ? batch : d);
            } else {
                const Tensor* t = nullptr;
                for (const auto& [name, value] : feeds)
                    if (name == inp.name) t = value;
                if (!t) throw Error(Error::kUser, k.step_record->file + " needs input '" + inp.name +
                                                      "', which the denoiser request does not carry; recompile the bundle");
                shape = t->shape;
                fed.emplace_back(&inp, t);
            }
            k.step->check_shape(inp.name, shape);
            k.step->set_shape(inp.name, shape);
        }
        for (const auto& inp : k.update_record->inputs)
            k.update->set_shape(inp.name, inp.name == "coef" ? std::vector<std::int64_t>{3} : latents->shape);
        std::vector<std::vector<unsigned char>> staged;
        std::size_t x_t = 0;  // which staged input is x_T (put back after the eager run)
        for (const auto& [inp, t] : fed) {
            if (inp->name == "latents") x_t = staged.size();
            staged.push_back(to_device_layout(*t, inp->dtype));
            upload(k.step->buffers.at(inp->name), staged.back());
        }
        if (!step_noise->f.empty()) {
            staged.push_back(to_device_layout(*step_noise, "float32"));
            upload({k.n_buf, staged.back().size()}, staged.back());
        }
        if (k.use_graphs && !k.graphs.count(batch)) {
            if (!steps(k, batch, latent_bytes)) throw Error(Error::kInternal, "TensorRT failed to run " + k.step->file);
            cuda_ok(cudaStreamSynchronize(stream_), "synchronize");  // the eager run moved the latents: x_T back
            upload(k.step->buffers.at("latents"), staged.at(x_t));
            cudaGraphExec_t g = capture(stream_, [&] { return steps(k, batch, latent_bytes); });
            if (g)
                k.graphs[batch] = g;
            else
                k.use_graphs = false;  // an enqueue failed inside the capture: run eagerly from now on
        }
        if (k.use_graphs) {
            cuda_ok(cudaGraphLaunch(k.graphs.at(batch), stream_), "graph launch");
        } else if (!steps(k, batch, latent_bytes)) {
            throw Error(Error::kInternal, "TensorRT failed to run " + k.step->file);
        }
        std::vector<float> out(static_cast<std::size_t>(count(latents->shape)));
        cuda_ok(cudaMemcpyAsync(out.data(), k.step->buffers.at("latents").first, latent_bytes, cudaMemcpyDeviceToHost,
                                stream_),
                "copy out");
        cuda_ok(cudaStreamSynchronize(stream_), "synchronize");
        return Tensor::f32(latents->shape, std::move(out));
    }

    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::string folder_;
    Manifest manifest_;
    bool cuda_graph_;
    PlanInfo plan_;
    cudaStream_t stream_ = nullptr;
    std::map<std::string, std::unique_ptr<TrtEngine>> engines_;
    std::map<std::string, std::unique_ptr<KLoop>> loops_;  // declared after engines_: destroyed first
    std::int64_t bytes_in_ = 0;
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
    b.runner = [](const std::string& folder, const Manifest& m, const LoadOptions& options) -> std::unique_ptr<GraphRunner> {
        return std::make_unique<TrtRunner>(folder, m, options.cuda_graph);
    };
    return b;
}

}  // namespace pixart

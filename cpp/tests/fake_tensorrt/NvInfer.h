// A fake of the few TensorRT 10 runtime calls cpp/src/tensorrt_backend.cpp makes, for
// tests/test_cpp_tensorrt.py (no GPU, no TensorRT). A "plan" file is text the test writes:
//
//     kind transformer|lcm_update|denoiser|text
//     input <name> <max dims...>       (-1 nowhere: these are the profile's maximum shapes)
//     output <name> <dims...>          (-1 for the batch, taken from the first input's batch axis)
//     batch_axis <input> <axis>        (optional; default axis 0 of the first input)
//
// An execution context checks shapes against the profile, keeps the bound addresses, and an enqueue runs
// (or, while capturing, records) a kernel that reads and writes device memory through fake::Gpu with the
// addresses and shapes of that enqueue. Kernels (float32):
//   transformer: noise_pred = 0.3 latents + 1e-3 timestep[b] + control_residuals[0, b, 0, 0] (if bound)
//   lcm_update:  latents_next = coef[0] latents + coef[1] noise_pred + coef[2] step_noise
//   denoiser:    denoised = 2 latents
//   text:        prompt_embeds[b, i, j] = input_ids[b, i]
// FAKE_TRT_FAIL_IN_CAPTURE=1 makes an enqueue inside a capture fail (returns false), as a kernel that
// cannot be captured does. Engine and context destructors log to fake::gpu().events.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_runtime_api.h"

namespace nvinfer1 {

struct Dims64 {
    static constexpr int MAX_DIMS = 8;
    std::int32_t nbDims = 0;
    std::int64_t d[MAX_DIMS] = {};
};
using Dims = Dims64;

enum class OptProfileSelector : std::int32_t { kMIN = 0, kOPT = 1, kMAX = 2 };

class ILogger {
  public:
    enum class Severity : std::int32_t { kINTERNAL_ERROR = 0, kERROR = 1, kWARNING = 2, kINFO = 3, kVERBOSE = 4 };
    virtual void log(Severity severity, const char* msg) noexcept = 0;
    virtual ~ILogger() = default;
};

struct FakePlan {
    std::string kind;
    std::vector<std::pair<std::string, std::vector<std::int64_t>>> inputs, outputs;
    std::string batch_input;
    int batch_axis = 0;
};

class IExecutionContext;

class ICudaEngine {
  public:
    explicit ICudaEngine(FakePlan plan) : plan_(std::move(plan)) { fake::gpu().events.push_back("deserialize " + plan_.kind); }
    virtual ~ICudaEngine() { fake::gpu().events.push_back("destroy engine " + plan_.kind); }
    IExecutionContext* createExecutionContext() noexcept;
    Dims getProfileShape(const char* name, std::int32_t, OptProfileSelector) const noexcept {
        Dims d;
        for (const auto& [n, shape] : plan_.inputs)
            if (n == name) {
                d.nbDims = static_cast<std::int32_t>(shape.size());
                for (std::size_t j = 0; j < shape.size(); ++j) d.d[j] = shape[j];
                return d;
            }
        d.nbDims = -1;
        return d;
    }
    const FakePlan& plan() const { return plan_; }

  private:
    FakePlan plan_;
};

class IExecutionContext {
  public:
    explicit IExecutionContext(const ICudaEngine* engine) : engine_(engine) {}
    virtual ~IExecutionContext() { fake::gpu().events.push_back("destroy context " + engine_->plan().kind); }

    bool setInputShape(const char* name, const Dims& dims) noexcept {
        const Dims hi = engine_->getProfileShape(name, 0, OptProfileSelector::kMAX);
        if (hi.nbDims != dims.nbDims) return false;
        for (int j = 0; j < dims.nbDims; ++j)
            if (dims.d[j] < 1 || dims.d[j] > hi.d[j]) return false;
        shapes_[name] = std::vector<std::int64_t>(dims.d, dims.d + dims.nbDims);
        return true;
    }
    Dims getTensorShape(const char* name) const noexcept {
        Dims d;
        std::vector<std::int64_t> shape;
        if (auto it = shapes_.find(name); it != shapes_.end()) {
            shape = it->second;
        } else {
            const FakePlan& p = engine_->plan();
            const std::string first = p.batch_input.empty() ? p.inputs.at(0).first : p.batch_input;
            const std::int64_t batch = shapes_.count(first) ? shapes_.at(first).at(static_cast<std::size_t>(p.batch_axis)) : -1;
            for (const auto& [n, dims] : p.outputs)
                if (n == name)
                    for (auto v : dims) shape.push_back(v < 0 ? batch : v);
        }
        d.nbDims = static_cast<std::int32_t>(shape.size());
        for (std::size_t j = 0; j < shape.size(); ++j) d.d[j] = shape[j];
        return d;
    }
    bool setTensorAddress(const char* name, void* ptr) noexcept {
        addresses_[name] = ptr;
        return true;
    }
    bool enqueueV3(cudaStream_t) noexcept {
        auto& g = fake::gpu();
        if (g.capturing && std::getenv("FAKE_TRT_FAIL_IN_CAPTURE")) return false;
        for (const auto& [n, dims] : engine_->plan().inputs)
            if (!shapes_.count(n) || !addresses_.count(n)) return false;
        const std::string kind = engine_->plan().kind;
        auto shapes = shapes_;
        auto addr = addresses_;
        g.device([kind, shapes, addr] { run(kind, shapes, addr); });
        return true;
    }

  private:
    static float* f32(const std::map<std::string, void*>& addr, const std::string& name, std::size_t n) {
        return reinterpret_cast<float*>(fake::gpu().at(addr.at(name), n * 4));
    }
    static void run(const std::string& kind, const std::map<std::string, std::vector<std::int64_t>>& shapes,
                    const std::map<std::string, void*>& addr) {
        if (kind == "text") {
            const auto& s = shapes.at("input_ids");
            const std::size_t B = static_cast<std::size_t>(s[0]), L = static_cast<std::size_t>(s[1]);
            const float* ids = f32(addr, "input_ids", B * L);
            float* out = f32(addr, "prompt_embeds", B * L * 8);
            for (std::size_t i = 0; i < B * L; ++i)
                for (std::size_t j = 0; j < 8; ++j) out[i * 8 + j] = ids[i];
            return;
        }
        const auto& s = shapes.at("latents");
        std::size_t n = 1;
        for (auto v : s) n *= static_cast<std::size_t>(v);
        const std::size_t B = static_cast<std::size_t>(s[0]), per = n / B;
        const float* x = f32(addr, "latents", n);
        if (kind == "transformer") {
            const float* t = f32(addr, "timestep", B);
            float* out = f32(addr, "noise_pred", n);
            const float* r = nullptr;
            std::size_t r_per = 0;
            if (auto it = shapes.find("control_residuals"); it != shapes.end()) {
                std::size_t rn = 1;
                for (auto v : it->second) rn *= static_cast<std::size_t>(v);
                r = f32(addr, "control_residuals", rn);
                r_per = rn / static_cast<std::size_t>(it->second[0]) / B;  // [N, B, T, D]: image b at b * r_per
            }
            for (std::size_t i = 0; i < n; ++i) {
                const std::size_t b = i / per;
                out[i] = 0.3f * x[i] + 1e-3f * t[b] + (r ? r[b * r_per] : 0.0f);
            }
        } else if (kind == "lcm_update") {
            const float* eps = f32(addr, "noise_pred", n);
            const float* noise = f32(addr, "step_noise", n);
            const float* c = f32(addr, "coef", 3);
            float* out = f32(addr, "latents_next", n);
            for (std::size_t i = 0; i < n; ++i) out[i] = c[0] * x[i] + c[1] * eps[i] + c[2] * noise[i];
        } else if (kind == "denoiser") {
            float* out = f32(addr, "denoised", n);
            for (std::size_t i = 0; i < n; ++i) out[i] = 2.0f * x[i];
        }
    }

    const ICudaEngine* engine_;
    std::map<std::string, std::vector<std::int64_t>> shapes_;
    std::map<std::string, void*> addresses_;
};

inline IExecutionContext* ICudaEngine::createExecutionContext() noexcept { return new IExecutionContext(this); }

class IRuntime {
  public:
    virtual ~IRuntime() = default;
    ICudaEngine* deserializeCudaEngine(const void* data, std::size_t size) noexcept {
        std::istringstream in(std::string(static_cast<const char*>(data), size));
        FakePlan plan;
        std::string word;
        while (in >> word) {
            std::string line;
            std::getline(in, line);
            std::istringstream rest(line);
            if (word == "kind") {
                rest >> plan.kind;
            } else if (word == "input" || word == "output") {
                std::string name;
                rest >> name;
                std::vector<std::int64_t> dims;
                std::int64_t v;
                while (rest >> v) dims.push_back(v);
                (word == "input" ? plan.inputs : plan.outputs).emplace_back(name, dims);
            } else if (word == "batch_axis") {
                rest >> plan.batch_input >> plan.batch_axis;
            } else {
                return nullptr;  // not a plan of this fake
            }
        }
        return plan.kind.empty() ? nullptr : new ICudaEngine(plan);
    }
};

inline IRuntime* createInferRuntime(ILogger&) noexcept { return new IRuntime(); }

}  // namespace nvinfer1

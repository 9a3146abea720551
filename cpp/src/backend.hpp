// The backend interface: what pixart_export/backends/base.py's Backend gives the runtime, in C++.
// A backend checks the host (its version, the device) and makes a GraphRunner that runs one graph
// record of the manifest on named host tensors. Backends are compiled in when their SDK is found
// (CMake options PIXART_WITH_OPENVINO, PIXART_WITH_TENSORRT); nothing outside a backend's file names it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "manifest.hpp"
#include "pixart/runtime.hpp"

namespace pixart {

struct Tensor {
    enum class Type { F32, I64 } type = Type::F32;
    std::vector<std::int64_t> shape;
    std::vector<float> f;         // F32 data
    std::vector<std::int64_t> i;  // I64 data

    static Tensor f32(std::vector<std::int64_t> shape, std::vector<float> data) {
        Tensor t;
        t.shape = std::move(shape);
        t.f = std::move(data);
        return t;
    }
    static Tensor i64(std::vector<std::int64_t> shape, std::vector<std::int64_t> data) {
        Tensor t;
        t.type = Type::I64;
        t.shape = std::move(shape);
        t.i = std::move(data);
        return t;
    }
};

using Feeds = std::vector<std::pair<std::string, const Tensor*>>;  // in the record's input order

class GraphRunner {
  public:
    virtual ~GraphRunner() = default;
    virtual std::vector<Tensor> run(const GraphRecord& record, const Feeds& feeds) = 0;  // loads on first use
    // drops what run() loaded for these graphs (manifest graph names, e.g. "text_encoder"): compiled models,
    // engines and their buffers; a graph released loads again on its next run (LoadOptions::low_memory)
    virtual void release(const std::vector<std::string>& graphs) = 0;
    // the graphs that hold loaded objects now (Engine::loaded_graphs); a backend that does not say throws
    virtual std::vector<std::string> loaded() const {
        throw Error(Error::kInternal, "this backend does not report which graphs it holds");
    }
};

struct Backend {
    std::string name;
    std::function<void(const std::string& folder, const Manifest&)> check_host;
    std::function<std::unique_ptr<GraphRunner>(const std::string& folder, const Manifest&, const LoadOptions&)> runner;
};

const std::vector<Backend>& backends();

#ifdef PIXART_WITH_OPENVINO
Backend openvino_backend();
#endif
#ifdef PIXART_WITH_TENSORRT
Backend tensorrt_backend();
#endif

}  // namespace pixart

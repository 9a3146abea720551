// A fake of the few CUDA runtime calls cpp/src/tensorrt_backend.cpp makes, for tests/test_cpp_tensorrt.py
// (no GPU): "device" memory is host memory that a test can watch. Fresh allocations are filled with 0xff
// (NaN as float32, as uninitialised memory may be); a freed block is gone, and every device access checks
// that its bytes lie inside a live block, so a CUDA graph replayed on freed memory fails loudly. While a
// stream captures, device work (copies between device buffers, memsets, kernels) is recorded instead of
// run; a graph launch runs what was recorded, with the addresses of the capture. Host <-> device copies
// inside a capture are refused (they would replay stale host memory). Not a model of streams: everything
// runs in order, at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorStreamCaptureInvalidated = 901 };
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0 };
struct CUstream_st {};
using cudaStream_t = CUstream_st*;
struct FakeGraph {
    std::vector<std::function<void()>> ops;
};
using cudaGraph_t = FakeGraph*;
using cudaGraphExec_t = FakeGraph*;
struct cudaDeviceProp {
    int major = 7, minor = 5;
};

namespace fake {

struct Gpu {
    std::map<std::uintptr_t, std::vector<unsigned char>> blocks;  // base -> bytes
    std::vector<std::function<void()>>* capturing = nullptr;
    std::int64_t h2d_bytes = 0, mallocs = 0, frees = 0, launches = 0;
    std::vector<std::string> events;  // what a test reads: deserialize/destroy of engines, frees

    unsigned char* at(const void* ptr, std::size_t n) {  // the bytes [ptr, ptr + n) of one live block
        const auto p = reinterpret_cast<std::uintptr_t>(ptr);
        auto it = blocks.upper_bound(p);
        if (it != blocks.begin()) {
            --it;
            if (p >= it->first && p + n <= it->first + it->second.size()) return it->second.data() + (p - it->first);
        }
        std::fprintf(stderr, "FAKE GPU: %zu bytes at %p are not live device memory (freed or out of bounds)\n", n, ptr);
        std::abort();
    }
    void device(std::function<void()> op) {  // device work: now, or into the graph being captured
        if (capturing)
            capturing->push_back(std::move(op));
        else
            op();
    }
};

inline Gpu& gpu() {
    static Gpu g;
    return g;
}

}  // namespace fake

inline const char* cudaGetErrorString(cudaError_t err) { return err == cudaSuccess ? "no error" : "fake CUDA error"; }

inline cudaError_t cudaMalloc(void** ptr, std::size_t n) {
    std::vector<unsigned char> bytes(n, 0xff);
    *ptr = bytes.data();
    fake::gpu().blocks[reinterpret_cast<std::uintptr_t>(*ptr)] = std::move(bytes);  // the buffer moves, not its bytes
    ++fake::gpu().mallocs;
    return cudaSuccess;
}

inline cudaError_t cudaFree(void* ptr) {
    auto& g = fake::gpu();
    if (!g.blocks.erase(reinterpret_cast<std::uintptr_t>(ptr))) {
        std::fprintf(stderr, "FAKE GPU: cudaFree of %p, which is not an allocation\n", ptr);
        std::abort();
    }
    ++g.frees;
    return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t n, cudaMemcpyKind kind, cudaStream_t) {
    auto& g = fake::gpu();
    if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToHost) {
        if (g.capturing) {
            std::fprintf(stderr, "FAKE GPU: a host copy inside a stream capture\n");
            std::abort();
        }
        if (kind == cudaMemcpyHostToDevice) {
            std::memcpy(g.at(dst, n), src, n);
            g.h2d_bytes += static_cast<std::int64_t>(n);
        } else {
            std::memcpy(dst, g.at(src, n), n);
        }
        return cudaSuccess;
    }
    g.device([dst, src, n] {
        auto& gg = fake::gpu();
        std::memmove(gg.at(dst, n), gg.at(src, n), n);
    });
    return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* ptr, int value, std::size_t n, cudaStream_t) {
    fake::gpu().device([ptr, value, n] { std::memset(fake::gpu().at(ptr, n), value, n); });
    return cudaSuccess;
}

inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
    static CUstream_st stream;
    *s = &stream;
    return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

inline cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
    fake::gpu().capturing = new std::vector<std::function<void()>>();
    return cudaSuccess;
}

inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* graph) {
    auto& g = fake::gpu();
    *graph = new FakeGraph{std::move(*g.capturing)};
    delete g.capturing;
    g.capturing = nullptr;
    return cudaSuccess;
}

inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long = 0) {
    *exec = new FakeGraph{graph->ops};
    return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t) {
    ++fake::gpu().launches;
    for (auto& op : exec->ops) op();
    return cudaSuccess;
}

inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int) {
    *prop = cudaDeviceProp{};
    return cudaSuccess;
}

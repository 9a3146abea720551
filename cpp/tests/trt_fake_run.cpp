// Drives the TensorRT backend (src/tensorrt_backend.cpp) over the fake TensorRT and CUDA headers of
// fake_tensorrt/, for tests/test_cpp_tensorrt.py: no GPU, no TensorRT. Built by that test:
//   g++ -std=c++17 -DPIXART_WITH_TENSORRT -Icpp/tests/fake_tensorrt -Icpp/src -Icpp/include
//       cpp/tests/trt_fake_run.cpp cpp/src/tensorrt_backend.cpp cpp/src/manifest.cpp cpp/src/json.cpp cpp/src/sha256.cpp
//
//   trt_fake_run FOLDER graph|eager < SCRIPT
// reads the folder's manifest (read_manifest: the C++ loader's rules), makes the backend's runner, and runs
// SCRIPT's lines in order:
//   run GRAPH H W DIR OUT   the manifest's record for GRAPH at HxW on DIR/<input>.f32 (+ .shape, "2 4 4 4");
//                           output 0 to OUT.f32 and OUT.shape
//   release GRAPH...        GraphRunner::release
//   loaded                  prints "loaded <graphs>"
//   stats                   prints "stats h2d=<bytes copied host to device so far> frees=<n> launches=<n>"
//   events                  prints the fake's engine/context lifecycle, one "event ..." line each
// An error prints "error <message>" and exits 2.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "backend.hpp"
#include "cuda_runtime_api.h"

using namespace pixart;

namespace {

Tensor load(const std::string& stem) {
    std::ifstream shape_in(stem + ".shape");
    std::vector<std::int64_t> shape;
    std::int64_t v;
    while (shape_in >> v) shape.push_back(v);
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> data(static_cast<std::size_t>(n));
    std::ifstream in(stem + ".f32", std::ios::binary);
    in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * 4));
    if (!in) throw Error(Error::kUser, stem + ".f32: short or missing");
    return Tensor::f32(shape, data);
}

void save(const std::string& stem, const Tensor& t) {
    std::ofstream out(stem + ".f32", std::ios::binary);
    out.write(reinterpret_cast<const char*>(t.f.data()), static_cast<std::streamsize>(t.f.size() * 4));
    std::ofstream shape(stem + ".shape");
    for (auto d : t.shape) shape << d << " ";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: trt_fake_run FOLDER graph|eager < SCRIPT\n");
        return 2;
    }
    try {
        const std::string folder = argv[1];
        Manifest m = read_manifest(folder);
        if (std::getenv("FAKE_TRT_HELD")) m.held = check_files(folder, m, true);  // as Engine::open does
        LoadOptions options;
        options.cuda_graph = std::string(argv[2]) == "graph";
        std::unique_ptr<GraphRunner> runner = tensorrt_backend().runner(folder, m, options);
        std::string line;
        while (std::getline(std::cin, line)) {
            std::istringstream in(line);
            std::string op;
            in >> op;
            if (op == "run") {
                std::string graph, dir, out;
                int h = 0, w = 0;
                in >> graph >> h >> w >> dir >> out;
                const GraphRecord& rec = m.record(graph, h, w);
                std::vector<Tensor> inputs;
                inputs.reserve(rec.inputs.size());
                Feeds feeds;
                for (const auto& inp : rec.inputs) {
                    inputs.push_back(load(dir + "/" + inp.name));
                    feeds.emplace_back(inp.name, &inputs.back());
                }
                save(out, runner->run(rec, feeds).at(0));
            } else if (op == "release") {
                std::vector<std::string> graphs;
                std::string g;
                while (in >> g) graphs.push_back(g);
                runner->release(graphs);
            } else if (op == "loaded") {
                std::cout << "loaded";
                for (const auto& g : runner->loaded()) std::cout << " " << g;
                std::cout << "\n";
            } else if (op == "stats") {
                const auto& g = fake::gpu();
                std::cout << "stats h2d=" << g.h2d_bytes << " frees=" << g.frees << " launches=" << g.launches << "\n";
            } else if (op == "events") {
                for (const auto& e : fake::gpu().events) std::cout << "event " << e << "\n";
            } else if (!op.empty()) {
                throw Error(Error::kUser, "unknown script line: " + line);
            }
            std::cout.flush();
        }
        runner.reset();
        for (const auto& e : fake::gpu().events) std::cout << "final " << e << "\n";
        std::cout << "blocks_left " << fake::gpu().blocks.size() << "\n";
    } catch (const std::exception& e) {
        std::cout << "error " << e.what() << "\n";
        return 2;
    }
    return 0;
}

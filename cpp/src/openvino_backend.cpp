// OpenVINO on the CPU (targets ov-cpu, ov-cpu-int8), as pixart_export/backends/openvino/runner.py runs
// them: each graph compiled on "CPU" with the properties its record carries (runtime.config; bf16 falls
// back to f32 on CPUs without native bf16), plus the thread count; compiled for the concrete input
// shapes of the call (Model::reshape, then compile; one compiled model per (file, shapes), kept, with
// one infer request each, reused: the inputs are set as tensors over the caller's memory, no copy).
// release() drops a graph's compiled models and requests (every shape set); it compiles again on next use.
#include <openvino/openvino.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "backend.hpp"
#include "mapped.hpp"

namespace pixart {
namespace {

std::set<std::string> cpu_flags() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("flags", 0) == 0) {
            std::set<std::string> flags;
            std::stringstream ss(line.substr(line.find(':') + 1));
            std::string f;
            while (ss >> f) flags.insert(f);
            return flags;
        }
    return {};
}

std::string installed_version() {
    const std::string build = ov::get_openvino_version().buildNumber;  // "2026.4.1-22982-..."
    return build.substr(0, build.find('-'));
}

class OvRunner : public GraphRunner {
  public:
    OvRunner(std::string folder, int threads, std::shared_ptr<const HeldFiles> held)
        : folder_(std::move(folder)), threads_(threads), held_(std::move(held)) {
        const auto flags = cpu_flags();
        bf16_ = flags.count("avx512_bf16") || flags.count("amx_bf16");
    }

    std::vector<Tensor> run(const GraphRecord& record, const Feeds& feeds) override {
        Compiled& c = compiled(record, feeds);
        check_unchanged(record.file);
        ov::CompiledModel& model = c.model;
        ov::InferRequest& request = c.request;
        for (const auto& [name, t] : feeds) {
            const ov::Shape shape(t->shape.begin(), t->shape.end());
            ov::Tensor in = t->type == Tensor::Type::F32
                                ? ov::Tensor(ov::element::f32, shape, const_cast<float*>(t->f.data()))
                                : ov::Tensor(ov::element::i64, shape, const_cast<std::int64_t*>(t->i.data()));
            request.set_tensor(name, in);
        }
        request.infer();
        std::vector<Tensor> out;
        for (std::size_t k = 0; k < model.outputs().size(); ++k) {
            const ov::Tensor o = request.get_output_tensor(k);
            if (o.get_element_type() != ov::element::f32)
                throw Error(Error::kInternal, record.file + ": output " + std::to_string(k) + " is " +
                                                  o.get_element_type().get_type_name() + ", expected f32");
            const ov::Shape s = o.get_shape();
            const float* p = o.data<const float>();
            out.push_back(Tensor::f32(std::vector<std::int64_t>(s.begin(), s.end()), std::vector<float>(p, p + o.get_size())));
        }
        return out;
    }

    void release(const std::vector<std::string>& graphs) override {
        for (auto it = compiled_.begin(); it != compiled_.end();) {
            if (std::find(graphs.begin(), graphs.end(), it->second.graph) == graphs.end()) {
                ++it;
                continue;
            }
            weights_.erase(it->first.substr(0, it->first.find('|')));  // the key starts with the file
            it = compiled_.erase(it);
        }
    }

    std::vector<std::string> loaded() const override {
        std::set<std::string> names;
        for (const auto& [key, c] : compiled_) names.insert(c.graph);
        return {names.begin(), names.end()};
    }

  private:
    ov::AnyMap config(const GraphRecord& record) const {
        ov::AnyMap config;
        std::string precision = "f32";
        if (record.config.empty()) config["PERFORMANCE_HINT"] = std::string("LATENCY");
        for (const auto& [k, v] : record.config) {
            if (k == "INFERENCE_PRECISION_HINT") precision = v;
            else config[k] = v;
        }
        config["INFERENCE_PRECISION_HINT"] = (precision == "bf16" && !bf16_) ? std::string("f32") : precision;
        if (threads_ > 0) config["INFERENCE_NUM_THREADS"] = threads_;
        return config;
    }

    struct Compiled {
        ov::CompiledModel model;
        ov::InferRequest request;  // one per compiled model, reused (Python makes one per call)
        std::string graph;         // the record's graph name, for release()
    };

    Compiled& compiled(const GraphRecord& record, const Feeds& feeds) {
        std::vector<std::pair<std::string, const Tensor*>> sorted(feeds.begin(), feeds.end());
        std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        std::string key = record.file;
        for (const auto& [name, t] : sorted) {
            key += "|" + name;
            for (auto d : t->shape) key += "," + std::to_string(d);
        }
        auto it = compiled_.find(key);
        if (it != compiled_.end()) return it->second;
        try {
            std::shared_ptr<ov::Model> model = read(record);
            std::map<std::string, ov::PartialShape> shapes;
            for (const auto& [name, t] : sorted) shapes[name] = ov::PartialShape(std::vector<ov::Dimension>(t->shape.begin(), t->shape.end()));
            model->reshape(shapes);
            const auto w = weights_.find(record.file);
            std::optional<Compiled> c;
            {
                PagedOut paged(w == weights_.end() ? nullptr : w->second.second.get());
                c = Compiled{core_.compile_model(model, "CPU", config(record)), {}, record.graph};
            }
            model.reset();
            check_unchanged(record.file);
            c->request = c->model.create_infer_request();
            return compiled_.emplace(key, std::move(*c)).first->second;
        } catch (const Error&) {
            throw;
        } catch (const std::exception& e) {  // manifest.unloadable: one line, the first of OpenVINO's message
            std::string first = e.what();
            first = first.substr(0, std::min(first.find('\n'), std::size_t{200}));
            throw Error(Error::kUser, record.file + ": not loadable by OpenVINO (" + first + "); rebuild the engine or copy it again");
        }
    }

    // the IR from the files checked at open (held open since; what runs is what was hashed): the XML read,
    // the weights mapped (mapped.hpp: the CPU plugin copies them as it compiles, so they are held once)
    std::shared_ptr<ov::Model> read(const GraphRecord& record) {
        if (!held_) return core_.read_model(folder_ + "/" + record.file);
        const std::string xml = held_->read(record.file);
        std::string weights_file;
        for (const auto& f : record.files)
            if (f != record.file) weights_file = f;
        ov::Tensor weights;
        if (!weights_file.empty()) {
            auto& w = weights_[record.file];  // one mapping per file, shared by its shape sets
            if (!w.second) w = {weights_file, held_->map(weights_file)};
            if (w.second->size()) weights = ov::Tensor(ov::element::u8, ov::Shape{w.second->size()}, w.second->data());
        }
        return core_.read_model(xml, weights);
    }

    // the graph's mapped weights file unchanged since its hash (after each compile, before each run)
    void check_unchanged(const std::string& file) const {
        const auto w = weights_.find(file);
        if (w != weights_.end() && w->second.second) held_->check_unchanged(w->second.first);
    }

    ov::Core core_;
    std::string folder_;
    int threads_;
    std::shared_ptr<const HeldFiles> held_;
    // a graph file's weights file and its mapping, kept while its compiled models may point into it
    std::map<std::string, std::pair<std::string, std::shared_ptr<MappedFile>>> weights_;
    bool bf16_ = false;
    std::map<std::string, Compiled> compiled_;
};

}  // namespace

Backend openvino_backend() {
    Backend b;
    b.name = "openvino";
    b.check_host = [](const std::string& folder, const Manifest& m) {
        check_backend_version(m, installed_version());
#if !(defined(__x86_64__) || defined(_M_X64) || defined(__i386__))
        throw Error(Error::kUser, folder + ": engine target '" + m.target +
                                      "' is for x86 CPUs; this host is not: use the ort-cpu target here");
#else
        (void)folder;
#endif
    };
    b.runner = [](const std::string& folder, const Manifest& m, const LoadOptions& options) -> std::unique_ptr<GraphRunner> {
        return std::make_unique<OvRunner>(folder, options.threads, m.held);
    };
    return b;
}

}  // namespace pixart

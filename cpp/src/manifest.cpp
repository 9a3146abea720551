#include "manifest.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "sha256.hpp"

namespace fs = std::filesystem;

namespace pixart {
namespace {

using json::Value;

// -- the schema: pixart_export/manifest.py's dataclasses, one line per field -------------------------------
// type grammar: str | int | float | bool | dict | none | Precision | <Class> | list[T] | tuple[T,U] |
// map[T] (an object of T) | T|U (tried in order, as typing.Union)
struct Field {
    const char* cls;
    const char* name;
    const char* type;
    bool required;
};

const Field kSchema[] = {
    {"TensorRecord", "name", "str", true},
    {"TensorRecord", "dtype", "str", true},
    {"TensorRecord", "shape", "list[int|str]", true},
    {"GraphRecord", "graph", "str", true},
    {"GraphRecord", "file", "str", true},
    {"GraphRecord", "files", "list[str]", true},
    {"GraphRecord", "precision", "Precision", true},
    {"GraphRecord", "height", "int|none", true},
    {"GraphRecord", "width", "int|none", true},
    {"GraphRecord", "inputs", "list[TensorRecord]", true},
    {"GraphRecord", "outputs", "list[TensorRecord]", true},
    {"GraphRecord", "bytes", "int", false},
    {"GraphRecord", "runtime", "dict", false},
    {"GraphRecord", "details", "dict", false},
    {"BackendInfo", "name", "str", true},
    {"BackendInfo", "version", "str|none", true},
    {"BackendInfo", "requires", "tuple[str|none,str|none]", false},
    {"Device", "kind", "str", true},
    {"Device", "arch", "str", true},
    {"Device", "sm", "int|none", false},
    {"Device", "name", "str|none", false},
    {"Device", "driver", "str|none", false},
    {"Device", "isa", "list[str]", false},
    {"Device", "note", "str", false},
    {"ModelRecord", "spec", "str", true},
    {"ModelRecord", "controlnet_spec", "str|none", true},
    {"ModelRecord", "layout", "str", true},
    {"ModelRecord", "controlnet", "bool", true},
    {"ModelRecord", "config_hash", "str", true},
    {"ModelRecord", "weights_hash", "str", true},
    {"ModelRecord", "identity", "str", true},
    {"ModelRecord", "configs", "dict", false},
    {"LcmRecord", "spacing", "str", true},
    {"LcmRecord", "num_train_timesteps", "int", true},
    {"LcmRecord", "timesteps", "list[int]", true},
    {"LcmRecord", "c_skip", "list[float]", true},
    {"LcmRecord", "c_out", "list[float]", true},
    {"LcmRecord", "alphas_cumprod", "list[float]", true},
    {"TokenizerRecord", "kind", "str", true},
    {"TokenizerRecord", "dir", "str", true},
    {"TokenizerRecord", "max_length", "int", true},
    {"TokenizerRecord", "pad_id", "int", true},
    {"TokenizerRecord", "tokenizer_class", "str", true},
    {"Parity", "ok", "bool", true},
    {"Parity", "graphs", "list[dict]", true},
    {"Parity", "end_to_end", "list[dict]", true},
    {"Parity", "quality", "dict|none", false},
    {"Parity", "measured_with", "dict", false},
    {"Parity", "note", "str", false},
    {"FileEntry", "sha256", "str", true},
    {"FileEntry", "bytes", "int", true},
    {"Manifest", "schema_version", "int", true},
    {"Manifest", "toolchain", "dict", true},
    {"Manifest", "target", "str", true},
    {"Manifest", "backend", "BackendInfo", true},
    {"Manifest", "device", "Device", true},
    {"Manifest", "model", "ModelRecord", true},
    {"Manifest", "build_key", "str", true},
    {"Manifest", "status", "str", true},
    {"Manifest", "steps", "int", true},
    {"Manifest", "lcm", "LcmRecord", true},
    {"Manifest", "resolutions", "list[tuple[int,int]]", true},
    {"Manifest", "latent_channels", "int", true},
    {"Manifest", "vae_scale_factor", "int", true},
    {"Manifest", "tokenizer", "TokenizerRecord", true},
    {"Manifest", "graphs", "list[GraphRecord]", true},
    {"Manifest", "default_precision", "Precision", true},
    {"Manifest", "parity", "Parity|none", true},
    {"Manifest", "files", "map[FileEntry]", true},
    {"Manifest", "engines", "list[GraphRecord]", false},
    {"Manifest", "quantisation", "dict|none", false},
    {"Manifest", "build", "dict", false},
};

const char* const kPrecisions[] = {"fp32", "fp16", "bf16", "int8", "int8-weights", "fp8"};

// targets.py's registry: target -> backend, statuses that backend writes (tests hold it equal)
struct TargetRow {
    const char* target;
    const char* backend;
    const char* statuses;
};
const TargetRow kTargets[] = {
    {"ort-cpu", "onnxruntime", "ready"},     {"ort-cuda", "onnxruntime", "ready"},
    {"ov-cpu", "openvino", "ready"},         {"ov-cpu-int8", "openvino", "ready"},
    {"trt-t4", "tensorrt", "bundle,compiled"}, {"trt-v100", "tensorrt", "bundle,compiled"},
    {"trt-a100", "tensorrt", "bundle,compiled"}, {"trt-h100", "tensorrt", "bundle,compiled"},
};

// graph records' `runtime` settings each backend allows (the Python backends' `runtime_settings`): a key
// with its JSON kind, and for OpenVINO's compile configuration each property with its allowed values. No
// cache folder or other path: the manifest cannot make a backend read or write outside the folder.
struct RuntimeRule {
    const char* backend;
    const char* key;
    const char* kind;      // "dict" | "str"
    const char* property;  // a property of the dict with its allowed values, or nullptr (any content)
    const char* values;
};
const RuntimeRule kRuntimeRules[] = {
    {"openvino", "config", "dict", "INFERENCE_PRECISION_HINT", "f32,bf16"},
    {"openvino", "config", "dict", "PERFORMANCE_HINT", "LATENCY"},
    {"onnxruntime", "profile", "dict", nullptr, nullptr},
    {"tensorrt", "profile", "dict", nullptr, nullptr},
    {"tensorrt", "source", "str", nullptr, nullptr},
    {"tensorrt", "timing_cache", "str", nullptr, nullptr},
    {"tensorrt", "k_step_loop", "dict", nullptr, nullptr},
};

// manifest.py's bounds: MAX_MANIFEST_BYTES, MAX_SIDE, RANGES, CONFIG_RANGES, REQUIRED_GRAPHS
constexpr std::int64_t kMaxManifestBytes = 16 << 20;
constexpr std::int64_t kMaxSide = 16384;
struct ConfigRange {
    const char* name;
    std::int64_t lo, hi;
};
const ConfigRange kTransformerRanges[] = {
    {"patch_size", 1, 64}, {"num_attention_heads", 1, 1024}, {"attention_head_dim", 1, 1024}, {"sample_size", 1, 4096}};

struct Invalid {
    std::string message;
};

std::string kind_name(const Value& v) {
    switch (v.kind) {
        case Value::Kind::Null: return "NoneType";
        case Value::Kind::Bool: return "bool";
        case Value::Kind::Int: return "int";
        case Value::Kind::Float: return "float";
        case Value::Kind::String: return "str";
        case Value::Kind::Array: return "list";
        case Value::Kind::Object: return "dict";
    }
    return "?";
}

// split "a|b" / "a,b" at top level (outside brackets)
std::vector<std::string> split_top(const std::string& s, char sep) {
    std::vector<std::string> out;
    int depth = 0;
    std::string cur;
    for (char c : s) {
        if (c == '[') ++depth;
        if (c == ']') --depth;
        if (c == sep && depth == 0) {
            out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    out.push_back(cur);
    return out;
}

bool starts(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }
std::string inner(const std::string& s, std::size_t prefix) { return s.substr(prefix, s.size() - prefix - 1); }

std::string sub_where(const std::string& where, const std::string& name) {
    return where.empty() ? name : where + "." + name;
}

void check(const std::string& type, const Value& v, const std::string& where);

void check_class(const std::string& cls, const Value& v, const std::string& where) {
    if (!v.is_object()) throw Invalid{where + ": expected an object, got " + kind_name(v)};
    std::set<std::string> names;
    for (const Field& f : kSchema)
        if (cls == f.cls) names.insert(f.name);
    std::vector<std::string> unknown;
    for (const auto& m : v.members)
        if (!names.count(m.first)) unknown.push_back(m.first);
    if (!unknown.empty()) {
        std::sort(unknown.begin(), unknown.end());
        std::string list;
        for (const auto& u : unknown) list += (list.empty() ? "" : ", ") + u;
        throw Invalid{where + ": unknown field(s) " + list};
    }
    for (const Field& f : kSchema) {
        if (cls != f.cls) continue;
        const std::string sub = sub_where(where, f.name);
        if (const Value* item = v.find(f.name)) {
            check(f.type, *item, sub);
        } else if (f.required) {
            throw Invalid{sub + ": missing"};
        }
    }
}

void check(const std::string& type, const Value& v, const std::string& where) {
    const auto options = split_top(type, '|');
    if (options.size() > 1) {
        bool has_none = std::find(options.begin(), options.end(), "none") != options.end();
        if (v.is_null() && has_none) return;
        std::vector<std::string> errors;
        std::string names;
        for (const auto& o : options) {
            names += (names.empty() ? "" : " or ") + (o == "none" ? std::string("NoneType") : o);
            if (o == "none") continue;
            try {
                check(o, v, where);
                return;
            } catch (const Invalid& e) {
                errors.push_back(e.message);
            }
        }
        if (errors.size() == 1) throw Invalid{errors[0]};
        throw Invalid{where + ": " + json::repr(v) + " is not " + names};
    }
    if (starts(type, "list[")) {
        if (!v.is_array()) throw Invalid{where + ": expected a list, got " + kind_name(v)};
        const std::string t = inner(type, 5);
        for (std::size_t i = 0; i < v.items.size(); ++i) check(t, v.items[i], where + "[" + std::to_string(i) + "]");
        return;
    }
    if (starts(type, "tuple[")) {
        if (!v.is_array()) throw Invalid{where + ": expected a list, got " + kind_name(v)};
        const auto parts = split_top(inner(type, 6), ',');
        if (v.items.size() != parts.size())
            throw Invalid{where + ": expected " + std::to_string(parts.size()) + " items, got " +
                          std::to_string(v.items.size())};
        for (std::size_t i = 0; i < parts.size(); ++i) check(parts[i], v.items[i], where + "[" + std::to_string(i) + "]");
        return;
    }
    if (starts(type, "map[")) {
        if (!v.is_object()) throw Invalid{where + ": expected an object, got " + kind_name(v)};
        const std::string t = inner(type, 4);
        for (const auto& m : v.members) check(t, m.second, where + "." + m.first);
        return;
    }
    if (type == "Precision") {
        if (v.is_string())
            for (const char* p : kPrecisions)
                if (v.s == p) return;
        std::string all;
        for (const char* p : kPrecisions) all += (all.empty() ? "" : ", ") + std::string(p);
        throw Invalid{where + ": " + json::repr(v) + " is not one of " + all};
    }
    if (type == "dict") {
        if (!v.is_object()) throw Invalid{where + ": expected an object, got " + kind_name(v)};
        return;
    }
    if (type == "float") {
        if (!v.is_number()) throw Invalid{where + ": expected a number, got " + json::repr(v)};
        return;
    }
    if (type == "int" || type == "str" || type == "bool") {
        const bool ok = (type == "int" && v.kind == Value::Kind::Int) || (type == "str" && v.is_string()) ||
                        (type == "bool" && v.kind == Value::Kind::Bool);
        if (!ok) throw Invalid{where + ": expected " + type + ", got " + json::repr(v)};
        return;
    }
    check_class(type, v, where);
}

[[noreturn]] void engine_error(const std::string& message) { throw Error(Error::kUser, message); }

std::optional<int> opt_int(const Value* v) {
    if (!v || v->is_null()) return std::nullopt;
    return static_cast<int>(v->i);
}

std::optional<std::string> opt_str(const Value* v) {
    if (!v || v->is_null()) return std::nullopt;
    return v->s;
}

TensorRecord tensor_from(const Value& v) {
    TensorRecord t{v.at("name").s, v.at("dtype").s, {}};
    for (const auto& d : v.at("shape").items) t.shape.push_back(d.is_int() ? d.i : -1);
    return t;
}

GraphRecord graph_from(const Value& v) {
    GraphRecord g;
    g.graph = v.at("graph").s;
    g.file = v.at("file").s;
    for (const auto& f : v.at("files").items) g.files.push_back(f.s);
    g.precision = v.at("precision").s;
    g.height = opt_int(v.find("height"));
    g.width = opt_int(v.find("width"));
    for (const auto& t : v.at("inputs").items) g.inputs.push_back(tensor_from(t));
    for (const auto& t : v.at("outputs").items) g.outputs.push_back(tensor_from(t));
    if (const Value* rt = v.find("runtime")) {
        for (const auto& m : rt->members) g.runtime.emplace_back(m.first, kind_name(m.second));
        if (const Value* config = rt->find("config"); config && config->is_object())
            for (const auto& m : config->members) {
                const Value& x = m.second;
                std::string s = x.is_string() ? x.s : x.is_int() ? std::to_string(x.i) : json::repr(x);
                g.config.emplace_back(m.first, s);
                if (!x.is_string()) g.config_not_str.push_back(m.first);
            }
    }
    return g;
}

std::int64_t in_range(std::int64_t v, std::int64_t lo, std::int64_t hi, const std::string& name,
                      const std::string& source) {
    if (v < lo || v > hi)
        engine_error(source + ": " + name + " " + std::to_string(v) + " is not " + std::to_string(lo) + " to " +
                     std::to_string(hi) + "; rebuild the engine");
    return v;
}

// model.configs: the fields runtime/budget.py reads, as manifest.py's _check_ranges; returns the bucket
// side limit (twice the native size where the transformer's sample_size is known)
std::int64_t check_configs(const Value& data, Manifest& m, const std::string& source) {
    const std::int64_t vae_scale_factor = m.vae_scale_factor;
    const Value* configs = data.at("model").find("configs");
    std::int64_t limit = kMaxSide;
    const Value* transformer = configs ? configs->find("transformer") : nullptr;
    if (transformer && !transformer->is_object())
        engine_error(source + ": model.configs.transformer: expected an object; rebuild the engine");
    for (const auto& r : kTransformerRanges) {
        const Value* v = transformer ? transformer->find(r.name) : nullptr;
        if (!v) continue;
        if (!v->is_int() || v->i < r.lo || v->i > r.hi)
            engine_error(source + ": model.configs.transformer." + r.name + ": " + json::repr(*v) +
                         " is not an integer from " + std::to_string(r.lo) + " to " + std::to_string(r.hi) +
                         "; rebuild the engine");
        const std::string name = r.name;
        if (name == "sample_size") limit = std::min(kMaxSide, 2 * v->i * vae_scale_factor);
        if (name == "patch_size") m.patch_size = v->i;
        if (name == "num_attention_heads") m.num_heads = v->i;
        if (name == "attention_head_dim") m.head_dim = v->i;
    }
    const Value* vae = configs ? configs->find("vae") : nullptr;
    const Value* widths = vae && vae->is_object() ? vae->find("block_out_channels") : nullptr;
    bool ok = !(vae && !vae->is_object());
    if (widths) {
        ok = ok && widths->is_array() && !widths->items.empty();
        if (ok)
            for (const auto& w : widths->items) ok = ok && w.is_int() && w.i >= 1 && w.i <= 65536;
    }
    if (ok && widths) {
        m.vae_widths.clear();
        for (const auto& w : widths->items) m.vae_widths.push_back(w.i);
    }
    if (!ok)
        engine_error(source + ": model.configs.vae.block_out_channels: " + (widths ? json::repr(*widths) : std::string("None")) +
                     " is not a list of integers from 1 to 65536; rebuild the engine");
    return limit;
}

}  // namespace

std::string schema_table() {
    std::string out;
    for (const Field& f : kSchema)
        out += std::string(f.cls) + " " + f.name + " " + f.type + " " + (f.required ? "required" : "optional") + "\n";
    return out;
}

std::string target_table() {
    std::string out;
    for (const auto& t : kTargets) out += std::string(t.target) + " " + t.backend + " " + t.statuses + "\n";
    return out;
}

bool safe_rel(const std::string& rel) {
    // PurePosixPath semantics: not empty, not absolute, no "..", no backslash, already normal
    // (no "//", no "./" parts, no trailing "/"): rel == PurePosixPath(rel).as_posix()
    if (rel.empty() || rel[0] == '/' || rel.find('\\') != std::string::npos) return false;
    std::stringstream ss(rel);
    std::string part;
    std::vector<std::string> parts;
    while (std::getline(ss, part, '/')) parts.push_back(part);
    if (rel.back() == '/') return false;
    for (const auto& p : parts) {
        if (p.empty() || p == "..") return false;
        if (p == "." && rel != ".") return false;
    }
    return rel != ".";  // "." is not a file path (Python: as_posix() == "." but no file is named so)
}

Manifest manifest_from_json(const Value& data, const std::string& source) {
    if (!data.is_object()) engine_error(source + ": not a JSON object; rebuild the engine");
    const Value* version = data.find("schema_version");
    if (!version || !version->is_int() || version->i != 2)
        engine_error(source + ": schema version " + (version ? json::repr(*version) : std::string("None")) +
                     ", this pixart-export reads 2; rebuild the engine with this version");
    try {
        check_class("Manifest", data, "");
    } catch (const Invalid& e) {
        engine_error(source + ": " + e.message + "; rebuild the engine");
    }
    Manifest m;
    m.target = data.at("target").s;
    m.status = data.at("status").s;
    m.default_precision = data.at("default_precision").s;
    const Value& backend = data.at("backend");
    m.backend_name = backend.at("name").s;
    m.backend_version = opt_str(backend.find("version"));
    if (const Value* req = backend.find("requires")) {
        m.requires_lo = opt_str(&req->items[0]);
        m.requires_hi = opt_str(&req->items[1]);
    }
    const Value& device = data.at("device");
    m.device_kind = device.at("kind").s;
    m.device_arch = device.at("arch").s;
    // every integer range-checked at its JSON width (64 bits) before it is narrowed
    if (const Value* sm = device.find("sm"); sm && sm->is_int()) in_range(sm->i, 0, 1000, "device.sm", source);
    m.device_sm = opt_int(device.find("sm"));
    m.controlnet = data.at("model").at("controlnet").b;
    m.steps = static_cast<int>(in_range(data.at("steps").i, 1, 8, "steps", source));
    m.latent_channels = static_cast<int>(in_range(data.at("latent_channels").i, 1, 64, "latent_channels", source));
    m.vae_scale_factor = static_cast<int>(in_range(data.at("vae_scale_factor").i, 1, 64, "vae_scale_factor", source));
    const Value& tok = data.at("tokenizer");
    m.max_length = static_cast<int>(in_range(tok.at("max_length").i, 2, 4096, "tokenizer.max_length", source));
    m.pad_id = static_cast<int>(in_range(tok.at("pad_id").i, 0, 2147483647, "tokenizer.pad_id", source));
    const std::int64_t side_limit = check_configs(data, m, source);
    if (data.at("resolutions").items.empty())
        engine_error(source + ": resolutions: empty (an engine has at least one bucket); rebuild the engine");
    for (const auto& r : data.at("resolutions").items) {
        const std::int64_t h = r.items[0].i, w = r.items[1].i;
        if (h <= 0 || w <= 0 || h % m.vae_scale_factor || w % m.vae_scale_factor)
            engine_error(source + ": resolutions holds " + std::to_string(h) + "x" + std::to_string(w) +
                         ", not a bucket of this model; rebuild the engine");
        if (h > side_limit || w > side_limit)
            engine_error(source + ": resolutions holds " + std::to_string(h) + "x" + std::to_string(w) + ", beyond this model's " +
                         std::to_string(side_limit) + " px a side; rebuild the engine");
        m.resolutions.emplace_back(static_cast<int>(h), static_cast<int>(w));
    }
    m.tokenizer_kind = tok.at("kind").s;
    m.tokenizer_dir = tok.at("dir").s;
    for (const auto* kind : {"graphs", "engines"}) {
        const Value* records = data.find(kind);
        if (!records) continue;
        for (std::size_t i = 0; i < records->items.size(); ++i)
            for (const auto* side : {"height", "width"})
                if (const Value* v = records->items[i].find(side); v && v->is_int())
                    in_range(v->i, 1, kMaxSide, std::string(kind) + "[" + std::to_string(i) + "]." + side, source);
        for (const auto& g : records->items) (std::string(kind) == "graphs" ? m.graphs : m.engines).push_back(graph_from(g));
    }
    for (const auto& f : data.at("files").members)
        m.files[f.first] = FileEntry{f.second.at("sha256").s,
                                     in_range(f.second.at("bytes").i, 0, INT64_MAX, "files." + f.first + ".bytes", source)};
    if (const Value* build = data.find("build"))
        if (const Value* seal = build->find("sealed_for"); seal && seal->is_object()) {
            if (const Value* t = seal->find("target"); t && t->is_string()) m.sealed_target = t->s;
            if (const Value* b = seal->find("backend"); b && b->is_string()) m.sealed_backend = b->s;
        }
    const Value& parity = data.at("parity");
    if (!parity.is_null()) {
        m.has_parity = true;
        if (const Value* measured = parity.find("measured_with")) {
            const Value* t = measured->find("target");
            const Value* b = measured->find("backend");
            if (t && t->is_string()) m.verified_target = t->s;
            if (b && b->is_string()) m.verified_backend = b->s;
        }
    }

    // _check_consistent: every path inside the folder and listed
    for (const auto& f : data.at("files").members)
        if (!safe_rel(f.first))
            engine_error(source + ": file '" + f.first + "' is not a plain relative path inside the folder");
    for (const auto* kind : {"graphs", "engines"}) {
        const auto& records = std::string(kind) == "graphs" ? m.graphs : m.engines;
        for (std::size_t i = 0; i < records.size(); ++i) {
            std::vector<std::string> paths{records[i].file};
            paths.insert(paths.end(), records[i].files.begin(), records[i].files.end());
            for (const auto& rel : paths) {
                const std::string at = source + ": " + kind + "[" + std::to_string(i) + "] names '" + rel + "', which ";
                if (!safe_rel(rel)) engine_error(at + "is not a plain relative path inside the folder");
                if (!m.files.count(rel)) engine_error(at + "is not listed (with its sha256) in files; rebuild the engine");
            }
        }
    }
    if (m.tokenizer_kind != "byt5" && m.tokenizer_kind != "tokenizers")
        engine_error(source + ": unknown tokenizer kind '" + m.tokenizer_kind +
                     "' (this version reads byt5, tokenizers); rebuild the engine with this version");
    std::string dir = m.tokenizer_dir;
    while (!dir.empty() && dir.back() == '/') dir.pop_back();
    bool listed = false;
    for (const auto& f : m.files)
        if (f.first.rfind(dir + "/", 0) == 0) listed = true;
    if (!safe_rel(m.tokenizer_dir) || !listed)
        engine_error(source + ": tokenizer folder '" + m.tokenizer_dir +
                     "' is not inside the folder with its files listed; rebuild the engine");
    return m;
}

std::string file_kind(unsigned mode) {
    if (S_ISDIR(mode)) return "a folder";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a plain file";
}

std::string read_regular(const std::string& path, std::int64_t limit, const std::string& when_missing) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) throw Error(Error::kUser, path + ": " + when_missing);
        throw Error(Error::kUser, path + ": cannot be read (" + std::strerror(errno) + ")");
    }
    if (!S_ISREG(st.st_mode)) throw Error(Error::kUser, path + ": not a regular file (" + file_kind(st.st_mode) + "); give a file");
    if (st.st_size > limit)
        throw Error(Error::kUser, path + ": " + std::to_string(st.st_size) + " bytes, more than the " + std::to_string(limit) +
                                      " this reads; give a smaller file");
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw Error(Error::kUser, path + ": cannot be read (" + std::strerror(errno) + ")");
    struct stat now {};
    std::string data;
    bool ok = ::fstat(fd, &now) == 0 && S_ISREG(now.st_mode) && now.st_dev == st.st_dev && now.st_ino == st.st_ino;
    if (ok) {
        data.resize(static_cast<std::size_t>(limit) + 1);
        std::size_t got = 0;
        for (;;) {
            const ssize_t n = ::read(fd, &data[got], data.size() - got);
            if (n <= 0 || (got += static_cast<std::size_t>(n)) == data.size()) break;
        }
        data.resize(got);
    }
    ::close(fd);
    if (!ok) throw Error(Error::kUser, path + ": replaced while it was read; try again");
    if (static_cast<std::int64_t>(data.size()) > limit)
        throw Error(Error::kUser, path + ": more than the " + std::to_string(limit) + " bytes this reads; give a smaller file");
    return data;
}

Manifest read_manifest(const std::string& folder) {
    const std::string path = (fs::path(folder) / "manifest.json").string();
    if (!fs::is_directory(folder))
        engine_error(folder + ": no such engine folder (build one with `pixart-export build`)");
    const std::string text = read_regular(path, kMaxManifestBytes, "missing; this is not an engine folder (build one "
                                                                   "with `pixart-export build`)");
    json::Value data;
    try {
        data = json::parse(text);
    } catch (const json::ParseError& e) {
        engine_error(path + ": not readable JSON (" + e.what() + "); rebuild the engine");
    }
    return manifest_from_json(data, path);
}

void check_registry(const Manifest& m, const std::string& folder) {
    const std::string source = folder + "/manifest.json";
    const TargetRow* row = nullptr;
    std::string known;
    for (const auto& t : kTargets) {
        known += (known.empty() ? "" : ", ") + std::string(t.target);
        if (m.target == t.target) row = &t;
    }
    if (!row)
        engine_error(source + ": target '" + m.target + "' is unknown to this pixart-export (known: " + known +
                     "); rebuild the engine");
    if (m.backend_name != row->backend)
        engine_error(source + ": target " + m.target + " runs on " + row->backend + ", but the manifest says backend '" +
                     m.backend_name + "'; the folder was edited or is corrupt: rebuild it");
    if (m.has_parity && (m.verified_target.value_or("None") != m.target || m.verified_backend.value_or("None") != m.backend_name))
        engine_error(source + ": says target " + m.target + " on " + m.backend_name + ", but its parity was verified for " +
                     m.verified_target.value_or("None") + " on " + m.verified_backend.value_or("None") +
                     "; the folder was edited: rebuild it");
    if (m.sealed_target.value_or("None") != m.target || m.sealed_backend.value_or("None") != m.backend_name)
        engine_error(source + ": says target " + m.target + " on " + m.backend_name + ", but build.sealed_for says " +
                     m.sealed_target.value_or("None") + " on " + m.sealed_backend.value_or("None") +
                     "; the folder was edited or written by an older pixart-export: rebuild it");
    for (const auto* kind : {"graphs", "engines"}) {
        const auto& records = std::string(kind) == "graphs" ? m.graphs : m.engines;
        for (std::size_t i = 0; i < records.size(); ++i) {
            const std::string where = source + ": " + kind + "[" + std::to_string(i) + "].runtime.";
            for (const auto& [key, json_kind] : records[i].runtime) {
                const RuntimeRule* rule = nullptr;
                std::string keys;
                for (const auto& r : kRuntimeRules)
                    if (m.backend_name == r.backend) {
                        if (keys.find(std::string(r.key)) == std::string::npos) keys += (keys.empty() ? "" : ", ") + std::string(r.key);
                        if (key == r.key) rule = &r;
                    }
                if (!rule)
                    engine_error(where + key + ": not a setting " + m.backend_name + " folders carry (" +
                                 (keys.empty() ? std::string("none") : keys) + "); the folder was edited: rebuild it");
                if (json_kind != rule->kind)
                    engine_error(where + key + ": expected " + rule->kind + "; the folder was edited: rebuild it");
            }
            for (const auto& [prop, value] : records[i].config) {
                const RuntimeRule* rule = nullptr;
                std::string allowed;
                for (const auto& r : kRuntimeRules)
                    if (m.backend_name == r.backend && std::string(r.key) == "config" && r.property) {
                        allowed += (allowed.empty() ? "" : ", ") + std::string(r.property);
                        if (prop == r.property) rule = &r;
                    }
                if (!rule)
                    engine_error(where + "config." + prop + ": not a property " + m.backend_name + " engines are run with (allowed: " +
                                 allowed + "); the folder was edited: rebuild it");
                const auto values = split_top(rule->values, ',');
                const bool is_str = std::find(records[i].config_not_str.begin(), records[i].config_not_str.end(), prop) ==
                                    records[i].config_not_str.end();
                if (!is_str || std::find(values.begin(), values.end(), value) == values.end()) {
                    std::string list;
                    for (const auto& v : values) list += (list.empty() ? "" : ", ") + v;
                    engine_error(where + "config." + prop + ": '" + value + "' is not one of " + list +
                                 "; the folder was edited: rebuild it");
                }
            }
        }
    }
    const auto statuses = split_top(row->statuses, ',');
    if (std::find(statuses.begin(), statuses.end(), m.status) == statuses.end()) {
        std::string list;
        for (const auto& s : statuses) list += (list.empty() ? "" : ", ") + s;
        engine_error(source + ": status '" + m.status + "' is not one of " + list + " for " + m.target +
                     "; rebuild the engine");
    }
    // a graph of each kind runtime.Pipeline runs, for every bucket (manifest.py REQUIRED_GRAPHS)
    for (const auto& [h, w] : m.resolutions)
        for (const auto& name : std::vector<std::string>{"text_encoder", "denoiser_lcm" + std::to_string(m.steps), "vae_decoder"}) {
            bool found = false;
            for (const auto& r : m.runnable())
                found = found || (r.graph == name && (!r.height || *r.height == h) && (!r.width || *r.width == w));
            if (!found)
                engine_error(source + ": graphs: no " + name + " graph for the bucket " + std::to_string(h) + "x" +
                             std::to_string(w) + " it lists in resolutions; rebuild the engine");
        }
}

namespace {

bool hidden(const fs::path& rel) {
    for (const auto& part : rel)
        if (!part.empty() && part.string()[0] == '.') return true;
    return false;
}

}  // namespace

HeldFiles::~HeldFiles() {
    for (const auto& [rel, fd] : fds_) ::close(fd);
}

namespace {

std::array<std::int64_t, 5> identity(const struct stat& st) {
    return {static_cast<std::int64_t>(st.st_size), static_cast<std::int64_t>(st.st_mtim.tv_sec),
            static_cast<std::int64_t>(st.st_mtim.tv_nsec), static_cast<std::int64_t>(st.st_ctim.tv_sec),
            static_cast<std::int64_t>(st.st_ctim.tv_nsec)};
}

}  // namespace

void HeldFiles::hold(const std::string& rel, int fd, const struct stat& st) {
    fds_[rel] = fd;
    stats_[rel] = identity(st);
}

void HeldFiles::check_unchanged(const std::string& rel) const {
    const auto fd = fds_.find(rel);
    if (fd == fds_.end()) throw Error(Error::kInternal, rel + ": not a held file of " + folder_);
    struct stat now {};
    if (::fstat(fd->second, &now) != 0 || identity(now) != stats_.at(rel))
        throw Error(Error::kUser, (fs::path(folder_) / rel).string() +
                                      ": changed after the folder was checked; rebuild the engine or copy it again");
}

std::shared_ptr<MappedFile> HeldFiles::map(const std::string& rel) const {
    check_unchanged(rel);
    const auto entry = files_.find(rel);
    try {
        return std::make_shared<MappedFile>(fds_.at(rel), static_cast<std::size_t>(entry->second.bytes));
    } catch (const std::runtime_error& e) {
        throw Error(Error::kUser, (fs::path(folder_) / rel).string() + ": cannot be mapped (" + e.what() + ")");
    }
}

std::string HeldFiles::read(const std::string& rel) const {
    const auto fd = fds_.find(rel);
    const auto entry = files_.find(rel);
    if (fd == fds_.end() || entry == files_.end()) throw Error(Error::kInternal, rel + ": not a held file of " + folder_);
    std::string data(static_cast<std::size_t>(entry->second.bytes) + 1, '\0');
    std::size_t got = 0;
    for (;;) {
        const ssize_t n = ::pread(fd->second, &data[got], data.size() - got, static_cast<off_t>(got));
        if (n <= 0 || (got += static_cast<std::size_t>(n)) == data.size()) break;
    }
    const bool changed = static_cast<std::int64_t>(got) != entry->second.bytes ||
                         (hashes_ && sha256_bytes(data.substr(0, got)) != entry->second.sha256);
    if (changed)
        throw Error(Error::kUser, (fs::path(folder_) / rel).string() +
                                      ": changed after the folder was checked; rebuild the engine or copy it again");
    data.resize(got);
    return data;
}

namespace {

// manifest.py's _open_listed: a regular file of its own (no symbolic link on the way, one hard link), with
// its recorded size and sha256, opened and returned open
std::pair<int, struct stat> open_listed(const std::string& folder, const std::string& rel, const FileEntry& entry,
                                        bool hashes) {
    const fs::path path = fs::path(folder) / rel;
    const std::string shown = path.string();
    std::error_code ec;
    fs::path prefix = folder;  // no component of a listed path may be a symbolic link
    for (const auto& part : fs::path(rel)) {
        prefix /= part;
        if (fs::is_symlink(prefix, ec))
            engine_error(shown + ": a symbolic link; an engine folder holds its own files (copy them in, or rebuild)");
    }
    struct stat st {};
    if (::lstat(shown.c_str(), &st) != 0 || S_ISDIR(st.st_mode))
        engine_error(shown + ": missing (listed in the manifest); rebuild the engine or copy it again");
    if (!S_ISREG(st.st_mode))
        engine_error(shown + ": not a regular file (" + file_kind(st.st_mode) + "); rebuild the engine or copy it again");
    if (st.st_nlink != 1)
        engine_error(shown + ": has " + std::to_string(st.st_nlink) + " hard links; an engine folder holds its own files "
                             "(copy it in, e.g. cp without -l, or rebuild)");
    const int fd = ::open(shown.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) engine_error(shown + ": cannot be read (" + std::strerror(errno) + ")");
    struct stat now {};
    try {
        if (::fstat(fd, &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino || now.st_nlink != 1)
            engine_error(shown + ": replaced while it was checked; try again");
        if (static_cast<std::int64_t>(now.st_size) != entry.bytes)
            engine_error(shown + ": size " + std::to_string(now.st_size) + " != " + std::to_string(entry.bytes) +
                         " in the manifest (changed or truncated); rebuild the engine or copy it again");
        if (hashes && sha256_fd(fd) != entry.sha256)
            engine_error(shown + ": sha256 differs from the manifest (file changed after the build); rebuild the "
                                 "engine or copy it again");
    } catch (...) {
        ::close(fd);
        throw;
    }
    return {fd, now};
}

}  // namespace

std::shared_ptr<HeldFiles> check_files(const std::string& folder, const Manifest& m, bool hashes) {
    auto held = std::make_shared<HeldFiles>(folder, m.files, hashes);
    for (const auto& [rel, entry] : m.files) {
        const auto [fd, st] = open_listed(folder, rel, entry, hashes);
        held->hold(rel, fd, st);
    }
    std::vector<std::string> extra;
    for (auto it = fs::recursive_directory_iterator(folder); it != fs::recursive_directory_iterator(); ++it) {
        const fs::path rel = fs::relative(it->path(), folder);
        std::error_code ec;
        if (!fs::is_regular_file(it->path(), ec) || hidden(rel)) continue;
        const std::string r = rel.generic_string();
        if (r != "manifest.json" && !m.files.count(r)) extra.push_back(r);
    }
    if (!extra.empty()) {
        std::sort(extra.begin(), extra.end());
        std::string list;
        for (std::size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", " : "") + extra[i];
        engine_error(folder + ": files not in the manifest: " + list + "; remove them or rebuild");
    }
    return held;
}

std::vector<int> version_tuple(const std::string& v) {
    std::vector<int> out;
    const std::string head = v.substr(0, v.find('+'));
    std::stringstream ss(head);
    std::string part;
    while (std::getline(ss, part, '.')) {
        std::string digits;
        for (char c : part)
            if (c >= '0' && c <= '9') digits += c;
        out.push_back(digits.empty() ? 0 : std::stoi(digits.substr(0, 9)));
    }
    if (head.empty() || head.back() == '.') out.push_back(0);
    return out;
}

void check_backend_version(const Manifest& m, const std::string& installed) {
    const auto have = version_tuple(installed);
    if (m.backend_version && have < version_tuple(*m.backend_version))
        engine_error("engine was built and verified with " + m.backend_name + " " + *m.backend_version +
                     ", this host has " + installed + ": upgrade " + m.backend_name + " to >= " + *m.backend_version +
                     " or rebuild the engine on this host");
    bool bad = m.requires_lo && have < version_tuple(*m.requires_lo);
    if (m.requires_hi) {
        auto hi = version_tuple(*m.requires_hi);
        std::vector<int> have2(have.begin(), have.begin() + std::min<std::size_t>(2, have.size()));
        hi.resize(std::min<std::size_t>(2, hi.size()));
        bad = bad || have2 > hi;
    }
    if (bad)
        engine_error(m.target + " needs " + m.backend_name + " " + m.requires_lo.value_or("") + ".." +
                     m.requires_hi.value_or("") + "; this host has " + installed);
}

const GraphRecord& Manifest::record(const std::string& graph, int height, int width) const {
    std::vector<const GraphRecord*> matches;
    for (const auto& r : runnable())
        if (r.graph == graph && (!r.height || (*r.height == height && r.width && *r.width == width)))
            matches.push_back(&r);
    if (matches.empty()) {
        std::string buckets;
        for (const auto& [h, w] : resolutions) buckets += (buckets.empty() ? "" : ", ") + std::to_string(h) + "x" + std::to_string(w);
        throw Error(Error::kUser, "engine has no " + graph + " graph for " + std::to_string(height) + "x" +
                                      std::to_string(width) + "; it was built for " + buckets);
    }
    if (matches.size() == 1) return *matches[0];
    // manifest.FALLBACK
    std::vector<std::string> order{default_precision};
    if (default_precision == "int8" || default_precision == "fp8") order = {default_precision, "fp16", "bf16", "fp32"};
    if (default_precision == "fp16") order = {"fp16", "bf16", "fp32"};
    if (default_precision == "bf16") order = {"bf16", "fp32"};
    for (const auto& p : order)
        for (const auto* r : matches)
            if (r->precision == p) return *r;
    return *matches[0];
}

}  // namespace pixart

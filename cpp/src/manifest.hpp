// manifest.json of an engine folder, schema 2, validated exactly as pixart_export/manifest.py and
// targets.read_engine do (tests/test_cpp.py holds the field table below equal to the Python dataclasses):
//   - the JSON matches the schema field by field (types, enums, no unknown or missing field);
//   - every path the manifest names is a plain relative path inside the folder, listed in `files`;
//     the tokenizer folder is inside with its files listed;
//   - target known, served by the backend the manifest names, in a status that backend writes;
//   - no listed path runs through a symbolic link; every listed file present with its size and sha256,
//     nothing unlisted beside them (dot-files ignored).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "json.hpp"
#include "pixart/runtime.hpp"

namespace pixart {

struct TensorRecord {
    std::string name, dtype;
    std::vector<std::int64_t> shape;  // -1 for the "B" (batch) axis
};

struct GraphRecord {
    std::string graph, file;
    std::vector<std::string> files;
    std::string precision;
    std::optional<int> height, width;
    std::vector<TensorRecord> inputs, outputs;
    std::vector<std::pair<std::string, std::string>> config;  // runtime.config, values as strings
};

struct FileEntry {
    std::string sha256;
    std::int64_t bytes = 0;
};

struct Manifest {
    std::string target, status, default_precision;
    std::string backend_name;
    std::optional<std::string> backend_version, requires_lo, requires_hi;
    std::string device_kind, device_arch;
    std::optional<int> device_sm;
    bool controlnet = false;
    int steps = 0, latent_channels = 0, vae_scale_factor = 0;
    std::vector<std::pair<int, int>> resolutions;
    std::string tokenizer_kind, tokenizer_dir;
    int max_length = 0, pad_id = 0;
    std::vector<GraphRecord> graphs, engines;
    std::map<std::string, FileEntry> files;
    bool has_parity = false;  // parity.measured_with: the target and backend the parity was verified for
    std::optional<std::string> verified_target, verified_backend;

    const std::vector<GraphRecord>& runnable() const { return status == "compiled" ? engines : graphs; }
    // the file that runs `graph` for the bucket at the default precision (with manifest.FALLBACK)
    const GraphRecord& record(const std::string& graph, int height, int width) const;
};

// the schema as "Class field type required|optional" lines, in the Python dataclasses' order
std::string schema_table();
// the target registry as "target backend status[,status]" lines (targets.py's TARGETS)
std::string target_table();

// validated manifest (schema, paths, registry); Error(kEngine) naming the field and the fix
Manifest read_manifest(const std::string& folder);
Manifest manifest_from_json(const json::Value& data, const std::string& source);
void check_registry(const Manifest& m, const std::string& folder);  // targets.read_engine's rules
void check_files(const std::string& folder, const Manifest& m, bool hashes);

bool safe_rel(const std::string& rel);
std::vector<int> version_tuple(const std::string& v);
void check_backend_version(const Manifest& m, const std::string& installed);

}  // namespace pixart

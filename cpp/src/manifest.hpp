// manifest.json of an engine folder, schema 2, validated exactly as pixart_export/manifest.py and
// targets.read_engine do (tests/test_cpp.py holds the field table below equal to the Python dataclasses):
//   - the JSON matches the schema field by field (types, enums, no unknown or missing field);
//   - every path the manifest names is a plain relative path inside the folder, listed in `files`;
//     the tokenizer folder is inside with its files listed;
//   - target known, served by the backend the manifest names, in a status that backend writes;
//   - no listed path runs through a symbolic link; every listed file a regular file with one hard link,
//     present with its size and sha256, nothing unlisted beside them (dot-files ignored); the checked
//     files stay open (HeldFiles) and backends load graphs from them, so what runs is what was hashed;
//   - bounds as manifest.py's: manifest.json a regular file of at most 16 MiB (json.hpp: depth, 64-bit
//     integers, UTF-8), integers in the ranges the runtime computes with, a graph of each needed kind for
//     every bucket, build.sealed_for equal to the target and backend, graphs' runtime settings only those
//     their backend allows (no cache folder or other path).
#pragma once

#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "json.hpp"
#include "mapped.hpp"
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
    std::vector<std::pair<std::string, std::string>> runtime;  // runtime's keys and their JSON kinds
    std::vector<std::string> config_not_str;                   // runtime.config properties not a string
};

struct FileEntry {
    std::string sha256;
    std::int64_t bytes = 0;
};

// the listed files of a checked folder, held open from the check on (manifest.py's HeldFiles)
class HeldFiles {
  public:
    HeldFiles(std::string folder, std::map<std::string, FileEntry> files, bool hashes)
        : folder_(std::move(folder)), files_(std::move(files)), hashes_(hashes) {}
    ~HeldFiles();
    HeldFiles(const HeldFiles&) = delete;
    HeldFiles& operator=(const HeldFiles&) = delete;
    // `st`: the file's fstat from before the check read it
    void hold(const std::string& rel, int fd, const struct stat& st);
    // the bytes of a listed file, read through the held descriptor; with hashes, checked again against
    // the manifest's sha256 (a file rewritten in place after the check is refused)
    std::string read(const std::string& rel) const;
    // the file mapped (for weights too large to hold twice): its pages are borrowed from the file, not
    // read and hashed again, so check_unchanged(rel) is what keeps what runs equal to what was hashed
    std::shared_ptr<MappedFile> map(const std::string& rel) const;
    // the file's size, mtime and ctime as before the check hashed it: any write since moves the ctime
    void check_unchanged(const std::string& rel) const;

  private:
    std::string folder_;
    std::map<std::string, FileEntry> files_;
    bool hashes_;
    std::map<std::string, int> fds_;
    std::map<std::string, std::array<std::int64_t, 5>> stats_;  // size, mtime s/ns, ctime s/ns
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
    std::optional<std::string> sealed_target, sealed_backend;  // build.sealed_for
    // model.configs fields runtime/budget.py's estimate reads (its defaults where absent)
    std::int64_t patch_size = 2, num_heads = 16, head_dim = 72;
    std::vector<std::int64_t> vae_widths{128, 256, 512, 512};
    std::shared_ptr<const HeldFiles> held;  // set by check_files' caller (Engine::open): graphs load from it

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
std::shared_ptr<HeldFiles> check_files(const std::string& folder, const Manifest& m, bool hashes);

bool safe_rel(const std::string& rel);
// the bytes of a regular file (symbolic links followed) of at most `limit` bytes: a FIFO, device or socket
// refused by its type before it is opened; Error(kUser) "<path>: <when_missing>" when it does not exist
std::string read_regular(const std::string& path, std::int64_t limit, const std::string& when_missing);
std::string file_kind(unsigned mode);  // "a FIFO", "a character device", ... for messages
std::vector<int> version_tuple(const std::string& v);
void check_backend_version(const Manifest& m, const std::string& installed);

}  // namespace pixart

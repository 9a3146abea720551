// Test helper (not installed): the library's parts one at a time, for tests/test_cpp.py.
//   pixart_tool noise SEED COUNT OUT.f32         numpy default_rng(SEED).standard_normal(COUNT, float32)
//   pixart_tool tokenize ENGINE_DIR PROMPTS.json  one JSON line of input_ids per prompt (a JSON list of str)
//   pixart_tool tokenize-dir KIND TOKENIZER_DIR MAX_LENGTH PAD_ID PROMPTS.json   the same, without an engine
//   pixart_tool validate ENGINE_DIR [--no-hashes] open the folder as Engine::open does; prints the target
//   pixart_tool schema | targets | backends       the manifest field table, target registry, compiled backends
//   pixart_tool sha256 [--builtin] FILE...        one hex digest per file
//   pixart_tool bench ENGINE_DIR PROMPT REPEATS   one JSON line: open_s, first_s (compiles), warm_s (each run)
//   pixart_tool loaded ENGINE_DIR PROMPT [--low-memory]   the graphs held after open and after each of 2 runs
//                                                 (seeds 0, 1), with the FNV-1a 64 hash of each run's RGB bytes
//   pixart_tool check-control ENGINE_DIR IMAGE.ppm  the control-image warning line for that engine (empty: none)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "json.hpp"
#include "manifest.hpp"
#include "pixart/runtime.hpp"
#include "sha256.hpp"
#include "tokenizer.hpp"

int main(int argc, char** argv) {
    const std::string cmd = argc > 1 ? argv[1] : "";
    try {
        if (cmd == "check-control" && argc == 4) {
            std::printf("%s\n", pixart::check_control_image(pixart::read_ppm(argv[3]), argv[2]).c_str());
            return 0;
        }
        if (cmd == "noise" && argc == 5) {
            const auto v = pixart::standard_normal(std::strtoull(argv[2], nullptr, 10), std::strtoull(argv[3], nullptr, 10));
            std::ofstream(argv[4], std::ios::binary).write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
            return 0;
        }
        if ((cmd == "tokenize" && argc == 4) || (cmd == "tokenize-dir" && argc == 7)) {
            std::unique_ptr<pixart::Tokenizer> tok;
            if (cmd == "tokenize") {
                const auto m = pixart::read_manifest(argv[2]);
                tok = pixart::load_tokenizer(std::string(argv[2]) + "/" + m.tokenizer_dir, m.tokenizer_kind, m.max_length,
                                             m.pad_id);
            } else {
                tok = pixart::load_tokenizer(argv[3], argv[2], std::atoi(argv[4]), std::atoi(argv[5]));
            }
            std::ifstream in(argv[argc - 1], std::ios::binary);
            std::stringstream ss;
            ss << in.rdbuf();
            for (const auto& p : pixart::json::parse(ss.str()).items) {
                const auto ids = (*tok)({p.s}).first;
                std::string line = "[";
                for (std::size_t k = 0; k < ids.size(); ++k) line += (k ? "," : "") + std::to_string(ids[k]);
                std::printf("%s]\n", line.c_str());
            }
            return 0;
        }
        if (cmd == "validate" && (argc == 3 || argc == 4)) {
            pixart::LoadOptions options;
            options.verify_hashes = !(argc == 4 && std::string(argv[3]) == "--no-hashes");
            auto engine = pixart::Engine::open(argv[2], options);
            std::printf("ok %s %s\n", engine->target().c_str(), engine->backend().c_str());
            return 0;
        }
        if (cmd == "bench" && argc == 5) {
            using clock = std::chrono::steady_clock;
            auto seconds = [](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
            auto t = clock::now();
            auto engine = pixart::Engine::open(argv[2]);
            const double open_s = seconds(t);
            t = clock::now();
            engine->generate(argv[3], 0);
            const double first_s = seconds(t);
            std::string warm;
            for (int k = 0, n = std::atoi(argv[4]); k < n; ++k) {
                t = clock::now();
                engine->generate(argv[3], static_cast<std::uint64_t>(k + 1));
                warm += (k ? "," : "") + std::to_string(seconds(t));
            }
            std::printf("{\"open_s\": %f, \"first_s\": %f, \"warm_s\": [%s]}\n", open_s, first_s, warm.c_str());
            return 0;
        }
        if (cmd == "loaded" && (argc == 4 || (argc == 5 && std::string(argv[4]) == "--low-memory"))) {
            pixart::LoadOptions options;
            options.low_memory = argc == 5;
            auto engine = pixart::Engine::open(argv[2], options);
            auto show = [&](const char* when) {
                std::string names;
                for (const auto& g : engine->loaded_graphs()) names += (names.empty() ? "" : ",") + g;
                std::printf("%s: %s\n", when, names.c_str());
            };
            show("open");
            for (int k = 0; k < 2; ++k) {
                std::uint64_t hash = 14695981039346656037ull;
                for (const auto& image : engine->generate(argv[3], static_cast<std::uint64_t>(k)))
                    for (const auto byte : image.rgb) hash = (hash ^ byte) * 1099511628211ull;
                char when[64];
                std::snprintf(when, sizeof when, "run %016llx", static_cast<unsigned long long>(hash));
                show(when);
            }
            if (!options.low_memory) {  // switching on releases what is held
                engine->set_low_memory(true);
                show("set_low_memory");
            }
            return 0;
        }
        if (cmd == "sha256" && argc >= 3) {  // --builtin: this project's SHA-256 even where OpenSSL is used
            const bool builtin = std::string(argv[2]) == "--builtin";
            for (int k = builtin ? 3 : 2; k < argc; ++k) {
                if (!builtin) {
                    std::printf("%s\n", pixart::sha256_file(argv[k]).c_str());
                    continue;
                }
                std::ifstream in(argv[k], std::ios::binary);
                std::stringstream ss;
                ss << in.rdbuf();
                std::printf("%s\n", pixart::sha256_hex(ss.str()).c_str());
            }
            return 0;
        }
        if (cmd == "schema") {
            std::printf("%s", pixart::schema_table().c_str());
            return 0;
        }
        if (cmd == "targets") {
            std::printf("%s", pixart::target_table().c_str());
            return 0;
        }
        if (cmd == "backends") {
            for (const auto& b : pixart::compiled_backends()) std::printf("%s\n", b.c_str());
            return 0;
        }
    } catch (const pixart::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return e.code();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "internal error: %s\n", e.what());
        return 3;
    }
    std::fprintf(stderr, "usage: pixart_tool noise|tokenize|tokenize-dir|validate|schema|targets|backends|sha256|bench|loaded ...\n");
    return 2;
}

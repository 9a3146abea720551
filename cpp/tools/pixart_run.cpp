// pixart_run ENGINE_DIR --prompt TEXT [--seed N] [--num-images N] [--control-image IMAGE.ppm]
//            [--invert-control] [--conditioning-scale S] [--threads N] [--memory-budget GIB] [--low-memory]
//            [--decoder full|preview] --out image.png
// The usage sample of pixart_runtime: one engine folder, one prompt, PNG files out (with --num-images N
// > 1: image.png, image_1.png, ...). Exit codes as pixart-export: 0 ok, 2 bad input, 3 internal error.
// The argument contract is `pixart-export run`'s (commands/_options.py): the same names (--control and
// --scale are kept as aliases), the same ranges, every number parsed whole (no trailing characters), the
// same --out rules; images are made in chunks that fit the memory budget, as runtime/budget.py splits them.
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <fcntl.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "pixart/runtime.hpp"

namespace fs = std::filesystem;

namespace {

// the bounds of commands/_options.py
constexpr unsigned long long kMaxSeed = 9223372036854775807ULL;  // 2^63 - 1
constexpr long long kMaxImages = 256, kMaxThreads = 1024;
constexpr double kMaxScale = 10.0, kMinBudgetGib = 0.01, kMaxBudgetGib = 1024.0, kDefaultBudgetGib = 4.0;

[[noreturn]] void usage_error(const std::string& message) { throw pixart::Error(pixart::Error::kUser, message); }

// what Python's int() and float() also take: surrounding whitespace, single underscores between digits
std::string plain(const std::string& raw) {
    const std::size_t a = raw.find_first_not_of(" \t\n\r\f\v"), b = raw.find_last_not_of(" \t\n\r\f\v");
    const std::string s = a == std::string::npos ? std::string() : raw.substr(a, b - a + 1);
    std::string out;
    for (std::size_t k = 0; k < s.size(); ++k) {
        const bool between = s[k] == '_' && k > 0 && k + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[k - 1])) &&
                             std::isdigit(static_cast<unsigned char>(s[k + 1]));
        if (!between) out += s[k];
    }
    return out;
}

// an integer in [lo, hi], all of `raw` (decimal digits, an optional sign); Python's int() and range check
long long integer(const std::string& flag, const std::string& raw, long long lo, unsigned long long hi, const char* what) {
    const std::string text = plain(raw);
    std::size_t i = (text.size() && (text[0] == '+' || text[0] == '-')) ? 1 : 0;
    bool digits = i < text.size();
    for (std::size_t k = i; k < text.size(); ++k) digits = digits && text[k] >= '0' && text[k] <= '9';
    if (!digits) usage_error(flag + " '" + raw + "' is not an integer");
    errno = 0;
    const bool negative = text[0] == '-';
    const unsigned long long magnitude = std::strtoull(text.c_str() + i, nullptr, 10);
    const bool overflow = errno == ERANGE;
    const long double v = negative ? -static_cast<long double>(magnitude) : static_cast<long double>(magnitude);
    if (overflow || v < static_cast<long double>(lo) || v > static_cast<long double>(hi))
        usage_error(flag + " " + text + ": " + what + " from " + std::to_string(lo) + " to " + std::to_string(hi));
    return negative ? -static_cast<long long>(magnitude) : static_cast<long long>(magnitude);
}

// a finite number in [lo, hi], all of `raw`: decimal, with an optional exponent (no hex, no trailing text)
double number(const std::string& flag, const std::string& raw, double lo, double hi) {
    const std::string text = plain(raw);
    std::size_t i = 0;
    auto digits = [&] {
        const std::size_t start = i;
        while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
        return i > start;
    };
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
    std::string word = text.substr(i);
    for (auto& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (word == "nan" || word == "inf" || word == "infinity") usage_error(flag + " '" + raw + "': give a finite number");
    bool ok = digits();
    if (i < text.size() && text[i] == '.') {
        ++i;
        ok = digits() || ok;
    }
    if (ok && i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
        ++i;
        if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
        ok = digits();
    }
    if (!ok || i != text.size()) usage_error(flag + " '" + raw + "' is not a number");
    const double v = std::strtod(text.c_str(), nullptr);
    if (!std::isfinite(v)) usage_error(flag + " '" + raw + "': give a finite number");
    if (v < lo || v > hi) {
        char range[64];
        std::snprintf(range, sizeof range, "%g to %g", lo, hi);
        usage_error(flag + " " + raw + ": give a number from " + range);
    }
    return v;
}

// the engine folder around `path`: a parent with a manifest.json of ours (schema_version and build_key)
bool inside_engine_folder(const fs::path& path, fs::path& folder) {
    for (fs::path p = path.parent_path(); !p.empty(); p = p.parent_path()) {
        struct stat st {};
        const fs::path manifest = p / "manifest.json";
        if (::stat(manifest.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size < (16 << 20)) {
            std::string text(static_cast<std::size_t>(st.st_size), '\0');
            const int fd = ::open(manifest.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
            const ssize_t n = fd < 0 ? -1 : ::read(fd, &text[0], text.size());
            if (fd >= 0) ::close(fd);
            text.resize(n < 0 ? 0 : static_cast<std::size_t>(n));
            if (text.find("\"schema_version\"") != std::string::npos && text.find("\"build_key\"") != std::string::npos) {
                folder = p;
                return true;
            }
        }
        if (p == p.root_path()) break;
    }
    return false;
}

// _options.check_png_out: *.png, not a folder, in an existing, writable folder, not inside an engine folder
void check_png_out(const std::string& out, const std::string& engine) {
    const fs::path path(out);
    std::string ext = path.extension().string();
    for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (ext != ".png") usage_error("--out " + out + ": the output is a PNG, name it *.png");
    char cwd[4096];
    if (path.is_relative() && ::getcwd(cwd, sizeof cwd) == nullptr)
        usage_error("--out " + out + ": the working folder no longer exists; cd to a folder or give an absolute --out");
    std::error_code ec;
    if (fs::is_directory(path, ec)) usage_error("--out " + out + ": is a folder; give a file name ending in .png");
    const fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
    if (!fs::is_directory(parent, ec)) usage_error("--out " + out + ": no such folder " + parent.string() + "; create it first");
    const fs::path absolute = fs::weakly_canonical(fs::absolute(path, ec), ec);
    fs::path folder;
    const fs::path engine_dir = fs::weakly_canonical(fs::absolute(engine, ec), ec);
    const auto rel = absolute.lexically_relative(engine_dir);
    const bool in_engine = !rel.empty() && *rel.begin() != "..";
    if (inside_engine_folder(absolute, folder) || in_engine)
        usage_error("--out " + out + ": inside the engine folder " + (folder.empty() ? engine : folder.string()) +
                    "; writing there would break its file list: write the image elsewhere");
    const fs::path probe = parent / ("." + path.filename().string() + ".probe-" + std::to_string(::getpid()));
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) usage_error("--out " + out + ": " + parent.string() + " is not writable (" + std::strerror(errno) + ")");
    ::close(fd);
    ::unlink(probe.c_str());
}

// _options.check_free_space: room for the PNGs (at most their raw pixels plus a little), before inference
void check_free_space(const std::vector<std::string>& paths, int height, int width) {
    const fs::path path(paths.at(0));
    const fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
    struct statvfs st {};
    if (::statvfs(parent.c_str(), &st) != 0) return;
    const unsigned long long need =
        paths.size() * (static_cast<unsigned long long>(height) * width * 3 + static_cast<unsigned long long>(height) + 4096);
    const unsigned long long free = static_cast<unsigned long long>(st.f_bavail) * st.f_frsize;
    if (free < need)
        usage_error("--out " + paths[0] + ": " + std::to_string(free) + " bytes free on its file system, " +
                    std::to_string(paths.size()) + " PNG(s) of " + std::to_string(height) + "x" + std::to_string(width) +
                    " need up to " + std::to_string(need) + ": free some space or choose another --out");
}

const char* const kUsage =
    "usage: pixart_run ENGINE_DIR --prompt TEXT [--seed N] [--num-images N] [--control-image IMAGE.ppm] "
    "[--invert-control] [--conditioning-scale S] [--threads N] [--memory-budget GIB] [--low-memory] [--decoder full|preview] "
    "--out image.png";

}  // namespace

int main(int argc, char** argv) {
    try {
        std::string dir, prompt, out = "image.png", control;
        bool has_prompt = false, invert_control = false;
        std::uint64_t seed = 0;
        long long num_images = 1;
        double budget_gib = kDefaultBudgetGib;
        pixart::GenerateOptions gen;
        pixart::LoadOptions load;
        for (int i = 1; i < argc; ++i) {
            const std::string a = argv[i];
            auto value = [&]() -> std::string {
                if (i + 1 >= argc) usage_error(std::string("argument ") + a + ": expected one value; " + kUsage);
                return argv[++i];
            };
            if (a == "--prompt") {
                prompt = value();
                has_prompt = true;
            } else if (a == "--seed") {
                seed = static_cast<std::uint64_t>(integer(a, value(), 0, kMaxSeed, "a seed is an integer"));
            } else if (a == "--num-images") {
                num_images = integer(a, value(), 1, kMaxImages, "an integer");
            } else if (a == "--control-image" || a == "--control") {
                control = value();
            } else if (a == "--invert-control") {
                invert_control = true;  // white-on-black edges (HED's) for a black-on-white ControlNet
            } else if (a == "--conditioning-scale" || a == "--scale") {
                gen.conditioning_scale = static_cast<float>(number("--conditioning-scale", value(), 0.0, kMaxScale));
            } else if (a == "--threads") {
                load.threads = static_cast<int>(integer(a, value(), 1, kMaxThreads, "an integer"));
            } else if (a == "--memory-budget") {
                budget_gib = number(a, value(), kMinBudgetGib, kMaxBudgetGib);
            } else if (a == "--out") {
                out = value();
            } else if (a == "--decoder") {
                const std::string d = value();
                if (d != "full" && d != "preview") usage_error("--decoder " + d + ": choose full or preview");
                gen.preview_decoder = d == "preview";
            } else if (a == "--low-memory") {
                load.low_memory = true;  // one graph held at a time
            } else if (dir.empty() && a.rfind("--", 0) != 0) {
                dir = a;
            } else {
                usage_error("unknown argument " + a + "; " + kUsage);
            }
        }
        if (dir.empty() || !has_prompt) usage_error(std::string("ENGINE_DIR and --prompt are required; ") + kUsage);
        pixart::check_prompt(prompt);
        std::vector<std::string> paths;
        const std::string stem = out.substr(0, out.size() - fs::path(out).extension().string().size());
        for (long long k = 0; k < num_images; ++k)
            paths.push_back(k == 0 ? out : stem + "_" + std::to_string(k) + fs::path(out).extension().string());
        for (const auto& p : paths) check_png_out(p, dir);

        pixart::Image control_image;  // read (bounded) before the folder is opened, as run does
        if (!control.empty()) control_image = pixart::read_ppm(control);
        auto engine = pixart::Engine::open(dir, load);
        if (!control.empty()) {
            if (invert_control) pixart::invert_control_image(control_image);
            const std::string warning = pixart::check_control_image(control_image, dir);
            if (!warning.empty()) std::fprintf(stderr, "warning: --control-image %s: %s\n", control.c_str(), warning.c_str());
            gen.control_image = &control_image;
        }
        if (gen.preview_decoder && !engine->has_preview_decoder())
            usage_error(dir + " has no preview decoder (vae_decoder_preview); rebuild it with --preview-decoder DIR");
        const auto [height, width] = engine->resolutions().at(0);
        check_free_space(paths, height, width);
        // chunks that fit the budget (runtime/budget.py); image k's noise comes from seed + k alone
        const long long chunk = engine->max_batch(height, width, static_cast<std::int64_t>(budget_gib * (1 << 30)));
        std::size_t written = 0;
        for (long long start = 0; start < num_images; start += chunk) {
            gen.num_images = static_cast<int>(std::min(chunk, num_images - start));
            for (const auto& image : engine->generate(prompt, seed + static_cast<std::uint64_t>(start), gen))
                pixart::write_png(paths.at(written++), image);
        }
        std::printf("%s: %zu image(s) from %s (%s)\n", out.c_str(), written, dir.c_str(), engine->target().c_str());
        return 0;
    } catch (const pixart::Error& e) {
        std::string message = e.what();
        std::fprintf(stderr, "error: %s\n", message.c_str());
        return e.code();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "internal error: %s\n", e.what());
        return 3;
    }
}

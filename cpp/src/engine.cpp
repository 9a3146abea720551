// Engine: pixart_export/runtime (load + Pipeline) in C++. open() validates as runtime.load does
// (manifest and registry, the backend's host check, every file's size and sha256); generate() is
// Pipeline.__call__: tokenizer -> text_encoder -> denoiser_lcm{K} (or its _controlnet form, after
// vae_encoder on the control image) -> vae_decoder -> x255, round half to even, uint8. With low_memory,
// each graph is released (GraphRunner::release) once its output is taken, before the next one loads.
#include <algorithm>
#include <cmath>

#include "backend.hpp"
#include "noise.hpp"
#include "tokenizer.hpp"

namespace pixart {

const std::vector<Backend>& backends() {
    static const std::vector<Backend> all = [] {
        std::vector<Backend> v;
#ifdef PIXART_WITH_OPENVINO
        v.push_back(openvino_backend());
#endif
#ifdef PIXART_WITH_TENSORRT
        v.push_back(tensorrt_backend());
#endif
        return v;
    }();
    return all;
}

std::vector<std::string> compiled_backends() {
    std::vector<std::string> names;
    for (const auto& b : backends()) names.push_back(b.name);
    return names;
}

struct Engine::Impl {
    std::string folder;
    Manifest manifest;
    std::unique_ptr<GraphRunner> runner;
    std::unique_ptr<Tokenizer> tokenizer;
    bool low_memory = false;

    void release(const std::string& graph) {  // low-memory mode: drop the graph; it loads again on next use
        if (low_memory) runner->release({graph});
    }

    std::vector<Tensor> run(const std::string& graph, const std::vector<std::pair<std::string, const Tensor*>>& feeds,
                            int height, int width) {
        const GraphRecord& rec = manifest.record(graph, height, width);
        Feeds picked;
        for (const auto& input : rec.inputs) {
            const Tensor* t = nullptr;
            for (const auto& [name, value] : feeds)
                if (name == input.name) t = value;
            if (!t)
                throw Error(Error::kUser, rec.file + " needs input '" + input.name +
                                              "', which this runtime does not make; rebuild the engine with this version");
            picked.emplace_back(input.name, t);
        }
        try {
            return runner->run(rec, picked);
        } catch (const Error&) {
            throw;
        } catch (const std::exception& e) {  // a backend's own exception (OpenVINO, TensorRT): one line
            std::string first = e.what();
            first = first.substr(0, std::min(first.find('\n'), std::size_t{200}));
            throw Error(Error::kInternal, rec.file + ": " + manifest.backend_name + " failed: " + first);
        }
    }
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::open(const std::string& folder, const LoadOptions& options) {
    auto impl = std::make_unique<Impl>();
    impl->folder = folder;
    impl->manifest = read_manifest(folder);
    const Manifest& m = impl->manifest;
    check_registry(m, folder);
    const Backend* backend = nullptr;
    for (const auto& b : backends())
        if (b.name == m.backend_name) backend = &b;
    if (!backend) {
        std::string have;
        for (const auto& b : backends()) have += (have.empty() ? "" : ", ") + b.name;
        throw Error(Error::kUser, folder + ": a " + m.target + " engine runs on " + m.backend_name +
                                      ", which this C++ runtime was built without (it has: " +
                                      (have.empty() ? std::string("none") : have) +
                                      "); run it with the Python runtime (`pixart-export run`) or rebuild cpp/ with that backend");
    }
    backend->check_host(folder, m);
    impl->manifest.held = check_files(folder, m, options.verify_hashes);  // held open: graphs load from these
    impl->tokenizer = load_tokenizer(folder + "/" + m.tokenizer_dir, m.tokenizer_kind, m.max_length, m.pad_id);
    impl->runner = backend->runner(folder, m, options);
    impl->low_memory = options.low_memory;
    return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const std::string& Engine::target() const { return impl_->manifest.target; }
const std::string& Engine::backend() const { return impl_->manifest.backend_name; }
std::vector<std::pair<int, int>> Engine::resolutions() const { return impl_->manifest.resolutions; }
bool Engine::has_controlnet() const { return impl_->manifest.controlnet; }
bool Engine::has_preview_decoder() const {
    for (const auto& r : impl_->manifest.runnable())
        if (r.graph == "vae_decoder_preview") return true;
    return false;
}

int Engine::max_batch(int height, int width, std::int64_t budget_bytes) const {
    // runtime/budget.py bytes_per_image: 4 bytes x LIVE_FACTOR (4) x the larger of the transformer's and the
    // VAE decoder's largest live activations per image
    const Manifest& m = impl_->manifest;
    const std::int64_t f = m.vae_scale_factor, patch = m.patch_size;
    const std::int64_t tokens = (height / f / patch) * (width / f / patch);
    const std::int64_t transformer = tokens * m.num_heads * m.head_dim * 5 + m.num_heads * tokens * tokens;
    const std::int64_t w0 = m.vae_widths.at(0), w1 = m.vae_widths.at(std::min<std::size_t>(1, m.vae_widths.size() - 1));
    const std::int64_t decoder = static_cast<std::int64_t>(height) * width * w0 * 2 + (height / 2) * (width / 2) * w1;
    const std::int64_t per_image = 4 * 4 * std::max(transformer, decoder);
    return static_cast<int>(std::min<std::int64_t>(1 << 20, std::max<std::int64_t>(1, budget_bytes / std::max<std::int64_t>(1, per_image))));
}
std::vector<std::string> Engine::loaded_graphs() const { return impl_->runner->loaded(); }

void Engine::set_low_memory(bool on) {
    impl_->low_memory = on;
    if (on) impl_->runner->release(impl_->runner->loaded());
}

std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> Engine::tokenize(const std::string& prompt) const {
    return (*impl_->tokenizer)({prompt});
}

namespace {

bool blank(const std::string& s) {  // Python's `not p.strip()` for UTF-8 text
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) {
            ++i;
            continue;
        }
        static const char* const spaces[] = {"\xc2\x85", "\xc2\xa0", "\xe1\x9a\x80", "\xe2\x80\xa8", "\xe2\x80\xa9",
                                             "\xe2\x80\xaf", "\xe2\x81\x9f", "\xe3\x80\x80"};
        bool found = false;
        for (const char* sp : spaces)
            if (s.compare(i, std::char_traits<char>::length(sp), sp) == 0) {
                i += std::char_traits<char>::length(sp);
                found = true;
                break;
            }
        // U+2000..U+200A
        if (!found && i + 2 < s.size() && c == 0xe2 && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
            static_cast<unsigned char>(s[i + 2]) >= 0x80 && static_cast<unsigned char>(s[i + 2]) <= 0x8a) {
            i += 3;
            found = true;
        }
        if (!found) return false;
    }
    return true;
}

bool valid_utf8(const std::string& s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        std::size_t n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xe ? 2 : (c >> 3) == 0x1e ? 3 : 4;
        if (n == 4 || i + n >= s.size()) return false;  // a bad lead byte, or truncated
        std::uint32_t cp = n == 0 ? c : n == 1 ? (c & 0x1f) : n == 2 ? (c & 0x0f) : (c & 0x07);
        for (std::size_t k = 1; k <= n; ++k) {
            const unsigned char d = static_cast<unsigned char>(s[i + k]);
            if ((d & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (d & 0x3f);
        }
        static const std::uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;  // overlong, surrogate
        i += n + 1;
    }
    return true;
}

}  // namespace

void check_prompt(const std::string& prompt) {
    if (blank(prompt)) throw Error(Error::kUser, "empty prompt: give the text to draw");
    if (!valid_utf8(prompt)) throw Error(Error::kUser, "the prompt is not valid UTF-8 text");
}

std::vector<Image> Engine::generate(const std::string& prompt, std::uint64_t seed, const GenerateOptions& options) {
    const Manifest& m = impl_->manifest;
    std::vector<std::uint64_t> seeds = options.seeds;  // noise contract: image b from its own seed alone
    if (seeds.empty()) {
        if (options.num_images < 1) throw Error(Error::kUser, "no prompt given (num_images < 1)");
        for (int b = 0; b < options.num_images; ++b) seeds.push_back(seed + static_cast<std::uint64_t>(b));
    }
    if (blank(prompt)) throw Error(Error::kUser, "empty prompt: give the text to draw");
    if (!valid_utf8(prompt)) throw Error(Error::kUser, "the prompt is not valid UTF-8 text");
    if (!std::isfinite(options.conditioning_scale))
        throw Error(Error::kUser, "conditioning scale " + std::to_string(options.conditioning_scale) + ": give a finite number");
    int height = options.height, width = options.width;
    if (height == 0 && width == 0) {
        height = m.resolutions.at(0).first;
        width = m.resolutions.at(0).second;
    } else if (std::find(m.resolutions.begin(), m.resolutions.end(), std::make_pair(height, width)) == m.resolutions.end()) {
        std::string buckets;
        for (const auto& [h, w] : m.resolutions) buckets += (buckets.empty() ? "" : ", ") + std::to_string(h) + "x" + std::to_string(w);
        throw Error(Error::kUser, "resolution " + std::to_string(height) + "x" + std::to_string(width) +
                                      " is not in this engine (built for " + buckets + "); rebuild with --resolution");
    }
    const std::int64_t B = static_cast<std::int64_t>(seeds.size()), C = m.latent_channels, f = m.vae_scale_factor;
    const std::int64_t h = height / f, w = width / f, L = m.max_length;
    const std::int64_t per = B * C * h * w;

    std::vector<std::string> prompts(static_cast<std::size_t>(B), prompt);
    auto [ids, mask] = (*impl_->tokenizer)(prompts);
    const Tensor input_ids = Tensor::i64({B, L}, std::move(ids));
    const Tensor attention_mask = Tensor::i64({B, L}, std::move(mask));
    const Tensor embeds = std::move(
        impl_->run("text_encoder", {{"input_ids", &input_ids}, {"attention_mask", &attention_mask}}, height, width).at(0));
    impl_->release("text_encoder");

    const std::int64_t K = std::max(m.steps, 1);
    // [K, B, C, h, w] as runtime/noise.py: image b's K*C*h*w draws from default_rng(seeds[b]), step k at [k, b]
    const std::size_t chw = static_cast<std::size_t>(C * h * w);
    std::vector<float> x_t(static_cast<std::size_t>(per)), steps_noise(static_cast<std::size_t>((K - 1) * per));
    for (std::int64_t b = 0; b < B; ++b) {
        const std::vector<float> own = standard_normal(seeds[static_cast<std::size_t>(b)], static_cast<std::size_t>(K) * chw);
        std::copy(own.begin(), own.begin() + chw, x_t.begin() + b * chw);
        for (std::int64_t k = 1; k < K; ++k)
            std::copy(own.begin() + k * chw, own.begin() + (k + 1) * chw, steps_noise.begin() + ((k - 1) * B + b) * chw);
    }
    const Tensor latents = Tensor::f32({B, C, h, w}, std::move(x_t));
    const Tensor step_noise = Tensor::f32({K - 1, B, C, h, w}, std::move(steps_noise));
    std::vector<float> res, aspect;
    for (std::int64_t b = 0; b < B; ++b) {
        res.push_back(static_cast<float>(height));
        res.push_back(static_cast<float>(width));
        aspect.push_back(static_cast<float>(static_cast<double>(height) / width));
    }
    const Tensor resolution = Tensor::f32({B, 2}, res), aspect_ratio = Tensor::f32({B, 1}, aspect);
    std::vector<std::pair<std::string, const Tensor*>> feeds{
        {"latents", &latents},           {"step_noise", &step_noise},     {"prompt_embeds", &embeds},
        {"prompt_attention_mask", &attention_mask}, {"resolution", &resolution}, {"aspect_ratio", &aspect_ratio}};

    std::string graph = "denoiser_lcm" + std::to_string(m.steps);
    Tensor control_latents, scale;
    if (options.control_image) {
        const Image& img = *options.control_image;
        if (!m.controlnet) throw Error(Error::kUser, "this engine has no ControlNet; rebuild with --controlnet to use a control image");
        if (img.width != width || img.height != height || img.rgb.size() != static_cast<std::size_t>(width) * height * 3)
            throw Error(Error::kUser, "control image is " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                                          "; the C++ runtime takes it at the output size " + std::to_string(width) + "x" +
                                          std::to_string(height) + " (resize it first)");
        std::vector<float> chw(static_cast<std::size_t>(3) * height * width);
        for (int c = 0; c < 3; ++c)
            for (int y = 0; y < height; ++y)
                for (int x = 0; x < width; ++x)
                    chw[(static_cast<std::size_t>(c) * height + y) * width + x] =
                        static_cast<float>(img.rgb[(static_cast<std::size_t>(y) * width + x) * 3 + c]) / 255.0f;
        const Tensor image = Tensor::f32({1, 3, height, width}, std::move(chw));
        const Tensor control = std::move(impl_->run("vae_encoder", {{"image", &image}}, height, width).at(0));
        impl_->release("vae_encoder");
        std::vector<float> tiled;
        for (std::int64_t b = 0; b < B; ++b) tiled.insert(tiled.end(), control.f.begin(), control.f.end());
        std::vector<std::int64_t> shape = control.shape;
        shape[0] = B;
        control_latents = Tensor::f32(shape, std::move(tiled));
        scale = Tensor::f32({1}, {options.conditioning_scale});
        feeds.emplace_back("control_latents", &control_latents);
        feeds.emplace_back("conditioning_scale", &scale);
        graph += "_controlnet";
    }
    const Tensor denoised = std::move(impl_->run(graph, feeds, height, width).at(0));
    impl_->release(graph);
    const std::string decoder = options.preview_decoder ? "vae_decoder_preview" : "vae_decoder";
    const Tensor images = std::move(impl_->run(decoder, {{"denoised", &denoised}}, height, width).at(0));
    impl_->release(decoder);

    // [B,3,H,W] in [0,1] -> HWC uint8: x * 255 in float32, round half to even, clip (runtime.pipeline.to_pil)
    const std::int64_t H = images.shape.at(2), W = images.shape.at(3);
    std::vector<Image> out;
    for (std::int64_t b = 0; b < B; ++b) {
        Image img;
        img.width = static_cast<int>(W);
        img.height = static_cast<int>(H);
        img.rgb.resize(static_cast<std::size_t>(H * W * 3));
        for (std::int64_t c = 0; c < 3; ++c)
            for (std::int64_t p = 0; p < H * W; ++p) {
                float v = std::nearbyint(images.f[static_cast<std::size_t>(((b * 3 + c) * H * W) + p)] * 255.0f);
                v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v;
                img.rgb[static_cast<std::size_t>(p * 3 + c)] = static_cast<std::uint8_t>(v);
            }
        out.push_back(std::move(img));
    }
    return out;
}

}  // namespace pixart

// pixart_runtime: an engine folder of pixart-export turns a prompt into images, from C++.
//
//     #include <pixart/runtime.hpp>
//
//     auto engine = pixart::Engine::open("engines/ov-cpu-tiny");   // validates manifest + sha256
//     pixart::GenerateOptions opt;                                  // num_images, control image, scale
//     std::vector<pixart::Image> images = engine->generate("a red circle above a blue square", 0, opt);
//     pixart::write_png("image.png", images[0]);
//
// The same folder, prompt and seed give the Python runtime's image (pixart_export/runtime): the same
// manifest rules, the same tokenizer ids, numpy's default_rng(seed) noise bit for bit, the same graphs
// run with the same compile properties. Errors are pixart::Error with a message that says what to do;
// code() is kUser for a bad folder or argument (the CLI's exit 2) and kInternal otherwise (exit 3).
// A C API for embedding is in <pixart/pixart.h>.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pixart {

class Error : public std::runtime_error {
  public:
    enum Code { kUser = 2, kInternal = 3 };
    Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
    Code code() const { return code_; }

  private:
    Code code_;
};

// 8-bit RGB, rows top to bottom, width * height * 3 bytes
struct Image {
    int width = 0, height = 0;
    std::vector<std::uint8_t> rgb;
};

struct LoadOptions {
    bool verify_hashes = true;  // sha256 of every listed file (sizes are always checked)
    int threads = 0;            // backend threads (OpenVINO INFERENCE_NUM_THREADS); 0: the backend's choice
    bool cuda_graph = false;    // TensorRT: capture the denoiser's enqueue in a CUDA graph per batch
    bool low_memory = false;    // hold one graph at a time: the text encoder is released before the denoiser
                                // loads, the denoiser before the VAE decoder (same images; graphs load per call)
};

struct GenerateOptions {
    int num_images = 1;                    // images seed, seed+1, ..., seed+num_images-1
    std::vector<std::uint64_t> seeds;      // or one seed per image (then num_images is ignored); an image's
                                           // noise comes from its own seed alone, in any batch
    const Image* control_image = nullptr;  // ControlNet engines; RGB at the output resolution
    float conditioning_scale = 1.0f;
    int height = 0, width = 0;  // a resolution bucket of the engine; 0: the first it was built for
    bool preview_decoder = false;  // decode with the folder's vae_decoder_preview (build --preview-decoder):
                                   // a small AutoencoderTiny, faster and softer; false: the full VAE decoder
};

class Engine {
  public:
    static std::unique_ptr<Engine> open(const std::string& folder, const LoadOptions& options = {});
    ~Engine();

    std::vector<Image> generate(const std::string& prompt, std::uint64_t seed, const GenerateOptions& options = {});

    // the parts, for tests and embedding
    std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> tokenize(const std::string& prompt) const;
    const std::string& target() const;
    const std::string& backend() const;
    std::vector<std::pair<int, int>> resolutions() const;
    bool has_controlnet() const;
    bool has_preview_decoder() const;  // the folder carries vae_decoder_preview
    // images per generate() call whose estimated activations fit `budget_bytes` at a bucket (at least 1):
    // runtime/budget.py's chunk_size, the same estimate
    int max_batch(int height, int width, std::int64_t budget_bytes) const;
    void set_low_memory(bool on);                   // LoadOptions::low_memory after open; on releases every graph
    std::vector<std::string> loaded_graphs() const;  // graphs the backend holds now (loaded on first use)

    struct Impl;

  private:
    explicit Engine(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// numpy.random.default_rng(seed).standard_normal(count, dtype=float32), bit for bit
std::vector<float> standard_normal(std::uint64_t seed, std::size_t count);

void write_png(const std::string& path, const Image& image);
Image read_ppm(const std::string& path);  // binary PPM (P6, maxval 255), for control images

// One warning line ("" when none) when a control image looks unlike the convention the engine folder's
// control_convention.json records (inverted polarity, or filled shapes for an edge ControlNet): the rule
// and text of pixart_export/control_check.py. "" when the folder records none.
std::string check_control_image(const Image& image, const std::string& engine_dir,
                                const std::string& invert_flag = "--invert-control");
void invert_control_image(Image& image);  // 255 - v on every sample (--invert-control)

// Error(kUser) for a prompt generate() refuses (blank, or not valid UTF-8): a CLI checks it before open()
void check_prompt(const std::string& prompt);

// the backends this build carries ("openvino", "tensorrt")
std::vector<std::string> compiled_backends();

}  // namespace pixart

// pixart_run ENGINE_DIR --prompt TEXT [--seed N] [--num-images N] [--control IMAGE.ppm] [--scale S]
//            [--threads N] [--low-memory] --out image.png
// The usage sample of pixart_runtime: one engine folder, one prompt, PNG files out (with --num-images N
// > 1: image.png, image_1.png, ...). Exit codes as pixart-export: 0 ok, 2 bad input, 3 internal error.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "pixart/runtime.hpp"

int main(int argc, char** argv) {
    std::string dir, prompt, out, control;
    unsigned long long seed = 0;
    pixart::GenerateOptions gen;
    pixart::LoadOptions load;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool has_value = i + 1 < argc;
        if (a == "--prompt" && has_value) prompt = argv[++i];
        else if (a == "--seed" && has_value) seed = std::strtoull(argv[++i], nullptr, 10);
        else if (a == "--num-images" && has_value) gen.num_images = std::atoi(argv[++i]);
        else if (a == "--control" && has_value) control = argv[++i];
        else if (a == "--scale" && has_value) gen.conditioning_scale = std::strtof(argv[++i], nullptr);
        else if (a == "--threads" && has_value) load.threads = std::atoi(argv[++i]);
        else if (a == "--out" && has_value) out = argv[++i];
        else if (a == "--low-memory") load.low_memory = true;  // one graph held at a time
        else if (dir.empty() && a.rfind("--", 0) != 0) dir = a;
        else {
            std::fprintf(stderr, "pixart_run: unknown or incomplete argument %s\n", a.c_str());
            return 2;
        }
    }
    if (dir.empty() || prompt.empty() || out.empty()) {
        std::fprintf(stderr, "usage: pixart_run ENGINE_DIR --prompt TEXT [--seed N] [--num-images N] "
                             "[--control IMAGE.ppm] [--scale S] [--threads N] [--low-memory] --out image.png\n");
        return 2;
    }
    try {
        auto engine = pixart::Engine::open(dir, load);
        pixart::Image control_image;
        if (!control.empty()) {
            control_image = pixart::read_ppm(control);
            gen.control_image = &control_image;
        }
        const auto images = engine->generate(prompt, seed, gen);
        for (std::size_t k = 0; k < images.size(); ++k) {
            const std::string stem = out.size() > 4 ? out.substr(0, out.size() - 4) : out;
            pixart::write_png(k == 0 ? out : stem + "_" + std::to_string(k) + ".png", images[k]);
        }
        std::printf("%s: %zu image(s) from %s (%s)\n", out.c_str(), images.size(), dir.c_str(), engine->target().c_str());
        return 0;
    } catch (const pixart::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return e.code();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "internal error: %s\n", e.what());
        return 3;
    }
}

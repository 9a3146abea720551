#include <cstdlib>
#include <cstring>
#include <new>

#include "pixart/pixart.h"
#include "pixart/runtime.hpp"

struct pixart_engine {
    std::unique_ptr<pixart::Engine> engine;
    bool preview_decoder = false;  // pixart_set_decoder
};

namespace {

thread_local std::string last_error;

template <class F>
int guarded(F&& f) {
    try {
        f();
        last_error.clear();
        return PIXART_OK;
    } catch (const pixart::Error& e) {
        last_error = e.what();
        return e.code() == pixart::Error::kUser ? PIXART_ERROR_USER : PIXART_ERROR_INTERNAL;
    } catch (const std::exception& e) {
        last_error = e.what();
        return PIXART_ERROR_INTERNAL;
    }
}

void need(const void* p, const char* what) {
    if (!p) throw pixart::Error(pixart::Error::kUser, std::string(what) + " is NULL");
}

}  // namespace

extern "C" {

int pixart_open(const char* engine_dir, pixart_engine** engine) { return pixart_open_with(engine_dir, 0, 1, engine); }

int pixart_open_with(const char* engine_dir, int threads, int verify_hashes, pixart_engine** engine) {
    return guarded([&] {
        need(engine_dir, "engine_dir");
        need(engine, "engine");
        *engine = nullptr;
        pixart::LoadOptions options;
        options.threads = threads;
        options.verify_hashes = verify_hashes != 0;
        auto e = pixart::Engine::open(engine_dir, options);
        *engine = new pixart_engine{std::move(e)};
    });
}

void pixart_close(pixart_engine* engine) { delete engine; }

int pixart_set_low_memory(pixart_engine* engine, int low_memory) {
    return guarded([&] {
        need(engine, "engine");
        engine->engine->set_low_memory(low_memory != 0);
    });
}

int pixart_set_decoder(pixart_engine* engine, int preview) {
    return guarded([&] {
        need(engine, "engine");
        if (preview && !engine->engine->has_preview_decoder())
            throw pixart::Error(pixart::Error::kUser,
                                "this engine folder has no preview decoder (vae_decoder_preview); rebuild it with "
                                "--preview-decoder DIR");
        engine->preview_decoder = preview != 0;
    });
}

namespace {
// pixart_generate and pixart_generate_seeds: `options` holds the images' seeds (or their count)
int generate(pixart_engine* engine, const char* prompt, uint64_t seed, pixart::GenerateOptions options,
             const pixart_image* control, float conditioning_scale, pixart_image** images) {
    return guarded([&] {
        need(engine, "engine");
        need(prompt, "prompt");
        need(images, "images");
        *images = nullptr;
        options.conditioning_scale = conditioning_scale;
        options.preview_decoder = engine->preview_decoder;
        pixart::Image control_image;
        if (control) {
            need(control->rgb, "control->rgb");
            control_image.width = control->width;
            control_image.height = control->height;
            control_image.rgb.assign(control->rgb, control->rgb + static_cast<std::size_t>(control->width) * control->height * 3);
            options.control_image = &control_image;
        }
        const auto out = engine->engine->generate(prompt, seed, options);
        auto* array = static_cast<pixart_image*>(std::calloc(out.size(), sizeof(pixart_image)));
        if (!array) throw std::bad_alloc();
        for (std::size_t k = 0; k < out.size(); ++k) {
            array[k].width = out[k].width;
            array[k].height = out[k].height;
            array[k].rgb = static_cast<uint8_t*>(std::malloc(out[k].rgb.size()));
            if (!array[k].rgb) {
                pixart_images_free(array, static_cast<int>(k));
                throw std::bad_alloc();
            }
            std::memcpy(array[k].rgb, out[k].rgb.data(), out[k].rgb.size());
        }
        *images = array;
    });
}
}  // namespace

int pixart_generate(pixart_engine* engine, const char* prompt, uint64_t seed, int num_images, const pixart_image* control,
                    float conditioning_scale, pixart_image** images) {
    pixart::GenerateOptions options;
    options.num_images = num_images;
    return generate(engine, prompt, seed, options, control, conditioning_scale, images);
}

int pixart_generate_seeds(pixart_engine* engine, const char* prompt, const uint64_t* seeds, int count,
                          const pixart_image* control, float conditioning_scale, pixart_image** images) {
    if (count > 0 && !seeds) return guarded([&] { need(seeds, "seeds"); });
    pixart::GenerateOptions options;
    options.num_images = count;
    if (count > 0) options.seeds.assign(seeds, seeds + count);
    return generate(engine, prompt, 0, options, control, conditioning_scale, images);
}

void pixart_images_free(pixart_image* images, int count) {
    if (!images) return;
    for (int k = 0; k < count; ++k) std::free(images[k].rgb);
    std::free(images);
}

int pixart_tokenize(pixart_engine* engine, const char* prompt, int64_t* input_ids, int64_t* attention_mask,
                    size_t capacity, size_t* length) {
    return guarded([&] {
        need(engine, "engine");
        need(prompt, "prompt");
        const auto [ids, mask] = engine->engine->tokenize(prompt);
        if (length) *length = ids.size();
        if (capacity < ids.size())
            throw pixart::Error(pixart::Error::kUser, "capacity " + std::to_string(capacity) + " < max_length " +
                                                          std::to_string(ids.size()));
        if (input_ids) std::memcpy(input_ids, ids.data(), ids.size() * sizeof(int64_t));
        if (attention_mask) std::memcpy(attention_mask, mask.data(), mask.size() * sizeof(int64_t));
    });
}

const char* pixart_target(const pixart_engine* engine) { return engine ? engine->engine->target().c_str() : ""; }

int pixart_standard_normal(uint64_t seed, float* out, size_t count) {
    return guarded([&] {
        if (count) need(out, "out");
        const auto v = pixart::standard_normal(seed, count);
        std::memcpy(out, v.data(), count * sizeof(float));
    });
}

int pixart_write_png(const char* path, const pixart_image* image) {
    return guarded([&] {
        need(path, "path");
        need(image, "image");
        need(image->rgb, "image->rgb");
        pixart::Image img;
        img.width = image->width;
        img.height = image->height;
        img.rgb.assign(image->rgb, image->rgb + static_cast<std::size_t>(image->width) * image->height * 3);
        pixart::write_png(path, img);
    });
}

const char* pixart_last_error(void) { return last_error.c_str(); }

}  // extern "C"

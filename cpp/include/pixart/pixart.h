/* pixart_runtime C API: an engine folder of pixart-export, from C or any language with a C FFI.
 *
 *     pixart_engine* engine = NULL;
 *     if (pixart_open("engines/ov-cpu-tiny", &engine) != PIXART_OK) {
 *         fprintf(stderr, "%s\n", pixart_last_error());
 *         return 2;
 *     }
 *     pixart_image* images = NULL;
 *     if (pixart_generate(engine, "a red circle above a blue square", 0, 1, NULL, 1.0f, &images) == PIXART_OK) {
 *         pixart_write_png("image.png", &images[0]);
 *         pixart_images_free(images, 1);
 *     }
 *     pixart_close(engine);
 *
 * Every call returns PIXART_OK (0), PIXART_ERROR_USER (2: a folder or argument to fix; the message says
 * how) or PIXART_ERROR_INTERNAL (3); pixart_last_error() holds the message of this thread's last error.
 */
#ifndef PIXART_PIXART_H
#define PIXART_PIXART_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { PIXART_OK = 0, PIXART_ERROR_USER = 2, PIXART_ERROR_INTERNAL = 3 };

typedef struct pixart_engine pixart_engine;

typedef struct pixart_image {
    int width, height;
    uint8_t* rgb; /* width * height * 3 bytes, rows top to bottom */
} pixart_image;

/* Validates the folder (manifest, registry, backend version and device, sha256 of every file). */
int pixart_open(const char* engine_dir, pixart_engine** engine);
/* threads: backend threads (0: the backend's choice); verify_hashes: 0 checks sizes only. */
int pixart_open_with(const char* engine_dir, int threads, int verify_hashes, pixart_engine** engine);
void pixart_close(pixart_engine* engine);
/* low_memory != 0: hold one graph at a time (the text encoder is released before the denoiser loads, the
 * denoiser before the VAE decoder; the same images, each call loads the graphs again); 0: keep them loaded. */
int pixart_set_low_memory(pixart_engine* engine, int low_memory);
/* preview != 0: decode with the folder's vae_decoder_preview (built with --preview-decoder; a small
 * AutoencoderTiny, faster and softer; PIXART_ERROR_USER where the folder has none); 0: the full VAE decoder. */
int pixart_set_decoder(pixart_engine* engine, int preview);

/* num_images images of `prompt` (UTF-8); control: an RGB image at the output size, or NULL.
 * *images receives an array of num_images to release with pixart_images_free. */
int pixart_generate(pixart_engine* engine, const char* prompt, uint64_t seed, int num_images,
                    const pixart_image* control, float conditioning_scale, pixart_image** images);
/* count images of `prompt`, image i from seeds[i] alone (pixart_generate(seed, n) is seeds seed..seed+n-1). */
int pixart_generate_seeds(pixart_engine* engine, const char* prompt, const uint64_t* seeds, int count,
                          const pixart_image* control, float conditioning_scale, pixart_image** images);
void pixart_images_free(pixart_image* images, int count);

/* input_ids and attention_mask of `prompt` (max_length values each); *length receives max_length.
 * Pass capacity >= max_length (120 for PixArt). */
int pixart_tokenize(pixart_engine* engine, const char* prompt, int64_t* input_ids, int64_t* attention_mask,
                    size_t capacity, size_t* length);
const char* pixart_target(const pixart_engine* engine);

/* numpy.random.default_rng(seed).standard_normal(count, dtype=float32), bit for bit. */
int pixart_standard_normal(uint64_t seed, float* out, size_t count);
int pixart_write_png(const char* path, const pixart_image* image);
const char* pixart_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* PIXART_PIXART_H */

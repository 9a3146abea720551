/* The C API from C: open an engine folder, tokenize, generate one image (PNG), noise, and the errors.
 * c_api_test ENGINE_DIR OUT.png  -> prints "ok" lines; exit 0 when every check passed. */
#include <stdio.h>
#include <string.h>

#include "pixart/pixart.h"

#define CHECK(cond, what)                                              \
    do {                                                               \
        if (!(cond)) {                                                 \
            fprintf(stderr, "FAILED %s: %s\n", what, pixart_last_error()); \
            return 1;                                                  \
        }                                                              \
    } while (0)

int main(int argc, char** argv) {
    pixart_engine* engine = NULL;
    pixart_image* images = NULL;
    pixart_image* again = NULL;
    int64_t ids[256], mask[256];
    size_t length = 0;
    float noise[4];
    if (argc != 3) {
        fprintf(stderr, "usage: c_api_test ENGINE_DIR OUT.png\n");
        return 2;
    }
    CHECK(pixart_open("/nonexistent/engine", &engine) == PIXART_ERROR_USER && engine == NULL, "refuses a missing folder");
    CHECK(strstr(pixart_last_error(), "no such engine folder") != NULL, "names the missing folder");
    printf("ok error: %s\n", pixart_last_error());

    CHECK(pixart_open(argv[1], &engine) == PIXART_OK, "open");
    printf("ok open %s\n", pixart_target(engine));

    CHECK(pixart_tokenize(engine, "ab", ids, mask, 256, &length) == PIXART_OK, "tokenize");
    CHECK(ids[0] == 'a' + 3 && ids[1] == 'b' + 3 && ids[2] == 1 && ids[3] == 0 && mask[2] == 1 && mask[3] == 0, "byt5 ids");
    printf("ok tokenize length %zu\n", length);

    CHECK(pixart_generate(engine, "   ", 0, 1, NULL, 1.0f, &images) == PIXART_ERROR_USER, "refuses an empty prompt");
    CHECK(pixart_generate(engine, "bad \xff text", 0, 1, NULL, 1.0f, &images) == PIXART_ERROR_USER &&
              strstr(pixart_last_error(), "UTF-8") != NULL,
          "refuses a prompt that is not UTF-8");
    CHECK(pixart_generate(engine, "a red circle above a blue square", 0, 2, NULL, 1.0f, &images) == PIXART_OK, "generate");
    CHECK(images[0].width > 0 && images[0].height > 0 && images[1].width == images[0].width, "image sizes");
    CHECK(memcmp(images[0].rgb, images[1].rgb, (size_t)images[0].width * images[0].height * 3) != 0,
          "two images of one seed differ (fresh noise each)");
    CHECK(pixart_write_png(argv[2], &images[0]) == PIXART_OK, "write_png");
    printf("ok generate %dx%d\n", images[0].width, images[0].height);

    CHECK(pixart_set_low_memory(engine, 1) == PIXART_OK, "set_low_memory");
    CHECK(pixart_generate(engine, "a red circle above a blue square", 0, 2, NULL, 1.0f, &again) == PIXART_OK,
          "generate in low-memory mode");
    CHECK(memcmp(images[0].rgb, again[0].rgb, (size_t)images[0].width * images[0].height * 3) == 0 &&
              memcmp(images[1].rgb, again[1].rgb, (size_t)images[1].width * images[1].height * 3) == 0,
          "low-memory mode draws the same images");
    CHECK(pixart_set_low_memory(NULL, 1) == PIXART_ERROR_USER, "set_low_memory refuses NULL");
    printf("ok low-memory same images\n");
    pixart_images_free(again, 2);
    pixart_images_free(images, 2);

    CHECK(pixart_standard_normal(0, noise, 4) == PIXART_OK, "standard_normal");
    printf("ok noise %.7f %.7f\n", noise[0], noise[1]);
    pixart_close(engine);
    return 0;
}

// The control-image check of pixart_export/control_check.py, one rule in both runtimes: an engine folder
// built with a ControlNet that records its convention holds control_convention.json
// ({"condition": "edge"|"mask", "polarity": "dark-on-light"|"light-on-dark", "resolution": N}); a control
// image whose background is the other polarity (grey = (R+G+B)/3 below 128 on most pixels, or not), or,
// for "edge", whose marks are filled areas (edge density: the share of mark pixels with a 4-neighbour
// that is not a mark, below kMinEdgeDensity) gets one warning line naming the fix. Warning text and
// thresholds are Python's; tests/test_control_check.py runs both on the same images.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "json.hpp"
#include "pixart/runtime.hpp"

namespace pixart {
namespace {

constexpr double kMinEdgeDensity = 0.2;
constexpr double kMinMarks = 0.005;

std::string fixed2(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", v);
    return buf;
}

}  // namespace

std::string check_control_image(const Image& image, const std::string& engine_dir, const std::string& invert_flag) {
    const auto path = std::filesystem::path(engine_dir) / "control_convention.json";
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return "";
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    std::string condition, polarity;
    long long resolution = 0;
    try {
        const json::Value v = json::parse(text.str());
        condition = v.at("condition").s;
        polarity = v.at("polarity").s;
        resolution = v.at("resolution").i;
    } catch (const std::exception& e) {
        throw Error(Error::kUser, path.string() + ": not a control convention (" + e.what() + ")");
    }
    const bool edge = condition == "edge", want_light = polarity == "dark-on-light";
    if ((!edge && condition != "mask") || (!want_light && polarity != "light-on-dark"))
        throw Error(Error::kUser, path.string() + ": condition edge or mask, polarity dark-on-light or light-on-dark");
    const std::size_t w = static_cast<std::size_t>(image.width), h = static_cast<std::size_t>(image.height), n = w * h;
    if (n == 0) return "";
    std::vector<std::uint8_t> dark(n);
    double total = 0;
    std::size_t dark_count = 0;
    for (std::size_t p = 0; p < n; ++p) {
        const int sum = image.rgb[3 * p] + image.rgb[3 * p + 1] + image.rgb[3 * p + 2];
        total += sum;
        dark[p] = sum < 3 * 128;
        dark_count += dark[p];
    }
    const double brightness = total / static_cast<double>(n) / (3 * 255.0);
    const double dark_share = static_cast<double>(dark_count) / static_cast<double>(n);
    const std::string lines = edge ? "edge outlines" : "filled silhouettes";
    const std::string colours = want_light ? "black on white" : "white on black";
    const std::string describe = lines + ", " + colours + ", " + std::to_string(resolution) + " px";
    if ((dark_share > 0.5) == want_light) {
        return std::string("the control image looks inverted (") + (want_light ? "light on dark" : "dark on light") +
               ": mean brightness " + fixed2(brightness) + "); this ControlNet was trained on " + describe + ": pass " +
               invert_flag + " or invert the image";
    }
    const bool marks_dark = dark_share <= 0.5;
    auto mark = [&](std::size_t y, std::size_t x) { return static_cast<bool>(dark[y * w + x]) == marks_dark; };
    std::size_t count = 0, border = 0;
    for (std::size_t y = 0; y < h; ++y)
        for (std::size_t x = 0; x < w; ++x) {
            if (!mark(y, x)) continue;
            ++count;
            const bool inside = mark(y > 0 ? y - 1 : y, x) && mark(y + 1 < h ? y + 1 : y, x) &&
                                mark(y, x > 0 ? x - 1 : x) && mark(y, x + 1 < w ? x + 1 : x);
            border += !inside;
        }
    const double density = count ? static_cast<double>(border) / static_cast<double>(count) : 1.0;
    const double marks = std::min(dark_share, 1.0 - dark_share);
    if (edge && marks >= kMinMarks && density < kMinEdgeDensity) {
        return "the control image looks like filled shapes, not outlines (edge density " + fixed2(density) +
               "); this ControlNet was trained on " + describe + ": give an edge map";
    }
    return "";
}

void invert_control_image(Image& image) {
    for (auto& v : image.rgb) v = static_cast<std::uint8_t>(255 - v);
}

}  // namespace pixart

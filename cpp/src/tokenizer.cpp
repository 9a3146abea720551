#include "tokenizer.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "json.hpp"
#include "pixart/runtime.hpp"

namespace pixart {
namespace {

constexpr std::int64_t kPad = 0, kEos = 1, kByteOffset = 3;

std::size_t code_points(const std::string& s) {
    std::size_t n = 0;
    for (unsigned char c : s)
        if ((c & 0xc0) != 0x80) ++n;
    return n;
}

}  // namespace

ByT5Tokenizer::ByT5Tokenizer(std::vector<std::pair<std::string, std::int64_t>> added, int max_length)
    : added_(std::move(added)), max_length_(max_length) {
    // Python: sorted(names, key=len, reverse=True) is stable, so equal lengths keep the file order
    std::stable_sort(added_.begin(), added_.end(),
                     [](const auto& a, const auto& b) { return code_points(a.first) > code_points(b.first); });
    added_.erase(std::remove_if(added_.begin(), added_.end(), [](const auto& a) { return a.first.empty(); }),
                 added_.end());
}

ByT5Tokenizer ByT5Tokenizer::from_folder(const std::string& folder, int max_length) {
    const std::string path = folder + "/tokenizer_config.json";
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(Error::kUser, folder + ": tokenizer files not readable (" + path + "); rebuild the engine");
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<std::pair<std::string, std::int64_t>> added;
    try {
        const json::Value config = json::parse(ss.str());
        if (const json::Value* dec = config.find("added_tokens_decoder")) {
            for (const auto& m : dec->members) {
                const json::Value& content = m.second.at("content");
                // a later duplicate content overrides the id, as a Python dict does
                auto it = std::find_if(added.begin(), added.end(), [&](const auto& a) { return a.first == content.s; });
                const std::int64_t id = std::stoll(m.first);
                if (it != added.end()) it->second = id;
                else added.emplace_back(content.s, id);
            }
        }
    } catch (const std::exception& e) {
        throw Error(Error::kUser, folder + ": tokenizer files not readable (" + e.what() + "); rebuild the engine");
    }
    return ByT5Tokenizer(std::move(added), max_length);
}

std::vector<std::int64_t> ByT5Tokenizer::encode_one(const std::string& text) const {
    std::vector<std::int64_t> ids;
    std::size_t i = 0;
    while (i < text.size()) {
        bool matched = false;
        for (const auto& [name, id] : added_)
            if (text.compare(i, name.size(), name) == 0) {
                ids.push_back(id);
                i += name.size();
                matched = true;
                break;
            }
        if (!matched) ids.push_back(static_cast<unsigned char>(text[i++]) + kByteOffset);
    }
    if (ids.size() > static_cast<std::size_t>(std::max(max_length_ - 1, 0))) ids.resize(std::max(max_length_ - 1, 0));
    ids.push_back(kEos);
    return ids;
}

std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> ByT5Tokenizer::operator()(
    const std::vector<std::string>& prompts) const {
    const std::size_t L = static_cast<std::size_t>(max_length_);
    std::vector<std::int64_t> ids(prompts.size() * L, kPad), mask(prompts.size() * L, 0);
    for (std::size_t row = 0; row < prompts.size(); ++row) {
        const auto tokens = encode_one(prompts[row]);
        for (std::size_t k = 0; k < tokens.size() && k < L; ++k) {
            ids[row * L + k] = tokens[k];
            mask[row * L + k] = 1;
        }
    }
    return {ids, mask};
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& folder, const std::string& kind, int max_length, int pad_id) {
    if (kind == "byt5") return std::make_unique<ByT5Tokenizer>(ByT5Tokenizer::from_folder(folder, max_length));
    if (kind == "tokenizers") {
#ifdef PIXART_WITH_OPENVINO
        return openvino_tokenizer(folder, max_length, pad_id);
#else
        (void)pad_id;
        throw Error(Error::kUser, folder + ": tokenizer kind 'tokenizers' runs in C++ through OpenVINO (openvino-tokenizers), "
                                           "and this C++ runtime was built without OpenVINO; rebuild cpp/ with OpenVINO "
                                           "(pip install 'pixart-export[openvino]') or use the Python runtime");
#endif
    }
    throw Error(Error::kUser, folder + ": tokenizer kind '" + kind + "' is not supported by the C++ runtime; use the Python runtime");
}

}  // namespace pixart

// The `tokenizers` kind (T5 SentencePiece) in C++: the build's OpenVINO tokenizer model
// (tokenizer/openvino_tokenizer.xml, made by openvino-tokenizers from tokenizer.json with truncation and
// padding to max_length, and checked there against the `tokenizers` package) run on the CPU. Its operations
// (string tensors, SentencePiece/Unigram) live in the openvino-tokenizers extension library, looked up as:
//   1. $PIXART_OPENVINO_TOKENIZERS (the path of libopenvino_tokenizers.so),
//   2. the one CMake found at configure time (the openvino-tokenizers wheel beside the OpenVINO used).
#include <openvino/openvino.hpp>

#include <cstdlib>
#include <fstream>
#include <mutex>

#include "pixart/runtime.hpp"
#include "tokenizer.hpp"

namespace pixart {
namespace {

constexpr const char* kInstall =
    "pip install 'pixart-export[openvino]' (the openvino-tokenizers wheel of the installed OpenVINO) and rebuild cpp/, "
    "or set PIXART_OPENVINO_TOKENIZERS to its libopenvino_tokenizers.so";

std::string extension_library() {
    if (const char* env = std::getenv("PIXART_OPENVINO_TOKENIZERS"); env && *env) {
        if (!std::ifstream(env).good())
            throw Error(Error::kUser, std::string("PIXART_OPENVINO_TOKENIZERS=") + env + " is not a readable file");
        return env;
    }
#ifdef PIXART_OV_TOKENIZERS_LIB
    if (std::ifstream(PIXART_OV_TOKENIZERS_LIB).good()) return PIXART_OV_TOKENIZERS_LIB;
#endif
    return "";
}

class OvTokenizer : public Tokenizer {
  public:
    OvTokenizer(const std::string& folder, int max_length, int pad_id) : max_length_(max_length), pad_id_(pad_id) {
        const std::string xml = folder + "/openvino_tokenizer.xml";
        if (!std::ifstream(xml).good())
            throw Error(Error::kUser, folder + ": no openvino_tokenizer.xml, which the C++ runtime needs for a 'tokenizers' "
                                               "tokenizer; rebuild the engine with openvino-tokenizers installed (pip install "
                                               "'pixart-export[openvino]'), or use the Python runtime");
        const std::string lib = extension_library();
        if (lib.empty())
            throw Error(Error::kUser, folder + ": a 'tokenizers' tokenizer needs the openvino-tokenizers extension library, "
                                               "not found: " + std::string(kInstall));
        try {
            core_.add_extension(lib);
            model_ = core_.compile_model(core_.read_model(xml), "CPU");
            request_ = model_.create_infer_request();
        } catch (const ov::Exception& e) {
            throw Error(Error::kUser, folder + ": the OpenVINO tokenizer model does not load with " + lib + " (" + e.what() +
                                          "); rebuild the engine with the openvino-tokenizers of this OpenVINO");
        }
    }

    std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> operator()(
        const std::vector<std::string>& prompts) const override {
        const std::size_t n = prompts.size(), L = static_cast<std::size_t>(max_length_);
        std::vector<std::int64_t> ids(n * L, pad_id_), mask(n * L, 0);
        if (n == 0) return {ids, mask};
        std::lock_guard<std::mutex> lock(mutex_);  // one infer request
        ov::Tensor text(ov::element::string, ov::Shape{n});
        std::string* slots = text.data<std::string>();
        for (std::size_t k = 0; k < n; ++k) slots[k] = prompts[k];
        request_.set_input_tensor(0, text);
        request_.infer();
        copy("input_ids", ids);
        copy("attention_mask", mask);
        return {ids, mask};
    }

  private:
    // an output [n, T] into [n, L]: the first min(T, L) columns; the rest keeps its padding
    void copy(const std::string& name, std::vector<std::int64_t>& into) const {
        const ov::Tensor out = request_.get_tensor(name);
        const ov::Shape s = out.get_shape();
        const std::size_t L = static_cast<std::size_t>(max_length_);
        if (s.size() != 2 || s[0] * L != into.size())
            throw Error(Error::kInternal, "OpenVINO tokenizer output " + name + " has shape " + out.get_shape().to_string());
        const std::size_t T = s[1], cols = T < L ? T : L;
        for (std::size_t r = 0; r < s[0]; ++r)
            for (std::size_t c = 0; c < cols; ++c) {
                const std::size_t at = r * T + c;
                into[r * L + c] = out.get_element_type() == ov::element::i64 ? out.data<const std::int64_t>()[at]
                                  : out.get_element_type() == ov::element::i32
                                      ? out.data<const std::int32_t>()[at]
                                      : throw Error(Error::kInternal, "OpenVINO tokenizer output " + name + " is " +
                                                                          out.get_element_type().get_type_name());
            }
    }

    ov::Core core_;
    ov::CompiledModel model_;
    mutable ov::InferRequest request_;
    mutable std::mutex mutex_;
    int max_length_, pad_id_;
};

}  // namespace

std::unique_ptr<Tokenizer> openvino_tokenizer(const std::string& folder, int max_length, int pad_id) {
    return std::make_unique<OvTokenizer>(folder, max_length, pad_id);
}

}  // namespace pixart

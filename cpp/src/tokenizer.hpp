// Prompt -> (input_ids, attention_mask) as pixart_export/runtime/tokenizer.py does it.
// `byt5` (tiny): UTF-8 bytes + 3 (0/1/2 are pad/eos/unk), the added special tokens of
// tokenizer_config.json matched in the text first (longest first), truncated to L-1, `</s>` (1) appended,
// padded with 0 to L. `tokenizers` (T5 SentencePiece): the OpenVINO tokenizer model that the build writes
// beside tokenizer.json (openvino_tokenizer.xml, made by openvino-tokenizers and checked there against the
// `tokenizers` package), run with the openvino-tokenizers extension library; only with the OpenVINO backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace pixart {

class Tokenizer {
  public:
    virtual ~Tokenizer() = default;
    // ids and mask, each [prompts.size(), max_length] row-major
    virtual std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> operator()(
        const std::vector<std::string>& prompts) const = 0;
};

// the manifest's tokenizer record -> its tokenizer; Error(kUser) for a kind this build cannot run
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& folder, const std::string& kind, int max_length, int pad_id);

#ifdef PIXART_WITH_OPENVINO
std::unique_ptr<Tokenizer> openvino_tokenizer(const std::string& folder, int max_length, int pad_id);
#endif

class ByT5Tokenizer : public Tokenizer {
  public:
    ByT5Tokenizer(std::vector<std::pair<std::string, std::int64_t>> added, int max_length);
    static ByT5Tokenizer from_folder(const std::string& folder, int max_length);

    std::vector<std::int64_t> encode_one(const std::string& utf8) const;
    // ids and mask, each [prompts.size(), max_length] row-major
    std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> operator()(
        const std::vector<std::string>& prompts) const override;
    int max_length() const { return max_length_; }

  private:
    std::vector<std::pair<std::string, std::int64_t>> added_;  // longest (in code points) first
    int max_length_;
};

}  // namespace pixart

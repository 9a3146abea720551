// Prompt -> (input_ids, attention_mask) as pixart_export/runtime/tokenizer.py does it.
// `byt5` (tiny): UTF-8 bytes + 3 (0/1/2 are pad/eos/unk), the added special tokens of
// tokenizer_config.json matched in the text first (longest first), truncated to L-1, `</s>` (1) appended,
// padded with 0 to L. The `tokenizers` kind (T5 SentencePiece) is not implemented in C++ (yet).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pixart {

class ByT5Tokenizer {
  public:
    ByT5Tokenizer(std::vector<std::pair<std::string, std::int64_t>> added, int max_length);
    static ByT5Tokenizer from_folder(const std::string& folder, int max_length);

    std::vector<std::int64_t> encode_one(const std::string& utf8) const;
    // ids and mask, each [prompts.size(), max_length] row-major
    std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> operator()(const std::vector<std::string>& prompts) const;
    int max_length() const { return max_length_; }

  private:
    std::vector<std::pair<std::string, std::int64_t>> added_;  // longest (in code points) first
    int max_length_;
};

}  // namespace pixart

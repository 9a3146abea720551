// A small strict JSON reader (RFC 8259, plus what Python's json.loads also accepts: NaN, Infinity,
// -Infinity; a repeated key keeps its last value). Integers and floats stay apart, as in Python: the
// manifest schema checks `int` and `float` fields the way pixart_export/manifest.py does. Bounds, the
// same as manifest.py's (MAX_JSON_DEPTH, INT64, UTF-8): at most kMaxDepth containers around a value,
// integers within 64 bits, strings valid UTF-8 (raw bytes and \u escapes; a lone surrogate is refused).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pixart::json {

constexpr int kMaxDepth = 64;

class ParseError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct Value {
    enum class Kind { Null, Bool, Int, Float, String, Array, Object };
    Kind kind = Kind::Null;
    bool b = false;
    std::int64_t i = 0;
    double f = 0.0;
    std::string s;
    std::vector<Value> items;                            // Array
    std::vector<std::pair<std::string, Value>> members;  // Object, in file order, keys unique

    bool is_null() const { return kind == Kind::Null; }
    bool is_object() const { return kind == Kind::Object; }
    bool is_array() const { return kind == Kind::Array; }
    bool is_string() const { return kind == Kind::String; }
    bool is_int() const { return kind == Kind::Int; }
    bool is_number() const { return kind == Kind::Int || kind == Kind::Float; }
    double number() const { return kind == Kind::Int ? static_cast<double>(i) : f; }
    const Value* find(const std::string& key) const;  // nullptr when absent (objects only)
    const Value& at(const std::string& key) const;    // std::out_of_range when absent
};

Value parse(const std::string& text);  // ParseError "line L column C: ..." on bad input
std::string repr(const Value& v);      // a short Python-like rendering for error messages

}  // namespace pixart::json

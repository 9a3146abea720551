#include "json.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace pixart::json {

const Value* Value::find(const std::string& key) const {
    for (const auto& m : members)
        if (m.first == key) return &m.second;
    return nullptr;
}

const Value& Value::at(const std::string& key) const {
    if (const Value* v = find(key)) return *v;
    throw std::out_of_range("no key " + key);
}

namespace {

class Parser {
  public:
    explicit Parser(const std::string& t) : t_(t) {}

    Value document() {
        skip_ws();
        Value v = value(0);
        skip_ws();
        if (p_ != t_.size()) fail("extra data after the JSON value");
        return v;
    }

  private:
    const std::string& t_;
    std::size_t p_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        std::size_t line = 1, col = 1;
        for (std::size_t k = 0; k < p_ && k < t_.size(); ++k) {
            if (t_[k] == '\n') {
                ++line;
                col = 1;
            } else {
                ++col;
            }
        }
        throw ParseError("line " + std::to_string(line) + " column " + std::to_string(col) + ": " + what);
    }

    void skip_ws() {
        while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\n' || t_[p_] == '\r')) ++p_;
    }

    bool literal(const char* word) {
        std::size_t n = std::char_traits<char>::length(word);
        if (t_.compare(p_, n, word) == 0) {
            p_ += n;
            return true;
        }
        return false;
    }

    Value value(int depth) {
        if (depth > kMaxDepth) fail("nested deeper than " + std::to_string(kMaxDepth) + " levels");
        if (p_ >= t_.size()) fail("unexpected end of input");
        Value v;
        const char c = t_[p_];
        if (c == '{') return object(depth);
        if (c == '[') return array(depth);
        if (c == '"') {
            v.kind = Value::Kind::String;
            v.s = string();
            return v;
        }
        if (literal("true")) {
            v.kind = Value::Kind::Bool;
            v.b = true;
            return v;
        }
        if (literal("false")) {
            v.kind = Value::Kind::Bool;
            return v;
        }
        if (literal("null")) return v;
        if (literal("NaN")) {
            v.kind = Value::Kind::Float;
            v.f = std::numeric_limits<double>::quiet_NaN();
            return v;
        }
        if (literal("Infinity")) {
            v.kind = Value::Kind::Float;
            v.f = std::numeric_limits<double>::infinity();
            return v;
        }
        if (literal("-Infinity")) {
            v.kind = Value::Kind::Float;
            v.f = -std::numeric_limits<double>::infinity();
            return v;
        }
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        fail(std::string("unexpected character '") + c + "'");
    }

    Value object(int depth) {
        Value v;
        v.kind = Value::Kind::Object;
        ++p_;
        skip_ws();
        if (p_ < t_.size() && t_[p_] == '}') {
            ++p_;
            return v;
        }
        for (;;) {
            skip_ws();
            if (p_ >= t_.size() || t_[p_] != '"') fail("expected a string key");
            std::string key = string();
            skip_ws();
            if (p_ >= t_.size() || t_[p_] != ':') fail("expected ':'");
            ++p_;
            skip_ws();
            Value item = value(depth + 1);
            bool replaced = false;
            for (auto& m : v.members)
                if (m.first == key) {
                    m.second = std::move(item);
                    replaced = true;
                    break;
                }
            if (!replaced) v.members.emplace_back(std::move(key), std::move(item));
            skip_ws();
            if (p_ < t_.size() && t_[p_] == ',') {
                ++p_;
                continue;
            }
            if (p_ < t_.size() && t_[p_] == '}') {
                ++p_;
                return v;
            }
            fail("expected ',' or '}'");
        }
    }

    Value array(int depth) {
        Value v;
        v.kind = Value::Kind::Array;
        ++p_;
        skip_ws();
        if (p_ < t_.size() && t_[p_] == ']') {
            ++p_;
            return v;
        }
        for (;;) {
            skip_ws();
            v.items.push_back(value(depth + 1));
            skip_ws();
            if (p_ < t_.size() && t_[p_] == ',') {
                ++p_;
                continue;
            }
            if (p_ < t_.size() && t_[p_] == ']') {
                ++p_;
                return v;
            }
            fail("expected ',' or ']'");
        }
    }

    unsigned hex4() {
        if (p_ + 4 > t_.size()) fail("truncated \\u escape");
        unsigned u = 0;
        for (int k = 0; k < 4; ++k) {
            const char h = t_[p_++];
            u <<= 4;
            if (h >= '0' && h <= '9') u |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') u |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') u |= static_cast<unsigned>(h - 'A' + 10);
            else fail("bad \\u escape");
        }
        return u;
    }

    // one UTF-8 sequence starting at t_[p_ - 1] (its lead byte c, already taken), appended to out; the
    // shortest form only, no surrogates, at most U+10FFFF (what Python's bytes.decode("utf-8") accepts)
    void take_utf8(std::string& out, unsigned char c) {
        const std::size_t n = (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xe ? 2 : (c >> 3) == 0x1e ? 3 : 0;
        if (n == 0 || p_ + n > t_.size()) fail("invalid UTF-8 in a string");
        std::uint32_t cp = n == 1 ? (c & 0x1fu) : n == 2 ? (c & 0x0fu) : (c & 0x07u);
        for (std::size_t k = 0; k < n; ++k) {
            const unsigned char d = static_cast<unsigned char>(t_[p_ + k]);
            if ((d & 0xc0) != 0x80) fail("invalid UTF-8 in a string");
            cp = (cp << 6) | (d & 0x3fu);
        }
        static const std::uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) fail("invalid UTF-8 in a string");
        out += static_cast<char>(c);
        out.append(t_, p_, n);
        p_ += n;
    }

    static void put_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xc0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xe0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        } else {
            out += static_cast<char>(0xf0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        }
    }

    std::string string() {
        ++p_;  // opening quote
        std::string out;
        for (;;) {
            if (p_ >= t_.size()) fail("unterminated string");
            const unsigned char c = static_cast<unsigned char>(t_[p_++]);
            if (c == '"') return out;
            if (c < 0x20) fail("control character in a string");
            if (c >= 0x80) {
                take_utf8(out, c);
                continue;
            }
            if (c != '\\') {
                out += static_cast<char>(c);
                continue;
            }
            if (p_ >= t_.size()) fail("unterminated escape");
            const char e = t_[p_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xd800 && cp < 0xdc00 && p_ + 6 <= t_.size() && t_[p_] == '\\' && t_[p_ + 1] == 'u') {
                        const std::size_t save = p_;
                        p_ += 2;
                        const unsigned lo = hex4();
                        if (lo >= 0xdc00 && lo < 0xe000) cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        else p_ = save;
                    }
                    // a lone surrogate is no UTF-8 text (Python keeps it in a str; manifest.py refuses it)
                    if (cp >= 0xd800 && cp < 0xe000) fail("a lone surrogate escape: not valid UTF-8");
                    put_utf8(out, cp);
                    break;
                }
                default: fail(std::string("bad escape \\") + e);
            }
        }
    }

    Value number() {
        const std::size_t start = p_;
        bool is_float = false;
        if (t_[p_] == '-') ++p_;
        if (p_ >= t_.size() || !(t_[p_] >= '0' && t_[p_] <= '9')) fail("bad number");
        if (t_[p_] == '0') {
            ++p_;
        } else {
            while (p_ < t_.size() && t_[p_] >= '0' && t_[p_] <= '9') ++p_;
        }
        if (p_ < t_.size() && t_[p_] == '.') {
            is_float = true;
            ++p_;
            if (p_ >= t_.size() || !(t_[p_] >= '0' && t_[p_] <= '9')) fail("bad number");
            while (p_ < t_.size() && t_[p_] >= '0' && t_[p_] <= '9') ++p_;
        }
        if (p_ < t_.size() && (t_[p_] == 'e' || t_[p_] == 'E')) {
            is_float = true;
            ++p_;
            if (p_ < t_.size() && (t_[p_] == '+' || t_[p_] == '-')) ++p_;
            if (p_ >= t_.size() || !(t_[p_] >= '0' && t_[p_] <= '9')) fail("bad number");
            while (p_ < t_.size() && t_[p_] >= '0' && t_[p_] <= '9') ++p_;
        }
        const std::string text = t_.substr(start, p_ - start);
        Value v;
        if (is_float) {
            v.kind = Value::Kind::Float;
            v.f = std::strtod(text.c_str(), nullptr);
        } else {
            errno = 0;
            char* end = nullptr;
            const long long n = std::strtoll(text.c_str(), &end, 10);
            if (errno == ERANGE) fail("integer " + text + " is out of the 64-bit range");
            v.kind = Value::Kind::Int;
            v.i = n;
        }
        return v;
    }
};

}  // namespace

Value parse(const std::string& text) { return Parser(text).document(); }

std::string repr(const Value& v) {
    switch (v.kind) {
        case Value::Kind::Null: return "None";
        case Value::Kind::Bool: return v.b ? "True" : "False";
        case Value::Kind::Int: return std::to_string(v.i);
        case Value::Kind::Float: {
            char buf[40];
            std::snprintf(buf, sizeof buf, "%.17g", v.f);
            return buf;
        }
        case Value::Kind::String: return "'" + v.s + "'";
        case Value::Kind::Array: return "[...]";
        case Value::Kind::Object: return "{...}";
    }
    return "?";
}

}  // namespace pixart::json

// See json.h.
#include "json.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>

namespace qatkit::nn::json {
namespace {

const char* type_name(Value::Type t) {
  switch (t) {
    case Value::Type::kNull:
      return "null";
    case Value::Type::kBool:
      return "a bool";
    case Value::Type::kNumber:
      return "a number";
    case Value::Type::kString:
      return "a string";
    case Value::Type::kArray:
      return "an array";
    case Value::Type::kObject:
      return "an object";
  }
  return "?";
}

class Parser {
 public:
  Parser(std::string_view text, std::string_view source) : s_(text), source_(source) {}

  Value document() {
    Value v = value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(std::string_view what) const {
    TORCH_CHECK_VALUE(false, fmt::format("{}: malformed JSON at byte {}: {}", source_, pos_, what));
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of input");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}'", c));
    ++pos_;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Value value(int depth) {
    if (depth > 64) fail("nesting deeper than 64 levels");
    const char c = peek();
    Value v;
    if (c == '{') {
      v.type = Value::Type::kObject;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      while (true) {
        if (peek() != '"') fail("expected a string key");
        std::string key = string();
        expect(':');
        if (v.find(key) != nullptr) fail(fmt::format("duplicate key '{}'", key));
        v.object.emplace_back(std::move(key), value(depth + 1));
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.type = Value::Type::kArray;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.array.push_back(value(depth + 1));
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.type = Value::Type::kString;
      v.string = string();
      return v;
    }
    if (literal("true")) return Value::of(true);
    if (literal("false")) return Value::of(false);
    if (literal("null")) return v;
    return number();
  }

  /// The four hex digits of a \u escape (exactly four; strtol also took a sign or spaces).
  std::uint32_t hex4() {
    if (pos_ + 4 > s_.size()) fail("short \\u escape");
    std::uint32_t code = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = s_[pos_ + i];
      const int d = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
      if (d < 0) fail("bad \\u escape");
      code = code * 16 + static_cast<std::uint32_t>(d);
    }
    pos_ += 4;
    return code;
  }

  static void append_utf8(std::uint32_t code, std::string& out) {
    if (code < 0x80) {
      out.push_back(static_cast<char>(code));
    } else if (code < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (code >> 6)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else if (code < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (code >> 12)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (code >> 18)));
      out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    }
  }

  std::string string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out.push_back(e);
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'u': {
          // any code point, as UTF-8: Python's json.dumps escapes every non-ASCII character
          // (ensure_ascii), so a layer named "capa_ñ" arrives as "capa_\u00f1" (refused here before
          // 2026-12-07); one outside the BMP as a surrogate pair; a lone surrogate is no character
          std::uint32_t code = hex4();
          if (code >= 0xDC00 && code <= 0xDFFF) fail("a lone surrogate \\u escape");
          if (code >= 0xD800 && code <= 0xDBFF) {
            if (s_.substr(pos_, 2) != "\\u") fail("a lone surrogate \\u escape");
            pos_ += 2;
            const std::uint32_t low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("a lone surrogate \\u escape");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(code, out);
          break;
        }
        default:
          fail(fmt::format("unknown escape '\\{}'", e));
      }
    }
  }

  // JSON's number grammar, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, as Python's json reads it
  // (strtod also took "+1", "01", ".5", "1." and hex, which Python refuses)
  Value number() {
    const std::size_t start = pos_;
    const auto digits = [&] {
      const std::size_t from = pos_;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
      return pos_ - from;
    };
    const auto bad = [&] {
      pos_ = start;
      fail("expected a value");
    };
    if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
    const bool zero = pos_ < s_.size() && s_[pos_] == '0';
    const std::size_t int_digits = digits();
    if (int_digits == 0 || (zero && int_digits > 1)) bad();
    bool is_float = false;
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) bad();
      is_float = true;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) bad();
      is_float = true;
    }
    // std::from_chars: the C locale's '.' whatever locale the program set (strtod read "0.01" as 0
    // and stopped under a locale with a decimal comma), correctly rounded
    const std::string_view text = s_.substr(start, pos_ - start);
    double d = 0.0;
    auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), d);
    const std::size_t e = text.find_first_of("eE");  // (the grammar put a digit or sign after it)
    if (err == std::errc::result_out_of_range && e != std::string_view::npos && text[e + 1] == '-') {
      d = text[0] == '-' ? -0.0 : 0.0;  // an underflow (1e-400) is 0, as Python's json reads it
      err = std::errc();
    }
    if (err != std::errc() || end != text.data() + text.size() || !std::isfinite(d)) bad();  // (1e999: inf in Python)
    Value v = Value::of(d);
    v.float_literal = is_float;
    return v;
  }

  std::string_view s_;
  std::string_view source_;
  std::size_t pos_ = 0;
};

void dump_string(const std::string& s, std::string& out) {
  out.push_back('"');
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<int>(c));
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

void dump_into(const Value& v, std::string& out) {
  switch (v.type) {
    case Value::Type::kNull:
      out += "null";
      return;
    case Value::Type::kBool:
      out += v.boolean ? "true" : "false";
      return;
    case Value::Type::kNumber:
      if (std::nearbyint(v.number) == v.number && std::fabs(v.number) < 9.0e15) {
        // (a float literal stays one: 8.0 read from a file and dumped is no int to a reader after)
        out += fmt::format(v.float_literal ? "{}.0" : "{}", static_cast<std::int64_t>(v.number));
      } else {
        out += fmt::format("{}", v.number);  // shortest round-trip form
      }
      return;
    case Value::Type::kString:
      dump_string(v.string, out);
      return;
    case Value::Type::kArray:
      out.push_back('[');
      for (std::size_t i = 0; i < v.array.size(); ++i) {
        if (i) out.push_back(',');
        dump_into(v.array[i], out);
      }
      out.push_back(']');
      return;
    case Value::Type::kObject:
      out.push_back('{');
      for (std::size_t i = 0; i < v.object.size(); ++i) {
        if (i) out.push_back(',');
        dump_string(v.object[i].first, out);
        out.push_back(':');
        dump_into(v.object[i].second, out);
      }
      out.push_back('}');
      return;
  }
}

}  // namespace

const Value* Value::find(std::string_view key) const {
  if (type != Type::kObject) return nullptr;
  for (const auto& [k, v] : object) {
    if (k == key) return &v;
  }
  return nullptr;
}

const Value& Value::at(std::string_view key, std::string_view where) const {
  const Value* v = find(key);
  TORCH_CHECK_VALUE(v != nullptr, fmt::format("{}: missing key '{}'", where, key));
  return *v;
}

const std::string& Value::as_string(std::string_view where) const {
  TORCH_CHECK_VALUE(type == Type::kString, fmt::format("{} must be a string, got {}", where, type_name(type)));
  return string;
}

bool Value::is_int() const {
  return type == Type::kNumber && !float_literal && std::fabs(number) < 9.0e15 && std::nearbyint(number) == number;
}

double Value::as_number(std::string_view where) const {
  TORCH_CHECK_VALUE(type == Type::kNumber, fmt::format("{} must be a number, got {}", where, type_name(type)));
  return number;
}

std::int64_t Value::as_int(std::string_view where) const {
  const double d = as_number(where);
  TORCH_CHECK_VALUE(!float_literal && std::nearbyint(d) == d && std::fabs(d) < 9.0e15,
                    fmt::format("{} must be an integer, got {}{}", where, d,
                                float_literal && std::nearbyint(d) == d ? " (written as a float)" : ""));
  return static_cast<std::int64_t>(d);
}

bool Value::as_bool(std::string_view where) const {
  TORCH_CHECK_VALUE(type == Type::kBool, fmt::format("{} must be a bool, got {}", where, type_name(type)));
  return boolean;
}

Value Value::of(bool b) {
  Value v;
  v.type = Type::kBool;
  v.boolean = b;
  return v;
}

Value Value::of(double d) {
  Value v;
  v.type = Type::kNumber;
  v.number = d;
  return v;
}

Value Value::of(std::int64_t i) { return of(static_cast<double>(i)); }

Value Value::of(std::string s) {
  Value v;
  v.type = Type::kString;
  v.string = std::move(s);
  return v;
}

Value& Value::set(const std::string& key, Value v) {
  if (type == Type::kNull) type = Type::kObject;
  TORCH_CHECK(type == Type::kObject, "json::Value::set on a non-object");
  for (auto& [k, old] : object) {
    if (k == key) {
      old = std::move(v);
      return *this;
    }
  }
  object.emplace_back(key, std::move(v));
  return *this;
}

std::size_t invalid_utf8_at(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
    } else {
      return i;
    }
    if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

Value parse(std::string_view text, std::string_view source) {
  if (const std::size_t bad = invalid_utf8_at(text); bad != std::string_view::npos) {
    TORCH_CHECK_VALUE(false, fmt::format("{}: malformed JSON at byte {}: not valid UTF-8", source, bad));
  }
  return Parser(text, source).document();
}

std::string dump(const Value& v) {
  std::string out;
  dump_into(v, out);
  return out;
}

}  // namespace qatkit::nn::json

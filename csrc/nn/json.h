// A small JSON reader / writer for qatkit's own tables and records (the preset table compiled into
// libqatkit, the spec a C++ checkpoint records). Not a general-purpose library: UTF-8 is checked
// and passes through as bytes, \u escapes become UTF-8 (a lone surrogate is refused), numbers are
// doubles (a number written with a fraction or an exponent, as Python's json reads to a float, is no
// integer: as_int refuses 8.0 and 1e3 as Python's loader does).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qatkit::nn::json {

struct Value {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;
  double number = 0.0;
  bool float_literal = false;  ///< parsed from a number with a '.' or an exponent (Python reads a float)
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  ///< in file order

  bool is_null() const { return type == Type::kNull; }
  /// A number written as an integer (no fraction, no exponent) with an integral value: what Python's
  /// json reads to an int.
  bool is_int() const;
  /// The member `key` of an object, or nullptr (also for non-objects).
  const Value* find(std::string_view key) const;
  /// The member `key`; ValueError naming `where` and the key when it is missing.
  const Value& at(std::string_view key, std::string_view where) const;
  /// Typed reads; ValueError naming `where` and the expected type on a mismatch.
  const std::string& as_string(std::string_view where) const;
  double as_number(std::string_view where) const;
  std::int64_t as_int(std::string_view where) const;
  bool as_bool(std::string_view where) const;

  static Value null() { return {}; }
  static Value of(bool b);
  static Value of(double d);
  static Value of(std::int64_t i);
  static Value of(std::string s);
  static Value of(const char* s) { return of(std::string(s)); }
  /// Sets (or replaces) member `key` of an object value.
  Value& set(const std::string& key, Value v);
};

/// Parses `text`; ValueError naming `source` and the byte offset on malformed input (text that is
/// not well-formed UTF-8 among it: JSON is UTF-8, and Python's readers refuse it too).
Value parse(std::string_view text, std::string_view source);

/// The offset of the first byte of `s` that is not well-formed UTF-8 (overlong forms, surrogates and
/// code points past U+10FFFF are not), or std::string_view::npos.
std::size_t invalid_utf8_at(std::string_view s);

/// Compact JSON with members in insertion order; integral numbers print without a fraction (but a
/// parsed float literal as "8.0").
std::string dump(const Value& v);

}  // namespace qatkit::nn::json

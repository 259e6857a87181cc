// A strict reader of the one-line JSON objects the hl7 tool prints: flat objects whose values
// are strings, integers, booleans or null. Enough to check that each line is valid JSON of that shape.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace hl7::test {

struct json_null {
    friend bool operator==(json_null, json_null) { return true; }
};
using json_value = std::variant<json_null, std::string, std::int64_t, bool>;
using json_object = std::map<std::string, json_value>;

namespace detail {

class flat_json_reader {
public:
    explicit flat_json_reader(std::string_view text) : s_(text) {}

    std::optional<json_object> object()
    {
        json_object result;
        if (!eat('{'))
            return std::nullopt;
        if (eat('}'))
            return finish(result);
        do {
            auto key = string();
            if (!key || !eat(':'))
                return std::nullopt;
            auto v = value();
            if (!v || !result.emplace(*key, *v).second)
                return std::nullopt;
        } while (eat(','));
        if (!eat('}'))
            return std::nullopt;
        return finish(result);
    }

private:
    std::optional<json_object> finish(json_object& result)
    {
        skip_space();
        return pos_ == s_.size() ? std::optional<json_object>(std::move(result)) : std::nullopt;
    }

    void skip_space()
    {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t'))
            ++pos_;
    }

    bool eat(char c)
    {
        skip_space();
        if (pos_ < s_.size() && s_[pos_] == c) {
            ++pos_;
            return true;
        }
        return false;
    }

    std::optional<json_value> value()
    {
        skip_space();
        if (s_.substr(pos_).starts_with("null")) {
            pos_ += 4;
            return json_null{};
        }
        if (s_.substr(pos_).starts_with("true")) {
            pos_ += 4;
            return true;
        }
        if (s_.substr(pos_).starts_with("false")) {
            pos_ += 5;
            return false;
        }
        if (pos_ < s_.size() && s_[pos_] == '"') {
            auto str = string();
            if (!str)
                return std::nullopt;
            return *str;
        }
        const std::size_t start = pos_;
        if (pos_ < s_.size() && s_[pos_] == '-')
            ++pos_;
        while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9')
            ++pos_;
        const std::string digits(s_.substr(start, pos_ - start));
        if (digits.empty() || digits == "-")
            return std::nullopt;
        return static_cast<std::int64_t>(std::stoll(digits));
    }

    std::optional<std::string> string()
    {
        if (!eat('"'))
            return std::nullopt;
        std::string out;
        while (pos_ < s_.size()) {
            const char c = s_[pos_++];
            if (c == '"')
                return out;
            if (static_cast<unsigned char>(c) < 0x20)
                return std::nullopt; // control characters must be escaped
            if (c != '\\') {
                out += c;
                continue;
            }
            if (pos_ >= s_.size())
                return std::nullopt;
            const char e = s_[pos_++];
            switch (e) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'u': {
                if (pos_ + 4 > s_.size())
                    return std::nullopt;
                const unsigned long cp = std::stoul(std::string(s_.substr(pos_, 4)), nullptr, 16);
                pos_ += 4;
                if (cp < 0x80) {
                    out += static_cast<char>(cp);
                } else if (cp < 0x800) {
                    out += static_cast<char>(0xC0 | (cp >> 6));
                    out += static_cast<char>(0x80 | (cp & 0x3F));
                } else {
                    out += static_cast<char>(0xE0 | (cp >> 12));
                    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
                    out += static_cast<char>(0x80 | (cp & 0x3F));
                }
                break;
            }
            default: return std::nullopt;
            }
        }
        return std::nullopt;
    }

    std::string_view s_;
    std::size_t pos_ = 0;
};

} // namespace detail

/// The object on one line of JSON, or nullopt when the line is not a flat JSON object.
inline std::optional<json_object> parse_flat_json(std::string_view line)
{
    return detail::flat_json_reader(line).object();
}

} // namespace hl7::test

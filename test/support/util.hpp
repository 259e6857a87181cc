// Helpers shared by the test suites.
#pragma once

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace hl7::test {

/// The bytes of a file in the repository's samples/ directory.
inline std::string read_sample(const std::string& name)
{
    std::ifstream in(std::string(HL7_SAMPLES_DIR) + "/" + name, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot open sample " + name);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

/// `prefix` followed by the decimal `n`, as in `label("MSG", 7)` == "MSG7". (Written out because
/// GCC 12 warns falsely, -Wrestrict, about `"MSG" + std::to_string(n)` in release builds.)
inline std::string label(std::string_view prefix, long long n)
{
    std::string s(prefix);
    s += std::to_string(n);
    return s;
}

/// Turns the newlines of a readable literal into the CR segment terminators of HL7.
inline std::string cr(std::string text)
{
    for (char& c : text)
        if (c == '\n')
            c = '\r';
    return text;
}

} // namespace hl7::test

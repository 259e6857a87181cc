// Parses arbitrary text as a path. Invariants: no crash; an accepted path prints as a
// canonical text that parses back to the same path; a lookup with it never crashes.
#include <hl7/model/message.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    static const hl7::message sample =
        hl7::message::parse(std::string_view("MSH|^~\\&|A|B\rPID|1||X^Y~Z&W\rOBX|1\rOBX|2|NM|c||5\r")).value();
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto p = hl7::path::parse(text);
    if (!p) {
        if (p.error() != hl7::errc::invalid_path)
            __builtin_trap();
        return 0;
    }
    auto back = hl7::path::parse(p.value().to_string());
    if (!back || !(back.value() == p.value()))
        __builtin_trap();
    (void)sample.get(p.value());
    (void)sample.count(p.value());
    hl7::message copy = sample;
    (void)copy.set(p.value(), "v");
    return 0;
}

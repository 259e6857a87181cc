// libFuzzer target for the MLLP decoder.
//
// Input: byte 0 chooses the chunking, byte 1 a small max_frame, the rest is the stream.
// The stream is decoded once as a single chunk and once in chunks, each chunk in its own
// exactly sized heap block so that the sanitizers catch reads past a chunk. Both runs must
// agree, every frame must fit max_frame and hold no 0x0B or 0x1C, and every frame must come
// back unchanged from encode() and a fresh decoder.
#include <hl7/model/mllp.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace {

using event = std::variant<std::string, int>;  // a payload, or an error's value

struct run {
    std::vector<event> events;
    std::uint64_t skipped = 0;
    bool in_frame = false;

    bool operator==(const run&) const = default;
};

void check(bool ok)
{
    if (!ok)
        __builtin_trap();
}

void drain(hl7::mllp::decoder& decoder, run& out)
{
    while (auto frame = decoder.next()) {
        if (*frame) {
            const std::string_view payload = frame->value();
            check(payload.size() <= decoder.max_frame());
            check(payload.find_first_of("\x0b\x1c") == std::string_view::npos);
            out.events.emplace_back(std::string(payload));
            continue;
        }
        check(frame->error() == hl7::errc::frame_too_large || frame->error() == hl7::errc::invalid_frame);
        out.events.emplace_back(frame->error().value());
    }
}

run finish(const hl7::mllp::decoder& decoder, run out)
{
    out.skipped = decoder.skipped_bytes();
    out.in_frame = decoder.in_frame();
    return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size < 2)
        return 0;
    std::minstd_rand rng(data[0] + 1u);
    // Chunks of 1 to 1, 2, 4, ... 128 bytes: byte splits matter as much as longer runs.
    std::uniform_int_distribution<std::size_t> chunk_size(1, std::size_t{1} << (data[0] % 8));
    const std::size_t max_frame = data[1] % 64;
    const std::string_view stream(reinterpret_cast<const char*>(data + 2), size - 2);

    hl7::mllp::decoder whole(max_frame);
    whole.feed(stream);
    run expected;
    drain(whole, expected);
    expected = finish(whole, std::move(expected));
    check(expected.skipped <= stream.size());

    hl7::mllp::decoder chunked(max_frame);
    run actual;
    for (std::size_t at = 0; at < stream.size();) {
        const std::size_t n = std::min(chunk_size(rng), stream.size() - at);
        const auto chunk = std::make_unique<char[]>(n);
        std::memcpy(chunk.get(), stream.data() + at, n);
        chunked.feed(std::string_view(chunk.get(), n));
        drain(chunked, actual);
        at += n;
    }
    check(finish(chunked, std::move(actual)) == expected);

    for (const auto& e : expected.events) {
        if (const auto* payload = std::get_if<std::string>(&e)) {
            const std::string framed = hl7::mllp::encode(*payload);
            hl7::mllp::decoder again(max_frame);
            again.feed(framed);
            auto frame = again.next();
            check(frame.has_value() && frame->has_value() && frame->value() == *payload);
        }
    }
    return 0;
}

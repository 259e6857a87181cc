#include <hl7/model/mllp.hpp>

#include "model/mllp_scan.hpp"

#include "support/util.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <variant>
#include <vector>

// Counts the bytes allocated through operator new, so that a test can show that an
// oversized frame streams through the decoder without being buffered. Not inlined, or g++
// takes a malloc() meeting an operator delete (or new meeting free()) for a mismatch.
namespace {
std::size_t allocated_bytes = 0;
}

[[gnu::noinline]] void* operator new(std::size_t size)
{
    allocated_bytes += size;
    if (void* p = std::malloc(size == 0 ? 1 : size))
        return p;
    throw std::bad_alloc();
}

[[gnu::noinline]] void operator delete(void* p) noexcept
{
    std::free(p);
}

[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept
{
    std::free(p);
}

namespace {

using hl7::errc;
using hl7::mllp::decoder;
using hl7::mllp::encode;
using hl7::mllp::encode_into;

const std::string sb(1, hl7::mllp::start_block);
const std::string eb(1, hl7::mllp::end_block);
const std::string cr(1, hl7::mllp::carriage_return);
const std::string lf = "\n";

// What next() returned: a payload or an error.
using event = std::variant<std::string, errc>;

struct decoded {
    std::vector<event> events;
    std::uint64_t skipped = 0;
    bool in_frame = false;

    bool operator==(const decoded&) const = default;
};

// Calls next() until it has nothing more.
std::vector<event> drain(decoder& d)
{
    std::vector<event> events;
    while (auto frame = d.next()) {
        if (*frame) {
            events.emplace_back(std::string(frame->value()));
            continue;
        }
        REQUIRE(frame->error().category() == hl7::error_category());
        events.emplace_back(static_cast<errc>(frame->error().value()));
    }
    return events;
}

// Feeds one chunk and calls next() until it has nothing more; the chunk outlives the calls.
std::vector<event> feed(decoder& d, const std::string& chunk)
{
    d.feed(chunk);
    return drain(d);
}

// Decodes `stream` fed in chunks that end at the given offsets (and at the end of the stream).
decoded decode_split(std::string_view stream, const std::vector<std::size_t>& cuts, std::size_t max_frame)
{
    decoder d(max_frame);
    decoded out;
    std::size_t begin = 0;
    for (std::size_t i = 0; i <= cuts.size(); ++i) {
        const std::size_t end = i < cuts.size() ? cuts[i] : stream.size();
        d.feed(stream.substr(begin, end - begin));
        for (auto& e : drain(d))
            out.events.push_back(std::move(e));
        begin = end;
    }
    out.skipped = d.skipped_bytes();
    out.in_frame = d.in_frame();
    return out;
}

decoded decode_whole(std::string_view stream, std::size_t max_frame = hl7::mllp::default_max_frame)
{
    return decode_split(stream, {}, max_frame);
}

// Cut points of a random chunking with chunks of 1 to max_chunk bytes.
std::vector<std::size_t> random_cuts(std::size_t size, std::size_t max_chunk, std::mt19937& rng)
{
    std::uniform_int_distribution<std::size_t> chunk(1, max_chunk);
    std::vector<std::size_t> cuts;
    for (std::size_t at = chunk(rng); at < size; at += chunk(rng))
        cuts.push_back(at);
    return cuts;
}

std::array<std::string, 4> samples()
{
    return {
        hl7::test::read_sample("adt_a01.hl7"),
        hl7::test::read_sample("oru_r01.hl7"),
        hl7::test::read_sample("ack_adt_a01.hl7"),
        hl7::test::read_sample("ack_oru_r01.hl7"),
    };
}

// A stream and what it decodes to.
struct test_stream {
    std::string bytes;
    decoded expected;
};

// The four samples framed back to back.
test_stream make_sample_stream()
{
    test_stream s;
    for (const auto& payload : samples()) {
        s.bytes += encode(payload);
        s.expected.events.emplace_back(payload);
    }
    return s;
}

// A stream with every kind of irregularity, for a decoder with max_frame 16.
constexpr std::size_t hostile_max_frame = 16;

test_stream make_hostile_stream()
{
    test_stream s;
    auto add = [&](const std::string& bytes, std::vector<event> events) {
        s.bytes += bytes;
        for (auto& e : events)
            s.expected.events.push_back(std::move(e));
    };
    add("noise", {});
    add(sb + "hello" + eb + cr + lf, {"hello"});
    add(sb + eb + cr, {""});
    add(sb + "bare" + eb, {"bare"});
    add(sb + "ab" + sb + "cd" + eb + cr, {errc::invalid_frame, "cd"});
    add(sb + std::string(17, 'x') + eb + cr + "zz", {errc::frame_too_large});
    add(sb + std::string(16, 'y') + eb + cr, {std::string(16, 'y')});
    add(sb + std::string(20, 'x') + sb + "in" + eb + cr, {errc::frame_too_large, "in"});
    add(eb + cr, {});
    add(sb + "tail" + eb + cr + cr, {"tail"});
    add(sb + "unfinished", {});
    // "noise", the LF, the stray 0x1C 0x0D and the second 0x0D; "zz" belongs to the
    // oversized frame and is dropped without being counted.
    s.expected.skipped = 5 + 1 + 2 + 1;
    s.expected.in_frame = true;
    return s;
}

} // namespace

TEST_CASE("encode wraps a payload in 0x0B and 0x1C 0x0D")
{
    CHECK(encode("MSH|x") == sb + "MSH|x" + eb + cr);
    CHECK(encode("") == sb + eb + cr);
    const std::string adt = hl7::test::read_sample("adt_a01.hl7");
    CHECK(encode(adt).size() == adt.size() + hl7::mllp::overhead);
}

TEST_CASE("encode_into writes the frame into a buffer of exactly the encoded size")
{
    const std::string payload = "MSH|^~\\&|A";
    std::string buffer(payload.size() + hl7::mllp::overhead, '?');
    auto written = encode_into(payload, buffer);
    REQUIRE(written.has_value());
    CHECK(written.value() == buffer.size());
    CHECK(buffer == encode(payload));
}

TEST_CASE("encode_into leaves the rest of a larger buffer alone")
{
    std::string buffer(10, '?');
    auto written = encode_into("ab", buffer);
    REQUIRE(written.has_value());
    CHECK(written.value() == 5);
    CHECK(buffer == encode("ab") + "?????");
}

TEST_CASE("encode_into into a buffer one byte too small fails and leaves the buffer untouched")
{
    const std::string payload = "MSH|^~\\&|A";
    std::string buffer(payload.size() + hl7::mllp::overhead - 1, '?');
    auto written = encode_into(payload, buffer);
    REQUIRE(written.has_error());
    CHECK(written.error() == errc::buffer_too_small);
    CHECK(buffer == std::string(buffer.size(), '?'));
}

TEST_CASE("encode_into frames an empty payload in three bytes and needs all three")
{
    std::string exact(3, '?');
    auto written = encode_into("", exact);
    REQUIRE(written.has_value());
    CHECK(written.value() == 3);
    CHECK(exact == sb + eb + cr);
    std::string from_null(3, '?');
    CHECK(encode_into(std::string_view(), from_null).value() == 3);
    CHECK(from_null == sb + eb + cr);

    std::string small(2, '?');
    CHECK(encode_into("", small).error() == errc::buffer_too_small);
    CHECK(small == "??");
    CHECK(encode_into("", std::span<char>()).error() == errc::buffer_too_small);
}

TEST_CASE("a new decoder has the default maximum frame size and is outside any frame")
{
    decoder d;
    CHECK(d.max_frame() == hl7::mllp::default_max_frame);
    CHECK(d.max_frame() == std::size_t{16} << 20);
    CHECK_FALSE(d.in_frame());
    CHECK(d.skipped_bytes() == 0);
    CHECK_FALSE(d.next().has_value());
    d.feed("");
    CHECK_FALSE(d.next().has_value());
    CHECK(decoder(42).max_frame() == 42);
}

TEST_CASE("an empty payload frame decodes to an empty payload")
{
    CHECK(decode_whole(sb + eb + cr) == decoded{{""}, 0, false});
    CHECK(decode_whole(sb + eb + cr + sb + eb + cr) == decoded{{"", ""}, 0, false});
}

TEST_CASE("every sample survives encoding and decoding")
{
    for (const auto& payload : samples()) {
        CHECK(decode_whole(encode(payload)) == decoded{{payload}, 0, false});
        CHECK(decode_whole(encode(payload), payload.size()) == decoded{{payload}, 0, false});
    }
}

TEST_CASE("many frames in one chunk all decode, in order, as views into the chunk")
{
    std::string stream;
    for (int i = 0; i < 1000; ++i)
        stream += encode("MSH|" + std::to_string(i));
    decoder d;
    d.feed(stream);
    std::size_t offset = 0;
    for (int i = 0; i < 1000; ++i) {
        CAPTURE(i);
        auto frame = d.next();
        REQUIRE(frame.has_value());
        REQUIRE(frame->has_value());
        CHECK(frame->value() == "MSH|" + std::to_string(i));
        CHECK(frame->value().data() == stream.data() + offset + 1);
        offset += frame->value().size() + hl7::mllp::overhead;
    }
    CHECK_FALSE(d.next().has_value());
    CHECK(d.skipped_bytes() == 0);
}

TEST_CASE("a frame wholly inside one chunk is returned as a view into that chunk")
{
    const std::string stream = "junk" + encode("first") + encode("second");
    decoder d;
    d.feed(stream);
    auto first = d.next();
    REQUIRE(first.has_value());
    REQUIRE(first->has_value());
    CHECK(first->value() == "first");
    CHECK(first->value().data() == stream.data() + 5);
    auto second = d.next();
    REQUIRE(second.has_value());
    REQUIRE(second->has_value());
    CHECK(second->value() == "second");
    CHECK(second->value().data() == stream.data() + 4 + encode("first").size() + 1);
    CHECK_FALSE(d.next().has_value());
}

TEST_CASE("a frame split across chunks is gathered into one payload")
{
    decoder d;
    CHECK(feed(d, sb + "MSH|").empty());
    CHECK(feed(d, "A|").empty());
    CHECK(feed(d, "B" + eb + cr) == std::vector<event>{"MSH|A|B"});
}

TEST_CASE("the sample stream split at every byte offset decodes to the same frames")
{
    const test_stream s = make_sample_stream();
    for (std::size_t cut = 0; cut <= s.bytes.size(); ++cut) {
        CAPTURE(cut);
        REQUIRE(decode_split(s.bytes, {cut}, hl7::mllp::default_max_frame) == s.expected);
    }
}

TEST_CASE("the sample stream fed one byte at a time decodes to the same frames")
{
    const test_stream s = make_sample_stream();
    std::vector<std::size_t> cuts;
    for (std::size_t i = 1; i < s.bytes.size(); ++i)
        cuts.push_back(i);
    CHECK(decode_split(s.bytes, cuts, hl7::mllp::default_max_frame) == s.expected);
}

TEST_CASE("the sample stream in random chunkings decodes to the same frames")
{
    const test_stream s = make_sample_stream();
    std::mt19937 rng(20240315);
    for (int round = 0; round < 500; ++round) {
        CAPTURE(round);
        const auto cuts = random_cuts(s.bytes.size(), round % 2 ? 64 : 2048, rng);
        REQUIRE(decode_split(s.bytes, cuts, hl7::mllp::default_max_frame) == s.expected);
    }
}

TEST_CASE("a stream with every kind of irregularity decodes as expected in one chunk")
{
    const test_stream s = make_hostile_stream();
    CHECK(decode_whole(s.bytes, hostile_max_frame) == s.expected);
}

TEST_CASE("a stream with every kind of irregularity decodes the same when split at any two byte offsets")
{
    const test_stream s = make_hostile_stream();
    for (std::size_t first = 0; first <= s.bytes.size(); ++first) {
        for (std::size_t second = first; second <= s.bytes.size(); ++second) {
            CAPTURE(first);
            CAPTURE(second);
            REQUIRE(decode_split(s.bytes, {first, second}, hostile_max_frame) == s.expected);
        }
    }
}

TEST_CASE("a stream with every kind of irregularity decodes the same in random chunkings")
{
    const test_stream s = make_hostile_stream();
    std::mt19937 rng(7);
    for (int round = 0; round < 2000; ++round) {
        CAPTURE(round);
        REQUIRE(decode_split(s.bytes, random_cuts(s.bytes.size(), 1 + round % 40, rng), hostile_max_frame)
                == s.expected);
    }
}

TEST_CASE("bytes outside frames are skipped and counted")
{
    SUBCASE("garbage before, between and after frames")
    {
        const auto result = decode_whole("abc" + encode("A") + "\n\n" + encode("B") + "xyz");
        CHECK(result == decoded{{"A", "B"}, 3 + 2 + 3, false});
    }
    SUBCASE("a LF after the trailer")
    {
        CHECK(decode_whole(encode("A") + lf + encode("B") + lf) == decoded{{"A", "B"}, 2, false});
    }
    SUBCASE("a stray 0x1C and 0x0D outside a frame")
    {
        CHECK(decode_whole(eb + cr + encode("A")) == decoded{{"A"}, 2, false});
    }
    SUBCASE("a second 0x0D after the trailer")
    {
        CHECK(decode_whole(encode("A") + cr) == decoded{{"A"}, 1, false});
    }
    SUBCASE("bytes with no frame at all")
    {
        CHECK(decode_whole(std::string(100000, 'z')) == decoded{{}, 100000, false});
    }
}

TEST_CASE("a 0x0D after 0x1C that arrives in the next chunk is consumed as the trailer")
{
    decoder d;
    CHECK(feed(d, sb + "A" + eb) == std::vector<event>{"A"});
    CHECK_FALSE(d.in_frame());
    CHECK(feed(d, "").empty());
    CHECK(feed(d, cr).empty());
    CHECK(d.skipped_bytes() == 0);
    CHECK(feed(d, cr).empty());
    CHECK(d.skipped_bytes() == 1);
}

TEST_CASE("a frame ending in 0x1C without 0x0D is accepted and the next byte is processed normally")
{
    CHECK(decode_whole(sb + "A" + eb) == decoded{{"A"}, 0, false});
    CHECK(decode_whole(sb + "A" + eb + sb + "B" + eb + cr) == decoded{{"A", "B"}, 0, false});
    CHECK(decode_whole(sb + "A" + eb + "x" + encode("B")) == decoded{{"A", "B"}, 1, false});
    CHECK(decode_split(sb + "A" + eb + sb + "B" + eb, {3}, 100) == decoded{{"A", "B"}, 0, false});
}

TEST_CASE("a frame of exactly max_frame bytes is accepted")
{
    const std::string payload(64, 'p');
    CHECK(decode_whole(encode(payload), 64) == decoded{{payload}, 0, false});
    CHECK(decode_split(encode(payload), {30, 65}, 64) == decoded{{payload}, 0, false});
    CHECK(decode_split(encode(payload), {65}, 64) == decoded{{payload}, 0, false});
    CHECK(decode_whole(encode("") + encode("x"), 0) == decoded{{"", errc::frame_too_large}, 0, true});
}

TEST_CASE("a frame one byte over max_frame is reported once and the next frame decodes")
{
    const std::string stream = encode(std::string(65, 'p')) + lf + encode("next");
    CHECK(decode_whole(stream, 64) == decoded{{errc::frame_too_large, "next"}, 0, false});
}

TEST_CASE("frame_too_large is reported as soon as the limit is passed, not at the frame's end")
{
    decoder d(8);
    CHECK(feed(d, sb + "12345678").empty());
    CHECK(d.in_frame());
    CHECK(feed(d, "9") == std::vector<event>{errc::frame_too_large});
    CHECK(d.in_frame());  // still dropping the rest of the frame
    CHECK(feed(d, "more bytes of the same frame" + eb + cr + lf).empty());
    CHECK(feed(d, encode("ok")) == std::vector<event>{"ok"});
    CHECK_FALSE(d.in_frame());
    CHECK(d.skipped_bytes() == 0);
}

TEST_CASE("a 0x0B within the first max_frame bytes of a frame is malformed, not too large")
{
    CHECK(decode_whole(sb + std::string(8, 'a') + sb + "b" + eb, 8) == decoded{{errc::invalid_frame, "b"}, 0, false});
    CHECK(decode_whole(sb + std::string(9, 'a') + sb + "b" + eb, 8) == decoded{{errc::frame_too_large, "b"}, 0, false});
}

TEST_CASE("an oversized frame split across many chunks is reported once and is never buffered")
{
    constexpr std::size_t max_frame = 64;
    decoder d(max_frame);
    const std::string piece = "0123456";  // 7 bytes, so the frame first grows in the buffer
    const std::size_t before = allocated_bytes;
    std::size_t too_large = 0;
    std::size_t other = 0;
    d.feed(sb);
    for (int i = 0; i < 150000; ++i) {  // about 1 MiB
        while (auto step = d.next()) {
            auto& r = *step;
            if (r.has_error() && r.error() == errc::frame_too_large)
                ++too_large;
            else
                ++other;
        }
        d.feed(piece);
    }
    const std::size_t allocated = allocated_bytes - before;
    CHECK(too_large == 1);
    CHECK(other == 0);
    CHECK(allocated <= 4 * max_frame);
    CHECK(d.skipped_bytes() == 0);

    CHECK(drain(d).empty());
    CHECK(feed(d, eb + cr + sb + "after").empty());
    CHECK(feed(d, "wards" + eb + cr) == std::vector<event>{"afterwards"});
}

TEST_CASE("a 0x0B inside an unfinished frame is malformed and the frame starting there decodes")
{
    SUBCASE("in one chunk")
    {
        CHECK(decode_whole(sb + "MSH|broken" + encode("MSH|good")) == decoded{{errc::invalid_frame, "MSH|good"}, 0, false});
    }
    SUBCASE("with the new 0x0B in a later chunk")
    {
        decoder d;
        CHECK(feed(d, sb + "MSH|bro").empty());
        CHECK(feed(d, "ken" + sb + "MSH|go") == std::vector<event>{errc::invalid_frame});
        CHECK(d.in_frame());
        CHECK(feed(d, "od" + eb + cr) == std::vector<event>{"MSH|good"});
    }
    SUBCASE("twice in a row")
    {
        CHECK(decode_whole(sb + sb + sb + "x" + eb) == decoded{{errc::invalid_frame, errc::invalid_frame, "x"}, 0, false});
    }
}

TEST_CASE("a large buffer is given back after a frame that completes, one that is too large and one cut short")
{
    constexpr std::size_t big = std::size_t{1} << 20;
    const std::string half(big / 2, 'x');
    auto grown = [&](decoder& d) {
        CHECK(feed(d, sb + half).empty());
        CHECK(feed(d, half).empty());
        CHECK(d.capacity() >= big);
    };
    SUBCASE("completed")
    {
        decoder d(2 * big);
        grown(d);
        CHECK(feed(d, eb + cr).size() == 1);
        CHECK(feed(d, "noise").empty());
        CHECK(d.capacity() <= 64 * 1024);
    }
    SUBCASE("too large")
    {
        decoder d(big + 10);
        grown(d);
        CHECK(feed(d, half) == std::vector<event>{errc::frame_too_large});
        CHECK(d.capacity() <= 64 * 1024);
        CHECK(d.in_frame()); // still dropping the rest
    }
    SUBCASE("cut short by a new start block")
    {
        decoder d(2 * big);
        grown(d);
        CHECK(feed(d, sb + "MSH|") == std::vector<event>{errc::invalid_frame});
        CHECK(d.capacity() <= 64 * 1024);
        CHECK(feed(d, eb) == std::vector<event>{"MSH|"});
    }
}

TEST_CASE("in_frame tells whether a frame has started and not yet ended")
{
    decoder d;
    CHECK(feed(d, "noise").empty());
    CHECK_FALSE(d.in_frame());
    CHECK(feed(d, sb).empty());
    CHECK(d.in_frame());
    CHECK(feed(d, "MSH|").empty());
    CHECK(d.in_frame());
    CHECK(feed(d, eb) == std::vector<event>{"MSH|"});
    CHECK_FALSE(d.in_frame());
    CHECK(feed(d, cr).empty());
    CHECK_FALSE(d.in_frame());

    const std::string restart = sb + "a" + sb + "b";
    d.feed(restart);
    CHECK(d.next().value().error() == errc::invalid_frame);
    CHECK(d.in_frame());  // the frame that starts at the second 0x0B
    CHECK_FALSE(d.next().has_value());
    CHECK(d.in_frame());
}

TEST_CASE("random bytes in random chunkings never break the decoder's guarantees")
{
    // Biased towards the framing bytes, so that frames, errors and trailers all occur.
    constexpr std::array<char, 4> framing = {'\x0b', '\x1c', '\x0d', '\n'};
    constexpr std::array<int, 4> framing_odds = {2, 16, 128, 1024};
    constexpr std::array<std::size_t, 6> max_frames = {0, 1, 8, 100, 4096, hl7::mllp::default_max_frame};
    std::size_t total_bytes = 0;
    for (std::uint32_t seed = 1; seed <= 12; ++seed) {
        CAPTURE(seed);
        std::mt19937 rng(seed);
        std::uniform_int_distribution<int> byte(0, 255);
        std::uniform_int_distribution<int> pick_framing(1, framing_odds[seed % framing_odds.size()]);
        std::uniform_int_distribution<std::size_t> which_framing(0, framing.size() - 1);
        std::string stream(512 * 1024, '\0');
        for (auto& c : stream)
            c = pick_framing(rng) == 1 ? framing[which_framing(rng)] : static_cast<char>(byte(rng));
        total_bytes += stream.size();

        const std::size_t max_frame = max_frames[seed % max_frames.size()];
        const decoded whole = decode_whole(stream, max_frame);
        for (const auto& e : whole.events) {
            if (const auto* payload = std::get_if<std::string>(&e)) {
                REQUIRE(payload->size() <= max_frame);
                REQUIRE(payload->find_first_of(sb + eb) == std::string::npos);
            } else {
                const errc error = std::get<errc>(e);
                REQUIRE((error == errc::frame_too_large || error == errc::invalid_frame));
            }
        }
        REQUIRE(whole.skipped <= stream.size());
        REQUIRE(decode_split(stream, random_cuts(stream.size(), 3000, rng), max_frame) == whole);
        REQUIRE(decode_split(stream, random_cuts(stream.size(), 40, rng), max_frame) == whole);
    }
    CHECK(total_bytes >= 6'000'000);
}

TEST_CASE("every implementation of the frame byte scan finds the same first 0x0B or 0x1C")
{
    std::mt19937 rng(1207);
    for (int round = 0; round < 20000; ++round) {
        // Mostly plain text with the odd frame byte, at every alignment and length.
        std::string bytes(1 + rng() % 300, 'x');
        for (char& c : bytes) {
            const unsigned r = rng() % 1000;
            c = r == 0 ? '\x0b' : r == 1 ? '\x1c' : static_cast<char>('a' + r % 26);
        }
        const std::size_t offset = rng() % bytes.size();
        const char* p = bytes.data() + offset;
        const std::size_t size = bytes.size() - offset;
        const char* want = hl7::mllp::detail::find_block_byte_scalar(p, p + size);
        CHECK(hl7::mllp::detail::find_block_byte(p, size) == want);
#if defined(__x86_64__)
        CHECK(hl7::mllp::detail::find_block_byte_sse2(p, size) == want);
        if (__builtin_cpu_supports("avx2"))
            CHECK(hl7::mllp::detail::find_block_byte_avx2(p, size) == want);
#endif
    }
}

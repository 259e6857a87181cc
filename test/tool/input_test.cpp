// The tool's input splitter, without I/O: every accepted form of input, split at every byte
// offset, gives the same messages.
#include "input.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using hl7::tool::message_splitter;

namespace {

// What the splitter makes of `chunks`: each message's text, or "error: ..." for what it reports.
std::vector<std::string> split(const std::vector<std::string_view>& chunks, std::size_t max_size = 1 << 20)
{
    message_splitter s(max_size);
    std::vector<std::string> out;
    auto drain = [&] {
        while (auto m = s.next())
            out.push_back(m->error.empty() ? m->text : "error: " + m->error);
    };
    for (std::string_view c : chunks) {
        s.feed(c);
        drain();
    }
    s.finish();
    drain();
    return out;
}

// Checks that `input` gives `expected` whole, and fed in two pieces cut at every offset.
void check_every_split(const std::string& input, const std::vector<std::string>& expected,
                       std::size_t max_size = 1 << 20)
{
    CHECK(split({input}, max_size) == expected);
    for (std::size_t cut = 0; cut <= input.size(); ++cut) {
        const std::string_view all(input);
        const auto got = split({all.substr(0, cut), all.substr(cut)}, max_size);
        if (got != expected) {
            CAPTURE(cut);
            CHECK(got == expected);
            return;
        }
    }
    // And one byte at a time.
    std::vector<std::string_view> bytes;
    for (std::size_t i = 0; i < input.size(); ++i)
        bytes.push_back(std::string_view(input).substr(i, 1));
    CHECK(split(bytes, max_size) == expected);
}

const std::string a = "MSH|^~\\&|A|B|C|D|1||ADT^A01|ID1|P|2.5\rPID|1\r";
const std::string b = "MSH|^~\\&|A|B|C|D|1||ADT^A01|ID2|P|2.5\rPID|2\rPV1|1\r";

std::string with_line_ends(std::string text, const std::string& eol)
{
    std::string out;
    for (char c : text) {
        if (c == '\r')
            out += eol;
        else
            out += c;
    }
    return out;
}

} // namespace

TEST_CASE("messages separated by blank lines or the next MSH are split the same with CR, LF or CRLF")
{
    for (const std::string eol : {"\r", "\n", "\r\n"}) {
        CAPTURE(eol.size());
        check_every_split(with_line_ends(a + "\r" + b, eol), {a, b});
        check_every_split(with_line_ends(a + b, eol), {a, b});
        check_every_split(with_line_ends("\r\r" + a + " \t\r\r\r" + b + "\r", eol), {a, b});
    }
}

TEST_CASE("a last message without a line end is complete at the end of the input")
{
    check_every_split(a + b.substr(0, b.size() - 1), {a, b});
}

TEST_CASE("MLLP-framed input gives one message per frame, and a batch inside a frame its messages")
{
    check_every_split("\x0b" + a + "\x1c\r\x0b" + b + "\x1c\r", {a, b});
    check_every_split("\r\n\x0b" + a + "\x1c\r\n\n\x0b" + b + "\x1c", {a, b});
    check_every_split("\x0b" "BHS|^~\\&|X\r" + a + b + "BTS|2\r\x1c\r", {a, b});
}

TEST_CASE("an FHS/BHS batch gives each message inside it, without the batch segments")
{
    const std::string batch = "FHS|^~\\&|X\nBHS|^~\\&|X\n" + with_line_ends(a + b, "\n") + "BTS|2\nBHS|^~\\&|X\n" +
                              with_line_ends(a, "\n") + "BTS|1\nFTS|2\n";
    check_every_split(batch, {a, b, a});
}

TEST_CASE("lines before the first MSH make a message of their own, which will not parse")
{
    check_every_split("EVN|A01\nPID|1\n\n" + a, {"EVN|A01\rPID|1\r", a});
}

TEST_CASE("a message larger than the limit is reported, and the next one is read whole")
{
    const std::string big = "MSH|^~\\&|A|B|C|D|1||ADT^A01|BIG|P|2.5\rNTE|" + std::string(300, 'x') + "\r";
    const std::string error = "error: message larger than the maximum of 100 bytes (--max-frame)";
    check_every_split(a + big + b, {a, error, b}, 100);
    // A single line longer than the limit, with and without a next message.
    check_every_split("MSH|" + std::string(500, 'y') + "\r" + b, {error, b}, 100);
    check_every_split(a + "MSH|" + std::string(500, 'y'), {a, error}, 100);
    // MLLP frames too.
    check_every_split("\x0b" + big + "\x1c\r\x0b" + a + "\x1c\r", {error, a}, 100);
}

TEST_CASE("input that ends inside an MLLP frame is reported")
{
    check_every_split("\x0b" + a + "\x1c\r\x0b" + b, {a, "error: the input ends inside an MLLP frame"});
}

TEST_CASE("a UTF-8 byte order mark and leading whitespace are skipped")
{
    CHECK(split({"\xEF\xBB\xBF" + a}) == std::vector<std::string>{a});
    CHECK(split({"\n \t\r\n" + a}) == std::vector<std::string>{a});
}

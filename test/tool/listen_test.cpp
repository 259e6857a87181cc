// `hl7 listen`: its first line, what it writes for each message, its replies, and its stop.
#include "support/async_util.hpp"
#include "support/flat_json.hpp"
#include "support/tool_util.hpp"
#include "support/util.hpp"

#include <hl7/net/client.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

using namespace hl7::test;
namespace fs = std::filesystem;

namespace {

finished send_to(const listener& l, std::string_view input)
{
    return run({tool(), "send", "--port", l.port()}, input);
}

std::string file_bytes(const fs::path& file)
{
    std::ifstream in(file, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string newline_segments(std::string text)
{
    std::replace(text.begin(), text.end(), '\r', '\n');
    return text;
}

} // namespace

TEST_CASE("listen prints its real port at once through a pipe when asked for port 0")
{
    const auto started = std::chrono::steady_clock::now();
    listener l; // reads the first line from the pipe, with a deadline
    CHECK(std::chrono::steady_clock::now() - started < 3s);
    CHECK(std::regex_match(l.first_line(), std::regex(R"(listening on 127\.0\.0\.1:[1-9]\d*)")));
    // The port printed is the one it listens on.
    CHECK(send_to(l, small_message("PORT1")).status == 0);
    CHECK(l.stop().status == 0);
}

TEST_CASE("listen on the IPv6 loopback prints the address in brackets" * doctest::skip(!hl7::test::ipv6_loopback_available()))
{
    listener l({}, "[::1]");
    CHECK(std::regex_match(l.first_line(), std::regex(R"(listening on \[::1\]:[1-9]\d*)")));
    CHECK(l.stop().status == 0);
}

TEST_CASE("SIGTERM stops listen with exit status 0 and a one-line summary on standard error")
{
    listener l;
    REQUIRE(send_to(l, small_message("ST1") + small_message("ST2")).status == 0);
    const auto r = l.stop(SIGTERM);
    CHECK(r.status == 0);
    CHECK(!r.timed_out);
    CHECK(r.err == "hl7: stopped: 1 connection, 2 received, 2 replied, 0 errors\n");
}

TEST_CASE("SIGINT stops listen the same way, also while a client is still connected")
{
    listener l;
    child idle({tool(), "send", "--port", l.port()}); // connects and waits on its standard input
    idle.write(small_message("SI1") + "\r");
    REQUIRE(idle.read_line(5s).has_value());
    const auto r = l.stop(SIGINT);
    CHECK(r.status == 0);
    CHECK(r.err == "hl7: stopped: 1 connection, 1 received, 1 replied, 0 errors\n");
    idle.wait(10s);
}

TEST_CASE("listen writes each message with a segment per line and a blank line after it")
{
    listener l;
    const std::string adt = hl7::test::sample("adt_a01.hl7");
    REQUIRE(run({tool(), "send", "--port", l.port(), adt}).status == 0);
    REQUIRE(send_to(l, small_message("W2")).status == 0);
    const auto r = l.stop();
    const std::string expected = "listening on 127.0.0.1:" + l.port() + "\n" + newline_segments(file_bytes(adt)) +
                                 "\n" + newline_segments(small_message("W2")) + "\n";
    CHECK(r.out == expected);
}

TEST_CASE("listen --json prints one object per message with index, peer, control_id, message_type and reply_code")
{
    listener l({"--json"});
    REQUIRE(send_to(l, small_message("JS1")).status == 0);
    REQUIRE(run({tool(), "send", "--port", l.port(), sample("adt_a01_no_type.hl7")}).status == 1);
    const auto out = lines(l.stop().out);
    REQUIRE(out.size() == 3);
    const std::set<std::string> keys{"index", "peer", "control_id", "message_type", "reply_code"};
    std::vector<json_object> objects;
    for (std::size_t i = 1; i < out.size(); ++i) {
        INFO("line: " << out[i]);
        auto o = parse_flat_json(out[i]);
        REQUIRE(o.has_value());
        std::set<std::string> got;
        for (const auto& [k, v] : *o)
            got.insert(k);
        CHECK(got == keys);
        objects.push_back(*o);
    }
    CHECK(objects[0]["index"] == json_value(std::int64_t{1}));
    REQUIRE(std::holds_alternative<std::string>(objects[0]["peer"]));
    CHECK(std::regex_match(std::get<std::string>(objects[0]["peer"]), std::regex(R"(127\.0\.0\.1:\d+)")));
    CHECK(objects[0]["control_id"] == json_value(std::string("JS1")));
    CHECK(objects[0]["message_type"] == json_value(std::string("ADT^A01")));
    CHECK(objects[0]["reply_code"] == json_value(std::string("AA")));
    CHECK(objects[1]["index"] == json_value(std::int64_t{2}));
    CHECK(objects[1]["control_id"] == json_value(std::string("MSG00003")));
    CHECK(objects[1]["message_type"] == json_value(std::string("")));
    CHECK(objects[1]["reply_code"] == json_value(std::string("AR")));
}

TEST_CASE("listen --out DIR creates DIR and writes one file per message, named by sequence number and control id")
{
    temp_dir tmp;
    const fs::path dir = tmp.path() / "received" / "today";
    listener l({"--out", dir.string()});
    const std::string odd = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|x/y z..|P|2.5.1\rPID|1\r";
    REQUIRE(send_to(l, small_message("OUT1") + odd).status == 0);
    const auto r = l.stop();
    CHECK(r.status == 0);
    CHECK(lines(r.out).size() == 1); // only the first line: the messages went to files

    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir))
        names.insert(entry.path().filename().string());
    CHECK(names == std::set<std::string>{"000001-OUT1.hl7", "000002-x_y_z...hl7"});
    CHECK(file_bytes(dir / "000001-OUT1.hl7") == small_message("OUT1"));
    CHECK(file_bytes(dir / "000002-x_y_z...hl7") == odd);
}

TEST_CASE("listen --reply AR answers every message with AR")
{
    listener l({"--reply", "AR"});
    const auto r = run({tool(), "send", "--port", l.port(), sample("adt_a01.hl7")}, {});
    CHECK(r.status == 1);
    CHECK(r.out.starts_with("1 MSG00001 CR MSG00001 ")); // the sample asks for enhanced mode: CR
    const auto plain = send_to(l, small_message("R2"));
    CHECK(plain.out.starts_with("1 R2 AR R2 "));
}

TEST_CASE("a second listener on a port in use fails with exit status 1 naming the address")
{
    listener first;
    const auto r = run({tool(), "listen", "--port", first.port()});
    CHECK(r.status == 1);
    CHECK(r.err == "hl7: cannot listen on 127.0.0.1:" + first.port() + ": address already in use\n");
    CHECK(r.out == "");
}

TEST_CASE("listen's AR for a message without MSH-9 carries HL7 error 101 in an ERR segment naming the field")
{
    namespace asio = boost::asio;
    listener l;
    hl7::test::run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto client = hl7::client::create(ex, {.host = "127.0.0.1"}).value();
        auto conn = client.connect(std::stoi(l.port())).value();
        auto msg = hl7::message::parse(hl7::test::read_sample("adt_a01_no_type.hl7")).value();
        const auto ack = co_await conn.send(std::move(msg));
        REQUIRE(ack.has_value());
        const hl7::message& a = ack.value().message();
        CHECK(a.get("MSA.1") == "AR");
        CHECK(a.get("MSA.2") == "MSG00003");
        CHECK(a.get("ERR.2") == "MSH^1^9");
        CHECK(a.get("ERR.3") == "101^Required field missing^HL70357");
        CHECK(a.get("ERR.4") == "E");
        CHECK(a.get("ERR.8").value().decoded() == "required field MSH-9 (message type) is missing");
        co_await conn.close();
    });
    CHECK(l.stop().status == 0);
}

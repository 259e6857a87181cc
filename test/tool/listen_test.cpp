// `hl7 listen`: its first line, what it writes for each message, its replies, and its stop.
#include "support/async_util.hpp"
#include "support/flat_json.hpp"
#include "support/server_peers.hpp"
#include "support/peer.hpp"
#include "support/tool_util.hpp"
#include "support/util.hpp"

#include <hl7/net/client.hpp>

#include <doctest/doctest.h>

#include <boost/asio/ip/tcp.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

using namespace hl7::test;
namespace fs = std::filesystem;
using hl7::test::raw_client;

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
    listener l; // reads the first line from the pipe while listen runs: not buffered until it ends
    CHECK(std::regex_match(l.first_line(), std::regex(R"(listening on 127\.0\.0\.1:[1-9]\d*)")));
    // The port printed is the one it listens on.
    CHECK(send_to(l, small_message("PORT1")).status == 0);
    CHECK(l.stop().status == 0);
}

TEST_CASE("listen on the IPv6 loopback prints the address in brackets" * doctest::skip(!hl7::test::has_ipv6_loopback()))
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
    REQUIRE(idle.read_line(30s).has_value());
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

// --- durable output, backpressure, limits, metrics ------------------------------------------

namespace {

// Runs `script` with bash, "$0" being the hl7 tool.
child bash(const std::string& script)
{
    return child({"/bin/bash", "-c", script, tool()});
}

// The port of a pipeline's `listening on 127.0.0.1:PORT` line.
std::string port_of(child& c)
{
    auto line = c.read_line(30s);
    REQUIRE_MESSAGE(line.has_value(), "no first line within 30 s");
    REQUIRE(line->starts_with("listening on "));
    return line->substr(line->rfind(':') + 1);
}

std::size_t count_lines(const std::string& text)
{
    return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

} // namespace

TEST_CASE("listen --out numbers on from the files already in the directory, across restarts, and never overwrites")
{
    temp_dir tmp;
    const fs::path dir = tmp.path() / "in";
    fs::create_directories(dir);
    tmp.write("in/000007-OLD.hl7", "old");
    for (const char* id : {"OUT1", "OUT2"}) {
        listener l({"--out", dir.string()});
        REQUIRE(send_to(l, small_message(id)).status == 0);
        CHECK(l.stop().status == 0);
    }
    CHECK(names_in(dir) == std::set<std::string>{"000007-OLD.hl7", "000008-OUT1.hl7", "000009-OUT2.hl7"});
    CHECK(file_bytes(dir / "000007-OLD.hl7") == "old");
    CHECK(file_bytes(dir / "000009-OUT2.hl7") == small_message("OUT2"));
}

TEST_CASE("listen --out acknowledges a message once its file is whole under its final name")
{
    temp_dir tmp;
    listener l({"--out", tmp.path().string()});
    const std::string big = small_message("BIG1") + "NTE|1||" + std::string(1 << 20, 'x') + "\r";
    REQUIRE(send_to(l, big).status == 0);
    // The acknowledgement came back: the file is there already, whole, and nothing temporary is left.
    CHECK(names_in(tmp.path()) == std::set<std::string>{"000001-BIG1.hl7"});
    CHECK(file_bytes(tmp.path() / "000001-BIG1.hl7") == big);
    CHECK(l.stop().status == 0);
}

TEST_CASE("a standard output that is closed ends listen with exit status 1 and a message, not SIGPIPE")
{
    // SIGPIPE as a shell gives it (this test process ignores it, and its children would inherit that).
    auto pipeline = bash("set -o pipefail; env --default-signal=PIPE \"$0\" listen --port 0 | head -n 1");
    const std::string port = port_of(pipeline);
    run({tool(), "send", "--port", port}, small_message("PIPE1")); // its record meets the closed pipe
    const auto r = pipeline.wait(15s);
    CHECK(!r.timed_out);
    CHECK(r.status == 1);
    CHECK(r.err.find("hl7: standard output is closed: stopping\n") != std::string::npos);
    CHECK(r.err.find("hl7: stopped: ") != std::string::npos);
}

TEST_CASE("a standard output read slowly delays acknowledgements and loses none")
{
    // The reader takes the first line, then reads nothing for two seconds: the pipe fills.
    auto pipeline = bash("\"$0\" listen --port 0 > >({ read -r first; echo \"$first\"; sleep 2; cat; }) &\n"
                         "echo \"pid $!\"\n"
                         "wait $!");
    std::string port;
    pid_t listener_pid = 0;
    for (int i = 0; i < 2; ++i) {
        auto line = pipeline.read_line(30s);
        REQUIRE(line.has_value());
        if (line->starts_with("pid "))
            listener_pid = std::stoi(line->substr(4));
        else if (line->starts_with("listening on "))
            port = line->substr(line->rfind(':') + 1);
    }
    REQUIRE(listener_pid > 0);
    REQUIRE(!port.empty());
    std::string input;
    for (int i = 0; i < 40; ++i)
        input += small_message("SLOW" + std::to_string(i)) + "NTE|1||" + std::string(8 * 1024, 'y') + "\r";
    const auto sent = run({tool(), "send", "--port", port, "--ack-timeout", "30"}, input);
    CHECK(sent.status == 0);
    CHECK(lines(sent.out).size() == 40);
    ::kill(listener_pid, SIGTERM);
    const auto r = pipeline.wait(15s);
    CHECK(r.status == 0);
    for (int i = 0; i < 40; ++i)
        CHECK(r.out.find("|SLOW" + std::to_string(i) + "|") != std::string::npos);
}

TEST_CASE("listen --max-per-source refuses connections beyond it and logs it")
{
    listener l({"--max-per-source", "2"});
    hl7::test::run_async([&]() -> asio::awaitable<void> {
        const asio::ip::tcp::endpoint at{asio::ip::make_address("127.0.0.1"),
                                         static_cast<std::uint16_t>(std::stoi(l.port()))};
        auto a = co_await raw_client::connect(at);
        auto b = co_await raw_client::connect(at);
        co_await a.send(small_message("PS1"));
        co_await a.read_reply();
        co_await b.send(small_message("PS2"));
        co_await b.read_reply();
        for (int i = 0; i < 3; ++i) {
            auto c = co_await raw_client::connect(at);
            CHECK(co_await c.read_end());
        }
    });
    const auto r = l.stop();
    CHECK(r.status == 0);
    CHECK(count_lines(r.err) == 4); // three refusals and the summary
    CHECK(r.err.find(": connection refused: the source address holds its maximum of connections\n") !=
          std::string::npos);
}

TEST_CASE("listen --idle-timeout closes a connection that sends nothing, and logs why")
{
    listener l({"--idle-timeout", "0.2"});
    hl7::test::run_async([&]() -> asio::awaitable<void> {
        auto c = co_await raw_client::connect(
            {asio::ip::make_address("127.0.0.1"), static_cast<std::uint16_t>(std::stoi(l.port()))});
        CHECK(co_await c.read_end() == asio::error::eof);
    });
    const auto r = l.stop();
    CHECK(r.err.find(": no message within the idle timeout\n") != std::string::npos);
}

TEST_CASE("listen --allow serves only the networks given")
{
    listener l({"--allow", "127.0.0.2/32", "--allow", "192.0.2.0/24"});
    CHECK(send_to(l, small_message("AL1")).status != 0); // from 127.0.0.1
    const auto r = l.stop();
    CHECK(r.err.find(": connection refused: source address not allowed\n") != std::string::npos);
    CHECK(r.err.find("0 received") != std::string::npos);
}

TEST_CASE("listen rejects a malformed --allow network and --tls-allow-name without --tls-ca as usage errors")
{
    const auto bad_network = run({tool(), "listen", "--port", "0", "--allow", "10.0.0.0/33"});
    CHECK(bad_network.status == 2);
    CHECK(bad_network.err.starts_with("hl7: invalid --allow"));
    const auto no_ca = run({tool(), "listen", "--port", "0", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                            "--tls-allow-name", "lab"});
    CHECK(no_ca.status == 2);
    CHECK(no_ca.err.find("--tls-allow-name needs --tls-ca") != std::string::npos);
}

TEST_CASE("listen --dedup answers a repeated message with the reply it got the first time, and writes it once")
{
    temp_dir tmp;
    listener l({"--dedup", "--out", tmp.path().string()});
    hl7::test::run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto client = hl7::client::create(ex, {.host = "127.0.0.1"}).value();
        auto conn = client.connect(std::stoi(l.port())).value();
        std::vector<std::string> acks;
        for (int i = 0; i < 2; ++i) {
            auto msg = hl7::message::parse(small_message("DUP1")).value();
            auto ack = co_await conn.send(std::move(msg));
            REQUIRE(ack.has_value());
            acks.emplace_back(ack.value().message().str());
        }
        CHECK(acks[0] == acks[1]); // the very same acknowledgement, its own MSH-10 included
        auto other = hl7::message::parse(small_message("DUP2")).value();
        CHECK((co_await conn.send(std::move(other))).has_value());
        co_await client.close();
    });
    CHECK(names_in(tmp.path()) == std::set<std::string>{"000001-DUP1.hl7", "000002-DUP2.hl7"});
    CHECK(l.stop().status == 0);
}

TEST_CASE("listen --metrics serves the server's counters as Prometheus text at /metrics")
{
    listener l({"--metrics", "127.0.0.1:0"});
    REQUIRE(send_to(l, small_message("MET1")).status == 0);
    const int port = metrics_port(l.process());
    REQUIRE(port != 0);
    const std::string body = http_get(port);
    CHECK(body.starts_with("HTTP/1.1 200"));
    CHECK(body.find("messaging_client_consumed_messages_total{messaging_system=\"hl7v2\"} 1\n") != std::string::npos);
    CHECK(body.find("hl7_listen_replies_total{code=\"AA\"} 1\n") != std::string::npos);
    CHECK(body.find("hl7_listen_connections_accepted_total 1\n") != std::string::npos);
    CHECK(body.find("hl7_listen_limit_hits_total{limit=\"max_connections\"} 0\n") != std::string::npos);
    CHECK(body.find("messaging_process_duration_seconds_count{messaging_system=\"hl7v2\"} 1\n") != std::string::npos);
    CHECK(http_get(port, "/other").starts_with("HTTP/1.1 404"));
    CHECK(l.stop().status == 0);
}

TEST_CASE("listen --threads 4 answers concurrent senders, each message once")
{
    listener l({"--threads", "4", "--json"});
    std::vector<std::unique_ptr<child>> senders;
    for (int s = 0; s < 4; ++s) {
        senders.push_back(std::make_unique<child>(std::vector<std::string>{tool(), "send", "--port", l.port()}));
        std::string input;
        for (int i = 0; i < 20; ++i) {
            std::string id = "T"; // appended to, not inserted into (a false -Wrestrict of GCC 12)
            id += std::to_string(s) + "-" + std::to_string(i);
            input += small_message(id) + "\r";
        }
        senders.back()->write(input);
    }
    for (auto& s : senders)
        CHECK(s->wait(20s).status == 0);
    const auto r = l.stop();
    CHECK(r.err == "hl7: stopped: 4 connections, 80 received, 80 replied, 0 errors\n");
    CHECK(lines(r.out).size() == 81);
}

TEST_CASE("an empty-frame flood leaves a few lines of log, not one per frame")
{
    listener l;
    const auto started = std::chrono::steady_clock::now();
    hl7::test::run_async([&]() -> asio::awaitable<void> {
        const asio::ip::tcp::endpoint at{asio::ip::make_address("127.0.0.1"),
                                         static_cast<std::uint16_t>(std::stoi(l.port()))};
        std::string flood;
        for (int i = 0; i < 5000; ++i)
            flood += hl7::mllp::encode("");
        for (int round = 0; round < 50; ++round) {
            auto c = co_await raw_client::connect(at);
            (void)co_await c.try_write(flood);
            CHECK(co_await c.read_end());
        }
    }, 120s);
    const auto r = l.stop();
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
    CHECK(r.status == 0);
    // 250,000 bad frames on 50 connections closed for them: per kind (the bad frames, the
    // closings) ten lines at once, then at most one a second, each followed by at most one line
    // counting those left out; and the summary. The flood lasts a second or two on an idle
    // machine, longer on a loaded one: the bound follows how long it lasted.
    const std::size_t seconds_passed = static_cast<std::size_t>(seconds.count()) + 1;
    INFO("the flood lasted about " << seconds_passed << " s; standard error: " << r.err);
    CHECK(count_lines(r.err) <= 2 * (10 + 2 * seconds_passed) + 1);
    CHECK(count_lines(r.err) < 1000); // a few lines, not one per frame
    CHECK(r.err.find(" more unparsable messages not shown\n") != std::string::npos); // the rest are counted
}

// `hl7 send` against `hl7 listen` (and against loopback sockets that refuse or never answer):
// result lines, exit statuses, JSON output and every accepted input form.
#include "support/flat_json.hpp"
#include "support/peer.hpp"
#include "support/tool_util.hpp"
#include "support/util.hpp"

#include <doctest/doctest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <array>
#include <chrono>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HL7_TEST_HAS_ASAN 1
#endif
#endif
#ifndef HL7_TEST_HAS_ASAN
#define HL7_TEST_HAS_ASAN 0
#endif

using namespace hl7::test;

namespace {

std::vector<std::string> words(const std::string& line)
{
    std::istringstream in(line);
    std::vector<std::string> out;
    for (std::string w; in >> w;)
        out.push_back(w);
    return out;
}

// Checks a result line `<n> <MSH-10> <MSA-1> <MSA-2> <round trip ms>` of an acknowledged message.
void check_acknowledged(const std::string& line, int n, const std::string& control_id, const std::string& code)
{
    INFO("line: " << line);
    const auto w = words(line);
    REQUIRE(w.size() >= 5);
    CHECK(w[0] == std::to_string(n));
    CHECK(w[1] == control_id);
    CHECK(w[2] == code);
    CHECK(w[3] == control_id);
    CHECK(std::regex_match(w[4], std::regex(R"(\d+\.\d{3})")));
}

// The control ids of result lines, in order.
std::vector<std::string> control_ids(const std::string& out)
{
    std::vector<std::string> ids;
    for (const std::string& line : lines(out)) {
        const auto w = words(line);
        ids.push_back(w.size() > 1 ? w[1] : "");
    }
    return ids;
}

finished send(const listener& l, std::vector<std::string> args, std::string_view input = {})
{
    std::vector<std::string> argv{tool(), "send", "--port", l.port()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, input);
}

} // namespace

TEST_CASE("the samples sent to hl7 listen over IPv4 each get a result line with the code they ask for, and send exits 0")
{
    listener l;
    const auto r = send(l, {sample("adt_a01.hl7"), sample("oru_r01.hl7")});
    CHECK(r.status == 0);
    CHECK(r.err == "");
    const auto out = lines(r.out);
    REQUIRE(out.size() == 2);
    check_acknowledged(out[0], 1, "MSG00001", "CA"); // MSH-15 AL: the accept acknowledgement
    check_acknowledged(out[1], 2, "MSG00002", "AA"); // MSH-15 NE, MSH-16 AL: the application one
    CHECK(l.stop().status == 0);
}

TEST_CASE("send and listen work over the IPv6 loopback, with or without brackets" * doctest::skip(!hl7::test::has_ipv6_loopback()))
{
    listener l({}, "::1");
    CHECK(l.first_line() == "listening on [::1]:" + l.port());
    for (const char* host : {"::1", "[::1]"}) {
        const auto r = send(l, {"--host", host}, small_message("V6"));
        CHECK(r.status == 0);
        const auto out = lines(r.out);
        REQUIRE(out.size() == 1);
        check_acknowledged(out[0], 1, "V6", "AA");
    }
    CHECK(l.stop().status == 0);
}

TEST_CASE("a DNS name that resolves to the loopback works as the host")
{
    listener l;
    const auto r = send(l, {"--host", "localhost"}, small_message("DNS1"));
    // localhost may resolve to ::1 first, where nobody listens: the client tries every address.
    CHECK(r.status == 0);
    REQUIRE(lines(r.out).size() == 1);
    check_acknowledged(lines(r.out)[0], 1, "DNS1", "AA");
}

TEST_CASE("a NACK from listen --reply AE makes send exit 1 with AE on the message's line")
{
    listener l({"--reply", "AE"});
    const auto r = send(l, {}, small_message("N1") + "\r" + small_message("N2"));
    CHECK(r.status == 1);
    const auto out = lines(r.out);
    REQUIRE(out.size() == 2);
    check_acknowledged(out[0], 1, "N1", "AE");
    check_acknowledged(out[1], 2, "N2", "AE");
    CHECK(out[0].find("application error") != std::string::npos);
}

TEST_CASE("listen rejects a message without MSH-9 with AR, and send shows the field on its line")
{
    listener l;
    const auto r = send(l, {sample("adt_a01.hl7"), sample("adt_a01_no_type.hl7")});
    CHECK(r.status == 1);
    const auto out = lines(r.out);
    REQUIRE(out.size() == 2);
    check_acknowledged(out[0], 1, "MSG00001", "CA");
    check_acknowledged(out[1], 2, "MSG00003", "AR");
    CHECK(out[1].find("MSH-9 (message type)") != std::string::npos);
}

TEST_CASE("listen rejects a message without MSH-12 with AR naming MSH-12")
{
    listener l;
    const auto r = send(l, {}, "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|NOVER|P|\rPID|1\r");
    CHECK(r.status == 1);
    REQUIRE(lines(r.out).size() == 1);
    check_acknowledged(lines(r.out)[0], 1, "NOVER", "AR");
    CHECK(r.out.find("MSH-12 (version id)") != std::string::npos);
}

TEST_CASE("a refused port gives one clear line on standard error, a line per message saying it was not sent, and exit status 1")
{
    loopback_socket closed; // bound, never listening: connections are refused
    REQUIRE(closed.bound());
    const auto r = run({tool(), "send", "--port", closed.port(), "--retries", "2", sample("adt_a01.hl7"),
                        sample("oru_r01.hl7"), sample("adt_a01.hl7")});
    CHECK_FALSE(r.timed_out);
    CHECK(r.status == 1);
    // One line: one round of attempts for the three messages, not a round each.
    CHECK(r.err == "hl7: connection refused (127.0.0.1:" + closed.port() + ")\n");
    const auto out = lines(r.out);
    REQUIRE(out.size() == 3);
    const std::string why = " - - - not sent: gave up after 2 connection attempts: connection refused (127.0.0.1:" +
                            closed.port() + ")";
    CHECK(out[0] == "1 MSG00001" + why);
    CHECK(out[1] == "2 MSG00002" + why);
    CHECK(out[2] == "3 MSG00001" + why);
}

TEST_CASE("every message gets its line when the connection gives up: the rest are reported at once, unsent")
{
    listener l;
    child sender({tool(), "send", "--port", l.port(), "--retries", "2"});
    for (int i = 1; i <= 3; ++i)
        sender.write(small_message(hl7::test::label("D", i)) + "\r");
    for (int i = 1; i <= 3; ++i) {
        const auto line = sender.read_line(30s);
        REQUIRE(line.has_value());
        check_acknowledged(*line, i, hl7::test::label("D", i), "AA");
    }
    l.stop(SIGKILL); // the peer dies mid-stream; its port then refuses connections
    const auto started = std::chrono::steady_clock::now();
    std::string rest;
    for (int i = 4; i <= 2000; ++i)
        rest += small_message(hl7::test::label("D", i)) + "\r";
    sender.write(rest);
    sender.close_stdin();
    const auto r = sender.wait(60s);
    // Not a round of attempts per message: that would be 1997 rounds of at least 200 ms (the
    // reconnect delay), over six minutes; one round takes well under a second, even loaded.
    CHECK(std::chrono::steady_clock::now() - started < 30s);
    CHECK(r.status == 1);
    const auto out = lines(r.out); // all of standard output, the three lines read above included
    REQUIRE(out.size() == 2000);
    for (std::size_t k = 3; k < out.size(); ++k) {
        const auto w = words(out[k]);
        REQUIRE(w.size() >= 6);
        CHECK(w[0] == std::to_string(k + 1));
        CHECK(w[1] == hl7::test::label("D", k + 1));
    }
    // The message sent as the peer died may have been written; every later one says it was not sent,
    // with the reason of the last attempt.
    CHECK(out.back().find("not sent: gave up after 2 connection attempts: connection refused") != std::string::npos);
    std::size_t unsent = 0;
    for (const auto& line : out)
        unsent += line.find(" - - - not sent: gave up after 2 connection attempts: connection refused") != std::string::npos;
    CHECK(unsent >= out.size() - 3 - 2);
    CHECK(r.err.find("gave up after 2 connection attempts: connection refused") != std::string::npos);
    CHECK(lines(r.err).size() == 1);
}

TEST_CASE("a peer that never acknowledges times the message out after --ack-timeout")
{
    loopback_socket silent;
    REQUIRE(silent.bound());
    silent.listen();
    const auto started = std::chrono::steady_clock::now();
    const auto r = run({tool(), "send", "--port", silent.port(), "--ack-timeout", "0.3"}, small_message("T1"));
    // Before the default ACK timeout (10 s) could have run out: --ack-timeout was used. A run
    // with 0.3 s takes well under a second, even on a loaded machine.
    CHECK(std::chrono::steady_clock::now() - started < 10s);
    CHECK(r.status == 1);
    REQUIRE(lines(r.out).size() == 1);
    CHECK(lines(r.out)[0] == "1 T1 - - - no acknowledgement within the ACK timeout");
}

TEST_CASE("--json prints one object per message with index, control_id, ack_code, ack_control_id, rtt_us and error")
{
    listener l;
    const auto r = send(l, {"--json"},
                        small_message("J1") + "\rPID|1|not a message\n\n" + small_message("J3", "\n", "ADT^A04"));
    CHECK(r.status == 1); // the middle one does not parse
    const auto out = lines(r.out);
    REQUIRE(out.size() == 3);
    const std::set<std::string> keys{"index", "control_id", "ack_code", "ack_control_id", "rtt_us", "error"};
    std::vector<json_object> objects;
    for (const std::string& line : out) {
        INFO("line: " << line);
        auto o = parse_flat_json(line);
        REQUIRE(o.has_value());
        std::set<std::string> got;
        for (const auto& [k, v] : *o)
            got.insert(k);
        CHECK(got == keys);
        objects.push_back(*o);
    }
    CHECK(objects[0]["index"] == json_value(std::int64_t{1}));
    CHECK(objects[0]["control_id"] == json_value(std::string("J1")));
    CHECK(objects[0]["ack_code"] == json_value(std::string("AA")));
    CHECK(objects[0]["ack_control_id"] == json_value(std::string("J1")));
    CHECK(std::holds_alternative<std::int64_t>(objects[0]["rtt_us"]));
    CHECK(objects[0]["error"] == json_value(json_null{}));

    CHECK(objects[1]["index"] == json_value(std::int64_t{2}));
    CHECK(objects[1]["control_id"] == json_value(json_null{}));
    CHECK(objects[1]["ack_code"] == json_value(json_null{}));
    CHECK(objects[1]["rtt_us"] == json_value(json_null{}));
    REQUIRE(std::holds_alternative<std::string>(objects[1]["error"]));
    CHECK(std::get<std::string>(objects[1]["error"]).find("does not parse") != std::string::npos);

    CHECK(objects[2]["control_id"] == json_value(std::string("J3")));
    CHECK(objects[2]["error"] == json_value(json_null{}));
}

TEST_CASE("messages separated by blank lines or by the next MSH, with CR, LF or CRLF line ends, are all sent in order")
{
    listener l;
    for (const std::string eol : {"\r", "\n", "\r\n"}) {
        CAPTURE(eol == "\r" ? "CR" : eol == "\n" ? "LF" : "CRLF");
        const std::string input = eol + small_message("S1", eol) + eol + small_message("S2", eol) + // blank line
                                  small_message("S3", eol) +                                        // next MSH
                                  eol + "  " + eol + eol + small_message("S4", eol) + eol + eol;
        const auto r = send(l, {}, input);
        CHECK(r.status == 0);
        CHECK(control_ids(r.out) == std::vector<std::string>{"S1", "S2", "S3", "S4"});
    }
    // The last message needs no line end at all.
    const auto r = send(l, {}, small_message("E1") + small_message("E2").substr(0, small_message("E2").size() - 1));
    CHECK(control_ids(r.out) == std::vector<std::string>{"E1", "E2"});
}

TEST_CASE("MLLP-framed input is sent one message per frame")
{
    listener l;
    std::string input;
    for (const char* id : {"F1", "F2", "F3"})
        input += '\x0b' + small_message(id) + "\x1c\r\n";
    const auto r = send(l, {}, input);
    CHECK(r.status == 0);
    CHECK(control_ids(r.out) == std::vector<std::string>{"F1", "F2", "F3"});
}

TEST_CASE("an FHS/BHS batch file gives one result line per message inside it, without its batch segments")
{
    temp_dir dir;
    const std::string batch = "FHS|^~\\&|SND|FAC|RCV|FAC|20240101120000\n"
                              "BHS|^~\\&|SND|FAC|RCV|FAC|20240101120000\n" +
                              small_message("B1", "\n") + small_message("B2", "\n") + "BTS|2\n"
                              "BHS|^~\\&|SND|FAC|RCV|FAC|20240101120000\n" +
                              small_message("B3", "\n") + "BTS|1\nFTS|2\n";
    const std::string file = dir.write("batch.hl7", batch);
    listener l({"--json"});
    const auto r = send(l, {file});
    CHECK(r.status == 0);
    CHECK(control_ids(r.out) == std::vector<std::string>{"B1", "B2", "B3"});
    const auto stopped = l.stop();
    const auto received = lines(stopped.out);
    REQUIRE(received.size() == 4); // the first line, then one object per message
    for (std::size_t i = 1; i < received.size(); ++i)
        CHECK(received[i].find("\"message_type\":\"ADT^A01\"") != std::string::npos);
}

TEST_CASE("several files are read in turn and their messages numbered on")
{
    listener l;
    const auto r = send(l, {sample("adt_a01.hl7"), "-", sample("oru_r01.hl7")}, small_message("STDIN1"));
    CHECK(r.status == 0);
    CHECK(control_ids(r.out) == std::vector<std::string>{"MSG00001", "STDIN1", "MSG00002"});
}

TEST_CASE("an input message that does not parse is reported on its line and the rest are still sent")
{
    listener l;
    const auto r = send(l, {}, small_message("U1") + "\rEVN|A01\nPID|1\n\n" + small_message("U3"));
    CHECK(r.status == 1);
    const auto out = lines(r.out);
    REQUIRE(out.size() == 3);
    check_acknowledged(out[0], 1, "U1", "AA");
    CHECK(out[1].starts_with("2 - - - - input message does not parse: not an HL7 message"));
    check_acknowledged(out[2], 3, "U3", "AA");
}

TEST_CASE("a message larger than --max-frame is reported and the next one is still sent")
{
    listener l;
    const std::string big = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|BIG|P|2.5.1\rNTE|1||" + std::string(5000, 'x') + "\r";
    const auto r = send(l, {"--max-frame", "1000"}, small_message("OK1") + big + small_message("OK2"));
    CHECK(r.status == 1);
    const auto out = lines(r.out);
    REQUIRE(out.size() == 3);
    CHECK(out[1] == "2 - - - - message larger than the maximum of 1000 bytes (--max-frame)");
    check_acknowledged(out[2], 3, "OK2", "AA");
}

TEST_CASE("a message from a pipe is sent as soon as the blank line after it arrives")
{
    listener l;
    child sender({tool(), "send", "--port", l.port()});
    sender.write(small_message("P1") + "\r");
    const auto first = sender.read_line(30s); // standard input is still open
    REQUIRE(first.has_value());
    check_acknowledged(*first, 1, "P1", "AA");
    sender.write(small_message("P2"));
    const auto r = sender.wait();
    CHECK(r.status == 0);
    CHECK(control_ids(r.out) == std::vector<std::string>{"P1", "P2"});
}

TEST_CASE("a long input is streamed: memory stays that of one message")
{
    // Messages of about 2 KB; 10,000 of them are 20 MB, far more than the tool ever holds.
    const std::string filler = std::string(2000, 'z');
    auto message = [&](int i) {
        return "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|L" + std::to_string(i) + "|P|2.5.1\rNTE|1||" + filler + "\r";
    };
    listener l({"--json"});
    const auto one = send(l, {}, message(0));
    REQUIRE(one.status == 0);

    // Spawned before the input is built: a child's peak RSS counts the parent's memory up to its exec.
    constexpr int count = 10000;
    child sender({tool(), "send", "--port", l.port()});
    std::string input;
    input.reserve(count * (filler.size() + 64));
    for (int i = 1; i <= count; ++i)
        input += message(i);
    sender.write(input);
    const auto many = sender.wait(120s);
    CHECK(many.status == 0);
    CHECK(lines(many.out).size() == std::size_t{count});
    CHECK(lines(many.out).back().starts_with(std::to_string(count) + " L" + std::to_string(count) + " AA "));
#if defined(__SANITIZE_ADDRESS__) || HL7_TEST_HAS_ASAN
    MESSAGE("memory not compared under AddressSanitizer (its quarantine holds freed memory)");
#else
    INFO("peak RSS: one message " << one.max_rss_kb << " KiB, " << count << " messages " << many.max_rss_kb << " KiB");
    CHECK(many.max_rss_kb < one.max_rss_kb + 8 * 1024);
#endif
    CHECK(l.stop().status == 0);
}

TEST_CASE("with standard error on a terminal, a long run shows a progress line and clears it at the end")
{
    listener l;
    int terminal = -1, user_side = -1;
    REQUIRE(::openpty(&terminal, &user_side, nullptr, nullptr, nullptr) == 0);
    // Only the sender may hold the terminal, or it would never report the end of output.
    ::fcntl(terminal, F_SETFD, FD_CLOEXEC);
    ::fcntl(user_side, F_SETFD, FD_CLOEXEC);
    std::string input;
    for (int i = 1; i <= 500; ++i)
        input += small_message("PR" + std::to_string(i));
    std::string shown;
    {
        child sender({tool(), "send", "--port", l.port()}, user_side);
        ::close(user_side); // the child holds it now: the terminal reads EOF (EIO) once it exits
        sender.write(input);
        sender.close_stdin();
        const auto deadline = std::chrono::steady_clock::now() + 20s;
        std::array<char, 4096> buffer;
        for (;;) {
            pollfd p{terminal, POLLIN, 0};
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0)
                break;
            const ssize_t n = ::read(terminal, buffer.data(), buffer.size());
            if (n <= 0)
                break;
            shown.append(buffer.data(), static_cast<std::size_t>(n));
        }
        const auto r = sender.wait();
        CHECK(r.status == 0);
        CHECK(lines(r.out).size() == 500); // results still go to standard output, one line each
    }
    ::close(terminal);
    INFO("terminal: " << shown);
    // The first drawing comes once more than 20 were sent: from a result (sent 21, acknowledged
    // 21) or from the tenth-of-a-second redraw, which may also count the messages in flight.
    std::smatch first;
    REQUIRE(std::regex_search(shown, first, std::regex(R"(^\rsent (\d+), acknowledged (\d+), failed 0, \d+ msg/s\x1b\[K)")));
    CHECK(std::stoi(first[1]) > 20);
    CHECK(std::stoi(first[2]) <= std::stoi(first[1]));
    CHECK(std::stoi(first[1]) - std::stoi(first[2]) <= 2); // at most the window and the one queued behind it
    CHECK(shown.ends_with("\r\033[K")); // cleared at the end
    CHECK(shown.find('\n') == std::string::npos);
}

namespace {

// answer_in_batches on a thread of its own, for the tool to talk to.
class batching_peer {
public:
    explicit batching_peer(std::size_t batch) : peer_(ctx_.get_executor(), answer_in_batches(batch)) {}
    batching_peer(const batching_peer&) = delete;
    ~batching_peer() { stop(); }

    std::string port() const { return std::to_string(peer_.port()); }
    /// Stops the peer; received() may be read afterwards.
    void stop()
    {
        if (!thread_.joinable())
            return;
        asio::post(ctx_, [this] { peer_.stop(); });
        work_.reset();
        thread_.join();
    }
    const std::vector<std::string>& received() const { return peer_.received(); }

private:
    asio::io_context ctx_;
    peer peer_;
    asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(ctx_);
    std::thread thread_{[this] { ctx_.run(); }};
};

} // namespace

TEST_CASE("with --window 8, eight messages are written before the first ACK, and ACKs that come last first each answer their own message")
{
    batching_peer p(8);
    std::string input;
    for (int i = 1; i <= 32; ++i)
        input += small_message(hl7::test::label("W", i)) + "\r";
    const auto r = run({tool(), "send", "--port", p.port(), "--window", "8", "--ack-timeout", "20"}, input);
    p.stop();
    CHECK(r.status == 0);
    CHECK(r.err == "");
    const auto out = lines(r.out);
    REQUIRE(out.size() == 32);
    for (int i = 1; i <= 32; ++i)
        check_acknowledged(out[static_cast<std::size_t>(i - 1)], i, hl7::test::label("W", i), "AA");
    REQUIRE(p.received().size() == 32);
    for (int i = 1; i <= 32; ++i)
        CHECK(p.received()[static_cast<std::size_t>(i - 1)] == hl7::test::label("W", i)); // written in input order
}

TEST_CASE("without --window, a peer that waits for several messages before answering times the first one out")
{
    batching_peer p(2);
    const auto r = run({tool(), "send", "--port", p.port(), "--ack-timeout", "1"}, small_message("ONE") + "\r" +
                                                                                     small_message("TWO") + "\r");
    p.stop();
    CHECK(r.status == 1);
    const auto out = lines(r.out);
    REQUIRE(out.size() == 2);
    CHECK(out[0].find("no acknowledgement within the ACK timeout") != std::string::npos);
    REQUIRE(!p.received().empty());
    CHECK(p.received()[0] == "ONE");
}

TEST_CASE("--window must be between 1 and 1024")
{
    for (const char* w : {"0", "1025", "x"}) {
        const auto r = run({tool(), "send", "--port", "1", "--window", w}, small_message("X") + "\r");
        CHECK(r.status == 2);
        CHECK(r.err.find("--window") != std::string::npos);
    }
}

TEST_CASE("send --metrics serves what the connection did, as Prometheus text, while the input stays open")
{
    listener l({"--reply", "AE"});
    child sender({tool(), "send", "--port", l.port(), "--metrics", "127.0.0.1:0"});
    sender.write(small_message("M1") + "\r" + small_message("M2") + "\r");
    REQUIRE(sender.read_line(30s).has_value());
    REQUIRE(sender.read_line(30s).has_value()); // both answered; standard input is still open
    const int port = metrics_port(sender);
    REQUIRE(port != 0);
    const std::string body = http_get(port);
    INFO("metrics: " << body);
    CHECK(body.starts_with("HTTP/1.1 200"));
    CHECK(body.find("messaging_client_sent_messages_total{messaging_system=\"hl7v2\"} 2\n") != std::string::npos);
    CHECK(body.find("hl7_send_acks_total{code=\"AE\"} 2\n") != std::string::npos);
    CHECK(body.find("hl7_send_acks_total{code=\"AA\"} 0\n") != std::string::npos);
    CHECK(body.find("hl7_send_timeouts_total 0\n") != std::string::npos);
    CHECK(body.find("hl7_send_input_messages_total 2\n") != std::string::npos);
    CHECK(body.find("hl7_send_connected 1\n") != std::string::npos);
    CHECK(body.find("hl7_send_outstanding 0\n") != std::string::npos);
    CHECK(body.find("messaging_client_operation_duration_seconds_count{messaging_system=\"hl7v2\"} 2\n") !=
          std::string::npos);
    CHECK(http_get(port, "/other").starts_with("HTTP/1.1 404"));
    sender.close_stdin();
    CHECK(sender.wait(10s).status == 1); // AE is a failure
}

TEST_CASE("send --metrics refuses a malformed address, and --outbox, each as a usage error")
{
    const auto bad = run({tool(), "send", "--port", "1", "--metrics", "nowhere"}, small_message("X") + "\r");
    CHECK(bad.status == 2);
    CHECK(bad.err.find("cannot serve metrics at 'nowhere'") != std::string::npos);
    temp_dir dir;
    const auto with_outbox = run({tool(), "send", "--port", "1", "--metrics", "127.0.0.1:0", "--outbox",
                                  (dir.path() / "o.db").string()},
                                 small_message("X") + "\r");
    CHECK(with_outbox.status == 2);
    CHECK(with_outbox.err.find("outbox run --metrics") != std::string::npos);
}

// The MLLP server against a raw client written here with Asio sockets: bytes go out exactly as
// the test writes them, and replies are read back with the library's decoder.
#include <hl7/net/server.hpp>

#include "support/async_util.hpp"
#include "support/peer.hpp"
#include "support/process.hpp"
#include "support/server_peers.hpp"
#include "support/util.hpp"

#include <doctest/doctest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using hl7::message;
using kind = hl7::server_event::kind;
using hl7::test::event;
using hl7::test::raw_client;
using hl7::test::recorded;
using hl7::test::recorder;
using namespace std::chrono_literals;

namespace {

// Far above what any test here waits on purpose (a few hundred milliseconds at most), so that
// only a hang reaches it, however slow and loaded the machine.
constexpr std::chrono::milliseconds deadline = 30s;

// An original-mode message (no MSH-15/16), so its acknowledgement is AA, AE or AR.
std::string adt(std::string_view control_id)
{
    return hl7::test::cr("MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20240101120000||ADT^A01^ADT_A01|" +
                         std::string(control_id) + "|P|2.5.1\nPID|1||42\n");
}

std::string framed(std::string_view payload)
{
    return hl7::mllp::encode(payload);
}

std::string raw(const message& m, std::string_view path)
{
    return std::string(m.get(path).value().raw());
}

hl7::server start(asio::any_io_executor ex, hl7::server_options options = {})
{
    auto s = hl7::server::create(std::move(ex), std::move(options));
    if (!s)
        FAIL("server::create failed: " << s.error().message());
    return std::move(s).value();
}

// Stops the server and returns its counters, which are final once the stop has completed.
asio::awaitable<hl7::server_counters> final_counters(hl7::server& s)
{
    co_await s.async_close(asio::use_awaitable);
    co_return s.counters();
}

// Runs `body` on one thread, then on two.
void on_one_and_two_threads(const std::function<asio::awaitable<void>()>& body)
{
    for (unsigned threads : {1u, 2u}) {
        CAPTURE(threads);
        hl7::test::run_async(body, deadline, threads);
    }
}

} // namespace

TEST_CASE("the default handler answers a message with AA whose MSA-2 is its MSH-10")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex);
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("CTRL1"));
        const message ack = co_await client.read_reply();
        CHECK(ack.get("MSA.1") == "AA");
        CHECK(ack.get("MSA.2") == "CTRL1");
        CHECK(ack.get("MSH.9") == "ACK^A01^ACK");
        CHECK(ack.get("MSH.3") == "RECVAPP");
        CHECK(ack.get("MSH.5") == "SENDAPP");
        const auto c = co_await final_counters(server);
        CHECK(c.connections == 1);
        CHECK(c.received == 1);
        CHECK(c.replied == 1);
        CHECK(c.errors == 0);
    });
}

TEST_CASE("the default handler answers enhanced-mode messages as their MSH-15 and MSH-16 ask")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex);
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(hl7::test::read_sample("adt_a01.hl7"));
        co_await client.send(hl7::test::read_sample("oru_r01.hl7"));
        const message first = co_await client.read_reply();
        CHECK(first.get("MSA.1") == "CA"); // MSH-15 AL, MSH-16 NE: the accept acknowledgement
        CHECK(first.get("MSA.2") == "MSG00001");
        const message second = co_await client.read_reply();
        CHECK(second.get("MSA.1") == "AA"); // MSH-15 NE, MSH-16 AL: the application acknowledgement
        CHECK(second.get("MSA.2") == "MSG00002");
        CHECK(second.get("MSH.9") == "ACK^R01^ACK");
    });
}

TEST_CASE("a custom coroutine handler makes the reply")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.handler = [](const message& m, const hl7::peer_info&)
                                     -> asio::awaitable<hl7::outcome::result<message>> {
                                     // Suspends for real before answering.
                                     auto executor = co_await asio::this_coro::executor;
                                     co_await asio::post(executor, asio::use_awaitable);
                                     co_return hl7::make_ack(m, hl7::verdict::error, {.text = "not today"});
                                 }});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("CTRL2"));
        const message ack = co_await client.read_reply();
        CHECK(ack.get("MSA.1") == "AE");
        CHECK(ack.get("MSA.2") == "CTRL2");
        CHECK(ack.get("MSA.3") == "not today");
    });
}

TEST_CASE("replies to messages pipelined in one write come back in order")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex);
        auto client = co_await raw_client::connect(server.local_endpoint());
        std::string bytes;
        for (int i = 0; i < 10; ++i)
            bytes += framed(adt("P" + std::to_string(i)));
        co_await client.write(bytes);
        for (int i = 0; i < 10; ++i) {
            const message ack = co_await client.read_reply();
            CHECK(raw(ack, "MSA.2") == "P" + std::to_string(i));
        }
        const auto c = co_await final_counters(server);
        CHECK(c.received == 10);
        CHECK(c.replied == 10);
    });
}

TEST_CASE("connections are served concurrently: one waiting in its handler does not hold up the others")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        event waiting(ex);
        event go(ex);
        auto server = start(ex, {.handler = [&](const message& m, const hl7::peer_info&)
                                     -> asio::awaitable<hl7::outcome::result<message>> {
                                     if (m.get("MSH.10") == "WAIT") {
                                         waiting.set();
                                         co_await go.wait();
                                     } else if (m.get("MSH.10") == "GO") {
                                         go.set();
                                     }
                                     co_return hl7::make_ack(m, hl7::verdict::accept);
                                 }});
        auto a = co_await raw_client::connect(server.local_endpoint());
        auto b = co_await raw_client::connect(server.local_endpoint());
        auto c = co_await raw_client::connect(server.local_endpoint());
        co_await a.send(adt("WAIT"));
        co_await waiting.wait();
        for (int i = 0; i < 3; ++i) {
            co_await b.send(adt("B" + std::to_string(i)));
            co_await c.send(adt("C" + std::to_string(i)));
            CHECK(raw(co_await b.read_reply(), "MSA.2") == "B" + std::to_string(i));
            CHECK(raw(co_await c.read_reply(), "MSA.2") == "C" + std::to_string(i));
        }
        co_await c.send(adt("GO"));
        CHECK(raw(co_await c.read_reply(), "MSA.2") == "GO");
        CHECK(raw(co_await a.read_reply(), "MSA.2") == "WAIT");
        CHECK(server.counters().connections == 3);
    }, deadline);
}

TEST_CASE("a frame that does not parse but has an MSH-10 is answered with AE and the connection stays up")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer()});
        auto client = co_await raw_client::connect(server.local_endpoint());
        // MSH-2 repeats a delimiter, so the message does not parse.
        co_await client.send(hl7::test::cr("MSH|^^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20240101||ADT^A01|BAD1|P|2.5.1\n"
                                           "PID|1||42\n"));
        const message ae = co_await client.read_reply();
        CHECK(ae.get("MSA.1") == "AE");
        CHECK(ae.get("MSA.2") == "BAD1");
        CHECK(ae.get("MSA.3").value().decoded() == hl7::make_error_code(hl7::errc::invalid_encoding_characters).message());
        CHECK(ae.get("ERR.3.1") == "100");
        CHECK(ae.get("MSH.5") == "SENDAPP");
        CHECK(ae.get("MSH.6") == "SENDFAC");
        CHECK(ae.get("MSH.9") == "ACK^A01^ACK");
        CHECK(ae.get("MSH.12") == "2.5.1");

        // Enhanced mode is read from the unparsable header too.
        co_await client.send(hl7::test::cr("MSH|^~|A|B|C|D|20240101||ORU^R01|BAD2|P|2.5.1|||AL|NE\n"));
        const message ce = co_await client.read_reply();
        CHECK(ce.get("MSA.1") == "CE");
        CHECK(ce.get("MSA.2") == "BAD2");

        co_await client.send(adt("GOOD"));
        CHECK((co_await client.read_reply()).get("MSA.2") == "GOOD");

        const auto unparsable = events.of(kind::unparsable);
        REQUIRE(unparsable.size() == 2);
        CHECK(unparsable[0].control_id == "BAD1");
        CHECK(unparsable[0].error == hl7::errc::invalid_encoding_characters);
        CHECK(unparsable[1].control_id == "BAD2");
        const auto c = co_await final_counters(server);
        CHECK(c.received == 3);
        CHECK(c.replied == 3);
        CHECK(c.errors == 2);
    });
}

TEST_CASE("a frame without a readable MSH-10 is dropped and reported, and the next message is answered")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer()});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send("not HL7 at all");
        co_await client.send("MSH|^^~\\&|A|B|C\r");                       // too few fields
        co_await client.send("MSH|^^~\\&|A|B|C|D|20240101||ADT^A01||P\r"); // MSH-10 empty
        co_await client.send("MSH^^^~\\&^A^B^C^D^20240101^^ADT^X1^P\r");   // no usable field separator
        co_await client.send(adt("NEXT"));
        const message ack = co_await client.read_reply();
        CHECK(ack.get("MSA.1") == "AA");
        CHECK(ack.get("MSA.2") == "NEXT");

        const auto unparsable = events.of(kind::unparsable);
        REQUIRE(unparsable.size() == 4);
        CHECK(unparsable[0].error == hl7::errc::not_hl7);
        for (const auto& e : unparsable)
            CHECK(e.control_id.empty());
        const auto c = co_await final_counters(server);
        CHECK(c.received == 5);
        CHECK(c.replied == 1);
        CHECK(c.errors == 4);
    });
}

TEST_CASE("an oversized or unfinished frame is dropped and reported, and the next frame is answered")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.max_frame = 128, .observer = events.observer()});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(std::string(1000, 'x'));
        co_await client.send(adt("AFTER-BIG"));
        CHECK((co_await client.read_reply()).get("MSA.2") == "AFTER-BIG");
        // A start block inside an unfinished frame: the new frame starts there.
        co_await client.write("\x0bMSH|^~\\&|unfinished" + framed(adt("AFTER-BROKEN")));
        CHECK((co_await client.read_reply()).get("MSA.2") == "AFTER-BROKEN");

        const auto bad = events.of(kind::bad_frame);
        REQUIRE(bad.size() == 2);
        CHECK(bad[0].error == hl7::errc::frame_too_large);
        CHECK(bad[1].error == hl7::errc::invalid_frame);
        const auto c = co_await final_counters(server);
        CHECK(c.received == 2);
        CHECK(c.replied == 2);
        CHECK(c.errors == 2);
    });
}

TEST_CASE("bytes between frames are ignored")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer()});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.write("noise\r\n" + framed(adt("G1")) + "\n\n \x1c junk " + framed(adt("G2")) + "tail");
        CHECK((co_await client.read_reply()).get("MSA.2") == "G1");
        CHECK((co_await client.read_reply()).get("MSA.2") == "G2");
        CHECK(events.of(kind::bad_frame).empty());
        CHECK(events.of(kind::unparsable).empty());
        const auto c = co_await final_counters(server);
        CHECK(c.received == 2);
        CHECK(c.errors == 0);
    });
}

TEST_CASE("a handler that throws is answered with AE 207 and reported, and the connection stays up")
{
    on_one_and_two_threads([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex,
                            {.handler = [](const message& m, const hl7::peer_info&)
                                 -> asio::awaitable<hl7::outcome::result<message>> {
                                 if (m.get("MSH.10") == "THROW")
                                     throw std::runtime_error("database down");
                                 co_return hl7::make_ack(m, hl7::verdict::accept);
                             },
                             .observer = events.observer()});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("THROW"));
        const message ae = co_await client.read_reply();
        CHECK(ae.get("MSA.1") == "AE");
        CHECK(ae.get("MSA.2") == "THROW");
        CHECK(ae.get("ERR.3.1") == "207");
        // The peer is not told the server's internals; the observer is.
        CHECK(ae.get("ERR.8").value().decoded() ==
              "the message could not be processed; the receiver's log has the details");
        CHECK_FALSE(ae.get("MSA.3").value().present());
        co_await client.send(adt("FINE"));
        CHECK((co_await client.read_reply()).get("MSA.1") == "AA");

        const auto failed = events.of(kind::handler_error);
        REQUIRE(failed.size() == 1);
        CHECK(failed[0].control_id == "THROW");
        CHECK(failed[0].error == hl7::errc::handler_failed);
        CHECK(failed[0].detail == "database down");
        const auto c = co_await final_counters(server);
        CHECK(c.received == 2);
        CHECK(c.replied == 2);
        CHECK(c.errors == 1);
    });
}

TEST_CASE("the observer follows a connection from accept to disconnect")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        std::vector<recorded> seen;
        event gone(ex);
        auto server = start(ex, {.observer = [&](const hl7::server_event& e) {
                                     seen.push_back({e.what, e.peer, std::string(e.control_id), e.error, std::string(e.detail)});
                                     if (e.what == kind::disconnected)
                                         gone.set();
                                 }});
        tcp::endpoint me;
        {
            auto client = co_await raw_client::connect(server.local_endpoint());
            me = client.local_endpoint();
            co_await client.send(adt("LIFE"));
            co_await client.read_reply();
        }
        co_await gone.wait();
        REQUIRE(seen.size() == 4);
        CHECK(seen[0].what == kind::accepted);
        CHECK(seen[1].what == kind::received);
        CHECK(seen[1].control_id == "LIFE");
        CHECK(seen[2].what == kind::replied);
        CHECK(seen[2].control_id == "LIFE");
        CHECK(seen[3].what == kind::disconnected);
        CHECK(seen[3].error == asio::error::eof);
        for (const auto& e : seen)
            CHECK(e.peer == me);
    }, deadline);
}

TEST_CASE("the server listens on the IPv6 loopback" * doctest::skip(!hl7::test::has_ipv6_loopback()))
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto created = hl7::server::create(ex, {.host = "::1"});
        if (!created) {
            MESSAGE("skipped: ::1 cannot be bound here: " << created.error().message());
            co_return;
        }
        auto& server = created.value();
        CHECK(server.local_endpoint().address() == asio::ip::make_address("::1"));
        CHECK(server.local_endpoint().port() != 0);
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("V6"));
        CHECK((co_await client.read_reply()).get("MSA.2") == "V6");
    }, deadline);
}

TEST_CASE("binding a port that is in use fails with address_in_use")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto first = start(ex);
        auto second = hl7::server::create(ex, {.port = first.local_endpoint().port()});
        REQUIRE(!second);
        CHECK(second.error() == asio::error::address_in_use);
    }, deadline);
}

TEST_CASE("a host that is not an IP address literal fails with invalid_host")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        for (const char* host : {"localhost", "", "127.0.0.256", "[::1]", "hl7.example.org"}) {
            CAPTURE(host);
            auto s = hl7::server::create(ex, {.host = host});
            REQUIRE(!s);
            CHECK(s.error() == hl7::errc::invalid_host);
        }
    }, deadline);
}

TEST_CASE("async_close closes an idle connection at once and completes")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer()});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("IDLE"));
        co_await client.read_reply();
        co_await server.async_close(asio::use_awaitable);
        CHECK(co_await client.read_end() == asio::error::eof);
        const auto gone = events.of(kind::disconnected);
        REQUIRE(gone.size() == 1);
        CHECK(gone[0].error == hl7::errc::closed);
        // No more connections are accepted.
        tcp::socket late(ex);
        auto [ec] = co_await late.async_connect(server.local_endpoint(), asio::as_tuple(asio::use_awaitable));
        CHECK(ec == asio::error::connection_refused);
    }, deadline);
}

TEST_CASE("a child process started while the server runs holds neither its port nor its connections once closed")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex);
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("EXEC"));
        co_await client.read_reply();
        hl7::test::child sleeper({"/bin/sh", "-c", "echo running; exec sleep 60"}); // inherits every descriptor not close-on-exec
        // Past its exec: until then the child holds a copy of every descriptor, close-on-exec or not
        // (posix_spawn returns before the kernel closes them).
        REQUIRE(sleeper.read_line(5s) == "running");
        co_await server.async_close(asio::use_awaitable);
        CHECK(co_await client.read_end() == asio::error::eof); // not held open by the child
        tcp::socket late(ex);
        auto [ec] = co_await late.async_connect(server.local_endpoint(), asio::as_tuple(asio::use_awaitable));
        CHECK(ec == asio::error::connection_refused); // nobody listens: no backlog left in the child
    }, deadline);
}

TEST_CASE("async_close lets a running handler finish and deliver its reply before closing")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recorder events;
        event started(ex);
        event go(ex);
        auto server = start(ex, {.handler = [&](const message& m, const hl7::peer_info&)
                                     -> asio::awaitable<hl7::outcome::result<message>> {
                                     started.set();
                                     co_await go.wait();
                                     co_return hl7::make_ack(m, hl7::verdict::accept);
                                 },
                                 .observer = events.observer()});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("SLOW"));
        co_await started.wait();

        event stopped(ex);
        std::size_t replies_when_stopped = 0;
        server.async_close([&] {
            replies_when_stopped = events.of(kind::replied).size();
            stopped.set();
        });
        // The handler is still running when the stop begins, whatever the machine's speed.
        go.set();
        const message ack = co_await client.read_reply();
        CHECK(ack.get("MSA.1") == "AA");
        CHECK(ack.get("MSA.2") == "SLOW");
        CHECK(co_await client.read_end() == asio::error::eof);
        co_await stopped.wait();
        CHECK(replies_when_stopped == 1);
    }, deadline);
}

TEST_CASE("async_close closes a connection whose peer does not read its reply once the stop timeout has passed")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recorder events;
        // A reply larger than what the socket buffers of both sides can hold: its write waits
        // for a peer that never reads.
        const std::string big = hl7::test::cr("MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|BIG|P|2.5.1\nNTE|1||") +
                                std::string(16 << 20, 'x') + "\r";
        auto server = start(ex, {.handler = [&](const message&, const hl7::peer_info&)
                                     -> asio::awaitable<hl7::outcome::result<message>> {
                                     co_return message::parse(std::string_view(big)).value();
                                 },
                                 .observer = events.observer(),
                                 .close_timeout = 200ms});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("STUCK"));
        co_await hl7::test::until([&] { return !events.of(kind::received).empty(); }, "the message at the server");
        REQUIRE(events.of(kind::received).size() == 1);
        co_await server.async_close(asio::use_awaitable); // would wait forever without the timeout
        CHECK(events.of(kind::replied).empty());
        const auto gone = events.of(kind::disconnected);
        REQUIRE(gone.size() == 1);
        CHECK(gone[0].error);
    }, deadline);
}

TEST_CASE("async_close called twice completes twice, and once more after the server has stopped")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex);
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("TWICE"));
        co_await client.read_reply();

        bool inline_completion = false;
        event late(ex);
        co_await (server.async_close(asio::use_awaitable) && server.async_close(asio::use_awaitable));
        server.async_close([&] {
            inline_completion = true;
            late.set();
        });
        CHECK_FALSE(inline_completion); // completes through the executor, not inside the call
        co_await late.wait();
        CHECK(inline_completion);
    }, deadline);
}

namespace {

constexpr int connections = 8;
constexpr int messages = 25;

// Sends `messages` messages and a frame that does not parse, all in one write, and checks the
// replies.
asio::awaitable<void> chatty_client(tcp::endpoint to, int id)
{
    auto client = co_await raw_client::connect(to);
    std::string bytes;
    for (int i = 0; i < messages; ++i) {
        bytes += framed(adt(std::to_string(id) + "-" + std::to_string(i)));
        if (i == messages / 2)
            bytes += framed("garbage that does not parse");
    }
    co_await client.write(bytes);
    for (int i = 0; i < messages; ++i) {
        const message ack = co_await client.read_reply();
        CHECK(raw(ack, "MSA.2") == std::to_string(id) + "-" + std::to_string(i));
    }
}

} // namespace

TEST_CASE("counters are exact after many messages over concurrent connections on two threads")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recorder events;
        auto server = start(ex, {.observer = events.observer()});

        // Each client on its own strand, as independent peers would be.
        using task = decltype(asio::co_spawn(std::declval<asio::any_io_executor>(), std::declval<asio::awaitable<void>>(),
                                             asio::deferred));
        std::vector<task> clients;
        for (int id = 0; id < connections; ++id)
            clients.push_back(asio::co_spawn(asio::any_io_executor(asio::make_strand(ex)),
                                             chatty_client(server.local_endpoint(), id), asio::deferred));
        auto [order, exceptions] = co_await asio::experimental::make_parallel_group(std::move(clients))
                                       .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
        for (const auto& e : exceptions)
            if (e)
                std::rethrow_exception(e);

        const auto c = co_await final_counters(server);
        CHECK(c.connections == connections);
        CHECK(c.received == connections * (messages + 1));
        CHECK(c.replied == connections * messages);
        CHECK(c.errors == connections);
        CHECK(events.of(kind::accepted).size() == connections);
        CHECK(events.of(kind::replied).size() == connections * messages);
        CHECK(events.of(kind::disconnected).size() == connections);
    }, deadline, 2);
}

TEST_CASE("destroying the server closes its connections; a moved-to handle keeps the server")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto original = start(ex);
        auto client = co_await raw_client::connect(original.local_endpoint());
        {
            hl7::server moved = std::move(original);
            co_await client.send(adt("MOVED"));
            CHECK((co_await client.read_reply()).get("MSA.2") == "MOVED");
        }
        CHECK(co_await client.read_end() == asio::error::eof);
    }, deadline);
}

TEST_CASE("assigning over a server stops the old one")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex);
        auto old_client = co_await raw_client::connect(server.local_endpoint());
        co_await old_client.send(adt("OLD"));
        co_await old_client.read_reply();
        server = start(ex);
        CHECK(co_await old_client.read_end() == asio::error::eof);
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("NEW"));
        CHECK((co_await client.read_reply()).get("MSA.2") == "NEW");
    }, deadline);
}

TEST_CASE("stopping and destroying a server while a handler is running leaves nothing behind")
{
    // Run under ASan: the io_context is destroyed with the session suspended in its handler.
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        event started(ex);
        std::optional<raw_client> idle;
        {
            auto server = start(ex, {.handler = [&](const message& m, const hl7::peer_info&)
                                         -> asio::awaitable<hl7::outcome::result<message>> {
                                         started.set();
                                         co_await hl7::test::sleep_for(1h);
                                         co_return hl7::make_ack(m, hl7::verdict::accept);
                                     }});
            auto connected = co_await raw_client::connect(server.local_endpoint());
            idle.emplace(std::move(connected));
            auto busy = co_await raw_client::connect(server.local_endpoint());
            co_await busy.send(adt("NEVER"));
            co_await started.wait();
            server.async_close(asio::detached);
        }
        // The idle connection is closed; the busy one is still in its handler when the test
        // body ends and the io_context is destroyed.
        CHECK(co_await idle->read_end() == asio::error::eof);
    }, deadline);
}

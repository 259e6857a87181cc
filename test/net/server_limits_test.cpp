// The server exposed to untrusted peers, over real sockets: its limits and timeouts, and the
// attacks they answer at small scale (connection floods from one source, partial frames that
// never end, empty-frame floods, millions of tiny segments, peers that never read, descriptor
// exhaustion), each checked for what the server does and what it reports.
#include <hl7/net/client.hpp>
#include <hl7/net/server.hpp>

#include "support/async_util.hpp"
#include "support/server_peers.hpp"
#include "support/tls_certs.hpp"
#include "support/util.hpp"

#include <doctest/doctest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <dirent.h>
#include <sys/resource.h>

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using hl7::errc;
using hl7::message;
using hl7::test::raw_client;
using hl7::test::recorder;
using kind = hl7::server_event::kind;
using limit = hl7::server_limit;
using namespace std::chrono_literals;

namespace {

// Far above what any test here waits on purpose (the timeouts it trips, a second or two in
// all), so that only a hang reaches it, however slow and loaded the machine.
constexpr std::chrono::milliseconds deadline = 30s;

std::string adt(std::string_view control_id)
{
    return "MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20240101120000||ADT^A01^ADT_A01|" + std::string(control_id) +
           "|P|2.5.1\rPID|1||42\r";
}

hl7::server start(asio::any_io_executor ex, hl7::server_options options)
{
    auto s = hl7::server::create(std::move(ex), std::move(options));
    if (!s)
        FAIL("server::create failed: " << s.error().message());
    return std::move(s).value();
}

std::uint64_t hits(const hl7::server& s, limit l)
{
    return s.counters().limits[static_cast<std::size_t>(l)];
}

// Whether this machine routes 127.0.0.2 to the loopback (Linux does), so that a second
// source can be played.
bool second_loopback_available()
{
    asio::io_context ctx;
    tcp::socket s(ctx);
    error_code ec;
    s.open(tcp::v4(), ec);
    if (!ec)
        s.bind({asio::ip::make_address("127.0.0.2"), 0}, ec);
    return !ec;
}

const auto other_source = asio::ip::make_address("127.0.0.2");

// Sends a message and checks that it is answered with AA.
asio::awaitable<void> check_served(tcp::endpoint at, std::string_view id,
                                   std::optional<asio::ip::address> from = std::nullopt)
{
    auto client = co_await raw_client::connect(at, from);
    co_await client.send(adt(id));
    const message ack = co_await client.read_reply();
    CHECK(ack.get("MSA.1") == "AA");
    CHECK(ack.get("MSA.2") == id);
}

} // namespace

TEST_CASE("connections beyond max_connections are closed at once and reported; one more gets in when one ends")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer(), .max_connections = 2});
        auto a = co_await raw_client::connect(server.local_endpoint());
        auto b = co_await raw_client::connect(server.local_endpoint());
        co_await hl7::test::until([&] { return server.counters().open == 2; }, "the two connections open");
        {
            auto c = co_await raw_client::connect(server.local_endpoint());
            CHECK(co_await c.read_end() == asio::error::eof);
        }
        const auto refused = events.of(kind::refused);
        REQUIRE(refused.size() == 1);
        CHECK(refused[0].error == errc::too_many_connections);
        CHECK(hits(server, limit::max_connections) == 1);
        CHECK(events.of(kind::accepted).size() == 2);
        a.socket().close();
        co_await hl7::test::until([&] { return server.counters().open == 1; }, "the closed connection gone");
        co_await check_served(server.local_endpoint(), "AFTER");
        co_await b.send(adt("B"));
        CHECK((co_await b.read_reply()).get("MSA.2") == "B");
    }, deadline);
}

// Skipped where 127.0.0.2 is not a loopback address.
TEST_CASE("one source holding its max_per_source connections does not lock another source out"
          * doctest::skip(!second_loopback_available()))
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer(), .max_per_source = 3});
        std::vector<raw_client> hog;
        for (int i = 0; i < 3; ++i)
            hog.push_back(co_await raw_client::connect(server.local_endpoint()));
        for (int i = 0; i < 5; ++i) {
            auto more = co_await raw_client::connect(server.local_endpoint());
            CHECK(co_await more.read_end() == asio::error::eof);
        }
        co_await check_served(server.local_endpoint(), "OTHER", other_source);
        CHECK(hits(server, limit::max_per_source) == 5);
        for (const auto& r : events.of(kind::refused))
            CHECK(r.error == errc::too_many_from_source);
    }, deadline);
}

// Skipped where 127.0.0.2 is not a loopback address.
TEST_CASE("a source outside the allowed networks is closed before any byte is read; an allowed one is served"
          * doctest::skip(!second_loopback_available()))
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer(), .allowed_sources = {"127.0.0.2/32", "2001:db8::/32"}});
        {
            auto outsider = co_await raw_client::connect(server.local_endpoint());
            co_await outsider.send(adt("NO"));
            CHECK(co_await outsider.read_end());
        }
        co_await check_served(server.local_endpoint(), "YES", other_source);
        const auto refused = events.of(kind::refused);
        REQUIRE(refused.size() == 1);
        CHECK(refused[0].error == errc::source_not_allowed);
        CHECK(refused[0].peer.address() == asio::ip::make_address("127.0.0.1"));
        CHECK(events.of(kind::accepted).size() == 1);
        CHECK(server.counters().received == 1);
    }, deadline);
}

TEST_CASE("a malformed allowed network fails create with invalid_network")
{
    asio::io_context ctx;
    auto s = hl7::server::create(ctx.get_executor(), {.allowed_sources = {"10.0.0.0/8", "10.0.0.300/8"}});
    REQUIRE(s.has_error());
    CHECK(s.error() == errc::invalid_network);
}

TEST_CASE("an idle connection is closed at the idle timeout and reported with its reason")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        // Long enough that the first message, sent as soon as the connection is up, arrives in
        // time on a slow machine.
        auto server = start(ex, {.observer = events.observer(), .idle_timeout = 1s});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("ONE"));
        co_await client.read_reply();
        co_await client.write("bytes outside frames do not keep it open");
        CHECK(co_await client.read_end() == asio::error::eof);
        co_await hl7::test::until([&] { return !events.of(kind::disconnected).empty(); }, "the connection gone");
        const auto timed_out = events.of(kind::timed_out);
        REQUIRE(timed_out.size() == 1);
        CHECK(timed_out[0].error == errc::idle_timeout);
        CHECK(events.of(kind::disconnected)[0].error == errc::idle_timeout);
        CHECK(hits(server, limit::idle_timeout) == 1);
    }, deadline);
}

TEST_CASE("a peer sending its frame a byte at a time is closed at the frame timeout")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer(), .frame_timeout = 300ms});
        auto client = co_await raw_client::connect(server.local_endpoint());
        const std::string frame = hl7::mllp::encode(adt("SLOW"));
        error_code ec;
        for (std::size_t i = 0; i < frame.size() && !ec; ++i) {
            ec = co_await client.try_write(frame.substr(i, 1));
            co_await hl7::test::sleep_for(20ms);
        }
        co_await hl7::test::until([&] { return !events.of(kind::timed_out).empty(); }, "the frame timeout");
        CHECK(events.of(kind::timed_out)[0].error == errc::frame_timeout);
        CHECK(server.counters().received == 0);
        CHECK(hits(server, limit::frame_timeout) == 1);
    }, deadline);
}

TEST_CASE("a peer that never reads its replies is closed at the write timeout")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        const std::string big = "MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|BIG|P|2.5.1\rMSA|AA|X\rNTE|1||" +
                                std::string(16 << 20, 'x') + "\r";
        auto server = start(ex, {.handler = [&](const message&, const hl7::peer_info&)
                                     -> asio::awaitable<hl7::outcome::result<message>> {
                                     co_return message::parse(std::string_view(big)).value();
                                 },
                                 .observer = events.observer(),
                                 .write_timeout = 300ms});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("NEVER-READS"));
        co_await hl7::test::until([&] { return !events.of(kind::disconnected).empty(); }, "the connection gone");
        const auto timed_out = events.of(kind::timed_out);
        REQUIRE(timed_out.size() == 1);
        CHECK(timed_out[0].error == errc::write_timeout);
        CHECK(timed_out[0].control_id == "NEVER-READS");
        CHECK(server.counters().replied == 0);
    }, deadline);
}

TEST_CASE("an empty-frame flood closes the connection after max_bad_frames, and its reports are few")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        const auto started = std::chrono::steady_clock::now();
        auto server = start(ex, {.observer = events.observer()});
        std::string flood;
        for (int i = 0; i < 10000; ++i)
            flood += hl7::mllp::encode("");
        for (int round = 0; round < 20; ++round) {
            auto client = co_await raw_client::connect(server.local_endpoint());
            (void)co_await client.try_write(flood); // the server may close before it has read it all
            CHECK(co_await client.read_end());
        }
        co_await hl7::test::until([&] { return events.of(kind::disconnected).size() == 20; },
                                  "the twenty connections gone");
        for (const auto& d : events.of(kind::disconnected))
            CHECK(d.error == errc::too_many_bad_frames);
        const auto c = server.counters();
        CHECK(c.limits[static_cast<std::size_t>(limit::max_bad_frames)] == 20);
        CHECK(c.received >= 20 * 10);
        // 20 connections of 10 bad frames each (200 unparsable, 20 limit_reached unlimited): ten
        // reports of each kind, then one a second and a count of those left out once a second,
        // however long the flood took on this machine (counted up to now, after the reports).
        const std::size_t unparsable = events.of(kind::unparsable).size();
        const std::size_t limited = events.of(kind::limit_reached).size();
        const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
        const auto allowed = static_cast<std::size_t>(10 + 2 * (seconds.count() + 1));
        CAPTURE(seconds.count());
        CHECK(unparsable <= allowed);
        CHECK(limited <= allowed);
        co_await check_served(server.local_endpoint(), "STILL-SERVED");
    }, deadline);
}

TEST_CASE("partial frames that never end are closed at the buffer limit, and the budget holds")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer(), .max_buffered = 1 << 20});
        const std::string chunk = "\x0b" + std::string(600 * 1024, 'x');
        std::vector<raw_client> attackers;
        for (int i = 0; i < 5; ++i) {
            attackers.push_back(co_await raw_client::connect(server.local_endpoint()));
            (void)co_await attackers.back().try_write(chunk);
        }
        co_await hl7::test::until([&] { return hits(server, limit::max_buffered) >= 3; },
                                  "three connections closed at the buffer limit");
        for (const auto& e : events.of(kind::limit_reached))
            CHECK(e.error == errc::buffer_limit);
        // A small message of another client is still served: it fits each connection's allowance.
        co_await check_served(server.local_endpoint(), "SMALL");
    }, deadline);
}

TEST_CASE("a frame of thousands of tiny segments is refused with AR before it is parsed, and the connection goes on")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer(), .max_segments = 1000});
        std::string tiny = adt("TINY");
        for (int i = 0; i < 200000; ++i)
            tiny += "Z\r";
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(tiny);
        const message ar = co_await client.read_reply();
        CHECK(ar.get("MSA.1") == "AR");
        CHECK(ar.get("MSA.2") == "TINY");
        CHECK(ar.get("ERR.3.1") == "207");
        co_await client.send(adt("NEXT"));
        CHECK((co_await client.read_reply()).get("MSA.1") == "AA");
        const auto limited = events.of(kind::limit_reached);
        REQUIRE(limited.size() == 1);
        CHECK(limited[0].error == errc::message_too_complex);
        CHECK(hits(server, limit::max_segments) == 1);
    }, deadline);
}

TEST_CASE("an acknowledgement is never acknowledged, so two receivers that answer everything cannot loop")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer()});
        auto client = co_await raw_client::connect(server.local_endpoint());
        const std::string ack = "MSH|^~\\&|PEER|F|ME|F|20240101||ACK^A01^ACK|P1|P|2.5.1\rMSA|AA|X1\r";
        co_await client.send(ack);
        co_await client.send(adt("AFTER-ACK"));
        // The first frame back answers the message, not the ACK.
        CHECK((co_await client.read_reply()).get("MSA.2") == "AFTER-ACK");
        const auto ignored = events.of(kind::ack_ignored);
        REQUIRE(ignored.size() == 1);
        CHECK(ignored[0].control_id == "P1");
        const auto c = server.counters();
        CHECK(c.acks_ignored == 1);
        CHECK(c.replied == 1);
    }, deadline);
}

TEST_CASE("the handler learns each message's peer from the library, on every I/O thread")
{
    for (unsigned threads : {1u, 2u}) {
        CAPTURE(threads);
        hl7::test::run_async([]() -> asio::awaitable<void> {
            std::mutex mutex;
            std::vector<std::pair<std::string, tcp::endpoint>> seen;
            auto ex = co_await asio::this_coro::executor;
            auto server = start(ex, {.handler = [&](const message& m, const hl7::peer_info& from)
                                         -> asio::awaitable<hl7::outcome::result<message>> {
                                         // Suspends first: the peer must still be right after.
                                         co_await hl7::test::sleep_for(1ms);
                                         std::lock_guard lock(mutex);
                                         seen.emplace_back(std::string(m.control_id()), from.address);
                                         co_return hl7::make_ack(m, hl7::verdict::accept);
                                     }});
            auto a = co_await raw_client::connect(server.local_endpoint());
            auto b = co_await raw_client::connect(server.local_endpoint());
            for (int i = 0; i < 5; ++i) {
                co_await a.send(adt("A" + std::to_string(i)));
                co_await b.send(adt("B" + std::to_string(i)));
            }
            for (int i = 0; i < 5; ++i) {
                co_await a.read_reply();
                co_await b.read_reply();
            }
            std::lock_guard lock(mutex);
            REQUIRE(seen.size() == 10);
            for (const auto& [id, peer] : seen)
                CHECK(peer == (id[0] == 'A' ? a.local_endpoint() : b.local_endpoint()));
        }, deadline, threads);
    }
}

TEST_CASE("an observer that throws ends that connection, reported as session_failed; others go on")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto record = events.observer();
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = [&](const hl7::server_event& e) {
                                     record(e);
                                     if (e.what == kind::received && e.control_id == "BOOM")
                                         throw std::runtime_error("observer failure");
                                 }});
        auto client = co_await raw_client::connect(server.local_endpoint());
        co_await client.send(adt("BOOM"));
        CHECK(co_await client.read_end());
        co_await hl7::test::until([&] { return !events.of(kind::disconnected).empty(); }, "the connection gone");
        const auto gone = events.of(kind::disconnected);
        CHECK(gone[0].error == errc::session_failed);
        CHECK(gone[0].detail == "the observer threw: observer failure");
        co_await check_served(server.local_endpoint(), "FINE");
        co_await server.async_close(asio::use_awaitable); // every session ended: the stop completes
    }, deadline);
}

namespace {

std::size_t open_descriptors()
{
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (::readdir(d))
            ++n;
        ::closedir(d);
    }
    return n;
}

} // namespace

TEST_CASE("the accept loop survives running out of descriptors: it reports it once, pauses and goes on")
{
    rlimit before{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &before) == 0);
    hl7::test::run_async([&]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {.observer = events.observer()});
        // The clients' sockets are made first: only the server's accepts then need descriptors.
        std::vector<tcp::socket> clients;
        for (int i = 0; i < 6; ++i) {
            clients.emplace_back(ex);
            clients.back().open(tcp::v4());
        }
        rlimit tight = before;
        tight.rlim_cur = open_descriptors() + 2;
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &tight) == 0);
        for (auto& c : clients)
            co_await c.async_connect(server.local_endpoint(), asio::use_awaitable);
        co_await hl7::test::until([&] { return !events.of(kind::accept_failed).empty(); }, "an accept to fail");
        co_await hl7::test::sleep_for(300ms); // several pauses and retries, still out of descriptors
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &before) == 0);
        // Every client is served once descriptors are back.
        for (std::size_t i = 0; i < clients.size(); ++i) {
            const std::string frame = hl7::mllp::encode(adt("FD" + std::to_string(i)));
            co_await asio::async_write(clients[i], asio::buffer(frame), asio::use_awaitable);
            // The whole reply frame, however many reads it takes to arrive.
            std::string reply;
            co_await asio::async_read_until(clients[i], asio::dynamic_buffer(reply), "\x1c\r", asio::use_awaitable);
            CHECK(reply.find("MSA|AA|FD" + std::to_string(i)) != std::string::npos);
        }
        const auto failed = events.of(kind::accept_failed);
        CHECK(failed.size() == 1);
        CHECK(failed[0].error == asio::error::no_descriptors);
    }, deadline);
    ::setrlimit(RLIMIT_NOFILE, &before);
}

namespace {

const hl7::test::certificates& certs()
{
    return hl7::test::shared_certificates();
}

hl7::server_options mutual_tls(std::vector<std::string> allowed, recorder& events)
{
    hl7::server_options o{.observer = events.observer()};
    o.tls = hl7::tls_server_options{.certificate_file = certs().server_cert,
                                    .private_key_file = certs().server_key,
                                    .client_ca_file = certs().ca,
                                    .handshake_timeout = 10s, // the handshakes are expected to succeed
                                    .allowed_client_names = std::move(allowed)};
    return o;
}

asio::awaitable<hl7::outcome::result<hl7::ack>> send_tls(const hl7::server& server, std::string id)
{
    auto ex = co_await asio::this_coro::executor;
    auto client = hl7::client::create(ex, {.host = "127.0.0.1"}).value();
    hl7::connection_options o;
    o.reconnect.max_attempts = 1;
    o.tls = hl7::tls_client_options{.ca_file = certs().ca, .certificate_file = certs().client_cert,
                                    .private_key_file = certs().client_key};
    auto conn = client.connect(server.local_endpoint().port(), o).value();
    auto msg = message::parse(adt(id)).value();
    auto result = co_await conn.send(std::move(msg));
    co_await client.close();
    co_return result;
}

} // namespace

TEST_CASE("a client certificate naming no allowed client is refused after the handshake; an allowed one is served")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        std::string name_seen;
        auto ex = co_await asio::this_coro::executor;
        auto o = mutual_tls({"lab.example.org"}, events);
        auto refusing = start(ex, std::move(o));
        const auto refused = co_await send_tls(refusing, "NOT-ALLOWED");
        CHECK(refused.has_error());
        co_await hl7::test::until([&] { return !events.of(kind::refused).empty(); }, "the refusal");
        const auto r = events.of(kind::refused);
        CHECK(r[0].error == errc::tls_client_not_allowed);
        CHECK(r[0].detail == "certificate names: test client, client.test");
        CHECK(refusing.counters().received == 0);
        CHECK(hits(refusing, limit::allowed_client_names) == 1);

        recorder more;
        auto allowing_options = mutual_tls({"lab.example.org", "CLIENT.TEST"}, more);
        allowing_options.handler = [&](const message& m, const hl7::peer_info& from)
            -> asio::awaitable<hl7::outcome::result<message>> {
            name_seen = std::string(from.client_name);
            co_return hl7::make_ack(m, hl7::verdict::accept);
        };
        auto allowing = start(ex, std::move(allowing_options));
        const auto served = co_await send_tls(allowing, "ALLOWED");
        REQUIRE(served.has_value());
        CHECK(served.value().accepted());
        CHECK(name_seen == "CLIENT.TEST");
    }, deadline);
}

TEST_CASE("allowed client names without client certificates asked for fail create with tls_setup_failed")
{
    asio::io_context ctx;
    hl7::server_options o;
    o.tls = hl7::tls_server_options{.certificate_file = certs().server_cert,
                                    .private_key_file = certs().server_key,
                                    .allowed_client_names = {"anyone"}};
    auto s = hl7::server::create(ctx.get_executor(), std::move(o));
    REQUIRE(s.has_error());
    CHECK(s.error() == errc::tls_setup_failed);
}

TEST_CASE("TLS handshakes beyond max_handshakes wait in the backlog until one is over")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        recorder events;
        auto ex = co_await asio::this_coro::executor;
        hl7::server_options o{.observer = events.observer(), .max_handshakes = 1};
        // One timeout for both handshakes: the silent one's must expire, the queued one's must
        // not, so it is long enough for a TLS handshake on a slow machine.
        o.tls = hl7::tls_server_options{.certificate_file = certs().server_cert,
                                        .private_key_file = certs().server_key,
                                        .handshake_timeout = 2s};
        auto server = start(ex, std::move(o));
        // A peer that connects and never says a word holds the one handshake slot.
        auto silent = co_await raw_client::connect(server.local_endpoint());
        co_await hl7::test::until([&] { return events.of(kind::accepted).size() == 1; },
                                  "the silent connection accepted");
        auto client = hl7::client::create(ex, {.host = "127.0.0.1"}).value();
        hl7::connection_options co;
        co.tls = hl7::tls_client_options{.ca_file = certs().ca};
        co.connect_timeout = 10s;
        auto conn = client.connect(server.local_endpoint().port(), co).value();
        auto msg = message::parse(adt("QUEUED")).value();
        const auto ack = co_await conn.send(std::move(msg));
        REQUIRE(ack.has_value()); // served once the silent one's handshake timed out
        const auto failed = events.of(kind::handshake_failed);
        REQUIRE(failed.size() == 1);
        CHECK(failed[0].error == errc::tls_handshake_timeout);
        CHECK(failed[0].peer == silent.local_endpoint());
        CHECK(hits(server, limit::max_handshakes) >= 1);
        CHECK(hits(server, limit::handshake_timeout) == 1);
        co_await client.close();
    }, deadline);
}

TEST_CASE("the counters tell bytes, replies by code and handler round trips")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto server = start(ex, {});
        auto client = co_await raw_client::connect(server.local_endpoint());
        std::size_t sent = 0, got = 0;
        for (int i = 0; i < 3; ++i) {
            const std::string m = adt("C" + std::to_string(i));
            sent += m.size() + 3;
            co_await client.send(m);
            got += (co_await client.read_frame()).size() + 3;
        }
        co_await server.async_close(asio::use_awaitable);
        const auto c = server.counters();
        CHECK(c.bytes_received == sent);
        CHECK(c.bytes_sent == got);
        CHECK(c.replies_by_code[static_cast<std::size_t>(hl7::ack_code::AA)] == 3);
        CHECK(c.handler_time.count == 3);
        std::uint64_t in_buckets = 0;
        for (auto n : c.handler_time.buckets)
            in_buckets += n;
        CHECK(in_buckets == 3);
        CHECK(c.open == 0);
    }, deadline);
}

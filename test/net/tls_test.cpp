// MLLP over TLS: the client against the library's server with certificates made at run time.
#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>
#include <hl7/net/server.hpp>

#include "support/async_util.hpp"
#include "support/peer.hpp"
#include "support/tls_certs.hpp"
#include "support/checks.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <mutex>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using hl7::errc;
using hl7::message;
using hl7::test::fresh;
using hl7::test::run_async;
using hl7::test::until;

namespace {

// Far above what any test here waits on purpose (two handshake timeouts of 200 ms at most),
// so that only a hang reaches it, however slow and loaded the machine.
constexpr std::chrono::milliseconds deadline = 30s;

// Runs a test body with that deadline.
void run(std::function<asio::awaitable<void>()> body)
{
    run_async(std::move(body), deadline);
}

const hl7::test::certificates& certs()
{
    return hl7::test::shared_certificates();
}

hl7::tls_server_options server_tls(const std::string& cert, const std::string& key, bool mutual = false)
{
    return {.certificate_file = cert, .private_key_file = key, .client_ca_file = mutual ? certs().ca : std::string()};
}

hl7::tls_client_options client_tls()
{
    return {.ca_file = certs().ca, .handshake_timeout = 5s};
}

// Events of a connection or a server, kept for the checks.
struct event_log {
    std::mutex mutex;
    std::vector<boost::system::error_code> errors; // of disconnected, gave_up, handshake_failed
    std::size_t received = 0;
    bool gave_up = false;

    std::function<void(const hl7::connection_event&)> client()
    {
        return [this](const hl7::connection_event& e) {
            if (e.what == hl7::connection_event::kind::gave_up) {
                std::lock_guard lock(mutex);
                gave_up = true;
            }
            if (e.what == hl7::connection_event::kind::disconnected || e.what == hl7::connection_event::kind::gave_up ||
                e.what == hl7::connection_event::kind::reconnect_scheduled) {
                std::lock_guard lock(mutex);
                errors.push_back(e.error);
            }
        };
    }
    std::function<void(const hl7::server_event&)> server()
    {
        return [this](const hl7::server_event& e) {
            std::lock_guard lock(mutex);
            if (e.what == hl7::server_event::kind::handshake_failed)
                errors.push_back(e.error);
            if (e.what == hl7::server_event::kind::received)
                ++received;
        };
    }
    bool saw(boost::system::error_code ec)
    {
        std::lock_guard lock(mutex);
        return std::find(errors.begin(), errors.end(), ec) != errors.end();
    }
};

hl7::connection_options options(std::optional<hl7::tls_client_options> tls, event_log* events = nullptr)
{
    hl7::connection_options o;
    // Here and in client_tls(): ample for a slow machine where a test expects success, and no
    // test expects a failure by timeout but the one that sets its own.
    o.connect_timeout = 5s;
    o.ack_timeout = 5s;
    o.reconnect = {.max_attempts = 2, .initial = 20ms, .max = 100ms, .factor = 2.0, .jitter = 0};
    o.tls = std::move(tls);
    if (events)
        o.observer = events->client();
    return o;
}

// Sends one message to `server` with these client TLS options and returns how it ended.
asio::awaitable<hl7::outcome::result<hl7::ack>> send_once(const hl7::server& server, const char* host,
                                                          std::optional<hl7::tls_client_options> tls, event_log* events = nullptr)
{
    auto ex = co_await asio::this_coro::executor;
    auto client = hl7::client::create(ex, {.host = host}).value();
    auto conn = client.connect(server.local_endpoint().port(), options(std::move(tls), events)).value();
    auto result = co_await conn.send(fresh());
    co_await conn.close();
    co_return result;
}

asio::awaitable<hl7::server> tls_server(const hl7::tls_server_options& tls, event_log* events = nullptr)
{
    auto ex = co_await asio::this_coro::executor;
    hl7::server_options o{.host = "127.0.0.1", .port = 0};
    o.tls = tls;
    if (events)
        o.observer = events->server();
    auto s = hl7::server::create(ex, std::move(o));
    REQUIRE(s.has_value());
    co_return std::move(s).value();
}

} // namespace

TEST_CASE("a message is acknowledged over TLS, the server's address checked against its certificate")
{
    run([]() -> asio::awaitable<void> {
        auto server = co_await tls_server(server_tls(certs().server_cert, certs().server_key));
        auto ack = co_await send_once(server, "127.0.0.1", client_tls());
        REQUIRE(ack.has_value());
        CHECK(ack.value().code() == hl7::ack_code::CA);
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("a DNS name is checked against the certificate and sent as SNI")
{
    run([]() -> asio::awaitable<void> {
        auto server = co_await tls_server(server_tls(certs().server_cert, certs().server_key));
        CHECK((co_await send_once(server, "localhost", client_tls())).has_value());
        auto named = client_tls();
        named.server_name = "localhost";
        CHECK((co_await send_once(server, "127.0.0.1", named)).has_value());
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("a message is acknowledged over mutual TLS")
{
    run([]() -> asio::awaitable<void> {
        event_log server_events;
        auto server = co_await tls_server(server_tls(certs().server_cert, certs().server_key, true), &server_events);
        auto tls = client_tls();
        tls.certificate_file = certs().client_cert;
        tls.private_key_file = certs().client_key;
        auto ack = co_await send_once(server, "127.0.0.1", tls);
        REQUIRE(ack.has_value());
        CHECK(ack.value().accepted());
        CHECK(server_events.received == 1);
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("a server certificate from an untrusted CA is refused, and nothing is delivered")
{
    run([]() -> asio::awaitable<void> {
        event_log events, server_events;
        auto server = co_await tls_server(server_tls(certs().untrusted_cert, certs().untrusted_key), &server_events);
        auto result = co_await send_once(server, "127.0.0.1", client_tls(), &events);
        REQUIRE(result.has_error());
        CHECK(result.error() == errc::not_connected);
        CHECK(events.saw(errc::tls_untrusted_certificate));
        CHECK(server_events.received == 0);
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("a server certificate for another name is refused")
{
    run([]() -> asio::awaitable<void> {
        event_log events, server_events;
        auto server = co_await tls_server(server_tls(certs().wrong_name_cert, certs().wrong_name_key), &server_events);
        auto result = co_await send_once(server, "127.0.0.1", client_tls(), &events);
        REQUIRE(result.has_error());
        CHECK(events.saw(errc::tls_name_mismatch));
        CHECK(server_events.received == 0);
        // Asking for another name than the certificate's is refused the same way.
        event_log named_events;
        auto good = co_await tls_server(server_tls(certs().server_cert, certs().server_key));
        auto tls = client_tls();
        tls.server_name = "hl7.example.org";
        CHECK((co_await send_once(good, "127.0.0.1", tls, &named_events)).has_error());
        CHECK(named_events.saw(errc::tls_name_mismatch));
        co_await server.async_close(asio::use_awaitable);
        co_await good.async_close(asio::use_awaitable);
    });
}

TEST_CASE("an expired server certificate is refused")
{
    run([]() -> asio::awaitable<void> {
        event_log events, server_events;
        auto server = co_await tls_server(server_tls(certs().expired_cert, certs().expired_key), &server_events);
        auto result = co_await send_once(server, "127.0.0.1", client_tls(), &events);
        REQUIRE(result.has_error());
        CHECK(events.saw(errc::tls_certificate_expired));
        CHECK(server_events.received == 0);
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("a client without a certificate is refused by a mutual TLS server, and nothing is delivered")
{
    run([]() -> asio::awaitable<void> {
        event_log events, server_events;
        auto server = co_await tls_server(server_tls(certs().server_cert, certs().server_key, true), &server_events);
        auto ex = co_await asio::this_coro::executor;
        auto client = hl7::client::create(ex, {.host = "127.0.0.1"}).value();
        auto conn = client.connect(server.local_endpoint().port(), options(client_tls(), &events)).value();
        auto result = co_await conn.send(fresh());
        REQUIRE(result.has_error());
        // TLS 1.3 refuses after the handshake, TLS 1.2 during it: either way the message fails
        // with the reason, and the connection gives up after its two attempts.
        CHECK(result.error() == errc::tls_no_client_certificate);
        co_await until([&] { return conn.state() == hl7::connection_state::failed; }, "the connection to give up");
        CHECK(conn.state() == hl7::connection_state::failed);
        CHECK(events.gave_up);
        co_await conn.close();
        CHECK(server_events.saw(errc::tls_no_client_certificate));
        CHECK(events.saw(errc::tls_no_client_certificate));
        CHECK(server_events.received == 0);
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("a client certificate from an untrusted CA is refused by a mutual TLS server")
{
    run([]() -> asio::awaitable<void> {
        event_log events, server_events;
        auto server = co_await tls_server(server_tls(certs().server_cert, certs().server_key, true), &server_events);
        auto tls = client_tls();
        tls.certificate_file = certs().untrusted_cert;
        tls.private_key_file = certs().untrusted_key;
        auto result = co_await send_once(server, "127.0.0.1", tls, &events);
        REQUIRE(result.has_error());
        CHECK(server_events.saw(errc::tls_untrusted_certificate));
        CHECK(server_events.received == 0);
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("a TLS client facing a plaintext peer fails with a named error and never falls back to plaintext")
{
    run([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        hl7::test::peer plain(ex, [](hl7::test::peer_link& l, std::size_t) -> asio::awaitable<void> {
            const std::string plaintext = hl7::test::peer_link::ack_bytes_for("HELLO"); // not a ServerHello
            co_await l.write(plaintext);
            co_await l.drain();
        });
        event_log events;
        auto client = hl7::client::create(ex, {.host = "127.0.0.1"}).value();
        auto conn = client.connect(plain.port(), options(client_tls(), &events)).value();
        auto result = co_await conn.send(fresh());
        REQUIRE(result.has_error());
        CHECK(events.saw(errc::tls_plaintext_peer));
        CHECK(plain.received().empty());
        co_await conn.close();
    });
}

TEST_CASE("a plaintext client facing a TLS server is reported by the server and gets no acknowledgement")
{
    run([]() -> asio::awaitable<void> {
        event_log server_events;
        auto server = co_await tls_server(server_tls(certs().server_cert, certs().server_key), &server_events);
        auto result = co_await send_once(server, "127.0.0.1", std::nullopt);
        REQUIRE(result.has_error());
        CHECK(server_events.saw(errc::tls_plaintext_peer));
        CHECK(server_events.received == 0);
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("a peer that never completes the handshake times out as tls_handshake_timeout")
{
    run([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        hl7::test::peer silent(ex, [](hl7::test::peer_link& l, std::size_t) -> asio::awaitable<void> {
            co_await l.drain(); // reads the ClientHello (as noise, or as a frame by chance), never answers
        });
        event_log events;
        auto tls = client_tls();
        tls.handshake_timeout = 200ms;
        auto client = hl7::client::create(ex, {.host = "127.0.0.1"}).value();
        auto conn = client.connect(silent.port(), options(tls, &events)).value();
        const auto started = std::chrono::steady_clock::now();
        auto result = co_await conn.send(fresh());
        REQUIRE(result.has_error());
        CHECK(result.error() == errc::not_connected);
        CHECK(events.saw(errc::tls_handshake_timeout));
        CHECK(std::chrono::steady_clock::now() - started >= 400ms); // two attempts of 200 ms
        co_await conn.close();
    });
}

TEST_CASE("a client reconnects over TLS after the server restarts, redoing the handshake")
{
    run([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto first = co_await tls_server(server_tls(certs().server_cert, certs().server_key));
        const auto port = first.local_endpoint().port();
        auto client = hl7::client::create(ex, {.host = "127.0.0.1"}).value();
        auto o = options(client_tls());
        o.reconnect.max_attempts = 0;
        auto conn = client.connect(port, o).value();
        CHECK((co_await conn.send(fresh())).has_value());
        co_await first.async_close(asio::use_awaitable);
        co_await until([&] { return conn.state() != hl7::connection_state::connected; }, "the link to drop");
        hl7::server_options again{.host = "127.0.0.1", .port = port};
        again.tls = server_tls(certs().server_cert, certs().server_key);
        auto second = hl7::server::create(ex, std::move(again)).value();
        auto ack = co_await conn.send(fresh());
        CHECK(ack.has_value());
        CHECK(conn.counters().reconnects == 1);
        co_await conn.close();
        co_await second.async_close(asio::use_awaitable);
    });
}

TEST_CASE("skipping verification is possible when asked for by name, and still encrypts")
{
    run([]() -> asio::awaitable<void> {
        auto server = co_await tls_server(server_tls(certs().untrusted_cert, certs().untrusted_key));
        hl7::tls_client_options tls{.insecure_skip_verification = true};
        CHECK((co_await send_once(server, "127.0.0.1", tls)).has_value());
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("TLS files that cannot be loaded are a named error before any I/O")
{
    asio::io_context ctx;
    auto client = hl7::client::create(ctx.get_executor(), {.host = "127.0.0.1"}).value();
    auto o = options(hl7::tls_client_options{.ca_file = certs().dir + "/missing.pem"});
    auto conn = client.connect(2575, o);
    REQUIRE(conn.has_error());
    CHECK(conn.error() == errc::tls_setup_failed);
    auto mismatched = options(hl7::tls_client_options{
        .ca_file = certs().ca, .certificate_file = certs().client_cert, .private_key_file = certs().server_key});
    CHECK(client.connect(2575, mismatched).error() == errc::tls_setup_failed);
    hl7::server_options so{.host = "127.0.0.1", .port = 0};
    so.tls = server_tls(certs().dir + "/missing.pem", certs().server_key);
    auto server = hl7::server::create(ctx.get_executor(), std::move(so));
    REQUIRE(server.has_error());
    CHECK(server.error() == errc::tls_setup_failed);
    CHECK(ctx.poll() == 0);
}

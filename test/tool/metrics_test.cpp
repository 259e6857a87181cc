// The Prometheus exposition text and the HTTP endpoint that serves it.
#include "metrics.hpp"

#include "support/async_util.hpp"

#include <doctest/doctest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <string>
#include <vector>

namespace asio = boost::asio;
using asio::ip::tcp;
using hl7::tool::exposition;
using hl7::tool::metrics_endpoint;

TEST_CASE("families, samples and labels are written in the text exposition format")
{
    exposition e;
    e.family("hl7_messages_total", "counter", "Messages received,\nby code");
    e.sample("hl7_messages_total", 42, {{"code", "AA"}});
    e.sample("hl7_messages_total", 3, {{"code", "AE"}, {"peer", "a\"b\\c\nd"}});
    e.family("hl7_open_connections", "gauge", "Open connections");
    e.sample("hl7_open_connections", 0.25);
    CHECK(e.text() == "# HELP hl7_messages_total Messages received,\\nby code\n"
                      "# TYPE hl7_messages_total counter\n"
                      "hl7_messages_total{code=\"AA\"} 42\n"
                      "hl7_messages_total{code=\"AE\",peer=\"a\\\"b\\\\c\\nd\"} 3\n"
                      "# HELP hl7_open_connections Open connections\n"
                      "# TYPE hl7_open_connections gauge\n"
                      "hl7_open_connections 0.25\n");
}

TEST_CASE("a histogram's buckets are cumulative and end with +Inf, its count the total")
{
    exposition e;
    const double bounds[] = {0.001, 0.01, 0.1};
    const std::uint64_t counts[] = {5, 0, 2, 1};
    e.histogram("hl7_rtt_seconds", "Round trips", bounds, counts, 0.5, {{"port", "2575"}});
    CHECK(e.text() == "# HELP hl7_rtt_seconds Round trips\n"
                      "# TYPE hl7_rtt_seconds histogram\n"
                      "hl7_rtt_seconds_bucket{port=\"2575\",le=\"0.001\"} 5\n"
                      "hl7_rtt_seconds_bucket{port=\"2575\",le=\"0.01\"} 5\n"
                      "hl7_rtt_seconds_bucket{port=\"2575\",le=\"0.1\"} 7\n"
                      "hl7_rtt_seconds_bucket{port=\"2575\",le=\"+Inf\"} 8\n"
                      "hl7_rtt_seconds_sum{port=\"2575\"} 0.5\n"
                      "hl7_rtt_seconds_count{port=\"2575\"} 8\n");
}

namespace {

// One HTTP/1.1 exchange over a fresh connection: the whole response, read until the server
// closes (every request here says Connection: close).
asio::awaitable<std::string> exchange(tcp::endpoint at, std::string request)
{
    tcp::socket s(co_await asio::this_coro::executor);
    auto connecting = s.async_connect(at, asio::as_tuple(asio::use_awaitable));
    auto [cec] = co_await std::move(connecting);
    REQUIRE_FALSE(cec);
    auto writing = asio::async_write(s, asio::buffer(request), asio::as_tuple(asio::use_awaitable));
    co_await std::move(writing);
    std::string response;
    std::array<char, 4096> buf;
    for (;;) {
        auto reading = s.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
        auto [ec, n] = co_await std::move(reading);
        response.append(buf.data(), n);
        if (ec)
            break;
    }
    co_return response;
}

} // namespace

TEST_CASE("the endpoint serves the collected text at GET /metrics and refuses anything else")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        int scrapes = 0;
        auto started = metrics_endpoint::start(ex, "127.0.0.1:0", [&] {
            ++scrapes;
            return "hl7_up 1\n";
        });
        REQUIRE(started.has_value());
        metrics_endpoint endpoint = std::move(started).value();
        const tcp::endpoint at = endpoint.local_endpoint();
        CHECK(at.port() != 0);

        const std::string ok = co_await exchange(at, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        CHECK(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        CHECK(ok.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != std::string::npos);
        CHECK(ok.ends_with("\r\n\r\nhl7_up 1\n"));
        CHECK(scrapes == 1);

        const std::string missing = co_await exchange(at, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        CHECK(missing.starts_with("HTTP/1.1 404 Not Found\r\n"));
        const std::string posted =
            co_await exchange(at, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        CHECK(posted.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        const std::string garbage = co_await exchange(at, "\x0b\x1cnot http at all\r\n\r\n");
        CHECK(garbage.empty()); // closed without an answer
        const std::string huge =
            co_await exchange(at, "GET /metrics HTTP/1.1\r\nX: " + std::string(20000, 'a') + "\r\n\r\n");
        CHECK(huge.empty()); // headers past the limit: closed
        CHECK(scrapes == 1);

        endpoint.stop();
        co_await hl7::test::sleep_for(std::chrono::milliseconds(50));
        tcp::socket s(ex);
        auto connecting = s.async_connect(at, asio::as_tuple(asio::use_awaitable));
        auto [ec] = co_await std::move(connecting);
        CHECK(ec); // no longer listening
    });
}

TEST_CASE("keep-alive requests are served on one connection, one after the other")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        int scrapes = 0;
        auto endpoint = metrics_endpoint::start(ex, "127.0.0.1:0", [&] { return "n " + std::to_string(++scrapes) + "\n"; })
                            .value();
        const std::string both = co_await exchange(endpoint.local_endpoint(),
                                                   "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                                                   "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        CHECK(both.find("\r\n\r\nn 1\n") != std::string::npos);
        CHECK(both.find("\r\n\r\nn 2\n") != std::string::npos);
        CHECK(scrapes == 2);
    });
}

TEST_CASE("a malformed address is a named error before anything listens")
{
    asio::io_context ctx;
    auto none = [] { return std::string(); };
    CHECK(metrics_endpoint::start(ctx.get_executor(), "localhost:9000", none).error() == hl7::errc::invalid_host);
    CHECK(metrics_endpoint::start(ctx.get_executor(), "127.0.0.1", none).error() == hl7::errc::invalid_port);
    CHECK(metrics_endpoint::start(ctx.get_executor(), "127.0.0.1:70000", none).error() == hl7::errc::invalid_port);
    CHECK(metrics_endpoint::start(ctx.get_executor(), "127.0.0.1:x", none).error() == hl7::errc::invalid_port);
    CHECK(metrics_endpoint::start(ctx.get_executor(), "[::1:9000", none).error() == hl7::errc::invalid_host);
}
